"""The similarity index as readers see it: a manifest naming segments, and the rows newer than them.

The index lives under ``<table root>/similarity/`` (a local folder or S3): ``current.json`` (the
manifest: the PCA version the vectors are in, the ``features`` table version they cover, the
segments) and one folder per build holding the segments' files. Only the index's builder
(``builder.update``, run by the refit) writes there; a reader never scans the table.

A reader (``SimilarityIndex``) opens the segments memory-mapped (on S3: copied once into a local
cache, ``FRUITS_INDEX_CACHE``) and follows the table: the rows of the commits since the version the
index covers are the *tail*, read through the change data feed and searched exactly. So an answer
is never staler than the table, and the tail is bounded by the time between two index updates.

Example::

    index = SimilarityIndex(settings)
    view = index.refresh()                            # once per query: follows the table and the manifest
    vector, image_id = view.vector_of("uploads/Banana/1.jpg")
    view.nearest(vector, k=10, exclude=image_id)      # [Hit(distance=0.04, image_id=..., key=..., label=...), ...]

Limitations: a reader re-reads the manifest at most every ``FRUITS_REFRESH_SECONDS`` (until then the tail
covers what a newer manifest would); commits that changed or deleted rows, or an index older
than VACUUM's retention, cannot be followed, nor can a table made anew (``LookupError``: the
refit's next update rebuilds the index).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from pyarrow import fs as pa_fs

from ..config import Settings
from ..io import aws, changes, lake
from ..pca import registry
from ..pca.model import PcaModel, matrix
from .segment import ROW_COLUMNS, Segment, SegmentInfo

log = logging.getLogger(__name__)

MANIFEST = "current.json"
# How deep a search for labelled rows goes into one segment (rows).
MAX_DEPTH = 4096
# A reader's copy of a file no manifest it read names is deleted this long after it was made: a
# reader of a newer manifest sharing the cache may still want it.
CACHE_GRACE_SECONDS = 3600.0
# What the tail and the builder read of a row: its identity and what its vector is made from.
SOURCE_COLUMNS = [*ROW_COLUMNS, "pca_version", "pca_features", "features"]


@dataclass(frozen=True)
class Manifest:
    build: str  # the folder of this build's segments
    pca_version: int
    pca_rows: int  # the rows that PCA version was fitted on (the builder rebuilds as the table outgrows it)
    feature_model_id: str
    k: int
    features_version: int  # the features table version the segments cover
    table_id: str  # the features table's Delta id: a table made anew is another table
    segments: tuple[SegmentInfo, ...]
    updated_at: str
    retired: tuple[tuple[str, str], ...] = ()  # (file under the root, when) no longer named: deleted later

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def next_key(self) -> int:
        return self.segments[-1].first + self.segments[-1].rows if self.segments else 0

    def built_in(self, model: PcaModel) -> bool:
        """Whether ``model`` is the PCA version the index was built in (not a namesake of a PCA
        table made anew)."""
        return model.version == self.pca_version and model.row_count == self.pca_rows

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        return cls(
            **{
                **raw,
                "segments": tuple(SegmentInfo(**s) for s in raw["segments"]),
                "retired": tuple((path, at) for path, at in raw.get("retired", ())),
            }
        )


class UnknownKeyError(KeyError):
    """No row of the features table has this upload key."""


@dataclass(frozen=True)
class Hit:
    distance: float  # cosine distance, 0 = same direction
    image_id: str
    key: str
    label: str | None


def root(settings: Settings) -> str:
    return f"{settings.table_root}/similarity"


def storage(settings: Settings) -> tuple[pa_fs.FileSystem, str]:
    """The filesystem the index is on, and its root there."""
    return lake.filesystem(settings), lake.path_in(root(settings))


def read_manifest(settings: Settings) -> Manifest | None:
    """The current manifest, or None before the first build."""
    fs, base = storage(settings)
    try:
        with fs.open_input_stream(f"{base}/{MANIFEST}") as f:
            return Manifest.from_json(f.read().decode())
    except FileNotFoundError:
        return None


def local_folder(settings: Settings, build: str, segments: tuple[SegmentInfo, ...]) -> Path:
    """A local folder holding ``segments`` of ``build``: the index's own on a local table root, a
    copy in ``settings.index_cache`` on S3 (each segment copied once: they never change; copies no
    manifest names are deleted an hour after they were made)."""
    if not aws.is_s3(settings.table_root):
        return Path(storage(settings)[1]) / build
    cache = Path(settings.index_cache).expanduser() / storage(settings)[1]
    folder = copy_segments(settings, build, segments, cache / build)
    named = {name for info in segments for name in info.files}
    # Copies that no manifest this reader read names, once old: a reader that still maps one keeps
    # reading it (the file lives until unmapped), and one of a newer manifest had time to copy its own.
    horizon = time.time() - CACHE_GRACE_SECONDS
    for path in [*folder.iterdir(), *(p for p in cache.iterdir() if p != folder)]:
        if path.name in named or path.stat().st_mtime > horizon:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return folder


def copy_segments(settings: Settings, build: str, segments: tuple[SegmentInfo, ...], folder: Path) -> Path:
    """Copy the files of ``segments`` of ``build`` that ``folder`` lacks into it; returns ``folder``."""
    fs, base = storage(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for info in segments:
        for name in info.files:
            if not (folder / name).exists():
                partial = folder / f"{name}.{uuid.uuid4().hex}.partial"
                pa_fs.copy_files(
                    f"{base}/{build}/{name}",
                    str(partial),
                    source_filesystem=fs,
                    destination_filesystem=pa_fs.LocalFileSystem(),
                )
                partial.rename(folder / name)
    return folder


def in_space(rows: pa.RecordBatch | pa.Table, model: PcaModel) -> np.ndarray:
    """The rows' unit vectors in ``model``'s space (float32): the stream's projection where it used
    this model, else projected here from the features."""
    on_model = pc.fill_null(pc.equal(rows.column("pca_version"), model.version), False).to_numpy(zero_copy_only=False)
    out = np.empty((rows.num_rows, model.k), dtype=np.float32)
    if on_model.any():
        out[on_model] = matrix(rows.column("pca_features").filter(pa.array(on_model)), model.k)
    if not on_model.all():
        out[~on_model] = model.project(matrix(rows.column("features").filter(pa.array(~on_model)), len(model.mean)))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1, norms)


@dataclass(frozen=True)
class _Tail:
    """The rows of commits ``after + 1 .. upto``, exactly."""

    upto: int
    image_ids: np.ndarray
    keys: np.ndarray
    labels: np.ndarray
    unit: np.ndarray

    @classmethod
    def empty(cls, upto: int, k: int) -> _Tail:
        nothing = np.array([], dtype=object)
        return cls(upto, nothing, nothing, nothing, np.empty((0, k), dtype=np.float32))

    def extended(self, rows: pa.Table, model: PcaModel, upto: int) -> _Tail:
        """A new tail with ``rows`` too (this one stays as it is for the queries reading it)."""
        if not rows.num_rows:
            return replace(self, upto=upto)
        image_ids, keys, labels = (
            np.concatenate([old, rows.column(name).to_numpy(zero_copy_only=False)])
            for old, name in ((self.image_ids, "image_id"), (self.keys, "key"), (self.labels, "label"))
        )
        return _Tail(upto, image_ids, keys, labels, np.concatenate([self.unit, in_space(rows, model)]))


@dataclass(frozen=True)
class IndexView:
    """The index as one query sees it: a manifest, its segments, the model and the tail, which
    never change under it (a refresh makes a new view)."""

    manifest: Manifest
    model: PcaModel
    segments: tuple[Segment, ...]
    tail: _Tail

    def vector_of(self, key: str) -> tuple[np.ndarray, str]:
        """The vector of upload ``key``'s newest row, and its image id (``UnknownKeyError``: no row)."""
        matches = np.flatnonzero(self.tail.keys == key)
        if len(matches):
            i = matches[-1]
            return self.tail.unit[i], str(self.tail.image_ids[i])
        for segment in reversed(self.segments):
            found = segment.find(key)
            if found:
                return segment.vectors(found[-1:])[0], segment.rows_at(np.array(found[-1:]))["image_id"][0]
        raise UnknownKeyError(f"{key!r} is not in the features table (try `fruits status {key}`)")

    def nearest(self, query: np.ndarray, k: int, exclude: str | None = None, labelled_only: bool = False) -> list[Hit]:
        """The ``k`` rows nearest ``query`` (cosine), the row ``exclude`` (an image id) left out: from
        each segment's graph and the tail's exact distances. With ``labelled_only``, a segment is
        searched ever deeper for labelled rows, up to ``MAX_DEPTH`` rows: past that, a segment of
        mostly unlabelled rows gives the labelled ones it found."""
        if not self.manifest.rows and not len(self.tail.keys):
            raise LookupError("the features table is empty")
        query = np.asarray(query, dtype=np.float32)
        hits: list[Hit] = []
        for segment in self.segments:
            count = k + 1
            while True:
                keys, distances = segment.search(query, count)
                rows = segment.rows_at(keys)
                kept = [
                    Hit(float(d), i, key, label)
                    for d, i, key, label in zip(distances, rows["image_id"], rows["key"], rows["label"])
                    if i != exclude and (label is not None or not labelled_only)
                ]
                if len(kept) >= k or count >= min(segment.info.rows, MAX_DEPTH):
                    break
                count *= 4  # the labelled rows are further down: look deeper
            hits += kept[:k]
        tail = self.tail
        if len(tail.keys):
            norm = float(np.linalg.norm(query))
            distances = 1.0 - tail.unit @ (query / (norm or 1.0))
            keep = tail.image_ids != exclude
            if labelled_only:
                keep &= tail.labels != None  # noqa: E711 (element-wise on an object array)
            for i in np.flatnonzero(keep)[np.argsort(distances[keep], kind="stable")[:k]]:
                hits.append(Hit(float(distances[i]), str(tail.image_ids[i]), str(tail.keys[i]), tail.labels[i]))
        return sorted(hits, key=lambda h: h.distance)[:k]


class SimilarityIndex:
    """A reader of the index. ``refresh`` (once per query) gives the view to query; it may be called
    from several threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._view: IndexView | None = None
        self._read_at = -float("inf")
        self._table: DeltaTable | None = None
        self._fs = lake.filesystem(settings)
        self._lock = threading.Lock()

    def refresh(self) -> IndexView:
        """Follow the table (the tail) and, every ``settings.refresh_seconds``, the manifest."""
        with self._lock:
            view = self._view
            if view is None or time.monotonic() - self._read_at >= self.settings.refresh_seconds:
                view = self._read_manifest(view)
            if self._table is None:
                self._table = lake.delta_table(self.settings, self.settings.features_table)
            elif self._committed_after(self._table.version()):
                self._table.update_incremental()
            if self._table.metadata().id != view.manifest.table_id:
                raise LookupError(
                    f"the similarity index was built over another {self.settings.features_table} "
                    "(the table was made anew): the next `fruits pca refit` rebuilds it"
                )
            self._view = view = self._follow(view, self._table.version())
            return view

    def _read_manifest(self, view: IndexView | None) -> IndexView:
        """The view of the current manifest (``view`` if it is still current). A segment retired
        between reading the manifest and opening it makes it read the manifest once more."""
        for attempt in (1, 2):
            manifest = read_manifest(self.settings)
            if manifest is None:
                raise LookupError("no similarity index yet: `fruits pca refit` builds it once the table has rows")
            if view is not None and manifest == view.manifest:
                break
            try:
                view = self._open(manifest, view)
                break
            except FileNotFoundError as exc:
                if attempt == 2:
                    raise LookupError(
                        f"the similarity index's manifest names a file that is gone ({exc}); "
                        "`similarity.update(settings, rebuild=True)` or the next refit rebuilds it"
                    ) from exc
        assert view is not None
        self._read_at = time.monotonic()
        return view

    def _committed_after(self, version: int) -> bool:
        """Whether ``features`` has a commit after ``version``: one look for its log entry (a stat
        here, a HEAD on S3), where loading the log's news costs more as the table's files grow."""
        entry = f"{lake.path_in(self.settings.features_table)}/_delta_log/{version + 1:020d}.json"
        return self._fs.get_file_info(entry).type != pa_fs.FileType.NotFound

    def _open(self, manifest: Manifest, old: IndexView | None) -> IndexView:
        same_model = old is not None and old.model.version == manifest.pca_version
        model = old.model if same_model else registry.model(self.settings, manifest.pca_version)
        if model is None or not manifest.built_in(model):
            raise LookupError(
                f"PCA version {manifest.pca_version} is not the one the similarity index was built in "
                "(the PCA tables were made anew): the next `fruits pca refit` rebuilds it"
            )
        folder = local_folder(self.settings, manifest.build, manifest.segments)
        opened = {s.info: s for s in old.segments} if old is not None and old.manifest.build == manifest.build else {}
        segments = tuple(opened.get(info) or Segment.open(folder, info) for info in manifest.segments)
        keep_tail = old is not None and same_model and old.manifest.features_version == manifest.features_version
        tail = old.tail if keep_tail else _Tail.empty(manifest.features_version, manifest.k)
        log.info(
            "similarity index %s: PCA v%d, %d rows in %d segments, table version %d",
            manifest.build,
            manifest.pca_version,
            manifest.rows,
            len(manifest.segments),
            manifest.features_version,
        )
        return IndexView(manifest, model, segments, tail)

    def _follow(self, view: IndexView, version: int) -> IndexView:
        if version <= view.tail.upto:
            return view
        rows = changes.appended_rows(
            self.settings, self.settings.features_table, view.tail.upto, version, SOURCE_COLUMNS, table=self._table
        )
        if rows is None:
            raise LookupError(
                f"the similarity index covers features version {view.manifest.features_version}, and the commits "
                "since then cannot be followed (rows changed, or older than VACUUM's retention); the refit's next "
                "index update brings it up to date (`fruits pca refit`)"
            )
        return replace(view, tail=view.tail.extended(rows, view.model, version))
