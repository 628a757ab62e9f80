"""What each micro-batch of the stream did, logged and, on AWS, published to CloudWatch.

One ``BatchMetrics`` per micro-batch, a processed batch with no new image included: infra/'s
stalled-stream alarm fires when uploads reach the queue but no batch commits
(``BatchesCommitted``). Published with ``PutMetricData`` to ``settings.metrics_namespace``,
dimension ``Bucket``; with no namespace, only the log line.

Example::

    publish(settings, BatchMetrics(batch_id=7, images=64, quarantined=1, featurize_s=2.1, write_s=0.6))

Limitations: a failed publish is logged and skipped: metrics never fail a micro-batch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..config import Settings
from ..io import aws

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)  # one line per micro-batch by default, also when the CLI logs warnings only


@dataclass(frozen=True)
class BatchMetrics:
    batch_id: int
    images: int  # new images in the batch (featurized or quarantined)
    quarantined: int
    featurize_s: float = 0.0
    write_s: float = 0.0

    def metric_data(self, bucket: str) -> list[dict[str, Any]]:
        dimensions = [{"Name": "Bucket", "Value": bucket}]
        values = (
            ("BatchesCommitted", 1, "Count"),
            ("ImagesFeaturized", self.images - self.quarantined, "Count"),
            ("ImagesQuarantined", self.quarantined, "Count"),
            ("FeaturizeSeconds", self.featurize_s, "Seconds"),
            ("WriteSeconds", self.write_s, "Seconds"),
        )
        return [
            {"MetricName": name, "Dimensions": dimensions, "Value": float(value), "Unit": unit}
            for name, value, unit in values
        ]


def publish(settings: Settings, metrics: BatchMetrics, client: Any = None) -> None:
    """Log the batch's metrics as one JSON line; put them to CloudWatch if a namespace is set."""
    log.info("micro-batch %s", json.dumps(asdict(metrics)))
    if not settings.metrics_namespace:
        return
    try:
        (client or aws.client("cloudwatch", settings)).put_metric_data(
            Namespace=settings.metrics_namespace, MetricData=metrics.metric_data(settings.bucket)
        )
    except (BotoCoreError, ClientError) as exc:
        log.warning("could not publish the metrics of batch %d to CloudWatch: %s", metrics.batch_id, exc)
