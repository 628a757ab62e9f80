"""Exactly once across a crash: the stream is SIGKILLed mid-run and restarted on its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SAMPLE
from fruits import stream
from fruits.io import aws
from fruits.local import ingest
from fruits.query.sql import sql as spark_sql

pytestmark = pytest.mark.spark


def wait_for(path_glob: Path, count: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(path_glob.parent.glob(path_glob.name))) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"stream exited early with {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"no {count} files matching {path_glob} after {timeout}s")


def test_sigkill_mid_stream_then_restart_gives_each_image_once(spark, settings, weights_blob, tmp_path) -> None:
    s3 = aws.client("s3", settings)
    images = sorted(SAMPLE.glob("*/*.jpg"))[::12][:24]  # 24 images, one or so per class
    for path in images:
        s3.put_object(Bucket=settings.bucket, Key=f"uploads/{path.parent.name}/{path.name}", Body=path.read_bytes())
    ingest.event_source_mapping(settings, visibility_timeout=5, batch_size=3).drain(timeout_seconds=120)
    from deltalake import DeltaTable

    from fruits.io import lake

    ledger = DeltaTable(lake.delta_uri(settings.uploads_table), storage_options=lake.storage_options(settings))
    assert len(ledger.file_uris()) >= 6  # one file per invocation: at least six micro-batches

    env = dict(
        os.environ,
        FRUITS_ENDPOINT_URL=settings.endpoint_url,
        FRUITS_BUCKET=settings.bucket,
        FRUITS_QUEUE=settings.queue,
        FRUITS_TABLE_ROOT=settings.table_root,
        FRUITS_WEIGHTS=settings.weights,
        FRUITS_MAX_FILES_PER_TRIGGER="1",
        FRUITS_SPARK_MASTER="local[2]",
    )
    log = open(tmp_path / "stream.log", "w")  # noqa: SIM115 (the process's, read after it ends)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fruits", "stream"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Version 0 creates the table; kill once the first micro-batch has committed (version 1),
        # while the next ones are being featurized.
        wait_for(Path(settings.features_table) / "_delta_log" / "*1.json", 1, proc, timeout=240)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    before = spark_sql(spark, settings, "SELECT count(*) FROM features").rows[0][0]
    assert 0 < before < len(images), "the kill came too late to interrupt the stream"

    stream.start(spark, settings, model=weights_blob).awaitTermination()

    rows = spark_sql(spark, settings, "SELECT count(*), count(DISTINCT key) FROM features").rows[0]
    quarantined = spark_sql(spark, settings, "SELECT count(*) FROM quarantine").rows[0][0]
    assert rows == (len(images), len(images)) and quarantined == 0
