"""boto3 clients for the configured endpoint (the emulator) or AWS, and S3 URI helpers.

One client factory, one retry policy (``fruits_ingest.config.RETRIES``, the Lambda's too), one
queue-depth reading. With an endpoint (the emulator), credentials come from the environment if set,
else the emulator's placeholders, passed to each client: nothing is written to ``os.environ``.

Example::

    s3 = client("s3", settings)
    depth = queue_depth(client("sqs", settings), queue_url(settings, settings.dead_letter_queue))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from fruits_ingest.config import RETRIES
from fruits_ingest.runner import queue_depth

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "client",
    "emulator_credentials",
    "is_s3",
    "make_client",
    "queue_depth",
    "queue_url",
    "split_s3_uri",
    "write_bytes",
]

# What moto accepts; used only against an endpoint, when the environment names no credentials.
_PLACEHOLDER = ("testing", "testing")


def emulator_credentials() -> tuple[str, str]:
    """The access key and secret for an emulator endpoint: the environment's, else placeholders."""
    return (
        os.environ.get("AWS_ACCESS_KEY_ID", _PLACEHOLDER[0]),
        os.environ.get("AWS_SECRET_ACCESS_KEY", _PLACEHOLDER[1]),
    )


def make_client(service: str, endpoint_url: str | None, region: str, pool: int = 10) -> Any:
    """A boto3 client with the pipeline's retry policy; ``pool`` connections for threaded callers."""
    credentials: dict[str, str] = {}
    if endpoint_url:
        key, secret = emulator_credentials()
        credentials = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(retries=dict(RETRIES), max_pool_connections=pool),
        **credentials,
    )


def client(service: str, settings: Settings) -> Any:
    return make_client(service, settings.endpoint_url, settings.region)


def error_code(exc: ClientError) -> str:
    """The service's error code (``NoSuchKey``, ``PreconditionFailed``, ``SlowDown``, ...), or ''."""
    return exc.response.get("Error", {}).get("Code", "")


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
    """Write ``data`` to an S3 URI (through boto3: one PUT) or to a local path (parent folders
    created; written beside it, then renamed): a reader sees the old object or the new one."""
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        client("s3", settings).put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return
    path = Path(uri.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
