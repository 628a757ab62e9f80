"""The featurizer stream: bad images to quarantine beside good rows, duplicates removed."""

from __future__ import annotations

import datetime as dt
import io
import json

import deltalake
import pytest
from delta.tables import DeltaTable
from faults import FlakyProxy
from PIL import Image

from conftest import SAMPLE
from fruits import stream
from fruits.featurize import fetch
from fruits.io import aws, lake
from fruits.local import ingest
from fruits.query.sql import sql as spark_sql
from fruits_ingest import ledger
from fruits_ingest.events import ImageEvent
from helpers import aws_event, fruits_env

pytestmark = pytest.mark.spark


def run_stream(spark, settings, blob) -> None:
    stream.start(spark, settings, model=blob).awaitTermination()


def table_rows(spark, settings, statement: str) -> list[tuple]:
    return spark_sql(spark, settings, statement).rows


def put_samples(settings, label: str, n: int) -> list[str]:
    """Upload the first ``n`` sample photos of ``label``; returns their keys, sorted."""
    s3 = aws.client("s3", settings)
    keys = []
    for path in sorted(SAMPLE.glob(f"{label}/*.jpg"))[:n]:
        keys.append(f"uploads/{label}/{path.name}")
        s3.put_object(Bucket=settings.bucket, Key=keys[-1], Body=path.read_bytes())
    return keys


def append_to_ledger(settings, images: list[ImageEvent]) -> None:
    """Rows written to the uploads ledger as the Lambda writes them, but unchecked: what a row
    written some other way, or a batch appended twice, looks like to the stream."""
    ledger.append(lake.delta_uri(settings.uploads_table), images, lake.storage_options(settings))


def ledger_rows(spark, settings):  # noqa: ANN201
    """The uploads ledger as a batch DataFrame: what a micro-batch of the stream holds."""
    return spark.read.format("delta").load(settings.uploads_table)


def run_stream_through(spark, settings, blob, proxy: FlakyProxy) -> None:
    """The stream with the executors' fetches (only they: the ledger and tables do not) through ``proxy``."""
    try:
        run_stream(spark, settings.with_(endpoint_url=proxy.url), blob)
    finally:
        proxy.close()


def assert_rows_exactly(spark, settings, keys: list[str]) -> None:
    """One features row per key, nothing quarantined."""
    rows = table_rows(spark, settings, "SELECT key FROM features ORDER BY key")
    assert [r[0] for r in rows] == keys
    assert table_rows(spark, settings, "SELECT count(*) FROM quarantine") == [(0,)]


def client_without_retries(settings, url: str):  # noqa: ANN201
    import boto3
    from botocore.config import Config

    key, secret = aws.emulator_credentials()
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=settings.region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def png_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_images_are_quarantined_and_good_ones_land(spark, settings, weights_blob) -> None:
    s3 = aws.client("s3", settings)
    good = sorted(SAMPLE.glob("Kiwi/*.jpg"))[:2]
    put = lambda key, body: s3.put_object(Bucket=settings.bucket, Key=key, Body=body)  # noqa: E731
    for path in good:
        put(f"uploads/Kiwi/{path.name}", path.read_bytes())
    put("uploads/Kiwi/text.jpg", b"just some text, not a photo")
    put("uploads/Kiwi/empty.jpg", b"")
    put("uploads/Kiwi/truncated.jpg", good[0].read_bytes()[:400])
    put("uploads/Kiwi/bomb.png", png_bomb())
    put("uploads/Kiwi/deleted.jpg", good[0].read_bytes())
    put("uploads/Kiwi/overwritten.jpg", good[0].read_bytes())
    put("uploads/Kiwi/twice.jpg", good[0].read_bytes())
    ingest.drain(settings, visibility_timeout=5)
    # The bucket is versioned (as on AWS): the deleted photo's old version and the first bytes of
    # the overwritten one are still there, but only a key's current object counts.
    s3.delete_object(Bucket=settings.bucket, Key="uploads/Kiwi/deleted.jpg")
    put("uploads/Kiwi/overwritten.jpg", good[1].read_bytes())  # a second upload, a second event
    put("uploads/Kiwi/twice.jpg", good[0].read_bytes())  # the same bytes again (a retried PUT): one image
    ingest.drain(settings, visibility_timeout=5)
    # AWS's events carry each PUT's version id (the emulator's carry none): send those too.
    sqs = aws.client("sqs", settings)
    for key in ("deleted", "overwritten", "twice"):
        versions = s3.list_object_versions(Bucket=settings.bucket, Prefix=f"uploads/Kiwi/{key}.jpg")["Versions"]
        assert len(versions) == (1 if key == "deleted" else 2)
        for version in versions:
            event = aws_event(s3, settings.bucket, f"uploads/Kiwi/{key}.jpg", version)
            sqs.send_message(QueueUrl=aws.queue_url(settings), MessageBody=json.dumps(event))
    ingest.drain(settings, visibility_timeout=5)

    run_stream(spark, settings, weights_blob)

    rows = table_rows(spark, settings, "SELECT key FROM features ORDER BY key")
    assert [r[0] for r in rows] == sorted(
        [f"uploads/Kiwi/{p.name}" for p in good] + ["uploads/Kiwi/overwritten.jpg", "uploads/Kiwi/twice.jpg"]
    )
    # The overwritten key's row is the second upload's (its first bytes are object_changed).
    etag = s3.head_object(Bucket=settings.bucket, Key="uploads/Kiwi/overwritten.jpg")["ETag"].strip('"')
    assert table_rows(spark, settings, "SELECT etag FROM features WHERE key = 'uploads/Kiwi/overwritten.jpg'") == [
        (etag,)
    ]
    quarantined = dict(table_rows(spark, settings, "SELECT key, reason FROM quarantine"))
    assert quarantined == {
        "uploads/Kiwi/text.jpg": "not_an_image",
        "uploads/Kiwi/empty.jpg": "empty_object",
        "uploads/Kiwi/truncated.jpg": "truncated_or_corrupt",
        "uploads/Kiwi/bomb.png": "decompression_bomb",
        "uploads/Kiwi/deleted.jpg": "object_missing",
        "uploads/Kiwi/overwritten.jpg": "object_changed",
    }
    errors = table_rows(spark, settings, "SELECT count(*) FROM quarantine WHERE error IS NULL OR error = ''")
    assert errors == [(0,)] and table_rows(spark, settings, "SELECT count(*) FROM quarantine") == [(len(quarantined),)]


def test_a_stream_started_before_the_first_upload_waits_for_it(spark, settings, weights_blob) -> None:
    """A new deployment's stream starts before any upload: it creates the empty ledger (the Lambda
    would, at its first append) and waits."""
    run_stream(spark, settings, weights_blob)  # availableNow: nothing yet, a clean finish
    keys = put_samples(settings, "Kiwi", 1)
    ingest.drain(settings, visibility_timeout=5)
    run_stream(spark, settings, weights_blob)
    assert_rows_exactly(spark, settings, keys)


def test_no_ledger_row_or_object_can_stop_the_stream(spark, settings, weights_blob) -> None:
    """A row the Lambda would never write (an etag that would split the request) and an object far
    over the byte limit: each ends as a quarantine row, and the good upload beside them lands."""
    settings = settings.with_(max_image_bytes=200_000)
    s3 = aws.client("s3", settings)
    (good,) = put_samples(settings, "Kiwi", 1)
    photo = s3.get_object(Bucket=settings.bucket, Key=good)["Body"].read()
    s3.put_object(Bucket=settings.bucket, Key="uploads/Kiwi/crlf.jpg", Body=photo)
    s3.put_object(Bucket=settings.bucket, Key="uploads/Kiwi/huge.jpg", Body=b"\xff" * 3_000_000)

    def etag(key: str) -> str:
        return s3.head_object(Bucket=settings.bucket, Key=key)["ETag"].strip('"')

    def row(key: str, tag: str) -> ImageEvent:
        return ImageEvent(
            settings.bucket, key, 1, tag, None, None, "2026-12-01T00:00:00Z", "ObjectCreated:Put", "forged"
        )

    append_to_ledger(
        settings,
        [
            row(good, etag(good)),
            row("uploads/Kiwi/crlf.jpg", etag("uploads/Kiwi/crlf.jpg") + "\r\nX: 1"),
            row("uploads/Kiwi/huge.jpg", etag("uploads/Kiwi/huge.jpg")),
        ],
    )

    run_stream(spark, settings, weights_blob)

    assert table_rows(spark, settings, "SELECT key FROM features") == [(good,)]
    quarantined = dict(table_rows(spark, settings, "SELECT key, reason FROM quarantine"))
    assert quarantined == {"uploads/Kiwi/crlf.jpg": "invalid_event", "uploads/Kiwi/huge.jpg": "too_many_bytes"}


def test_rows_appended_twice_add_no_rows(spark, settings, weights_blob) -> None:
    """The ledger is at-least-once (a batch SQS delivers again is appended again): the same rows
    twice in one micro-batch, then again in a later one, are one row per image."""
    put_samples(settings, "Tomato 1", 3)
    ingest.drain(settings, visibility_timeout=5)
    images = [
        ImageEvent(r.bucket, r.key, r.size, r.etag, r.version_id, r.sequencer, None, r.event_name, r.message_id)
        for r in ledger_rows(spark, settings).collect()
    ]
    append_to_ledger(settings, images + images)
    run_stream(spark, settings, weights_blob)
    append_to_ledger(settings, images)
    run_stream(spark, settings, weights_blob)

    rows = table_rows(spark, settings, "SELECT label, count(*), count(DISTINCT key) FROM features GROUP BY label")
    assert rows == [("Tomato 1", 3, 3)]


def test_the_stream_reads_on_across_the_ledgers_maintenance(spark, settings, weights_blob) -> None:
    """Maintenance rewrites the ledger's day (sorted, data unchanged) between two runs of the stream:
    the stream's Delta source skips that commit and reads only the upload appended after it."""
    keys = put_samples(settings, "Kiwi", 3)
    ingest.drain(settings, visibility_timeout=5)
    uri, options = lake.delta_uri(settings.uploads_table), lake.storage_options(settings)
    first = deltalake.DeltaTable(uri, storage_options=options).to_pyarrow_table().to_pylist()[0]
    again = ImageEvent(
        first["bucket"],
        first["key"],
        first["size"],
        first["etag"],
        first["version_id"],
        first["sequencer"],
        first["event_time"].isoformat(),
        first["event_name"],
        first["message_id"],
    )
    append_to_ledger(settings, [again])  # redelivered: a second small file in its day, something to sort
    run_stream(spark, settings, weights_blob)
    done = ledger.maintain(uri, options)
    assert done is not None and done.files_removed >= 2 and done.files_added == 1
    keys += put_samples(settings, "Tomato 1", 1)
    ingest.drain(settings, visibility_timeout=5)
    query = stream.start(spark, settings, model=weights_blob)
    query.awaitTermination()
    assert sum(p["numInputRows"] for p in query.recentProgress) == 1  # the new row only, not the sorted ones
    assert_rows_exactly(spark, settings, sorted(keys))


def test_transforms_work_without_a_stream(spark) -> None:
    uploads = [
        ("b", "uploads/Apple Red 1/x.jpg", "e1"),
        ("b", "uploads/Apple Red 1/x.jpg", "e1"),
        ("b", "uploads/Apple Red 1/x.jpg", "e2"),
        ("b", "uploads/loose.jpg", "e3"),
        ("b", "elsewhere/Kiwi/y.jpg", "e4"),
    ]
    rows = spark.createDataFrame(
        [(ledger.image_id(b, k, e, None), b, k, e) for b, k, e in uploads],
        "image_id string, bucket string, key string, etag string",
    )
    images = stream.dedupe(stream.labelled(rows, ("uploads/",)))
    got = sorted((r.key, r.etag, r.label) for r in images.collect())
    assert got == [
        ("elsewhere/Kiwi/y.jpg", "e4", None),
        ("uploads/Apple Red 1/x.jpg", "e1", "Apple Red 1"),
        ("uploads/Apple Red 1/x.jpg", "e2", "Apple Red 1"),  # an overwrite is a new image
        ("uploads/loose.jpg", "e3", None),
    ]


def test_a_micro_batch_replayed_after_its_commit_adds_no_rows(spark, settings, weights_blob) -> None:
    """A crash after the Delta commits but before Spark's checkpoint commit replays the micro-batch
    (same id, same lines): the tables hold its images by then, so nothing is featurized or written again."""
    keys = put_samples(settings, "Kiwi", 2) + [f"uploads/Kiwi/{name}" for name in ("a.jpg",)]
    aws.client("s3", settings).put_object(Bucket=settings.bucket, Key=keys[-1], Body=b"not an image")
    ingest.drain(settings, visibility_timeout=5)
    lines = ledger_rows(spark, settings)
    writer = stream.BatchWriter(spark, settings, weights_blob)
    writer(lines, 0)
    versions = [
        DeltaTable.forPath(spark, t).history(1).first().version
        for t in (settings.features_table, settings.quarantine_table)
    ]
    writer(lines, 0)  # the replay
    stream.BatchWriter(spark, settings, weights_blob)(lines, 0)  # and one after a restart
    assert [
        DeltaTable.forPath(spark, t).history(1).first().version
        for t in (settings.features_table, settings.quarantine_table)
    ] == versions  # no commit at all
    assert table_rows(spark, settings, "SELECT count(*), count(DISTINCT key) FROM features") == [(2, 2)]
    assert table_rows(spark, settings, "SELECT key, reason FROM quarantine") == [(keys[-1], "not_an_image")]


def test_an_event_delivered_twice_by_sqs_gives_one_row(spark, settings, weights_blob) -> None:
    """SQS is at-least-once: the same S3 event body arrives as two messages."""
    s3, sqs = aws.client("s3", settings), aws.client("sqs", settings)
    path = sorted(SAMPLE.glob("Banana/*.jpg"))[0]
    s3.put_object(Bucket=settings.bucket, Key=f"uploads/Banana/{path.name}", Body=path.read_bytes())
    queue = aws.queue_url(settings)
    event = None
    while event is None:  # skip the emulator's s3:TestEvent; leave every message in the queue
        received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1, VisibilityTimeout=0, MaxNumberOfMessages=10)
        event = next((m["Body"] for m in received.get("Messages", []) if path.name in m["Body"]), None)
    sqs.send_message(QueueUrl=queue, MessageBody=event)
    assert ingest.drain(settings, visibility_timeout=5).failed == 0
    announced = [r.key for r in ledger_rows(spark, settings).collect()]
    assert announced.count(f"uploads/Banana/{path.name}") == 2  # the image announced twice
    run_stream(spark, settings, weights_blob)
    assert table_rows(spark, settings, "SELECT key FROM features") == [(f"uploads/Banana/{path.name}",)]
    assert table_rows(spark, settings, "SELECT count(*) FROM quarantine") == [(0,)]


def test_connections_dropped_during_the_fetch_lose_nothing(spark, settings, weights_blob) -> None:
    """The executors' GETs meet reset connections; botocore retries them and every image lands."""
    keys = put_samples(settings, "Mango", 6)
    ingest.drain(settings, visibility_timeout=5)
    proxy = FlakyProxy(settings.endpoint_url, drop=3)
    run_stream_through(spark, settings, weights_blob, proxy)
    assert proxy.dropped == 3 and proxy.forwarded >= 1
    assert_rows_exactly(spark, settings, keys)


def test_an_unreachable_emulator_during_the_fetch_loses_nothing(spark, settings, weights_blob) -> None:
    """The executors' first connection is reset, then the port refuses connections for 3 s.

    botocore's first retry comes within 50 ms, so the fetches meet the refused port; they wait it
    out and every image lands, none quarantined."""
    keys = put_samples(settings, "Pear", 4)
    ingest.drain(settings, visibility_timeout=5)
    proxy = FlakyProxy(settings.endpoint_url, outage=3.0)
    run_stream_through(spark, settings, weights_blob, proxy)
    # The fetches met the outage (a reset, then refusals) and got through only after it.
    assert proxy.dropped == 1 and proxy.first_forward_at is not None and proxy.first_forward_at >= proxy.up_at
    assert_rows_exactly(spark, settings, keys)


def test_fetch_waits_out_an_outage_longer_than_botocores_retries(settings) -> None:
    """A client without retries of its own: only ``fetch``'s patience bridges the 2 s outage."""
    s3 = aws.client("s3", settings)
    body = sorted(SAMPLE.glob("Pear/*.jpg"))[0].read_bytes()
    etag = s3.put_object(Bucket=settings.bucket, Key="uploads/Pear/p.jpg", Body=body)["ETag"].strip('"')
    proxy = FlakyProxy(settings.endpoint_url, outage=2.0)
    client = client_without_retries(settings, proxy.url)
    try:
        assert fetch.fetch(client, settings.bucket, "uploads/Pear/p.jpg", etag, None, outage=fetch.Outage()) == body
    finally:
        proxy.close()
    assert proxy.dropped == 1 and proxy.first_forward_at >= proxy.up_at


def test_a_lambda_that_dies_after_recording_its_batch_adds_each_image_once(spark, settings, weights_blob) -> None:
    """The first invocation appends its rows to the ledger, then dies before the runner acknowledges: SQS
    delivers those messages again, the Lambda records them again, and the table has one row each."""
    keys = put_samples(settings, "Plum", 5)
    mapping = ingest.event_source_mapping(settings, visibility_timeout=2, batch_size=3)
    handler, killed = mapping.handler, []

    def dies_after_writing(event, context):  # noqa: ANN001, ANN202
        result = handler(event, context)
        if not killed:
            killed.append(len(event["Records"]))
            raise RuntimeError("the Lambda was killed before it returned")
        return result

    mapping.handler = dies_after_writing
    stats = mapping.drain()
    assert killed and stats.failed == killed[0] and stats.received >= len(keys) + killed[0]
    assert ingest.dead_letter_depth(settings) == 0
    run_stream(spark, settings, weights_blob)
    assert_rows_exactly(spark, settings, keys)


class FakeClock:
    """``fetch``'s clock: sleeping advances it at once, and every pause is recorded."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refused_url() -> str:
    """An endpoint on a port where nothing listens: every connection is refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_after_a_long_outage_fetches_fail_at_once(settings, monkeypatch) -> None:
    """Patience is per outage, not per object: past it, the next fetch fails without waiting again."""
    clock = FakeClock()
    monkeypatch.setattr(fetch, "time", clock)
    client, outage = client_without_retries(settings, refused_url()), fetch.Outage()
    # S3Unavailable: the job's failure, never an image's (the stream's poison-pill rule re-raises it)
    with pytest.raises(fetch.S3Unavailable):  # waits 0.5 s, then the next pause would pass 0.9 s
        fetch.fetch(client, settings.bucket, "uploads/a.jpg", None, None, patience=0.9, outage=outage)
    assert clock.sleeps == [0.5]
    with pytest.raises(fetch.S3Unavailable):  # the same outage: no wait at all
        fetch.fetch(client, settings.bucket, "uploads/b.jpg", None, None, patience=0.9, outage=outage)
    assert clock.sleeps == [0.5]
    clock.now += fetch.Outage.GAP + 1  # a failure long after the last one starts a new outage
    with pytest.raises(fetch.S3Unavailable):
        fetch.fetch(client, settings.bucket, "uploads/c.jpg", None, None, patience=0.9, outage=outage)
    assert clock.sleeps == [0.5, 0.5]


def test_each_micro_batch_publishes_its_metrics_to_cloudwatch(spark, settings, weights_blob) -> None:
    """What infra/'s stalled-stream alarm watches: one BatchesCommitted per micro-batch, with its
    images and quarantines, in the configured namespace (the emulator's CloudWatch here)."""
    settings = settings.with_(metrics_namespace=f"FruitsTest{settings.bucket[-10:]}")
    put_samples(settings, "Kiwi", 2)
    aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="uploads/Kiwi/bad.jpg", Body=b"not a photo")
    ingest.drain(settings, visibility_timeout=5)
    run_stream(spark, settings, weights_blob)
    cloudwatch = aws.client("cloudwatch", settings)

    def total(name: str) -> float:
        now = dt.datetime.now(dt.UTC)
        points = cloudwatch.get_metric_statistics(
            Namespace=settings.metrics_namespace,
            MetricName=name,
            Statistics=["Sum"],
            Period=3600,
            Dimensions=[{"Name": "Bucket", "Value": settings.bucket}],
            StartTime=now - dt.timedelta(hours=1),
            EndTime=now + dt.timedelta(minutes=5),
        )["Datapoints"]
        return sum(p["Sum"] for p in points)

    assert (total("ImagesFeaturized"), total("ImagesQuarantined")) == (2, 1)
    assert total("BatchesCommitted") >= 1 and total("FeaturizeSeconds") > 0


def test_a_cluster_micro_batch_checkpoints_its_rows_where_executors_cannot_lose_them(
    spark, settings, weights_blob
) -> None:
    """On a cluster the scored rows go to the checkpoint directory (S3 there), not to executors'
    memory that dynamic allocation may take away; the batch writes the same rows."""
    from contextlib import contextmanager
    from pathlib import Path

    keys = put_samples(settings, "Mango", 2)
    ingest.drain(settings, visibility_timeout=5)
    lines = ledger_rows(spark, settings)
    writer = stream.BatchWriter(spark, settings, weights_blob, reliable=True)
    checkpointed = []
    original = stream.job.materialized

    @contextmanager
    def watched(df, reliable_dir=None):  # noqa: ANN001, ANN202
        with original(df, reliable_dir) as done:
            checkpointed.extend(Path(reliable_dir).glob("part-*.parquet"))
            yield done

    stream.job.materialized = watched
    try:
        writer(lines, 0)
    finally:
        stream.job.materialized = original
    assert checkpointed, "nothing was checkpointed reliably"
    assert not list(Path(settings.checkpoint, "batches").iterdir())  # each batch's folder is gone after it
    assert_rows_exactly(spark, settings, keys)


def stream_process(settings, tmp_path):  # noqa: ANN001, ANN201
    """``fruits stream --trigger "2 seconds"`` as a supervisor runs it, on these settings."""
    import subprocess
    import sys

    env = fruits_env(settings, FRUITS_SPARK_MASTER="local[1]")
    return subprocess.Popen(
        [sys.executable, "-m", "fruits", "stream", "--trigger", "2 seconds"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def wait_for_features(settings, n: int, process, timeout: float = 300) -> None:  # noqa: ANN001
    import time

    from fruits.query.store import FeatureStore

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if FeatureStore(settings).sql("SELECT count(*) FROM features").rows[0][0] >= n:
                return
        except FileNotFoundError:
            pass
        time.sleep(1)
    raise AssertionError(f"no {n} rows: {process.poll()}, {process.stderr.read()[-2000:] if process.poll() else ''}")


@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stopped_stream_exits_cleanly_and_frees_its_lease(settings, tmp_path, signum: int, code: int) -> None:
    """Ctrl-C, or SIGTERM as a cancelled job run sends: a clean stop, 128 + the signal, no traceback,
    and the lease released, so that the next stream starts at once."""
    from fruits.io.lease import Lease

    put_samples(settings, "Kiwi", 1)
    ingest.drain(settings, visibility_timeout=5)
    process = stream_process(settings, tmp_path)
    wait_for_features(settings, 1, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "reentrant" not in stderr, stderr[-3000:]
    Lease(settings, "stream").acquire().release()


def test_a_stream_that_fails_mid_run_exits_non_zero(settings, tmp_path) -> None:
    """The Delta log becomes unwritable after the first batch: the next batch fails the stream,
    and the process says so with exit code 1 (a supervisor restarts it), never 0."""
    import shutil
    from pathlib import Path

    put_samples(settings, "Kiwi", 1)
    ingest.drain(settings, visibility_timeout=5)
    process = stream_process(settings, tmp_path)
    wait_for_features(settings, 1, process)
    log = Path(settings.table_root) / "features" / "_delta_log"
    shutil.move(log, log.with_name("_delta_log.moved"))
    log.write_text("not a folder")  # root may write anywhere: a file where the log was stops it
    put_samples(settings, "Mango", 1)
    ingest.drain(settings, visibility_timeout=5)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-3000:]
    assert "fruits: the stream failed" in stderr


def test_a_second_stream_on_the_same_tables_refuses_to_start(settings, tmp_path) -> None:
    """Two streams would both append the same images; the second one says who holds the tables."""
    import signal
    import subprocess
    import sys

    put_samples(settings, "Kiwi", 1)
    ingest.drain(settings, visibility_timeout=5)
    first = stream_process(settings, tmp_path)
    wait_for_features(settings, 1, first)
    second = subprocess.run(
        [sys.executable, "-m", "fruits", "stream"],
        env=fruits_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1 and "another stream holds the tables" in second.stderr, second.stderr[-2000:]
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130


def test_a_stream_that_lost_its_lease_writes_nothing(spark, settings, weights_blob) -> None:
    """The stream's lease ran out while it was frozen and another stream took it: the next micro-batch
    checks the lease right before its write, fails, and leaves both tables untouched."""
    import time

    from fruits.io.lease import Lease

    put_samples(settings, "Pear", 2)
    ingest.drain(settings, visibility_timeout=5)
    lease = Lease(settings, "stream", ttl=1.0).acquire()
    lease._stop.set()  # frozen: no heartbeat renews it
    time.sleep(1.2)
    taker = Lease(settings, "stream", ttl=30).acquire()
    try:
        query = stream.start(spark, settings, model=weights_blob, guard=lease.check)
        with pytest.raises(Exception, match="LeaseLost"):
            query.awaitTermination()
    finally:
        taker.release()
    assert table_rows(spark, settings, "SELECT count(*) FROM features") == [(0,)]
    assert table_rows(spark, settings, "SELECT count(*) FROM quarantine") == [(0,)]
