"""The poison-pill rule: an upload that crashes its worker is quarantined as ``poison`` and the
stream goes on; a failure that is the job's (S3 down, a broken model) still stops the stream."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import SAMPLE
from fruits.config import Settings
from fruits.io import aws
from fruits.local import ingest
from fruits.query.sql import sql as spark_sql
from fruits.stream.poison import Attempts, isolate, summary, systemic
from helpers import fruits_env


class Crash(Exception):
    pass


def scorer(bad: set[int], calls: list[list[int]]):  # noqa: ANN201
    def score(part: list[int]) -> list[int]:
        calls.append(part)
        if bad & set(part):
            raise Crash("org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)")
        return part

    return score


def test_isolate_finds_each_culprit_and_keeps_every_other_result() -> None:
    calls: list[list[int]] = []
    results, poisoned = isolate(10, scorer({3, 7}, calls))
    assert sorted(i for part in results for i in part) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert set(poisoned) == {3, 7} and "Python worker exited unexpectedly" in poisoned[3]
    assert calls.count([3]) == 2 and calls.count([7]) == 2  # a culprit fails alone twice
    assert len(calls) <= 2 * 2 * 4 + 2  # halving: about 2 log2(n) parts per culprit


def test_isolate_with_no_culprit_is_one_call() -> None:
    calls: list[list[int]] = []
    assert isolate(5, scorer(set(), calls)) == ([[0, 1, 2, 3, 4]], {})
    assert calls == [[0, 1, 2, 3, 4]]


def test_an_image_that_fails_once_alone_is_not_poison() -> None:
    failures = iter([True, False])  # a fluke: the single image's second try succeeds

    def score(part: list[int]) -> list[int]:
        if part == [0] and next(failures):
            raise Crash("Python worker exited unexpectedly")
        return part

    assert isolate(1, score) == ([[0]], {})


def test_a_systemic_failure_is_never_blamed_on_an_image() -> None:
    def score(part: list[int]) -> list[int]:
        raise Crash(
            "pyspark.errors.exceptions.captured.PythonException: fruits.featurize.fetch.S3Unavailable: "
            "s3://b/k: S3 unreachable for over 60s"
        )

    with pytest.raises(Crash):
        isolate(4, score)
    assert systemic(Crash("fruits.featurize.batch.BrokenModel: the model put out NaN"))
    assert not systemic(Crash("MemoryError"))


def test_summary_is_the_workers_own_error_line() -> None:
    report = textwrap.dedent("""\
        An exception was thrown from the Python worker. Please see the stack trace below.
        Traceback (most recent call last):
          File "worker.py", line 1, in main
        MemoryError: cannot allocate
        """)
    assert summary(Crash(report)) == "MemoryError: cannot allocate"
    assert summary(Crash("Job aborted\n at org.apache.spark")) == "Job aborted"


def test_attempts_are_counted_in_the_checkpoint_and_cleared(tmp_path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    first, other = Attempts(settings, 7), Attempts(settings, 8)
    assert first.count() == 0
    assert first.add() == 1 and first.add() == 2 and other.add() == 1
    assert Attempts(settings, 7).count() == 2  # as a restarted stream sees it
    first.clear()
    assert first.count() == 0 and other.count() == 0


# A native decoder that crashes on certain bytes, as libjpeg or a codec plugin can: every Python
# worker of the stream (started with this folder on PYTHONPATH) dies when asked to open them.
CRASHING_DECODER = """
import os
from PIL import Image

_open = Image.open


def _crashing_open(fp, *args, **kwargs):
    if hasattr(fp, "getvalue") and fp.getvalue().startswith(b"POISON"):
        os._exit(139)  # no exception, no traceback: the process is gone, as after a segfault
    return _open(fp, *args, **kwargs)


Image.open = _crashing_open
"""


def run_stream(settings: Settings, tmp_path, **env: str) -> subprocess.CompletedProcess:
    hook = tmp_path / "crashing-decoder"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(CRASHING_DECODER)
    environment = fruits_env(settings, PYTHONPATH=str(hook), FRUITS_SPARK_MASTER="local[2, 2]", **env)
    return subprocess.run(
        [sys.executable, "-m", "fruits", "stream"], env=environment, capture_output=True, text=True, timeout=600
    )


def upload(settings: Settings, objects: dict[str, bytes]) -> None:
    s3 = aws.client("s3", settings)
    for key, body in objects.items():
        s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
    ingest.drain(settings)


@pytest.mark.spark
def test_an_upload_that_crashes_its_worker_is_quarantined_and_the_stream_goes_on(spark, settings, tmp_path) -> None:
    photos = sorted(SAMPLE.glob("Kiwi/*.jpg"))[:4]
    upload(
        settings,
        {f"uploads/Kiwi/{p.name}": p.read_bytes() for p in photos}
        | {"uploads/Kiwi/crash-1.jpg": b"POISON" + photos[0].read_bytes()},
    )

    # The batch of five fails (each task attempt's worker dies); its parts then find the culprit.
    first = run_stream(settings, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    features = spark_sql(spark, settings, "SELECT key FROM features ORDER BY key").rows
    assert [r[0] for r in features] == sorted(f"uploads/Kiwi/{p.name}" for p in photos)
    [(key, reason, error)] = spark_sql(spark, settings, "SELECT key, reason, error FROM quarantine").rows
    assert (key, reason) == ("uploads/Kiwi/crash-1.jpg", "poison") and "Python worker" in error, error

    # Alone in its micro-batch, a culprit cannot be told from a broken job: the batch fails until it
    # has failed FRUITS_POISON_ATTEMPTS times (counted across restarts), then it is quarantined.
    upload(settings, {"uploads/Kiwi/crash-2.jpg": b"POISON and nothing else"})
    second = run_stream(settings, tmp_path, FRUITS_POISON_ATTEMPTS="2")
    assert second.returncode == 1 and "failure 1 of 2" in second.stderr, second.stderr[-3000:]
    third = run_stream(settings, tmp_path, FRUITS_POISON_ATTEMPTS="2")
    assert third.returncode == 0, third.stderr[-3000:]
    rows = spark_sql(spark, settings, "SELECT key, reason FROM quarantine ORDER BY key").rows
    assert rows == [("uploads/Kiwi/crash-1.jpg", "poison"), ("uploads/Kiwi/crash-2.jpg", "poison")]
    assert spark_sql(spark, settings, "SELECT count(*) FROM features").rows[0][0] == 4


def test_summary_of_a_worker_that_died_is_sparks_last_task_failure() -> None:
    report = (
        "An error occurred while calling o43.localCheckpoint.\n: org.apache.spark.SparkException: Job aborted "
        "due to stage failure: Task 0 in stage 0.0 failed 2 times, most recent failure: Lost task 0.1 in stage "
        "0.0 (TID 1) (192.0.2.2 executor driver): org.apache.spark.SparkException: Python worker exited "
        "unexpectedly (crashed).\n\tat org.apache.spark.api.python.BasePythonRunner\nCaused by: java.io.EOFException"
    )
    assert summary(Crash(report)) == ("org.apache.spark.SparkException: Python worker exited unexpectedly (crashed).")
