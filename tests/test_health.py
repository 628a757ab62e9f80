"""`fruits health`: the pipeline at a glance, through the real CLI over the emulator and the tables
the real Lambda handler and stream wrote. It reads only, and exits 1 when a threshold is crossed."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE
from fruits import stream
from fruits.cli import main
from fruits.io import aws, lake
from fruits.local import ingest, upload

pytestmark = pytest.mark.spark


def health(settings, capsys, *flags: str) -> tuple[int, str]:  # noqa: ANN001
    with pytest.raises(SystemExit) as done:
        main(
            [
                "health",
                "--endpoint-url",
                settings.endpoint_url,
                "--bucket",
                settings.bucket,
                "--queue",
                settings.queue,
                "--table-root",
                settings.table_root,
                *flags,
            ]
        )
    return int(done.value.code or 0), capsys.readouterr().out


def versions(settings) -> dict[str, int]:  # noqa: ANN001
    return {
        name: lake.delta_table(settings, location).version()
        for name, location in (("features", settings.features_table), ("uploads", settings.uploads_table))
    }


def test_waiting_uploads_a_stale_stream_and_dead_letters_are_problems(spark, settings, capsys) -> None:
    stream.start(spark, settings).awaitTermination()  # the tables, empty: the stream has run once
    images = upload.sample_images(SAMPLE, per_class=1)[:6]
    upload.upload_images(settings, images)
    assert ingest.drain(settings, visibility_timeout=5).failed == 0

    # Recorded by the Lambda, not read by the stream, whose last commit is older than --stale-after: stale.
    code, out = health(settings, capsys, "--stale-after", "0")
    assert code == 1 and "6 upload(s) wait in the ledger and the stream last committed" in out, out
    before = versions(settings)
    code, out = health(settings, capsys, "--json")  # within the default 600 s: waiting, not yet stale
    report = json.loads(out)
    assert code == 0 and report["pending_uploads"] == 6 and report["queue_depth"] == 0, report
    assert versions(settings) == before  # it reads only

    # The stream catches up: nothing waits, the rows and their latency are there.
    stream.start(spark, settings).awaitTermination()
    code, out = health(settings, capsys, "--json")
    report = json.loads(out)
    assert code == 0 and report["problems"] == [] and report["pending_uploads"] == 0, report
    assert report["rows"] == {"last_hour": 6, "last_day": 6} and report["latency_s"]["rows"] == 6
    assert 0 < report["latency_s"]["p50"] <= report["latency_s"]["p95"] < 600
    assert report["newest_commit_age_s"] < 600 and report["leases"]["stream"] is None  # released at the end
    assert report["notes"] == [], report["notes"]

    # A dead letter is a problem whatever else is well.
    sqs = aws.client("sqs", settings)
    sqs.send_message(QueueUrl=aws.queue_url(settings, settings.dead_letter_queue), MessageBody="{}")
    code, out = health(settings, capsys)
    assert code == 1 and "1 upload event(s) in the dead-letter queue" in out and "PROBLEM" in out, out
    assert "6 last hour" in out and "p50" in out, out
