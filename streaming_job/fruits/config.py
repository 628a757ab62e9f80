"""One settings object for every stage, read from ``FRUITS_*`` environment variables.

The same code runs on a laptop (``endpoint_url`` points at the local emulator) and on AWS
(``endpoint_url`` is None and boto3/S3A use the default credential chains).

| variable | setting | default |
| --- | --- | --- |
| ``FRUITS_ENDPOINT_URL`` | S3/SQS endpoint (the emulator); unset on AWS | unset |
| ``FRUITS_REGION`` | AWS region | ``eu-west-3`` |
| ``FRUITS_BUCKET`` | bucket of uploads, manifests and (by default) tables | ``fruits-images`` |
| ``FRUITS_UPLOAD_PREFIX`` | where the app uploads images | ``uploads/`` |
| ``FRUITS_MANIFEST_PREFIX`` | where the Lambda writes manifests | ``manifests/`` |
| ``FRUITS_QUEUE`` | SQS queue of S3 events (its DLQ is ``<queue>-dlq``) | ``fruits-uploads`` |
| ``FRUITS_TABLE_ROOT`` | root of the Delta tables and checkpoints (``s3a://`` or a path) | ``s3a://<bucket>/tables`` |
| ``FRUITS_WEIGHTS`` | ``imagenet`` or a path to MobileNetV2 no-top weights | ``imagenet`` |
| ``FRUITS_BATCH_SIZE`` | images handed to the model at a time (fetching and decoding run up to twice this far ahead) | ``64`` |
| ``FRUITS_FEATURIZE_PARTITIONS`` | partitions each micro-batch is featurized in; 0 = Spark's default parallelism | ``0`` |
| ``FRUITS_MODEL_THREADS`` | LiteRT threads per Python worker (one per task core); 0 = all cores | ``1`` |
| ``FRUITS_MAX_FILES_PER_TRIGGER`` | manifests per micro-batch at most (a backlog is caught up in batches this big; each batch has ~1.5 s of fixed costs here) | ``256`` |
| ``FRUITS_MAX_IMAGE_BYTES`` | larger objects are quarantined unread | ``52428800`` |
| ``FRUITS_CHECKPOINT_LOCATION`` | the stream's checkpoint (``s3a://`` or a path) | ``<table root>/_checkpoints/featurizer`` |
| ``FRUITS_LABEL_RULE`` | ``folder``: first folder under the upload prefix; ``parent``: the file's own folder | ``folder`` |

The Spark session (``fruits.spark``) reads a few more: ``FRUITS_SPARK_MASTER`` (``local[*, 4]``),
``FRUITS_DRIVER_MEMORY`` (``4g``, local masters only), ``FRUITS_DELTA_SNAPSHOT_PARTITIONS`` (``2``),
``FRUITS_LISTING_TASKS`` (``8``) and ``FRUITS_SPARK_LOG_LEVEL`` (``WARN``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

IMAGE_SIZE = 224  # MobileNetV2's native input; the pipeline resizes every image to it

# What the S3 -> SQS notification sends, on the emulator (emulator.provision) and on AWS (infra/).
# S3 suffix filters are case-sensitive; phones upload both cases.
NOTIFIED_SUFFIXES = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".webp", ".WEBP", ".gif", ".GIF")
MAX_RECEIVE_COUNT = 3  # deliveries of an event before it goes to the dead-letter queue
# What VACUUM keeps of the files no table version needs any more (Delta's default retention).
# Readers of the Delta log (the incremental PCA statistics, the stream's known ids) whose last
# look is older than this read the whole table instead: the files the log names may be gone.
VACUUM_RETAIN_HOURS = 7 * 24


@dataclass(frozen=True)
class Settings:
    endpoint_url: str | None = None
    region: str = "eu-west-3"
    bucket: str = "fruits-images"
    upload_prefix: str = "uploads/"
    manifest_prefix: str = "manifests/"
    queue: str = "fruits-uploads"
    table_root: str = ""
    weights: str = "imagenet"
    batch_size: int = 64
    featurize_partitions: int = 0
    model_threads: int = 1
    max_files_per_trigger: int = 256
    max_image_bytes: int = 50 * 1024 * 1024
    checkpoint_location: str = ""
    label_rule: str = "folder"

    def __post_init__(self) -> None:
        if not self.table_root:
            object.__setattr__(self, "table_root", f"s3a://{self.bucket}/tables")
        object.__setattr__(self, "table_root", self.table_root.rstrip("/"))
        if self.label_rule not in ("folder", "parent"):
            raise ValueError(f"label_rule must be 'folder' or 'parent', got {self.label_rule!r}")

    # Locations derived from the table root, so one setting moves all of them.
    @property
    def features_table(self) -> str:
        return f"{self.table_root}/features"

    @property
    def quarantine_table(self) -> str:
        return f"{self.table_root}/quarantine"

    @property
    def pca_models_table(self) -> str:
        return f"{self.table_root}/pca_models"

    @property
    def pca_stats_table(self) -> str:
        return f"{self.table_root}/pca_stats"

    @property
    def pca_plots(self) -> str:
        return f"{self.table_root}/pca_plots"

    @property
    def checkpoint(self) -> str:
        return self.checkpoint_location or f"{self.table_root}/_checkpoints/featurizer"

    @property
    def manifests_uri(self) -> str:
        return f"s3a://{self.bucket}/{self.manifest_prefix}"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}-dlq"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``FRUITS_<FIELD>`` variables; keyword overrides that are not None win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"FRUITS_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = int(raw) if f.type == "int" else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)
