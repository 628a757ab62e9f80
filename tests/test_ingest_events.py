"""Parsing S3 event notifications: key decoding, SNS envelopes, skips and malformed messages."""

from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest

from conftest import FIXTURES
from fruits_ingest.config import IngestConfig
from fruits_ingest.events import SkipReason, parse_message
from fruits_ingest.exceptions import ConfigurationError, MalformedMessage
from helpers import S3_PUT, s3_event

CONFIG = IngestConfig(uploads_bucket="fruits-images")

ODD_KEYS = [
    "uploads/Apple Braeburn/r_45_100.jpg",
    "uploads/Tomato 1/a+b.jpg",
    "uploads/Cherry 1/100%.jpg",
    "uploads/Kiwi/x=1&y=2.jpg",
    "uploads/Kiwi/#1.jpg",
    "uploads/Pêche/été 🍑.jpg",
    "uploads/Mango/deep/er/and/deeper/still.jpeg",
]


def aws_encode(key: str) -> str:
    """How S3 encodes keys in event notifications: form encoding, '/' kept."""
    return quote_plus(key, safe="/")


def emulator_encode(key: str) -> str:
    """How moto encodes them: form encoding, '/' too."""
    return quote_plus(key)


@pytest.mark.parametrize("encode", [aws_encode, emulator_encode], ids=["aws", "emulator"])
@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_are_decoded_exactly(key: str, encode) -> None:
    parsed = parse_message(s3_event(encode(key)), "m-1", CONFIG)
    assert [i.key for i in parsed.images] == [key]


def test_aws_documentation_event_fields() -> None:
    (image,) = parse_message(json.dumps(S3_PUT), "m-1", CONFIG).images
    assert image.bucket == "fruits-images"
    assert image.key == "uploads/Apple Braeburn/r_45_100.jpg"
    assert image.size == 4702
    assert image.etag == "d41d8cd98f00b204e9800998ecf8427e"
    assert image.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert image.sequencer == "0055AED6DCD90281E5"
    assert image.event_time == "2026-11-21T10:15:30.123Z"
    assert image.event_name == "ObjectCreated:Put"
    assert image.message_id == "m-1"


def test_literal_plus_is_not_a_space() -> None:
    # AWS sends "a+b c" as "a%2Bb+c".
    parsed = parse_message(s3_event("uploads/Kiwi/a%2Bb+c.jpg"), "m", CONFIG)
    assert parsed.images[0].key == "uploads/Kiwi/a+b c.jpg"


def test_sns_envelope_is_unwrapped() -> None:
    envelope = json.loads((FIXTURES / "events" / "sns_envelope.json").read_text())
    envelope["Message"] = s3_event(aws_encode("uploads/Tomato 1/x.jpg"))
    parsed = parse_message(json.dumps(envelope), "m", CONFIG)
    assert [i.key for i in parsed.images] == ["uploads/Tomato 1/x.jpg"]


def test_sns_wrapped_test_event_is_skipped() -> None:
    envelope = json.loads((FIXTURES / "events" / "sns_envelope.json").read_text())
    envelope["Message"] = (FIXTURES / "events" / "s3_test_event.json").read_text()
    parsed = parse_message(json.dumps(envelope), "m", CONFIG)
    assert parsed.images == [] and parsed.skipped == {SkipReason.TEST_EVENT: 1}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ((FIXTURES / "events" / "s3_test_event.json").read_text(), SkipReason.TEST_EVENT),
        (
            s3_event("uploads/Kiwi/a.jpg").replace("ObjectCreated:Put", "ObjectRemoved:Delete"),
            SkipReason.NOT_OBJECT_CREATED,
        ),
        (s3_event("uploads/Kiwi/"), SkipReason.FOLDER_KEY),
        (s3_event("elsewhere/Kiwi/a.jpg"), SkipReason.OUTSIDE_PREFIX),
        (s3_event("uploads/Kiwi/notes.txt"), SkipReason.NOT_AN_IMAGE),
        (s3_event("uploads/Kiwi/a.jpg.exe"), SkipReason.NOT_AN_IMAGE),
        (s3_event("uploads/Kiwi/a.jpg").replace('"fruits-images"', '"someone-elses-bucket"'), SkipReason.OTHER_BUCKET),
        (s3_event("uploads/Kiwi/" + "é" * 510 + ".jpg"), SkipReason.KEY_TOO_LONG),  # 1,037 bytes in UTF-8
    ],
    ids=["test-event", "removed", "folder", "prefix", "txt", "double-suffix", "other-bucket", "key-over-1024-bytes"],
)
def test_skipped_not_failed(body: str, reason: str) -> None:
    parsed = parse_message(body, "m", CONFIG)
    assert parsed.images == []
    assert parsed.skipped == {reason: 1}


def forged(field: str, value: object) -> str:
    """A message of two records: ``uploads/Kiwi/bad.jpg`` with ``field`` set to ``value``, and a good one."""
    event = json.loads(s3_event("uploads/Kiwi/bad.jpg"))
    bad = event["Records"][0]
    if field == "eventTime":
        bad["eventTime"] = value
    elif field == "key":
        bad["s3"]["object"]["key"] = value
    else:
        bad["s3"]["object"][field] = value
    event["Records"].append(json.loads(s3_event("uploads/Kiwi/good.jpg"))["Records"][0])
    return json.dumps(event)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eTag", "d41d8cd98f00b204\r\nX-Injected: 1"),
        ("eTag", "\ud800"),
        ("eTag", 12),
        ("eTag", '"quoted"'),
        ("versionId", "\udfff"),
        ("versionId", "has space"),
        ("key", "uploads/Kiwi/\ud800.jpg"),
    ],
    ids=[
        "etag-crlf",
        "etag-surrogate",
        "etag-number",
        "etag-quoted",
        "version-surrogate",
        "version-space",
        "key-surrogate",
    ],
)
def test_a_record_whose_object_cannot_be_asked_for_is_skipped_and_the_others_kept(field: str, value: object) -> None:
    """Skipped as invalid_field (said in ``invalid``); the good record of the same message goes on,
    and what is kept can be written as JSON."""
    parsed = parse_message(forged(field, value), "m", CONFIG)
    assert [i.key for i in parsed.images] == ["uploads/Kiwi/good.jpg"]
    assert parsed.skipped == {SkipReason.INVALID_FIELD: 1}
    wanted = {"eTag": "etag", "versionId": "version_id"}.get(field, field)
    assert parsed.invalid and parsed.invalid[0].startswith(f"field {wanted}:")
    parsed.images[0].to_json().encode("utf-8")


@pytest.mark.parametrize(
    ("field", "value", "attribute"),
    [
        ("size", "4702", "size"),
        ("size", "many", "size"),
        ("size", -1, "size"),
        ("size", 2**70, "size"),
        ("size", True, "size"),
        ("size", 1.5, "size"),
        ("sequencer", "not hex", "sequencer"),
        ("eventTime", "yesterday", "event_time"),
        ("eventTime", "\ud800", "event_time"),
        ("eventTime", 5, "event_time"),
    ],
)
def test_a_field_only_recorded_is_nulled_and_the_upload_kept(field: str, value: object, attribute: str) -> None:
    parsed = parse_message(forged(field, value), "m", CONFIG)
    bad, good = parsed.images
    assert bad.key == "uploads/Kiwi/bad.jpg" and getattr(bad, attribute) is None and not parsed.skipped
    assert getattr(good, attribute) is not None
    assert len(parsed.invalid) == 1 and f"field {attribute}:" in parsed.invalid[0]
    bad.to_json().encode("utf-8")


def test_odd_fields_of_a_record_skipped_anyway_are_counted_as_what_it_is() -> None:
    event = json.loads(forged("eTag", "\ud800"))
    event["Records"][0]["s3"]["bucket"]["name"] = "someone-elses-bucket"
    assert parse_message(json.dumps(event), "m", CONFIG).skipped == {SkipReason.OTHER_BUCKET: 1}


def test_what_s3_sends_keeps_the_contract() -> None:
    """Real fields at their edges: a multipart etag, no version id, an event time with an offset or
    nanoseconds: kept as they are."""
    for time in ("2026-11-21T10:15:30+01:00", "2026-11-21T10:15:30.123456789Z", "2026-11-21T10:15:30Z"):
        event = json.loads(s3_event("uploads/Kiwi/a.jpg", eTag="9b2cf535f27731c974343645a3985328-12", size=0))
        event["Records"][0]["eventTime"] = time
        del event["Records"][0]["s3"]["object"]["versionId"]
        parsed = parse_message(json.dumps(event), "m", CONFIG)
        assert parsed.invalid == [] and parsed.images[0].event_time == time and parsed.images[0].size == 0


def test_an_sns_envelope_inside_another_is_malformed_not_a_crash() -> None:
    body = s3_event("uploads/Kiwi/a.jpg")
    for _ in range(3):
        body = json.dumps({"Type": "Notification", "Message": body})
    with pytest.raises(MalformedMessage, match="inside an SNS envelope"):
        parse_message(body, "m", CONFIG)
    with pytest.raises(MalformedMessage, match="not JSON"):
        parse_message("[" * 100_000 + "]" * 100_000, "m", CONFIG)


def test_a_key_of_exactly_1024_bytes_is_accepted() -> None:
    key = "uploads/Kiwi/" + "a" * (1024 - len("uploads/Kiwi/") - 4) + ".jpg"
    assert len(parse_message(s3_event(key), "m", CONFIG).images) == 1


def test_other_buckets_may_be_accepted_by_configuration() -> None:
    config = IngestConfig(uploads_bucket="fruits-images", accepted_buckets=("fruits-images", "partner-uploads"))
    body = s3_event("uploads/Kiwi/a.jpg").replace('"fruits-images"', '"partner-uploads"')
    assert len(parse_message(body, "m", config).images) == 1
    assert IngestConfig.from_env(config.as_env()) == config


def test_suffixes_are_case_insensitive() -> None:
    for name in ("A.JPG", "b.Jpeg", "c.PNG", "d.webp"):
        assert len(parse_message(s3_event(f"uploads/Kiwi/{name}"), "m", CONFIG).images) == 1


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        "{}",
        '{"Records": "x"}',
        '{"Records": [{"eventName": "ObjectCreated:Put"}]}',
        '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": 5}}}]}',
    ],
    ids=["text", "list", "empty", "records-not-list", "no-s3", "key-not-string"],
)
def test_malformed_messages_raise(body: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(body, "m", CONFIG)


def test_configuration_from_environment() -> None:
    config = IngestConfig.from_env({"UPLOADS_BUCKET": "b", "ACCEPTED_PREFIXES": "a/, b/", "IMAGE_SUFFIXES": ".JPG"})
    assert (config.ledger_uri, config.accepted_buckets) == ("s3://b/tables/uploads", ("b",))
    assert config.accepted_prefixes == ("a/", "b/")
    assert config.image_suffixes == (".jpg",)
    assert IngestConfig.from_env({"UPLOADS_BUCKET": "b", "LEDGER_URI": "s3://l/u"}).ledger_uri == "s3://l/u"
    with pytest.raises(ConfigurationError, match="UPLOADS_BUCKET"):
        IngestConfig.from_env({})


def test_a_zero_byte_image_is_accepted_for_the_stream_to_quarantine() -> None:
    parsed = parse_message(s3_event("uploads/Kiwi/a.jpg", size=0), "m", CONFIG)
    assert [i.key for i in parsed.images] == ["uploads/Kiwi/a.jpg"] and parsed.images[0].size == 0
    assert not parsed.skipped
