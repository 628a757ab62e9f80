"""What changed in a Delta table between two versions, read through delta-rs (no hand-parsed log).

The incremental PCA statistics follow the ``features`` table from the version they last saw.
delta-rs gives the commits (``history``: operation, time, metrics) and their rows (``load_cdf``: the
change data feed, which delta-rs derives from a commit's added and removed files when the table
writes no change files of its own). OPTIMIZE and
VACUUM change no rows, so they bring nothing; a DELETE, UPDATE or MERGE brings ``delete`` rows.

Example::

    new = appended_rows(settings, settings.features_table, after=12, upto=15, columns=["image_id"])
    if new is None:       # rows were changed or deleted, or the log no longer says: read the table
        ...

Limitations: the answer is None, and the caller reads the whole table, when a commit in the range
changed or deleted rows, when a commit is
older than ``VACUUM_RETAIN_HOURS`` (VACUUM may have deleted files the log names), when log
retention removed a commit, or when delta-rs cannot give a commit's changes (a range that starts
on a metadata-only commit, such as ALTER TABLE SET TBLPROPERTIES, in deltalake 1.6).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from ..config import VACUUM_RETAIN_HOURS, Settings
from . import lake

log = logging.getLogger(__name__)

CHANGE_TYPE = "_change_type"
COMMIT_VERSION = "_commit_version"  # the change data feed's column: the commit that added a row


@dataclass(frozen=True)
class Commit:
    """One commit as ``DeltaTable.history`` reports it."""

    version: int
    timestamp_ms: int
    operation: str
    blind_append: bool
    metrics: dict[str, str] = field(default_factory=dict)

    @property
    def rows_added(self) -> int:
        return int(self.metrics.get("numOutputRows", 0)) if self.blind_append else 0


def commits(table: DeltaTable, after: int, upto: int) -> list[Commit] | None:
    """Commits ``after + 1 .. upto`` of ``table`` (loaded at ``upto`` or later), oldest first;
    None when log retention already removed one of them."""
    if upto <= after:
        return []
    found = [
        Commit(
            int(h["version"]),
            int(h.get("timestamp", 0)),
            str(h.get("operation", "")),
            bool(h.get("isBlindAppend", False)),
            dict(h.get("operationMetrics") or {}),
        )
        for h in table.history(limit=table.version() - after)
        if after < int(h["version"]) <= upto
    ]
    found.sort(key=lambda c: c.version)
    if [c.version for c in found] != list(range(after + 1, upto + 1)):
        log.info("commits after version %d are gone from the log (retention)", after)
        return None
    return found


def followable(found: list[Commit] | None) -> bool:
    """Whether rows can be followed through these commits: all of them present and within
    VACUUM's retention, so that the files they name still exist."""
    if found is None:
        return False
    horizon_ms = (time.time() - VACUUM_RETAIN_HOURS * 3600) * 1000
    stale = [c.version for c in found if c.timestamp_ms < horizon_ms]
    if stale:
        log.info("commit %d is older than VACUUM's retention: its files may be gone", stale[0])
    return not stale


def appended_rows(
    settings: Settings,
    location: str,
    after: int,
    upto: int,
    columns: list[str],
    table: DeltaTable | None = None,
) -> pa.Table | None:
    """The ``columns`` of the rows that commits ``after + 1 .. upto`` added; None when those
    commits did more than add rows (see the module's limitations)."""
    if upto < after:
        return None  # the table went back in time
    table = table or lake.delta_table(settings, location)
    found = commits(table, after, upto)
    return rows_of(table, found, columns) if followable(found) else None


def rows_of(table: DeltaTable, found: list[Commit], columns: list[str]) -> pa.Table | None:
    """The ``columns`` of the rows that the ``found`` commits (``followable`` ones) added; None when
    they did more than add rows. For a caller that already has the commits."""
    parts = []
    for start, end in _ranges([c.version for c in found]):
        try:
            changes = pa.table(
                table.load_cdf(starting_version=start, ending_version=end, columns=[*columns, CHANGE_TYPE])
            )
        except DeltaError as exc:
            log.info("no change data for commits %d..%d (%s)", start, end, exc)
            return None
        kinds = set(pc.unique(changes.column(CHANGE_TYPE)).to_pylist()) if changes.num_rows else set()
        if kinds - {"insert"}:
            log.info("commits %d..%d changed existing rows (%s)", start, end, ", ".join(sorted(kinds)))
            return None
        parts.append(_without_views(changes.select(columns)))
    return _concat(parts, table, columns)


def _without_views(table: pa.Table) -> pa.Table:
    """delta-rs gives strings as ``string_view``, on which pyarrow 26's ``unique`` turns nulls into
    "": plain strings instead."""
    schema = pa.schema([f.with_type(pa.string()) if pa.types.is_string_view(f.type) else f for f in table.schema])
    return table.cast(schema)


def _concat(parts: list[pa.Table], table: DeltaTable, columns: list[str]) -> pa.Table:
    if parts:
        return pa.concat_tables(parts)
    schema = pa.schema(table.schema().to_arrow())  # type: ignore[arg-type]
    return schema.empty_table().select(columns)


def _ranges(versions: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of ``versions`` as ``(first, last)`` pairs."""
    runs: list[tuple[int, int]] = []
    for v in versions:
        if runs and runs[-1][1] == v - 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs
