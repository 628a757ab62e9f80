"""The classifier that can say "unknown": fitted and versioned by the refit from reference rows only,
answering known fruits, refusing images that are no fruit, its answer stored in each new row."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE, WEIGHTS
from fruits import FeatureStore
from fruits.classifier import fit as fit_module
from fruits.classifier import registry, update
from fruits.cli import main
from fruits.config import Settings
from fruits.featurize.build import compile_model
from fruits.featurize.images import decode
from fruits.featurize.model import Featurizer
from fruits.io import lake
from fruits.local.not_fruit import not_fruit_images
from fruits.local.upload import sample_images
from fruits.pca.refit import refit
from fruits.spark import tables as table
from fruits.spark.schema import FEATURES
from fruits.stream.job import CurrentClassifier, feature_rows
from fruits_ingest.ledger import key_hash
from helpers import MODEL_ID, synthetic_features

pytestmark = pytest.mark.spark

KNOWN = 10  # classes in the first reference upload; the second adds the rest


@pytest.fixture(scope="module")
def sample_features(weights_blob) -> tuple[list[tuple[str, Path]], np.ndarray]:
    featurizer = Featurizer(compile_model(weights_blob))
    images = sample_images(SAMPLE)
    pixels = np.stack([decode(p.read_bytes()) for _, p in images])
    return images, np.concatenate([featurizer(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])


def write(
    spark, settings: Settings, keys: list[str], labels: list[str | None], features: np.ndarray, model_id: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = pd.DataFrame(
        {
            "image_id": [uuid.uuid5(uuid.NAMESPACE_URL, k).hex for k in keys],
            "bucket": settings.bucket,
            "key": keys,
            "label": labels,
            "event_date": now.date(),
            "ingested_at": now,
            "features": list(features),
            "model_id": model_id,
        }
    )
    table.frame(spark, rows, FEATURES).write.format("delta").mode("append").save(settings.features_table)


def test_versions_known_fruit_non_fruit_and_the_answer_in_the_row(
    spark, sample_features, weights_blob, tmp_path, capsys
) -> None:
    images, features = sample_features
    settings = Settings(table_root=str(tmp_path / "tables"), weights=str(WEIGHTS))
    table.ensure_tables(spark, settings)
    model_id = weights_blob.model_id
    labels = sorted({label for label, _ in images})
    first = [i for i, (label, _) in enumerate(images) if label in labels[:KNOWN]]
    rest = [i for i, (label, _) in enumerate(images) if label not in labels[:KNOWN]]

    # A first run with app uploads only: no reference rows, no classifier; the store says why.
    app_keys = [f"app/user-{i}/{i}.jpg" for i in rest[:20]]
    write(spark, settings, app_keys, [None] * 20, features[rest[:20]], model_id)
    fit = refit(spark, settings, write_plots=False)
    assert fit.classifier.mode == "none" and fit.classifier.classifier is None
    with pytest.raises(LookupError, match="no classifier yet"):
        FeatureStore(settings).classify(app_keys[0])

    # The reference set: labels from the reference prefix. Version 1 knows 10 classes.
    write(
        spark,
        settings,
        [f"uploads/{images[i][0]}/{images[i][1].name}" for i in first],
        [images[i][0] for i in first],
        features[first],
        model_id,
    )
    fit = refit(spark, settings, write_plots=False)
    v1 = fit.classifier.classifier
    assert fit.classifier.mode == "fitted" and v1.version == 1 and v1.labels == tuple(labels[:KNOWN])
    assert v1.reference_rows == len(first) and 0 < v1.threshold < 1 and v1.held_out_top1 >= 0.9
    assert v1.held_out_rejected <= 0.05

    store = FeatureStore(settings)
    # A known fruit: a reference row, answered with its own prototype left out.
    known = store.classify(f"uploads/{images[first[0]][0]}/{images[first[0]][1].name}")
    assert known.label == images[first[0]][0] and not known.unknown and known.classifier_version == 1
    assert known.candidates[0].label == known.label and known.neighbours and known.similarity < 0.9999
    # Images that are no fruit: unknown, label None, the best candidates still listed.
    for i, (kind, data) in enumerate(not_fruit_images(8, seed=3)):
        path = tmp_path / f"{kind}-{i}.png"
        path.write_bytes(data)
        answer = store.classify(path, k=3)
        assert answer.unknown and answer.label is None, (kind, answer.similarity, answer.threshold)
        assert len(answer.candidates) == 3 and answer.similarity < answer.threshold

    # A refit with no new rows, then one with app rows only: no new version, and the next refit
    # reads from where this one stopped.
    assert refit(spark, settings, write_plots=False).classifier.mode == "unchanged"
    write(spark, settings, [f"app/user-x/{i}.jpg" for i in range(5)], [None] * 5, features[rest[20:25]], model_id)
    fit = refit(spark, settings, write_plots=False)
    assert fit.classifier.mode == "unchanged" and registry.newest_version(settings) == 1
    mark = registry.read_progress(settings)
    assert (mark.classifier_version, mark.features_version) == (1, fit.model.source_table_version)

    # More reference rows: version 2 merges them into the sample; version 1 stays readable.
    write(
        spark,
        settings,
        [f"uploads/{images[i][0]}/{images[i][1].name}" for i in rest],
        [images[i][0] for i in rest],
        features[rest],
        model_id,
    )
    fit = refit(spark, settings, write_plots=False)
    v2 = fit.classifier.classifier
    assert (fit.classifier.mode, v2.version, v2.labels, fit.classifier.added) == ("fitted", 2, tuple(labels), len(rest))
    assert v2.reference_rows == len(images) and registry.classifier(settings, 1).labels == v1.labels
    assert store.classify(app_keys[0], classifier_version=1).classifier_version == 1
    with pytest.raises(SystemExit) as done:
        main(["classifier", "list", "--table-root", settings.table_root, "--json"])
    assert done.value.code == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed] == [1, 2] and listed[1]["classes"] == len(labels)

    # The stream's rows carry the answer of the classifier at ingest.
    scored = spark.createDataFrame(
        pd.DataFrame(
            {
                "image_id": ["a", "b"],
                "bucket": "b",
                "key": ["app/u/1.jpg", "app/u/2.jpg"],
                "label": None,
                "size": 1,
                "etag": "e",
                "version_id": None,
                "event_time": None,
                "event_date": dt.date.today(),
                "result": [
                    {"features": list(features[rest[0]]), "reason": None, "error": None},
                    {
                        "features": list(
                            Featurizer(compile_model(weights_blob))(decode(not_fruit_images(1)[0][1])[None])[0]
                        ),
                        "reason": None,
                        "error": None,
                    },
                ],
                "model_id": model_id,
            }
        ),
        "image_id string, bucket string, key string, label string, size long, etag string, version_id string, "
        "event_time timestamp, event_date date, result struct<features:array<float>,reason:string,error:string>, "
        "model_id string",
    )
    rows = (
        feature_rows(scored, None, CurrentClassifier(v2, registry.answer_column(spark, v2)))
        .orderBy("image_id")
        .collect()
    )
    assert [r.suggested_label for r in rows] == [images[rest[0]][0], None]
    assert [r.unknown for r in rows] == [False, True] and [r.classifier_version for r in rows] == [2, 2]
    assert 0 < rows[0].confidence <= 1
    plain = feature_rows(scored).collect()  # before the first classifier: nulls
    assert {(r.suggested_label, r.unknown, r.classifier_version) for r in plain} == {(None, None, None)}


def test_update_rules(spark, tmp_path, monkeypatch) -> None:
    """Too few reference rows, a sample that new rows do not change, another reject quantile, and a
    features table made anew."""
    settings = Settings(table_root=str(tmp_path / "tables"))
    table.ensure_tables(spark, settings)
    x = synthetic_features(40, seed=1)

    # One reference row: no classifier, and no mark (the next refit must read that row again).
    write(spark, settings, ["uploads/a/0.jpg"], ["a"], x[:1], MODEL_ID)
    assert update(spark, settings).mode == "none" and registry.read_progress(settings) is None
    # Two, of one class: a classifier that knows that class (or says unknown).
    write(spark, settings, ["uploads/a/1.jpg"], ["a"], x[1:2], MODEL_ID)
    done = update(spark, settings)
    assert (done.mode, done.version, done.classifier.labels, done.added) == ("fitted", 1, ("a",), 2)

    # The sample is full (2 a class here): rows whose hashes are above it leave the version standing.
    monkeypatch.setattr(fit_module, "PROTOTYPES_PER_CLASS", 2)
    above = [
        k
        for k in (f"uploads/a/{i}.jpg" for i in range(2, 200))
        if key_hash(uuid.uuid5(uuid.NAMESPACE_URL, k).hex) > done.classifier.prototype_hashes.max()
    ][:5]
    write(spark, settings, above, ["a"] * len(above), x[2 : 2 + len(above)], MODEL_ID)
    done = update(spark, settings)
    assert (done.mode, done.version, done.added) == ("unchanged", 1, len(above))
    assert (
        registry.read_progress(settings).features_version
        == lake.delta_table(settings, settings.features_table).version()
    )

    # Another reject quantile: a new version from the same sample, which the next refits keep.
    done = update(spark, settings, reject_quantile=0.5)
    assert (done.mode, done.version, done.classifier.reject_quantile) == ("fitted", 2, 0.5)
    assert update(spark, settings).mode == "unchanged" and registry.classifier(settings).reject_quantile == 0.5
    with pytest.raises(ValueError, match="0 <= q < 1"):
        update(spark, settings, reject_quantile=1.5)

    # A features table made anew is another table: the classifier starts over from its rows.
    shutil.rmtree(tmp_path / "tables" / "features")
    table.ensure_tables(spark, settings)
    write(
        spark, settings, ["uploads/b/0.jpg", "uploads/c/0.jpg", "uploads/c/1.jpg"], ["b", "c", "c"], x[30:33], MODEL_ID
    )
    done = update(spark, settings)
    assert (done.mode, done.version, done.classifier.labels, done.added) == ("fitted", 3, ("b", "c"), 3)
