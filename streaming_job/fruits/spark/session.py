"""The Spark session: Delta Lake enabled, S3A pointed at the configured endpoint."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from ..config import Settings
from ..io.aws import emulator_credentials
from . import jars


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


def get_spark(settings: Settings, master: str | None = None, app_name: str = "fruits") -> SparkSession:
    """The active session, or a new one on ``master`` or ``settings.spark_master`` (default
    ``local[*, 4]``: all cores, and a failed task is retried up to 4 times as on a cluster)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        # Reused (tests, notebooks): point S3A at this settings' endpoint.
        hadoop = active.sparkContext._jsc.hadoopConfiguration()
        for key, value in s3a_conf(settings).items():
            hadoop.set(key.removeprefix("spark.hadoop."), value)
        return active
    # Python workers must run this interpreter, with this venv's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    master = master or settings.spark_master
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: stay on loopback
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", ",".join(str(j) for j in jars.fetch(settings.jars_dir)))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", "4")
        # Delta rebuilds a table's state with this many tasks at each new version it reads (default
        # 50). Our streaming tables see a new version every micro-batch and their logs are small:
        # 50 tiny tasks cost seconds per batch here, for nothing.
        .config("spark.databricks.delta.snapshotPartitions", str(settings.delta_snapshot_partitions))
        # The file stream source lists each new manifest again; past 32 paths Spark does that in a
        # job of one task per path (210 manifests: 210 tasks, 3.6 s here). A few tasks, each
        # listing many paths, do it in a fraction.
        .config("spark.sql.sources.parallelPartitionDiscovery.parallelism",
                str(settings.listing_tasks))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
    )
    if master.startswith("local"):
        # The driver is the executor too: Spark's 1 GB default is short for 1280-d rows (a cluster
        # sizes its own driver, so this is only set for local masters).
        builder = builder.config("spark.driver.memory", settings.driver_memory)
    for key, value in s3a_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark_log_level)
    return spark
