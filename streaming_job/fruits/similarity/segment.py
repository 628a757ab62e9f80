"""One segment of the similarity index: an HNSW graph (usearch) over some rows' PCA vectors, and
their rows (image id, key, label) in an Arrow file beside it. Both are immutable once written and
opened memory-mapped, so a reader's start-up does not grow with the segment.

A segment holds the rows whose index keys run from ``first`` to ``first + rows - 1``: the index key
of a row is its position in the whole index, so the rows of two neighbouring segments merge
without renumbering. A row's upload key is found by ``key_hash`` (the ledger's hash of the key),
sorted with the row it belongs to: a binary search, not a scan.

Example::

    written = write(folder, first=0, rows=table, index=new_index(k), vectors=unit)
    segment = Segment.open(folder, written)
    keys, distances = segment.search(query, count=11)
    segment.rows_at(keys)["label"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from usearch.index import Index

from fruits_ingest.ledger import key_hash

# f16 halves the vectors' memory against f32 for the same recall (0.998 at 100,000 of bench-scale's
# rows, k = 60); i8 lost recall (0.88 against 0.99 on 100,000 clustered rows at k = 340). usearch's
# default 16 links per node and 128 candidates while building; 128 while searching (64 gave
# recall 0.96 on those rows, 0.35 ms against 0.5 ms a search).
DTYPE = "f16"
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128
ROW_COLUMNS = ("image_id", "key", "label")


@dataclass(frozen=True)
class SegmentInfo:
    """What a manifest says of a segment."""

    name: str
    first: int
    rows: int

    @property
    def files(self) -> tuple[str, str]:
        return f"{self.name}.usearch", f"{self.name}.arrow"


def new_index(k: int) -> Index:
    return Index(
        ndim=k,
        metric="cos",
        dtype=DTYPE,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )


def write(
    folder: Path,
    first: int,
    rows: pa.Table,
    index: Index,
    vectors: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
) -> SegmentInfo:
    """Write a segment of ``rows`` (``ROW_COLUMNS``) into ``folder``: ``index`` holds the vectors of
    its first rows (keys from ``first`` on), ``vectors`` are those of the rest, added here;
    ``hashes``: the rows' key hashes when known (a merge has its segments'), else computed."""
    info = SegmentInfo(f"seg-{first:012d}-{len(rows):012d}", first, len(rows))
    have = len(index)
    if vectors is not None and len(vectors):
        index.add(np.arange(first + have, first + have + len(vectors), dtype=np.uint64), vectors)
    if len(index) != len(rows):
        raise ValueError(f"a segment of {len(rows)} rows with {len(index)} vectors")
    folder.mkdir(parents=True, exist_ok=True)
    graph, table = (folder / name for name in info.files)
    index.save(str(graph))
    if hashes is None:
        hashes = np.array([key_hash(k) for k in rows.column("key").to_pylist()], dtype=np.int64)
    order = np.argsort(hashes, kind="stable")
    # One chunk (a row is then found by its offset, where taking from many chunks first joins them
    # all), of large strings (a segment may hold more than 2 GB of keys).
    table_out = rows.select(list(ROW_COLUMNS)).cast(pa.schema([(c, pa.large_string()) for c in ROW_COLUMNS]))
    table_out = table_out.append_column("sorted_key_hash", pa.array(hashes[order]))
    table_out = table_out.append_column("sorted_row", pa.array(order.astype(np.int64))).combine_chunks()
    with pa.OSFile(str(table), "wb") as sink, pa.ipc.new_file(sink, table_out.schema) as writer:
        writer.write_table(table_out)
    return info


@dataclass
class Segment:
    """A segment opened for reading: the graph and the rows memory-mapped."""

    info: SegmentInfo
    index: Index
    rows: pa.Table
    sorted_hash: np.ndarray
    sorted_row: np.ndarray

    @classmethod
    def open(cls, folder: Path, info: SegmentInfo, view: bool = True) -> Segment:
        graph, table = (folder / name for name in info.files)
        index = Index.restore(str(graph), view=view)
        if index is None:
            raise FileNotFoundError(f"no similarity segment at {graph}")
        index.expansion_search = EXPANSION_SEARCH
        rows = pa.ipc.open_file(pa.memory_map(str(table))).read_all()
        return cls(info, index, rows, rows.column("sorted_key_hash").to_numpy(), rows.column("sorted_row").to_numpy())

    def search(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The index keys and cosine distances of up to ``count`` rows nearest ``query``."""
        found = self.index.search(query, min(count, self.info.rows))
        return found.keys.astype(np.int64), found.distances.astype(np.float32)

    def rows_at(self, keys: np.ndarray) -> dict[str, list]:
        """``ROW_COLUMNS`` of the rows with these index keys."""
        rows = pa.array(np.asarray(keys, dtype=np.int64) - self.info.first)
        return {name: self.rows.column(name).take(rows).to_pylist() for name in ROW_COLUMNS}

    def find(self, key: str) -> list[int]:
        """Index keys of the rows of upload ``key``."""
        wanted = key_hash(key)
        lo, hi = (int(np.searchsorted(self.sorted_hash, wanted, side)) for side in ("left", "right"))
        rows = self.sorted_row[lo:hi]
        if not len(rows):
            return []
        same = pc.equal(self.rows.column("key").take(pa.array(rows)), key).to_numpy(zero_copy_only=False)
        return [self.info.first + int(r) for r in rows[same]]

    def key_hashes(self) -> np.ndarray:
        """The rows' key hashes, in row order."""
        hashes = np.empty(self.info.rows, dtype=np.int64)
        hashes[self.sorted_row] = self.sorted_hash
        return hashes

    def vectors(self, keys: list[int]) -> np.ndarray:
        """The stored (f16, as float32) vectors of these index keys."""
        found = self.index.get(np.asarray(keys, dtype=np.uint64), dtype=np.float32)
        return np.vstack(found) if isinstance(found, tuple) else np.asarray(found).reshape(len(keys), -1)
