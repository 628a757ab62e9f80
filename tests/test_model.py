"""The compiled (LiteRT) model against the Keras model it was converted from, and the workers' UDF
body (``featurize_batches``) without Spark."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE
from fruits.featurize.batch import WorkerOptions, featurize_batches
from fruits.featurize.build import compile_model, keras_model
from fruits.featurize.images import decode
from fruits.featurize.model import FEATURE_DIM, Featurizer, get_featurizer
from fruits.io import aws
from fruits.local.upload import sample_images


def sample_pixels(n: int) -> np.ndarray:
    images = sample_images(SAMPLE)[:: 300 // n][:n]
    return np.stack([decode(path.read_bytes()) for _, path in images])


def test_litert_features_match_keras(weights_blob) -> None:
    pixels = sample_pixels(12)
    compiled = compile_model(weights_blob)
    assert compiled.model_id == weights_blob.model_id
    got = Featurizer(compiled, threads=1)(pixels)
    expected = keras_model(weights_blob).predict(pixels / 127.5 - 1.0, verbose=0)
    assert got.shape == (12, FEATURE_DIM) and got.dtype == np.float32
    # The features reach about 6: float32 rounding in other kernels, not a different model.
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)
    assert expected.max() > 1.0  # not a degenerate (all-zero) output that would match anything


def test_one_featurizer_per_process_and_model(weights_blob) -> None:
    featurizer = get_featurizer(compile_model(weights_blob), threads=1)
    assert get_featurizer(compile_model(weights_blob)) is featurizer
    assert featurizer(sample_pixels(2)[:0]).shape == (0, FEATURE_DIM)


def test_a_pool_runs_photos_from_threads_at_once_with_the_same_features(weights_blob) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fruits.featurize.model import FeaturizerPool

    compiled, pixels = compile_model(weights_blob), sample_pixels(8)
    alone = Featurizer(compiled, threads=1)(pixels)
    pool = FeaturizerPool(compiled, size=2)
    with ThreadPoolExecutor(4) as threads:
        together = np.concatenate(list(threads.map(lambda i: pool(pixels[i : i + 1]), range(len(pixels)))))
    np.testing.assert_array_equal(together, alone)
    assert pool.model_id == compiled.model_id


def test_the_udf_body_keeps_rows_in_order_across_chunks_and_failures(settings, weights_blob) -> None:
    """``featurize_batches`` cuts each input batch into chunks of ``batch_size`` for the model, with
    bad images in between: every row still gets its own image's features, or its own reason."""
    s3 = aws.client("s3", settings)
    photos = [path for _, path in sample_images(SAMPLE)[::60]][:5]
    keys, bodies = [], []
    for i, path in enumerate(photos):
        keys.append(f"uploads/x/{i}.jpg")
        bodies.append(path.read_bytes())
        if i in (1, 2):  # a bad image after the 2nd and 3rd photo: chunks no longer align with rows
            keys.append(f"uploads/x/bad{i}.jpg")
            bodies.append(b"not an image")
    for key, body in zip(keys, bodies):
        s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
    column = lambda values: pd.Series(values, dtype=object)  # noqa: E731
    batch = (
        column([settings.bucket] * len(keys)),
        column(keys),
        column([None] * len(keys)),
        column([None] * len(keys)),
    )
    options = WorkerOptions(endpoint_url=settings.endpoint_url, region=settings.region, batch_size=2)
    compiled = compile_model(weights_blob)
    [frame] = list(featurize_batches(compiled, options, [batch]))

    expected = Featurizer(compiled, threads=1)(np.stack([decode(path.read_bytes()) for path in photos]))
    good = [i for i, key in enumerate(keys) if "bad" not in key]
    np.testing.assert_allclose(np.stack(frame["features"].iloc[good].to_numpy()), expected, rtol=0, atol=1e-5)
    bad = [i for i in range(len(keys)) if i not in good]
    assert frame["features"].iloc[bad].isna().all() and list(frame["reason"].iloc[bad]) == ["not_an_image"] * 2
    assert frame["reason"].iloc[good].isna().all()


@pytest.mark.spark
def test_python_workers_run_the_broadcast_model_without_tensorflow(spark, weights_blob) -> None:
    """What the stream does in each worker: load the broadcast LiteRT model and run it. TensorFlow
    is never imported there (it would cost a worker about 1.5 GB)."""
    model = spark.sparkContext.broadcast(compile_model(weights_blob))
    pixels = sample_pixels(2)

    def run(_: object) -> Iterator[tuple[bool, float]]:
        import sys

        from fruits.featurize.model import get_featurizer

        features = get_featurizer(model.value, threads=1)(pixels)
        yield "tensorflow" in sys.modules, float(np.abs(features).sum())

    results = spark.sparkContext.parallelize(range(2), 2).mapPartitions(run).collect()
    expected = float(np.abs(Featurizer(compile_model(weights_blob), threads=1)(pixels)).sum())
    assert [imported for imported, _ in results] == [False, False]
    assert all(total == pytest.approx(expected, rel=1e-5) for _, total in results)


def test_a_compiled_model_saved_and_loaded_is_the_same_model(weights_blob, tmp_path) -> None:
    """The deployable artifact: a driver loads it without TensorFlow (``load_model``), and it is
    refused when the file is not the one its identity describes."""
    from fruits.featurize.build import load_model
    from fruits.featurize.model import CompiledModel

    compiled = compile_model(weights_blob)
    path = compiled.save(tmp_path / "m.tflite")
    assert load_model(str(path)) == compiled and compiled.model_id == weights_blob.model_id
    with pytest.raises(ValueError, match=r"\.tflite file"):
        compiled.save(tmp_path / "m.bin")
    path.write_bytes(compiled.data[:-1] + b"x")
    with pytest.raises(ValueError, match="not the model"):
        CompiledModel.load(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="fruits model compile"):
        CompiledModel.load(path)


def test_an_object_the_job_cannot_read_is_quarantined_and_the_rest_land(settings, weights_blob) -> None:
    """A ledger row naming a bucket that does not exist (NoSuchBucket: an object the job may
    not read) is that upload's failure, with S3's code; the batch's good image gets its features."""
    photo = sample_images(SAMPLE)[0][1]
    aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="uploads/x/good.jpg", Body=photo.read_bytes())
    column = lambda values: pd.Series(values, dtype=object)  # noqa: E731
    batch = (
        column([settings.bucket, "fruits-no-such-bucket"]),
        column(["uploads/x/good.jpg", "uploads/x/a.jpg"]),
        column([None, None]),
        column([None, None]),
    )
    options = WorkerOptions(endpoint_url=settings.endpoint_url, region=settings.region)
    [frame] = list(featurize_batches(compile_model(weights_blob), options, [batch]))
    assert frame["reason"].iloc[0] is None and len(frame["features"].iloc[0]) == FEATURE_DIM
    assert frame["reason"].iloc[1] == "fetch_failed" and "NoSuchBucket" in frame["error"].iloc[1]


def test_non_finite_features_fail_the_batch_before_any_row(settings, weights_blob, monkeypatch) -> None:
    """A model that puts out NaN for valid images fails loudly; no row carries its output."""
    from fruits.featurize import batch as worker

    photo = sample_images(SAMPLE)[0][1]
    aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="uploads/x/good.jpg", Body=photo.read_bytes())
    monkeypatch.setattr(
        worker, "get_featurizer", lambda model, threads: lambda x: np.full((len(x), FEATURE_DIM), np.nan)
    )
    column = lambda values: pd.Series(values, dtype=object)  # noqa: E731
    batch = (column([settings.bucket]), column(["uploads/x/good.jpg"]), column([None]), column([None]))
    options = WorkerOptions(endpoint_url=settings.endpoint_url, region=settings.region)
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        list(featurize_batches(compile_model(weights_blob), options, [batch]))


def test_weights_with_nan_values_are_refused(weights_blob, tmp_path) -> None:
    """Right shapes, wrong values (a corrupt copy): refused with a message, before any row."""
    from fruits.featurize.build import load_weights

    model = keras_model(weights_blob)
    kernel = model.weights[0]
    kernel.assign(np.full(kernel.shape, np.nan, dtype=np.float32))
    broken = tmp_path / "broken.weights.h5"
    model.save_weights(broken)
    with pytest.raises(ValueError, match="NaN or infinite"):
        compile_model(load_weights(str(broken)))
