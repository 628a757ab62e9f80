"""The ingest Lambda's entry point: ``fruits_ingest.handler.handler``.

Invoked by an SQS event source mapping with ``ReportBatchItemFailures``. Each record is parsed on
its own (a malformed message fails only itself); the accepted images of the whole batch are then
appended to the uploads ledger as one Delta commit (``ledger``). If that fails, every record is
reported failed, so nothing is acknowledged that was not recorded. The invocation whose commit is
a multiple of ``COMPACT_EVERY`` then bin-packs the small files of its days (``ledger.compact``), so
that an append's cost stays flat through the day.

``handler`` configures itself from its environment (``IngestConfig.from_env``) on each call; a
local runner passes its configuration instead (with delta-rs's options for the emulator), through
``make_handler``, so that nothing is written into the process's environment.

Example (what the event source mapping does)::

    from fruits_ingest.handler import handler
    response = handler({"Records": [sqs_record, ...]}, context)
    # {"batchItemFailures": [{"itemIdentifier": "<messageId of a bad record>"}]}

    local = make_handler(IngestConfig("my-bucket"))   # the same, configured explicitly
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from deltalake.exceptions import DeltaError

from .config import METRICS_NAMESPACE, IngestConfig
from .events import ImageEvent, parse_message
from .exceptions import LedgerWriteError
from .ledger import COMPACT_EVERY, append, compact

SERVICE = "fruits-ingest"
NAMESPACE = METRICS_NAMESPACE

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
# A batch whose every record fails is a partial response like any other (all of them listed).
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

Handler = Callable[[dict[str, Any], Any], PartialItemFailureResponse]


def _all_failed(event: dict[str, Any]) -> PartialItemFailureResponse:
    return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event.get("Records", [])]}


def _record_skips(skipped: Counter[str]) -> None:
    if is_metrics_disabled():  # single_metric prints regardless (local runs switch metrics off)
        return
    for reason, count in skipped.items():
        with single_metric(name="RecordsSkipped", unit=MetricUnit.Count, value=count, namespace=NAMESPACE) as metric:
            metric.add_dimension(name="reason", value=reason)


def _compact(config: IngestConfig, images: list[ImageEvent]) -> None:
    """The ledger's small files, bin-packed by the invocation whose commit's turn it is. The batch is
    recorded already: a failure (a conflict with ``fruits maintain``, a timeout) is only logged, and
    the next turn compacts what this one left."""
    try:
        replaced = compact(config.ledger_uri, images, config.storage_options)
    except (DeltaError, OSError) as exc:
        logger.warning("the ledger compaction failed; the next one will do it", extra={"error": str(exc)})
        return
    logger.info("ledger compacted", extra={"files_replaced": replaced})


def handle(event: dict[str, Any], context: Any, config: IngestConfig) -> PartialItemFailureResponse:
    """One invocation: parse every record, append the accepted images to the ledger."""
    # Powertools keeps metrics it did not print (POWERTOOLS_METRICS_DISABLED, local runs) for the
    # next invocation; start each one clean.
    metrics.clear_metrics()
    images: list[ImageEvent] = []
    skipped: Counter[str] = Counter()

    def record_handler(record: SQSRecord) -> None:
        logger.set_correlation_id(record.message_id)
        parsed = parse_message(record.body, record.message_id, config)
        images.extend(parsed.images)
        skipped.update(parsed.skipped)
        for image in parsed.images:
            logger.debug("accepted", extra={"bucket": image.bucket, "key": image.key})
        if parsed.invalid:
            logger.warning(
                "invalid fields: records skipped or fields recorded as null", extra={"invalid": parsed.invalid}
            )
        if parsed.skipped:
            logger.info("skipped", extra={"skipped": dict(parsed.skipped)})

    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    logger.set_correlation_id(None)
    failed = len(response["batchItemFailures"])
    if failed:
        logger.warning("malformed records", extra={"failed": failed, "records": len(event.get("Records", []))})

    if images:
        try:
            version = append(config.ledger_uri, images, config.storage_options)
        except LedgerWriteError:
            logger.exception("the ledger append failed; reporting the whole batch failed")
            metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=len(event["Records"]))
            return _all_failed(event)
        logger.info("batch recorded", extra={"ledger": config.ledger_uri, "images": len(images), "version": version})
        if version % COMPACT_EVERY == 0:
            _compact(config, images)

    metrics.add_metric(name="ImagesAccepted", unit=MetricUnit.Count, value=len(images))
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=failed)
    _record_skips(skipped)
    return response


def make_handler(config: IngestConfig | None = None) -> Handler:
    """A Lambda handler with powertools' logging and metrics around ``handle``; without arguments,
    configured from the environment at each call, as on AWS."""

    @metrics.log_metrics
    @logger.inject_lambda_context
    def lambda_handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
        return handle(event, context, config or IngestConfig.from_env())

    return lambda_handler


handler = make_handler()
