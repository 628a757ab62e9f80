"""The PCA's sufficient statistics: computed from the features table's files, stored, and kept up
to date from the Delta log.

The statistics of a set of rows are (n, sum x, sum x x^T) in float64. They add up, so any split of
the rows gives the same sums. The pass reads the table's Parquet files with Arrow, not through a
Spark DataFrame: Spark would decode each float of the feature arrays in the JVM and convert it
again to Arrow for Python, which is most of the cost of a pass. A small set of files (under
``DRIVER_BYTES``, e.g. the rows a stream appended since the last fit) is read on the driver with
no Spark job; a larger one by Spark tasks, files balanced by size.

Example::

    files, version = table_files(settings, settings.features_table)
    stats, model_ids = file_stats(spark, settings, files)

Limitations: a table with deletion vectors or column mapping cannot be read file by file;
``table_files`` returns None for it and the caller reads it through Spark (``collect_stats``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from . import lake
from .config import VACUUM_RETAIN_HOURS, Settings
from .model import FEATURE_DIM
from .schema import PCA_STATS

log = logging.getLogger(__name__)

# userMetadata on our re-projection commits: they rewrite rows without changing ``features``.
REPROJECT_TAG = "fruits:pca-reproject"

# Files up to this size in all are read on the driver: a Spark job costs more than reading them.
DRIVER_BYTES = 64 * 1024 * 1024
_ROWS_PER_READ = 8192


@dataclass
class Stats:
    """Sufficient statistics of a set of feature rows (float64)."""

    n: int
    total: np.ndarray  # (d,)
    outer: np.ndarray  # (d, d)

    @classmethod
    def empty(cls, d: int = FEATURE_DIM) -> Stats:
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @classmethod
    def of(cls, x: np.ndarray) -> Stats:
        x = np.asarray(x, dtype=np.float64)
        return cls(len(x), x.sum(axis=0), x.T @ x)

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.n + other.n, self.total + other.total, self.outer + other.outer)


@dataclass
class StoredStats:
    stats: Stats
    source_table_version: int
    feature_model_id: str
    basis: np.ndarray | None = None  # (K, d): the fit's leading vectors, for the next incremental solve


@dataclass(frozen=True)
class DataFile:
    uri: str  # absolute: a local path or s3:// URI
    size: int  # bytes


# --- computing them -------------------------------------------------------------------------

def collect_stats(features: DataFrame, d: int = FEATURE_DIM) -> tuple[Stats, set[str]]:
    """The statistics of a DataFrame's ``features`` and its set of ``model_id`` values, in one
    pass through Spark: for tables whose files Arrow cannot read alone."""

    def partition_stats(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        acc, ids = Stats.empty(d), set()
        for batch in batches:
            if len(batch):
                acc = acc + Stats.of(np.stack(batch["features"].to_numpy()))
                ids.update(batch["model_id"].unique())
        yield pd.DataFrame({"n": [acc.n], "total": [acc.total.tobytes()], "outer": [acc.outer.tobytes()],
                            "model_ids": [sorted(ids)]})

    parts = features.select("features", "model_id").mapInPandas(
        partition_stats, "n long, total binary, outer binary, model_ids array<string>"
    ).toLocalIterator()
    acc, ids = Stats.empty(d), set()
    for row in parts:
        if row.n:
            acc = acc + Stats(row.n, _floats(row.total), _floats(row.outer).reshape(d, d))
            ids.update(row.model_ids)
    return acc, ids


def _matrix(features: pa.Array, d: int) -> np.ndarray:
    """An Arrow list<float> column as an (n, d) array, without copying."""
    if features.null_count:
        raise ValueError(f"{features.null_count} rows have no features; PCA needs every row's vector")
    lengths = pc.min_max(pc.list_value_length(features))
    if len(features) and (lengths["min"].as_py(), lengths["max"].as_py()) != (d, d):
        raise ValueError(f"feature vectors of length {lengths['min']}..{lengths['max']}, expected {d}")
    return features.flatten().to_numpy(zero_copy_only=False).reshape(len(features), d)


def _batches(fs: pa_fs.FileSystem, uris: Iterable[str], d: int, ids: set[str]) -> Iterator[np.ndarray]:
    """The feature rows of the files, a batch at a time; their model ids are added to ``ids``."""
    for uri in uris:
        with fs.open_input_file(lake.path_in(uri)) as f:
            for batch in pq.ParquetFile(f).iter_batches(_ROWS_PER_READ, columns=["features", "model_id"]):
                if batch.num_rows:
                    ids.update(pc.unique(batch.column("model_id")).drop_null().to_pylist())
                    yield _matrix(batch.column("features"), d)


def _read_stats(fs: pa_fs.FileSystem, uris: Iterable[str], d: int) -> tuple[Stats, set[str]]:
    acc: Stats | None = None
    ids: set[str] = set()
    for x in _batches(fs, uris, d, ids):
        acc = Stats.of(x) if acc is None else acc + Stats.of(x)
    return acc or Stats.empty(d), ids


def read_rows(settings: Settings, files: list[DataFile], d: int = FEATURE_DIM) -> tuple[np.ndarray, set[str]]:
    """The feature rows of ``files`` as one (n, d) float32 array, and their ``model_id`` values, on
    the driver: for the few rows an incremental refit adds (its solve needs them, not only their sums)."""
    ids: set[str] = set()
    parts = list(_batches(lake.filesystem(settings), (f.uri for f in files), d, ids))
    return (np.concatenate(parts) if parts else np.empty((0, d), dtype=np.float32)), ids


def file_stats(
    spark: SparkSession, settings: Settings, files: list[DataFile], d: int = FEATURE_DIM,
    driver_bytes: int = DRIVER_BYTES,
) -> tuple[Stats, set[str]]:
    """The statistics of the rows in ``files`` and their ``model_id`` values.

    On the driver when the files are at most ``driver_bytes`` in all, else one Spark task per
    group of files (at most the cluster's parallelism), files balanced by size.
    """
    if sum(f.size for f in files) <= driver_bytes:
        return _read_stats(lake.filesystem(settings), (f.uri for f in files), d)
    sc = spark.sparkContext
    groups: list[list[str]] = [[] for _ in range(min(len(files), sc.defaultParallelism))]
    loads = [0] * len(groups)
    for f in sorted(files, key=lambda f: -f.size):  # largest first, each to the lightest group
        lightest = loads.index(min(loads))
        groups[lightest].append(f.uri)
        loads[lightest] += f.size

    def task(parts: Iterator[list[str]]) -> Iterator[tuple[Stats, set[str]]]:
        fs = lake.filesystem(settings)
        for uris in parts:
            yield _read_stats(fs, uris, d)

    sc.setJobDescription(f"PCA statistics over {len(files)} files")
    try:
        return sc.parallelize(groups, len(groups)).mapPartitions(task).treeReduce(
            lambda a, b: (a[0] + b[0], a[1] | b[1])
        )
    finally:
        sc.setJobDescription(None)  # type: ignore[arg-type]


def table_files(settings: Settings, location: str, version: int | None = None) -> tuple[list[DataFile], int] | None:
    """The table's data files at ``version`` (or the newest) and that version; None when its rows
    are not just its files' rows (deletion vectors, column mapping)."""
    table = lake.delta_table(settings, location, version)
    if not lake.plain_files(table):
        return None
    actions = pa.table(table.get_add_actions(flatten=True)).select(["path", "size_bytes"]).to_pydict()
    files = [DataFile(_absolute(location, p), size) for p, size in zip(actions["path"], actions["size_bytes"])]
    return files, table.version()


def _absolute(location: str, path: str) -> str:
    return path if "://" in path else f"{lake.delta_uri(location)}/{unquote(path)}"


def _floats(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f8")


# --- storing them ---------------------------------------------------------------------------

def latest_stats(settings: Settings) -> StoredStats | None:
    """The stored statistics, read with delta-rs (13-18 MB: no Spark job for it)."""
    rows = lake.dataset(settings, settings.pca_stats_table)[0].to_table().to_pylist()
    if not rows:
        return None
    r = max(rows, key=lambda r: r["source_table_version"])
    d = r["dim"]
    # Read-only views of the bytes: Stats' arithmetic makes new arrays.
    stats = Stats(r["row_count"], _floats(r["total"]), _floats(r["outer"]).reshape(d, d))
    basis = _floats(r["basis"]).reshape(-1, d) if r.get("basis") else None  # None: stored before it existed
    return StoredStats(stats, r["source_table_version"], r["feature_model_id"], basis)


def store_stats(spark: SparkSession, settings: Settings, stored: StoredStats) -> None:
    """Replace the stored statistics (older ones stay in the Delta history until VACUUM)."""
    s = stored.stats
    basis = None if stored.basis is None else stored.basis.astype("<f8").tobytes()
    row = (stored.source_table_version, s.n, len(s.total), s.total.astype("<f8").tobytes(),
           s.outer.astype("<f8").tobytes(), stored.feature_model_id, dt.datetime.now(dt.timezone.utc), basis)
    # overwriteSchema: a table written before ``basis`` existed takes the new column
    spark.createDataFrame([row], PCA_STATS).write.format("delta").mode("overwrite") \
        .option("overwriteSchema", "true").save(settings.pca_stats_table)


# --- keeping them up to date ----------------------------------------------------------------

def _commits(settings: Settings, location: str, after: int, upto: int) -> Iterator[tuple[int, dict, list[dict]]]:
    """``(version, commitInfo, actions)`` of commits ``after + 1 .. upto``, read from the log's
    commit files; FileNotFoundError if log retention removed one."""
    fs = lake.filesystem(settings)
    log_dir = lake.path_in(location) + "/_delta_log"
    for version in range(after + 1, upto + 1):
        with fs.open_input_stream(f"{log_dir}/{version:020d}.json") as f:
            actions = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        yield version, next((a["commitInfo"] for a in actions if "commitInfo" in a), {}), actions


def appended_files(settings: Settings, location: str, after: int, upto: int) -> list[DataFile] | None:
    """Data files that commits ``after + 1 .. upto`` added to the table as new rows.

    None when those rows cannot be told from the log alone: a commit changed or deleted existing
    rows (other than a re-projection), the table went back in time, log retention already
    removed a commit file, or a commit is older than ``VACUUM_RETAIN_HOURS`` (VACUUM may have
    deleted its files since a later OPTIMIZE replaced them). The caller then reads the whole table.
    """
    if upto < after:
        return None
    files: list[DataFile] = []
    horizon_ms = (time.time() - VACUUM_RETAIN_HOURS * 3600) * 1000
    try:
        for version, info, actions in _commits(settings, location, after, upto):
            if info.get("timestamp", horizon_ms) < horizon_ms:
                log.info("commit %d is older than VACUUM's retention: its files may be gone; a full pass is needed",
                         version)
                return None
            adds = [a["add"] for a in actions if "add" in a and a["add"].get("dataChange", True)]
            removes = [a for a in actions if "remove" in a and a["remove"].get("dataChange", True)]
            if not adds and not removes:
                continue  # metadata only, or OPTIMIZE (dataChange=false)
            if info.get("isBlindAppend") and not any(a.get("deletionVector") for a in adds):
                files += [DataFile(_absolute(location, a["path"]), int(a["size"])) for a in adds]
            elif info.get("userMetadata") != REPROJECT_TAG:
                log.info("commit %d (%s) changed existing rows; a full pass is needed", version, info.get("operation"))
                return None
    except FileNotFoundError:
        log.info("commits after version %d are gone from the log (retention); a full pass is needed", after)
        return None
    return files


def pending_rows(settings: Settings) -> int:
    """Rows appended to the features table since the stored statistics (from the commit files)."""
    # Only the version: the periodic loop asks often, and the statistics themselves are 13 MB.
    covered = pc.max(lake.dataset(settings, settings.pca_stats_table)[0].to_table(
        columns=["source_table_version"]).column(0)).as_py()
    features = lake.delta_table(settings, settings.features_table)
    if covered is None:  # never fitted: every row is new
        return sum(pa.table(features.get_add_actions(flatten=True)).column("num_records").to_pylist())
    total = 0
    for _, info, _ in _commits(settings, settings.features_table, covered, features.version()):
        if info.get("isBlindAppend"):
            total += int((info.get("operationMetrics") or {}).get("numOutputRows", 0))
    return total
