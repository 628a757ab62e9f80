"""The table builder of ``make bench-scale``: a history of ``n`` images, as the pipeline would have
left it, without featurizing ``n`` photos.

It writes the tables the stream writes, with their schema (``features``, ``quarantine``), then runs
the real refit once, so that the table holds a fitted PCA version (``pca_models``, ``pca_stats``), as
after a history of stream batches and refits. (Rows carry no projection of their own: the refit
writes only the PCA tables, and readers project onto the version they use.) The rows are
synthetic 1280-d float32 vectors with a decaying spectrum (25 clusters in a 96-d subspace, plus
noise: k = 60 at 95 % of the variance), each with a label, a key
(``synthetic/class-<c>/<i>.jpg``), an etag and an id, carrying the real model's id so that the
stream's new rows and the synthetic ones are one feature space. Their event times go back from the
build at ``ROWS_PER_DAY`` a day, so a larger table is a longer history at the same daily volume
(the partitions by ``event_date`` hold the same rows at every size). They are appended with delta-rs
and Arrow, 50,000 rows a chunk, in one commit.

The pipeline's record of those uploads as processed is the tables themselves: the stream knows an
image by its id in ``features`` or ``quarantine`` (``stream/written.py`` looks there), so nothing else
is written. The synthetic uploads have no ledger rows; ``scale.py`` measures the ledger's history
separately (``discovery_s``).

A build is cached under ``<cache>/rows-<n>-<model>/`` (``make bench-scale`` uses ``work/scale-cache/``,
gitignored) and reused by later runs, which say so; ``copy_tables`` gives each run its own copy
(data files hard-linked: Delta never changes a data file in place; logs copied).

Example::

    built = cached_tables(spark, settings, 100_000, model_id, Path("work/scale-cache"))
    copy_tables(built.root, Path(settings.table_root))
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from fruits.config import Settings
from fruits.io import lake

DIM = 1280
CLUSTERS = 25
LATENT = 96
CHUNK = 50_000
# Bump when the rows or the tables change: older caches are then built again.
BUILDER_VERSION = 4  # 4: rows left unprojected (the refit no longer rewrites them); 3: partitioned by
# event_date; 2: quarantine records the SQS message id
ROWS_PER_DAY = 10_000
log = logging.getLogger("bench-scale")


@dataclass
class Built:
    """A cached history: its table root, rows, the PCA version's k and what building it cost."""

    root: Path
    rows: int
    k: int
    write_s: float
    first_refit_s: float
    reused: bool = False


def synthetic_key(i: int) -> str:
    return f"synthetic/class-{i % CLUSTERS}/{i}.jpg"


@functools.cache
def _structure() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clusters' centres, the latent basis and its scales: the same for every chunk."""
    structure = np.random.default_rng(7)
    centers = np.abs(structure.normal(size=(CLUSTERS, DIM))).astype(np.float32)
    basis = np.linalg.qr(structure.normal(size=(DIM, LATENT)))[0].T.astype(np.float32)
    return centers, basis, np.geomspace(3.0, 0.3, LATENT).astype(np.float32)


def synthetic_chunk(start: int, n: int, model_id: str, schema: pa.Schema) -> pa.RecordBatch:
    """Rows ``start .. start + n`` of the features table (deterministic in their index)."""
    centers, basis, scales = _structure()
    rng = np.random.default_rng(1000 + start)
    index = np.arange(start, start + n)
    cluster = index % CLUSTERS
    x = centers[cluster] + (rng.normal(size=(n, LATENT)).astype(np.float32) * scales) @ basis
    x += rng.normal(scale=0.02, size=(n, DIM)).astype(np.float32)
    ids = [hashlib.sha256(f"synthetic-{i}".encode()).hexdigest() for i in index]
    now = np.full(n, int(time.time() * 1e6))
    event_time = pa.array(now - index * (86_400_000_000 // ROWS_PER_DAY), pa.timestamp("us", tz="UTC"))
    columns = {
        "image_id": pa.array(ids),
        "bucket": pa.array(["synthetic"] * n),
        "key": pa.array([synthetic_key(int(i)) for i in index]),
        "label": pa.array([f"class-{c}" for c in cluster]),
        "size": pa.array(np.full(n, 20_000, dtype=np.int64)),
        "etag": pa.array(ids),
        "version_id": pa.nulls(n, pa.string()),
        "event_time": event_time,
        "event_date": event_time.cast(pa.date32()),
        "ingested_at": pa.array(now, pa.timestamp("us", tz="UTC")),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM).cast(pa.list_(pa.float32())),
        "model_id": pa.array([model_id] * n),
        "pca_features": pa.nulls(n, pa.list_(pa.float32())),
        "pca_version": pa.nulls(n, pa.int64()),
    }
    return pa.RecordBatch.from_arrays(
        [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema], schema=schema
    )


def append_synthetic(settings: Settings, start: int, n: int, model_id: str) -> None:
    """Append rows ``start .. start + n`` to the features table with delta-rs, in one commit (a
    blind append, as the stream's are)."""
    from deltalake import write_deltalake

    table = lake.delta_table(settings, settings.features_table)
    schema = pa.schema(table.schema().to_arrow())  # type: ignore[arg-type]
    chunks = (synthetic_chunk(s, min(CHUNK, start + n - s), model_id, schema) for s in range(start, start + n, CHUNK))
    write_deltalake(table, pa.RecordBatchReader.from_batches(schema, chunks), mode="append")


def build_tables(spark, settings: Settings, n: int, model_id: str) -> Built:  # noqa: ANN001
    """Write a history of ``n`` synthetic images under ``settings.table_root`` and fit PCA on it."""
    from fruits.pca.refit import refit
    from fruits.spark import tables as table

    table.ensure_tables(spark, settings)
    started = time.perf_counter()
    append_synthetic(settings, 0, n, model_id)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    fit = refit(spark, settings, write_plots=False)
    first_refit_s = time.perf_counter() - started
    log.info("%d synthetic rows written in %.1f s, first refit %.1f s (k=%d)", n, write_s, first_refit_s, fit.model.k)
    return Built(Path(settings.table_root), n, fit.model.k, write_s, first_refit_s)


def cached_tables(spark, settings: Settings, n: int, model_id: str, cache: Path) -> Built:  # noqa: ANN001
    """The history of ``n`` images from ``cache``, built there first if it is not. ``settings``
    gives the Spark side of the build (the emulator); its table root is not used."""
    folder = cache / f"rows-{n}-{model_id.replace(':', '-')}"
    marker = folder / "built.json"
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("builder_version") == BUILDER_VERSION:
            built = Built(**{**recorded["built"], "root": folder / "tables", "reused": True})
            log.info(
                "%d rows: reusing the cached tables in %s (built %s; delete the folder to rebuild)",
                n,
                folder,
                recorded["built_at"],
            )
            return built
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    built = build_tables(spark, settings.with_(table_root=str(folder / "tables")), n, model_id)
    marker.write_text(
        json.dumps(
            {
                "builder_version": BUILDER_VERSION,
                "built_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "built": {**asdict(built), "root": None},
            },
            indent=1,
        )
        + "\n"
    )
    return built


def copy_tables(source: Path, destination: Path) -> None:
    """A table root copied for one run: data files hard-linked, everything else copied."""

    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith(".parquet"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link_or_copy)
