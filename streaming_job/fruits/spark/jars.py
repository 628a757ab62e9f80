"""The JVM jars the jobs need beyond Spark's own: Delta Lake and S3A (hadoop-aws + AWS SDK v2).

They are resolved once from Maven Central with Spark's own Ivy resolver, then cached under
``~/.cache/fruits/jars/<hash>/`` (``FRUITS_JARS_DIR``, ``Settings.jars_dir``, moves it). Jars that Spark already ships
(Hadoop client, Parquet, Jackson, log4j, ...) are dropped from the resolved set, so Spark's
versions stay the only ones on the classpath. Later sessions use ``spark.jars`` with the cached
files and never touch the network.

On EMR, none of this runs: the release ships Delta's jars (the jobs name them with ``spark.jars``,
infra/) and its S3 connector.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyspark

from .release import DELTA_VERSION, SCALA_VERSION, SPARK_MINOR

log = logging.getLogger(__name__)

_VERSION_SUFFIX = re.compile(r"-\d[\w.\-]*$")
_SPARK_JARS = Path(pyspark.__file__).parent / "jars"


def hadoop_version() -> str:
    """The Hadoop client version this pyspark ships (hadoop-aws must match it exactly)."""
    found = sorted(_SPARK_JARS.glob("hadoop-client-api-*.jar"))
    if not found:
        raise RuntimeError(f"no hadoop-client-api jar in {_SPARK_JARS}: is pyspark installed whole?")
    return found[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def packages() -> tuple[str, str]:
    """Delta as the EMR release ships it (spark/release.py), built for this pyspark's minor version,
    and the S3A connector of its Hadoop client. A function, not a constant: under spark-submit on a
    cluster pyspark comes as a zip without jars, and this module must still import."""
    return (
        f"io.delta:delta-spark_{SPARK_MINOR}_{SCALA_VERSION}:{DELTA_VERSION}",
        f"org.apache.hadoop:hadoop-aws:{hadoop_version()}",
    )


def _cache_dir(root: str | None, wanted: tuple[str, ...]) -> Path:
    key = hashlib.sha256(f"{pyspark.__version__}|{','.join(wanted)}".encode()).hexdigest()[:12]
    return Path(root or Path.home() / ".cache" / "fruits" / "jars") / key


def _artifact(jar_name: str) -> str:
    """``org.apache.parquet_parquet-hadoop-1.16.0.jar`` -> ``parquet-hadoop``."""
    stem = jar_name.removesuffix(".jar")
    return _VERSION_SUFFIX.sub("", stem.split("_", 1)[-1])


def spark_shipped_artifacts() -> set[str]:
    return {_VERSION_SUFFIX.sub("", p.stem) for p in _SPARK_JARS.glob("*.jar")}


_RESOLVE = """
from pyspark.sql import SparkSession
SparkSession.builder.master("local[1]").config("spark.jars.packages", {packages!r}) \\
    .config("spark.jars.ivy", {ivy!r}).config("spark.ui.enabled", "false").getOrCreate().stop()
"""


def fetch(root: str | None = None) -> list[Path]:
    """Resolve and cache the jars under ``root`` (default ``~/.cache/fruits/jars``) if needed;
    return their paths."""
    wanted = packages()
    target = _cache_dir(root, wanted)
    listing = target / "jars.txt"
    if listing.exists():
        jars = [Path(line) for line in listing.read_text().split()]
        if all(j.exists() for j in jars):
            return jars
    ivy = target / "ivy"
    log.info("resolving %s from Maven Central into %s (once)", ", ".join(wanted), target)
    code = _RESOLVE.format(packages=",".join(wanted), ivy=str(ivy))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not resolve {wanted} from Maven Central (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    shipped = spark_shipped_artifacts()
    keep = target / "lib"
    keep.mkdir(parents=True, exist_ok=True)
    jars = []
    for jar in sorted((ivy / "jars").glob("*.jar")):
        if _artifact(jar.name) in shipped:
            continue
        dest = keep / jar.name
        if not dest.exists():
            shutil.copy2(jar, dest)
        jars.append(dest)
    shutil.rmtree(ivy, ignore_errors=True)
    listing.write_text("\n".join(str(j) for j in jars) + "\n")
    return jars


def main(root: str | None = None) -> None:
    found = fetch(root)
    size = sum(j.stat().st_size for j in found) / 1e6
    print(f"{len(found)} jars ({size:.0f} MB) in {found[0].parent}")
