"""Stage 2 on one machine: the real Lambda handler (``lambda/fruits_ingest``) fed by the local
event source mapping, configured from the pipeline's settings as infra/ configures it on AWS.

The configuration and the S3 client are handed to the handler (``make_handler``); nothing is
written into the process's environment.

Example::

    stats = drain(settings)          # run the Lambda on the queue until it is empty
    print(stats.deleted, stats.failed)
"""

from __future__ import annotations

from collections.abc import Callable

from fruits_ingest.config import BATCH_SIZE, BATCHING_WINDOW_SECONDS, IngestConfig
from fruits_ingest.runner import EventSourceMapping, RunStats

from ..config import Settings
from ..io import aws, lake


def ingest_config(settings: Settings) -> IngestConfig:
    """What infra/ sets in the Lambda's environment, for these settings."""
    return IngestConfig(
        uploads_bucket=settings.bucket,
        accepted_prefixes=settings.upload_prefixes,
        ledger_uri=lake.delta_uri(settings.uploads_table),
        storage_options=lake.storage_options(settings),
    )


def event_source_mapping(
    settings: Settings,
    visibility_timeout: int = 30,
    batch_size: int = BATCH_SIZE,
    batching_window: float = BATCHING_WINDOW_SECONDS,
) -> EventSourceMapping:
    # Imported here: the handler module sets up powertools' logger, whose level the CLI chooses first.
    from fruits_ingest.handler import make_handler

    handler = make_handler(ingest_config(settings))
    return EventSourceMapping(
        aws.client("sqs", settings),
        aws.queue_url(settings),
        handler,
        batch_size=batch_size,
        batching_window=batching_window,
        visibility_timeout=visibility_timeout,
    )


def drain(
    settings: Settings, visibility_timeout: int = 30, on_progress: Callable[[RunStats], None] | None = None
) -> RunStats:
    """Run the Lambda on the queue until it is empty."""
    return event_source_mapping(settings, visibility_timeout).drain(on_progress=on_progress)


def backlog(settings: Settings, queue: str | None = None) -> int:
    """Messages in ``queue`` (default: the uploads queue), visible or in flight."""
    return aws.queue_depth(aws.client("sqs", settings), aws.queue_url(settings, queue))


def dead_letter_depth(settings: Settings) -> int:
    """Messages in the dead-letter queue, visible or in flight."""
    return backlog(settings, settings.dead_letter_queue)
