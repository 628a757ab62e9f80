"""Table maintenance: OPTIMIZE keeps every row and every incremental reader incremental; VACUUM
deletes the replaced files; log readers older than VACUUM's retention read everything instead."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fruits.config import Settings
from fruits.io import changes, lake
from fruits.pca.refit import refit
from fruits.spark import tables as table
from fruits.spark.maintenance import maintain
from fruits.spark.schema import PARTITION
from fruits.stream.written import WrittenImages
from fruits_ingest import ledger
from fruits_ingest.events import ImageEvent

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
    append_rows(spark, settings.features_table, synthetic_features(10, seed=9))
    files = len(lake.table_files(settings, settings.features_table).files)
    assert files >= 2
    ids = image_ids(spark, settings.features_table)

    report = maintain(spark, settings)
    assert report.ledger is None  # no upload yet: the Lambda creates the ledger
    assert report.compacted[settings.features_table] == (files, 1)
    assert report.compacted[settings.quarantine_table] == (0, 0)
    assert all(n == 0 for n in report.vacuumed.values())  # everything replaced is within the retention
    assert len(lake.table_files(settings, settings.features_table).files) == 1
    assert sorted(image_ids(spark, settings.features_table)) == sorted(ids)

    # OPTIMIZE changed no rows: the stream finds every image, and the PCA statistics stay incremental.
    written = table.read(spark, settings.features_table).select("image_id", PARTITION, "event_time").toArrow()
    assert written.num_rows == 90 and all(WrittenImages(settings, spark).among(written).to_pylist())
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


def test_optimize_during_a_reprojection_both_finish(spark, tmp_path: Path, caplog) -> None:
    """OPTIMIZE (maintain) starts, then the refit's re-projection UPDATE reads the files OPTIMIZE is
    about to replace: whichever commits second meets a conflict (ConcurrentDeleteReadException)
    and retries; both finish, every row ends on the new PCA version and none is lost."""
    import logging
    import threading
    import time

    from fruits.pca.refit import reproject

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    for seed in range(12):
        append_rows(spark, settings.features_table, synthetic_features(150, seed))
    model = refit(spark, settings, write_plots=False, reproject_rows=False).model
    ids = sorted(image_ids(spark, settings.features_table))
    caplog.set_level(logging.INFO, logger="fruits.spark.tables")

    errors: list[BaseException] = []

    def optimize() -> None:
        try:
            maintain(spark, settings)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    tracker = spark.sparkContext.statusTracker()
    helper = threading.Thread(target=optimize)
    helper.start()
    deadline = time.monotonic() + 60
    while not tracker.getActiveJobsIds() and time.monotonic() < deadline:  # OPTIMIZE's first job runs
        time.sleep(0.01)
    assert reproject(spark, settings, model) == len(ids)
    helper.join(timeout=300)
    assert errors == []
    assert sorted(image_ids(spark, settings.features_table)) == ids
    assert {r.pca_version for r in table.read(spark, settings.features_table).select("pca_version").collect()} == {
        model.version}
    conflicts = [r.getMessage() for r in caplog.records if "met a concurrent commit" in r.getMessage()]
    print(f"conflicts retried: {conflicts}")


def test_the_uploads_ledger_is_maintained_with_the_tables(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    day = dt.date(2026, 12, 1)
    for n in range(2):  # two invocations on an earlier day: two small files to sort
        ledger.append(lake.delta_uri(settings.uploads_table),
                      [ImageEvent("b", f"uploads/Kiwi/{n}.jpg", 1, "e", None, None, f"{day}T10:00:00Z",
                                  "ObjectCreated:Put", "m")])
    assert maintain(spark, settings).ledger == ledger.Maintenance((day,), 2, 1, 0)
