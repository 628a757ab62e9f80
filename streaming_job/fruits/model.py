"""MobileNetV2 feature extraction: weights resolved on the driver, the model built once per worker.

The driver reads the weights file once and broadcasts its bytes (``WeightsBlob``); each Python
worker builds the Keras model from them the first time it needs it and keeps it in a module-level
cache for every later batch and partition (Spark reuses Python workers). Inference goes through a
``tf.function`` with a fixed input signature, so it is traced once.

Example::

    blob = load_weights("models/mobilenet_v2_1.0_no_top.weights.h5")
    features = get_featurizer(blob)(pixels)   # (n, 224, 224, 3) float32 -> (n, 1280) float32
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import IMAGE_SIZE

ARCHITECTURE = "mobilenet_v2_1.0_224_avgpool"
FEATURE_DIM = 1280
# What keras.applications.MobileNetV2(weights="imagenet", include_top=False) downloads.
IMAGENET_NOTOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + IMAGENET_NOTOP


@dataclass(frozen=True)
class WeightsBlob:
    """The weights file's bytes, broadcast to the executors, and its identity."""

    name: str
    sha256: str
    data: bytes

    @property
    def model_id(self) -> str:
        return f"{ARCHITECTURE}:{self.sha256}"


def resolve_weights(spec: str) -> Path:
    """``imagenet`` -> the official file (downloaded and cached by Keras); otherwise a path."""
    if spec == "imagenet":
        from keras.utils import get_file

        try:
            return Path(get_file(IMAGENET_NOTOP, IMAGENET_URL, cache_subdir="models"))
        except Exception as exc:
            raise RuntimeError(
                f"could not download the ImageNet weights ({exc}). Offline, set FRUITS_WEIGHTS "
                "(or --weights) to a local file, e.g. models/mobilenet_v2_1.0_no_top.weights.h5"
            ) from exc
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; set FRUITS_WEIGHTS to 'imagenet' or a file path")
    return path


def load_weights(spec: str) -> WeightsBlob:
    path = resolve_weights(spec)
    data = path.read_bytes()
    return WeightsBlob(name=path.name, sha256=hashlib.sha256(data).hexdigest(), data=data)


class Featurizer:
    """A MobileNetV2 feature extractor built from a ``WeightsBlob``."""

    def __init__(self, blob: WeightsBlob, threads: int | None = None) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf
        if threads:
            # Before TF's first op in this process; one thread per Spark task core avoids
            # oversubscribing the executor when several tasks run the model at once.
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)

        # Keras picks the loader by file name, so keep the original suffix.
        suffix = ".weights.h5" if blob.name.endswith(".weights.h5") else Path(blob.name).suffix
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"weights{suffix}"
            path.write_bytes(blob.data)
            self.model = keras.applications.MobileNetV2(
                input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), include_top=False, pooling="avg", weights=str(path)
            )
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])
        def infer(pixels: Any) -> Any:
            # keras.applications.mobilenet_v2.preprocess_input: 0..255 -> -1..1
            return model(pixels / 127.5 - 1.0, training=False)

        self._infer = infer
        self.model_id = blob.model_id

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        return self._infer(np.ascontiguousarray(pixels, dtype=np.float32)).numpy()


_FEATURIZERS: dict[str, Featurizer] = {}


def get_featurizer(blob: WeightsBlob, threads: int | None = None) -> Featurizer:
    """The worker's model for these weights, built on first use (``threads``: TensorFlow threads,
    None or 0 for TF's default of every core; only the first call in a process sets them)."""
    featurizer = _FEATURIZERS.get(blob.sha256)
    if featurizer is None:
        featurizer = _FEATURIZERS[blob.sha256] = Featurizer(blob, threads)
    return featurizer
