"""``make bench-scale``'s table builder: at a tiny size, the history it writes is one the real
readers accept (Spark, the stream's exactly-once check, the refit, the JVM-free store), and a cache is reused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import ROOT
from fruits.config import Settings
from fruits.pca.refit import refit
from fruits.query.store import FeatureStore
from fruits.spark import tables as table
from fruits.spark.schema import FEATURES, PARTITION
from fruits.stream.written import WrittenImages

sys.path.insert(0, str(ROOT / "benchmarks"))
import scale_tables

pytestmark = pytest.mark.spark
ROWS = 500
MODEL_ID = "mobilenet_v2:bench-scale-test"


def test_the_builder_writes_a_history_the_pipeline_reads(spark, tmp_path: Path, caplog) -> None:
    cache = tmp_path / "cache"
    built = scale_tables.cached_tables(spark, Settings(), ROWS, MODEL_ID, cache)
    assert not built.reused and built.rows == ROWS and 1 <= built.k < 100
    with caplog.at_level("INFO", logger="bench-scale"):
        again = scale_tables.cached_tables(spark, Settings(), ROWS, MODEL_ID, cache)
    assert again.reused and again.root == built.root and again.k == built.k
    assert "reusing the cached tables" in caplog.text

    settings = Settings(table_root=str(tmp_path / "run"))
    scale_tables.copy_tables(built.root, Path(settings.table_root))

    # Spark reads the schema of the stream's own tables; the refit left the rows as written.
    fresh = Settings(table_root=str(tmp_path / "fresh"))
    table.ensure_tables(spark, fresh)
    rows = table.read(spark, settings.features_table)
    assert rows.schema == table.read(spark, fresh.features_table).schema
    assert rows.columns == FEATURES.fieldNames()
    assert rows.count() == ROWS
    assert {r.pca_version for r in rows.select("pca_version").distinct().collect()} == {None}
    assert table.read(spark, settings.quarantine_table).count() == 0

    # The stream would take these uploads as processed.
    assert all(
        WrittenImages(settings, spark).among(rows.select("image_id", PARTITION, "event_time").toArrow()).to_pylist()
    )

    # The JVM-free store: SQL, and neighbours from the same synthetic cluster.
    store = FeatureStore(settings)
    assert store.sql("SELECT count(*) FROM features").rows == [(ROWS,)]
    key = scale_tables.synthetic_key(7)
    neighbours = store.similar(key, k=5)
    assert len(neighbours) == 5 and all(n.label == "class-7" for n in neighbours)
    assert store.status(key).state == "processed"

    # More history, as the benchmark appends before each refit: the refit reads only those rows.
    scale_tables.append_synthetic(settings, ROWS, 50, MODEL_ID)
    fit = refit(spark, settings, write_plots=False)
    assert (fit.mode, fit.rows_read, fit.model.version) == ("incremental", 50, 2)

    # The cached history is untouched by the run's writes.
    assert table.read(spark, str(built.root / "features")).count() == ROWS
