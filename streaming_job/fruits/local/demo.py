"""``fruits demo``: the whole pipeline on one machine, from uploads to a queryable table."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import SparkSession

from ..config import Settings
from ..featurize.build import WeightsBlob, compile_model, load_weights
from ..health import pending_uploads
from ..pca import refit
from ..progress import progress_for
from ..query import sql
from ..query.result import QueryResult, format_table
from ..spark.session import get_spark
from ..stream import job
from . import emulator, ingest, upload
from .not_fruit import not_fruit_images
from .paths import BUNDLED_WEIGHTS, DEMO_WORK, SAMPLE_IMAGES
from .server import serving

APP_EVERY = 5  # one class in five has its last photo kept back for the app


def _step(title: str) -> Callable[[str], None]:
    started = time.monotonic()
    print(f"==> {title}", flush=True)

    def done(summary: str) -> None:
        print(f"    {summary} ({time.monotonic() - started:.1f}s)", flush=True)

    return done


def run(
    images_dir: Path = SAMPLE_IMAGES,
    work_dir: Path = DEMO_WORK,
    per_class: int | None = None,
    weights: str = str(BUNDLED_WEIGHTS),
) -> int:
    shutil.rmtree(work_dir, ignore_errors=True)
    table_root = work_dir / "tables"
    with emulator.LocalAWS() as endpoint:
        settings = Settings(endpoint_url=endpoint, table_root=str(table_root.resolve()), weights=weights)

        done = _step(f"local AWS emulator on {endpoint}: bucket, queue + DLQ, S3 -> SQS notification")
        emulator.provision(settings)
        done(f"s3://{settings.bucket}, {settings.queue} (DLQ {settings.dead_letter_queue})")

        everything = upload.sample_images(images_dir, per_class)
        # The last photo of every APP_EVERY-th class is kept back: the app's users upload it later.
        kept_back = {label: path for label, path in everything}
        app_photos = [(label, kept_back[label]) for label in sorted(kept_back)[::APP_EVERY]]
        files = [image for image in everything if image not in app_photos]
        done = _step(
            f"uploading {len(files)} labelled reference photos ({settings.reference_prefixes[0]}<Class Name>/<file>)"
        )
        with progress_for(settings, "upload", len(files), "image") as bar:
            upload.upload_images(settings, files, on_progress=lambda done, _: bar.advance_to(done))
        done(f"{len(files)} uploads")

        blob = load_weights(settings.weights)
        print(f"    weights: {blob.name} (sha256 {blob.sha256})")
        spark = get_spark(settings)
        _ingest_and_stream(settings, spark, blob)

        done = _step("PCA refit")
        with progress_for(settings, "refit", len(refit.STEPS), "step", spark) as bar:
            fit = refit.refit(spark, settings, on_step=bar.stage)
        model = fit.model
        kept = model.explained_variance_ratio[: model.k].sum()
        done(
            f"version {model.version}: k={model.k} components explain {kept:.1%} of the variance, "
            f"{model.row_count} rows"
        )
        for uri in fit.plots:
            print(f"    plot: {uri}")
        if fit.index is not None and fit.index.manifest is not None:
            print(
                f"    similarity index: {fit.index.mode}, {fit.index.manifest.rows} rows "
                f"({settings.table_root}/similarity)"
            )
        if fit.classifier is not None and (c := fit.classifier.classifier) is not None:
            print(
                f"    classifier: version {c.version}, {len(c.labels)} classes, threshold {c.threshold:.3f} "
                f"(held-out top-1 {c.held_out_top1:.3f}, {c.held_out_rejected:.1%} of held-out photos rejected)"
            )

        others = not_fruit_images(3, seed=5)
        done = _step(
            f"the app uploads {len(app_photos)} photos of known fruits and {len(others)} that are no fruit "
            f"({settings.app_prefix}<user>/<n>.<suffix>)"
        )
        app_keys = upload.upload_app_photos(
            settings,
            [(path.suffix, path.read_bytes()) for _, path in app_photos] + [(".png", data) for _, data in others],
        )
        done(f"{len(app_keys)} uploads")
        _ingest_and_stream(settings, spark, blob)
        truth = [f"a photo of {label}" for label, _ in app_photos] + [f"no fruit: {kind}" for kind, _ in others]
        answers = sql.sql(
            spark,
            settings,
            "SELECT key, suggested_label, round(CAST(confidence AS DOUBLE), 2) AS confidence, unknown, "
            f"classifier_version FROM features WHERE key LIKE '{settings.app_prefix}%'",
        )
        by_key = {row[0]: row for row in answers.rows}
        print("\nthe app's photos, answered at ingest (stored in their rows):")
        print(
            format_table(
                QueryResult(
                    ["key", "what it is", *answers.columns[1:]],
                    [(key, what, *by_key[key][1:]) for key, what in zip(app_keys, truth) if key in by_key],
                    {},
                )
            )
        )

        counts = sql.sql(
            spark,
            settings,
            "SELECT label, count(*) AS images FROM features WHERE label IS NOT NULL GROUP BY label ORDER BY label",
        )
        print("\n" + format_table(counts))
        sample = sql.sql(
            spark,
            settings,
            # features_pca: every row projected onto the newest PCA version as it is read
            "SELECT key, label, features, pca_features, pca_version FROM features_pca ORDER BY key LIMIT 5",
        )
        print("\n" + format_table(sample))
        totals = sql.sql(
            spark,
            settings,
            "SELECT (SELECT count(*) FROM features) AS rows, (SELECT count(DISTINCT label) FROM features) AS labels, "
            "(SELECT count(*) FROM quarantine) AS quarantined",
        )
        rows, labels, quarantined = totals.rows[0]
        dlq = ingest.dead_letter_depth(settings)
        print(
            f"\n{rows} rows across {labels} labels, {quarantined} quarantined, {dlq} dead-letter messages."
            f"\nDelta table: {settings.features_table}"
            f"\nQuery it:    .venv/bin/fruits query --table-root {settings.table_root} "
            '"SELECT label, count(*) FROM features GROUP BY label"'
            f"\n  no JVM:    .venv/bin/fruits query --engine duckdb --table-root {settings.table_root} "
            '"SELECT count(*) FROM features"'
            f"\n  a fruit?:  .venv/bin/fruits classify --table-root {settings.table_root} --weights {weights} "
            f'"{app_photos[0][1]}"'
            f"\nPCA plots:   {settings.pca_plots}/v{model.version}/"
        )
        spark.stop()
        _ask_over_http(
            settings,
            blob,
            work_dir,
            [(f"a photo of {label}", path.read_bytes()) for label, path in app_photos]
            + [(f"no fruit: {kind}", data) for kind, data in others],
        )
        ok = rows + quarantined == len(files) + len(app_keys) and dlq == 0
        return 0 if ok else 1


def _ask_over_http(settings: Settings, blob: WeightsBlob, work_dir: Path, photos: list[tuple[str, bytes]]) -> None:
    """The app's backend's question, over HTTP: ``fruits serve`` over the demo's tables."""
    model = compile_model(blob).save(work_dir / "model.tflite")  # the server needs no TensorFlow
    done = _step("the app's backend asks over HTTP: fruits serve, POST /v1/classify")
    env = {
        **os.environ,
        "FRUITS_ENDPOINT_URL": settings.endpoint_url or "",
        "FRUITS_TABLE_ROOT": settings.table_root,
        "FRUITS_WEIGHTS": str(model),
    }
    with serving(env) as url:
        for what, data in photos:
            asked = urllib.request.Request(
                f"{url}/v1/classify",
                data=data,
                headers={"Content-Type": "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"},
            )
            with urllib.request.urlopen(asked, timeout=60) as answer:
                found = json.loads(answer.read())
            said = "unknown" if found["unknown"] else f"{found['label']} (confidence {found['confidence']:.2f})"
            print(f"    {what:32} -> {said}, classifier v{found['classifier_version']}")
    done(f"{len(photos)} answers from {url}")
    print(
        f"    try it:  .venv/bin/fruits serve --table-root {settings.table_root} --weights {model}\n"
        "    then:    curl -X POST --data-binary @photo.jpg -H 'Content-Type: image/jpeg' "
        "http://127.0.0.1:8080/v1/classify\n"
        "    the API's page: http://127.0.0.1:8080/docs"
    )


def _ingest_and_stream(settings: Settings, spark: SparkSession, blob: WeightsBlob) -> None:
    done = _step("ingest Lambda (local event source mapping) until the queue is drained")
    with progress_for(settings, "ingest", ingest.backlog(settings), "message") as bar:
        stats = ingest.drain(settings, on_progress=lambda now: bar.advance_to(now.deleted))
    done(f"{stats.invocations} invocations, {stats.deleted} messages acknowledged, {stats.failed} failed")
    done = _step("featurizer stream (availableNow) -> Delta")
    waiting, read = pending_uploads(settings), job.RowsRead()  # counted before the stream reads any
    with progress_for(settings, "stream", waiting, "upload", spark) as bar:
        query = job.start(spark, settings, model=blob)
        while not query.awaitTermination(1):
            bar.advance_to(read(query))
        bar.advance_to(read(query))
    done("stream caught up with the uploads ledger")
