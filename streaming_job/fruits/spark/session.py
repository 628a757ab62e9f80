"""The Spark session: Delta Lake enabled, S3A pointed at the configured endpoint.

Local defaults apply only locally. Started by spark-submit (EMR Serverless, a standalone cluster),
the driver keeps the master, jars and tuning it was given, and adds only what every session needs
(``REQUIRED``). Started as a plain Python process (the CLI, the tests, the demo), it is the
embedded default: ``local[*, 4]``, the Delta and S3A jars of ``jars.py``, and tuning for one small
machine.

Example::

    spark = get_spark(settings)                          # whichever of the two applies
    session_conf(settings, on_cluster=True)              # what a cluster run would add: REQUIRED only
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from ..config import Settings
from ..io.aws import emulator_credentials


def s3a_conf(settings: Settings) -> dict[str, str]:
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint.region": settings.region,
    }
    if settings.endpoint_url:
        key, secret = emulator_credentials()
        conf.update(
            {
                "spark.hadoop.fs.s3a.endpoint": settings.endpoint_url,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": str(settings.endpoint_url.startswith("https")).lower(),
                "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
                "spark.hadoop.fs.s3a.access.key": key,
                "spark.hadoop.fs.s3a.secret.key": secret,
                # The emulator's in-memory S3 is small and fast: no need for long retry backoffs.
                "spark.hadoop.fs.s3a.attempts.maximum": "3",
                "spark.hadoop.fs.s3a.retry.limit": "3",
            }
        )
    return conf


# Every session needs these, on one machine and on a cluster alike.
LOG_CONFIG = Path(__file__).with_name("log4j2.properties")  # a local session's JVM logging

REQUIRED = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Delta's S3 log store (S3SingleDriverLogStore, on S3A) lists a log from a version with S3's
    # start-after instead of listing the whole _delta_log/: the uploads ledger gets a commit per
    # Lambda invocation and keeps 30 days of them, which each trigger of the stream would otherwise
    # list. (infra/ names this log store for the jobs on EMR.)
    "spark.hadoop.delta.enableFastS3AListFrom": "true",
    # VACUUM records VACUUM START / END commits (with the files it deleted) on every file system;
    # left unset, Delta records them on some (file:, hdfs:, gs:, abfs:) but not on s3a:.
    "spark.databricks.delta.vacuum.logging.enabled": "true",
    # Delta 4.2 ignores VACUUM's RETAIN <n> HOURS (any n but 0) while this (internal) switch is on,
    # and keeps the table's delta.deletedFileRetentionDuration instead: `fruits maintain
    # --retain-hours` would be silently ignored. Delta's safety check (at least 168 h) still applies.
    "spark.databricks.delta.vacuum.retentionWindowIgnore.enabled": "false",
}


def submitted() -> bool:
    """Whether spark-submit started this driver (EMR, a standalone cluster): it then chose the master,
    the jars and the tuning, which the code must not override."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_conf(settings: Settings, master: str | None = None, on_cluster: bool = False) -> dict[str, str]:
    """The session's configuration. On a cluster (``on_cluster``): what every session needs, and S3A
    pointed at an emulator if one is configured; spark-submit's ``--jars``/``spark.jars`` (EMR's own
    Delta jars, infra/) and ``--conf`` give the rest. On one machine: also the master, the Delta and
    S3A jars resolved once from Maven Central, and tuning for a small local machine."""
    conf = dict(REQUIRED)
    if on_cluster:
        return conf | (s3a_conf(settings) if settings.endpoint_url else {})
    from . import jars  # local only: it resolves jars from Maven Central

    master = master or settings.spark_master
    conf |= {
        "spark.master": master,
        "spark.jars": ",".join(str(j) for j in jars.fetch(settings.jars_dir)),
        "spark.sql.shuffle.partitions": "4",
        # Delta rebuilds a table's state with this many tasks at each new version it reads (default
        # 50). Our streaming tables see a new version every micro-batch and their logs are small:
        # 50 tiny tasks cost seconds per batch here, for nothing.
        "spark.databricks.delta.snapshotPartitions": str(settings.delta_snapshot_partitions),
        # The driver's logging (log4j2.properties beside this module): Spark's defaults without the
        # banner and the warnings nobody can act on.
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{LOG_CONFIG}",
    }
    if master.startswith("local"):
        # The driver is the executor too: Spark's 1 GB default is short for 1280-d rows.
        conf["spark.driver.memory"] = settings.driver_memory
    return conf | s3a_conf(settings)


def get_spark(settings: Settings, master: str | None = None, app_name: str = "fruits") -> SparkSession:
    """The active session, or a new one: under spark-submit with what it was given (``submitted``),
    else on ``master`` or ``settings.spark_master`` (default ``local[*, 4]``: all cores, and a
    failed task is retried up to 4 times as on a cluster)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        # Reused (tests, notebooks): point S3A at this settings' endpoint.
        hadoop = active.sparkContext._jsc.hadoopConfiguration()
        for key, value in s3a_conf(settings).items():
            hadoop.set(key.removeprefix("spark.hadoop."), value)
        return active
    on_cluster = submitted()
    conf = session_conf(settings, master, on_cluster)
    if not on_cluster:
        # Python workers must run this interpreter, with this venv's packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if conf["spark.master"].startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: stay on loopback
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark_log_level)
    return spark


def running_tasks(spark: SparkSession) -> str:
    """The stages running now and their tasks, ``stage 3: 40/200 tasks`` (a progress note), or ''."""
    tracker = spark.sparkContext.statusTracker()
    parts = []
    for stage in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage)
        if info is not None:
            parts.append(f"stage {stage}: {info.numCompletedTasks}/{info.numTasks} tasks")
    return ", ".join(parts)
