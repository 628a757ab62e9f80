"""PCA: our refit against Spark ML ``PCA`` on the same Delta table, and incremental against full.

Two kinds of rows, written to a features table by blind appends of 10,000 rows, as the stream would:

- ``synthetic``: 1280-d float32 rows with a decaying spectrum (a rank-64 signal plus noise; k = 27
  at 95 % of the variance), at 20,000 and 100,000 rows, against Spark ML too;
- ``mobilenet``: rows drawn from a Gaussian with the mean and covariance of real MobileNetV2
  features (of sample photos under random crops, rotations, flips, brightness and colour), so with
  their spectrum (k of about 340 at 95 %): what the incremental solve meets on real data.

Times are the fit only on both sides: the statistics pass plus the solve (``Refit.seconds``
"stats" + "solve"), the median of five fits each (full: five from scratch; incremental: five
successive +1 % appends and refits). Each side is warmed up first on the same session: ours by a
statistics pass over two files in Spark tasks and a solve, Spark ML by a fit of 2,000 rows. The
first full and first incremental refit of the synthetic tables are also timed whole (statistics,
solve, storing the model and the statistics; no plots), as ``fruits pca refit`` runs them.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance
from pyspark.ml.feature import PCA
from pyspark.ml.functions import array_to_vector
from pyspark.sql import SparkSession

from fruits.config import Settings
from fruits.featurize.build import compile_model
from fruits.featurize.model import Featurizer
from fruits.io import lake
from fruits.pca import refit as pca
from fruits.pca import stats
from fruits.pca.model import solve
from fruits.spark import tables as table
from fruits.spark.schema import FEATURES

CHUNK = 10_000


ROUNDS = 5
Rows = Callable[[np.random.Generator, int], np.ndarray]  # (rng, m) -> (m, 1280) float32


def synthetic(rng: np.random.Generator, m: int) -> np.ndarray:
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(1280, 64)))[0].T
    scales = np.geomspace(8.0, 0.2, 64)
    return ((rng.normal(size=(m, 64)) * scales) @ basis + rng.normal(scale=0.05, size=(m, 1280))).astype(np.float32)


def mobilenet_like(blob: Any, images: list, count: int = 3000) -> Rows:
    """Rows with the mean and covariance of the MobileNetV2 features of ``count`` augmented sample
    photos (random crops, rotations, flips, brightness and colour; about 30 s here)."""
    featurize = Featurizer(compile_model(blob))
    rng = np.random.default_rng(0)
    photos = [Image.open(path).convert("RGB") for _, path in images]
    features = np.empty((count, 1280), dtype=np.float32)
    for i in range(count):
        im = photos[rng.integers(len(photos))]
        w, h = im.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        im = im.crop((x0, y0, x0 + cw, y0 + ch)).rotate(rng.uniform(-30, 30))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im = ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))).enhance(
            rng.uniform(0.7, 1.3)
        )
        features[i] = featurize(np.asarray(im.resize((224, 224)), dtype=np.float32)[None])[0]
    mean = features.mean(axis=0, dtype=np.float64)
    cov = np.cov(features.T.astype(np.float64))
    factor = np.linalg.cholesky(cov + np.eye(1280) * 1e-9 * np.trace(cov) / 1280)

    def draw(rng: np.random.Generator, m: int) -> np.ndarray:
        return (mean + rng.normal(size=(m, 1280)) @ factor.T).astype(np.float32)

    return draw


def append(spark: SparkSession, location: str, rows: Rows, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    now = dt.datetime.now(dt.UTC)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        frame = pd.DataFrame(
            {
                "image_id": [uuid.uuid4().hex for _ in range(m)],
                "bucket": "b",
                "key": "k",
                "label": "l",
                "size": 1,
                "etag": "e",
                "version_id": None,
                "event_time": now,
                "event_date": now.date(),
                "ingested_at": now,
                "features": list(rows(rng, m)),
                "model_id": "synthetic",
                "pca_features": None,
                "pca_version": None,
            }
        )
        table.frame(spark, frame, FEATURES).write.format("delta").mode("append").save(location)


def fit_seconds(r: pca.Refit) -> float:
    return r.seconds["stats"] + r.seconds["solve"]


def timed_refit(spark: SparkSession, settings: Settings, **args: Any) -> tuple[pca.Refit, float]:
    """A refit and its wall time (the whole refit: fit and store, no plots)."""
    started = time.perf_counter()
    fit = pca.refit(spark, settings, write_plots=False, **args)
    return fit, time.perf_counter() - started


def run(
    spark: SparkSession, root: Path, n: int, rows: Rows = synthetic, name: str = "synthetic", whole: bool = True
) -> dict[str, Any]:
    """Fit times at ``n`` rows; ``whole``: also Spark ML."""
    settings = Settings(table_root=str(root / f"pca-{name}-{n}"))
    table.ensure_tables(spark, settings)
    append(spark, settings.features_table, rows, n, seed=1)

    files, _ = lake.table_files(settings, settings.features_table)
    warm = stats.file_stats(spark, settings, files[:2], driver_bytes=0)[0]  # as Spark tasks, like the full pass
    solve(warm)
    full, full_wall = timed_refit(spark, settings, full=True)
    fulls = [full] + [timed_refit(spark, settings, full=True)[0] for _ in range(ROUNDS - 1)]
    result: dict[str, Any] = {
        "rows": n,
        "k": full.model.k,
        "ours_full_s": statistics.median(map(fit_seconds, fulls)),
        "ours_full_solve_s": statistics.median(r.seconds["solve"] for r in fulls),
    }
    if whole:
        vectors = table.read(spark, settings.features_table).select(array_to_vector("features").alias("v"))
        PCA(k=full.model.k, inputCol="v").fit(vectors.limit(2000))
        started = time.perf_counter()
        PCA(k=full.model.k, inputCol="v").fit(vectors)
        result["spark_ml_s"] = time.perf_counter() - started

    def after_one_percent(seed: int) -> tuple[pca.Refit, float]:
        append(spark, settings.features_table, rows, max(1, n // 100), seed=seed)
        fit, wall = timed_refit(spark, settings)
        assert fit.mode == "incremental" and fit.rows_read == max(1, n // 100)
        return fit, wall

    incremental, incremental_wall = after_one_percent(2)
    incrementals = [incremental] + [after_one_percent(2 + i)[0] for i in range(1, ROUNDS)]
    result |= {
        "ours_incremental_s": statistics.median(map(fit_seconds, incrementals)),
        "ours_incremental_stats_s": statistics.median(r.seconds["stats"] for r in incrementals),
        "ours_incremental_solve_s": statistics.median(r.seconds["solve"] for r in incrementals),
        "incremental_solvers": [r.solver for r in incrementals],
        "incremental_k": [r.model.k for r in incrementals],
        "incremental_rows": incremental.rows_read,
        "fits_s": {"full": [fit_seconds(r) for r in fulls], "incremental": [fit_seconds(r) for r in incrementals]},
    }
    if whole:
        result |= {"refit_full_wall_s": full_wall, "refit_incremental_wall_s": incremental_wall}
    return result
