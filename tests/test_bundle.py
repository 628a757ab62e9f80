"""The jobs' bundle (``fruits.spark.bundle``): what goes into the packed environment, and the
upload to where infra/ points the jobs. ``make test-cluster`` runs the real bundle on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from fruits.spark import bundle
from fruits.spark.release import DELTA_VERSION


def test_the_environment_holds_the_runtime_only() -> None:
    wanted = {r.split("==")[0] for r in bundle.runtime_requirements()}
    assert {
        "numpy",
        "pyarrow",
        "pandas",
        "pillow",
        "boto3",
        "ai-edge-litert",
        "deltalake",
        "pydantic-settings",
    } <= wanted
    # The cluster's Spark provides pyspark; the model comes compiled; the emulator and tests stay here.
    assert not wanted & {"pyspark", "py4j", "tensorflow", "keras", "moto", "pytest", "aws-cdk-lib"}
    assert f"delta-spark=={DELTA_VERSION}" in bundle.runtime_requirements()


def fake_bundle(folder: Path) -> Path:
    for relative in ("fruits_job.py", "pyenv.tar.gz", "model/mobilenet_v2.tflite", "model/mobilenet_v2.json"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(relative.encode())
    return folder


def test_a_missing_artifact_is_named_with_what_to_run(tmp_path: Path) -> None:
    (fake_bundle(tmp_path) / "pyenv.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"pyenv\.tar\.gz.*make emr-artifacts"):
        bundle.artifact_files(tmp_path)


def test_deploy_artifacts_uploads_where_the_jobs_look(settings, tmp_path: Path) -> None:
    from fruits.cli import main
    from fruits.io import aws

    fake_bundle(tmp_path / "emr")
    with pytest.raises(SystemExit) as done:
        main(
            [
                "deploy-artifacts",
                "--from",
                str(tmp_path / "emr"),
                "--endpoint-url",
                settings.endpoint_url,
                "--bucket",
                settings.bucket,
            ]
        )
    assert done.value.code == 0
    listed = aws.client("s3", settings).list_objects_v2(Bucket=settings.bucket, Prefix=bundle.ARTIFACTS)
    # The keys the template's job runs name (tests/test_infra.py checks the template side).
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        "artifacts/fruits_job.py",
        "artifacts/model/mobilenet_v2.json",
        "artifacts/model/mobilenet_v2.tflite",
        "artifacts/pyenv.tar.gz",
    ]
