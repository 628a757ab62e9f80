"""The compiled (LiteRT) model against the Keras model it was converted from."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fruits.images import decode
from fruits.model import FEATURE_DIM, Featurizer, compile_model, get_featurizer, keras_model
from fruits.upload import sample_images

from conftest import SAMPLE


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


def test_batches_of_any_size_give_the_same_rows(weights_blob) -> None:
    pixels = sample_pixels(5)
    featurizer = get_featurizer(compile_model(weights_blob), threads=1)
    assert get_featurizer(compile_model(weights_blob)) is featurizer  # one per process and model
    whole = featurizer(pixels)
    np.testing.assert_array_equal(np.concatenate([featurizer(pixels[:2]), featurizer(pixels[2:])]), whole)
    assert featurizer(pixels[:0]).shape == (0, FEATURE_DIM)


@pytest.mark.spark
def test_python_workers_run_the_broadcast_model_without_tensorflow(spark, weights_blob) -> None:
    """What the stream does in each worker: load the broadcast LiteRT model and run it. TensorFlow
    is never imported there (it would cost a worker about 1.5 GB)."""
    model = spark.sparkContext.broadcast(compile_model(weights_blob))
    pixels = sample_pixels(2)

    def run(_: object) -> Iterator[tuple[bool, float]]:
        import sys

        from fruits.model import get_featurizer

        features = get_featurizer(model.value, threads=1)(pixels)
        yield "tensorflow" in sys.modules, float(np.abs(features).sum())

    results = spark.sparkContext.parallelize(range(2), 2).mapPartitions(run).collect()
    expected = float(np.abs(Featurizer(compile_model(weights_blob), threads=1)(pixels)).sum())
    assert [imported for imported, _ in results] == [False, False]
    assert all(total == pytest.approx(expected, rel=1e-5) for _, total in results)
