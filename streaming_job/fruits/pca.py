"""Stage 4: refit PCA over the features table from mergeable sufficient statistics.

The statistics of a set of rows are (n, sum x, sum x x^T) in float64. They add up, so the
executors compute them per partition, the driver sums 1280 x 1280 matrices and solves one
symmetric eigenproblem (numpy ``eigh``). k is the smallest number of components whose cumulative
explained variance reaches the threshold (default 0.95), or fixed.

Incremental: the statistics are stored (``pca_stats``) with the features-table version they
cover. A refit reads only the data files that blind appends added since that version, found in
the Delta log, adds their statistics and solves again; ``full=True`` recomputes from scratch. A
commit that changed existing rows (other than our own re-projection), or a log that retention has
already cleaned, falls back to a full pass, and the result says so.

Each fit is a new version in the ``pca_models`` Delta table. Then every row not on it is
re-projected (``pca_features``, ``pca_version``) with one MERGE, so a query sees one model version;
the stream projects new rows with the newest model as it writes them. Two plots are written next
to each version: ``<table root>/pca_plots/v<N>/scree.png`` and ``pc1_pc2.png``.

Example::

    fit = refit(spark, settings, threshold=0.95)
    print(fit.model.version, fit.model.k, fit.mode, fit.rows_read)

Limitations: run one refit at a time (the periodic mode is one loop); two concurrent refits
would both write version N+1. Re-projection rewrites the table's files, so its cost grows with the
table even when the fit itself is incremental.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
from delta.exceptions import ConcurrentAppendException
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, BooleanType, FloatType, StringType, StructField, StructType

from . import plots, table
from .config import Settings
from .model import FEATURE_DIM
from .schema import FEATURES, PCA_MODELS, PCA_STATS

log = logging.getLogger(__name__)

# userMetadata on our re-projection commits: they rewrite rows without changing ``features``.
REPROJECT_TAG = "fruits:pca-reproject"


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
class StoredStats:
    stats: Stats
    source_table_version: int
    feature_model_id: str


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

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> PcaModel:
        """A model from one ``pca_models`` row, as Spark (``Row.asDict()``) or Arrow gives it."""
        mean = np.asarray(r["mean"])
        return cls(
            version=r["version"], k=r["k"], mean=mean, components=np.asarray(r["components"]).reshape(r["k"], len(mean)),
            explained_variance_ratio=np.asarray(r["explained_variance_ratio"]), row_count=r["row_count"],
            source_table_version=r["source_table_version"], feature_model_id=r["feature_model_id"],
        )

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T).astype(np.float32)


@dataclass
class Refit:
    """What a refit did: the model, ``full`` or ``incremental``, rows read, seconds per step."""

    model: PcaModel
    mode: str
    rows_read: int
    seconds: dict[str, float] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)


# --- statistics -----------------------------------------------------------------------------

def collect_stats(features: DataFrame, d: int = FEATURE_DIM) -> tuple[Stats, set[str]]:
    """The statistics of the ``features`` column and the set of ``model_id`` values, in one pass."""

    def partition_stats(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        acc, ids = Stats.empty(d), set()
        for batch in batches:
            if len(batch):
                acc = acc + Stats.of(np.stack(batch["features"].to_numpy()))
                ids.update(batch["model_id"].unique())
        yield pd.DataFrame({"n": [acc.n], "total": [acc.total.tobytes()], "outer": [acc.outer.tobytes()],
                            "model_ids": [sorted(ids)]})

    parts = features.select("features", "model_id").mapInPandas(
        partition_stats, "n long, total binary, outer binary, model_ids array<string>"
    ).toLocalIterator()
    acc, ids = Stats.empty(d), set()
    for row in parts:
        if row.n:
            acc = acc + Stats(row.n, _floats(row.total), _floats(row.outer).reshape(d, d))
            ids.update(row.model_ids)
    return acc, ids


def _floats(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f8")


def latest_stats(spark: SparkSession, settings: Settings) -> StoredStats | None:
    rows = table.read(spark, settings.pca_stats_table).orderBy(F.desc("source_table_version")).limit(1).collect()
    if not rows:
        return None
    r = rows[0]
    stats = Stats(r.row_count, _floats(r.total).copy(), _floats(r.outer).reshape(r.dim, r.dim).copy())
    return StoredStats(stats, r.source_table_version, r.feature_model_id)


def store_stats(spark: SparkSession, settings: Settings, stored: StoredStats) -> None:
    """Replace the stored statistics (older ones stay in the Delta history until VACUUM)."""
    s = stored.stats
    row = (stored.source_table_version, s.n, len(s.total), s.total.astype("<f8").tobytes(),
           s.outer.astype("<f8").tobytes(), stored.feature_model_id, dt.datetime.now(dt.timezone.utc))
    spark.createDataFrame([row], PCA_STATS).write.format("delta").mode("overwrite").save(settings.pca_stats_table)


# Only the fields of a Delta commit that tell what it did to the rows.
_COMMIT_ACTIONS = StructType(
    [
        StructField("commitInfo", StructType([
            StructField("operation", StringType()),
            StructField("isBlindAppend", BooleanType()),
            StructField("userMetadata", StringType()),
        ])),
        StructField("add", StructType([StructField("path", StringType()), StructField("dataChange", BooleanType())])),
        StructField("remove", StructType([StructField("path", StringType()), StructField("dataChange", BooleanType())])),
    ]
)


def appended_files(spark: SparkSession, location: str, after: int, upto: int) -> list[str] | None:
    """Data files that commits ``after + 1 .. upto`` added to the table as new rows.

    None when those rows cannot be told from the log alone: a commit changed or deleted existing
    rows (other than a re-projection), the table went back in time, or log retention already
    removed a commit file. The caller then reads the whole table.
    """
    if upto < after:
        return None
    if upto == after:
        return []
    paths = [f"{location}/_delta_log/{v:020d}.json" for v in range(after + 1, upto + 1)]
    try:
        actions = spark.read.schema(_COMMIT_ACTIONS).json(paths).select("*", "_metadata.file_path").collect()
    except AnalysisException as exc:
        log.info("commit files after version %d are gone (%s); a full pass is needed", after, exc.getErrorClass())
        return None
    commits: dict[str, dict] = {}
    for a in actions:
        c = commits.setdefault(a.file_path, {"info": None, "adds": [], "removes": 0})
        if a.commitInfo is not None:
            c["info"] = a.commitInfo
        if a.add is not None and a.add.dataChange:
            c["adds"].append(a.add.path)
        if a.remove is not None and a.remove.dataChange:
            c["removes"] += 1
    files = []
    for name, c in sorted(commits.items()):
        info = c["info"]
        if not c["adds"] and not c["removes"]:
            continue  # metadata only, or OPTIMIZE (dataChange=false)
        if info is not None and info.isBlindAppend:
            files += [p if "://" in p else f"{location}/{unquote(p)}" for p in c["adds"]]
        elif info is not None and info.userMetadata == REPROJECT_TAG:
            continue
        else:
            log.info("commit %s (%s) changed existing rows; a full pass is needed", name.rsplit("/", 1)[-1],
                     info.operation if info else "unknown")
            return None
    return files


def pending_rows(spark: SparkSession, settings: Settings) -> int:
    """Rows appended to the features table since the stored statistics (from the Delta history)."""
    # Only the version: the periodic loop asks often, and the statistics themselves are 13 MB.
    covered = table.read(spark, settings.pca_stats_table).agg(F.max("source_table_version")).first()[0]
    after = -1 if covered is None else covered
    history = DeltaTable.forPath(spark, settings.features_table).history().where(
        (F.col("version") > after) & F.col("isBlindAppend")
    )
    total = history.select(F.sum(F.col("operationMetrics")["numOutputRows"].cast("long"))).first()[0]
    return int(total or 0)


# --- the fit --------------------------------------------------------------------------------

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
    return PcaModel.from_record(rows[0].asDict()) if rows else None


def project_column(spark: SparkSession, model: PcaModel) -> F.Column:
    """A column expression projecting ``features`` with ``model`` (parameters broadcast once)."""
    params = spark.sparkContext.broadcast((model.mean, model.components))

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]
    def project(features: pd.Series) -> pd.Series:
        mean, components = params.value
        x = np.stack(features.to_numpy()).astype(np.float64)
        return pd.Series(list(((x - mean) @ components.T).astype(np.float32)))

    return project(F.col("features"))


def _stale(model: PcaModel) -> F.Column:
    return F.col("pca_version").isNull() | (F.col("pca_version") != model.version)


def reproject(spark: SparkSession, settings: Settings, model: PcaModel, attempts: int = 5) -> int:
    """Give every row not yet on ``model`` its projection; returns the rows updated.

    The stream may append while this runs: a blind append makes our MERGE fail with
    ConcurrentAppendException (it is retried), and a micro-batch that started before the new model
    was committed lands on the previous version (so we look again until no row is stale).
    """
    # A session of its own, so that the commit tag marks this MERGE only, never a concurrent append.
    session = spark.newSession()
    session.conf.set("spark.databricks.delta.commitInfo.userMetadata", REPROJECT_TAG)
    updated = 0
    for attempt in range(1, attempts + 1):
        features = table.read(session, settings.features_table)
        if features.where(_stale(model)).isEmpty():
            return updated
        updates = features.where(_stale(model)).select(
            "image_id", project_column(session, model).alias("pca_features")
        )
        try:
            metrics = (
                DeltaTable.forPath(session, settings.features_table).alias("t")
                .merge(updates.alias("s"), "t.image_id = s.image_id")
                .whenMatchedUpdate(set={"pca_features": "s.pca_features", "pca_version": F.lit(model.version)})
                .execute()
            ).first()
            updated += int(metrics["num_updated_rows"]) if metrics is not None else 0
        except ConcurrentAppendException:
            log.info("re-projection attempt %d met a concurrent append; retrying", attempt)
    raise RuntimeError(
        f"rows were still not on PCA version {model.version} after {attempts} attempts; "
        "run `fruits pca reproject` again when the stream is quieter"
    )


def refit(
    spark: SparkSession,
    settings: Settings,
    threshold: float = 0.95,
    k: int | None = None,
    full: bool = False,
    write_plots: bool = True,
) -> Refit:
    """Fit a new PCA version, store it and its statistics, re-project the rows, draw the plots."""
    table.ensure_tables(spark, settings)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    source_version = table.current_version(spark, settings.features_table)
    previous = None if full else latest_stats(spark, settings)
    files = appended_files(spark, settings.features_table, previous.source_table_version, source_version) \
        if previous else None
    if previous is not None and files is not None:
        mode = "incremental"
        added, model_ids = (
            collect_stats(spark.read.schema(FEATURES).parquet(*files)) if files else (Stats.empty(), set())
        )
        stats, rows_read = previous.stats + added, added.n
        model_ids.add(previous.feature_model_id)
    else:
        mode = "full"
        stats, model_ids = collect_stats(table.read(spark, settings.features_table, version=source_version))
        rows_read = stats.n
    if len(model_ids) > 1:
        raise ValueError(
            f"the features table mixes feature models {sorted(model_ids)}; PCA needs one. Re-featurize or filter first."
        )
    seconds["stats"] = time.perf_counter() - started

    started = time.perf_counter()
    mean, vectors, ratios, chosen_k = solve(stats, threshold, k)
    seconds["solve"] = time.perf_counter() - started
    last = latest_model(spark, settings)
    model = PcaModel(
        version=(last.version + 1) if last else 1, k=chosen_k, mean=mean, components=vectors[:chosen_k],
        explained_variance_ratio=ratios, row_count=stats.n, source_table_version=source_version,
        feature_model_id=model_ids.pop(),
    )
    row = (
        model.version, model.k, mean.tolist(), model.components.ravel().tolist(), ratios.tolist(),
        model.row_count, source_version, dt.datetime.now(dt.timezone.utc), model.feature_model_id,
    )
    spark.createDataFrame([row], PCA_MODELS).write.format("delta").mode("append").save(settings.pca_models_table)
    store_stats(spark, settings, StoredStats(stats, source_version, model.feature_model_id))

    started = time.perf_counter()
    updated = reproject(spark, settings, model)
    seconds["reproject"] = time.perf_counter() - started
    written = []
    if write_plots:
        started = time.perf_counter()
        written = plots.write_pca_plots(spark, settings, model, threshold if k is None else None)
        seconds["plots"] = time.perf_counter() - started
    log.info("PCA v%d (%s over %d new rows): k=%d; %d rows re-projected; %s", model.version, mode, rows_read,
             model.k, updated, ", ".join(f"{name} {s:.1f}s" for name, s in seconds.items()))
    return Refit(model, mode, rows_read, seconds, written)


def run_periodically(
    spark: SparkSession,
    settings: Settings,
    every_minutes: float | None = None,
    min_new_rows: int | None = None,
    poll_seconds: float = 30.0,
    max_fits: int | None = None,
    on_fit: Callable[[Refit], None] | None = None,
    **refit_args: Any,
) -> list[Refit]:
    """Refit whenever ``min_new_rows`` rows arrived, or every ``every_minutes`` if any row did.

    Runs until interrupted, or until ``max_fits`` fits. Each fit is incremental when it can be.
    """
    if every_minutes is None and min_new_rows is None:
        raise ValueError("say when to refit: every N minutes, after M new rows, or both")
    fits: list[Refit] = []
    last_fit = -math.inf
    table.ensure_tables(spark, settings)
    while max_fits is None or len(fits) < max_fits:
        pending = pending_rows(spark, settings)
        due = min_new_rows is not None and pending >= min_new_rows
        due |= every_minutes is not None and pending > 0 and time.monotonic() - last_fit >= every_minutes * 60
        if due:
            log.info("refitting: %d new rows since the last fit", pending)
            fits.append(refit(spark, settings, **refit_args))
            if on_fit is not None:
                on_fit(fits[-1])
            last_fit = time.monotonic()
        else:
            time.sleep(poll_seconds)
    return fits
