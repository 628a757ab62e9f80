"""The manifest: one JSON Lines object per Lambda invocation, one line per accepted image.

The object's name is a hash of the batch's SQS message ids, so a batch that is delivered again
(the Lambda crashed after writing, or the acknowledgement was lost) rewrites the same object
instead of adding a second one. Messages that SQS re-batches differently end up in a different
manifest; the streaming job removes such duplicates by image identity.

Example::

    name = manifest_key("manifests/", ["id-1", "id-2"])
    write_manifest(s3_client, "my-bucket", name, images)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from .events import ImageEvent
from .exceptions import ManifestWriteError


def manifest_key(prefix: str, message_ids: Iterable[str]) -> str:
    """Deterministic manifest key for a batch: independent of the order of its messages."""
    digest = hashlib.sha256("\n".join(sorted(message_ids)).encode()).hexdigest()
    return f"{prefix}batch-{digest[:40]}.jsonl"


def render(images: Sequence[ImageEvent]) -> bytes:
    return "".join(image.to_json() + "\n" for image in images).encode("utf-8")


def write_manifest(s3_client: Any, bucket: str, key: str, images: Sequence[ImageEvent]) -> None:
    """Write the manifest object; raises ``ManifestWriteError`` if S3 refuses it."""
    try:
        s3_client.put_object(
            Bucket=bucket, Key=key, Body=render(images), ContentType="application/x-ndjson"
        )
    except Exception as exc:  # any failure means nothing of the batch may be acknowledged
        raise ManifestWriteError(
            f"could not write manifest s3://{bucket}/{key}: {exc}. Check the Lambda role may "
            "s3:PutObject under MANIFEST_PREFIX; the batch will be redelivered."
        ) from exc
