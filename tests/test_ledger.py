"""The uploads ledger on its own (delta-rs, no Spark): rows partitioned by the event's date, and the
maintenance that sorts each day with new uploads by key, changing no data, then deletes only what
its retention allows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from fruits_ingest import ledger
from fruits_ingest.events import ImageEvent

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


def test_maintenance_sorts_the_days_with_new_uploads_and_changes_no_data(tmp_path: Path) -> None:
    uri = str(tmp_path / "uploads")
    keys = [f"uploads/Kiwi/{n:03d}.jpg" for n in range(40)]
    for n in range(4):  # four invocations, their keys interleaved: every file spans the day's key range
        ledger.append(uri, [event(k) for k in keys[n::4]])
    ledger.append(uri, [event("uploads/Kiwi/other-day.jpg", "2026-12-01T12:00:00Z")])  # one file: nothing to do
    before = DeltaTable(uri).to_pyarrow_table().sort_by("key").to_pylist()

    done = ledger.maintain(uri)

    assert done is not None and (done.days, done.files_removed, done.files_added) == ((DAY,), 4, 1)
    table = DeltaTable(uri)
    assert table.to_pyarrow_table().sort_by("key").to_pylist() == before
    (sorted_day,) = [f for f in files(uri) if f["partition.event_date"] == DAY]
    hashes = sorted(ledger.key_hash(k) for k in keys)
    assert (sorted_day["min.key_hash"], sorted_day["max.key_hash"]) == (hashes[0], hashes[-1])
    day = table.to_pyarrow_table(partitions=[("event_date", "=", DAY.isoformat())])
    assert day["key_hash"].to_pylist() == hashes  # within the file too
    # The commit changes no data: the stream's Delta source skips it.
    log = (tmp_path / "uploads" / "_delta_log" / f"{table.version():020d}.json").read_text().splitlines()
    actions = [json.loads(line) for line in log]
    assert {a.get("add", a.get("remove", {})).get("dataChange") for a in actions if "add" in a or "remove" in a} \
        == {False}
    # The replaced files stay for the retention (a stream 30 days behind still reads them).
    assert done.vacuumed == 0 and len(list((tmp_path / "uploads").glob("event_date=*/*.parquet"))) == 6

    again = ledger.maintain(uri)  # nothing new: nothing rewritten
    assert again is not None and (again.days, again.files_removed) == ((), 0)


def test_maintenance_of_a_ledger_that_does_not_exist_yet(tmp_path: Path) -> None:
    assert ledger.maintain(str(tmp_path / "nothing")) is None


@pytest.mark.parametrize("setting", ["delta.logRetentionDuration", "delta.deletedFileRetentionDuration"])
def test_the_ledger_keeps_thirty_days(tmp_path: Path, setting: str) -> None:
    table = ledger.ensure_ledger(str(tmp_path / "uploads"))
    assert table.metadata().configuration[setting] == "interval 30 days"


def test_the_log_is_checkpointed(tmp_path: Path) -> None:
    uri = str(tmp_path / "uploads")
    for n in range(101):
        ledger.append(uri, [event(f"{n}.jpg")])
    assert list((tmp_path / "uploads" / "_delta_log").glob("*.checkpoint.parquet"))
