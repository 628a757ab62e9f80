"""The Delta tables: created with their explicit schemas, appended to blindly.

The stream's appends are not tagged with Delta's idempotent-write options (``txnAppId`` /
``txnVersion``): the stream drops images the tables already hold before it writes
(``known.py``), which covers a replayed micro-batch. The options would make Delta rebuild the
table's state in Spark jobs at every micro-batch, to look the marker up.
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from ..config import Settings
from .schema import FEATURES, PCA_MODELS, PCA_STATS, QUARANTINE


def ensure_table(spark: SparkSession, location: str, schema: StructType) -> DeltaTable:
    if not DeltaTable.isDeltaTable(spark, location):
        spark.createDataFrame([], schema).write.format("delta").mode("ignore").save(location)
    return DeltaTable.forPath(spark, location)


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    ensure_table(spark, settings.features_table, FEATURES)
    ensure_table(spark, settings.quarantine_table, QUARANTINE)
    ensure_table(spark, settings.pca_models_table, PCA_MODELS)
    ensure_table(spark, settings.pca_stats_table, PCA_STATS)


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
