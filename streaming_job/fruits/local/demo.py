"""``fruits demo``: the whole pipeline on one machine, from uploads to a queryable table."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from ..featurize.build import load_weights
from ..pca import refit
from ..query import sql
from ..query.result import format_table
from ..spark.session import get_spark
from ..stream import job
from . import emulator, ingest, upload
from .paths import BUNDLED_WEIGHTS, DEMO_WORK, SAMPLE_IMAGES


def _step(title: str) -> Callable[[str], None]:
    started = time.monotonic()
    print(f"==> {title}", flush=True)

    def done(summary: str) -> None:
        print(f"    {summary} ({time.monotonic() - started:.1f}s)", flush=True)

    return done


def _progress(prefix: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            end = "\n" if done == total else ""
            sys.stdout.write(f"\r    {prefix} {done}/{total}{end}")
            sys.stdout.flush()

    return report


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

        files = upload.sample_images(images_dir, per_class)
        done = _step(f"uploading {len(files)} images as the app would ({settings.upload_prefix}<Class Name>/<file>)")
        upload.upload_images(settings, files, on_progress=_progress("uploaded"))
        done(f"{len(files)} uploads")

        done = _step("ingest Lambda (local event source mapping) until the queue is drained")
        stats = ingest.drain(settings)
        done(f"{stats.invocations} invocations, {stats.deleted} messages acknowledged, {stats.failed} failed")

        blob = load_weights(settings.weights)
        print(f"    weights: {blob.name} (sha256 {blob.sha256})")
        done = _step("featurizer stream (availableNow) -> Delta")
        spark = get_spark(settings)
        query_handle = job.start(spark, settings, model=blob)
        query_handle.awaitTermination()
        done("stream caught up with the uploads ledger")

        done = _step("PCA refit")
        fit = refit.refit(spark, settings)
        model = fit.model
        kept = model.explained_variance_ratio[: model.k].sum()
        done(f"version {model.version}: k={model.k} components explain {kept:.1%} of the variance, {model.row_count} rows")
        for uri in fit.plots:
            print(f"    plot: {uri}")
        if fit.index is not None and fit.index.manifest is not None:
            print(f"    similarity index: {fit.index.mode}, {fit.index.manifest.rows} rows "
                  f"({settings.table_root}/similarity)")

        counts = sql.sql(
            spark, settings,
            "SELECT label, count(*) AS images FROM features GROUP BY label ORDER BY label",
        )
        print("\n" + format_table(counts))
        sample = sql.sql(
            spark, settings,
            # features_pca: every row projected onto the newest PCA version as it is read
            "SELECT key, label, features, pca_features, pca_version FROM features_pca ORDER BY key LIMIT 5",
        )
        print("\n" + format_table(sample))
        totals = sql.sql(
            spark, settings,
            "SELECT (SELECT count(*) FROM features) AS rows, (SELECT count(DISTINCT label) FROM features) AS labels, "
            "(SELECT count(*) FROM quarantine) AS quarantined",
        )
        rows, labels, quarantined = totals.rows[0]
        dlq = ingest.dead_letter_depth(settings)
        print(
            f"\n{rows} rows across {labels} labels, {quarantined} quarantined, {dlq} dead-letter messages."
            f"\nDelta table: {settings.features_table}"
            f"\nQuery it:    .venv/bin/fruits query --table-root {settings.table_root} "
            "\"SELECT label, count(*) FROM features GROUP BY label\""
            f"\n  no JVM:    .venv/bin/fruits query --engine duckdb --table-root {settings.table_root} "
            "\"SELECT count(*) FROM features\""
            f"\n  a label:   .venv/bin/fruits classify --table-root {settings.table_root} --weights {weights} "
            f"\"{files[0][1]}\""
            f"\nPCA plots:   {settings.pca_plots}/v{model.version}/"
        )
        spark.stop()
        ok = rows + quarantined == len(files) and dlq == 0
        return 0 if ok else 1
