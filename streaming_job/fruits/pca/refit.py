"""Stage 4: refit PCA over the features table from mergeable sufficient statistics.

The statistics (n, sum x, sum x x^T, float64; ``stats.py``) of the table's rows add up, so the
driver sums them and solves one symmetric eigenproblem (numpy ``eigh``) on the 1280 x 1280
covariance. k is the smallest number of components whose cumulative explained variance reaches the
threshold (default 0.95), or fixed.

Incremental: the statistics are stored (``pca_stats``) with the features-table version they
cover, and with the fit's leading vectors. A refit reads only the rows that blind appends added
since that version (delta-rs's change data feed, ``stats.added_since``) and adds their statistics; ``full=True``
recomputes from scratch. A commit that changed existing rows, a log that retention has already
cleaned, or commits older than VACUUM's retention (their files may be gone) fall back to a full
pass, and the result says so. An incremental refit then solves by ``update``: one Rayleigh-Ritz step
over the stored leading vectors and the range of the added rows, a small eigenproblem instead of
the d x d one, kept only when every component's residual passes a check (else ``solve`` runs, and
``Refit.solver`` says ``eigh``).

Each fit is a new version in ``pca_models`` (``registry.commit``). The refit writes the PCA tables
only: it never rewrites ``features``, so its cost follows the rows added since the last fit, not the
table. Rows keep the projection the stream gave them at ingest (``pca_version``: the newest model
then); a reader that wants every row in one space projects where it reads (``registry``, the
``features_pca`` view, the store). Two plots are written next to each version, from a bounded
sample of rows: ``<table root>/pca_plots/v<N>/scree.png`` and ``pc1_pc2.png``. Then the refit
brings the similarity index up to date (``fruits.similarity.update``: the new rows as a segment, or
a rebuild in the new version once the table has doubled), then the classifier
(``fruits.classifier.update``: the reference rows added since, a new version when there are any),
under the same lease.

Example::

    fit = refit(spark, settings, threshold=0.95)
    print(fit.model.version, fit.model.k, fit.mode, fit.rows_read)

Limitations: run one refit at a time (the periodic mode is one loop; ``fruits pca refit`` takes a
lease); a second refit that computed the same version commits nothing and fails.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from .. import classifier as classifiers
from .. import similarity
from ..classifier import ClassifierUpdate
from ..config import Settings
from ..io import lake
from ..similarity import IndexUpdate
from ..spark import tables as table
from . import registry
from .model import PcaModel, basis_size, solve, update
from .stats import StoredStats, added_since, collect_stats, file_stats, latest_stats, pending_rows, store_stats

log = logging.getLogger(__name__)

# What a refit does, in order (``on_step`` is told as each starts; an unchanged model skips store and plots).
STEPS = ("statistics", "solve", "store", "plots", "index", "classifier")


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
    index: IndexUpdate | None = None
    classifier: ClassifierUpdate | None = None


def refit(
    spark: SparkSession,
    settings: Settings,
    *,
    threshold: float = 0.95,
    k: int | None = None,
    full: bool = False,
    write_plots: bool = True,
    update_index: bool = True,
    update_classifier: bool = True,
    reject_quantile: float | None = None,
    guard: Callable[[], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Refit:
    """Fit a new PCA version, store it and its statistics, draw the plots, update the classifier
    and the similarity index. Writes the PCA tables, ``classifiers`` and the index only:
    ``features`` is read, never rewritten. ``reject_quantile``: the classifier's (default
    ``classifier.fit.REJECT_QUANTILE``; a new value fits a new classifier version). ``full``
    recomputes the PCA statistics and the classifier's sample from every row.
    ``guard`` is called right before each commit (``fruits pca refit``: its lease is still its own);
    ``on_step`` with each of ``STEPS`` as it starts (a progress bar)."""
    classifiers.check_quantile(reject_quantile)  # before anything is written
    step = on_step or (lambda name: None)
    step("statistics")
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

    step("solve")
    started = time.perf_counter()
    basis = previous.basis if previous is not None else None
    fit = update(stats, rows, basis, threshold, k) if rows is not None and basis is not None else None
    solver = "rayleigh-ritz" if fit is not None else "eigh"
    fit = fit or solve(stats, threshold, k)
    seconds["solve"] = time.perf_counter() - started
    last = registry.model(settings)
    if mode == "incremental" and rows_read == 0 and last is not None and last.k == fit.k and last.row_count == stats.n:
        # The same statistics and k give the same model: the newest version stands.
        log.info("PCA v%d is up to date: no new rows since it was fitted", last.version)
        index = _update_index(update_index, spark, settings, seconds, guard, step)
        classifier = _update_classifier(update_classifier, spark, settings, seconds, guard, reject_quantile, full, step)
        return Refit(last, "unchanged", 0, solver, seconds, index=index, classifier=classifier)
    model = PcaModel(
        version=(last.version + 1) if last else 1,
        k=fit.k,
        mean=fit.mean,
        components=fit.components[: fit.k],
        explained_variance_ratio=fit.ratios,
        row_count=stats.n,
        source_table_version=source_version,
        feature_model_id=model_ids.pop(),
    )
    step("store")
    started = time.perf_counter()
    if guard is not None:
        guard()
    registry.commit(spark, settings, model)
    store_stats(
        spark,
        settings,
        StoredStats(stats, source_version, model.feature_model_id, fit.components[: basis_size(fit.k, len(fit.mean))]),
    )
    seconds["store"] = time.perf_counter() - started

    written = []
    if write_plots:
        step("plots")
        started = time.perf_counter()
        from .plots import write_pca_plots  # matplotlib: loaded by the refit that draws, not by the stream

        written = write_pca_plots(spark, settings, model, threshold if k is None else None)
        seconds["plots"] = time.perf_counter() - started
    index = _update_index(update_index, spark, settings, seconds, guard, step)
    classifier = _update_classifier(update_classifier, spark, settings, seconds, guard, reject_quantile, full, step)
    log.info(
        "PCA v%d (%s over %d new rows, %s): k=%d; %s",
        model.version,
        mode,
        rows_read,
        solver,
        model.k,
        ", ".join(f"{name} {s:.2f}s" for name, s in seconds.items()),
    )
    return Refit(model, mode, rows_read, solver, seconds, written, index, classifier)


def _update_classifier(
    wanted: bool,
    spark: SparkSession,
    settings: Settings,
    seconds: dict[str, float],
    guard: Callable[[], None] | None,
    reject_quantile: float | None,
    rebuild: bool,
    step: Callable[[str], None],
) -> ClassifierUpdate | None:
    if not wanted:
        return None
    step("classifier")
    done = classifiers.update(spark, settings, guard=guard, reject_quantile=reject_quantile, rebuild=rebuild)
    seconds["classifier"] = done.seconds
    return done


def _update_index(
    wanted: bool,
    spark: SparkSession,
    settings: Settings,
    seconds: dict[str, float],
    guard: Callable[[], None] | None,
    step: Callable[[str], None],
) -> IndexUpdate | None:
    if not wanted:
        return None
    step("index")
    done = similarity.update(settings, guard=guard, spark=spark)
    seconds["index"] = done.seconds
    return done


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
