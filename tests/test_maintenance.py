"""Table maintenance by each table's only writer: the stream compacts and vacuums its own tables,
``fruits maintain`` vacuums the refit's and maintains the ledger, and never commits to the stream's."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from conftest import SAMPLE
from fruits import stream
from fruits.config import Settings
from fruits.io import changes, lake
from fruits.pca.refit import refit
from fruits.spark import maintenance
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


@contextlib.contextmanager
def spark_conf(spark, **values: str) -> Iterator[None]:
    """Session settings for one test (names with dots spelled with double underscores)."""
    names = {name.replace("__", "."): value for name, value in values.items()}
    for name, value in names.items():
        spark.conf.set(name, value)
    try:
        yield
    finally:
        for name in names:
            spark.conf.unset(name)


# Delta refuses a retention under 168 h unless its check is off.
NO_RETENTION_CHECK = {"spark__databricks__delta__retentionDurationCheck__enabled": "false"}


def operations(spark, location: str) -> list[str]:
    """The table's commits' operations, newest first."""
    return [r.operation for r in DeltaTable.forPath(spark, location).history().select("operation").collect()]


def data_files(location: str) -> list[Path]:
    """The table's Parquet data files on disk (not the log's checkpoints)."""
    return [p for p in Path(location).rglob("*.parquet") if "_delta_log" not in p.parts]


def test_compaction_rewrites_the_crowded_days_and_changes_no_rows(spark, tmp_path: Path, monkeypatch) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    for seed in range(2):  # two micro-batches' worth of small files
        append_rows(spark, settings.features_table, synthetic_features(20, seed))
    assert refit(spark, settings, write_plots=False).mode == "full"
    small = len(lake.table_files(settings, settings.features_table).files)
    assert small >= 2
    assert maintenance.compact(spark, settings, settings.features_table) == (0, 0)  # fewer than COMPACT_MIN_FILES
    append_rows(spark, settings.features_table, synthetic_features(10, seed=9))
    monkeypatch.setattr(maintenance, "COMPACT_MIN_FILES", small + 1)
    removed, added = maintenance.compact(spark, settings, settings.features_table)
    files = lake.table_files(settings, settings.features_table).files
    assert removed > small and added == len(files) == len({Path(f.uri).parent for f in files})  # one file a day
    assert maintenance.compact(spark, settings, settings.quarantine_table) == (0, 0)  # an empty table

    # Compaction changed no rows: the stream finds every image, and the PCA statistics stay incremental.
    written = table.read(spark, settings.features_table).select("image_id", PARTITION, "event_time").toArrow()
    assert written.num_rows == 50 and all(WrittenImages(settings, spark).among(written).to_pylist())
    fit = refit(spark, settings, write_plots=False)
    assert (fit.mode, fit.rows_read, fit.model.row_count) == ("incremental", 10, 50)


def test_vacuum_deletes_replaced_files_and_old_log_readers_read_everything(spark, tmp_path: Path, monkeypatch) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    for seed in range(3):
        append_rows(spark, settings.features_table, synthetic_features(20, seed))
    refit(spark, settings, write_plots=False)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=9))
    monkeypatch.setattr(maintenance, "COMPACT_MIN_FILES", 2)
    maintenance.compact(spark, settings, settings.features_table)
    on_disk, kept = (
        len(data_files(settings.features_table)),
        len(lake.table_files(settings, settings.features_table).files),
    )
    assert on_disk > kept

    with spark_conf(spark, **NO_RETENTION_CHECK):
        assert maintenance.vacuum(spark, settings.features_table, retain_hours=0) == on_disk - kept
    assert len(data_files(settings.features_table)) == kept and len(image_ids(spark, settings.features_table)) == 70

    # The files appended since the last fit are gone now; with a retention that old, the refit
    # knows not to look for them and reads the table.
    monkeypatch.setattr(changes, "VACUUM_RETAIN_HOURS", 0)
    fit = refit(spark, settings, write_plots=False)
    assert (fit.mode, fit.model.row_count) == ("full", 70)


def test_the_retention_given_is_the_retention_vacuum_keeps(spark, tmp_path: Path) -> None:
    # Delta 4.2 ignores RETAIN <n> HOURS unless its retentionWindowIgnore switch is off (session.REQUIRED).
    settings = Settings(table_root=str(tmp_path / "tables"))
    append_rows(spark, settings.features_table, synthetic_features(5, seed=1))
    for hours in (200, 168):
        maintenance.vacuum(spark, settings.features_table, retain_hours=hours)
        start = (
            DeltaTable.forPath(spark, settings.features_table)
            .history()
            .where("operation = 'VACUUM START'")
            .orderBy(F.desc("version"))
            .first()
        )
        assert start.operationParameters["specifiedRetentionMillis"] == str(hours * 3600 * 1000), start


def test_the_stream_compacts_and_vacuums_its_own_tables_and_goes_on_when_that_fails(
    spark, tmp_path: Path, weights_blob, monkeypatch, caplog
) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"), compact_every=2, vacuum_every=4)
    writer = stream.BatchWriter(spark, settings, weights_blob)
    for seed in range(2):
        append_rows(spark, settings.features_table, synthetic_features(5, seed))
    monkeypatch.setattr(maintenance, "COMPACT_MIN_FILES", 2)
    ledger.ensure_ledger(lake.delta_uri(settings.uploads_table), lake.storage_options(settings))
    nothing = spark.read.format("delta").load(settings.uploads_table)  # an empty micro-batch: nothing new
    writer(nothing, 0)
    assert "OPTIMIZE" not in operations(spark, settings.features_table)
    writer(nothing, 1)
    assert operations(spark, settings.features_table)[0] == "OPTIMIZE"
    for batch_id in (2, 3):
        writer(nothing, batch_id)
    for location in (settings.features_table, settings.quarantine_table):
        assert operations(spark, location)[:2] == ["VACUUM END", "VACUUM START"]  # after batch 3, newest first

    def broken(*_: object) -> None:
        raise RuntimeError("S3 is throttling")

    monkeypatch.setattr(maintenance, "vacuum", broken)
    writer(nothing, 7)  # due, fails, and the micro-batch still succeeds
    assert "VACUUM" in caplog.text and "S3 is throttling" in caplog.text


def test_maintenance_beside_a_working_stream_never_commits_to_the_streams_tables(spark, settings, weights_blob) -> None:
    from fruits.local import ingest, upload

    table.ensure_tables(spark, settings)
    for seed in range(2):
        append_rows(spark, settings.features_table, synthetic_features(20, seed))
    refit(spark, settings, write_plots=False)
    refit(spark, settings, write_plots=False, full=True)  # replaces pca_stats' file
    before = {loc: table.current_version(spark, loc) for loc in (settings.features_table, settings.quarantine_table)}
    keys = upload.upload_images(settings, upload.sample_images(SAMPLE, per_class=1)[:3])
    ingest.drain(settings)
    running = stream.start(spark, settings, trigger={"processingTime": "1 second"}, model=weights_blob)
    try:
        with spark_conf(spark, **NO_RETENTION_CHECK):
            report = maintain(spark, settings, retain_hours=0)  # while the stream featurizes the three
        running.processAllAvailable()
    finally:
        running.stop()
    assert table.read(spark, settings.features_table).where(F.col("key").isin(keys)).count() == 3
    for location, version in before.items():
        commits = DeltaTable.forPath(spark, location).history().where(f"version > {version}").collect()
        assert {c.operation for c in commits} <= {"WRITE"}, [c.operation for c in commits]  # the stream's appends
    assert set(report.vacuumed) == {settings.pca_models_table, settings.pca_stats_table}
    assert report.vacuumed[settings.pca_stats_table] >= 1


def test_the_uploads_ledger_is_maintained_with_the_tables(spark, tmp_path: Path) -> None:
    settings = Settings(table_root=str(tmp_path / "tables"))
    day = dt.date(2026, 12, 1)
    for n in range(2):  # two invocations on an earlier day: two small files to sort
        ledger.append(
            lake.delta_uri(settings.uploads_table),
            [
                ImageEvent(
                    "b", f"uploads/Kiwi/{n}.jpg", 1, "e", None, None, f"{day}T10:00:00Z", "ObjectCreated:Put", "m"
                )
            ],
        )
    assert maintain(spark, settings).ledger == ledger.Maintenance((day,), 2, 1, 0)
