"""The Delta tables: created with their explicit schemas (``features`` and ``quarantine``
partitioned by ``event_date``), appended to blindly.

The stream's appends are not tagged with Delta's idempotent-write options (``txnAppId`` /
``txnVersion``): the stream drops images the tables already hold before it writes
(``stream.written``), which covers a replayed micro-batch. The options would make Delta rebuild the
table's state in Spark jobs at every micro-batch, to look the marker up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

# delta-spark 4.x converts the JVM's conflict exceptions to these Python classes only once its
# `captured` module is imported, which `delta.exceptions` no longer does: without this import
# every conflict arrived as a bare Py4JJavaError and no retry ever matched.
import delta.exceptions.captured  # noqa: F401
import pandas as pd
from delta.exceptions import ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from ..config import Settings
from ..io import lake
from .schema import FEATURES, PARTITION, PCA_MODELS, PCA_STATS, QUARANTINE

log = logging.getLogger(__name__)
T = TypeVar("T")


class TableLayoutError(RuntimeError):
    """A table an older version of the pipeline created, without the columns or partitions this one needs."""


def ensure_table(
    spark: SparkSession, location: str, schema: StructType, partition_by: tuple[str, ...] = ()
) -> DeltaTable:
    """The table at ``location``, created with ``schema`` if there is none. (Delta stores a schema
    written this way as nullable throughout, as it does every DataFrame write's: delta-rs reads the
    files' nullable lists only into a schema that allows them.)"""
    if not DeltaTable.isDeltaTable(spark, location):
        spark.createDataFrame([], schema).write.format("delta").mode("ignore").partitionBy(*partition_by).save(location)
    return DeltaTable.forPath(spark, location)


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    """Create the tables that do not exist yet; refuse ``features`` or ``quarantine`` laid out by an
    older version (``TableLayoutError``)."""
    for location, schema in ((settings.features_table, FEATURES), (settings.quarantine_table, QUARANTINE)):
        ensure_table(spark, location, schema, (PARTITION,))
        partitions = lake.delta_table(settings, location).metadata().partition_columns
        if partitions != [PARTITION]:
            raise TableLayoutError(
                f"{location} is partitioned by {partitions}, not [{PARTITION!r}]: an older version created it, before "
                "the stream's exactly-once check read partitions by event date. Stop the stream and rebuild the tables "
                "from the uploads ledger (move the tables and the stream's checkpoint aside, then start the stream)."
            )
    ensure_table(spark, settings.pca_models_table, PCA_MODELS)
    ensure_table(spark, settings.pca_stats_table, PCA_STATS)


def add_missing_columns(spark: SparkSession, location: str, schema: StructType) -> list[str]:
    """Add the columns of ``schema`` that the table lacks (one an older version created), and name
    them. For the table's one writer: an ALTER TABLE commit makes a concurrent append fail."""
    have = set(DeltaTable.forPath(spark, location).toDF().columns)
    missing = [f for f in schema.fields if f.name not in have]
    if missing:
        columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{location}` ADD COLUMNS ({columns})")
        log.info("%s: added the columns %s", location, columns)
    return [f.name for f in missing]


# Conflicts that mean only "someone committed first": the operation is still valid on the new
# snapshot and is retried. The stream's compaction (OPTIMIZE) is the one user: nothing else commits
# to its tables, but a stream whose lease lapsed may still append once before it stops.
BENIGN_CONFLICTS = (ConcurrentAppendException, ConcurrentDeleteReadException, ConcurrentDeleteDeleteException)


def retried(operation: Callable[[], T], what: str, attempts: int = 5) -> T:
    """``operation()``, run again (after a short pause) when a concurrent commit got there first;
    a clear error after ``attempts``. ``operation`` must be safe to repeat on a newer snapshot."""
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except BENIGN_CONFLICTS as exc:
            log.info("%s met a concurrent commit (%s), attempt %d of %d", what, type(exc).__name__, attempt, attempts)
            if attempt == attempts:
                raise RuntimeError(
                    f"{what} met a concurrent commit {attempts} times in a row; run it again when the "
                    "other jobs are quieter"
                ) from exc
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def frame(spark: SparkSession, rows: pd.DataFrame, schema: StructType) -> DataFrame:
    """``rows`` as a DataFrame of ``schema`` (columns in its order), a nullable column ``rows``
    lacks as nulls: rows written as the stream writes them, by benchmarks and tests."""
    full = rows.assign(**{f.name: None for f in schema.fields if f.name not in rows.columns and f.nullable})
    return spark.createDataFrame(full[schema.fieldNames()], schema)


def append(rows: DataFrame, location: str) -> None:
    """A blind append of ``rows``."""
    rows.write.format("delta").mode("append").save(location)


def newest_metric(delta: DeltaTable, commits: Column | str, metric: str) -> int:
    """``metric`` of the newest of the table's last 20 commits that match ``commits`` (0 if none).
    Delta's ``update`` and ``vacuum`` return no metrics; their commits hold them."""
    last = delta.history(20).where(commits).orderBy(F.desc("version")).select("operationMetrics").first()
    return int(last.operationMetrics.get(metric, 0)) if last else 0


def read(spark: SparkSession, location: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(location)


def current_version(spark: SparkSession, location: str) -> int:
    return int(DeltaTable.forPath(spark, location).history(1).select("version").first()[0])
