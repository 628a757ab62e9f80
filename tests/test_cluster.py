"""The jobs exactly as infra/ deploys them, on a real multi-process Spark cluster: ``make test-cluster``.

A standalone master and two workers run as separate processes (tests/standalone.py). The stream,
the PCA refit and the maintenance job are the StartJobRun requests of the synthesized template,
mapped to ``spark-submit --master spark://...`` by the documented table in tests/standalone.py,
and run from ``make emr-artifacts``' bundle: the entry point, the packed environment on a bare
interpreter (no package of this machine's venv), the compiled model. Uploads go through the local
emulator and the ingest Lambda; the tables live on the emulator's S3 over S3A.

Not in ``make test`` (it needs the bundle, about 2 minutes to build, and a few minutes to run).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from standalone import Cluster, job_runs, python_rows_by_executor, running, submit_command
from standalone import events as events_of

from conftest import ROOT, SAMPLE
from fruits.config import Settings
from fruits.io import aws
from fruits.local import emulator, ingest, upload
from fruits.query.store import FeatureStore
from fruits.spark.bundle import MODEL_DIR, MODEL_FILE, artifact_files

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
cdk = pytest.importorskip("aws_cdk")
from aws_cdk.assertions import Template  # noqa: E402

from fruits_infra import FruitsStack, StageConfig  # noqa: E402

pytestmark = pytest.mark.cluster

BUNDLE = ROOT / "build" / "emr"
UPLOADS = 36
REGION = "eu-west-3"


@pytest.fixture(scope="module")
def template() -> dict:
    app = cdk.App(context={"aws:cdk:bundling-stacks": []})  # the job runs only: no Lambda package
    stack = FruitsStack(
        app, "fruits-qa", config=StageConfig(stage="qa", start_stream=True), env=cdk.Environment(region=REGION)
    )
    return Template.from_stack(stack).to_json()


def rows(store: FeatureStore) -> int:
    try:
        return store.sql("SELECT count(*) FROM features").rows[0][0]
    except FileNotFoundError:
        return 0


def kill_an_executor_after_the_batch_checkpoint(
    settings: Settings, cluster: Cluster, process, timeout: float = 600
) -> int | None:
    """Once the first micro-batch's scored rows are staged (the staging folder's ``_SUCCESS`` under
    the stream's checkpoint, ``batches/``) and before they are written to Delta, SIGKILL worker 1's
    executor: rows it held would be lost (``localCheckpoint`` keeps them in executors' memory) unless
    they were staged reliably."""
    s3 = aws.client("s3", settings)
    prefix = settings.checkpoint.split(f"{settings.bucket}/", 1)[1] + "/batches/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=prefix).get("Contents", [])
        if any(o["Key"].endswith("/_SUCCESS") for o in listed):
            return cluster.kill_executor(1)
        time.sleep(0.1)
    return None


def wait_for_rows(store: FeatureStore, wanted: int, process, timeout: float = 900) -> int:
    deadline, count = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and process.poll() is None and count < wanted:
        time.sleep(2)
        count = rows(store)
    return count


def test_the_templates_jobs_run_on_a_standalone_cluster(endpoint: str, template: dict, tmp_path: Path) -> None:
    artifact_files(BUNDLE)  # a clear error if make emr-artifacts has not run
    bucket = f"fruits-cluster-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        endpoint_url=endpoint,
        region=REGION,
        bucket=bucket,
        queue=f"uploads-{bucket}",
        table_root=f"s3a://{bucket}/tables",
        weights=str(BUNDLE / MODEL_DIR / MODEL_FILE),
        index_cache=str(tmp_path / "index"),
    )
    emulator.provision(settings, visibility_timeout=5)
    keys = upload.upload_images(settings, upload.sample_images(SAMPLE, per_class=2)[:UPLOADS])
    ingest.drain(settings, visibility_timeout=5)

    runs = job_runs(template, bucket)
    assert set(runs) == {"stream", "pca-refit", "maintain"}
    store = FeatureStore(settings)
    logs, events = tmp_path / "logs", tmp_path / "events"
    logs.mkdir()
    with Cluster(tmp_path / "cluster") as cluster:

        def submit(name: str):
            return submit_command(
                runs[name],
                cluster=cluster,
                bundle=BUNDLE,
                workdir=tmp_path / "run",
                extra_env={"FRUITS_ENDPOINT_URL": endpoint},
                event_log=events / name,
            )

        # The stream runs until cancelled, as on EMR: stopped once every upload has its row. An
        # executor dies between the batch's checkpoint and its write: the batch still lands whole.
        with running(submit("stream"), logs / "stream.log") as stream:
            killed = kill_an_executor_after_the_batch_checkpoint(settings, cluster, stream)
            landed = wait_for_rows(store, len(keys), stream)
            assert killed and landed == len(keys), (killed, landed, (logs / "stream.log").read_text()[-4000:])
        for name in ("pca-refit", "maintain"):
            with running(submit(name), logs / f"{name}.log") as job:
                assert job.wait(timeout=900) == 0, (logs / f"{name}.log").read_text()[-4000:]

    # One row per upload, none quarantined; one PCA version; the maintenance vacuumed the refit's
    # tables and left the stream's alone (one writer per table).
    assert sorted(r[0] for r in store.sql("SELECT key FROM features").rows) == sorted(keys)
    assert store.sql("SELECT count(*) FROM quarantine").rows[0][0] == 0
    assert [r[0] for r in store.sql("SELECT version FROM pca_models").rows] == [1]
    # The refit's job run built the similarity index on S3, from the bundle; the store answers from it.
    nearest = store.similar(keys[0], k=3)
    assert len(nearest) == 3 and keys[0] not in {n.key for n in nearest}
    assert "similarity index: built" in (logs / "pca-refit.log").read_text()
    assert f"VACUUM {settings.pca_stats_table}:" in (logs / "maintain.log").read_text()
    operations = [c["operation"] for c in store.table("features").history()]
    assert not any(op.startswith(("VACUUM", "OPTIMIZE")) for op in operations), operations

    # The executors featurized, not the driver (the share of each depends on when the kill landed);
    # the killed one was noticed.
    executors = python_rows_by_executor(events / "stream")
    print(f"images featurized, by executor (successful tasks): {executors}")
    assert executors and "driver" not in executors, executors
    assert sum(executors.values()) == len(keys), executors
    removed = [e["Removed Reason"] for e in events_of(events / "stream", "SparkListenerExecutorRemoved")]
    print(f"executors removed: {removed}")
    assert removed, "the killed executor was never removed"
