"""The Delta tables: created with their explicit schemas, written idempotently.

``insert_new`` is an insert-only MERGE on the image identity: running it twice with the same rows
(a redelivered manifest, a micro-batch retried after a crash) adds nothing the second time.
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from .config import Settings
from .schema import FEATURES, PCA_MODELS, QUARANTINE


def ensure_table(spark: SparkSession, location: str, schema: StructType) -> DeltaTable:
    if not DeltaTable.isDeltaTable(spark, location):
        spark.createDataFrame([], schema).write.format("delta").mode("ignore").save(location)
    return DeltaTable.forPath(spark, location)


def ensure_tables(spark: SparkSession, settings: Settings) -> None:
    ensure_table(spark, settings.features_table, FEATURES)
    ensure_table(spark, settings.quarantine_table, QUARANTINE)
    ensure_table(spark, settings.pca_models_table, PCA_MODELS)


def insert_new(spark: SparkSession, location: str, rows: DataFrame, key: str = "image_id") -> None:
    """Insert the rows whose ``key`` the table does not hold yet."""
    (
        DeltaTable.forPath(spark, location)
        .alias("t")
        .merge(rows.alias("s"), f"t.{key} = s.{key}")
        .whenNotMatchedInsertAll()
        .execute()
    )


def read(spark: SparkSession, location: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(location)


def current_version(spark: SparkSession, location: str) -> int:
    return int(DeltaTable.forPath(spark, location).history(1).select("version").first()[0])
