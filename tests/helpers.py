"""Helpers shared by several test modules (test modules do not import each other)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import select
import struct
import subprocess
import time
import uuid

import numpy as np
import pandas as pd

from conftest import FIXTURES


def fruits_env(settings, **overrides: str) -> dict[str, str]:  # noqa: ANN001
    """The environment of ``python -m fruits`` run as a process of its own on ``settings`` (the
    emulator, bucket, queue, tables, uploads ledger, weights and lease ttl), with a small driver;
    ``overrides`` win."""
    return {
        **os.environ,
        "FRUITS_ENDPOINT_URL": settings.endpoint_url,
        "FRUITS_BUCKET": settings.bucket,
        "FRUITS_QUEUE": settings.queue,
        "FRUITS_TABLE_ROOT": settings.table_root,
        "FRUITS_UPLOADS_LEDGER": settings.uploads_table,
        "FRUITS_WEIGHTS": settings.weights,
        "FRUITS_LEASE_SECONDS": str(settings.lease_seconds),
        "FRUITS_DRIVER_MEMORY": "1g",
        **overrides,
    }


def on_terminal(argv: list[str], env: dict[str, str], timeout: float = 600, columns: int = 160) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal (``columns`` wide) as its stdin, stdout and stderr, as a
    user's shell would; its exit code and everything it drew (carriage returns included)."""
    import fcntl
    import pty
    import termios

    screen, user = pty.openpty()
    fcntl.ioctl(user, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(argv, stdin=user, stdout=user, stderr=user, env=env, close_fds=True)
    os.close(user)
    drawn = bytearray()
    deadline = time.monotonic() + timeout  # for the whole run: a bar redraws every second
    try:
        while select.select([screen], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                chunk = os.read(screen, 65536)
            except OSError:  # EIO: the process and its children closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(screen)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    return process.wait(timeout=60), drawn.decode(errors="replace")


# The S3 event notification of AWS's documentation, as an SQS message body carries it.
S3_PUT = json.loads((FIXTURES / "events" / "s3_put.json").read_text())


def s3_event(key_encoded: str, **object_fields: object) -> str:
    """``S3_PUT`` for another (already encoded) key, with ``object_fields`` changed."""
    event = copy.deepcopy(S3_PUT)
    event["Records"][0]["s3"]["object"]["key"] = key_encoded
    event["Records"][0]["s3"]["object"].update(object_fields)
    return json.dumps(event)


def aws_event(s3, bucket: str, key: str, version: dict | None = None, **object_fields: object) -> dict:  # noqa: ANN001
    """The event AWS sends for the PUT of ``key``'s current object, or of one of its ``version``s
    (from ListObjectVersions), with its version id (the emulator's own events carry none) and the
    PUT's time, as a redelivery of that event repeats it."""
    from urllib.parse import quote_plus

    head = version or s3.head_object(Bucket=bucket, Key=key)
    event = json.loads(
        s3_event(
            quote_plus(key, safe="/"),
            eTag=(head.get("ETag") or "").strip('"'),
            size=head.get("ContentLength", head.get("Size")),
            versionId=head["VersionId"],
        )
    )
    put_at = head["LastModified"].astimezone(dt.UTC)
    event["Records"][0]["eventTime"] = put_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event["Records"][0]["s3"]["bucket"]["name"] = bucket
    event["Records"][0]["s3"]["object"].update(object_fields)
    return event


# --- feature rows for the PCA and maintenance tests ---------------------------------------------

MODEL_ID = "mobilenet_v2:synthetic"


def synthetic_features(n: int, seed: int, d: int = 1280, rank: int = 8) -> np.ndarray:
    """Rows with a few well-separated principal directions plus small isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(d, rank)))[0].T  # same directions for every seed
    scales = np.geomspace(10.0, 1.0, rank)
    x = (rng.normal(size=(n, rank)) * scales) @ basis + rng.normal(scale=0.05, size=(n, d)) + 0.3
    return x.astype(np.float32)


def append_rows(
    spark, location: str, x: np.ndarray, labels: list[str] | None = None, model_id: str = MODEL_ID, first: int = 0
) -> None:
    """A blind append of feature rows, as the stream writes them (keys numbered from ``first``)."""
    from fruits.spark import tables as table
    from fruits.spark.schema import FEATURES

    now = dt.datetime.now(dt.UTC)
    labels = labels or [f"class {i % 5}" for i in range(len(x))]
    rows = pd.DataFrame(
        {
            "image_id": [uuid.uuid4().hex for _ in range(len(x))],
            "bucket": "b",
            "key": [f"uploads/{lab}/{first + i}.jpg" for i, lab in enumerate(labels)],
            "label": labels,
            "size": 1,
            "etag": "e",
            "version_id": None,
            "event_time": now,
            "event_date": now.date(),
            "ingested_at": now,
            "features": list(x),
            "model_id": model_id,
            "pca_features": None,
            "pca_version": None,
        }
    )
    table.frame(spark, rows, FEATURES).write.format("delta").mode("append").save(location)
