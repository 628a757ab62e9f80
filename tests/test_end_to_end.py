"""One flow through every real component: upload -> S3 event -> SQS -> Lambda -> uploads ledger ->
Spark stream (S3A) -> Delta on S3 (emulator) -> PCA refit (full, then incremental) -> SQL and the
JVM-free store -> app photos answered by the classifier at ingest -> the HTTP API over the same tables."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import SAMPLE
from fruits import FeatureStore, stream
from fruits.io import lake
from fruits.local import ingest, upload
from fruits.local.not_fruit import not_fruit_images
from fruits.local.server import serving
from fruits.pca import stats as pca_stats
from fruits.pca.refit import refit
from fruits.query.sql import sql as spark_sql
from helpers import fruits_env

pytestmark = pytest.mark.spark


def test_uploads_become_one_delta_row_each(spark, settings) -> None:
    settings = settings.with_(table_root=f"s3a://{settings.bucket}/tables")  # Delta over S3A too
    images = upload.sample_images(SAMPLE, per_class=1)[:20]
    keys = upload.upload_images(settings, images)

    stats = ingest.drain(settings, visibility_timeout=5)
    assert stats.failed == 0

    stream.start(spark, settings).awaitTermination()
    model = refit(spark, settings).model

    # features_pca: the rows (ingested before the first fit) projected onto it as they are read.
    result = spark_sql(
        spark, settings, "SELECT key, label, features, pca_features, pca_version, model_id FROM features_pca"
    )
    rows = {r[0]: r for r in result.rows}
    assert sorted(rows) == sorted(keys) and len(result.rows) == len(keys)
    for label, path in images:
        _, row_label, features, pca_features, pca_version, model_id = rows[f"uploads/{label}/{path.name}"]
        assert row_label == label
        assert len(features) == 1280 and all(isinstance(v, float) for v in features)
        assert pca_version == model.version and len(pca_features) == model.k
        assert model_id.endswith(":e68a3d0b88d3a2e292ee89e9fc099e8ce65f71b700dd49284a12296acc8596d0")
    assert spark_sql(spark, settings, "SELECT count(*) FROM quarantine").rows == [(0,)]
    assert ingest.dead_letter_depth(settings) == 0

    # Uploads after the refit are projected with the current model as they are ingested.
    late = upload.sample_images(SAMPLE, per_class=2)[1::2][:2]
    upload.upload_images(settings, late)
    ingest.drain(settings, visibility_timeout=5)
    stream.start(spark, settings).awaitTermination()
    projected = spark_sql(
        spark,
        settings,
        f"SELECT count(*) FROM features WHERE pca_version = {model.version} AND size(pca_features) = {model.k}",
    )
    assert projected.rows == [(len(late),)]  # the earlier rows keep what they were written with

    # The PCA statistics read from S3 with Arrow, on the driver and in Spark tasks (as a large
    # table is on a cluster), agree; the incremental refit reads only the late rows.
    files, _ = lake.table_files(settings, settings.features_table)
    on_driver, in_tasks = (pca_stats.file_stats(spark, settings, files, driver_bytes=b)[0] for b in (2**40, 0))
    assert on_driver.n == in_tasks.n == len(keys) + len(late)
    np.testing.assert_allclose(in_tasks.outer, on_driver.outer, rtol=0, atol=1e-9 * np.abs(on_driver.outer).max())
    fit = refit(spark, settings, write_plots=False)
    assert fit.mode == "incremental" and fit.rows_read == len(late) and fit.model.version == model.version + 1
    model = fit.model

    # The JVM-free store reads the same tables over the emulator's S3: same rows, one model version.
    store = FeatureStore(settings)
    assert store.sql("SELECT count(*), max(pca_version) FROM features").rows == [
        (len(keys) + len(late), model.version - 1)
    ]
    assert store.pca_model().version == model.version  # similar() projects the older rows itself
    label, path = images[0]
    assert store.status(f"uploads/{label}/{path.name}").state == "processed"
    assert store.similar(f"uploads/{label}/{path.name}", k=3)[0].key != f"uploads/{label}/{path.name}"
    # In the uploads ledger, not yet streamed: pending.
    pending = upload.upload_images(settings, upload.sample_images(SAMPLE, per_class=3)[2::3][:1])[0]
    ingest.drain(settings, visibility_timeout=5)
    status = store.status(pending)
    assert status.state == "pending" and "in the uploads ledger since" in status.detail
    assert status.rows[0]["image_id"] and status.rows[0]["key"] == pending
    assert store.status("uploads/never/uploaded.jpg").state == "unknown"

    # App photos (no label in the key): the stream answers them with the newest classifier at ingest.
    classifier = fit.classifier.classifier
    assert fit.classifier.mode == "fitted" and classifier.version == 2 and len(classifier.labels) == len(keys)
    photo = upload.sample_images(SAMPLE, per_class=4)[3::4][0][1]  # a new photo of the first class
    app_keys = upload.upload_app_photos(
        settings, [(photo.suffix, photo.read_bytes()), (".png", not_fruit_images(1, seed=2)[0][1])]
    )
    ingest.drain(settings, visibility_timeout=5)
    stream.start(spark, settings).awaitTermination()
    answers = {
        r[0]: r[1:]
        for r in spark_sql(
            spark,
            settings,
            "SELECT key, label, suggested_label, unknown, "
            "classifier_version, confidence FROM features WHERE key LIKE 'app/%'",
        ).rows
    }
    assert sorted(answers) == sorted(app_keys)
    assert answers[app_keys[1]][:4] == (None, None, True, classifier.version)  # no fruit: unknown
    fruit = answers[app_keys[0]]
    assert fruit[0] is None and fruit[2] is not None and fruit[3] == classifier.version and 0 < fruit[4] <= 1
    assert (fruit[1] is None) == fruit[2]

    # The HTTP API over the same tables on S3: the stream's stored answer, the answer to the photo
    # itself (the same classifier, the same features: the same answer).
    with serving(fruits_env(settings)) as url:

        def get(path: str) -> dict:
            with urllib.request.urlopen(f"{url}{path}", timeout=60) as answer:
                return json.loads(answer.read())

        stored = get(f"/v1/uploads/{urllib.parse.quote(app_keys[0], safe='')}")
        assert stored["state"] == "processed" and stored["label"] is None
        assert (stored["suggested_label"], stored["unknown"]) == fruit[1:3]
        asked = urllib.request.Request(
            f"{url}/v1/classify", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}
        )
        with urllib.request.urlopen(asked, timeout=60) as answer:
            answered = json.loads(answer.read())
        assert (answered["label"], answered["unknown"], answered["classifier_version"]) == (
            fruit[1],
            fruit[2],
            classifier.version,
        )
