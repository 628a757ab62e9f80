"""The similarity index: segments, the refit's updates (append, merge, rebuild), the reader's tail,
restarts, a new PCA version, and the index on S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fruits import FeatureStore
from fruits.pca.refit import refit
from fruits.similarity import builder, index, read_manifest, update
from fruits.similarity.segment import Segment, new_index, write
from fruits.spark import tables as table
from helpers import append_rows, synthetic_features


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_segment_searches_finds_keys_and_gives_rows_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(300, 8)).astype(np.float32))
    keys = [f"uploads/x/{i % 250}.jpg" for i in range(300)]  # keys 0-49 twice: an overwritten upload
    rows = pa.table(
        {
            "image_id": [f"id{i}" for i in range(300)],
            "key": keys,
            "label": [None if i % 3 else "Apple" for i in range(300)],
        }
    )
    info = write(tmp_path, 1000, rows, new_index(8), vectors)
    segment = Segment.open(tmp_path, info)
    found, distances = segment.search(vectors[7], 3)
    assert found[0] == 1007 and distances[0] < 1e-3 and list(distances) == sorted(distances)
    assert segment.rows_at(np.array([1007, 1003])) == {
        "image_id": ["id7", "id3"],
        "key": keys[7:8] + keys[3:4],
        "label": [None, "Apple"],
    }
    assert sorted(segment.find("uploads/x/10.jpg")) == [1010, 1260]
    assert segment.find("uploads/x/nope.jpg") == []
    np.testing.assert_allclose(segment.vectors([1010, 1299]), vectors[[10, 299]], atol=2e-3)  # stored as f16


def exact(store: FeatureStore, key: str, k: int) -> list[str]:
    """The k nearest keys by brute force over every row, in the index's PCA version."""
    model = store._similar._view.model
    rows = store.dataset("features").dataset.to_table(columns=["key", "features"]).to_pylist()
    keys = np.array([r["key"] for r in rows])
    vectors = unit(model.project(np.array([r["features"] for r in rows], dtype=np.float32)))
    own = int(np.flatnonzero(keys == key)[0])
    distances = 1 - vectors @ vectors[own]
    distances[own] = np.inf
    return list(keys[np.argsort(distances)[:k]])


@pytest.mark.spark
def test_refits_append_merge_and_rebuild_and_readers_follow(spark, settings, monkeypatch) -> None:
    settings = settings.with_(refresh_seconds=0)  # readers look at the manifest at every query
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(200, seed=1), first=0)
    fit = refit(spark, settings, write_plots=False, k=6)
    assert fit.index.mode == "built" and fit.index.manifest.rows == 200 and fit.index.manifest.pca_version == 1
    store = FeatureStore(settings)
    assert [n.key for n in store.similar("uploads/class 3/3.jpg", k=5)] == exact(store, "uploads/class 3/3.jpg", 5)

    # 60 rows: a new PCA version, but not twice the rows: they join the index in version 1's space,
    # as a segment that merges with the first (200 <= 4 x 60).
    append_rows(spark, settings.features_table, synthetic_features(60, seed=2), first=200)
    fit = refit(spark, settings, write_plots=False, k=6)
    first = fit.index.manifest
    assert fit.model.version == 2 and fit.index.mode == "appended" and fit.index.rows_added == 60
    assert first.pca_version == 1 and [s.rows for s in first.segments] == [260]
    retired = {path for path, _ in first.retired}
    assert retired == {f"{first.build}/seg-000000000000-000000000200.{ext}" for ext in ("usearch", "arrow")}
    assert all((Path(settings.table_root) / "similarity" / path).exists() for path in retired)  # readers may hold them

    # 10 rows: a segment of their own. 5 more without a refit: the reader's tail.
    append_rows(spark, settings.features_table, synthetic_features(10, seed=3), first=260)
    assert [s.rows for s in refit(spark, settings, write_plots=False, k=6).index.manifest.segments] == [260, 10]
    append_rows(spark, settings.features_table, synthetic_features(5, seed=4), first=270)
    for key in ("uploads/class 0/265.jpg", "uploads/class 1/271.jpg", "uploads/class 2/12.jpg"):
        assert [n.key for n in store.similar(key, k=8)] == exact(store, key, 8), key
    assert len(store._similar._view.tail.keys) == 5 and store.classify("uploads/class 1/271.jpg").pca_version == 1

    # A restart opens the same index and follows the same tail.
    again = FeatureStore(settings)
    assert again.similar("uploads/class 1/271.jpg", k=8) == store.similar("uploads/class 1/271.jpg", k=8)

    # Past the grace period, the next update deletes the retired files.
    monkeypatch.setattr(builder, "GRACE_SECONDS", 0.0)
    assert update(settings).mode == "appended"
    assert not any((Path(settings.table_root) / "similarity" / path).exists() for path in retired)

    # Twice the rows a new PCA version was fitted on: a rebuild in that version, which readers switch to.
    append_rows(spark, settings.features_table, synthetic_features(300, seed=5), first=275)
    fit = refit(spark, settings, write_plots=False, k=6)
    assert fit.index.mode == "built" and fit.index.manifest.pca_version == fit.model.version == 4
    assert fit.index.manifest.rows == 575 and fit.index.manifest.build != first.build
    suggestion = store.classify("uploads/class 4/574.jpg", k=5)
    assert suggestion.pca_version == 4 and len(store._similar._view.tail.keys) == 0
    assert [n.key for n in suggestion.neighbours] == exact(store, "uploads/class 4/574.jpg", 5)
    assert not (Path(settings.table_root) / "similarity" / first.build).exists()  # its files were past the grace


@pytest.mark.spark
def test_the_index_on_s3_is_read_from_a_local_copy(spark, settings, tmp_path, monkeypatch) -> None:
    s3 = settings.with_(
        table_root=f"s3a://{settings.bucket}/tables", index_cache=str(tmp_path / "cache"), refresh_seconds=0
    )
    table.ensure_tables(spark, s3)
    append_rows(spark, s3.features_table, synthetic_features(120, seed=6))
    refit(spark, s3, write_plots=False, k=5)
    manifest = read_manifest(s3)
    assert manifest is not None and manifest.rows == 120
    store = FeatureStore(s3)
    assert [n.key for n in store.similar("uploads/class 2/7.jpg", k=4)] == exact(store, "uploads/class 2/7.jpg", 4)
    copies = sorted(p.name for p in (tmp_path / "cache").rglob("seg-*"))
    assert copies == sorted(name for s in manifest.segments for name in s.files)
    # An update that merges copies the segment it rewrites from S3; the reader's cache follows.
    append_rows(spark, s3.features_table, synthetic_features(40, seed=7), first=120)
    merged = refit(spark, s3, write_plots=False, k=5).index.manifest
    assert [s.rows for s in merged.segments] == [160] and merged.build == manifest.build
    monkeypatch.setattr(index, "CACHE_GRACE_SECONDS", 0.0)  # the older copies go at once (else after an hour)
    assert [n.key for n in store.similar("uploads/class 1/151.jpg", k=4)] == exact(store, "uploads/class 1/151.jpg", 4)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("seg-*")) == sorted(merged.segments[0].files)


def test_no_index_yet_says_what_builds_it(settings) -> None:
    with pytest.raises(LookupError, match="no similarity index yet: `fruits pca refit` builds it"):
        FeatureStore(settings).similar("uploads/a/1.jpg")


def test_a_manifest_reads_back_as_written() -> None:
    m = index.Manifest("v1-x", 1, 10, "m", 4, 7, "id", (index.SegmentInfo("seg-0", 0, 10),), "now", (("v0/a", "then"),))
    assert index.Manifest.from_json(m.to_json()) == m and json.loads(m.to_json())["features_version"] == 7


@pytest.mark.spark
def test_compaction_a_lost_segment_and_a_table_made_anew(spark, settings) -> None:
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(100, seed=8))
    refit(spark, settings, write_plots=False, k=5)
    store = FeatureStore(settings)
    # Two appends, then OPTIMIZE (the stream's compaction: files rewritten, no row changed) in the tail.
    append_rows(spark, settings.features_table, synthetic_features(10, seed=9), first=100)
    append_rows(spark, settings.features_table, synthetic_features(10, seed=10), first=110)
    spark.sql(f"OPTIMIZE delta.`{settings.features_table}`")
    assert [n.key for n in store.similar("uploads/class 0/115.jpg", k=6)] == exact(store, "uploads/class 0/115.jpg", 6)
    assert len(store._similar._view.tail.keys) == 20
    done = update(settings)
    assert done.mode == "appended" and done.rows_added == 20 and done.manifest.rows == 120

    # A segment file lost: the next update starts over rather than fail every refit.
    append_rows(spark, settings.features_table, synthetic_features(40, seed=11), first=120)
    folder = Path(settings.table_root) / "similarity" / done.manifest.build
    for segment in done.manifest.segments:
        (folder / segment.files[0]).unlink()
    again = update(settings)
    assert again.mode == "built" and "a segment is gone" in again.reason and again.manifest.rows == 160

    # The table made anew (moved aside): readers refuse the old index, the next update rebuilds.
    import shutil

    shutil.rmtree(settings.features_table)
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(30, seed=12))
    with pytest.raises(LookupError, match="made anew"):
        FeatureStore(settings).similar("uploads/class 0/5.jpg")
    anew = update(settings)
    assert anew.mode == "built" and anew.reason == "the features table was made anew" and anew.manifest.rows == 30


@pytest.mark.spark
def test_queries_from_threads_while_the_table_grows(spark, settings) -> None:
    """A service asks from several threads: each query sees one view (segments, model, tail)."""
    from concurrent.futures import ThreadPoolExecutor

    settings = settings.with_(refresh_seconds=0)
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(100, seed=13))
    refit(spark, settings, write_plots=False, k=5)
    store = FeatureStore(settings)
    with ThreadPoolExecutor(4) as pool:

        def ask(i: int) -> list:
            return [store.classify(f"uploads/class {j % 5}/{j}.jpg", k=5) for j in range(i, 100, 4)]

        asked = [pool.submit(ask, i) for i in range(4)]
        for n in range(3):  # the tail grows under the queries
            append_rows(spark, settings.features_table, synthetic_features(10, seed=14 + n), first=100 + 10 * n)
        answers = [s for f in asked for s in f.result()]
    assert len(answers) == 100 and all(len(s.neighbours) == 5 for s in answers)
