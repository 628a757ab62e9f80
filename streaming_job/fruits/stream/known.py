"""The images the tables already hold: the stream's exactly-once check, kept on the driver.

Before featurizing a micro-batch, the stream drops every image whose ``image_id`` is already in
``features`` or ``quarantine``: a redelivered event, a ledger row appended twice, or a micro-batch replayed
after a crash whose rows had committed. ``KnownImages`` holds those ids on the driver, sorted, and
brings them up to date before each micro-batch: delta-rs's change data feed of the commits since
its last look gives the ``image_id`` column of the rows they added, with Arrow and no Spark job.

Why not an anti-join against the tables in Spark: Delta reconstructs the state of each new table
version in Spark jobs, both for a scan and for an idempotent (``txnAppId``) write. Our tables have a
new version every micro-batch, and that cost 1.3-1.9 s per micro-batch on 2 cores, more than
featurizing a small batch. A Spark scan also reads every id of the table each time.

A commit that removed rows (a DELETE; not a re-projection, which keeps every id; not OPTIMIZE)
makes the next ``refresh`` read the tables again, so a deleted image can be ingested anew; so does
a last look older than VACUUM's retention.

Example::

    known = KnownImages(settings)
    known.refresh()                       # before each micro-batch
    new = ids[~known.contains(ids)]

Limitations: the ids live in the driver's memory, 64 bytes each (10 million images: 640 MB). Run
one stream per set of tables: two streams writing at once would not see each other's rows in time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from pyspark.sql import SparkSession

from ..config import Settings
from ..io import changes, lake
from ..io.lake import DataFile
from ..spark import tables as table

log = logging.getLogger(__name__)

ID = "S64"  # image_id: a SHA-256 in hex


def as_ids(values: pa.ChunkedArray | pa.Array | Sequence[str]) -> np.ndarray:
    """Image ids as a NumPy array of fixed-width bytes (what ``KnownImages`` compares)."""
    if isinstance(values, (pa.ChunkedArray, pa.Array)):
        values = values.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=object).astype(ID)


def _isin(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    if not len(sorted_ids):
        return np.zeros(len(ids), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[at] == ids


class KnownImages:
    """The ``image_id`` values of ``features`` and ``quarantine`` (or of ``locations``)."""

    def __init__(self, settings: Settings, spark: SparkSession | None = None,
                 locations: Sequence[str] | None = None) -> None:
        self._settings = settings
        self._spark = spark  # only for tables Arrow cannot read file by file
        self._locations = tuple(locations or (settings.features_table, settings.quarantine_table))
        self._tables = {location: lake.delta_table(settings, location) for location in self._locations}
        self._versions: dict[str, int] = {}
        # Ids merged into one sorted array, and the recent ones in a small one: adding a
        # micro-batch's ids then costs what they cost, not a copy of every id.
        self._ids = self._recent = np.empty(0, dtype=ID)
        self.reload()

    def __len__(self) -> int:
        return len(self._ids) + len(self._recent)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """A boolean mask: which of ``ids`` (see ``as_ids``) the tables hold."""
        return _isin(ids, self._ids) | _isin(ids, self._recent)

    def reload(self) -> None:
        """Read every id of the tables, at their newest versions."""
        chunks = []
        for location, delta in self._tables.items():
            delta.update_incremental()
            version = delta.version()
            listed = lake.table_files(self._settings, location, table=delta)
            if listed is not None:
                chunks.append(self._read(listed.files))
            else:  # deletion vectors or column mapping: only a Delta reader knows the rows
                if self._spark is None:
                    raise ValueError(f"{location} needs a Delta reader (deletion vectors or column mapping); pass spark")
                rows = table.read(self._spark, location, version=version).select("image_id").toArrow()
                chunks.append(as_ids(rows.column(0)))
            self._versions[location] = version
        self._ids, self._recent = np.unique(np.concatenate(chunks)), np.empty(0, dtype=ID)
        log.info("%d known images in %s", len(self._ids), ", ".join(self._locations))

    def refresh(self) -> None:
        """Add the ids that appends committed since the last look; read everything again if a
        commit removed rows."""
        added = []
        for location, delta in self._tables.items():
            delta.update_incremental()
            version, before = delta.version(), self._versions[location]
            if version == before:
                continue
            rows = changes.appended_rows(self._settings, location, before, version, ["image_id"],
                                         skip_tag=changes.REPROJECT_TAG, table=delta)
            if rows is None:
                self.reload()
                return
            added.append(as_ids(rows.column(0)))
            self._versions[location] = version
        if added:
            self._recent = np.union1d(self._recent, np.concatenate(added))
            if len(self._recent) > max(100_000, len(self._ids) // 16):
                self._ids, self._recent = np.union1d(self._ids, self._recent), np.empty(0, dtype=ID)

    def _read(self, files: list[DataFile]) -> np.ndarray:
        if not files:
            return np.empty(0, dtype=ID)
        dataset = ds.dataset([lake.path_in(f.uri) for f in files], format="parquet",
                             filesystem=lake.filesystem(self._settings))
        return as_ids(dataset.to_table(columns=["image_id"]).column(0))
