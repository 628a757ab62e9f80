"""Stage 4: refit PCA over the features table from mergeable sufficient statistics.

The statistics of a set of rows are (n, sum x, sum x x^T) in float64; they add up across
partitions, so the executors compute them per partition and the driver only sums 1280 x 1280
matrices and solves one symmetric eigenproblem (numpy ``eigh``). k is the smallest number of
components whose cumulative explained variance reaches the threshold (default 0.95), or fixed.

Each fit is a new version in the ``pca_models`` Delta table; then every feature row is re-projected
with it (``pca_features``, ``pca_version``) so that queries see one model version.

Example::

    model = refit(spark, settings, threshold=0.95)
    print(model.version, model.k, model.explained_variance_ratio[: model.k].sum())
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, FloatType

from . import table
from .config import Settings
from .model import FEATURE_DIM
from .schema import PCA_MODELS


@dataclass
class Stats:
    """Sufficient statistics of a set of feature rows (float64)."""

    n: int
    total: np.ndarray  # (d,)
    outer: np.ndarray  # (d, d)

    @classmethod
    def empty(cls, d: int = FEATURE_DIM) -> Stats:
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @classmethod
    def of(cls, x: np.ndarray) -> Stats:
        x = np.asarray(x, dtype=np.float64)
        return cls(len(x), x.sum(axis=0), x.T @ x)

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.n + other.n, self.total + other.total, self.outer + other.outer)


@dataclass
class PcaModel:
    version: int
    k: int
    mean: np.ndarray
    components: np.ndarray  # (k, d)
    explained_variance_ratio: np.ndarray  # all d ratios, descending
    row_count: int
    source_table_version: int
    feature_model_id: str

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T).astype(np.float32)


def collect_stats(features: DataFrame) -> Stats:
    """Sum the per-partition statistics of the ``features`` column on the driver."""
    d = FEATURE_DIM

    def partition_stats(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        acc = Stats.empty(d)
        for batch in batches:
            if len(batch):
                acc = acc + Stats.of(np.stack(batch["features"].to_numpy()))
        yield pd.DataFrame({"n": [acc.n], "total": [acc.total.tolist()], "outer": [acc.outer.ravel().tolist()]})

    parts = features.select("features").mapInPandas(
        partition_stats, "n long, total array<double>, outer array<double>"
    ).toLocalIterator()
    acc = Stats.empty(d)
    for row in parts:
        if row.n:
            acc = acc + Stats(row.n, np.asarray(row.total), np.asarray(row.outer).reshape(d, d))
    return acc


def solve(stats: Stats, threshold: float = 0.95, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean, components (all, descending), explained-variance ratios and the chosen k."""
    if stats.n < 2:
        raise ValueError(f"PCA needs at least 2 feature rows; the table has {stats.n}")
    mean = stats.total / stats.n
    cov = (stats.outer - stats.n * np.outer(mean, mean)) / (stats.n - 1)
    eigenvalues, vectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    vectors = vectors[:, order].T
    ratios = eigenvalues / eigenvalues.sum()
    if k is None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"explained-variance threshold must be in (0, 1], got {threshold}")
        k = int(np.searchsorted(np.cumsum(ratios), threshold - 1e-12) + 1)
    k = max(1, min(k, len(ratios), stats.n - 1))
    return mean, vectors, ratios, k


def latest_model(spark: SparkSession, settings: Settings) -> PcaModel | None:
    rows = table.read(spark, settings.pca_models_table).orderBy(F.desc("version")).limit(1).collect()
    if not rows:
        return None
    r = rows[0]
    d = len(r.mean)
    return PcaModel(
        version=r.version, k=r.k, mean=np.asarray(r.mean),
        components=np.asarray(r.components).reshape(r.k, d),
        explained_variance_ratio=np.asarray(r.explained_variance_ratio),
        row_count=r.row_count, source_table_version=r.source_table_version, feature_model_id=r.feature_model_id,
    )


def project_column(spark: SparkSession, model: PcaModel) -> F.Column:
    """A column expression projecting ``features`` with ``model`` (parameters broadcast once)."""
    params = spark.sparkContext.broadcast((model.mean, model.components))

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]
    def project(features: pd.Series) -> pd.Series:
        mean, components = params.value
        x = np.stack(features.to_numpy()).astype(np.float64)
        return pd.Series(list(((x - mean) @ components.T).astype(np.float32)))

    return project(F.col("features"))


def reproject(spark: SparkSession, settings: Settings, model: PcaModel) -> None:
    """Give every row not yet on ``model`` its projection (one MERGE)."""
    stale = table.read(spark, settings.features_table).where(
        F.col("pca_version").isNull() | (F.col("pca_version") != model.version)
    )
    updates = stale.select("image_id", project_column(spark, model).alias("pca_features"))
    (
        DeltaTable.forPath(spark, settings.features_table).alias("t")
        .merge(updates.alias("s"), "t.image_id = s.image_id")
        .whenMatchedUpdate(set={"pca_features": "s.pca_features", "pca_version": F.lit(model.version)})
        .execute()
    )


def refit(spark: SparkSession, settings: Settings, threshold: float = 0.95, k: int | None = None) -> PcaModel:
    """Fit a new PCA version over the whole features table, store it, re-project the rows."""
    table.ensure_tables(spark, settings)
    source_version = table.current_version(spark, settings.features_table)
    features = table.read(spark, settings.features_table, version=source_version)
    model_ids = [r.model_id for r in features.select("model_id").distinct().collect()]
    if len(model_ids) > 1:
        raise ValueError(
            f"the features table mixes feature models {model_ids}; PCA needs one. Re-featurize or filter first."
        )
    stats = collect_stats(features)
    mean, vectors, ratios, k = solve(stats, threshold, k)
    previous = latest_model(spark, settings)
    model = PcaModel(
        version=(previous.version + 1) if previous else 1, k=k, mean=mean, components=vectors[:k],
        explained_variance_ratio=ratios, row_count=stats.n, source_table_version=source_version,
        feature_model_id=model_ids[0],
    )
    row = (
        model.version, model.k, mean.tolist(), model.components.ravel().tolist(), ratios.tolist(),
        model.row_count, source_version, dt.datetime.now(dt.timezone.utc), model.feature_model_id,
    )
    spark.createDataFrame([row], PCA_MODELS).write.format("delta").mode("append").save(settings.pca_models_table)
    reproject(spark, settings, model)
    return model
