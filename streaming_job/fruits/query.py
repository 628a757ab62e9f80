"""Stage 5: query the tables with Spark SQL.

The tables are registered as the views ``features``, ``quarantine`` and ``pca_models``.

Example::

    result = sql(spark, settings, "SELECT label, count(*) AS n FROM features GROUP BY label")
    print(result.versions, result.rows)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from . import table
from .config import Settings


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    versions: dict[str, int]  # Delta version read, per table


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


def format_table(result: QueryResult, max_width: int = 60) -> str:
    """A plain-text table, with long values (feature vectors) shortened."""

    def cell(value: Any) -> str:
        if isinstance(value, list):
            head = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value[:3])
            text = f"[{head}{', ...' if len(value) > 3 else ''}] ({len(value)})"
        else:
            text = "NULL" if value is None else str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    out = [line(result.columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    out.append(f"({len(result.rows)} rows; " + ", ".join(f"{k} v{v}" for k, v in result.versions.items()) + ")")
    return "\n".join(out)
