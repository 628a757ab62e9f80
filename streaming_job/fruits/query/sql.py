"""Stage 5: query the tables with Spark SQL.

The tables are registered as the views ``features``, ``quarantine`` and ``pca_models``.

Example::

    result = sql(spark, settings, "SELECT label, count(*) AS n FROM features GROUP BY label")
    print(result.versions, result.rows)
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from ..config import Settings
from ..spark import tables as table
from .result import QueryResult


def register_views(spark: SparkSession, settings: Settings, as_of_version: int | None = None) -> dict[str, int]:
    table.ensure_tables(spark, settings)
    versions = {}
    for name, location in (
        ("features", settings.features_table),
        ("quarantine", settings.quarantine_table),
        ("pca_models", settings.pca_models_table),
    ):
        version = table.current_version(spark, location)
        if name == "features" and as_of_version is not None:
            version = as_of_version
        table.read(spark, location, version=version).createOrReplaceTempView(name)
        versions[name] = version
    return versions


def sql(spark: SparkSession, settings: Settings, statement: str, as_of_version: int | None = None) -> QueryResult:
    """Run one SQL statement; ``as_of_version`` time-travels the ``features`` table."""
    versions = register_views(spark, settings, as_of_version)
    df = spark.sql(statement)
    return QueryResult(columns=df.columns, rows=[tuple(r) for r in df.collect()], versions=versions)
