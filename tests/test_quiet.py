"""Quiet by default: the commands a user runs print what they did, not the start-up notices and
warnings of Spark, TensorFlow and LiteRT that nobody can act on; -v brings the logs back."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import SAMPLE, WEIGHTS
from fruits.local import ingest, upload
from helpers import fruits_env, on_terminal

pytestmark = pytest.mark.spark

# What `make demo` printed before: Spark's log4j banner and unactionable warnings, TensorFlow's and
# LiteRT's C++ start-up notices. (The JVM's own "Using incubator modules" line is not Spark's to
# silence: it stays.)
NOISE = re.compile(
    "|".join(
        [
            r"NativeCodeLoader",
            r"Using Spark's default log4j profile",
            r"Setting default log level",
            r"To adjust logging level",
            r"ResolveWriteToStream",
            r"Truncated the string representation",
            r"locally checkpointed",
            r"task of very large size",
            r"oneDNN custom operations",
            r"cuInit",
            r"cuda drivers",
            r"absl::InitializeLog",
            r"XNNPACK delegate",
            r"Deleted \d+ files",
        ]
    )
)


# Printed by the JVM itself (Spark's launcher adds the module), not through any logger we configure.
JVM_NOTICE = "WARNING: Using incubator modules: jdk.incubator.vector"


PROGRESS = re.compile(r"(refit|maintain): \d+/\d+ step \[")


def fruits(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fruits", *argv], env=env, capture_output=True, text=True, timeout=600)


def noise(output: str) -> list[str]:
    return [line for line in output.splitlines() if NOISE.search(line)]


def test_the_commands_of_a_day_print_no_noise_and_the_stream_draws_its_progress(settings, tmp_path) -> None:
    env = fruits_env(settings)
    compiled = fruits(env, "model", "compile", "--weights", str(WEIGHTS), "--out", str(tmp_path / "model.tflite"))
    assert compiled.returncode == 0, compiled.stderr
    assert noise(compiled.stdout + compiled.stderr) == []

    upload.upload_images(settings, upload.sample_images(SAMPLE, per_class=1)[:3])
    assert ingest.drain(settings, visibility_timeout=5).failed == 0
    # On a terminal, as a user runs it (the weights file: the driver compiles the model with TensorFlow).
    code, drawn = on_terminal([sys.executable, "-m", "fruits", "stream"], env, timeout=420)
    assert code == 0, drawn[-3000:]
    assert noise(drawn) == [], drawn[-3000:]
    assert '"images": 3' in drawn  # the per-micro-batch line stays
    assert re.search(r"\rstream: +100%.*3/3 \[", drawn), drawn[-3000:]  # the bar, up to the 3 uploads waiting

    for argv in (["pca", "refit"], ["maintain"], ["query", "SELECT count(*) AS n FROM features"]):
        done = fruits(env, *argv)
        assert done.returncode == 0, done.stderr[-3000:]
        assert noise(done.stdout + done.stderr) == [], (argv, done.stdout + done.stderr)
        # Nothing else on stderr but the JVM's own start-up line and (a slow run) progress lines.
        others = [line for line in done.stderr.splitlines() if line != JVM_NOTICE and not PROGRESS.match(line)]
        assert others == [], (argv, done.stderr)

    # -v: nothing is filtered (TensorFlow's notices are back: the filter, not luck, hid them).
    loud = fruits(env, "-v", "model", "compile", "--weights", str(WEIGHTS), "--out", str(tmp_path / "again.tflite"))
    assert loud.returncode == 0 and NOISE.search(loud.stderr), loud.stderr[-2000:]
