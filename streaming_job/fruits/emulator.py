"""Stage 1 on one machine: a local AWS (moto's server mode) with the bucket, queues and notification.

``provision`` creates, against whatever endpoint the settings name, what ``infra/`` creates on AWS:
the bucket, the event queue with its dead-letter queue, and the bucket notification that sends
``ObjectCreated`` events for image suffixes under the upload prefix to the queue.

Example::

    with LocalAWS() as endpoint:
        settings = Settings(endpoint_url=endpoint, table_root="/tmp/tables")
        provision(settings)

Limitations: the emulator keeps everything in memory; it is gone when the process exits.
"""

from __future__ import annotations

import json
import logging
import os
from types import TracebackType

from moto.server import ThreadedMotoServer

from . import aws
from .config import MAX_RECEIVE_COUNT, NOTIFIED_SUFFIXES, Settings

log = logging.getLogger(__name__)


# Credentials the emulator accepts; set only when no real ones are configured.
_FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class LocalAWS:
    """moto's ThreadedMotoServer on 127.0.0.1 (a free port unless one is given)."""

    def __init__(self, port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def __enter__(self) -> str:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        for name, value in _FAKE_CREDENTIALS.items():
            os.environ[name] = value
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        log.info("local AWS emulator on %s", self.endpoint_url)
        return self.endpoint_url

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.stop()


def provision(settings: Settings, visibility_timeout: int = 30) -> None:
    """Create the bucket, the queue and its DLQ, and the bucket notification (idempotent)."""
    s3 = aws.client("s3", settings)
    sqs = aws.client("sqs", settings)
    try:
        s3.create_bucket(
            Bucket=settings.bucket,
            CreateBucketConfiguration={"LocationConstraint": settings.region},
        )
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    dlq_url = sqs.create_queue(QueueName=settings.dead_letter_queue)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=settings.queue,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "Policy": json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "s3.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": queue_arn,
                            "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{settings.bucket}"}},
                        }
                    ],
                }
            )
        },
    )
    s3.put_bucket_notification_configuration(
        Bucket=settings.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": f"images{suffix}",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [
                                {"Name": "prefix", "Value": settings.upload_prefix},
                                {"Name": "suffix", "Value": suffix},
                            ]
                        }
                    },
                }
                for suffix in NOTIFIED_SUFFIXES
            ]
        },
    )
