"""MobileNetV2 as the workers run it: a LiteRT (TFLite) flatbuffer, loaded once per Python worker.

The driver compiles the model (``build.compile_model``) and broadcasts the ``CompiledModel``. Each
Python worker loads it into a LiteRT interpreter the first time it needs it and keeps it for every
later batch and partition (Spark reuses Python workers). This module imports neither TensorFlow
nor Spark: a worker runs one model with numpy and LiteRT only.

Why LiteRT rather than a Keras ``tf.function`` in the workers: on the CPU we measured (2 cores of an
AVX-512 EPYC), LiteRT's XNNPACK kernels run this model 2.1x faster per core, one image at a time
(about 140 against 64 img/s on one thread), and a worker carries no TensorFlow. The features agree
with the Keras model's to within 2e-4 (they range up to about 6).

Example::

    features = get_featurizer(compiled)(pixels)   # (n, 224, 224, 3) float32 -> (n, 1280) float32

Limitations: a ``Featurizer`` runs one image at a time under a lock, so share it between threads
only if they can wait for each other; a ``FeaturizerPool`` (one interpreter per core) serves threads
that should not (the HTTP API's).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .native import filtered_stderr

ARCHITECTURE = "mobilenet_v2_1.0_224_avgpool"
FEATURE_DIM = 1280
IMAGE_SIZE = 224  # MobileNetV2's native input; the pipeline resizes every image to it


COMPILED_SUFFIX = ".tflite"  # a compiled model's file; its identity is in a ``.json`` beside it


@dataclass(frozen=True)
class CompiledModel:
    """MobileNetV2 with its preprocessing as a LiteRT flatbuffer: what the driver broadcasts.

    It is also a deployable artifact (``save``/``load``): a cluster's driver loads it as it is, with
    neither TensorFlow nor the internet (``fruits model compile`` writes it).
    """

    model_id: str
    data: bytes

    def save(self, path: Path) -> Path:
        """Write ``path`` (``.tflite``) and its identity beside it (``.json``); returns ``path``."""
        if path.suffix != COMPILED_SUFFIX:
            raise ValueError(f"a compiled model is a {COMPILED_SUFFIX} file, not {path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.data)
        identity = {
            "model_id": self.model_id,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "feature_dim": FEATURE_DIM,
            "image_size": IMAGE_SIZE,
        }
        path.with_suffix(".json").write_text(json.dumps(identity, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> CompiledModel:
        """A model ``save`` wrote; refuses a file that is not the one its ``.json`` describes."""
        identity_file = path.with_suffix(".json")
        if not path.is_file() or not identity_file.is_file():
            raise FileNotFoundError(
                f"compiled model {path} (and {identity_file.name} beside it) not found; "
                "write it with `fruits model compile --out <file>.tflite`"
            )
        data, identity = path.read_bytes(), json.loads(identity_file.read_text())
        if identity.get("sha256") != hashlib.sha256(data).hexdigest():
            raise ValueError(f"{path} is not the model {identity_file.name} describes; compile it again")
        if not str(identity.get("model_id", "")).startswith(f"{ARCHITECTURE}:"):
            raise ValueError(f"{identity_file} names model {identity.get('model_id')!r}, not a {ARCHITECTURE}")
        return cls(identity["model_id"], data)


class Featurizer:
    """Runs a ``CompiledModel`` with LiteRT (XNNPACK), one image per call of the interpreter: on
    CPUs that is the fastest batch size for this model (on one thread, about 140 img/s against 116
    in batches of 32)."""

    def __init__(self, model: CompiledModel, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        with filtered_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU"
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


class FeaturizerPool:
    """``size`` Featurizers of one model (default: one per ``threads`` cores), each of ``threads``
    threads: a call takes an idle one, so that many photos run at once. Called as a
    ``Featurizer`` is."""

    def __init__(self, model: CompiledModel, size: int | None = None, threads: int = 1) -> None:
        self._idle: queue.SimpleQueue[Featurizer] = queue.SimpleQueue()
        for _ in range(size or max(1, (os.cpu_count() or 1) // threads)):
            self._idle.put(Featurizer(model, threads))
        self.model_id = model.model_id

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        featurizer = self._idle.get()  # waits while every interpreter is busy
        try:
            return featurizer(pixels)
        finally:
            self._idle.put(featurizer)


_FEATURIZERS: dict[str, Featurizer] = {}


def get_featurizer(model: CompiledModel, threads: int | None = None) -> Featurizer:
    """The worker's featurizer for this model, made on first use (``threads``: LiteRT threads,
    None or 0 for every core; the first call in a process for a model sets them)."""
    featurizer = _FEATURIZERS.get(model.model_id)
    if featurizer is None:
        featurizer = _FEATURIZERS[model.model_id] = Featurizer(model, threads)
    return featurizer
