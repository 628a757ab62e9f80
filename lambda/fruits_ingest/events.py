"""Turning one SQS message body into the image uploads it announces.

An S3 event notification reaches the queue either directly (S3 -> SQS) or wrapped in an SNS
envelope (S3 -> SNS -> SQS, without raw message delivery). Keys in S3 events are URL-encoded the
way HTML forms are: a space arrives as ``+``, a literal ``+`` as ``%2B``, non-ASCII characters as
percent-encoded UTF-8 (and some emulators also encode ``/`` as ``%2F``). ``unquote_plus`` undoes
all of these.

Example::

    parsed = parse_message(body, message_id="059f36b4-...", config=IngestConfig("my-bucket"))
    for image in parsed.images:
        print(image.key)
    print(parsed.skipped)   # e.g. {"not_an_image": 1}

Limitations: only S3 event notifications (``Records[].s3``) are understood; EventBridge-shaped S3
events are reported as malformed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from .config import MAX_KEY_BYTES, IngestConfig, is_image_key
from .exceptions import MalformedMessage


class SkipReason(StrEnum):
    """Why a well-formed event produced no manifest line. These are the metric dimensions too."""

    TEST_EVENT = "test_event"
    NOT_OBJECT_CREATED = "not_object_created"
    FOLDER_KEY = "folder_key"
    OUTSIDE_PREFIX = "outside_prefix"
    NOT_AN_IMAGE = "not_an_image"
    OTHER_BUCKET = "other_bucket"
    KEY_TOO_LONG = "key_too_long"


@dataclass(frozen=True)
class ImageEvent:
    """One accepted upload: one line of a manifest."""

    bucket: str
    key: str
    size: int | None
    etag: str | None
    version_id: str | None
    sequencer: str | None
    event_time: str | None
    event_name: str
    message_id: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))


@dataclass
class ParsedMessage:
    images: list[ImageEvent] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def _unwrap(body: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"message body is not JSON ({exc}); expected an S3 event notification") from exc
    if not isinstance(payload, dict):
        raise MalformedMessage("message body is JSON but not an object; expected an S3 event notification")
    # SNS envelope: the S3 event is a JSON string in "Message".
    if payload.get("Type") == "Notification" and "Message" in payload:
        return _unwrap(payload["Message"])
    return payload


def _image_event(record: Any, message_id: str) -> ImageEvent:
    try:
        event_name = record["eventName"]
        s3 = record["s3"]
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        raw_key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(
            f"S3 record lacks {exc}; expected eventName, s3.bucket.name and s3.object.key"
        ) from exc
    if not isinstance(raw_key, str) or not isinstance(bucket, str) or not isinstance(event_name, str):
        raise MalformedMessage("S3 record has a non-string eventName, bucket name or object key")
    size = obj.get("size")
    return ImageEvent(
        bucket=bucket,
        key=unquote_plus(raw_key),
        size=int(size) if size is not None else None,
        etag=obj.get("eTag") or obj.get("etag"),
        version_id=obj.get("versionId"),
        sequencer=obj.get("sequencer"),
        event_time=record.get("eventTime"),
        event_name=event_name,
        message_id=message_id,
    )


def _skip_reason(image: ImageEvent, config: IngestConfig) -> SkipReason | None:
    # "ObjectCreated:Put" in S3 events; "s3:ObjectCreated:Put" in notification configurations.
    if not image.event_name.removeprefix("s3:").startswith("ObjectCreated"):
        return SkipReason.NOT_OBJECT_CREATED
    if image.bucket not in config.accepted_buckets:
        return SkipReason.OTHER_BUCKET  # not an upload of ours: the jobs may not read it
    if len(image.key.encode("utf-8")) > MAX_KEY_BYTES:
        return SkipReason.KEY_TOO_LONG  # no S3 object has such a key: a forged or garbled event
    if image.key.endswith("/"):
        return SkipReason.FOLDER_KEY
    if config.accepted_prefixes and not image.key.startswith(config.accepted_prefixes):
        return SkipReason.OUTSIDE_PREFIX
    if not is_image_key(image.key, config.image_suffixes):
        return SkipReason.NOT_AN_IMAGE
    return None


def announced(body: str, message_id: str = "") -> list[ImageEvent]:
    """Every object one SQS message body announces, keys decoded, before any filtering (none for
    S3's test event). Raises ``MalformedMessage`` if it is not an S3 event notification."""
    payload = _unwrap(body)
    if payload.get("Event") == "s3:TestEvent":
        return []
    records = payload.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedMessage("message has no 'Records' list; expected an S3 event notification")
    return [_image_event(record, message_id) for record in records]


def parse_message(body: str, message_id: str, config: IngestConfig) -> ParsedMessage:
    """Parse one SQS message body. Raises ``MalformedMessage`` if it is not an S3 event notification."""
    parsed = ParsedMessage()
    images = announced(body, message_id)
    if not images:  # only S3's test event announces nothing
        parsed.skipped[SkipReason.TEST_EVENT] += 1
        return parsed
    for image in images:
        reason = _skip_reason(image, config)
        if reason is None:
            parsed.images.append(image)
        else:
            parsed.skipped[reason] += 1
    return parsed
