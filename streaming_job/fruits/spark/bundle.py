"""The jobs' bundle for a cluster: what ``make emr-artifacts`` writes and ``fruits deploy-artifacts`` uploads.

Under ``build/emr/`` (and, once uploaded, under ``s3://<bucket>/artifacts/``, where ``infra/`` points
the jobs)::

    fruits_job.py                 the entry point, spark-submit's primary resource
    pyenv.tar.gz                  what the driver and the workers import (spark.archives ...#environment)
    model/mobilenet_v2.tflite     the compiled model and its identity (.json), for spark.files

The environment is the project and its runtime dependencies as wheels for the release's Python on
Linux x86_64 (manylinux, so any glibc from ``GLIBC`` up: Amazon Linux 2023 has 2.34), unpacked at
the archive's top level: a cluster puts ``./environment`` on ``PYTHONPATH`` and runs the release's own
interpreter. It holds no pyspark (the release's Spark provides it), no TensorFlow or Keras (the
model comes compiled), no moto and no test tools. pip resolves it from the package registry, for
the target platform rather than this machine's, constrained to the versions installed here (the
ones the tests ran with). Environment markers are evaluated on the building machine: build it on
Linux x86_64 (``make emr-artifacts`` does, here).

Example::

    from pathlib import Path
    from fruits.spark import bundle
    bundle.write(Path("build/emr"), project=Path("."))   # entry point + pyenv.tar.gz
    bundle.upload(settings, Path("build/emr"))          # -> s3://<bucket>/artifacts/...

Limitations: the interpreter is the release's (``PYTHON_EXECUTABLE``); nothing here has run on EMR
itself, which is to be checked on the first deployment (infra/README.md).
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..config import Settings
from ..io import aws
from .release import DELTA_VERSION, PYTHON_EXECUTABLE, PYTHON_VERSION

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts/"  # the bucket prefix the jobs run from
ENTRY_POINT = "fruits_job.py"
ENVIRONMENT = "pyenv.tar.gz"
MODEL_DIR = "model"
MODEL_FILE = "mobilenet_v2.tflite"
GLIBC = (2, 17)  # the oldest manylinux the environment may use; Amazon Linux 2023 has 2.34
# What the cluster provides and the environment must not shadow.
CLUSTER_PROVIDED = frozenset({"pyspark", "py4j"})
DISTRIBUTION = "fruits-pipeline"


def runtime_requirements(distribution: str = DISTRIBUTION) -> list[str]:
    """The distribution's own dependencies, without extras and without what the cluster provides.

    ``delta-spark`` stays (its Python API, ``delta.tables``, pinned to the release's Delta), but is
    installed without its dependency on pyspark (``write``)."""
    from packaging.requirements import Requirement  # a build-time need: pip's own dependency

    wanted = []
    for line in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        if requirement.name not in CLUSTER_PROVIDED:
            wanted.append(str(requirement))
    return wanted


def tested_versions(exclude: frozenset[str] = CLUSTER_PROVIDED | {DISTRIBUTION}) -> list[str]:
    """``name==version`` of every distribution installed here (the versions the tests ran with),
    as pip constraints: the bundle's transitive dependencies are those, not whatever is newest."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name and name not in exclude:
            pins[name] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _pip_target(target: Path, requirements: list[str], *, deps: bool, constraints: Path) -> None:
    # pip takes the platforms literally: the legacy aliases name wheels tagged only with them.
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC[1], 35)] + [
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux1_x86_64",
    ]
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--upgrade",
        "--target",
        str(target),
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--only-binary=:all:",
        "--constraint",
        str(constraints),
        *(f"--platform={p}" for p in platforms),
        *requirements,
    ]
    if not deps:
        command.insert(4, "--no-deps")
    subprocess.run(command, check=True)


def pack_environment(out: Path, project: Path) -> Path:
    """Write ``out`` (a .tar.gz): the project's wheel and its runtime dependencies for the release's
    Python on Linux x86_64, at the archive's top level."""
    with tempfile.TemporaryDirectory(prefix="fruits-env-") as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--wheel-dir",
                str(wheels),
                str(project),
            ],
            check=True,
        )
        requirements = runtime_requirements()
        delta = [r for r in requirements if r.startswith("delta-spark")]
        if delta != [f"delta-spark=={DELTA_VERSION}"]:
            raise RuntimeError(
                f"pyproject pins {delta or 'no delta-spark'}, the release ships Delta {DELTA_VERSION}: "
                "fix pyproject.toml (tests/test_release.py says the same)"
            )
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(tested_versions()) + "\n")
        _pip_target(site, [r for r in requirements if r not in delta], deps=True, constraints=constraints)
        _pip_target(site, [*delta, *map(str, wheels.glob("*.whl"))], deps=False, constraints=constraints)
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts for this machine's interpreter
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz") as archive:
            for path in sorted(site.iterdir()):
                archive.add(path, arcname=path.name, filter=_no_bytecode)
    log.info("packed %s (%.0f MB) for Python %s", out, out.stat().st_size / 2**20, PYTHON_VERSION)
    return out


def _no_bytecode(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info


def write(folder: Path, project: Path) -> None:
    """The entry point and the packed environment, under ``folder`` (the model is ``fruits model
    compile --out folder/model/mobilenet_v2.tflite``, which needs TensorFlow)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(project / "streaming_job" / ENTRY_POINT, folder / ENTRY_POINT)
    pack_environment(folder / ENVIRONMENT, project)


def artifact_files(folder: Path) -> list[Path]:
    """The files the jobs need, relative to ``folder``; a clear error names any that is missing."""
    files = [
        Path(ENTRY_POINT),
        Path(ENVIRONMENT),
        Path(MODEL_DIR) / MODEL_FILE,
        Path(MODEL_DIR) / MODEL_FILE.replace(".tflite", ".json"),
    ]
    missing = [str(folder / f) for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}: run `make emr-artifacts` first")
    return files


def upload(settings: Settings, folder: Path) -> list[str]:
    """Upload the bundle to ``s3://<bucket>/artifacts/``; returns the URIs written."""
    s3 = aws.client("s3", settings)
    written = []
    for relative in artifact_files(folder):
        key = ARTIFACTS + relative.as_posix()
        s3.upload_file(str(folder / relative), settings.bucket, key)
        written.append(f"s3://{settings.bucket}/{key}")
    return written


__all__ = [
    "ARTIFACTS",
    "ENTRY_POINT",
    "ENVIRONMENT",
    "MODEL_FILE",
    "PYTHON_EXECUTABLE",
    "artifact_files",
    "pack_environment",
    "runtime_requirements",
    "upload",
    "write",
]
