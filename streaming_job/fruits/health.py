"""The pipeline at a glance (``fruits health``): is it keeping up, and is anything wrong.

Example::

    report = check(Settings.from_env())
    report.problems          # [] when healthy, else one line per crossed threshold
    report.pending_uploads   # uploads in the ledger the stream has not read yet

What it reads, each bounded by recent data, never by the tables' history: the queue's and the
dead-letter queue's depth; the uploads ledger's commits after the stream's last committed offset
(its checkpoint), for the uploads not yet in the tables; the ``features`` and ``quarantine``
tables' commits of the last day (rows written, the newest commit's age) and the rows of the last
hour's and day's partitions (latency from upload to row, quarantines by reason); the newest PCA
and classifier versions and the similarity index's manifest; the leases. It writes nothing.

Limitations: rows and latency come from ``event_date`` partitions (the upload's UTC day), so a
row ingested long after its upload's day is counted in neither; the pending count of a ledger
commit the stream is part-way through is the whole commit.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import fs as pa_fs

from .classifier import registry as classifier_registry
from .config import Settings
from .io import aws, lake
from .io import versions as versions_table
from .io.lease import Lease
from .pca import registry as pca_registry
from .similarity import read_manifest

LEASES = ("stream", "refit")  # the leases the jobs take (fruits.io.lease)
DAY, HOUR = dt.timedelta(days=1), dt.timedelta(hours=1)


@dataclass(frozen=True)
class Thresholds:
    """When ``check`` reports a problem (and ``fruits health`` exits 1)."""

    stale_after_s: float = 600.0  # uploads wait and the stream has committed nothing for this long
    max_dead_letters: int = 0


@dataclass
class Report:
    checked_at: str
    queue_depth: int | None = None
    dead_letters: int | None = None
    pending_uploads: int | None = None  # in the ledger, after the stream's last committed offset
    stream_offset: int | None = None  # the ledger version the stream reads next
    newest_commit_at: str | None = None  # features' newest write (a micro-batch's, rows or none)
    newest_commit_age_s: float | None = None
    rows: dict[str, int] = field(default_factory=dict)  # written in the last hour, day
    quarantined: dict[str, dict[str, int]] = field(default_factory=dict)  # window -> reason -> count
    latency_s: dict[str, float] = field(default_factory=dict)  # p50, p95 over the last hour's rows
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # pca, classifier, index
    leases: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be read, and why

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def check(settings: Settings, thresholds: Thresholds = Thresholds(), now: dt.datetime | None = None) -> Report:
    """One look at the pipeline; ``problems`` names every threshold crossed."""
    now = now or dt.datetime.now(dt.UTC)
    report = Report(checked_at=now.isoformat(timespec="seconds"))
    for part in (_queues, _pending, _written, _quarantined, _latency, _versions, _leases):
        try:
            part(settings, report, now)
        except Exception as exc:  # noqa: BLE001 - one part unreadable is a note, the others still count
            report.notes.append(f"{part.__name__.strip('_')}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    _judge(report, thresholds)
    return report


def _queues(settings: Settings, report: Report, _: dt.datetime) -> None:
    sqs = aws.client("sqs", settings)
    report.queue_depth = aws.queue_depth(sqs, aws.queue_url(settings))
    report.dead_letters = aws.queue_depth(sqs, aws.queue_url(settings, settings.dead_letter_queue))


def _pending(settings: Settings, report: Report, _: dt.datetime) -> None:
    report.stream_offset = stream_offset(settings)
    report.pending_uploads = pending_uploads(settings, report.stream_offset)


def pending_uploads(settings: Settings, offset: int | None = None) -> int:
    """Rows of the ledger's commits from the stream's next ``offset`` on (default: its
    checkpoint's newest committed batch); commits that only rewrote files (compaction) add none.
    Reads the ledger's history since that offset only."""
    if not lake.exists(settings, settings.uploads_table):
        return 0
    ledger = lake.delta_table(settings, settings.uploads_table)
    if offset is None:
        offset = stream_offset(settings)
    after = -1 if offset is None else offset - 1
    history = ledger.history(limit=max(ledger.version() - after, 1))
    return sum(
        int((h.get("operationMetrics") or {}).get("num_added_rows", 0))
        for h in history
        if int(h["version"]) > after and h.get("operation") == "WRITE"
    )


def stream_offset(settings: Settings) -> int | None:
    """The ledger version the stream reads next, from its checkpoint's newest committed batch (the
    offsets and commits logs Spark keeps, the last 100 batches), or None before its first."""
    filesystem, root = lake.filesystem(settings), lake.path_in(settings.checkpoint)
    committed = _batches(filesystem, f"{root}/commits")
    for batch in sorted(_batches(filesystem, f"{root}/offsets") & committed, reverse=True):
        with filesystem.open_input_stream(f"{root}/offsets/{batch}") as stream:
            lines = stream.read().decode().splitlines()
        offset = json.loads(lines[-1])  # the Delta source's: reservoirVersion, index (-1: none of it read yet)
        return int(offset["reservoirVersion"]) + (0 if int(offset.get("index", -1)) == -1 else 1)
    return None


def _batches(filesystem: pa_fs.FileSystem, folder: str) -> set[int]:
    found = filesystem.get_file_info(pa_fs.FileSelector(folder, allow_not_found=True))
    return {int(f.base_name) for f in found if f.base_name.isdigit()}


def _written(settings: Settings, report: Report, now: dt.datetime) -> None:
    """Rows the stream's commits of the last day wrote (Delta's history, newest first, read until a
    day back), and the newest such commit's age."""
    table = lake.delta_table(settings, settings.features_table)
    since_ms = (now - DAY).timestamp() * 1000
    limit, history = 64, []
    while True:
        history = table.history(limit=limit)
        if len(history) < limit or int(history[-1].get("timestamp", 0)) < since_ms:
            break
        limit *= 4
    writes = [h for h in history if h.get("operation") == "WRITE" and int(h.get("timestamp", 0)) >= since_ms]
    rows = [(int(h["timestamp"]), int((h.get("operationMetrics") or {}).get("numOutputRows", 0))) for h in writes]
    report.rows = {
        "last_hour": sum(n for t, n in rows if t >= (now - HOUR).timestamp() * 1000),
        "last_day": sum(n for _, n in rows),
    }
    newest = next((h for h in history if h.get("operation") == "WRITE"), None)
    if newest is not None:
        at = dt.datetime.fromtimestamp(int(newest["timestamp"]) / 1000, dt.UTC)
        report.newest_commit_at = at.isoformat(timespec="seconds")
        report.newest_commit_age_s = round((now - at).total_seconds(), 1)


def _recent(
    settings: Settings, location: str, column: str, since: dt.datetime, columns: list[str], now: dt.datetime
) -> Any:
    """``columns`` of the rows whose ``column`` is at or after ``since``, from the partitions of
    the days that can hold them (``event_date``, the upload's UTC day)."""
    days = {(since - DAY).date() + dt.timedelta(days=i) for i in range((now.date() - since.date()).days + 2)}
    dataset = lake.dataset(settings, location).dataset
    wanted = ds.field("event_date").isin(sorted(days)) & (ds.field(column) >= since)
    return dataset.to_table(columns=columns, filter=wanted)


def _quarantined(settings: Settings, report: Report, now: dt.datetime) -> None:
    found = _recent(settings, settings.quarantine_table, "quarantined_at", now - DAY, ["reason", "quarantined_at"], now)
    for window, since in (("last_hour", now - HOUR), ("last_day", now - DAY)):
        rows = found.filter(pc.field("quarantined_at") >= since)
        counts = rows.group_by("reason").aggregate([("reason", "count")]).to_pylist()
        report.quarantined[window] = {c["reason"]: c["reason_count"] for c in counts}


def _latency(settings: Settings, report: Report, now: dt.datetime) -> None:
    """Upload (the S3 event's time) to row (written), over the last hour's rows."""
    found = _recent(settings, settings.features_table, "ingested_at", now - HOUR, ["event_time", "ingested_at"], now)
    found = found.filter(pc.is_valid(pc.field("event_time")))
    if found.num_rows:
        seconds = pc.divide(pc.cast(pc.subtract(found["ingested_at"], found["event_time"]), "int64"), 1e6)
        values = seconds.to_numpy(zero_copy_only=False)
        report.latency_s = {
            "p50": round(float(np.percentile(values, 50)), 2),
            "p95": round(float(np.percentile(values, 95)), 2),
            "rows": int(found.num_rows),
        }


def _versions(settings: Settings, report: Report, now: dt.datetime) -> None:
    for name, location, newest in (
        ("pca", settings.pca_models_table, pca_registry.newest_version),
        ("classifier", settings.classifiers_table, classifier_registry.newest_version),
    ):
        version = newest(settings)
        if version is None:
            continue
        row = versions_table.row(settings, location, version, ["version", "fitted_at"]) or {}
        fitted = row.get("fitted_at")
        report.versions[name] = {
            "version": version,
            "fitted_at": str(fitted),
            "age_s": round((now - fitted.replace(tzinfo=dt.UTC)).total_seconds()) if fitted else None,
        }
    manifest = read_manifest(settings)
    if manifest is not None:
        report.versions["index"] = {
            "pca_version": manifest.pca_version,
            "rows": manifest.rows,
            "features_version": manifest.features_version,
            "updated_at": manifest.updated_at,
        }


def _leases(settings: Settings, report: Report, _: dt.datetime) -> None:
    for name in LEASES:
        report.leases[name] = Lease(settings, name).holder()


def _judge(report: Report, thresholds: Thresholds) -> None:
    if report.dead_letters is not None and report.dead_letters > thresholds.max_dead_letters:
        report.problems.append(
            f"{report.dead_letters} upload event(s) in the dead-letter queue: see why with "
            "`fruits replay-dlq --dry-run`, fix the cause, then `fruits replay-dlq`"
        )
    if report.pending_uploads:
        age = report.newest_commit_age_s
        if age is None or age > thresholds.stale_after_s:
            since = "has never committed" if age is None else f"last committed {age:.0f} s ago"
            report.problems.append(
                f"{report.pending_uploads} upload(s) wait in the ledger and the stream {since} "
                f"(over {thresholds.stale_after_s:g} s): is `fruits stream` running? (lease: "
                f"{(report.leases.get('stream') or {}).get('owner', 'free')})"
            )
