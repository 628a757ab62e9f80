"""Stage 1 on one machine: a local AWS (moto's server mode) with the bucket, queues and notification.

``provision`` creates, against whatever endpoint the settings name, what ``infra/`` creates on AWS:
the bucket, the event queue with its dead-letter queue, and the bucket notification that sends
``ObjectCreated`` events under the upload prefixes to the queue (the Lambda picks the images out, by
``fruits_ingest.config.IMAGE_SUFFIXES``, in any case).

Clients reach it with the environment's AWS credentials if set, else moto's placeholders
(``io.aws.emulator_credentials``); the emulator changes no environment variable.

Example::

    with LocalAWS() as endpoint:
        settings = Settings(endpoint_url=endpoint, table_root="/tmp/tables")
        provision(settings)

Limitations: the emulator keeps everything in memory; it is gone when it stops. It needs the
``local`` extra (moto's server).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType

from fruits_ingest.config import MAX_RECEIVE_COUNT

from ..config import Settings
from ..io import aws

log = logging.getLogger(__name__)


class LocalAWS:
    """moto's server on 127.0.0.1 (a free port unless one is given), in a process of its own.

    Its own process, not a thread of this one: some delta-rs calls (``DeltaTable.history``) hold
    the GIL while they wait for the HTTP answer, which an in-process server could then never send.
    """

    def __init__(self, port: int = 0, start_timeout: float = 60.0) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self.endpoint_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (the server's log, kept for its lifetime)

    def __enter__(self) -> str:
        if importlib.util.find_spec("moto") is None:
            raise RuntimeError("the local AWS emulator needs moto: pip install 'fruits-pipeline[local]' (make does)")
        if self.port and _listening(self.port):
            raise RuntimeError(f"port {self.port} is taken: stop what listens there, or choose another --port")
        port = self.port or _free_port()
        # moto logs every request on stderr: kept in a file, shown only if the server fails to start.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.endpoint_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.start_timeout
        while not _listening(port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                output = self._log.read().decode(errors="replace")[-2000:]
                self.__exit__(None, None, None)
                raise RuntimeError(f"the local AWS emulator did not start on port {port}:\n{output}")
            time.sleep(0.1)
        log.info("local AWS emulator on %s (pid %d)", self.endpoint_url, self._process.pid)
        return self.endpoint_url

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def provision(settings: Settings, visibility_timeout: int = 30) -> None:
    """Create the bucket, the queue and its DLQ, and the bucket notification (idempotent)."""
    s3 = aws.client("s3", settings)
    sqs = aws.client("sqs", settings)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(
            Bucket=settings.bucket,
            CreateBucketConfiguration={"LocationConstraint": settings.region},
        )
    # Versioned, as infra/ makes it on AWS: events carry version ids, overwrites keep old versions.
    s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})
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
                    "Id": f"uploads-{i}",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
                for i, prefix in enumerate(settings.upload_prefixes)
            ]
        },
    )
