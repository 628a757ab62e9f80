"""The uploads ledger: a Delta table with one row per accepted upload event, appended by the Lambda.

Each invocation appends its accepted images as one Delta commit, written with delta-rs (no JVM,
no lock table: delta-rs commits to S3 with conditional writes, so concurrent invocations never
overwrite each other's commit, and it retries a commit that lost the race). The stream reads the
table as a Delta streaming source; ``fruits status`` looks keys up in it.

The table is partitioned by the event's UTC date (``event_date``). Maintenance (``maintain``)
bin-packs today's small files and sorts each earlier day that received uploads since it last ran
by ``key_hash`` (a number from the key: delta-rs's z-order orders strings by a short prefix only,
and keys share long ones). A look-up by key then reads, of a sorted day, only the file whose
``key_hash`` range holds it; of today, every file.

Writers: the Lambda appends, and bin-packs its small files (``compact``); ``fruits maintain``
compacts, sorts and deletes (``maintain``). Both are delta-rs; compaction and sorting are commits
that change no data, which the stream's Delta source skips. Nobody else. Spark never
writes it: its S3 log store and delta-rs's conditional puts do not see each other's commits. The
ledger is at-least-once: a batch that SQS delivers again appends its rows again, and the stream's
exactly-once check (by ``image_id``) keeps the tables exactly-once.

Example::

    ensure_ledger("s3://my-bucket/tables/uploads")
    append("s3://my-bucket/tables/uploads", images)

Limitations: one commit per invocation (a 100-event batch is one small file, or two across
midnight), bin-packed every ``COMPACT_EVERY`` commits (``compact``, by the invocation whose turn it
is); opening the table (each append, the stream's start) reads the add actions of every live file
and, for ``REMOVAL_RECORDS`` (10 minutes), a removal record per file replaced, so the Lambda's
batches should stay large (``BATCH_SIZE``);
invocations racing to create the ledger may leave a second ``CREATE TABLE`` commit of the same
schema (delta-rs's; harmless, and appends racing it retry); the log and the files maintenance
replaced are kept ``RETENTION`` (30 days) after they were written, longer than any outage the
stream is promised to survive: a stream stopped longer must start over from the table. A ledger
created before ``REMOVAL_RECORDS`` keeps its 30 days of removal records (nothing alters it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import arro3.core as ac
from deltalake import DeltaTable, PostCommitHookProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from .events import ImageEvent
from .exceptions import LedgerLayoutError, LedgerWriteError

_TIME = ac.DataType.timestamp("us", tz="UTC")

# The ledger's columns: the S3 event's facts the stream needs, typed.
SCHEMA = ac.Schema(
    [
        ac.Field("image_id", ac.DataType.string(), nullable=False),  # see image_id()
        ac.Field("bucket", ac.DataType.string(), nullable=False),
        ac.Field("key", ac.DataType.string(), nullable=False),
        ac.Field("key_hash", ac.DataType.int64(), nullable=False),  # see key_hash(); the days' sort order
        ac.Field("size", ac.DataType.int64()),
        ac.Field("etag", ac.DataType.string()),
        ac.Field("version_id", ac.DataType.string()),
        ac.Field("sequencer", ac.DataType.string()),
        ac.Field("event_time", _TIME),
        ac.Field("event_name", ac.DataType.string(), nullable=False),
        ac.Field("message_id", ac.DataType.string(), nullable=False),
        ac.Field("received_at", _TIME, nullable=False),  # when the Lambda appended it
        # The partition: event_time's UTC date (received_at's if the event had none). A redelivered or
        # replayed event repeats its event time, so it lands in its first delivery's day (if it has one).
        ac.Field("event_date", ac.DataType.date32(), nullable=False),
    ]
)
PARTITION = "event_date"

# Delta's own settings of the table. The log, and every data file, are kept 30 days: a stream
# stopped for less resumes from its checkpoint's ledger version and still finds the files those
# commits name (the README's promise). ``maintain`` deletes what that allows (appends delete
# nothing), by the files' age (VACUUM's full mode, RETENTION_HOURS given explicitly). The removal
# records compaction leaves, one per replaced file, are kept only REMOVAL_RECORDS: every checkpoint
# carries the unexpired ones and every append reads the checkpoint (4,000 of them made an append
# 60 ms instead of 27), and nothing here reads them: VACUUM goes by age. A checkpoint every 100
# commits keeps opening the log cheap.
RETENTION = "interval 30 days"
RETENTION_HOURS = 30 * 24
REMOVAL_RECORDS = "interval 10 minutes"
CONFIGURATION = {
    "delta.logRetentionDuration": RETENTION,
    "delta.deletedFileRetentionDuration": REMOVAL_RECORDS,
    "delta.checkpointInterval": "100",
}
# Every COMPACT_EVERY-th commit, the invocation that made it bin-packs the days it appended to
# (``compact``): each append adds a small file, and opening the table (every append, the stream's
# start) costs about 20 us per live file (one append took 27 ms at 500 files, 85 ms at 3,000, on one
# machine). Files that reach COMPACT_TARGET_BYTES are left alone, so one compaction rewrites at most
# that and COMPACT_EVERY small files, however many uploads the day has had.
COMPACT_EVERY = 100
COMPACT_TARGET_BYTES = 8 * 1024 * 1024
# Maintenance writes files of about this size (delta-rs's default). A sorted day is such files and at
# most one smaller one; a day with two or more files under a third of it has had uploads since (or
# was never sorted).
TARGET_FILE_BYTES = 100 * 1024 * 1024


def image_id(bucket: str, key: str, etag: str | None, version_id: str | None) -> str:
    """An image is a key's content: sha256 of (bucket, key, etag). The version id counts only for an
    event without an etag (a retried identical PUT on a versioned bucket is the same image)."""
    version = "" if etag else (version_id or "")
    return hashlib.sha256("\0".join((bucket, key, version, etag or "")).encode("utf-8")).hexdigest()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def key_hash(key: str) -> int:
    """The first 8 bytes of sha256(key), as a signed integer: look-ups by key filter on it too, and
    the per-file minimum and maximum of a sorted day leave one file to read."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big", signed=True)


def _moment(value: dt.datetime | str | None) -> dt.datetime | None:
    """An event time was checked against the contract's ISO 8601 pattern before."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _micros(moment: dt.datetime | None) -> int | None:
    """Microseconds since the epoch (arro3 builds timestamps from integers)."""
    return None if moment is None else (moment - _EPOCH) // dt.timedelta(microseconds=1)


def _days(moment: dt.datetime) -> int:
    """Days since the epoch of ``moment``'s UTC date (arro3 builds dates from integers)."""
    return (moment - _EPOCH) // dt.timedelta(days=1)


def rows(images: Sequence[ImageEvent], received_at: dt.datetime | None = None) -> ac.Table:
    """The ledger rows of ``images``, as an Arrow table of ``SCHEMA``."""
    received = received_at or dt.datetime.now(dt.UTC)
    times = [_moment(i.event_time) for i in images]
    columns = {
        "image_id": [image_id(i.bucket, i.key, i.etag, i.version_id) for i in images],
        "bucket": [i.bucket for i in images],
        "key": [i.key for i in images],
        "key_hash": [key_hash(i.key) for i in images],
        "size": [i.size for i in images],
        "etag": [i.etag for i in images],
        "version_id": [i.version_id for i in images],
        "sequencer": [i.sequencer for i in images],
        "event_time": [_micros(t) for t in times],
        "event_name": [i.event_name for i in images],
        "message_id": [i.message_id for i in images],
        "received_at": [_micros(received)] * len(images),
        "event_date": [_days(t or received) for t in times],
    }
    integers = {_TIME: ac.DataType.int64(), ac.DataType.date32(): ac.DataType.int32()}
    arrays = [
        ac.Array(columns[f.name], integers[f.type]).cast(f.type)
        if f.type in integers
        else ac.Array(columns[f.name], f.type)
        for f in SCHEMA
    ]
    return ac.Table.from_arrays(arrays, schema=SCHEMA)


def ensure_ledger(uri: str, storage_options: Mapping[str, str] | None = None) -> DeltaTable:
    """The ledger at ``uri``, created empty if there is none (the Lambda before its first append,
    the stream before it starts: either may come first; a creation that lost the race is fine)."""
    options = dict(storage_options or {})
    try:
        return _laid_out(DeltaTable(uri, storage_options=options), uri)
    except TableNotFoundError:
        pass
    try:
        return DeltaTable.create(
            uri,
            SCHEMA,
            mode="error",
            name="uploads",
            partition_by=[PARTITION],
            configuration=CONFIGURATION,
            description="one row per accepted upload event (the ingest Lambda appends)",
            storage_options=options,
        )
    except DeltaError:  # created by someone else meanwhile: it opens
        return _laid_out(DeltaTable(uri, storage_options=options), uri)


def _laid_out(table: DeltaTable, uri: str) -> DeltaTable:
    """``table``, if its columns and partitioning are this version's; else ``LedgerLayoutError``."""
    columns, partitions = [f.name for f in table.schema().fields], table.metadata().partition_columns
    if columns != SCHEMA.names or partitions != [PARTITION]:
        raise LedgerLayoutError(
            f"the uploads ledger at {uri} has columns {columns} partitioned by {partitions}; this version writes "
            f"{SCHEMA.names} partitioned by [{PARTITION!r}]. An older version created it: stop the Lambda's event "
            "source mapping, let the stream featurize what the ledger holds, then delete the ledger and the "
            "stream's checkpoint (the tables keep every image) and start both again."
        )
    return table


# An append writes the log's checkpoint when one is due but deletes nothing: the Lambda's role may not
# delete, and ``maintain`` deletes the expired log entries.
_APPEND_HOOKS = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)


def append(
    uri: str, images: Sequence[ImageEvent], storage_options: Mapping[str, str] | None = None, attempts: int = 5
) -> int:
    """Append ``images`` as one commit and return its version; ``LedgerWriteError`` if that cannot
    be done. delta-rs retries an append that lost the race to another append; a commit that
    conflicts otherwise (the table's creation racing, a maintenance commit) is tried again from the
    new version, up to ``attempts`` times."""
    try:
        table = ensure_ledger(uri, storage_options)  # opened once: the write commits on top of it
        for attempt in range(attempts):
            try:
                write_deltalake(table, rows(images), mode="append", post_commithook_properties=_APPEND_HOOKS)
                return table.version()
            except CommitFailedError:
                if attempt == attempts - 1:
                    raise
                table.update_incremental()
    except (DeltaError, OSError, ValueError) as exc:
        raise LedgerWriteError(
            f"could not append {len(images)} upload(s) to the ledger {uri}: {exc}. Check that the Lambda role may "
            "read and write that prefix (s3:GetObject, s3:PutObject, s3:ListBucket); the batch will be redelivered."
        ) from exc


def compact(uri: str, images: Sequence[ImageEvent], storage_options: Mapping[str, str] | None = None) -> int:
    """Bin-pack the small files of the days ``images`` fall on into files of up to
    ``COMPACT_TARGET_BYTES``; returns how many files it replaced. The Lambda calls it after an append
    whose version is a multiple of ``COMPACT_EVERY``. Its commit changes no data, so the stream's
    source skips it and appends racing it go through; it deletes nothing (``maintain`` does).

    Example::

        if append(uri, images) % COMPACT_EVERY == 0:
            compact(uri, images)
    """
    now = dt.datetime.now(dt.UTC)
    days = sorted({(_moment(i.event_time) or now).astimezone(dt.UTC).date().isoformat() for i in images})
    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    # Each append that commits first makes delta-rs check and try the compaction's commit again; it
    # gives up after 15 tries (CommitFailedError), whatever max_commit_retries says; that happens
    # beside 8 writers appending in a tight loop (bench-scale counts it; delta-rs issue 2700), and
    # the next turn compacts what this one left.
    done = table.optimize.compact(
        partition_filters=[(PARTITION, "in", days)],
        target_size=COMPACT_TARGET_BYTES,
        post_commithook_properties=_APPEND_HOOKS,
    )
    return done["numFilesRemoved"]


@dataclass(frozen=True)
class Maintenance:
    """What ``maintain`` did: the days it sorted, the files it replaced and wrote (sorting and
    compacting), the files it deleted."""

    days: tuple[dt.date, ...]
    files_removed: int
    files_added: int
    vacuumed: int


def maintain(
    uri: str, storage_options: Mapping[str, str] | None = None, today: dt.date | None = None
) -> Maintenance | None:
    """Bin-pack today's small files (``optimize.compact``: files under the 100 MB target), sort by
    ``key_hash`` (``optimize.z_order``) each earlier day that has two or more small files, then
    delete the files no longer in the table, and the log entries, written more than ``RETENTION``
    ago; ``None`` if
    there is no ledger yet. Run by ``fruits maintain``; its commits change no data
    (``dataChange=false``), so the stream's source skips them, and appends racing it go through.
    ``today`` is the UTC date (a later event date, a clock's skew, counts as today).

    Cost: today's files under the target (the uploads since the last run, and the compacted files
    that have not reached it), and the earlier days that received uploads since (yesterday, once;
    a day a replay reached), each rewritten whole: bounded by a day's uploads, never by the table.
    Finding them reads the table's file list (metadata, from the log's checkpoint); the deletion
    lists the table's folder.

    Example::

        maintain("s3://my-bucket/tables/uploads")   # Maintenance(days=(date(2026, 12, 6),), ...)
    """
    options = dict(storage_options or {})
    try:
        table = _laid_out(DeltaTable(uri, storage_options=options), uri)
    except TableNotFoundError:
        return None
    today = today or dt.datetime.now(dt.UTC).date()
    files = table.get_add_actions(flatten=True)
    small = Counter(
        day
        for day, size in zip(
            files.column(f"partition.{PARTITION}").to_pylist(), files.column("size_bytes").to_pylist(), strict=True
        )
        if size < TARGET_FILE_BYTES // 3
    )
    days = tuple(sorted(day for day, count in small.items() if count > 1 and day < today))
    runs = [
        table.optimize.z_order(
            ["key_hash"], partition_filters=[(PARTITION, "=", day.isoformat())], target_size=TARGET_FILE_BYTES
        )
        for day in days
    ]
    runs.append(
        table.optimize.compact(partition_filters=[(PARTITION, ">=", today.isoformat())], target_size=TARGET_FILE_BYTES)
    )
    # full: every unreferenced file written more than RETENTION_HOURS ago (its age, found by listing
    # the folder), not only those whose removal records the log still holds (10 minutes).
    vacuumed = table.vacuum(retention_hours=RETENTION_HOURS, dry_run=False, full=True)
    table.cleanup_metadata()  # the log entries older than its logRetentionDuration: RETENTION
    return Maintenance(
        days, sum(r["numFilesRemoved"] for r in runs), sum(r["numFilesAdded"] for r in runs), len(vacuumed)
    )
