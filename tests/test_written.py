"""The stream's exactly-once check, kept by the tables: lookups by id within the batch's event dates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from delta.tables import DeltaTable

from fruits.config import Settings
from fruits.io import lake
from fruits.spark import tables as table
from fruits.spark.schema import QUARANTINE
from fruits.stream.written import WrittenImages, candidates, lookup_dates
from helpers import append_rows, synthetic_features

pytestmark = pytest.mark.spark

UTC = dt.UTC
NOON = dt.datetime(2026, 12, 5, 12, tzinfo=UTC)


def quarantine(spark, settings: Settings, ids: list[str], at: dt.datetime = NOON) -> None:
    """A blind append of quarantine rows with events at ``at``, as the stream writes them (one file)."""
    rows = [(i, "b", f"uploads/{i}.jpg", None, None, at.date(), "not_an_image", "x", at, None) for i in ids]
    table.append(spark.createDataFrame(rows, QUARANTINE).coalesce(1), settings.quarantine_table)


def batch(ids: list[str], at: dt.datetime | None = NOON, date: dt.date | None = None) -> pa.Table:
    """A micro-batch's ledger rows, as the lookup sees them (``at``: the event time, None if it had none)."""
    return pa.table(
        {
            "image_id": ids,
            "event_date": pa.array([date or at.date()] * len(ids), pa.date32()),
            "event_time": pa.array([at] * len(ids), pa.timestamp("us", tz="UTC")),
        }
    )


def written_of(written: WrittenImages, rows: pa.Table) -> list[str]:
    return [i for i, hit in zip(rows.column("image_id").to_pylist(), written.among(rows).to_pylist()) if hit]


def test_lookups_follow_appends_and_deletes_within_the_events_dates(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    ids = [f"{i:064x}" for i in range(1, 9)]
    written = WrittenImages(settings, spark)
    assert written_of(written, batch(ids)) == []
    quarantine(spark, settings, ids[:3])
    assert written_of(written, batch(ids)) == ids[:3]  # the same object reads the new commit
    quarantine(spark, settings, ids[3:5])
    assert written_of(written, batch(ids)) == ids[:5]

    # Another day's event is not looked up in this day's partition.
    assert written_of(written, batch(ids, NOON + dt.timedelta(days=1))) == []
    # A DELETE frees its ids; a new lookup object (a restart) answers the same, having read nothing before.
    DeltaTable.forPath(spark, settings.quarantine_table).delete(f"image_id = '{ids[0]}'")
    assert written_of(written, batch(ids)) == ids[1:5]
    assert written_of(WrittenImages(settings, spark), batch(ids)) == ids[1:5]
    assert written_of(WrittenImages(settings, spark, (settings.features_table,)), batch(ids)) == []


def test_an_event_near_midnight_is_looked_up_in_the_neighbouring_day(spark, tmp_path: Path) -> None:
    """The same bytes PUT again across midnight (a client's retry) are the same image."""
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    late = dt.datetime(2026, 12, 5, 23, 40, tzinfo=UTC)
    quarantine(spark, settings, ["a" * 64], at=late)
    written = WrittenImages(settings, spark)
    assert written_of(written, batch(["a" * 64], late + dt.timedelta(minutes=30))) == ["a" * 64]  # 00:10 the next day
    assert written_of(written, batch(["a" * 64], late + dt.timedelta(hours=12))) == []
    assert lookup_dates(batch(["x"], None, dt.date(2026, 12, 6))) == [dt.date(2026, 12, 5), dt.date(2026, 12, 6)]
    assert lookup_dates(batch(["x"], late)) == [dt.date(2026, 12, 5), dt.date(2026, 12, 6)]
    assert lookup_dates(batch(["x"], NOON)) == [dt.date(2026, 12, 5)]


def test_ids_in_both_tables_and_on_two_days_are_found(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(2, seed=1))  # dated today
    processed = table.read(spark, settings.features_table).select("image_id", "event_date", "event_time").toArrow()
    quarantine(spark, settings, ["q" * 64])
    others = batch(["q" * 64, "n" * 64])
    rows = pa.concat_tables([processed.cast(others.schema), others])
    assert written_of(WrittenImages(settings, spark), rows) == processed.column("image_id").to_pylist() + ["q" * 64]


def test_an_event_without_a_time_redelivered_the_next_day_is_found(spark, tmp_path: Path) -> None:
    """Dated by the Lambda's append, its redelivery may be appended after midnight."""
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    quarantine(spark, settings, ["a" * 64], at=NOON)
    assert written_of(WrittenImages(settings, spark), batch(["a" * 64], None, NOON.date() + dt.timedelta(days=1))) == [
        "a" * 64
    ]
    assert written_of(WrittenImages(settings, spark), batch(["a" * 64], None, NOON.date() + dt.timedelta(days=2))) == []


def test_a_lookup_reads_only_the_files_that_could_hold_the_ids(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    # Delta's statistics keep a string's first 32 characters: these ids differ in their second.
    low, high = [f"1{i}".ljust(64, "0") for i in range(3)], [f"e{i}".ljust(64, "0") for i in range(3)]
    quarantine(spark, settings, low)
    quarantine(spark, settings, high)
    quarantine(spark, settings, low + high, at=NOON - dt.timedelta(days=3))  # another day: never read
    delta = lake.delta_table(settings, settings.quarantine_table)
    assert len(delta.file_uris()) == 3

    def files(ids: list[str]) -> int:
        return len(
            list(candidates(settings, settings.quarantine_table, delta, pa.array(ids), [NOON.date()]).get_fragments())
        )

    assert files([low[0]]) == 1 and files([high[1]]) == 1 and files([low[0], high[0]]) == 2
    assert files(["0" * 64]) == 0  # below every file's range


def test_a_table_with_deletion_vectors_is_looked_up_through_spark(spark, tmp_path: Path) -> None:
    """Arrow would read a deleted row as present: a Delta reader answers instead."""
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    spark.sql(f"ALTER TABLE delta.`{settings.quarantine_table}` SET TBLPROPERTIES (delta.enableDeletionVectors = true)")
    quarantine(spark, settings, ["a" * 64, "b" * 64])
    DeltaTable.forPath(spark, settings.quarantine_table).delete(f"image_id = '{'a' * 64}'")
    assert not lake.plain_files(lake.delta_table(settings, settings.quarantine_table))
    assert written_of(WrittenImages(settings, spark), batch(["a" * 64, "b" * 64])) == ["b" * 64]
    with pytest.raises(ValueError, match="pass spark"):
        WrittenImages(settings).among(batch(["a" * 64]))


def test_tables_of_an_older_layout_are_refused(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    spark.createDataFrame([], QUARANTINE).write.format("delta").save(settings.quarantine_table)  # not partitioned
    with pytest.raises(table.TableLayoutError, match="rebuild the tables from the uploads ledger"):
        table.ensure_tables(spark, settings)
