"""Configuration of the ingest Lambda, read from environment variables.

| variable | meaning | default |
| --- | --- | --- |
| ``UPLOADS_BUCKET`` | the bucket the app uploads to (and where the ledger is, by default) | required |
| ``LEDGER_URI`` | the uploads ledger, a Delta table (``s3://`` URI or a local path) | ``s3://<uploads bucket>/tables/uploads`` |
| ``ACCEPTED_BUCKETS`` | comma-separated buckets whose uploads to accept | the uploads bucket |
| ``ACCEPTED_PREFIXES`` | comma-separated key prefixes of uploads to accept | ``uploads/,app/`` |
| ``IMAGE_SUFFIXES`` | comma-separated file suffixes to accept (case-insensitive) | ``.jpg,.jpeg,.png,.webp,.gif,.bmp,.tif,.tiff`` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .exceptions import ConfigurationError

# How the SQS event source mapping feeds the Lambda, here and on AWS (infra/ deploys these): up to
# BATCH_SIZE messages per invocation, gathered for at most BATCHING_WINDOW_SECONDS after the first.
# One invocation appends one ledger commit, and the stream pays a fixed cost per file it reads (about
# 35 ms on one machine), so a backlog is worth batching: 2,100 uploads as 21 commits instead of
# 210 featurized 1.4x faster. At a trickle, the window adds up to a second of latency. AWS needs a
# window of at least 1 s for batches over 10.
BATCH_SIZE = 100
BATCHING_WINDOW_SECONDS = 1
MAX_RECEIVE_COUNT = 3  # deliveries of an event before SQS moves it to the dead-letter queue
# At most this many concurrent invocations from the queue (the event source's MaximumConcurrency):
# a backlog of millions of uploads drains at 5 x 100 events per second or so, never exhausting
# the account's Lambda concurrency that other functions share.
MAX_CONCURRENCY = 5

# The CloudWatch namespace of the pipeline's metrics: the Lambda's and the stream's.
METRICS_NAMESPACE = "Fruits"

# Where labelled reference photos are uploaded (uploads/<Label>/...), by default (the pipeline's
# settings and infra/ too).
UPLOAD_PREFIX = "uploads/"
# Where the app uploads its users' photos (app/<user>/<id>.jpg), by default: never labelled.
APP_PREFIX = "app/"
# The uploads ledger's place under a bucket, beside the jobs' tables (their default root is tables/).
LEDGER_TABLE = "tables/uploads"

# The one list of image suffixes, compared case-insensitively (phones write .JPG, .Jpeg, ...): the
# Lambda accepts these, the demo uploads these, and the featurizer decodes all of them with Pillow.
# The bucket notifications filter on the upload prefixes only, so no spelling is missed before here.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

# S3 object keys are at most 1,024 bytes (UTF-8): a longer one cannot be a real upload.
MAX_KEY_BYTES = 1024
# The largest object S3 stores (50 TB); a larger announced size is a forged event.
MAX_OBJECT_BYTES = 50 * 10**12

# The retry policy of every boto3 client of the pipeline (the Lambda's, the jobs', the CLI's).
RETRIES = {"max_attempts": 5, "mode": "standard"}


def is_image_key(key: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> bool:
    """Whether ``key`` names an image, by its suffix in any case."""
    return key.lower().endswith(suffixes)


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated setting's parts, stripped, empty ones left out."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class IngestConfig:
    uploads_bucket: str
    accepted_prefixes: tuple[str, ...] = (UPLOAD_PREFIX, APP_PREFIX)
    image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    # Events for other buckets are skipped (the jobs may not read them); empty means the uploads bucket.
    accepted_buckets: tuple[str, ...] = ()
    ledger_uri: str = ""  # empty: LEDGER_TABLE under the uploads bucket, where the jobs' tables are
    # delta-rs's options for the ledger (an emulator's endpoint); on AWS, the Lambda's own credentials.
    storage_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.uploads_bucket:
            raise ConfigurationError("UPLOADS_BUCKET is empty: set it to the bucket the app uploads to.")
        if not self.accepted_buckets:
            object.__setattr__(self, "accepted_buckets", (self.uploads_bucket,))
        if not self.ledger_uri:
            object.__setattr__(self, "ledger_uri", f"s3://{self.uploads_bucket}/{LEDGER_TABLE}")
        object.__setattr__(self, "image_suffixes", tuple(s.lower() for s in self.image_suffixes))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngestConfig:
        env = os.environ if environ is None else environ
        if "UPLOADS_BUCKET" not in env:
            raise ConfigurationError(
                "UPLOADS_BUCKET is not set: give the Lambda the name of the bucket the app uploads to."
            )
        return cls(
            uploads_bucket=env["UPLOADS_BUCKET"],
            accepted_prefixes=split_list(env.get("ACCEPTED_PREFIXES", f"{UPLOAD_PREFIX},{APP_PREFIX}")),
            image_suffixes=split_list(env.get("IMAGE_SUFFIXES", ",".join(IMAGE_SUFFIXES))),
            accepted_buckets=split_list(env.get("ACCEPTED_BUCKETS", "")),
            ledger_uri=env.get("LEDGER_URI", ""),
        )

    def as_env(self) -> dict[str, str]:
        """The environment variables that reproduce this configuration (for deployment and local runs)."""
        return {
            "UPLOADS_BUCKET": self.uploads_bucket,
            "ACCEPTED_PREFIXES": ",".join(self.accepted_prefixes),
            "IMAGE_SUFFIXES": ",".join(self.image_suffixes),
            "ACCEPTED_BUCKETS": ",".join(self.accepted_buckets),
            "LEDGER_URI": self.ledger_uri,
        }
