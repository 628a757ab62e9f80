"""Quiet by default: the commands a user runs print what they did, not the start-up notices and
warnings of Spark, TensorFlow and LiteRT that nobody can act on; -v brings the logs back."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from fruits.local import ingest, upload

from conftest import SAMPLE, WEIGHTS
from helpers import fruits_env

pytestmark = pytest.mark.spark

# What `make demo` printed before: Spark's log4j banner and unactionable warnings, TensorFlow's and
# LiteRT's C++ start-up notices. (The JVM's own "Using incubator modules" line is not Spark's to
# silence: it stays.)
NOISE = re.compile("|".join([
    r"NativeCodeLoader", r"Using Spark's default log4j profile", r"Setting default log level",
    r"To adjust logging level", r"ResolveWriteToStream", r"Truncated the string representation",
    r"locally checkpointed", r"task of very large size", r"oneDNN custom operations", r"cuInit",
    r"cuda drivers", r"absl::InitializeLog", r"XNNPACK delegate",
]))


def fruits(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fruits", *argv], env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_model_compile_and_a_stream_print_no_noise(settings, tmp_path) -> None:
    env = fruits_env(settings)
    compiled = fruits(env, "model", "compile", "--weights", str(WEIGHTS), "--out", str(tmp_path / "model.tflite"))
    assert compiled.returncode == 0, compiled.stderr
    assert [line for line in (compiled.stdout + compiled.stderr).splitlines() if NOISE.search(line)] == []

    upload.upload_images(settings, upload.sample_images(SAMPLE, per_class=1)[:3])
    assert ingest.drain(settings, visibility_timeout=5).failed == 0
    streamed = fruits(env, "stream")  # the weights file: the driver compiles the model with TensorFlow
    output = streamed.stdout + streamed.stderr
    assert streamed.returncode == 0, output[-3000:]
    assert [line for line in output.splitlines() if NOISE.search(line)] == [], output[-3000:]
    assert '"images": 3' in output  # the per-micro-batch line stays

    # -v: nothing is filtered (TensorFlow's notices are back: the filter, not luck, hid them).
    loud = fruits(env, "-v", "model", "compile", "--weights", str(WEIGHTS), "--out", str(tmp_path / "again.tflite"))
    assert loud.returncode == 0 and NOISE.search(loud.stderr), loud.stderr[-2000:]
