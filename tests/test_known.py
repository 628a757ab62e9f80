"""The stream's exactly-once check: the ids the tables hold, kept up to date from the Delta log."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from delta.tables import DeltaTable
from fruits.config import Settings
from fruits.spark import tables as table
from fruits.spark.schema import QUARANTINE
from fruits.stream.known import KnownImages, as_ids

pytestmark = pytest.mark.spark


def quarantine(spark, settings: Settings, ids: list[str]) -> None:
    """A blind append of quarantine rows, as the stream writes them."""
    now = dt.datetime.now(dt.timezone.utc)
    rows = [(i, "b", f"uploads/{i}.jpg", None, None, "not_an_image", "x", now, None) for i in ids]
    table.append(spark.createDataFrame(rows, QUARANTINE), settings.quarantine_table)


def known_of(known: KnownImages, ids: list[str]) -> list[str]:
    return [i for i, hit in zip(ids, known.contains(as_ids(ids))) if hit]


def test_known_images_follow_appends_deletes_and_a_restart(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    ids = [f"{i:064x}" for i in range(1, 9)]
    quarantine(spark, settings, ids[:3])
    known = KnownImages(settings, spark)
    assert len(known) == 3 and known_of(known, ids) == ids[:3]

    quarantine(spark, settings, ids[3:5])
    quarantine(spark, settings, ids[5:6])
    assert known_of(known, ids) == ids[:3]  # not yet looked at the log
    known.refresh()
    assert known_of(known, ids) == ids[:6] and len(known) == 6

    # A DELETE removes rows: the next look reads the table again, and the id is free again.
    DeltaTable.forPath(spark, settings.quarantine_table).delete(f"image_id = '{ids[0]}'")
    quarantine(spark, settings, ids[6:7])
    known.refresh()
    assert known_of(known, ids) == ids[1:7]
    assert known_of(KnownImages(settings, spark), ids) == ids[1:7]  # the same after a restart
    assert not KnownImages(settings, spark, [settings.features_table]).contains(as_ids(ids)).any()


def test_many_ids_merge_into_one_sorted_array(spark, tmp_path: Path) -> None:
    """Past the merge threshold the recent ids move into the main array; lookups stay exact."""
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    rng = np.random.default_rng(0)
    ids = [f"{v:064x}" for v in rng.integers(0, 2**62, size=120_050)]
    quarantine(spark, settings, ids[:50])
    known = KnownImages(settings, spark)
    quarantine(spark, settings, ids[50:])
    known.refresh()
    assert len(known) == len(set(ids)) and known.contains(as_ids(ids)).all()
    assert not known.contains(as_ids([f"{v:064x}" for v in (2**62 + 1, 2**63)])).any()


def test_a_metadata_commit_between_looks_reads_the_table_again(spark, tmp_path: Path) -> None:
    """delta-rs has no change data for a range starting on a metadata-only commit (ALTER TABLE SET
    TBLPROPERTIES): the known ids read the table again instead of failing the micro-batch."""
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    ids = [f"{i:064x}" for i in range(1, 5)]
    quarantine(spark, settings, ids[:1])
    known = KnownImages(settings, spark)
    spark.sql(f"ALTER TABLE delta.`{settings.quarantine_table}` SET TBLPROPERTIES ('fruits.note' = 'x')")
    quarantine(spark, settings, ids[1:3])
    known.refresh()
    assert known_of(known, ids) == ids[:3]
