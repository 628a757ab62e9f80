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

Each accepted record's fields are checked against the ledger's contract (``_checked``): a
record whose object could not be asked for as announced (a key that is not UTF-8, an etag or
version id with control or non-ASCII characters: a forged or garbled event) is skipped and counted
as ``invalid_field``, so that one bad record never fails the good ones beside it. Fields the stream
only records (size, sequencer, event time) are set to null when they break it, and the upload is
kept.

Limitations: only S3 event notifications (``Records[].s3``) are understood; EventBridge-shaped S3
events are reported as malformed, and so is an SNS envelope inside another.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from .config import MAX_KEY_BYTES, MAX_OBJECT_BYTES, IngestConfig, is_image_key
from .exceptions import InvalidField, MalformedMessage


class SkipReason(StrEnum):
    """Why a well-formed event produced no ledger row. These are the metric dimensions too."""

    TEST_EVENT = "test_event"
    NOT_OBJECT_CREATED = "not_object_created"
    FOLDER_KEY = "folder_key"
    OUTSIDE_PREFIX = "outside_prefix"
    NOT_AN_IMAGE = "not_an_image"
    OTHER_BUCKET = "other_bucket"
    KEY_TOO_LONG = "key_too_long"
    INVALID_FIELD = "invalid_field"


@dataclass(frozen=True)
class ImageEvent:
    """One accepted upload: one row of the uploads ledger."""

    bucket: str
    key: str
    size: int | None  # as announced; not checked until ``_checked``
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
    invalid: list[str] = field(default_factory=list)  # each record skipped as invalid_field, and each field nulled


def _unwrap(body: str, enveloped: bool = False) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedMessage(
            f"message body is not JSON ({type(exc).__name__}: {str(exc)[:200]}); expected an S3 event notification"
        ) from None
    if not isinstance(payload, dict):
        raise MalformedMessage("message body is JSON but not an object; expected an S3 event notification")
    # SNS envelope: the S3 event is a JSON string in "Message" (S3 -> SNS -> SQS: one envelope, never two).
    if payload.get("Type") == "Notification" and "Message" in payload:
        if enveloped:
            raise MalformedMessage("an SNS envelope inside an SNS envelope; expected one S3 event notification")
        return _unwrap(payload["Message"], enveloped=True)
    return payload


def _image_event(record: Any, message_id: str) -> ImageEvent:
    try:
        event_name = record["eventName"]
        s3 = record["s3"]
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        raw_key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(f"S3 record lacks {exc}; expected eventName, s3.bucket.name and s3.object.key") from exc
    if not isinstance(raw_key, str) or not isinstance(bucket, str) or not isinstance(event_name, str):
        raise MalformedMessage("S3 record has a non-string eventName, bucket name or object key")
    return ImageEvent(
        bucket=bucket,
        key=unquote_plus(raw_key),
        size=obj.get("size"),
        etag=obj.get("eTag") or obj.get("etag"),
        version_id=obj.get("versionId"),
        sequencer=obj.get("sequencer"),
        event_time=record.get("eventTime"),
        event_name=event_name,
        message_id=message_id,
    )


# The contract of a ledger row, field by field (what S3 sends, with room to spare). Anything else
# is a forged or garbled event, and would break the ledger's write or the stream's fetch.
_REQUIRED = {  # the object is asked for by these: a record that breaks them is skipped
    "etag": re.compile(r"[0-9A-Za-z_-]{1,128}"),
    "version_id": re.compile(r"[\x21-\x7e]{1,1024}"),  # printable ASCII, no spaces
}
_RECORDED = {  # only recorded: a value that breaks them becomes null
    "sequencer": re.compile(r"[0-9A-Fa-f]{1,64}"),
    "event_time": re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})"),
}


def _checked(image: ImageEvent, notes: list[str]) -> ImageEvent:
    """``image`` as the contract allows it: ``InvalidField`` naming the first field that makes the
    object impossible to ask for; recorded-only fields that break it set to null (said in ``notes``)."""
    try:
        image.key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidField("key", "not valid UTF-8 (a lone surrogate)") from None
    for name, pattern in _REQUIRED.items():
        value = getattr(image, name)
        if value is not None and (not isinstance(value, str) or not pattern.fullmatch(value)):
            raise InvalidField(name, f"{value!r:.80} cannot name an S3 object's {name.replace('_', ' ')}")
    nulled: dict[str, None] = {}
    for name, pattern in _RECORDED.items():
        value = getattr(image, name)
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
            nulled[name] = None
    if image.size is not None and (type(image.size) is not int or not 0 <= image.size <= MAX_OBJECT_BYTES):
        nulled["size"] = None
    notes.extend(f"field {name}: {getattr(image, name)!r:.80} recorded as null ({image.key!r:.200})" for name in nulled)
    return replace(image, **nulled) if nulled else image


def _skip_reason(image: ImageEvent, config: IngestConfig) -> SkipReason | None:
    # "ObjectCreated:Put" in S3 events; "s3:ObjectCreated:Put" in notification configurations.
    if not image.event_name.removeprefix("s3:").startswith("ObjectCreated"):
        return SkipReason.NOT_OBJECT_CREATED
    if image.bucket not in config.accepted_buckets:
        return SkipReason.OTHER_BUCKET  # not an upload of ours: the jobs may not read it
    if len(image.key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return SkipReason.KEY_TOO_LONG  # no S3 object has such a key: a forged or garbled event
    if image.key.endswith("/"):
        return SkipReason.FOLDER_KEY
    if config.accepted_prefixes and not image.key.startswith(config.accepted_prefixes):
        return SkipReason.OUTSIDE_PREFIX
    if not is_image_key(image.key, config.image_suffixes):
        return SkipReason.NOT_AN_IMAGE
    return None


def _records(body: str) -> list[Any] | None:
    """The records of one SQS message body; None for S3's test event. Raises ``MalformedMessage``."""
    payload = _unwrap(body)
    if payload.get("Event") == "s3:TestEvent":
        return None
    records = payload.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedMessage("message has no 'Records' list; expected an S3 event notification")
    return records


def announced(body: str, message_id: str = "") -> list[ImageEvent]:
    """Every object one SQS message body announces, keys decoded, before any filtering or check
    (none for S3's test event). Raises ``MalformedMessage`` if it is not an S3 event notification."""
    return [_image_event(record, message_id) for record in _records(body) or []]


def parse_message(body: str, message_id: str, config: IngestConfig) -> ParsedMessage:
    """Parse one SQS message body. Raises ``MalformedMessage`` if it is not an S3 event
    notification; a record with an invalid field is skipped (``invalid_field``), the rest kept."""
    parsed = ParsedMessage()
    records = _records(body)
    if records is None:
        parsed.skipped[SkipReason.TEST_EVENT] += 1
        return parsed
    for record in records:
        image = _image_event(record, message_id)
        reason = _skip_reason(image, config)
        if reason is not None:
            parsed.skipped[reason] += 1
            continue
        try:
            parsed.images.append(_checked(image, parsed.invalid))
        except InvalidField as exc:
            parsed.skipped[SkipReason.INVALID_FIELD] += 1
            parsed.invalid.append(str(exc))
    return parsed
