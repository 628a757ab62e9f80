"""The PCA's sufficient statistics: computed from the features table's files, stored, and kept up
to date from the Delta log.

The statistics of a set of rows are (n, sum x, sum x x^T) in float64. They add up, so any split of
the rows gives the same sums. The pass reads the table's Parquet files with Arrow, not through a
Spark DataFrame: Spark would decode each float of the feature arrays in the JVM and convert it
again to Arrow for Python, which is most of the cost of a pass. A small set of files (under
``DRIVER_BYTES``) is read on the driver with no Spark job; a larger one by Spark tasks, files
balanced by size. The rows added since the stored statistics (``added_since``) come from
delta-rs's change data feed of the commits since, on the driver or in Spark tasks likewise.

Example::

    files, version = lake.table_files(settings, settings.features_table)
    stats, model_ids = file_stats(spark, settings, files)
    increment = added_since(spark, settings, after=stored.source_table_version, upto=version)

Limitations: a table with deletion vectors or column mapping cannot be read file by file;
``lake.table_files`` returns None for it and the caller reads it through Spark (``collect_stats``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from ..config import Settings
from ..featurize.model import FEATURE_DIM
from ..io import changes, lake
from ..io.lake import DataFile
from .model import Stats, matrix

if TYPE_CHECKING:  # Spark only where a pass runs in Spark tasks: no Spark at import time
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Files up to this size in all are read on the driver: a Spark job costs more than reading them.
DRIVER_BYTES = 64 * 1024 * 1024
_ROWS_PER_READ = 8192


class Collected(NamedTuple):
    """The statistics of some rows and the ``model_id`` values among them."""

    stats: Stats
    model_ids: set[str]

    def merged(self, other: Collected) -> Collected:
        return Collected(self.stats + other.stats, self.model_ids | other.model_ids)


@dataclass
class StoredStats:
    stats: Stats
    source_table_version: int
    feature_model_id: str
    basis: np.ndarray | None = None  # (K, d): the fit's leading vectors, for the next incremental solve


# --- computing them -------------------------------------------------------------------------


def collect_stats(features: DataFrame, d: int = FEATURE_DIM) -> Collected:
    """The statistics of a DataFrame's ``features`` and its set of ``model_id`` values, in one
    pass through Spark: for tables whose files Arrow cannot read alone."""

    def partition_stats(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        acc, ids = Stats.empty(d), set()
        for batch in batches:
            if len(batch):
                acc = acc + Stats.of(np.stack(batch["features"].to_numpy()))
                ids.update(batch["model_id"].unique())
        yield pd.DataFrame(
            {"n": [acc.n], "total": [acc.total.tobytes()], "outer": [acc.outer.tobytes()], "model_ids": [sorted(ids)]}
        )

    parts = (
        features.select("features", "model_id")
        .mapInPandas(partition_stats, "n long, total binary, outer binary, model_ids array<string>")
        .toLocalIterator()
    )
    acc, ids = Stats.empty(d), set()
    for row in parts:
        if row.n:
            acc = acc + Stats(row.n, _floats(row.total), _floats(row.outer).reshape(d, d))
            ids.update(row.model_ids)
    return Collected(acc, ids)


def _batches(fs: pa_fs.FileSystem, uris: Iterable[str], d: int, ids: set[str]) -> Iterator[np.ndarray]:
    """The feature rows of the files, a batch at a time; their model ids are added to ``ids``."""
    for uri in uris:
        with fs.open_input_file(lake.path_in(uri)) as f:
            for batch in pq.ParquetFile(f).iter_batches(_ROWS_PER_READ, columns=["features", "model_id"]):
                if batch.num_rows:
                    ids.update(_model_ids(batch.column("model_id")))
                    yield matrix(batch.column("features"), d)


def _read_stats(fs: pa_fs.FileSystem, uris: Iterable[str], d: int) -> Collected:
    acc: Stats | None = None
    ids: set[str] = set()
    for x in _batches(fs, uris, d, ids):
        acc = Stats.of(x) if acc is None else acc + Stats.of(x)
    return Collected(acc or Stats.empty(d), ids)


def file_stats(
    spark: SparkSession,
    settings: Settings,
    files: list[DataFile],
    d: int = FEATURE_DIM,
    driver_bytes: int = DRIVER_BYTES,
) -> Collected:
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

    def task(parts: Iterator[list[str]]) -> Iterator[Collected]:
        fs = lake.filesystem(settings)
        for uris in parts:
            yield _read_stats(fs, uris, d)

    sc.setJobDescription(f"PCA statistics over {len(files)} files")
    try:
        return sc.parallelize(groups, len(groups)).mapPartitions(task).treeReduce(Collected.merged)
    finally:
        sc.setJobDescription(None)  # type: ignore[arg-type]


def _floats(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f8")


# --- storing them ---------------------------------------------------------------------------


def latest_stats(settings: Settings) -> StoredStats | None:
    """The stored statistics, read with delta-rs (13-18 MB: no Spark job for it)."""
    rows = lake.dataset(settings, settings.pca_stats_table).dataset.to_table().to_pylist()
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
    row = (
        stored.source_table_version,
        s.n,
        len(s.total),
        s.total.astype("<f8").tobytes(),
        s.outer.astype("<f8").tobytes(),
        stored.feature_model_id,
        dt.datetime.now(dt.UTC),
        basis,
    )
    from ..spark.schema import PCA_STATS

    # overwriteSchema: a table written before ``basis`` existed takes the new column
    spark.createDataFrame([row], PCA_STATS).write.format("delta").mode("overwrite").option(
        "overwriteSchema", "true"
    ).save(settings.pca_stats_table)


# --- keeping them up to date ----------------------------------------------------------------


@dataclass
class Increment:
    """The rows commits added since the stored statistics: their statistics and model ids, and the
    rows themselves when they were read on the driver (the incremental solve needs them)."""

    stats: Stats
    model_ids: set[str]
    rows: np.ndarray | None


def _model_ids(column: pa.Array | pa.ChunkedArray) -> set[str]:
    return set(pc.unique(column).drop_null().to_pylist())


def _rows_stats(table: pa.Table, d: int) -> tuple[np.ndarray, set[str]]:
    ids = _model_ids(table.column("model_id"))
    features = table.column("features").combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.float32()))
    return matrix(features, d).astype(np.float32, copy=False), ids


def added_since(
    spark: SparkSession,
    settings: Settings,
    after: int,
    upto: int,
    d: int = FEATURE_DIM,
    driver_bytes: int = DRIVER_BYTES,
) -> Increment | None:
    """The rows that blind appends added to ``features`` in commits ``after + 1 .. upto``, through
    delta-rs's change data feed; None when a commit changed existing rows or the log cannot say
    (``changes.appended_rows``).

    Up to ``driver_bytes`` of feature values are read on the driver; more by Spark tasks, each
    reading a run of commits, balanced by the rows the commits added.
    """
    location = settings.features_table
    table = lake.delta_table(settings, location)
    found = changes.commits(table, after, upto)
    if not changes.followable(found):
        return None
    assert found is not None
    if sum(c.rows_added for c in found) * d * 4 <= driver_bytes:
        added = changes.rows_of(table, found, ["features", "model_id"])
        if added is None:
            return None
        rows, ids = _rows_stats(added, d)
        return Increment(Stats.of(rows), ids, rows)
    groups = _balanced([(c.version, c.rows_added or 1) for c in found], spark.sparkContext.defaultParallelism)

    def task(parts: Iterator[tuple[int, int]]) -> Iterator[Collected | None]:
        for first, last in parts:
            part = changes.appended_rows(settings, location, first - 1, last, ["features", "model_id"])
            if part is None:
                yield None
                continue
            rows, ids = _rows_stats(part, d)
            yield Collected(Stats.of(rows), ids)

    sc = spark.sparkContext
    sc.setJobDescription(f"PCA statistics over commits {after + 1}..{upto}")
    try:
        results = sc.parallelize(groups, len(groups)).mapPartitions(task).collect()
    finally:
        sc.setJobDescription(None)  # type: ignore[arg-type]
    if any(r is None for r in results):
        return None
    total = Collected(Stats.empty(d), set())
    for part in results:
        total = total.merged(part)  # type: ignore[arg-type]
    return Increment(total.stats, total.model_ids, None)


def _balanced(weights: list[tuple[int, int]], groups: int) -> list[tuple[int, int]]:
    """Consecutive versions cut into at most ``groups`` runs ``(first, last)`` of about equal weight."""
    total = sum(w for _, w in weights)
    runs: list[tuple[int, int]] = []
    acc = 0
    for version, weight in weights:
        if not runs or acc >= total / groups:
            runs.append((version, version))
            acc = 0
        runs[-1] = (runs[-1][0], version)
        acc += weight
    return runs


def pending_rows(settings: Settings) -> int:
    """Rows appended to the features table since the stored statistics (from the log's commits)."""
    # Only the version: the periodic loop asks often, and the statistics themselves are 13 MB.
    covered = pc.max(
        lake.dataset(settings, settings.pca_stats_table).dataset.to_table(columns=["source_table_version"]).column(0)
    ).as_py()
    features = lake.delta_table(settings, settings.features_table)
    found = None if covered is None else changes.commits(features, covered, features.version())
    if found is None:  # never fitted, or log retention removed the commits since: every row counts
        return sum(pa.table(features.get_add_actions(flatten=True)).column("num_records").to_pylist())
    return sum(c.rows_added for c in found)
