"""boto3 clients for the configured endpoint (the emulator or AWS), and S3 URI helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from .config import Settings

_RETRIES = Config(retries={"max_attempts": 5, "mode": "standard"})


def client(service: str, settings: Settings) -> Any:
    return boto3.client(service, region_name=settings.region, endpoint_url=settings.endpoint_url, config=_RETRIES)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3a://bucket/a/b`` (or ``s3://``) -> ``("bucket", "a/b")``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("s3", "s3a", "s3n"):
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = rest.partition("/")
    return bucket, key


def is_s3(uri: str) -> bool:
    return uri.split("://", 1)[0] in ("s3", "s3a", "s3n") and "://" in uri


def queue_url(settings: Settings, name: str | None = None) -> str:
    return client("sqs", settings).get_queue_url(QueueName=name or settings.queue)["QueueUrl"]


def write_bytes(settings: Settings, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Write ``data`` to an S3 URI (through boto3) or to a local path (parent folders created)."""
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        client("s3", settings).put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return
    path = Path(uri.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
