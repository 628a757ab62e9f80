"""The uploads ledger: a Delta table with one row per accepted upload event, appended by the Lambda.

Each invocation appends its accepted images as one Delta commit, written with delta-rs (no JVM,
no lock table: delta-rs commits to S3 with conditional writes, so concurrent invocations never
overwrite each other's commit, and it retries a commit that lost the race). The stream reads the
table as a Delta streaming source; ``fruits status`` looks keys up in it.

Writers: the Lambda appends; ``fruits maintain`` compacts (delta-rs too, data unchanged); nobody
else. The ledger is at-least-once: a batch that SQS delivers again appends its rows again, and the
stream's exactly-once check (by ``image_id``) keeps the tables exactly-once.

Example::

    ensure_ledger("s3://my-bucket/tables/uploads")
    append("s3://my-bucket/tables/uploads", images)

Limitations: one commit per invocation (a 100-event batch is one small file), so maintenance is to
compact the ledger (not built yet); invocations racing to create the ledger may leave a second
``CREATE TABLE`` commit of the same schema (delta-rs's; harmless, and appends racing it retry); the log keeps ``LOG_RETENTION`` of history, longer than any outage the stream
is promised to survive (a stream stopped longer must start over from the table).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence

import arro3.core as ac
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from .events import ImageEvent
from .exceptions import LedgerWriteError

_TIME = ac.DataType.timestamp("us", tz="UTC")

# The ledger's columns: the S3 event's facts the stream needs, typed.
SCHEMA = ac.Schema([
    ac.Field("image_id", ac.DataType.string(), nullable=False),  # see image_id()
    ac.Field("bucket", ac.DataType.string(), nullable=False),
    ac.Field("key", ac.DataType.string(), nullable=False),
    ac.Field("size", ac.DataType.int64()),
    ac.Field("etag", ac.DataType.string()),
    ac.Field("version_id", ac.DataType.string()),
    ac.Field("sequencer", ac.DataType.string()),
    ac.Field("event_time", _TIME),
    ac.Field("event_name", ac.DataType.string(), nullable=False),
    ac.Field("message_id", ac.DataType.string(), nullable=False),
    ac.Field("received_at", _TIME, nullable=False),  # when the Lambda appended it
])

# Delta's own settings of the table. The log is kept 30 days: a stream stopped for less resumes from
# its checkpoint's ledger version (the README's promise); checkpoints keep opening the log cheap.
LOG_RETENTION = "interval 30 days"
CONFIGURATION = {"delta.logRetentionDuration": LOG_RETENTION, "delta.checkpointInterval": "100"}


def image_id(bucket: str, key: str, etag: str | None, version_id: str | None) -> str:
    """An image is a key's content: sha256 of (bucket, key, etag). The version id counts only for an
    event without an etag (a retried identical PUT on a versioned bucket is the same image)."""
    version = "" if etag else (version_id or "")
    return hashlib.sha256("\0".join((bucket, key, version, etag or "")).encode("utf-8")).hexdigest()


def _micros(value: dt.datetime | str | None) -> int | None:
    """Microseconds since the epoch (arro3 builds timestamps from integers); an event time was
    checked against the contract's ISO 8601 pattern before."""
    if value is None:
        return None
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def rows(images: Sequence[ImageEvent], received_at: dt.datetime | None = None) -> ac.Table:
    """The ledger rows of ``images``, as an Arrow table of ``SCHEMA``."""
    received = received_at or dt.datetime.now(dt.UTC)
    columns = {
        "image_id": [image_id(i.bucket, i.key, i.etag, i.version_id) for i in images],
        "bucket": [i.bucket for i in images],
        "key": [i.key for i in images],
        "size": [i.size for i in images],
        "etag": [i.etag for i in images],
        "version_id": [i.version_id for i in images],
        "sequencer": [i.sequencer for i in images],
        "event_time": [_micros(i.event_time) for i in images],
        "event_name": [i.event_name for i in images],
        "message_id": [i.message_id for i in images],
        "received_at": [_micros(received)] * len(images),
    }
    arrays = [ac.Array(columns[f.name], ac.DataType.int64()).cast(f.type) if f.type == _TIME
              else ac.Array(columns[f.name], f.type) for f in SCHEMA]
    return ac.Table.from_arrays(arrays, schema=SCHEMA)


def ensure_ledger(uri: str, storage_options: Mapping[str, str] | None = None) -> DeltaTable:
    """The ledger at ``uri``, created empty if there is none (the Lambda before its first append,
    the stream before it starts: either may come first; a creation that lost the race is fine)."""
    options = dict(storage_options or {})
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        pass
    try:
        return DeltaTable.create(uri, SCHEMA, mode="error", name="uploads", configuration=CONFIGURATION,
                                 description="one row per accepted upload event (the ingest Lambda appends)",
                                 storage_options=options)
    except DeltaError:
        return DeltaTable(uri, storage_options=options)  # created by someone else meanwhile: it opens


def append(uri: str, images: Sequence[ImageEvent], storage_options: Mapping[str, str] | None = None,
           attempts: int = 5) -> None:
    """Append ``images`` as one commit; ``LedgerWriteError`` if that cannot be done. delta-rs
    retries an append that lost the race to another append; a commit that conflicts otherwise (the
    table's creation racing, a maintenance commit) is tried again from the new version, up to
    ``attempts`` times."""
    try:
        table = ensure_ledger(uri, storage_options)  # opened once: the write commits on top of it
        for attempt in range(attempts):
            try:
                write_deltalake(table, rows(images), mode="append")
                return
            except CommitFailedError:
                if attempt == attempts - 1:
                    raise
                table.update_incremental()
    except (DeltaError, OSError, ValueError) as exc:
        raise LedgerWriteError(
            f"could not append {len(images)} upload(s) to the ledger {uri}: {exc}. Check that the Lambda role may "
            "read and write that prefix (s3:GetObject, s3:PutObject, s3:ListBucket); the batch will be redelivered."
        ) from exc
