"""A local stand-in for the SQS event source mapping, for the embedded default and the tests.

It does what the mapping does for a Lambda with ``ReportBatchItemFailures``: long-polls the queue,
gathers up to ``batch_size`` messages (for at most ``batching_window`` seconds after the first one
arrives; SQS returns at most 10 per receive), hands them to the handler as one Lambda event,
deletes only the messages
the handler did not report as failed, and leaves the failed ones to reappear after the visibility
timeout (so that, after the queue's maxReceiveCount, SQS moves them to the dead-letter queue).
A handler that raises fails the whole batch, as in Lambda.

Example::

    sqs = boto3.client("sqs", endpoint_url="http://127.0.0.1:5000")
    stats = EventSourceMapping(sqs, queue_url, handler).drain()
    print(stats.deleted, stats.failed)

Limitations: one poller (the real mapping scales pollers with the backlog); no 6 MB payload limit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import BATCH_SIZE, BATCHING_WINDOW_SECONDS

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass
class LocalContext:
    """The attributes of a Lambda context object that powertools reads."""

    function_name: str = "fruits-ingest-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class RunStats:
    invocations: int = 0
    received: int = 0
    deleted: int = 0
    failed: int = 0


def to_lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS message as ``ReceiveMessage`` returns it, in the shape Lambda delivers it."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def queue_depth(sqs_client: Any, queue_url: str) -> int:
    """Messages in a queue, visible or in flight (SQS's approximate counts): the backlog of the
    event queue, or what waits in the dead-letter queue."""
    attrs = sqs_client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


class EventSourceMapping:
    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        handler: Handler,
        *,
        batch_size: int = BATCH_SIZE,
        batching_window: float = BATCHING_WINDOW_SECONDS,
        wait_seconds: int = 1,
        visibility_timeout: int = 30,
    ) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10,000 (the SQS event source mapping's limit)")
        if batch_size > 10 and batching_window < 1:
            raise ValueError("a batch_size over 10 needs a batching_window of at least 1 second, as on AWS")
        if visibility_timeout <= batching_window:
            # Else a message could come back while its batch is still being gathered.
            raise ValueError("visibility_timeout must be longer than batching_window")
        self.sqs = sqs_client
        self.queue_url = queue_url
        self.handler = handler
        self.batch_size = batch_size
        self.batching_window = batching_window
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        attrs = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        self.queue_arn = attrs["Attributes"]["QueueArn"]
        self.region = self.queue_arn.split(":")[3]

    def _receive(self, wait_seconds: int, limit: int) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(10, limit),
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return response.get("Messages", [])

    def gather(self) -> list[dict[str, Any]]:
        """One batch: a long poll for the first messages, then more until ``batch_size`` or the
        batching window since the first arrival is over."""
        messages = self._receive(self.wait_seconds, self.batch_size)
        closes = time.monotonic() + self.batching_window
        while messages and len(messages) < self.batch_size and time.monotonic() < closes:
            more = self._receive(0, self.batch_size - len(messages))
            messages += more
            if not more:
                time.sleep(min(0.05, max(0.0, closes - time.monotonic())))
        return messages

    def poll_once(self, stats: RunStats) -> int:
        """One batch and one invocation; returns how many messages were received."""
        messages = self.gather()
        if not messages:
            return 0
        event = {"Records": [to_lambda_record(m, self.queue_arn, self.region) for m in messages]}
        try:
            result = self.handler(event, LocalContext()) or {}
            failed = {item["itemIdentifier"] for item in result.get("batchItemFailures", [])}
        except Exception:  # noqa: BLE001 (as in Lambda: an unhandled error fails the whole batch)
            failed = {m["MessageId"] for m in messages}
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):  # DeleteMessageBatch takes 10 entries at most
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[start : start + 10])
                ],
            )
        stats.invocations += 1
        stats.received += len(messages)
        stats.deleted += len(done)
        stats.failed += len(messages) - len(done)
        return len(messages)

    def backlog(self) -> int:
        """Visible plus in-flight messages."""
        return queue_depth(self.sqs, self.queue_url)

    def drain(self, timeout_seconds: float = 600.0, on_progress: Callable[[RunStats], None] | None = None) -> RunStats:
        """Poll until the queue holds no visible or in-flight message (failed messages are retried
        until they succeed or SQS moves them to the dead-letter queue)."""
        stats = RunStats()
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.poll_once(stats) == 0 and self.backlog() == 0:
                return stats
            if on_progress is not None:
                on_progress(stats)
        raise TimeoutError(
            f"queue {self.queue_url} not drained after {timeout_seconds:.0f}s ({stats}); "
            "is a message failing without a dead-letter queue configured?"
        )
