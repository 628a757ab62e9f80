"""The seams between the stages, enforced: each entry point loads only what its side needs.

Each check runs in a fresh interpreter and lists what ended up in ``sys.modules``:

- the JVM-free store (``from fruits import FeatureStore``): no pyspark, delta-spark, matplotlib,
  TensorFlow or moto;
- what Spark's Python workers import to featurize (``fruits.featurize.batch``) and to project onto a
  PCA model (``fruits.pca.model``): no pyspark.sql driver modules, TensorFlow, matplotlib or deltalake;
  nor does unpickling the stream's pandas UDF as Spark ships it (not ``fruits.stream``);
- the stream's driver: the PCA registry, not the refit job;
- ``fruits --help`` and ``fruits status``: neither moto nor pyspark;
- the HTTP API's Lambda handler (``fruits.api.function``): what the store forbids, so its image
  can leave out pyspark, delta-spark and matplotlib (``infra/api/Dockerfile``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Top-level packages, by the name they import as (delta-spark is ``delta``; delta-rs is ``deltalake``).
JVM_FREE_STORE_FORBIDS = ("pyspark", "delta", "matplotlib", "tensorflow", "keras", "moto")
WORKER_FORBIDS = ("pyspark.sql", "tensorflow", "keras", "matplotlib", "deltalake", "delta", "moto", "pydantic")
CLI_FORBIDS = ("moto", "pyspark", "tensorflow", "matplotlib")

_LOADED = """
import json, sys
{code}
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after(code: str, **env: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (with ``env`` added)."""
    done = subprocess.run(
        [sys.executable, "-c", _LOADED.format(code=code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def forbidden(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules that are one of ``packages`` or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_forbidden_matches_packages_and_their_modules_only() -> None:
    modules = {"pyspark", "pyspark.sql.types", "deltalake", "delta", "delta.tables", "pyarrow", "moto_like"}
    assert forbidden(modules, ("pyspark.sql", "delta", "moto")) == ["delta", "delta.tables", "pyspark.sql.types"]


def test_the_jvm_free_store_loads_no_spark_plotting_model_or_emulator() -> None:
    modules = loaded_after("from fruits import FeatureStore, Settings\nFeatureStore(Settings())")
    assert "deltalake" in modules and "fruits.query.store" in modules  # it did load the store
    assert forbidden(modules, JVM_FREE_STORE_FORBIDS) == []


def test_the_api_lambda_loads_no_spark_plotting_or_tensorflow(tmp_path: Path) -> None:
    # Over no tables, with a compiled model path: the cold start's warm-up runs, and fails softly.
    modules = loaded_after(
        "import fruits.api.function", FRUITS_TABLE_ROOT=str(tmp_path), FRUITS_WEIGHTS=str(tmp_path / "model.tflite")
    )
    assert "fastapi" in modules and "mangum" in modules and "fruits.query.store" in modules
    assert forbidden(modules, JVM_FREE_STORE_FORBIDS) == []


@pytest.mark.parametrize("module", ["fruits.featurize.batch", "fruits.pca.model"])
def test_what_python_workers_import_is_slim(module: str) -> None:
    modules = loaded_after(f"import {module}")
    assert module in modules
    assert forbidden(modules, WORKER_FORBIDS) == []


def test_the_stream_udf_as_shipped_to_a_worker_loads_only_the_worker_side(tmp_path) -> None:
    """The UDF's closure is pickled on the driver (``fruits.stream.job``) and unpickled on a worker;
    the worker must import ``fruits.featurize``, not the driver's modules."""
    from types import SimpleNamespace

    from pyspark import cloudpickle

    from fruits.config import Settings
    from fruits.featurize.model import CompiledModel
    from fruits.stream.job import featurize_udf

    broadcast = SimpleNamespace(value=CompiledModel("m", b""))  # stands for the broadcast model
    shipped = tmp_path / "udf.pickle"
    shipped.write_bytes(cloudpickle.dumps(featurize_udf(broadcast, Settings(table_root=str(tmp_path))).func))
    baseline = loaded_after("import pyspark.cloudpickle")  # every Python worker has these
    modules = loaded_after(f"import pickle, pyspark.cloudpickle\npickle.loads(open({str(shipped)!r}, 'rb').read())")
    assert "fruits.featurize.batch" in modules
    assert (
        forbidden(modules - baseline, ("fruits.stream", "fruits.pca", "fruits.spark", "fruits.query", *WORKER_FORBIDS))
        == []
    )


def test_the_stream_reads_pca_models_through_the_registry_not_the_refit_job() -> None:
    modules = loaded_after("import fruits.stream.job")
    assert "fruits.pca.registry" in modules
    assert forbidden(modules, ("fruits.pca.refit", "fruits.pca.stats", "fruits.pca.plots", "matplotlib")) == []


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"]])
def test_the_cli_parser_loads_no_spark_or_emulator(argv: list[str]) -> None:
    modules = loaded_after(
        f"import sys\nfrom fruits.cli import main\nsys.argv = ['fruits', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert "argparse" in modules
    assert forbidden(modules, CLI_FORBIDS) == []


def test_fruits_status_loads_no_spark_or_emulator(tmp_path) -> None:
    """``fruits status`` reads the tables with delta-rs: here, an empty table root (no table yet)."""
    code = (
        f"import sys, os\nos.environ['FRUITS_TABLE_ROOT'] = {str(tmp_path)!r}\n"
        "from fruits.cli import main\nsys.argv = ['fruits', 'status', 'uploads/Kiwi/a.jpg']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    modules = loaded_after(code)
    assert "fruits.query.store" in modules and "deltalake" in modules
    assert forbidden(modules, CLI_FORBIDS) == []
