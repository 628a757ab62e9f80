"""Table maintenance: OPTIMIZE keeps every row and every incremental reader incremental; VACUUM
deletes the replaced files; log readers older than VACUUM's retention read everything instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from fruits.config import Settings
from fruits.io import changes, lake
from fruits.pca.refit import refit
from fruits.spark import tables as table
from fruits.spark.maintenance import maintain
from fruits.stream.known import KnownImages, as_ids

from helpers import append_rows, synthetic_features

pytestmark = pytest.mark.spark


def image_ids(spark, location: str) -> list[str]:
    return [r.image_id for r in table.read(spark, location).select("image_id").collect()]


def test_compaction_keeps_rows_and_incremental_readers(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    for seed in range(4):  # four micro-batches' worth of small files
        append_rows(spark, settings.features_table, synthetic_features(20, seed))
    assert refit(spark, settings, write_plots=False).mode == "full"
    known = KnownImages(settings, spark)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=9))
    files = len(lake.table_files(settings, settings.features_table).files)
    assert files >= 2
    ids = image_ids(spark, settings.features_table)

    report = maintain(spark, settings)
    assert report.compacted[settings.features_table] == (files, 1)
    assert report.compacted[settings.quarantine_table] == (0, 0)
    assert all(n == 0 for n in report.vacuumed.values())  # everything replaced is within the retention
    assert len(lake.table_files(settings, settings.features_table).files) == 1
    assert sorted(image_ids(spark, settings.features_table)) == sorted(ids)

    # OPTIMIZE changed no rows: the stream's known ids and the PCA statistics stay incremental.
    known.refresh()
    assert len(known) == 90 and known.contains(as_ids(ids)).all()
    fit = refit(spark, settings, write_plots=False)
    assert (fit.mode, fit.rows_read, fit.model.row_count) == ("incremental", 10, 90)


def test_vacuum_deletes_replaced_files_and_old_log_readers_read_everything(spark, tmp_path: Path, monkeypatch) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    for seed in range(3):
        append_rows(spark, settings.features_table, synthetic_features(20, seed))
    refit(spark, settings, write_plots=False, reproject_rows=False)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=9))
    files = len(lake.table_files(settings, settings.features_table).files)

    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")  # Delta refuses 0 h else
    try:
        report = maintain(spark, settings, retain_hours=0)
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    assert report.vacuumed[settings.features_table] >= files  # and any file no version names
    parquet = list(Path(settings.features_table).glob("*.parquet"))
    assert len(parquet) == 1 and len(image_ids(spark, settings.features_table)) == 70

    # The files appended since the last fit are gone now; with a retention that old, the refit
    # knows not to look for them and reads the table.
    monkeypatch.setattr(changes, "VACUUM_RETAIN_HOURS", 0)
    fit = refit(spark, settings, write_plots=False, reproject_rows=False)
    assert (fit.mode, fit.model.row_count) == ("full", 70)
