"""Stage 2 on one machine: the real Lambda handler (``lambda/fruits_ingest``) fed by the local
event source mapping, configured from the pipeline's settings exactly as infra/ configures it."""

from __future__ import annotations

import os
from collections.abc import Callable

from fruits_ingest.config import BATCH_SIZE, BATCHING_WINDOW_SECONDS, IngestConfig
from fruits_ingest.runner import EventSourceMapping, RunStats

from . import aws
from .config import Settings


def lambda_environment(settings: Settings) -> dict[str, str]:
    env = IngestConfig(
        manifest_bucket=settings.bucket,
        manifest_prefix=settings.manifest_prefix,
        accepted_prefixes=(settings.upload_prefix,),
    ).as_env()
    env["AWS_DEFAULT_REGION"] = settings.region
    if settings.endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = settings.endpoint_url
    return env


def event_source_mapping(
    settings: Settings, visibility_timeout: int = 30, batch_size: int = BATCH_SIZE,
    batching_window: float = BATCHING_WINDOW_SECONDS,
) -> EventSourceMapping:
    os.environ.update(lambda_environment(settings))
    # Locally the Lambda shares the terminal: quiet unless asked (fruits -v sets these first).
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    from fruits_ingest.handler import handler  # after the environment is set: it configures itself from it

    return EventSourceMapping(
        aws.client("sqs", settings), aws.queue_url(settings), handler,
        batch_size=batch_size, batching_window=batching_window, visibility_timeout=visibility_timeout,
    )


def drain(
    settings: Settings, visibility_timeout: int = 30, on_progress: Callable[[RunStats], None] | None = None
) -> RunStats:
    """Run the Lambda on the queue until it is empty."""
    return event_source_mapping(settings, visibility_timeout).drain(on_progress=on_progress)


def dead_letter_depth(settings: Settings) -> int:
    sqs = aws.client("sqs", settings)
    attrs = sqs.get_queue_attributes(
        QueueUrl=aws.queue_url(settings, settings.dead_letter_queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
