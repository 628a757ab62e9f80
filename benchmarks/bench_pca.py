"""PCA: our refit against Spark ML ``PCA`` on the same Delta table, and incremental against full.

The rows are synthetic 1280-d float32 features with a decaying spectrum (a rank-64 signal plus
noise), written to a features table by blind appends of 10,000 rows, as the stream would. Times
are the fit only on both sides: for ours the statistics pass plus the eigensolve (``Refit.seconds``
"stats" + "solve"). Each side is warmed up first on the same session: ours by a statistics pass
over two files in Spark tasks and a solve, Spark ML by a fit of 2,000 rows. The whole refit, with storing the model and re-projecting
every row, is timed too and reported apart, as is the whole refit less its re-projection (what
``--no-reproject`` costs).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from fruits import pca, stats, table
from fruits.config import Settings
from fruits.schema import FEATURES
from pyspark.ml.feature import PCA
from pyspark.ml.functions import array_to_vector
from pyspark.sql import SparkSession

CHUNK = 10_000


def append_synthetic(spark: SparkSession, location: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(1280, 64)))[0].T
    scales = np.geomspace(8.0, 0.2, 64)
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = ((rng.normal(size=(m, 64)) * scales) @ basis + rng.normal(scale=0.05, size=(m, 1280))).astype(np.float32)
        rows = pd.DataFrame({
            "image_id": [uuid.uuid4().hex for _ in range(m)], "bucket": "b", "key": "k", "label": "l", "size": 1,
            "etag": "e", "version_id": None, "event_time": now, "ingested_at": now, "features": list(x),
            "model_id": "synthetic", "pca_features": None, "pca_version": None,
        })
        spark.createDataFrame(rows, FEATURES).write.format("delta").mode("append").save(location)


def run(spark: SparkSession, root: Path, n: int) -> dict[str, float]:
    settings = Settings(table_root=str(root / f"pca-{n}"))
    table.ensure_tables(spark, settings)
    append_synthetic(spark, settings.features_table, n, seed=1)
    vectors = table.read(spark, settings.features_table).select(array_to_vector("features").alias("v"))

    files, _ = stats.table_files(settings, settings.features_table)
    warm = stats.file_stats(spark, settings, files[:2], driver_bytes=0)[0]  # as Spark tasks, like the full pass
    pca.solve(warm)
    started = time.perf_counter()
    full = pca.refit(spark, settings, full=True, write_plots=False)
    full_wall = time.perf_counter() - started
    k = full.model.k
    PCA(k=k, inputCol="v").fit(vectors.limit(2000))
    started = time.perf_counter()
    PCA(k=k, inputCol="v").fit(vectors)
    spark_ml = time.perf_counter() - started

    append_synthetic(spark, settings.features_table, max(1, n // 100), seed=2)
    started = time.perf_counter()
    incremental = pca.refit(spark, settings, write_plots=False)
    incremental_wall = time.perf_counter() - started
    assert incremental.mode == "incremental" and incremental.rows_read == max(1, n // 100)
    fit = lambda r: r.seconds["stats"] + r.seconds["solve"]  # noqa: E731
    return {"rows": n, "k": k, "spark_ml_s": spark_ml, "ours_full_s": fit(full),
            "ours_full_solve_s": full.seconds["solve"], "ours_incremental_s": fit(incremental),
            "ours_incremental_stats_s": incremental.seconds["stats"],
            "ours_incremental_solve_s": incremental.seconds["solve"], "incremental_solver": incremental.solver,
            "incremental_rows": incremental.rows_read, "reproject_full_s": full.seconds["reproject"],
            "refit_full_wall_s": full_wall, "refit_incremental_wall_s": incremental_wall,
            # What `fruits pca refit --no-reproject` costs: the same run less its re-projection.
            "refit_full_no_reproject_s": full_wall - full.seconds["reproject"],
            "refit_incremental_no_reproject_s": incremental_wall - incremental.seconds["reproject"]}
