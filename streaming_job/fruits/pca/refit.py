"""Stage 4: refit PCA over the features table from mergeable sufficient statistics.

The statistics (n, sum x, sum x x^T, float64; ``stats.py``) of the table's rows add up, so the
driver sums them and solves one symmetric eigenproblem (numpy ``eigh``) on the 1280 x 1280
covariance. k is the smallest number of components whose cumulative explained variance reaches the
threshold (default 0.95), or fixed.

Incremental: the statistics are stored (``pca_stats``) with the features-table version they
cover, and with the fit's leading vectors. A refit reads only the rows that blind appends added
since that version (delta-rs's change data feed, ``stats.added_since``) and adds their statistics; ``full=True``
recomputes from scratch. A commit that changed existing rows (other than our own re-projection),
a log that retention has already cleaned, or commits older than VACUUM's retention (``fruits
maintain``; their files may be gone) fall back to a full pass, and the result says so. An
incremental refit then solves by ``update``: one Rayleigh-Ritz step over the stored leading vectors
and the range of the added rows, a small eigenproblem instead of the d x d one, kept only when every
component's residual passes a check (else ``solve`` runs, and ``Refit.solver`` says ``eigh``).

Each fit is a new version in the ``pca_models`` Delta table. Then every row not on it is
re-projected (``pca_features``, ``pca_version``) with one UPDATE, so a query sees one model version;
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, FloatType

from ..config import Settings
from ..io import lake
from ..io.changes import REPROJECT_TAG
from ..spark import tables as table
from ..spark.schema import PCA_MODELS
from .model import PcaModel, basis_size, solve, update
from .stats import StoredStats, added_since, collect_stats, file_stats, latest_stats, pending_rows, store_stats

log = logging.getLogger(__name__)

@dataclass
class Refit:
    """What a refit did: the model, ``full``, ``incremental`` or ``unchanged`` (no new rows, the same
    k: the newest version stands), rows read, the solver (``eigh``: exact; ``rayleigh-ritz``:
    ``update``), seconds per step."""

    model: PcaModel
    mode: str
    rows_read: int
    solver: str
    seconds: dict[str, float] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)


# --- storing, projecting --------------------------------------------------------------------

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


def reproject(spark: SparkSession, settings: Settings, model: PcaModel, attempts: int = 5,
              guard: Callable[[], None] | None = None) -> int:
    """Give every row not yet on ``model`` its projection; returns the rows updated.

    One UPDATE (a scan and a rewrite; a MERGE joining the projections back took 1.6x as long). The
    stream may append while this runs: a blind append of rows that match the UPDATE's condition
    makes it fail with ConcurrentAppendException, an OPTIMIZE committing first with
    ConcurrentDeleteReadException (both retried, ``tables.retried``), and a micro-batch that
    started before the new model was committed lands on the previous version (so we look again
    until no row is stale).
    """
    # A session of its own, so that the commit tag marks this UPDATE only, never a concurrent append.
    session = spark.newSession()
    session.conf.set("spark.databricks.delta.commitInfo.userMetadata", REPROJECT_TAG)

    def update_stale() -> int:
        if guard is not None:
            guard()  # right before each commit (a retry too): the caller's lease is still its own
        features = DeltaTable.forPath(session, settings.features_table)
        features.update(
            condition=_stale(model),
            set={"pca_features": project_column(session, model), "pca_version": F.lit(model.version).cast("long")},
        )
        # numUpdatedRows of our newest UPDATE (appends may follow it)
        return table.newest_metric(features, (F.col("operation") == "UPDATE")
                                   & (F.col("userMetadata") == REPROJECT_TAG), "numUpdatedRows")

    updated = 0
    for _ in range(attempts):
        if DeltaTable.forPath(session, settings.features_table).toDF().where(_stale(model)).isEmpty():
            return updated
        updated += table.retried(update_stale, f"re-projection onto PCA version {model.version}", attempts)
    raise RuntimeError(
        f"rows were still not on PCA version {model.version} after {attempts} attempts; "
        "run `fruits pca reproject` again when the stream is quieter"
    )


def refit(
    spark: SparkSession,
    settings: Settings,
    *,
    threshold: float = 0.95,
    k: int | None = None,
    full: bool = False,
    write_plots: bool = True,
    reproject_rows: bool = True,
    guard: Callable[[], None] | None = None,
) -> Refit:
    """Fit a new PCA version, store it and its statistics, re-project the rows, draw the plots.

    ``reproject_rows=False`` leaves the rows on their PCA version: the refit then costs what the
    new rows cost, not a rewrite of the table. The JVM-free store projects such rows at query
    time; Spark SQL readers see mixed ``pca_version`` values until ``reproject`` runs.
    """
    table.ensure_tables(spark, settings)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    previous = None if full else latest_stats(settings)
    source_version = lake.delta_table(settings, settings.features_table).version()
    increment = added_since(spark, settings, previous.source_table_version, source_version) if previous else None
    rows = None  # the added rows themselves, for the incremental solve, when read on the driver
    if previous is not None and increment is not None:
        mode = "incremental"
        stats, rows_read, rows = previous.stats + increment.stats, increment.stats.n, increment.rows
        model_ids = increment.model_ids | {previous.feature_model_id}
    else:
        mode = "full"
        listed = lake.table_files(settings, settings.features_table, source_version)
        if listed is not None:
            stats, model_ids = file_stats(spark, settings, listed.files)
        else:  # deletion vectors or column mapping: only a Delta reader knows the rows
            stats, model_ids = collect_stats(table.read(spark, settings.features_table, version=source_version))
        rows_read = stats.n
    if len(model_ids) > 1:
        raise ValueError(
            f"the features table mixes feature models {sorted(model_ids)}; PCA needs one. Re-featurize or filter first."
        )
    seconds["stats"] = time.perf_counter() - started

    started = time.perf_counter()
    basis = previous.basis if previous is not None else None
    fit = update(stats, rows, basis, threshold, k) if rows is not None and basis is not None else None
    solver = "rayleigh-ritz" if fit is not None else "eigh"
    fit = fit or solve(stats, threshold, k)
    seconds["solve"] = time.perf_counter() - started
    last = latest_model(spark, settings)
    if mode == "incremental" and rows_read == 0 and last is not None and last.k == fit.k \
            and last.row_count == stats.n:
        # The same statistics and k give the same model: no new version, no rewrite of the table
        # (only rows a failed re-projection left behind are put on it).
        if reproject_rows:
            started = time.perf_counter()
            reproject(spark, settings, last, guard=guard)
            seconds["reproject"] = time.perf_counter() - started
        log.info("PCA v%d is up to date: no new rows since it was fitted", last.version)
        return Refit(last, "unchanged", 0, solver, seconds)
    model = PcaModel(
        version=(last.version + 1) if last else 1, k=fit.k, mean=fit.mean, components=fit.components[:fit.k],
        explained_variance_ratio=fit.ratios, row_count=stats.n, source_table_version=source_version,
        feature_model_id=model_ids.pop(),
    )
    # One row through pandas and Arrow: as Python lists, k x 1280 floats took seconds at k = 340.
    row = pd.DataFrame({
        "version": [model.version], "k": [model.k], "mean": [fit.mean], "components": [model.components.ravel()],
        "explained_variance_ratio": [fit.ratios], "row_count": [model.row_count],
        "source_table_version": [source_version], "fitted_at": [dt.datetime.now(dt.timezone.utc)],
        "feature_model_id": [model.feature_model_id],
    })
    started = time.perf_counter()
    # A version is committed at most once, whatever happens: Delta skips an append whose txnVersion
    # is not above the highest it has committed for this txnAppId, so a second refit that computed
    # the same version (one that lost its lease while paused, say) writes nothing and fails below.
    if guard is not None:
        guard()  # ``fruits pca refit``: its lease is still ours
    spark.createDataFrame(row, PCA_MODELS).write.format("delta").mode("append") \
        .option("txnAppId", "fruits-pca-models").option("txnVersion", model.version).save(settings.pca_models_table)
    # Ours if it holds our components (read back as float32: compared within float32's precision).
    committed = table.read(spark, settings.pca_models_table).where(F.col("version") == model.version) \
        .select("components").collect()
    if len(committed) != 1 or not np.allclose(np.asarray(committed[0].components, dtype=np.float64),
                                              model.components.ravel(), rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"PCA version {model.version} was committed by another refit meanwhile; this one wrote "
                           "nothing. Run the refit again (fruits pca refit takes a lease so that this is rare).")
    store_stats(spark, settings, StoredStats(stats, source_version, model.feature_model_id,
                                             fit.components[:basis_size(fit.k, len(fit.mean))]))
    seconds["store"] = time.perf_counter() - started

    updated = 0
    if reproject_rows:
        started = time.perf_counter()
        updated = reproject(spark, settings, model, guard=guard)
        seconds["reproject"] = time.perf_counter() - started
    written = []
    if write_plots:
        started = time.perf_counter()
        from .plots import write_pca_plots  # matplotlib: loaded by the refit that draws, not by the stream

        written = write_pca_plots(spark, settings, model, threshold if k is None else None)
        seconds["plots"] = time.perf_counter() - started
    log.info("PCA v%d (%s over %d new rows, %s): k=%d; %d rows re-projected; %s", model.version, mode, rows_read,
             solver, model.k, updated, ", ".join(f"{name} {s:.2f}s" for name, s in seconds.items()))
    return Refit(model, mode, rows_read, solver, seconds, written)


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
        pending = pending_rows(settings)
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
