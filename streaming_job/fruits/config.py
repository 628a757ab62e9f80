"""One settings object for every stage, read from ``FRUITS_*`` environment variables.

The same code runs on a laptop (``endpoint_url`` points at the local emulator) and on AWS
(``endpoint_url`` is None and boto3/S3A use the default credential chains). Every variable is
typed and checked when the settings are made (pydantic-settings): a bad value fails with a
``SettingsError`` that names the variable and says what it accepts.

| variable | setting | default |
| --- | --- | --- |
| ``FRUITS_ENDPOINT_URL`` | S3/SQS endpoint (the emulator); unset on AWS | unset |
| ``FRUITS_REGION`` | AWS region | ``eu-west-3`` |
| ``FRUITS_BUCKET`` | bucket of uploads and (by default) tables | ``fruits-images`` |
| ``FRUITS_REFERENCE_PREFIXES`` | where labelled reference photos are uploaded, comma-separated: a key's label is its folder there (``FRUITS_LABEL_RULE``); only these rows train the classifier | ``uploads/`` |
| ``FRUITS_APP_PREFIX`` | where the app uploads users' photos (``app/<user>/<id>.jpg``): never labelled, answered by the classifier | ``app/`` |
| ``FRUITS_QUEUE`` | SQS queue of S3 events (its DLQ is ``<queue>-dlq``) | ``fruits-uploads`` |
| ``FRUITS_TABLE_ROOT`` | root of the Delta tables and checkpoints (``s3a://`` or a path) | ``s3a://<bucket>/tables`` |
| ``FRUITS_WEIGHTS`` | ``imagenet``, a path to MobileNetV2 no-top weights, or a compiled ``.tflite`` model (``fruits model compile``; no TensorFlow needed) | ``imagenet`` |
| ``FRUITS_BATCH_SIZE`` | images handed to the model at a time (fetching and decoding run up to twice this far ahead) | ``64`` |
| ``FRUITS_FEATURIZE_PARTITIONS`` | partitions each micro-batch is featurized in; 0 = Spark's default parallelism | ``0`` |
| ``FRUITS_MODEL_THREADS`` | LiteRT threads per Python worker (one per task core); 0 = all cores | ``1`` |
| ``FRUITS_MAX_FILES_PER_TRIGGER`` | uploads-ledger files per micro-batch at most (one per Lambda invocation until compacted; each batch has ~1.5 s of fixed costs here) | ``256`` |
| ``FRUITS_MAX_IMAGE_BYTES`` | larger objects are quarantined unread | ``52428800`` |
| ``FRUITS_UPLOADS_LEDGER`` | the uploads ledger the Lambda appends to and the stream reads (``s3a://`` or a path) | ``<table root>/uploads`` |
| ``FRUITS_CHECKPOINT_LOCATION`` | the stream's checkpoint (``s3a://`` or a path) | ``<table root>/_checkpoints/featurizer`` |
| ``FRUITS_LABEL_RULE`` | ``folder``: first folder under the reference prefix; ``parent``: the file's own folder | ``folder`` |
| ``FRUITS_SPARK_MASTER`` | Spark master of a session the CLI starts | ``local[*, 4]`` |
| ``FRUITS_DRIVER_MEMORY`` | driver memory of a local-master session | ``4g`` |
| ``FRUITS_DELTA_SNAPSHOT_PARTITIONS`` | tasks Delta rebuilds a table's state with | ``2`` |
| ``FRUITS_SPARK_LOG_LEVEL`` | the JVM's log level | ``WARN`` |
| ``FRUITS_METRICS_NAMESPACE`` | CloudWatch namespace the stream publishes its per-micro-batch metrics to (infra/ sets ``Fruits``); unset: a log line only | unset |
| ``FRUITS_INDEX_CACHE`` | where a reader keeps its copy of the similarity index's segments when the tables are on S3 | ``~/.cache/fruits/index`` |
| ``FRUITS_JARS_DIR`` | where the Delta and S3A jars are cached | ``~/.cache/fruits/jars`` |
| ``FRUITS_QUERY_TIMEOUT_SECONDS`` | a DuckDB query (``fruits query --engine duckdb``, ``FeatureStore.sql``) is stopped after this long | ``60`` |
| ``FRUITS_QUERY_MEMORY_LIMIT`` | the memory a DuckDB query may use (DuckDB's ``memory_limit``: ``512MB``, ``2GB``...) | ``2GB`` |
| ``FRUITS_REFRESH_SECONDS`` | a reader (``FeatureStore``, ``fruits serve``) looks for a new classifier version and similarity index this often | ``10`` |
| ``FRUITS_API_MAX_BODY_BYTES`` | ``fruits serve`` refuses a larger photo (413) before reading it | ``20971520`` |
| ``FRUITS_POISON_ATTEMPTS`` | a micro-batch that failed on each of its images alone this many times (across restarts) quarantines them as ``poison`` | ``3`` |
| ``FRUITS_LEASE_SECONDS`` | how long a crashed stream's or refit's lease blocks the next one (renewed every third of it) | ``120`` |
| ``FRUITS_COMPACT_EVERY`` | the stream compacts its own tables' days that hold 10 small files or more after every this many micro-batches | ``50`` |
| ``FRUITS_PROGRESS_SECONDS`` | long commands (upload, ingest, ``stream --trigger availableNow``, refit, maintain) draw a progress bar on a terminal and, off one, print a progress line this often; 0 = neither | ``30`` |
| ``FRUITS_VACUUM_EVERY`` | the stream VACUUMs its own tables (LITE, 168 h retained) after every this many micro-batches | ``1000`` |

Example::

    settings = Settings.from_env(bucket="my-bucket")   # keyword overrides that are not None win
    settings.features_table                             # 's3a://my-bucket/tables/features'
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fruits_ingest.config import APP_PREFIX, UPLOAD_PREFIX, split_list

ENV_PREFIX = "FRUITS_"

# What VACUUM keeps of the files no table version needs any more (Delta's default retention).
# Readers of the Delta log (the incremental PCA statistics) whose last look is older than this
# read the whole table instead: the files the log names may be gone.
VACUUM_RETAIN_HOURS = 7 * 24


class SettingsError(ValueError):
    """A ``FRUITS_*`` variable (or an override) has a value the pipeline cannot use."""


class Settings(BaseSettings):
    # env_ignore_empty: ``FRUITS_REGION=`` means the default, as an unset variable does.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True)

    endpoint_url: str | None = None
    region: str = Field("eu-west-3", min_length=1)
    bucket: str = Field("fruits-images", min_length=3, max_length=63)
    reference_prefixes: Annotated[tuple[str, ...], NoDecode] = (UPLOAD_PREFIX,)
    app_prefix: str = APP_PREFIX
    queue: str = Field("fruits-uploads", min_length=1)
    table_root: str = ""
    weights: str = Field("imagenet", min_length=1)
    batch_size: int = Field(64, ge=1)
    featurize_partitions: int = Field(0, ge=0)
    model_threads: int = Field(1, ge=0)
    max_files_per_trigger: int = Field(256, ge=1)
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1)
    checkpoint_location: str = ""
    uploads_ledger: str = ""
    label_rule: Literal["folder", "parent"] = "folder"
    spark_master: str = "local[*, 4]"
    driver_memory: str = "4g"
    delta_snapshot_partitions: int = Field(2, ge=1)
    spark_log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"
    jars_dir: str | None = None
    index_cache: str = "~/.cache/fruits/index"
    metrics_namespace: str | None = None
    lease_seconds: float = Field(120.0, ge=3)
    poison_attempts: int = Field(3, ge=1)
    compact_every: int = Field(50, ge=1)
    vacuum_every: int = Field(1000, ge=1)
    query_timeout_seconds: float = Field(60.0, gt=0)
    query_memory_limit: str = Field("2GB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    refresh_seconds: float = Field(10.0, ge=0)
    progress_seconds: float = Field(30.0, ge=0)
    api_max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @field_validator("reference_prefixes", mode="before")
    @classmethod
    def _prefixes(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("reference_prefixes", "app_prefix")
    @classmethod
    def _folder(cls, value: Any) -> Any:
        for prefix in (value,) if isinstance(value, str) else value:
            if not prefix.endswith("/"):
                raise ValueError("a key prefix must end with '/' (for example 'uploads/')")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("an endpoint is an http:// or https:// URL (for example http://127.0.0.1:5000)")
        return value or None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: Any) -> Any:
        # A deployment that set the old variable would silently stop labelling its uploads.
        if os.environ.get("FRUITS_UPLOAD_PREFIX"):
            raise ValueError(
                "FRUITS_UPLOAD_PREFIX is gone: set FRUITS_REFERENCE_PREFIXES (labelled reference photos, "
                "comma-separated) and FRUITS_APP_PREFIX (the app's unlabelled photos) instead"
            )
        return values

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        # Locations derive from the table root, so one setting moves all of them.
        root = self.table_root or f"s3a://{self.bucket}/tables"
        object.__setattr__(self, "table_root", root.rstrip("/"))
        prefixes = self.upload_prefixes
        if (
            not self.reference_prefixes
            or any(a != b and b.startswith(a) for a in prefixes for b in prefixes)
            or len(set(prefixes)) < len(prefixes)
        ):
            raise ValueError(
                f"the reference prefixes {list(self.reference_prefixes)} and the app prefix "
                f"{self.app_prefix!r} must be at least one reference prefix, none inside another"
            )
        return self

    @property
    def upload_prefixes(self) -> tuple[str, ...]:
        """Every prefix uploads arrive under: the bucket's notification and the Lambda accept these."""
        return (*self.reference_prefixes, self.app_prefix)

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
    def classifiers_table(self) -> str:
        return f"{self.table_root}/classifiers"

    @property
    def pca_stats_table(self) -> str:
        return f"{self.table_root}/pca_stats"

    @property
    def uploads_table(self) -> str:
        """The uploads ledger (the Lambda appends; ``fruits_ingest.ledger``)."""
        return self.uploads_ledger or f"{self.table_root}/uploads"

    @property
    def pca_plots(self) -> str:
        return f"{self.table_root}/pca_plots"

    @property
    def checkpoint(self) -> str:
        return self.checkpoint_location or f"{self.table_root}/_checkpoints/featurizer"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}-dlq"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the ``FRUITS_*`` variables; keyword overrides that are not None win."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked like the original (no environment read)."""
        try:
            # Only the values that were given: derived ones (the table root) derive again.
            return type(self).model_validate({**self.model_dump(exclude_unset=True), **changes})
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    """One line per bad value, naming its variable: ``FRUITS_BATCH_SIZE='abc': Input should be ...``."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        if not name:  # a rule over several values: its message names them
            lines.append(error["msg"].removeprefix("Value error, "))
            continue
        variable = f"{ENV_PREFIX}{name.upper()}" if name in Settings.model_fields else name
        lines.append(f"{variable}={error.get('input')!r}: {error['msg']}")
    return "invalid settings: " + "; ".join(lines)
