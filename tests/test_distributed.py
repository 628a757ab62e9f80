"""The featurizer on Spark ``local-cluster``: two worker JVMs, so the broadcast model, the pandas
UDF and the Delta writes cross process boundaries as on a real cluster. It runs from the compiled
model artifact (``fruits model compile``) with TensorFlow made unimportable, as a cluster without
TensorFlow or internet would. Its rows must equal a ``local[*]`` run over the same uploads ledger,
feature for feature."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SAMPLE
from fruits import stream
from fruits.local import upload
from fruits.query.sql import sql as spark_sql
from helpers import fruits_env

pytestmark = pytest.mark.spark


def unimportable(folder, *packages: str) -> str:
    """A folder that, first on PYTHONPATH, makes ``packages`` fail to import."""
    for name in packages:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this cluster')\n")
    return str(folder)


def test_local_cluster_run_matches_local_run(spark, settings, weights_blob, tmp_path) -> None:
    from fruits.featurize.build import compile_model

    artifact = compile_model(weights_blob).save(tmp_path / "model" / "mobilenet_v2.tflite")
    upload.upload_images(settings, upload.sample_images(SAMPLE, per_class=1)[:8])
    from fruits.local import ingest

    ingest.drain(settings, visibility_timeout=5)
    cluster = settings.with_(table_root=str(tmp_path / "cluster"), uploads_ledger=settings.uploads_table)
    env = fruits_env(
        cluster.with_(weights=str(artifact)),
        FRUITS_SPARK_MASTER="local-cluster[2,1,2048]",
        FRUITS_BATCH_SIZE="4",
        PYTHONPATH=os.pathsep.join(
            [unimportable(tmp_path / "blocked", "tensorflow", "keras"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    done = subprocess.run(
        [sys.executable, "-m", "fruits", "stream"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]

    stream.start(spark, settings, model=weights_blob).awaitTermination()
    sql = "SELECT key, features, model_id FROM features ORDER BY key"
    local_rows = spark_sql(spark, settings, sql).rows
    cluster_rows = spark_sql(spark, cluster, sql).rows
    assert len(local_rows) == 8 and [r[0] for r in cluster_rows] == [r[0] for r in local_rows]
    for (_, a, model_a), (_, b, model_b) in zip(local_rows, cluster_rows):
        assert model_a == model_b
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
