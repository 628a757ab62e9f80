"""The ingest Lambda against the emulator: partial batch failures, the uploads ledger, concurrent
invocations, redelivery, DLQ."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from deltalake import DeltaTable

from conftest import FIXTURES
from fruits.io import aws, lake
from fruits.local.ingest import dead_letter_depth, event_source_mapping, ingest_config
from fruits_ingest.ledger import image_id, key_hash
from fruits_ingest.runner import EventSourceMapping, LocalContext, queue_depth
from helpers import s3_event

SQS_EVENT = json.loads((FIXTURES / "events" / "sqs_event.json").read_text())


@pytest.fixture
def lambda_env(settings, monkeypatch):
    """The environment AWS gives the deployed handler (``fruits_ingest.handler.handler``), against the emulator."""
    for name, value in ingest_config(settings).as_env().items():
        monkeypatch.setenv(name, value)
    # The handler's own events (helpers.s3_event) name the bucket of AWS's example, fruits-images.
    monkeypatch.setenv("ACCEPTED_BUCKETS", f"{settings.bucket},fruits-images")
    monkeypatch.setenv("AWS_DEFAULT_REGION", settings.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", settings.endpoint_url)
    for name, value in zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), aws.emulator_credentials()):
        monkeypatch.setenv(name, value)
    return settings


def sqs_event(*bodies: str) -> dict:
    template = SQS_EVENT["Records"][0]
    return {"Records": [dict(template, messageId=f"msg-{i}", body=body) for i, body in enumerate(bodies)]}


def ledger(settings) -> list[dict]:
    """The uploads ledger's rows, in commit order ([] before it exists)."""
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(lake.delta_uri(settings.uploads_table), storage_options=lake.storage_options(settings))
    except TableNotFoundError:
        return []
    return table.to_pyarrow_table().sort_by([("received_at", "ascending"), ("message_id", "ascending")]).to_pylist()


def test_one_malformed_record_fails_alone(lambda_env) -> None:
    from fruits_ingest.handler import handler

    event = sqs_event(s3_event("uploads/Kiwi/a.jpg"), "this is not json", s3_event("uploads/Tomato+1/b.jpg"))
    response = handler(event, LocalContext())
    assert response == {"batchItemFailures": [{"itemIdentifier": "msg-1"}]}
    rows = ledger(lambda_env)  # one commit: the two good records, typed, with each image's identity
    assert [(r["key"], r["message_id"]) for r in rows] == [
        ("uploads/Kiwi/a.jpg", "msg-0"),
        ("uploads/Tomato 1/b.jpg", "msg-2"),
    ]
    assert set(rows[0]) == {
        "image_id",
        "bucket",
        "key",
        "key_hash",
        "size",
        "etag",
        "version_id",
        "sequencer",
        "event_time",
        "event_name",
        "message_id",
        "received_at",
        "event_date",
    }
    assert (rows[0]["size"], rows[0]["etag"], rows[0]["version_id"]) == (
        4702,
        "d41d8cd98f00b204e9800998ecf8427e",
        "096fKKXTRTtl3on89fVO.nfljtsv6qko",
    )
    assert rows[0]["event_time"].isoformat() == "2026-11-21T10:15:30.123000+00:00"  # the fixture's eventTime
    assert (rows[0]["event_date"].isoformat(), rows[0]["key_hash"]) == ("2026-11-21", key_hash("uploads/Kiwi/a.jpg"))
    assert all(r["image_id"] == image_id(r["bucket"], r["key"], r["etag"], r["version_id"]) for r in rows)


def test_a_forged_record_beside_good_ones_is_skipped_and_the_batch_lands(lambda_env) -> None:
    """A lone surrogate in an etag used to make the batch's write raise and fail all six records
    (the good five went to the dead-letter queue with it)."""
    from fruits_ingest.handler import handler

    good = [s3_event(f"uploads/Kiwi/{i}.jpg") for i in range(5)]
    forged = json.loads(s3_event("uploads/Kiwi/forged.jpg"))
    forged["Records"][0]["s3"]["object"]["eTag"] = "\ud800"
    response = handler(sqs_event(*good[:3], json.dumps(forged), *good[3:]), LocalContext())
    assert response == {"batchItemFailures": []}
    assert [r["key"] for r in ledger(lambda_env)] == [f"uploads/Kiwi/{i}.jpg" for i in range(5)]


def test_a_retried_batch_appends_its_rows_again(lambda_env) -> None:
    from fruits_ingest.handler import handler

    event = sqs_event(s3_event("uploads/Kiwi/a.jpg"), s3_event("uploads/Kiwi/b.jpg"))
    assert handler(event, LocalContext()) == {"batchItemFailures": []}
    handler(event, LocalContext())
    # The ledger is at-least-once: the batch's rows twice (the stream keeps one row per image).
    assert [r["key"] for r in ledger(lambda_env)] == ["uploads/Kiwi/a.jpg", "uploads/Kiwi/b.jpg"] * 2


_INVOCATION = """
import json, sys
from fruits.config import Settings
from fruits.io import aws
from fruits.local.ingest import ingest_config
from fruits_ingest.handler import make_handler
from fruits_ingest.runner import LocalContext
settings = Settings.model_validate_json(sys.argv[1])
event = json.loads(sys.argv[2])
handler = make_handler(ingest_config(settings))
print("ready", flush=True)
sys.stdin.readline()  # every invocation is ready: they append at once
print("answer", json.dumps(handler(event, LocalContext())), flush=True)
"""


def test_concurrent_invocations_append_every_row_once(settings) -> None:
    """Six invocations append to one ledger on the emulator's S3 at the same moment: delta-rs's
    conditional commits (put-if-absent, no lock table) keep all 60 rows, none twice."""
    on_s3 = settings.with_(table_root=f"s3a://{settings.bucket}/tables")

    def ours(key: str) -> str:
        event = json.loads(s3_event(key))
        event["Records"][0]["s3"]["bucket"]["name"] = settings.bucket
        return json.dumps(event)

    events = [sqs_event(*[ours(f"uploads/Kiwi/{n}-{i}.jpg") for i in range(10)]) for n in range(6)]
    for n, event in enumerate(events):
        for record in event["Records"]:
            record["messageId"] = f"invocation-{n}-{record['messageId']}"
    env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")
    calls = [
        subprocess.Popen(
            [sys.executable, "-c", _INVOCATION, on_s3.model_dump_json(), json.dumps(event)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for event in events
    ]
    try:
        assert [c.stdout.readline().strip() for c in calls] == ["ready"] * 6
        for c in calls:
            c.stdin.write("go\n")
            c.stdin.flush()
        answers = [json.loads(next(line for line in c.stdout if line.startswith("answer "))[7:]) for c in calls]
    finally:
        for c in calls:
            c.communicate(timeout=120)
    assert answers == [{"batchItemFailures": []}] * 6
    rows = ledger(on_s3)
    assert sorted(r["key"] for r in rows) == sorted(f"uploads/Kiwi/{n}-{i}.jpg" for n in range(6) for i in range(10))
    table = DeltaTable(lake.delta_uri(on_s3.uploads_table), storage_options=lake.storage_options(on_s3))
    appends = [c for c in table.history() if c["operation"] == "WRITE"]
    assert len(appends) == 6  # one commit per invocation


def test_every_nth_commit_compacts_the_days_it_appended_to(lambda_env, monkeypatch) -> None:
    """The invocation whose commit is a multiple of COMPACT_EVERY bin-packs its days' small files
    (a commit that changes no data); another day's files stay; every row stays, once."""
    from fruits_ingest import handler as module

    monkeypatch.setattr(module, "COMPACT_EVERY", 4)
    keys = ["uploads/Kiwi/old-0.jpg", "uploads/Kiwi/old-1.jpg", "uploads/Kiwi/0.jpg", "uploads/Kiwi/1.jpg"]
    for key in keys:  # versions 1 to 4 (0 created the table): two on another day, two on the fixture's
        event = json.loads(s3_event(key))
        if "old" in key:
            event["Records"][0]["eventTime"] = "2026-11-01T08:00:00.000Z"
        assert module.handler(sqs_event(json.dumps(event)), LocalContext()) == {"batchItemFailures": []}
    table = DeltaTable(lake.delta_uri(lambda_env.uploads_table), storage_options=lake.storage_options(lambda_env))
    compactions = [c for c in table.history() if c["operation"] == "OPTIMIZE"]
    assert [c["version"] for c in compactions] == [5]  # right after the fourth append
    days = [d.isoformat() for d in pa.table(table.get_add_actions(flatten=True))["partition.event_date"].to_pylist()]
    assert sorted(days) == ["2026-11-01", "2026-11-01", "2026-11-21"]
    assert sorted(r["key"] for r in ledger(lambda_env)) == sorted(keys)


def test_a_failed_compaction_is_logged_and_the_batch_stands(lambda_env, monkeypatch) -> None:
    """delta-rs gives a compaction up when appends keep committing first: the batch is recorded."""
    from deltalake.exceptions import CommitFailedError

    from fruits_ingest import handler as module

    def racing(*_: object) -> int:
        raise CommitFailedError("Failed to commit transaction: 15")

    monkeypatch.setattr(module, "COMPACT_EVERY", 1)
    monkeypatch.setattr(module, "compact", racing)
    buffer = io.StringIO()
    previous = module.logger.registered_handler.setStream(buffer)
    try:
        response = module.handler(sqs_event(s3_event("uploads/Kiwi/a.jpg")), LocalContext())
    finally:
        module.logger.registered_handler.setStream(previous)
    assert response == {"batchItemFailures": []}
    assert [r["key"] for r in ledger(lambda_env)] == ["uploads/Kiwi/a.jpg"]
    warnings = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [(w["message"], w["error"]) for w in warnings if w["level"] == "WARNING"] == [
        ("the ledger compaction failed; the next one will do it", "Failed to commit transaction: 15")
    ]


def test_batch_of_only_skips_appends_nothing(lambda_env) -> None:
    from fruits_ingest.handler import handler

    event = sqs_event((FIXTURES / "events" / "s3_test_event.json").read_text(), s3_event("uploads/Kiwi/x.txt"))
    assert handler(event, LocalContext()) == {"batchItemFailures": []}
    assert ledger(lambda_env) == []


def test_a_ledger_append_failure_fails_every_record(lambda_env, monkeypatch) -> None:
    from fruits_ingest.handler import handler

    monkeypatch.setenv("LEDGER_URI", "s3://no-such-bucket-anywhere/tables/uploads")
    monkeypatch.setenv("AWS_ENDPOINT_URL", lambda_env.endpoint_url)  # delta-rs: the emulator, which has no such bucket
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    event = sqs_event(s3_event("uploads/Kiwi/a.jpg"), "garbage", s3_event("uploads/Kiwi/b.jpg"))
    response = handler(event, LocalContext())
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == ["msg-0", "msg-1", "msg-2"]


def test_all_records_malformed_fails_all(lambda_env) -> None:
    from fruits_ingest.handler import handler

    response = handler(sqs_event("x", "y"), LocalContext())
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == ["msg-0", "msg-1"]


def test_logs_are_structured_with_the_message_id(lambda_env) -> None:
    from fruits_ingest.handler import handler, logger

    buffer = io.StringIO()
    previous = logger.registered_handler.setStream(buffer)
    logger.setLevel("INFO")
    try:
        handler(sqs_event((FIXTURES / "events" / "s3_test_event.json").read_text()), LocalContext())
    finally:
        logger.setLevel("WARNING")
        logger.registered_handler.setStream(previous)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    skipped = [line for line in lines if line.get("message") == "skipped"]
    assert skipped and skipped[0]["correlation_id"] == "msg-0" and skipped[0]["skipped"] == {"test_event": 1}


def test_metrics_are_emitted_as_emf(lambda_env, monkeypatch, capsys) -> None:
    from fruits_ingest.handler import handler

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    handler(sqs_event(s3_event("uploads/Kiwi/a.jpg"), s3_event("uploads/Kiwi/a.txt"), "bad"), LocalContext())
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    merged = {k: v for blob in blobs for k, v in blob.items()}
    assert merged["ImagesAccepted"] in (1, [1.0], 1.0)
    assert merged["RecordsFailed"] in (1, [1.0], 1.0)
    assert any(blob.get("reason") == "not_an_image" for blob in blobs)


def test_real_uploads_through_the_event_source_mapping(settings) -> None:
    """Upload -> S3 notification (emulator) -> SQS -> runner -> handler -> ledger; DLQ stays empty."""
    s3 = aws.client("s3", settings)
    keys = ["uploads/Apple Braeburn/1.jpg", "uploads/Kiwi/a+b.JPG", "uploads/Pêche/é 1.png", "uploads/notes.txt"]
    for key in keys:
        s3.put_object(Bucket=settings.bucket, Key=key, Body=b"bytes")
    stats = event_source_mapping(settings, visibility_timeout=2).drain(timeout_seconds=60)
    assert stats.failed == 0
    lines = ledger(settings)
    assert sorted(line["key"] for line in lines) == sorted(keys[:3])  # .txt: notified, skipped by the Lambda
    assert all(line["etag"] and line["size"] == 5 for line in lines)
    assert dead_letter_depth(settings) == 0


def test_poison_message_lands_in_the_dead_letter_queue(settings) -> None:
    sqs = aws.client("sqs", settings)
    s3 = aws.client("s3", settings)
    sqs.send_message(QueueUrl=aws.queue_url(settings), MessageBody="definitely not an S3 event")
    s3.put_object(Bucket=settings.bucket, Key="uploads/Kiwi/ok.jpg", Body=b"x")
    # A 1 s visibility timeout makes the retries quick; it needs batches gathered without a window.
    mapping = event_source_mapping(settings, visibility_timeout=1, batch_size=10, batching_window=0)
    stats = mapping.drain(timeout_seconds=60)
    assert stats.failed >= 3  # maxReceiveCount deliveries of the poison message
    assert dead_letter_depth(settings) == 1
    assert [r["key"] for r in ledger(settings)] == ["uploads/Kiwi/ok.jpg"]
    assert os.environ.get("UPLOADS_BUCKET") != settings.bucket  # configured explicitly, not through os.environ


def test_the_mapping_gathers_a_backlog_into_batches_as_on_aws(settings) -> None:
    """Up to batch_size messages per invocation, gathered over several receives (SQS hands out 10
    at most); one ledger commit per invocation; nothing received twice or left behind."""
    s3 = aws.client("s3", settings)
    keys = [f"uploads/Kiwi/{i}.jpg" for i in range(25)]
    for key in keys:
        s3.put_object(Bucket=settings.bucket, Key=key, Body=b"x")
    mapping = event_source_mapping(settings, visibility_timeout=30)
    assert (mapping.batch_size, mapping.batching_window) == (100, 1)  # what infra/ deploys
    sizes = []
    original = mapping.handler
    mapping.handler = lambda event, context: sizes.append(len(event["Records"])) or original(event, context)
    stats = mapping.drain(timeout_seconds=60)
    # One invocation for all 25 (and the s3:TestEvent the emulator sent when the notification was set up).
    assert len(sizes) == 1 and sizes[0] == stats.received == stats.deleted >= 25 and stats.failed == 0
    assert sorted(r["key"] for r in ledger(settings)) == sorted(keys)
    assert mapping.backlog() == 0 and mapping.gather() == []  # an empty queue: one long poll, no batch


def test_mapping_settings_aws_would_refuse(settings) -> None:
    with pytest.raises(ValueError, match="batching_window of at least 1 second"):
        EventSourceMapping(
            aws.client("sqs", settings), aws.queue_url(settings), lambda e, c: {}, batch_size=11, batching_window=0
        )
    with pytest.raises(ValueError, match="visibility_timeout must be longer"):
        EventSourceMapping(aws.client("sqs", settings), aws.queue_url(settings), lambda e, c: {}, visibility_timeout=1)
    with pytest.raises(ValueError, match="10,000"):
        EventSourceMapping(aws.client("sqs", settings), aws.queue_url(settings), lambda e, c: {}, batch_size=10_001)


def test_replay_dlq_moves_whatever_a_dead_letter_queue_holds(settings, capsys, monkeypatch) -> None:
    """Forged and garbled messages are listed and replayed, never an abort half-way; a message
    that cannot be sent stays in the dead-letter queue, is reported, and the command exits 1."""
    from fruits.cli import main
    from fruits.io import dead_letters

    bad_size = json.loads(s3_event("uploads/Kiwi/a.jpg", size="many"))
    nested = s3_event("uploads/Kiwi/b.jpg")
    for _ in range(3):
        nested = json.dumps({"Type": "Notification", "Message": nested})
    bodies = [json.dumps(bad_size), nested, "[" * 50_000 + "]" * 50_000, "not json", s3_event("uploads/Kiwi/ok.jpg")]
    sqs = aws.client("sqs", settings)
    dlq = aws.queue_url(settings, settings.dead_letter_queue)
    for body in bodies:
        sqs.send_message(QueueUrl=dlq, MessageBody=body)

    def replay(code: int, *flags: str) -> str:
        with pytest.raises(SystemExit) as done:
            main(
                [
                    "replay-dlq",
                    "--endpoint-url",
                    settings.endpoint_url,
                    "--bucket",
                    settings.bucket,
                    "--queue",
                    settings.queue,
                    *flags,
                ]
            )
        assert done.value.code == code
        return capsys.readouterr().out

    listed = replay(0, "--dry-run")
    assert "would move 5 message(s)" in listed and "uploads/Kiwi/ok.jpg" in listed
    assert "uploads/Kiwi/a.jpg" in listed and "MalformedMessage" in listed

    real_client = aws.client

    def refusing_client(name, s):  # noqa: ANN001, ANN202 (SQS refuses one body, as a full queue would)
        client = real_client(name, s)
        send = client.send_message

        def send_message(**kwargs):  # noqa: ANN003, ANN202
            if kwargs["MessageBody"] == "not json":
                raise ClientError({"Error": {"Code": "InternalError", "Message": "try later"}}, "SendMessage")
            return send(**kwargs)

        client.send_message = send_message
        return client

    monkeypatch.setattr(dead_letters.aws, "client", refusing_client)
    queued = queue_depth(sqs, aws.queue_url(settings))  # the emulator's s3:TestEvent, if not yet drained
    out = replay(1)
    assert "moved 4 message(s)" in out and "1 left in place" in out and "InternalError" in out
    monkeypatch.undo()
    assert dead_letter_depth(settings) == 1
    assert queue_depth(sqs, aws.queue_url(settings)) == queued + 4


def test_a_dead_lettered_event_is_replayed_once_its_cause_is_fixed(settings, capsys) -> None:
    """The ledger's bucket is wrong: the event fails its three deliveries and is dead-lettered.
    Fixed, ``fruits replay-dlq`` moves it back (``--dry-run`` first only lists it) and it lands."""
    from fruits.cli import main
    from fruits.local import ingest
    from fruits_ingest.config import IngestConfig
    from fruits_ingest.handler import make_handler
    from fruits_ingest.runner import EventSourceMapping

    s3 = aws.client("s3", settings)
    s3.put_object(Bucket=settings.bucket, Key="uploads/Kiwi/late.jpg", Body=b"x")
    broken = make_handler(
        IngestConfig(
            uploads_bucket=settings.bucket,
            ledger_uri="s3://fruits-no-such-ledger-bucket/tables/uploads",
            storage_options=lake.storage_options(settings),
        )
    )
    EventSourceMapping(
        aws.client("sqs", settings),
        aws.queue_url(settings),
        broken,
        batch_size=10,
        batching_window=0,
        visibility_timeout=1,
    ).drain()
    # The upload's event, and the emulator's s3:TestEvent that shared its failed batch.
    dead = ingest.dead_letter_depth(settings)
    assert dead >= 1 and ledger(settings) == []

    def replay(*flags: str) -> str:
        with pytest.raises(SystemExit) as done:
            main(
                [
                    "replay-dlq",
                    "--endpoint-url",
                    settings.endpoint_url,
                    "--bucket",
                    settings.bucket,
                    "--queue",
                    settings.queue,
                    *flags,
                ]
            )
        assert done.value.code == 0
        return capsys.readouterr().out

    listed = replay("--dry-run")
    assert f"would move {dead} message(s)" in listed and "uploads/Kiwi/late.jpg" in listed
    assert ingest.dead_letter_depth(settings) == dead  # a dry run moves nothing
    assert f"moved {dead} message(s)" in replay("--max", "5")
    assert ingest.dead_letter_depth(settings) == 0
    ingest.drain(settings, visibility_timeout=5)  # the fixed Lambda
    assert [r["key"] for r in ledger(settings)] == ["uploads/Kiwi/late.jpg"]
