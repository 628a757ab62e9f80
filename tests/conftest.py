"""Shared fixtures: one local AWS emulator and one Spark session for the whole test run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "fruits-sample"
WEIGHTS = ROOT / "models" / "mobilenet_v2_1.0_no_top.weights.h5"
FIXTURES = Path(__file__).parent / "fixtures"

# Local runs of the Lambda: no EMF output, quiet logs.
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    from fruits.local.emulator import LocalAWS

    with LocalAWS() as url:
        yield url


@pytest.fixture
def settings(endpoint: str, tmp_path: Path):
    """Fresh bucket, queues and local table root per test, on the shared emulator."""
    from fruits.config import Settings
    from fruits.local.emulator import provision

    suffix = uuid.uuid4().hex[:10]
    s = Settings(
        endpoint_url=endpoint,
        bucket=f"fruits-{suffix}",
        queue=f"uploads-{suffix}",
        table_root=str(tmp_path / "tables"),
        weights=str(WEIGHTS),
        batch_size=16,
    )
    provision(s, visibility_timeout=2)
    return s


@pytest.fixture(scope="session")
def spark(endpoint: str):
    from fruits.config import Settings
    from fruits.spark.session import get_spark

    session = get_spark(Settings(endpoint_url=endpoint), master="local[2, 4]", app_name="fruits-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def weights_blob():
    from fruits.featurize.build import load_weights

    return load_weights(str(WEIGHTS))
