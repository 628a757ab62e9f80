"""MobileNetV2 feature extraction: compiled once on the driver, run by LiteRT in the workers.

The driver reads the weights file (``WeightsBlob``), builds the Keras MobileNetV2 with them and
converts it, preprocessing included, into a LiteRT (TFLite) flatbuffer: a ``CompiledModel`` of
about 9 MB, the weights plus the graph. That is what the stream broadcasts. Each Python worker
loads it into a LiteRT interpreter the first time it needs it and keeps it for every later batch
and partition (Spark reuses Python workers). Workers never import TensorFlow.

Why not a Keras ``tf.function`` in the workers: on the CPU we measured (2 cores of an AVX-512 EPYC),
LiteRT's XNNPACK kernels run this model 2.1x faster per core, one image at a time (about 140 against
64 img/s on one thread), and a worker no longer carries TensorFlow. The features agree with the
Keras model's to within 4e-5 (they range up to about 6); ``model_id`` names the weights, as before.

Example::

    compiled = compile_model(load_weights("models/mobilenet_v2_1.0_no_top.weights.h5"))
    features = get_featurizer(compiled)(pixels)   # (n, 224, 224, 3) float32 -> (n, 1280) float32

Limitations: compiling needs TensorFlow and takes 1-2 s (once per process; it is memoized).
A ``Featurizer`` runs one image at a time under a lock, so share it between threads only if they
can wait for each other.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
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


@dataclass(frozen=True)
class CompiledModel:
    """MobileNetV2 with its preprocessing as a LiteRT flatbuffer: what the driver broadcasts."""

    model_id: str
    data: bytes


def keras_model(blob: WeightsBlob) -> Any:
    """The Keras MobileNetV2 (no top, average pooling) with these weights; needs TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    # Keras picks the loader by file name, so keep the original suffix.
    suffix = ".weights.h5" if blob.name.endswith(".weights.h5") else Path(blob.name).suffix
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"weights{suffix}"
        path.write_bytes(blob.data)
        return keras.applications.MobileNetV2(
            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), include_top=False, pooling="avg", weights=str(path)
        )


def keras_function(blob: WeightsBlob) -> Any:
    """The Keras model with its preprocessing as a traced ``tf.function``: what ``compile_model``
    converts, and the in-memory ceiling the benchmark compares with; needs TensorFlow."""
    model = keras_model(blob)  # first: it quiets TensorFlow's logging before the import
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])
    def infer(pixels: Any) -> Any:
        # keras.applications.mobilenet_v2.preprocess_input: 0..255 -> -1..1
        return model(pixels / 127.5 - 1.0, training=False)

    return infer


_COMPILED: dict[str, CompiledModel] = {}


def compile_model(blob: WeightsBlob) -> CompiledModel:
    """Build the model from ``blob`` and convert it to LiteRT (memoized per process)."""
    compiled = _COMPILED.get(blob.sha256)
    if compiled is None:
        infer = keras_function(blob)
        import tensorflow as tf

        # The tf.function, not the Keras model, must be the trackable: it is what holds the variables
        # the converter freezes (given the model, it writes a graph without weights, all NaN out).
        converter = tf.lite.TFLiteConverter.from_concrete_functions([infer.get_concrete_function()], infer)
        compiled = _COMPILED[blob.sha256] = CompiledModel(blob.model_id, converter.convert())
    return compiled


class Featurizer:
    """Runs a ``CompiledModel`` with LiteRT (XNNPACK), one image per call of the interpreter: on
    CPUs that is the fastest batch size for this model (on one thread, about 140 img/s against 116
    in batches of 32)."""

    def __init__(self, model: CompiledModel, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=model.data, num_threads=threads or os.cpu_count() or 1)
        self._interpreter.allocate_tensors()  # for the model's fixed input shape (1, 224, 224, 3)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()  # an interpreter is not thread-safe
        self.model_id = model.model_id

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        features = np.empty((len(pixels), FEATURE_DIM), dtype=np.float32)
        with self._lock:
            for i, image in enumerate(pixels):
                self._interpreter.set_tensor(self._input, np.ascontiguousarray(image[None], dtype=np.float32))
                self._interpreter.invoke()
                features[i] = self._interpreter.get_tensor(self._output)[0]
        return features


_FEATURIZERS: dict[str, Featurizer] = {}


def get_featurizer(model: CompiledModel, threads: int | None = None) -> Featurizer:
    """The worker's featurizer for this model, made on first use (``threads``: LiteRT threads,
    None or 0 for every core; the first call in a process for a model sets them)."""
    featurizer = _FEATURIZERS.get(model.model_id)
    if featurizer is None:
        featurizer = _FEATURIZERS[model.model_id] = Featurizer(model, threads)
    return featurizer
