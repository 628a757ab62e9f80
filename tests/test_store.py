"""The JVM-free store: DuckDB SQL with time travel, similar images, label suggestions, status."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE, WEIGHTS
from fruits import FeatureStore
from fruits.cli import main
from fruits.config import Settings
from fruits.featurize.build import compile_model
from fruits.featurize.images import decode
from fruits.featurize.model import Featurizer
from fruits.local.upload import sample_images
from fruits.pca.model import PcaModel
from fruits.pca.refit import refit
from fruits.query.sql import sql
from fruits.spark import tables as table
from fruits.spark.schema import FEATURES, QUARANTINE

pytestmark = pytest.mark.spark

# Top-1 accuracy the label suggestion must reach on held-out sample images. The split is by file
# name: the first 8 of each class train, the other 4 (mostly the "r_" series, the fruit turned on
# another axis) are held out, so the test sees new views rather than neighbouring frames. Measured
# here with k=5: 86/100 with the pretrained weights (the misses are look-alikes: blueberry vs grape
# blue, apricot vs tomato, avocado vs mango), 8/100 with random weights; chance is 4/100. An
# interleaved split (every third frame held out) scores 99/100, which would flatter the engine.
# 0.75 leaves room for a new sample or weights release, and still fails a real regression
# (random or mismatched weights, broken preprocessing) by a wide margin.
ACCURACY_FLOOR = 0.75
TRAIN_PER_CLASS = 8


@pytest.fixture(scope="module")
def sample_split(weights_blob):
    """Features of the sample: the first 8 images of each class to train, the rest held out."""
    featurizer = Featurizer(compile_model(weights_blob))
    by_label: dict[str, list[Path]] = {}
    for label, path in sample_images(SAMPLE):
        by_label.setdefault(label, []).append(path)
    train, held_out = [], []
    for label, paths in sorted(by_label.items()):
        train += [(label, p) for p in paths[:TRAIN_PER_CLASS]]
        held_out += [(label, p) for p in paths[TRAIN_PER_CLASS:]]
    pixels = np.stack([decode(p.read_bytes()) for _, p in train])
    features = np.concatenate([featurizer(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    return train, features, held_out


def write_features(
    spark,
    settings: Settings,
    images: list[tuple[str, Path]],
    features: np.ndarray,
    model_id: str,
    pca: PcaModel | None = None,
    vectors: np.ndarray | None = None,
) -> None:
    """Append rows as the stream does: projected with ``pca`` if given (the newest model at ingest),
    or carrying ``vectors`` as their projection onto it."""
    now = dt.datetime.now(dt.UTC)
    rows = pd.DataFrame(
        {
            "image_id": [f"id-{i}" for i in range(len(images))],
            "bucket": settings.bucket,
            "key": [f"uploads/{label}/{p.name}" for label, p in images],
            "label": [label for label, _ in images],
            "size": 1,
            "etag": "e",
            "version_id": None,
            "event_time": now,
            "event_date": now.date(),
            "ingested_at": now,
            "features": list(features),
            "model_id": model_id,
            "pca_features": None if pca is None else list(pca.project(features) if vectors is None else vectors),
            "pca_version": None if pca is None else pca.version,
        }
    )
    table.frame(spark, rows, FEATURES).write.format("delta").mode("append").save(settings.features_table)


@pytest.fixture(scope="module")
def store_settings(spark, sample_split, weights_blob, tmp_path_factory) -> Settings:
    train, features, _ = sample_split
    settings = Settings(
        table_root=str(tmp_path_factory.mktemp("store") / "tables"),
        weights=str(WEIGHTS),
        endpoint_url="http://127.0.0.1:9",
    )  # status must not need S3 for rows in the tables
    table.ensure_tables(spark, settings)
    write_features(spark, settings, train, features, weights_blob.model_id)
    refit(spark, settings, write_plots=False)
    return settings


def test_classify_held_out_images_above_the_floor(store_settings, sample_split) -> None:
    """The classifier (fitted by the refit on the 200 training rows) names new views of known fruits:
    its best candidate, and its label when it does not say unknown."""
    _, _, held_out = sample_split
    store = FeatureStore(store_settings)
    suggestions = [store.classify(path, k=5) for _, path in held_out]
    best = sum(s.candidates[0].label == label for s, (label, _) in zip(suggestions, held_out)) / len(held_out)
    answered = [(s, label) for s, (label, _) in zip(suggestions, held_out) if not s.unknown]
    print(
        f"\nclassify on {len(held_out)} held-out sample images: best candidate right {best:.1%}, "
        f"{len(answered)} answered, {sum(s.label == label for s, label in answered)} of them right"
    )
    assert len(held_out) == 100 and best >= ACCURACY_FLOOR
    assert sum(s.label == label for s, label in answered) >= ACCURACY_FLOOR * len(answered)
    for s in suggestions:
        assert s.classifier_version == 1 and s.pca_version == 1 and len(s.neighbours) == 5
        assert (s.label is None) == s.unknown == (s.similarity < s.threshold)
        assert s.similarity == max(c.similarity for c in s.candidates) and 0 < s.confidence <= 1
        assert all(n.label is not None for n in s.neighbours)


def test_leave_one_out_through_the_index_is_as_good_as_exact_search(store_settings, sample_split) -> None:
    """``similar`` of a row leaves the row out: its 5 nearest labelled rows through the similarity
    index, against exact cosine search in the same PCA version."""
    train, features, _ = sample_split
    store = FeatureStore(store_settings)
    keys = [f"uploads/{label}/{p.name}" for label, p in train]
    through_index = [{n.key for n in store.similar(key, k=5, labelled_only=True)} for key in keys]
    vectors = store.pca_model().project(features)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for i, got in enumerate(through_index):
        distances = 1.0 - unit @ unit[i]
        distances[i] = np.inf
        found += len(got & {keys[j] for j in np.argsort(distances)[:5]})
    recall = found / (5 * len(keys))
    print(f"\nleave-one-out recall@5 through the index on {len(keys)} rows: {recall:.3f}")
    assert recall >= 0.95


def test_similar_by_key_finds_its_class_and_leaves_itself_out(store_settings, sample_split) -> None:
    train, _, _ = sample_split
    store = FeatureStore(store_settings)
    label, path = train[0]
    key = f"uploads/{label}/{path.name}"
    neighbours = store.similar(key, k=3)
    assert len(neighbours) == 3 and key not in {n.key for n in neighbours}
    assert neighbours[0].label == label
    assert [n.distance for n in neighbours] == sorted(n.distance for n in neighbours)
    # The same image as a local file is at distance ~0 from its own row.
    assert store.similar(path, k=1)[0].key == key and store.similar(path, k=1)[0].distance < 1e-4
    with pytest.raises(KeyError, match="not in the features table"):
        store.similar("uploads/nope.jpg")


def test_rows_on_other_pca_versions_are_projected_at_query_time(
    spark, store_settings, sample_split, weights_blob
) -> None:
    """A stream batch written before the newest PCA version is still comparable."""
    train, features, _ = sample_split
    settings = store_settings.with_(table_root=store_settings.table_root + "-stale")
    table.ensure_tables(spark, settings)
    write_features(spark, settings, train, features, weights_blob.model_id)
    refit(spark, settings, write_plots=False)
    store = FeatureStore(settings)
    newest = store.pca_model()
    label, path = train[0]
    # The first image again with no vector (projected here, as the original rows are), and a row on
    # the newest version whose stored vector is the first image's over another image's features:
    # the store takes a stored vector as it is.
    write_features(spark, settings, train[:1], features[:1] * 1.0, weights_blob.model_id)
    write_features(
        spark,
        settings,
        [("Stored", path)],
        features[1:2],
        weights_blob.model_id,
        pca=newest,
        vectors=newest.project(features[:1]),
    )
    nearest = store.similar(path, k=3)
    assert sorted(n.key for n in nearest) == sorted(
        [f"uploads/{label}/{path.name}"] * 2 + [f"uploads/Stored/{path.name}"]
    )
    assert all(n.distance < 1e-4 for n in nearest)

    # Another append: the next look reads that commit only (the index's tail), and finds its row.
    manifest = store._similar._view.manifest
    write_features(spark, settings, [("Again", path)], features[:1], weights_blob.model_id)
    assert f"uploads/Again/{path.name}" in {n.key for n in store.similar(path, k=4)}
    assert store._similar._view.manifest == manifest and len(store._similar._view.tail.keys) == 3


def test_features_pca_is_the_exact_projection_in_spark_sql_and_duckdb(
    spark, store_settings, sample_split, weights_blob, capsys
) -> None:
    """``features_pca`` has every row in one chosen PCA space, whatever the stream projected it with
    at ingest: (x - mean) @ components.T of that version, in Spark SQL and in the JVM-free store."""
    train, features, _ = sample_split
    settings = store_settings.with_(table_root=store_settings.table_root + "-views")
    table.ensure_tables(spark, settings)
    write_features(spark, settings, train[:100], features[:100], weights_blob.model_id)
    v1 = refit(spark, settings, write_plots=False, k=5).model
    write_features(spark, settings, train[100:], features[100:], weights_blob.model_id, pca=v1)  # on v1
    v2 = refit(spark, settings, write_plots=False, k=7).model
    by_key = {f"uploads/{label}/{p.name}": x for (label, p), x in zip(train, features)}
    statement = "SELECT key, pca_features, pca_version FROM features_pca"
    store = FeatureStore(settings)
    for model, asked in ((v2, None), (v1, 1)):
        for engine, rows in (
            ("spark", sql(spark, settings, statement, pca_version=asked).rows),
            ("duckdb", store.sql(statement, pca_version=asked).rows),
        ):
            assert len(rows) == len(train) and {r[2] for r in rows} == {model.version}, engine
            got = np.array([r[1] for r in rows])
            expected = model.project(np.stack([by_key[r[0]] for r in rows]))
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=engine)
    with pytest.raises(LookupError, match="no PCA version 3"):
        store.sql(statement, pca_version=3)
    # A row of another feature model has no vector in this space.
    write_features(spark, settings, [("Other", train[0][1])], features[:1], "another-feature-model")
    other = "SELECT pca_features FROM features_pca WHERE model_id = 'another-feature-model'"
    assert sql(spark, settings, other).rows == store.sql(other).rows == [(None,)]
    # The command line passes the version through.
    with pytest.raises(SystemExit):
        main(
            [
                "query",
                "--engine",
                "duckdb",
                "--pca-version",
                "1",
                "--json",
                "--table-root",
                settings.table_root,
                "SELECT DISTINCT pca_version, len(pca_features) AS k FROM features_pca WHERE pca_features IS NOT NULL",
            ]
        )
    assert json.loads(capsys.readouterr().out)["rows"] == [{"pca_version": 1, "k": v1.k}]


def test_duckdb_sql_reads_the_versions_and_time_travels(store_settings) -> None:
    store = FeatureStore(store_settings)
    result = store.sql("SELECT count(*) AS n, count(DISTINCT label) AS labels FROM features")
    assert result.rows == [(200, 25)]
    assert result.versions["features"] == 1 and result.versions["pca_models"] == 1  # the refit wrote no features
    assert store.sql("SELECT count(*) FROM features", as_of_version=0).rows == [(0,)]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_text('/etc/hostname')",
        "COPY (SELECT 1 AS x) TO '{out}' (FORMAT csv)",
        "SET enable_external_access = true",
        "ATTACH '{out}.db' AS other",
        "CREATE TABLE t AS SELECT 1 AS x",
        "SELECT 1; SELECT 2",
    ],
)
def test_sql_sees_the_tables_and_nothing_else(store_settings, tmp_path, statement: str) -> None:
    """A user's SQL passed through reads no local file, writes none, and cannot turn that back on."""
    from fruits.query.result import QueryError

    out = tmp_path / "x.csv"
    with pytest.raises(QueryError):
        FeatureStore(store_settings).sql(statement.format(out=out))
    assert not out.exists() and not out.with_name("x.csv.db").exists()


def test_a_duckdb_query_is_bounded_in_time_and_memory(store_settings) -> None:
    """One user's query cannot hold or exhaust the process: stopped past its time, refused past its
    memory, each with a message that names the setting."""
    from fruits.query.result import QueryLimitError

    slow = FeatureStore(store_settings.with_(query_timeout_seconds=0.5))
    started = time.monotonic()
    with pytest.raises(QueryLimitError, match="FRUITS_QUERY_TIMEOUT_SECONDS"):
        slow.sql("SELECT count(*) FROM range(1000000000000) a")
    assert time.monotonic() - started < 30
    small = FeatureStore(store_settings.with_(query_memory_limit="50MB"))
    with pytest.raises(QueryLimitError, match="FRUITS_QUERY_MEMORY_LIMIT"):
        small.sql("SELECT list(range) FROM range(100000000)")
    assert slow.sql("SELECT count(*) FROM features").rows == [(200,)]  # the store goes on


def test_status_of_processed_quarantined_and_unknown_keys(spark, store_settings, sample_split) -> None:
    train, _, _ = sample_split
    now = dt.datetime.now(dt.UTC)
    bad = pd.DataFrame(
        [
            {
                "image_id": "q1",
                "bucket": "b",
                "key": "uploads/Kiwi/broken.jpg",
                "etag": "e",
                "version_id": None,
                "event_date": now.date(),
                "reason": "truncated_or_corrupt",
                "error": "cannot decode",
                "quarantined_at": now,
                "message_id": "m",
            }
        ]
    )
    spark.createDataFrame(bad, QUARANTINE).write.format("delta").mode("append").save(store_settings.quarantine_table)
    store = FeatureStore(store_settings)
    label, path = train[3]
    processed = store.status(f"uploads/{label}/{path.name}")
    assert processed.state == "processed" and processed.rows[0]["label"] == label
    bucket = processed.rows[0]["bucket"]
    assert store.status(f"s3://{bucket}/uploads/{label}/{path.name}").state == "processed"
    # The same key in another bucket is another object: not this one's row.
    assert store.status(f"s3://other-{bucket}/uploads/{label}/{path.name}").state == "unknown"
    quarantined = store.status("uploads/Kiwi/broken.jpg")
    assert quarantined.state == "quarantined" and "truncated_or_corrupt" in quarantined.detail
    # These tables were written without the Lambda: the answer says there is no uploads ledger yet.
    unknown = store.status("uploads/Kiwi/never.jpg")
    assert unknown.state == "unknown" and "no uploads ledger" in unknown.detail
    # An upload the Lambda skips is visible as such, not unknown forever.
    skipped = store.status("uploads/Kiwi/notes.TXT")
    assert skipped.state == "skipped" and "not an image suffix" in skipped.detail
