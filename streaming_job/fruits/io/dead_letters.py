"""Replaying dead letters: upload events that failed their deliveries go back to the event queue.

An event reaches the dead-letter queue (``<queue>-dlq``) after ``MAX_RECEIVE_COUNT`` failed
deliveries to the ingest Lambda (the ``dead-letters`` alarm fires). Once the cause is fixed (a
Lambda bug, a permission, a full bucket), ``fruits replay-dlq`` moves them back; the Lambda then
handles them like new events, and the stream's exactly-once check keeps any that did land once
from landing twice.

Example::

    done = replay(settings, limit=100)               # list of Replayed, each sent then deleted
    [r for r in done if r.error]                     # any that could not be moved stay where they were
    seen = replay(settings, limit=10, dry_run=True)  # only looks; the messages stay

Whatever a message holds (a forged event, a body that is not JSON, nested envelopes), it is
replayed as it is: the Lambda decides again what it is worth. A message that cannot be sent or
deleted is reported with the error and left in the dead-letter queue; the replay goes on.

It uses plain receive / send / delete, on AWS and on the emulator alike (moto has no
``StartMessageMoveTask``), so ``--max`` can bound a replay. Each message is sent to the event queue
before it is deleted from the dead-letter queue: a crash in between replays it twice, which the
Lambda and the stream absorb; never zero times. Limitations: one process at a time (two replays
would each move what they receive, which is harmless but confusing); message attributes other than
the body are not carried (S3 events have none).
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from fruits_ingest.events import announced

from ..config import Settings
from . import aws


@dataclass(frozen=True)
class Replayed:
    message_id: str
    receive_count: int
    summary: str  # the S3 keys the event names, or the start of the body (a test event, a bad message)
    error: str | None = None  # why it was left in the dead-letter queue (None: moved, or listed by a dry run)


def _summary(body: str) -> str:
    """The keys the event names, parsed as the Lambda parses it; for any message the Lambda would
    not accept, why, and the start of its body."""
    try:
        return ", ".join(image.key for image in announced(body)) or "s3:TestEvent"
    except Exception as exc:  # noqa: BLE001 (a dead letter may hold anything; a summary never fails)
        return f"({type(exc).__name__}: {str(exc)[:120]}) {body[:120]!r}"


def replay(settings: Settings, limit: int | None = None, dry_run: bool = False) -> list[Replayed]:
    """Move up to ``limit`` (all if None) dead-lettered messages back to the event queue; with
    ``dry_run``, only list them (and make them visible again at once)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--max must be at least 1, not {limit}")
    sqs = aws.client("sqs", settings)
    source, target = aws.queue_url(settings, settings.dead_letter_queue), aws.queue_url(settings)
    done: list[Replayed] = []
    seen: set[str] = set()
    looked_at: list[str] = []  # receipt handles of a dry run's messages
    try:
        while limit is None or len(done) < limit:
            want = 10 if limit is None else min(10, limit - len(done))
            messages = sqs.receive_message(
                QueueUrl=source,
                MaxNumberOfMessages=want,
                WaitTimeSeconds=1,
                VisibilityTimeout=30,
                AttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            fresh = [m for m in messages if m["MessageId"] not in seen]
            if not fresh:
                break
            for message in fresh:
                seen.add(message["MessageId"])
                error = None
                if dry_run:
                    looked_at.append(message["ReceiptHandle"])
                else:
                    sent = False
                    try:
                        sqs.send_message(QueueUrl=target, MessageBody=message["Body"])
                        sent = True
                        sqs.delete_message(QueueUrl=source, ReceiptHandle=message["ReceiptHandle"])
                    except (BotoCoreError, ClientError) as exc:  # left in place: visible again after 30 s
                        # Sent but not deleted: it will be replayed twice, which the pipeline absorbs.
                        error = f"{'sent, but not deleted: ' if sent else ''}{type(exc).__name__}: {exc}"
                done.append(
                    Replayed(
                        message["MessageId"],
                        int(message["Attributes"]["ApproximateReceiveCount"]),
                        _summary(message["Body"]),
                        error,
                    )
                )
    finally:  # a dry run leaves nothing hidden, even when it fails half-way
        for handle in looked_at:
            sqs.change_message_visibility(QueueUrl=source, ReceiptHandle=handle, VisibilityTimeout=0)
    return done
