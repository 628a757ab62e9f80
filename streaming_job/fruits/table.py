"""The Delta tables: created with their explicit schemas, written idempotently.

``append_once`` is a blind append tagged with Delta's idempotent-write options (``txnAppId`` /
``txnVersion``): a micro-batch retried after a crash is skipped by Delta if it already committed.
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from .config import Settings
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


def append_once(rows: DataFrame, location: str, app_id: str, version: int) -> None:
    """Append ``rows`` unless this ``(app_id, version)`` already committed to the table."""
    (
        rows.write.format("delta").mode("append")
        .option("txnAppId", app_id).option("txnVersion", version)
        .save(location)
    )


def read(spark: SparkSession, location: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(location)


def current_version(spark: SparkSession, location: str) -> int:
    return int(DeltaTable.forPath(spark, location).history(1).select("version").first()[0])
