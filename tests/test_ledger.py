"""The uploads ledger on its own (delta-rs, no Spark): rows partitioned by the event's date; the
maintenance that compacts today, sorts each earlier day with new uploads by key, changing no data,
then deletes only what its retention allows; a table of an older layout refused."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import arro3.core as ac
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from fruits_ingest import ledger
from fruits_ingest.events import ImageEvent
from fruits_ingest.exceptions import LedgerLayoutError

DAY = dt.date(2026, 12, 5)


def event(key: str, when: str | None = f"{DAY}T23:59:59Z") -> ImageEvent:
    return ImageEvent("b", key, 10, f"etag-{key}", None, None, when, "ObjectCreated:Put", f"m-{key}")


def files(uri: str) -> list[dict]:
    return pa.table(DeltaTable(uri).get_add_actions(flatten=True)).to_pylist()


def test_rows_are_partitioned_by_the_events_utc_date(tmp_path: Path) -> None:
    uri = str(tmp_path / "uploads")
    received = dt.datetime(2026, 12, 7, 1, tzinfo=dt.UTC)
    batch = [event("a.jpg"), event("b.jpg", "2026-12-06T00:30:00+02:00"), event("c.jpg", None)]
    ledger.ensure_ledger(uri)
    write_deltalake(uri, ledger.rows(batch, received_at=received), mode="append")
    rows = {r["key"]: r["event_date"] for r in DeltaTable(uri).to_pyarrow_table().to_pylist()}
    # +02:00 half past midnight is the day before in UTC; no event time: the day it was received.
    assert rows == {"a.jpg": DAY, "b.jpg": DAY, "c.jpg": dt.date(2026, 12, 7)}
    assert DeltaTable(uri).metadata().partition_columns == ["event_date"]


def interleaved(uri: str, keys: list[str], invocations: int = 4) -> None:
    """``keys`` appended by ``invocations`` invocations, interleaved: every file spans the day's key range."""
    for n in range(invocations):
        ledger.append(uri, [event(k) for k in keys[n::invocations]])


def test_maintenance_sorts_the_earlier_days_with_new_uploads_and_changes_no_data(tmp_path: Path, monkeypatch) -> None:
    uri = str(tmp_path / "uploads")
    keys = [f"uploads/Kiwi/{n:04d}.jpg" for n in range(4000)]
    interleaved(uri, keys, invocations=16)
    ledger.append(uri, [event("uploads/Kiwi/other-day.jpg", "2026-12-01T12:00:00Z")])  # one file: nothing to do
    before = DeltaTable(uri).to_pyarrow_table().sort_by("key").to_pylist()
    # Files of a quarter of the day (the production target is 100 MB): the sort's ranges must not overlap.
    target = sum(f["size_bytes"] for f in files(uri) if f["partition.event_date"] == DAY) // 4
    monkeypatch.setattr(ledger, "TARGET_FILE_BYTES", target)
    done = ledger.maintain(uri)

    assert done is not None and done.days == (DAY,) and done.files_removed == 16 and done.files_added >= 3
    table = DeltaTable(uri)
    assert table.to_pyarrow_table().sort_by("key").to_pylist() == before
    ranges = sorted((f["min.key_hash"], f["max.key_hash"]) for f in files(uri) if f["partition.event_date"] == DAY)
    assert all(high < low for (_, high), (low, _) in zip(ranges, ranges[1:]))  # a key is in at most one file
    day = table.to_pyarrow_table(partitions=[("event_date", "=", DAY.isoformat())])
    assert sorted(day["key_hash"].to_pylist()) == sorted(ledger.key_hash(k) for k in keys)
    # The commit changes no data: the stream's Delta source skips it.
    log = (tmp_path / "uploads" / "_delta_log" / f"{table.version():020d}.json").read_text().splitlines()
    actions = [json.loads(line) for line in log]
    assert {a.get("add", a.get("remove", {})).get("dataChange") for a in actions if "add" in a or "remove" in a} == {
        False
    }
    assert done.vacuumed == 0  # the replaced files stay for the retention: a stream 30 days behind reads them

    again = ledger.maintain(uri)  # nothing new: nothing rewritten
    assert again is not None and (again.days, again.files_removed) == ((), 0)


def test_todays_files_are_compacted_not_sorted(tmp_path: Path) -> None:
    uri = str(tmp_path / "uploads")
    interleaved(uri, [f"uploads/Kiwi/{n:03d}.jpg" for n in range(40)])
    done = ledger.maintain(uri, today=DAY)
    assert done is not None and (done.days, done.files_removed, done.files_added) == ((), 4, 1)
    assert done.vacuumed == 0


def test_replaced_files_and_old_log_entries_go_after_the_retention_and_only_then(tmp_path: Path) -> None:
    """Files go by their age (30 days), not by their removal records, which expire after
    REMOVAL_RECORDS (here 1 second): a file replaced a moment ago stays as long as a log entry
    that names it can still be read."""
    uri = str(tmp_path / "uploads")
    ledger.ensure_ledger(uri).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 1 second"})
    interleaved(uri, [f"{n}.jpg" for n in range(8)], invocations=2)
    assert ledger.maintain(uri) == ledger.Maintenance((DAY,), 2, 1, 0)  # within the retention: nothing deleted
    time.sleep(1.5)
    for n in range(100):  # past a checkpoint, which drops the expired removal records
        ledger.append(uri, [event(f"later-{n}.jpg", None)])
    assert ledger.maintain(uri).vacuumed == 0  # the replaced files are young: kept
    old = time.time() - 40 * 86400  # the log's entries, its checkpoint and every data file, 40 days on
    for entry in (tmp_path / "uploads").rglob("*"):
        os.utime(entry, (old, old))
    log = tmp_path / "uploads" / "_delta_log"
    for n in range(100):  # past the next checkpoint: an append deletes nothing
        ledger.append(uri, [event(f"latest-{n}.jpg", None)])
    assert (log / f"{0:020d}.json").exists()

    done = ledger.maintain(uri)

    assert done is not None and done.vacuumed >= 2 + 100  # the sort's two, the 100 compacted before the 40 days
    on_disk = [f for f in (tmp_path / "uploads").rglob("*.parquet") if "_delta_log" not in f.parts]
    # Kept: the 101 files this run's compaction just replaced (100 young ones, and an old one whose
    # removal record is younger than 30 days: a reader of the version before may still open it).
    assert len(on_disk) == len(DeltaTable(uri).file_uris()) + 101
    assert not (log / f"{0:020d}.json").exists()  # the log entries older than 30 days
    assert len(DeltaTable(uri).to_pyarrow_table()) == 8 + 200  # every row still readable


def test_a_ledger_of_an_older_layout_is_refused_with_what_to_do(tmp_path: Path) -> None:
    uri = str(tmp_path / "uploads")
    DeltaTable.create(uri, ac.Schema([f for f in ledger.SCHEMA if f.name not in ("key_hash", "event_date")]))
    with pytest.raises(LedgerLayoutError, match="delete the ledger and the stream's checkpoint"):
        ledger.append(uri, [event("a.jpg")])
    with pytest.raises(LedgerLayoutError):
        ledger.maintain(uri)


def test_maintenance_of_a_ledger_that_does_not_exist_yet(tmp_path: Path) -> None:
    assert ledger.maintain(str(tmp_path / "nothing")) is None


def test_the_ledger_keeps_thirty_days_of_log_and_ten_minutes_of_removal_records(tmp_path: Path) -> None:
    configuration = ledger.ensure_ledger(str(tmp_path / "uploads")).metadata().configuration
    assert configuration["delta.logRetentionDuration"] == "interval 30 days"
    assert configuration["delta.deletedFileRetentionDuration"] == "interval 10 minutes"
