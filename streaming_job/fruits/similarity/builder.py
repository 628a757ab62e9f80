"""Builds and updates the similarity index. The refit runs ``update`` after each fit, under its
lease: the index has one writer, like the PCA tables.

``update`` does one of:

- **build**: every row of ``features`` in the newest PCA version, one segment. When there is no
  index yet, when asked (``rebuild``), when the feature model changed, or when the newest PCA
  version was fitted on ``REBUILD_GROWTH`` times the rows of the index's version. The vectors'
  space changes only then: between builds the table at least doubles, so each row is read by a
  build a bounded number of times over the table's life, however often the refit runs.
- **append**: the rows of the commits since the version the index covers (the change data feed),
  projected into the index's PCA version, become a new segment; then the newest two segments merge
  while the older holds at most ``MERGE_RATIO`` times the newer's rows (a log-structured merge:
  O(log n) segments, a row rewritten O(log n) times). Its cost follows the new rows on average; the
  update whose merge reaches the largest segment rewrites the whole index.
- a rebuild too when the commits since the index cannot be followed (rows changed or deleted, or
  older than VACUUM's retention), a segment file is gone, or the ``features`` or PCA tables were
  made anew.

The new segments are written, then the manifest (readers switch on their next refresh); files a
manifest no longer names are deleted by the first update ``GRACE_SECONDS`` or more later, when no
reader still opens them.

Example::

    done = update(settings)              # after a refit; `fruits pca refit` does it
    done.mode, done.manifest.rows        # ('appended', 1_000_000)

Limitations: a build holds the index in memory (about k x 2 bytes and ~130 bytes of graph a row:
0.8 GB per million rows at k=340) and runs on the refit's driver.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable
from pyarrow import fs as pa_fs

from ..config import Settings
from ..io import aws, changes, lake
from ..pca import registry
from ..pca.model import PcaModel
from .index import MANIFEST, SOURCE_COLUMNS, Manifest, copy_segments, in_space, read_manifest, root, storage
from .segment import ROW_COLUMNS, Segment, SegmentInfo, new_index, write

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

REBUILD_GROWTH = 2.0
MERGE_RATIO = 4
GRACE_SECONDS = 3600.0
PROGRESS_ROWS = 100_000


@dataclass
class IndexUpdate:
    """What ``update`` did: ``built``, ``appended``, ``unchanged`` or ``none`` (no PCA version yet)."""

    mode: str
    manifest: Manifest | None
    rows_added: int
    seconds: float
    reason: str


def update(
    settings: Settings,
    *,
    rebuild: bool = False,
    guard: Callable[[], None] | None = None,
    spark: SparkSession | None = None,
) -> IndexUpdate:
    """Bring the index up to the ``features`` table's newest version (see the module). ``guard`` is
    called right before the manifest is written (the caller's lease is still its own); ``spark``
    reads a table with deletion vectors for a build (Arrow reads files, which would bring deleted
    rows back)."""
    started = time.perf_counter()
    newest = registry.model(settings)
    if newest is None:
        return IndexUpdate("none", None, 0, 0.0, "no PCA version yet")
    manifest = read_manifest(settings)
    table = lake.delta_table(settings, settings.features_table)
    version = table.version()
    indexed = _indexed_model(settings, manifest, newest)
    reason = _build_reason(manifest, indexed, newest, table, rebuild)
    rows = None
    if manifest is not None and reason is None:
        if version == manifest.features_version:
            _collect_garbage(settings, manifest)
            return IndexUpdate(
                "unchanged", manifest, 0, time.perf_counter() - started, f"covers features version {version}"
            )
        rows = changes.appended_rows(
            settings, settings.features_table, manifest.features_version, version, SOURCE_COLUMNS, table=table
        )
        if rows is None:
            reason = f"the commits since features version {manifest.features_version} cannot be followed"
    with tempfile.TemporaryDirectory(prefix="fruits-index-") as work:
        new = None
        if manifest is not None and reason is None and rows is not None:
            try:
                new = _append(settings, manifest, indexed, rows, version, Path(work))
                mode, added = "appended", rows.num_rows
                reason = f"{added} rows since features version {manifest.features_version}"
            except FileNotFoundError as exc:  # a segment file is gone: the index cannot grow, so it starts over
                reason = f"a segment is gone ({exc})"
        if new is None:
            new = _build(settings, newest, table, Path(work), manifest, spark)
            mode, added = "built", new.rows
        if guard is not None:
            guard()
        _publish(settings, new, Path(work))
    _collect_garbage(settings, new)
    seconds = time.perf_counter() - started
    log.info(
        "similarity index %s (%s): %d rows added, %d rows in %d segments, PCA v%d, features version %d, %.1f s",
        mode,
        reason,
        added,
        new.rows,
        len(new.segments),
        new.pca_version,
        new.features_version,
        seconds,
    )
    return IndexUpdate(mode, new, added, seconds, reason or "")


def _indexed_model(settings: Settings, manifest: Manifest | None, newest: PcaModel) -> PcaModel | None:
    """The PCA version the index is in, if it is still the one it was built in."""
    if manifest is None:
        return None
    if newest.version == manifest.pca_version:
        model = newest
    else:
        try:
            model = registry.model(settings, manifest.pca_version)
        except LookupError:
            return None
    return model if model is not None and manifest.built_in(model) else None


def _build_reason(
    manifest: Manifest | None, indexed: PcaModel | None, newest: PcaModel, table: DeltaTable, rebuild: bool
) -> str | None:
    if manifest is None:
        return "no index yet"
    if rebuild:
        return "asked to rebuild"
    if manifest.table_id != table.metadata().id:
        return "the features table was made anew"
    if indexed is None:
        return f"PCA version {manifest.pca_version} is not the one the index was built in (PCA tables made anew)"
    if newest.version == manifest.pca_version:
        return None
    if newest.feature_model_id != manifest.feature_model_id:
        return f"the feature model is now {newest.feature_model_id}"
    if newest.row_count >= REBUILD_GROWTH * manifest.pca_rows:
        return (
            f"PCA v{newest.version} was fitted on {newest.row_count} rows, v{manifest.pca_version} "
            f"on {manifest.pca_rows}"
        )
    return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _build(
    settings: Settings, model: PcaModel, table: DeltaTable, work: Path, old: Manifest | None, spark: SparkSession | None
) -> Manifest:
    """Every row in ``model``'s space, one segment, in a new build folder."""
    build = f"v{model.version}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}"
    index, parts, done = new_index(model.k), [], 0
    for batch in lake.batches(settings, settings.features_table, table, SOURCE_COLUMNS, spark):
        if batch.num_rows:
            index.add(np.arange(done, done + batch.num_rows, dtype=np.uint64), in_space(batch, model))
            parts.append(pa.Table.from_batches([batch.select(list(ROW_COLUMNS))]))
            if (done + batch.num_rows) // PROGRESS_ROWS > done // PROGRESS_ROWS:
                log.info("similarity index %s: %d rows indexed", build, done + batch.num_rows)
            done += batch.num_rows
    segments = (write(work / build, 0, _strings(parts), index),) if done else ()
    retired = _retire(old, old.segments) if old is not None else ()
    return Manifest(
        build,
        model.version,
        model.row_count,
        model.feature_model_id,
        model.k,
        table.version(),
        table.metadata().id,
        segments,
        _now(),
        retired,
    )


def _retire(manifest: Manifest, segments: list[SegmentInfo] | tuple[SegmentInfo, ...]) -> tuple[tuple[str, str], ...]:
    """The manifest's retired files still within the grace period, and ``segments``' files from now."""
    horizon = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=GRACE_SECONDS)
    kept = tuple((path, at) for path, at in manifest.retired if dt.datetime.fromisoformat(at) > horizon)
    return (*kept, *((f"{manifest.build}/{name}", _now()) for s in segments for name in s.files))


def _strings(parts: list[pa.Table]) -> pa.Table:
    """The row columns as large strings, as segments keep them (delta-rs may give string views)."""
    schema = pa.schema([(name, pa.large_string()) for name in ROW_COLUMNS])
    return pa.concat_tables([p.select(list(ROW_COLUMNS)).cast(schema) for p in parts])


def _append(
    settings: Settings, manifest: Manifest, model: PcaModel, rows: pa.Table, version: int, work: Path
) -> Manifest:
    """``rows`` as a new segment (in ``model``'s space, the index's), then the log-structured merge."""
    if not rows.num_rows:
        return replace(manifest, features_version=version, updated_at=_now())
    folder = work / manifest.build
    segments = [
        *manifest.segments,
        write(folder, manifest.next_key, _strings([rows]), new_index(model.k), in_space(rows, model)),
    ]
    merges = _merges([s.rows for s in segments])
    merging = manifest.segments[len(manifest.segments) - merges :]
    # The segments the merge rewrites, and only those: the index's own folder, or copies from S3.
    existing = (
        Path(storage(settings)[1]) / manifest.build
        if not aws.is_s3(settings.table_root)
        else copy_segments(settings, manifest.build, merging, work / "merging")
    )
    for _ in range(merges):
        older, newer = (
            Segment.open(folder if (folder / s.files[0]).exists() else existing, s, view=view)
            for s, view in ((segments[-2], False), (segments[-1], True))
        )
        segments[-2:] = [
            write(
                folder,
                older.info.first,
                _strings([older.rows, newer.rows]),
                older.index,
                newer.vectors(list(range(newer.info.first, newer.info.first + newer.info.rows))),
                np.concatenate([older.key_hashes(), newer.key_hashes()]),
            )
        ]
    return replace(
        manifest,
        features_version=version,
        segments=tuple(segments),
        updated_at=_now(),
        retired=_retire(manifest, merging),
    )


def _merges(sizes: list[int]) -> int:
    """How many merges the newest segment of ``sizes`` sets off."""
    merges = 0
    while len(sizes) >= 2 and sizes[-2] <= MERGE_RATIO * sizes[-1]:
        sizes = [*sizes[:-2], sizes[-2] + sizes[-1]]
        merges += 1
    return merges


def _publish(settings: Settings, manifest: Manifest, work: Path) -> None:
    """Copy the new segments' files beside the others, then write the manifest (atomically: a reader
    sees the old manifest or the new one)."""
    fs, base = storage(settings)
    local = pa_fs.LocalFileSystem()
    fs.create_dir(f"{base}/{manifest.build}", recursive=True)
    for info in manifest.segments:
        for name in info.files:
            if (work / manifest.build / name).exists():
                pa_fs.copy_files(
                    str(work / manifest.build / name),
                    f"{base}/{manifest.build}/{name}",
                    source_filesystem=local,
                    destination_filesystem=fs,
                )
    aws.write_bytes(settings, f"{root(settings)}/{MANIFEST}", manifest.to_json().encode(), "application/json")


def _collect_garbage(settings: Settings, manifest: Manifest) -> None:
    """Delete the files retired more than ``GRACE_SECONDS`` ago, and any other file the manifest does
    not name that is that old (a build that failed before its manifest)."""
    fs, base = storage(settings)
    named = {MANIFEST, *(f"{manifest.build}/{name}" for s in manifest.segments for name in s.files)}
    horizon = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=GRACE_SECONDS)
    recent = {path for path, at in manifest.retired if dt.datetime.fromisoformat(at) > horizon}
    for info in fs.get_file_info(pa_fs.FileSelector(base, recursive=True)):
        relative = info.path[len(base) + 1 :]
        if info.type != pa_fs.FileType.File or relative in named or relative in recent:
            continue
        if info.mtime is None or info.mtime.astimezone(dt.UTC) < horizon:
            fs.delete_file(info.path)
    if not aws.is_s3(settings.table_root):  # S3 has no folders to leave behind
        for folder in Path(base).iterdir():
            if folder.is_dir() and folder.name != manifest.build and not any(folder.iterdir()):
                folder.rmdir()
