"""Table maintenance, each table's by its only writer: small files compacted, unneeded files deleted.

Who maintains what (one writer per table, so the single-driver log store stays correct on S3):

- ``features`` and ``quarantine``, written by the stream alone: ``compact`` every
  ``FRUITS_COMPACT_EVERY`` micro-batches (Delta's OPTIMIZE of the days that hold
  ``COMPACT_MIN_FILES`` small files or more) and ``vacuum`` every ``FRUITS_VACUUM_EVERY``, both in
  the stream's driver (``stream.job.BatchWriter``). OPTIMIZE's commits change no rows
  (``dataChange=false``), so the PCA's incremental statistics skip them.
- ``pca_models`` and ``pca_stats``, written by the refit alone: ``maintain`` vacuums them while it
  holds the refit's lease (``fruits maintain`` takes it), deleting the ``pca_stats`` file each refit
  replaces (13-18 MB each).
- the uploads ledger, appended by the Lambda with delta-rs: ``maintain`` compacts today's small
  files and sorts the earlier days by key, with delta-rs (``fruits_ingest.ledger.maintain``; Spark
  must not write the Lambda's table).

``compact`` rewrites only a day's files under OPTIMIZE's ``minFileSize`` (1 GB), so a run costs at
most about a gigabyte a day it compacts, whatever the table holds; it finds those days in the
table's file list (delta-rs), without a Spark job. ``vacuum`` is VACUUM LITE: it deletes the files
that the commits since the last VACUUM removed, found in the Delta log, instead of listing the
table's folder, so its cost follows what changed since then, not the table's size.

Example::

    report = maintain(spark, settings)   # fruits maintain [--retain-hours 168]
    print(report.vacuumed, report.ledger)

Limitations: the incremental PCA statistics read the files the Delta log names since their last
look. When that look is older than the retention (``VACUUM_RETAIN_HOURS``, 168 h, Delta's
default), they read the whole table instead, since VACUUM may have deleted those files. VACUUM
LITE needs the log since the last VACUUM: when log retention (30 days) has dropped part of it,
``vacuum`` runs a full VACUUM instead, which lists the table's folder. LITE never deletes files
that no commit names (those of a task killed mid-write): they stay until a full VACUUM.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from delta.tables import DeltaTable
from py4j.protocol import Py4JError
from pyspark.sql import SparkSession

from fruits_ingest import ledger

from ..config import VACUUM_RETAIN_HOURS, Settings
from ..io import lake
from . import tables as table
from .schema import PARTITION

log = logging.getLogger(__name__)


@dataclass
class Maintenance:
    """Files deleted by VACUUM per table; what was done to the uploads ledger (``None``: there is none yet)."""

    vacuumed: dict[str, int] = field(default_factory=dict)
    ledger: ledger.Maintenance | None = None


# A day with this many files under OPTIMIZE's minFileSize is compacted.
COMPACT_MIN_FILES = 10


def compact(spark: SparkSession, settings: Settings, location: str) -> tuple[int, int]:
    """OPTIMIZE (bin-packing) the days of ``location`` that hold ``COMPACT_MIN_FILES`` small files
    or more; the numbers of files removed and added."""
    small = int(spark.conf.get("spark.databricks.delta.optimize.minFileSize", str(1 << 30)))
    files = pa.table(lake.delta_table(settings, location).get_add_actions(flatten=True))
    days = Counter(
        day
        for day, size in zip(files.column(f"partition.{PARTITION}").to_pylist(), files.column("size_bytes").to_pylist())
        if size < small
    )
    crowded = sorted(day for day, count in days.items() if count >= COMPACT_MIN_FILES)
    if not crowded:
        return 0, 0
    dates = ", ".join(f"DATE'{day}'" for day in crowded)
    where = f"{PARTITION} IN ({dates})"
    metrics = table.retried(
        lambda: DeltaTable.forPath(spark, location).optimize().where(where).executeCompaction().first(),
        f"OPTIMIZE {location}",
    ).metrics
    log.info(
        "OPTIMIZE %s, %d day(s): %d files into %d",
        location,
        len(crowded),
        metrics.numFilesRemoved,
        metrics.numFilesAdded,
    )
    return metrics.numFilesRemoved, metrics.numFilesAdded


def vacuum(spark: SparkSession, location: str, retain_hours: float = VACUUM_RETAIN_HOURS) -> int:
    """VACUUM LITE the table at ``location``, keeping ``retain_hours``; the number of files deleted.

    Delta itself refuses a retention under 168 hours unless
    ``spark.databricks.delta.retentionDurationCheck.enabled`` is false. Keep it that way: the
    log readers (the incremental PCA statistics) and any reader of a recent version rely on the
    files of the last ``VACUUM_RETAIN_HOURS`` being there.
    """
    try:
        spark.sql(f"VACUUM delta.`{location}` LITE RETAIN {retain_hours:g} HOURS")
    except Exception as exc:
        if "DELTA_CANNOT_VACUUM_LITE" not in str(exc):
            raise
        log.warning(
            "VACUUM LITE %s: the log since the last VACUUM is gone (%s); a full VACUUM instead",
            location,
            str(exc).splitlines()[0],
        )
        spark.sql(f"VACUUM delta.`{location}` FULL RETAIN {retain_hours:g} HOURS")
    deleted = table.newest_metric(DeltaTable.forPath(spark, location), "operation = 'VACUUM END'", "numDeletedFiles")
    log.info("VACUUM %s (%.0f h retained): %d files deleted", location, retain_hours, deleted)
    return deleted


def steps(settings: Settings, pca_tables: bool = True) -> list[str]:
    """What ``maintain`` does, in order, as ``on_step`` is told."""
    return [*(_vacuum_step(location) for location in _pca_tables(settings, pca_tables)), "uploads ledger"]


def _pca_tables(settings: Settings, wanted: bool) -> tuple[str, ...]:
    return (settings.pca_models_table, settings.pca_stats_table) if wanted else ()


def _vacuum_step(location: str) -> str:
    return f"VACUUM {location.rstrip('/').rsplit('/', 1)[-1]}"


# What Delta's VACUUM prints with Scala's println (its count is logged here, with the table's name).
VACUUM_SUMMARY = re.compile(r"Deleted \d+ files and directories in a total of \d+ directories\.")


@contextlib.contextmanager
def _console_held(spark: SparkSession) -> Iterator[None]:
    """Hold what the JVM thread serving this Python thread prints with Scala's ``println`` (its
    ``Console.out``) for the block; then pass it on, less ``VACUUM_SUMMARY``. pyspark pins one JVM
    thread to each Python thread (its default), so other threads' output is untouched; without
    pinning, or when Scala's private ``Console.out`` cannot be reached, nothing is held. With ``-v``
    nothing is held.

    Limitations: ``Console.out`` is inherited by the threads the JVM starts in the block; what
    they print with ``println`` later is lost. ``maintain`` (a short command) holds it; the stream's
    own VACUUM (every ``FRUITS_VACUUM_EVERY`` micro-batches) does not.
    """
    from py4j.clientserver import ClientServer  # pinned thread mode's gateway

    gateway = spark.sparkContext._gateway
    if logging.getLogger().isEnabledFor(logging.INFO) or not isinstance(gateway, ClientServer):
        yield
        return
    jvm = spark.sparkContext._jvm
    try:
        console = jvm.java.lang.Class.forName("scala.Console$")
        field = console.getDeclaredField("outVar")
        field.setAccessible(True)
        out = field.get(console.getField("MODULE$").get(None))  # a DynamicVariable: per thread
        before = out.value()
    except Py4JError as exc:
        log.debug("Scala's Console.out is out of reach (%s): VACUUM's own line stays", exc)
        yield
        return
    held = jvm.java.io.ByteArrayOutputStream()
    getattr(out, "value_$eq")(jvm.java.io.PrintStream(held, True, "UTF-8"))
    try:
        yield
    finally:
        # The JVM may be going (Ctrl-C): then the error that stopped the block is the one to see.
        with contextlib.suppress(Py4JError):
            getattr(out, "value_$eq")(before)
            kept = "".join(
                line
                for line in held.toString("UTF-8").splitlines(keepends=True)
                if not VACUUM_SUMMARY.fullmatch(line.strip())
            )
            if kept:
                before.print(kept)
                before.flush()


def maintain(
    spark: SparkSession,
    settings: Settings,
    retain_hours: float = VACUUM_RETAIN_HOURS,
    pca_tables: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> Maintenance:
    """VACUUM the refit's tables, keeping ``retain_hours`` (``pca_tables``: the caller holds the
    refit's lease; a table no refit has written yet is left alone); then compact and sort the uploads
    ledger (its own retention: ``fruits_ingest.ledger.RETENTION``). Never touches the stream's tables.
    ``on_step`` is told each of ``steps()`` as it starts."""
    step = on_step or (lambda name: None)
    report = Maintenance()
    for location in _pca_tables(settings, pca_tables):
        step(_vacuum_step(location))
        if DeltaTable.isDeltaTable(spark, location):
            with _console_held(spark):  # Delta's own summary line: the count is logged here
                report.vacuumed[location] = vacuum(spark, location, retain_hours)
    step("uploads ledger")
    report.ledger = ledger.maintain(lake.delta_uri(settings.uploads_table), lake.storage_options(settings))
    if report.ledger:
        log.info(
            "uploads ledger: %d earlier day(s) sorted by key, today compacted: %d files into %d; %d deleted",
            len(report.ledger.days),
            report.ledger.files_removed,
            report.ledger.files_added,
            report.ledger.vacuumed,
        )
    return report
