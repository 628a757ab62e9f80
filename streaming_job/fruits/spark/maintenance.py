"""Table maintenance: compact the stream's small files, then delete the files no version needs.

The stream appends one or two small files per micro-batch, thousands a day on a busy stream, and
every reader opens each of them. ``maintain`` runs Delta's OPTIMIZE (bin-packing) on ``features``
and ``quarantine``. Its commits change no rows (``dataChange=false``), so the PCA's incremental
statistics skip them. Then VACUUM deletes, in all four tables,
the data files that no version within the retention still needs: the files OPTIMIZE replaced, and
the ``pca_stats`` files each refit replaces (13-18 MB each). Last, the uploads ledger: today's small
files compacted and the earlier days that received uploads since the last run sorted by key, with
delta-rs (``fruits_ingest.ledger.maintain``: Spark must not write the Lambda's table).

Example::

    report = maintain(spark, settings)   # fruits maintain [--retain-hours 168]
    print(report.compacted, report.vacuumed)

Limitations: the incremental PCA statistics read the files the Delta log names since their last
look. When that look is older than the retention (``VACUUM_RETAIN_HOURS``, 168 h, Delta's
default), they read the whole table instead, since VACUUM may have deleted those
files. OPTIMIZE and a concurrent re-projection UPDATE may conflict; whichever commits second
retries (``tables.retried``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from delta.tables import DeltaTable
from fruits_ingest import ledger
from pyspark.sql import SparkSession

from ..config import VACUUM_RETAIN_HOURS, Settings
from ..io import lake
from . import tables as table

log = logging.getLogger(__name__)


@dataclass
class Maintenance:
    """Per table: files removed and added by OPTIMIZE, and files deleted by VACUUM; what was done to
    the uploads ledger (``None``: there is none yet)."""

    compacted: dict[str, tuple[int, int]] = field(default_factory=dict)
    vacuumed: dict[str, int] = field(default_factory=dict)
    ledger: ledger.Maintenance | None = None


def maintain(spark: SparkSession, settings: Settings, retain_hours: float = VACUUM_RETAIN_HOURS) -> Maintenance:
    """OPTIMIZE ``features`` and ``quarantine``, then VACUUM every table, keeping ``retain_hours``;
    then compact and sort the uploads ledger (its own retention: ``fruits_ingest.ledger.RETENTION``).

    Delta itself refuses a retention under 168 hours unless
    ``spark.databricks.delta.retentionDurationCheck.enabled`` is false. Keep it that way: the
    log readers (the incremental PCA statistics) and any reader of a recent version rely on the
    files of the last ``VACUUM_RETAIN_HOURS`` being there.
    """
    table.ensure_tables(spark, settings)
    report = Maintenance()
    for location in (settings.features_table, settings.quarantine_table):
        metrics = table.retried(lambda: DeltaTable.forPath(spark, location).optimize().executeCompaction().first(),
                                f"OPTIMIZE {location}").metrics
        report.compacted[location] = (metrics.numFilesRemoved, metrics.numFilesAdded)
        log.info("OPTIMIZE %s: %d files into %d", location, metrics.numFilesRemoved, metrics.numFilesAdded)
    for location in (settings.features_table, settings.quarantine_table, settings.pca_models_table,
                     settings.pca_stats_table):
        delta = DeltaTable.forPath(spark, location)
        delta.vacuum(retain_hours)
        deleted = table.newest_metric(delta, "operation = 'VACUUM END'", "numDeletedFiles")
        report.vacuumed[location] = deleted
        log.info("VACUUM %s (%.0f h retained): %d files deleted", location, retain_hours, deleted)
    report.ledger = ledger.maintain(lake.delta_uri(settings.uploads_table), lake.storage_options(settings))
    if report.ledger:
        log.info("uploads ledger: %d earlier day(s) sorted by key, today compacted: %d files into %d; %d deleted",
                 len(report.ledger.days), report.ledger.files_removed, report.ledger.files_added,
                 report.ledger.vacuumed)
    return report

