"""One stack, declared once: the EMR release infra/ deploys, the pins of pyproject.toml, the jars
resolved locally and the installed packages agree (``fruits.spark.release``)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

from conftest import ROOT
from fruits.spark import jars
from fruits.spark.release import DELTA_VERSION, PYTHON_VERSION, SPARK_MINOR
from fruits.spark.session import REQUIRED, session_conf


def pins() -> dict[str, str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==", 1) for d in dependencies if "==" in d)


def test_pyproject_pins_the_releases_spark_minor_and_delta() -> None:
    pinned = pins()
    assert pinned["pyspark"].startswith(f"{SPARK_MINOR}."), f"pyspark {pinned['pyspark']} is not Spark {SPARK_MINOR}"
    assert pinned["delta-spark"] == DELTA_VERSION
    assert (version("pyspark"), version("delta-spark")) == (pinned["pyspark"], pinned["delta-spark"])  # installed


def test_the_jobs_python_is_the_projects() -> None:
    """The packed environment's wheels are for the release's Python; the project runs on that one."""
    import sys

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = PYTHON_VERSION.split(".")
    assert requires == f">={PYTHON_VERSION},<{major}.{int(minor) + 1}", requires
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == PYTHON_VERSION


def test_the_local_delta_jar_is_the_one_delta_spark_itself_would_resolve() -> None:
    """delta-spark's own helper names the Maven artifact for the installed pyspark; ours must agree."""
    from delta import pip_utils
    from pyspark.sql import SparkSession

    builder = SparkSession.Builder()  # its own options; no JVM until getOrCreate, which never comes
    pip_utils.configure_spark_with_delta_pip(builder)
    delta, hadoop_aws = jars.packages()
    assert builder._options["spark.jars.packages"].split(",")[0] == delta
    assert hadoop_aws.endswith(f":{jars.hadoop_version()}")


def test_local_defaults_apply_only_outside_spark_submit(tmp_path, monkeypatch) -> None:
    from fruits.config import Settings
    from fruits.spark import session

    settings = Settings(table_root=str(tmp_path), spark_master="local[3]")
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert not session.submitted()
    local = session_conf(settings)
    assert local["spark.master"] == "local[3]" and local["spark.jars"] and local["spark.driver.memory"] == "4g"
    assert local.items() >= REQUIRED.items() and local["spark.sql.shuffle.partitions"] == "4"
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "41000")  # what spark-submit's PythonRunner sets
    assert session.submitted()
    assert session_conf(settings, on_cluster=session.submitted()) == REQUIRED  # no master, jars or tuning
    # Against an emulator, a cluster run (a local standalone cluster) still points S3A at it.
    emulated = session_conf(settings.with_(endpoint_url="http://127.0.0.1:9"), on_cluster=True)
    assert emulated["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9" and "spark.master" not in emulated
