"""Featurization throughput, three ways, on the same uploads in one run.

- ours: the featurizer stream (availableNow) over the ledger rows of N uploads through the emulator:
  fetch on the executors, decode, MobileNetV2, Delta appends of the new images. A warm-up run of 64 uploads
  on the same tables and checkpoint first pays the one-off costs (JVM code generation, the model
  build in each worker, Delta's first snapshot of each table), as a long-running stream does once.
- original: the original notebooks' layout run locally on the same objects: a Spark batch
  ``binaryFile`` read, ``repartition(20)``, a Scalar Iterator pandas UDF that rebuilds the model from
  broadcast weights, ``model.predict``, a parquet write. Warmed up the same way.
- ceiling: the same model in this one Python process on pre-decoded tensors, on every core, two ways:
  the issue's compiled Keras ``tf.function`` (batches of ``batch_size``), and the LiteRT model that
  ours runs (``fruits.featurize.model.Featurizer``), so that both the asked-for ratio and our own overhead
  show.

Also the peak resident memory of a Python worker after our run.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import bench_settings, ingested, peak_worker_rss_mb, timed_stream
from pyspark.sql import SparkSession
from pyspark.sql.functions import pandas_udf

from fruits import stream
from fruits.config import Settings
from fruits.featurize.build import compile_model, keras_function, keras_model
from fruits.featurize.images import decode
from fruits.featurize.model import Featurizer

WARM_UP = 64


def ours(spark: SparkSession, endpoint: str, root: Path, images: list, uploads: int, blob: Any) -> dict[str, float]:
    settings = bench_settings(endpoint, root, "featurize")
    ingested(settings, images, WARM_UP, "warm")
    timed_stream(spark, settings, blob)
    ingested(settings, images, uploads, "main")
    warm_workers(spark, settings, blob)
    seconds = timed_stream(spark, settings, blob)
    rows = spark.read.format("delta").load(settings.features_table).count() - WARM_UP
    return {
        "rows": rows,
        "seconds": seconds,
        "images_per_s": rows / seconds,
        "worker_peak_rss_mb": peak_worker_rss_mb(),
        "bucket": settings.bucket,
    }


def warm_workers(spark: SparkSession, settings: Settings, blob: Any) -> None:
    """Build the model in each Python worker again: Spark stops workers idle for a minute, and
    uploading plus ingesting the main run takes longer than that (a busy stream keeps them)."""
    model = spark.sparkContext.broadcast(compile_model(blob))
    # Any key will do (a missing one is quarantined): the model is built before the first fetch.
    rows = spark.createDataFrame(
        [(settings.bucket, "warm-up/none.jpg", None, None)] * 8,
        "bucket string, key string, etag string, version_id string",
    )
    stream.featurize(rows, model, settings, blob.model_id).select("result.reason").collect()


def original(spark: SparkSession, bucket: str, root: Path, blob: Any) -> dict[str, float]:
    """The notebooks' approach over the objects ours read (warm-up copies first, then the main ones)."""
    weights = spark.sparkContext.broadcast(keras_model(blob).get_weights())

    @pandas_udf("array<float>")  # type: ignore[call-overload]
    def featurize_udf(content_series_iter: Iterator[pd.Series]) -> Iterator[pd.Series]:
        import keras
        from PIL import Image

        model = keras.applications.MobileNetV2(
            weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
        )
        model.set_weights(weights.value)

        def preprocess(content: bytes) -> np.ndarray:
            img = Image.open(io.BytesIO(content)).resize([224, 224])
            return keras.applications.mobilenet_v2.preprocess_input(np.asarray(img, dtype=np.float32))

        for content_series in content_series_iter:
            preds = model.predict(np.stack(content_series.map(preprocess)), verbose=0)
            yield pd.Series([p.flatten() for p in preds])

    def run(glob: str, out: str) -> tuple[int, float]:
        started = time.perf_counter()
        images = (
            spark.read.format("binaryFile")
            .option("pathGlobFilter", glob)
            .option("recursiveFileLookup", "true")
            .load(f"s3a://{bucket}/uploads/")
        )
        images.repartition(20).select("path", featurize_udf("content").alias("features")).write.mode(
            "overwrite"
        ).parquet(out)
        seconds = time.perf_counter() - started
        return spark.read.parquet(out).count(), seconds

    run("warm*.jpg", str(root / "original-warm"))
    rows, seconds = run("main*.jpg", str(root / "original"))
    return {"rows": rows, "seconds": seconds, "images_per_s": rows / seconds}


def ceiling_tf_function(blob: Any, images: list, total: int, batch_size: int) -> dict[str, float]:
    """The issue's ceiling: the Keras model in a compiled ``tf.function``, TensorFlow's threads."""
    infer = keras_function(blob)
    return in_memory(lambda pixels: infer(pixels).numpy(), images, total, batch_size)


def ceiling_litert(blob: Any, images: list, total: int, batch_size: int) -> dict[str, float]:
    """Ours without the pipeline: the LiteRT model the stream runs, on every core."""
    return in_memory(Featurizer(compile_model(blob)), images, total, batch_size)


def in_memory(
    featurize: Callable[[np.ndarray], np.ndarray], images: list, total: int, batch_size: int
) -> dict[str, float]:
    """Throughput of ``featurize`` on pre-decoded sample images, at least ``total`` of them."""
    pixels = np.stack([decode(path.read_bytes()) for _, path in images])
    featurize(pixels[:batch_size])  # trace + warm up
    reps = -(-total // len(pixels))
    started = time.perf_counter()
    for _ in range(reps):
        for start in range(0, len(pixels), batch_size):
            featurize(pixels[start : start + batch_size])
    seconds = time.perf_counter() - started
    return {"rows": reps * len(pixels), "seconds": seconds, "images_per_s": reps * len(pixels) / seconds}
