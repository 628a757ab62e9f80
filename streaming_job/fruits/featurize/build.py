"""Building the model on the driver: the weights file, the Keras MobileNetV2, its LiteRT compilation.

The driver reads the weights file (``WeightsBlob``), builds the Keras MobileNetV2 with them and
converts it, preprocessing included, into a LiteRT flatbuffer: a ``CompiledModel`` of about 9 MB,
the weights plus the graph. That is what the stream broadcasts; the workers run it with
``model.Featurizer`` and never import TensorFlow. TensorFlow is imported here only inside the
functions that need it.

Example::

    compiled = compile_model(load_weights("models/mobilenet_v2_1.0_no_top.weights.h5"))

Limitations: compiling needs TensorFlow and takes 1-2 s (once per process; it is memoized).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .model import ARCHITECTURE, COMPILED_SUFFIX, IMAGE_SIZE, CompiledModel
from .native import filtered_stderr

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


_NO_TENSORFLOW = (
    "building the model from weights needs TensorFlow and Keras: pip install 'fruits-pipeline[model]', "
    "or set FRUITS_WEIGHTS to a compiled model (`fruits model compile --out model.tflite` where they are)"
)


def _keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with filtered_stderr():  # TensorFlow's C++ start-up notices
            import keras
    except ImportError as exc:
        raise RuntimeError(_NO_TENSORFLOW) from exc
    return keras


def resolve_weights(spec: str) -> Path:
    """``imagenet`` -> the official file (downloaded and cached by Keras); otherwise a path."""
    if spec == "imagenet":
        get_file = _keras().utils.get_file

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


def keras_model(blob: WeightsBlob) -> Any:
    """The Keras MobileNetV2 (no top, average pooling) with these weights; needs TensorFlow."""
    keras = _keras()

    # Keras picks the loader by file name, so keep the original suffix.
    suffix = ".weights.h5" if blob.name.endswith(".weights.h5") else Path(blob.name).suffix
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"weights{suffix}"
        path.write_bytes(blob.data)
        # Keras checks every array's shape against the architecture; the values are ours to check.
        model = keras.applications.MobileNetV2(
            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), include_top=False, pooling="avg", weights=str(path)
        )
    broken = [w.path for w in model.weights if not np.isfinite(np.asarray(w.numpy())).all()]
    if broken:
        raise ValueError(
            f"weights {blob.name} hold NaN or infinite values ({', '.join(broken[:3])}"
            f"{', ...' if len(broken) > 3 else ''}): the file is corrupt; use imagenet or a good copy"
        )
    return model


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


def load_model(spec: str) -> CompiledModel:
    """The model ``spec`` names, ready to broadcast: a compiled ``.tflite`` artifact loaded as it is
    (no TensorFlow), or ``imagenet`` / a weights file built and compiled here (TensorFlow)."""
    if spec.endswith(COMPILED_SUFFIX):
        return CompiledModel.load(Path(spec).expanduser())
    return compile_model(load_weights(spec))


def as_compiled(model: WeightsBlob | CompiledModel) -> CompiledModel:
    return model if isinstance(model, CompiledModel) else compile_model(model)


_COMPILED: dict[str, CompiledModel] = {}


def compile_model(blob: WeightsBlob) -> CompiledModel:
    """Build the model from ``blob`` and convert it to LiteRT (memoized per process)."""
    compiled = _COMPILED.get(blob.sha256)
    if compiled is None:
        with filtered_stderr():  # the devices' notices (no GPU here) and the converter's
            infer = keras_function(blob)
            import tensorflow as tf

            # The tf.function, not the Keras model, must be the trackable: it is what holds the
            # variables the converter freezes (given the model, it writes a graph without weights).
            converter = tf.lite.TFLiteConverter.from_concrete_functions([infer.get_concrete_function()], infer)
            compiled = _COMPILED[blob.sha256] = CompiledModel(blob.model_id, converter.convert())
    return compiled
