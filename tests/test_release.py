"""One stack, declared once: the EMR release infra/ deploys, the pins of pyproject.toml, the jars
resolved locally and the installed packages agree (``fruits.spark.release``)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

from fruits.spark import jars
from fruits.spark.release import DELTA_VERSION, EMR_RELEASE, RELEASES, SCALA_VERSION, SPARK_MINOR
from fruits.spark.session import REQUIRED, session_conf

from conftest import ROOT


def pins() -> dict[str, str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==", 1) for d in dependencies if "==" in d)


def test_pyproject_pins_the_releases_spark_minor_and_delta() -> None:
    assert RELEASES[EMR_RELEASE] == (SPARK_MINOR, DELTA_VERSION)
    pinned = pins()
    assert pinned["pyspark"].startswith(f"{SPARK_MINOR}."), f"pyspark {pinned['pyspark']} is not Spark {SPARK_MINOR}"
    assert pinned["delta-spark"] == DELTA_VERSION
    assert (version("pyspark"), version("delta-spark")) == (pinned["pyspark"], pinned["delta-spark"])  # installed


def test_local_jars_are_the_releases_delta_for_this_spark() -> None:
    delta, hadoop_aws = jars.PACKAGES
    assert delta == f"io.delta:delta-spark_{SPARK_MINOR}_{SCALA_VERSION}:{DELTA_VERSION}"
    assert hadoop_aws.endswith(f":{jars.hadoop_version()}")


def test_local_defaults_apply_only_outside_spark_submit(tmp_path) -> None:
    from fruits.config import Settings

    settings = Settings(table_root=str(tmp_path), spark_master="local[3]")
    on_cluster = session_conf(settings, on_cluster=True)
    assert on_cluster == REQUIRED  # no master, no jars from Maven, no local tuning; AWS's S3 settings
    local = session_conf(settings)
    assert local["spark.master"] == "local[3]" and local["spark.jars"] and local["spark.driver.memory"] == "4g"
    assert local.items() >= REQUIRED.items() and local["spark.sql.shuffle.partitions"] == "4"
    # Against an emulator, a cluster run (the local standalone test) still points S3A at it.
    emulated = session_conf(settings.with_(endpoint_url="http://127.0.0.1:9"), on_cluster=True)
    assert emulated["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9" and "spark.master" not in emulated
