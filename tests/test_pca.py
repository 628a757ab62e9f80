"""PCA refit: validated against Spark ML, incremental equal to full, versioned, plotted, periodic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from delta.tables import DeltaTable

from fruits.io import lake
from fruits.pca import registry, stats
from fruits.pca.model import solve
from fruits.pca.refit import STEPS, refit, run_periodically
from fruits.spark import tables as table
from fruits.spark.schema import FEATURES
from helpers import MODEL_ID, append_rows, synthetic_features

pytestmark = pytest.mark.spark


def table_versions(spark, location: str) -> list[int | None]:
    return [r.pca_version for r in table.read(spark, location).select("pca_version").collect()]


def test_fit_matches_spark_ml_pca(spark) -> None:
    from pyspark.ml.feature import PCA
    from pyspark.ml.functions import array_to_vector

    x = synthetic_features(400, seed=1)
    df = spark.createDataFrame(pd.DataFrame({"features": list(x), "model_id": MODEL_ID}))
    collected, ids = stats.collect_stats(df)
    assert ids == {MODEL_ID} and collected.n == 400
    fit = solve(collected, k=8)
    components, ratios = fit.components, fit.ratios

    reference = PCA(k=8, inputCol="v").fit(df.select(array_to_vector("features").alias("v")))
    expected_ratios = reference.explainedVariance.toArray()
    np.testing.assert_allclose(ratios[:8], expected_ratios, rtol=1e-6)
    pc = reference.pc.toArray().T  # (8, 1280)
    alignment = np.abs(np.sum(components[:8] * pc, axis=1))  # |cos| of unit vectors: 1 up to sign
    np.testing.assert_allclose(alignment, 1.0, atol=1e-6)


def test_incremental_refit_reads_only_new_rows_and_equals_a_full_one(spark, tmp_path: Path) -> None:
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    first, later = synthetic_features(300, seed=2), synthetic_features(30, seed=3)
    append_rows(spark, settings.features_table, first)

    told: list[str] = []
    fit1 = refit(spark, settings, threshold=0.95, on_step=told.append)
    assert fit1.mode == "full" and fit1.rows_read == 300 and fit1.model.version == 1
    assert told == list(STEPS)  # each step, in order, as a progress bar shows them
    assert 1 <= fit1.model.k <= 8  # the data has 8 strong directions

    # New rows: only they are read, and the fit equals a fit from scratch.
    append_rows(spark, settings.features_table, later)
    appended = lake.delta_table(settings, settings.features_table).version()
    assert stats.pending_rows(settings) == 30
    fit2 = refit(spark, settings, threshold=0.95)
    assert fit2.mode == "incremental" and fit2.rows_read == 30 and fit2.model.row_count == 330
    assert (fit1.solver, fit2.solver) == ("eigh", "rayleigh-ritz")
    assert stats.pending_rows(settings) == 0
    told.clear()
    same = refit(spark, settings, threshold=0.95, on_step=told.append)  # nothing new: version 2 stands
    assert same.mode == "unchanged" and same.model.version == 2 and same.rows_read == 0
    assert told == ["statistics", "solve", "index", "classifier"]  # nothing stored, nothing drawn
    fit3 = refit(spark, settings, threshold=0.95, full=True)
    assert fit3.mode == "full" and fit3.rows_read == 330
    # The incremental solve is a Rayleigh-Ritz step (``pca.model.update``), accurate to its residual
    # check; the mean is exact.
    np.testing.assert_allclose(fit2.model.mean, fit3.model.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        fit2.model.explained_variance_ratio[:8], fit3.model.explained_variance_ratio[:8], rtol=1e-6
    )
    assert fit2.model.k == fit3.model.k
    assert np.allclose(np.abs(np.sum(fit2.model.components * fit3.model.components, axis=1)), 1.0, atol=1e-6)

    # No refit committed to the features table: its newest commit is the second append.
    assert lake.delta_table(settings, settings.features_table).version() == appended
    assert set(table_versions(spark, settings.features_table)) == {None}
    # Every version is kept and read by version from the registry.
    assert [(v["version"], v["row_count"]) for v in registry.versions(settings)] == [(1, 300), (2, 330), (3, 330)]
    assert registry.newest_version(settings) == 3
    for fit in (fit1, fit2, fit3):
        kept = registry.model(settings, fit.model.version)
        assert kept.k == fit.model.k and kept.components.shape == (kept.k, 1280)
        np.testing.assert_allclose(kept.components, fit.model.components, rtol=1e-6, atol=1e-7)

    # The plots are real PNGs next to each version.
    for version in (1, 2, 3):
        for name in ("scree.png", "pc1_pc2.png"):
            png = Path(settings.pca_plots) / f"v{version}" / name
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("deletion_vectors", [False, True])
def test_a_delete_makes_the_next_refit_full(spark, tmp_path: Path, deletion_vectors: bool) -> None:
    """With deletion vectors the data files still hold the deleted rows: the full pass must then
    read the table through Delta, not file by file."""
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    if deletion_vectors:
        spark.sql(
            f"ALTER TABLE delta.`{settings.features_table}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)"
        )
    append_rows(spark, settings.features_table, synthetic_features(60, seed=4))
    refit(spark, settings, write_plots=False)
    DeltaTable.forPath(spark, settings.features_table).delete("label = 'class 0'")
    assert (lake.table_files(settings, settings.features_table) is None) == deletion_vectors
    fit = refit(spark, settings)  # the plots too: sampled through Spark when Arrow cannot read the files
    assert fit.mode == "full" and fit.model.row_count == 48 and len(fit.plots) == 2


def test_file_stats_on_the_driver_and_in_spark_tasks_equal_a_dataframe_pass(spark, tmp_path: Path) -> None:
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    for seed in (7, 8, 9):  # three commits, three or more files
        append_rows(spark, settings.features_table, synthetic_features(50, seed=seed))
    files, version = lake.table_files(settings, settings.features_table)
    assert len(files) >= 3 and version == 3
    reference, reference_ids = stats.collect_stats(table.read(spark, settings.features_table))
    on_driver = stats.file_stats(spark, settings, files)
    in_tasks = stats.file_stats(spark, settings, files, driver_bytes=0)
    for got, ids in (on_driver, in_tasks):
        assert got.n == reference.n == 150 and ids == reference_ids == {MODEL_ID}
        np.testing.assert_allclose(got.total, reference.total, rtol=0, atol=1e-12 * np.abs(reference.total).max())
        # Summation order differs: equal to float64 rounding, relative to the largest entry.
        np.testing.assert_allclose(got.outer, reference.outer, rtol=0, atol=1e-12 * np.abs(reference.outer).max())


def test_the_registry_reads_one_version_and_refuses_one_never_fitted(spark, tmp_path: Path) -> None:
    """Each version is one file: asking for one reads that file only (the others' statistics
    exclude it), whatever became of the rest."""
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    assert registry.model(settings) is None and registry.newest_version(settings) is None
    append_rows(spark, settings.features_table, synthetic_features(40, seed=10))
    refit(spark, settings, write_plots=False)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=11))
    refit(spark, settings, write_plots=False)
    assert registry.model(settings).version == 2 and registry.model(settings, 1).row_count == 40
    # Version 2's file gone from under the table: version 1 still reads, so it never opened that file.
    files = [Path(u.removeprefix("file://")) for u in lake.delta_table(settings, settings.pca_models_table).file_uris()]
    assert len(files) == 2
    next(f for f in files if _holds_version(f, 2)).unlink()
    assert registry.model(settings, 1).row_count == 40
    with pytest.raises(LookupError, match="no PCA version 9"):
        registry.model(settings, 9)


def test_fruits_pca_list_shows_every_version(spark, tmp_path: Path, capsys) -> None:
    import json

    from fruits.cli import main
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    with pytest.raises(SystemExit) as done:
        main(["pca", "list", "--table-root", settings.table_root])
    assert done.value.code == 0 and "no PCA version yet" in capsys.readouterr().out
    append_rows(spark, settings.features_table, synthetic_features(40, seed=14))
    refit(spark, settings, write_plots=False, k=3)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=15))
    refit(spark, settings, write_plots=False, k=4)
    with pytest.raises(SystemExit):
        main(["pca", "list", "--json", "--table-root", settings.table_root])
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["k"], v["row_count"]) for v in listed] == [(1, 3, 40), (2, 4, 50)]
    assert all(0 < v["explained_variance"] <= 1 for v in listed)


def _holds_version(path: Path, version: int) -> bool:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["version"]).column(0).to_pylist() == [version]


def test_a_running_stream_projects_with_each_new_model_as_it_appears(spark, settings, weights_blob) -> None:
    """The stream's writer reads the model again only when ``pca_models`` has a new version."""
    from fruits import stream

    writer = stream.BatchWriter(spark, settings, weights_blob)
    assert writer.current_pca() == (None, None)
    append_rows(spark, settings.features_table, synthetic_features(40, seed=12), model_id=weights_blob.model_id)
    first = refit(spark, settings, write_plots=False).model
    assert writer.current_pca()[0].version == first.version == 1
    append_rows(spark, settings.features_table, synthetic_features(10, seed=13), model_id=weights_blob.model_id)
    refit(spark, settings, write_plots=False)
    assert writer.current_pca()[0].version == 2


def test_periodic_mode_refits_after_enough_new_rows(spark, tmp_path: Path) -> None:
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(40, seed=5))
    fits = run_periodically(spark, settings, min_new_rows=40, poll_seconds=0.1, max_fits=1, write_plots=False)
    assert [f.model.version for f in fits] == [1]
    assert stats.pending_rows(settings) == 0
    with pytest.raises(ValueError, match="say when to refit"):
        run_periodically(spark, settings)


def test_rows_of_another_feature_model_are_refused(spark, tmp_path: Path) -> None:
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=6))
    other = table.read(spark, settings.features_table).limit(1).selectExpr("* EXCEPT (model_id)", "'other' AS model_id")
    other.select(*FEATURES.fieldNames()).write.format("delta").mode("append").save(settings.features_table)
    with pytest.raises(ValueError, match="mixes feature models"):
        refit(spark, settings, write_plots=False)


def test_rows_are_pending_when_the_log_no_longer_has_the_commits_since_the_fit(spark, tmp_path: Path) -> None:
    """Log cleanup removed the commits after the stored statistics: the periodic refit cannot count
    the new rows, so it counts every row (and the next refit is a full one)."""
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    spark.sql(f"ALTER TABLE delta.`{settings.features_table}` SET TBLPROPERTIES ('delta.checkpointInterval' = '2')")
    append_rows(spark, settings.features_table, synthetic_features(20, seed=20))
    refit(spark, settings, write_plots=False)
    for seed in (21, 22, 23):
        append_rows(spark, settings.features_table, synthetic_features(5, seed=seed))
    assert stats.pending_rows(settings) == 15
    log_dir = Path(settings.features_table) / "_delta_log"
    checkpoints = sorted(int(p.name.split(".")[0]) for p in log_dir.glob("*.checkpoint.parquet"))
    for commit in log_dir.glob("*.json"):  # what log cleanup does: commits before the last checkpoint go
        if int(commit.name.split(".")[0]) < checkpoints[-1]:
            commit.unlink()
    assert stats.pending_rows(settings) == 35
    fit = refit(spark, settings, write_plots=False)
    assert (fit.mode, fit.model.row_count) == ("full", 35) and stats.pending_rows(settings) == 0


def test_a_pca_version_is_committed_at_most_once(spark, tmp_path: Path, monkeypatch) -> None:
    """A refit that computes a version another refit has committed meanwhile (it missed the newer
    model, as one that lost its lease would) writes nothing and says so."""
    from fruits.config import Settings
    from fruits.pca import refit as refit_module

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(40, seed=20))
    refit(spark, settings, write_plots=False)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=21))
    monkeypatch.setattr(refit_module.registry, "newest_version", lambda settings, table=None: None)  # it misses v1
    with pytest.raises(RuntimeError, match="PCA version 1 was committed by another refit"):
        refit(spark, settings, full=True, write_plots=False)
    versions = [r.version for r in table.read(spark, settings.pca_models_table).select("version").collect()]
    assert versions == [1]


def test_a_scheduled_refit_skips_while_another_runs(settings, capsys) -> None:
    from fruits.cli import main
    from fruits.io.lease import Lease

    with Lease(settings, "refit"), pytest.raises(SystemExit) as done:
        main(["pca", "refit", "--table-root", settings.table_root])
    assert done.value.code == 0 and "refit skipped: another refit holds the tables" in capsys.readouterr().err


def test_a_refit_checks_its_lease_right_before_it_commits(spark, tmp_path: Path) -> None:
    """A refit whose lease was taken over commits no version."""
    from fruits.config import Settings
    from fruits.io.lease import LeaseLost

    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(20, seed=12))

    def taken_over() -> None:
        raise LeaseLost("the refit lease was taken over")

    with pytest.raises(LeaseLost):
        refit(spark, settings, write_plots=False, guard=taken_over)
    assert registry.newest_version(settings) is None
