"""Tables of versions: one row per version, appended once and never rewritten (``pca_models``,
``classifiers``). The refit alone appends to them; every version stays readable.

Readers take one version, never the table: ``newest`` reads the log's file statistics only,
``row`` the file whose statistics can hold the version asked for (delta-rs, no Spark job).
A table root with no such table yet reads as no version.

Example::

    versions.newest(settings, settings.pca_models_table)           # 3, or None before the first
    versions.row(settings, settings.pca_models_table, 2)           # {"version": 2, ...} or None

Limitations: one writer at a time (the refit takes a lease); a second one that computed the same
version commits nothing (``append``: Delta's idempotent-write transaction ids).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from ..config import Settings
from . import lake

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType


def table(settings: Settings, location: str) -> DeltaTable | None:
    """The table at ``location``, or None when nothing has created it yet."""
    try:
        return lake.delta_table(settings, location)
    except TableNotFoundError:
        return None


def newest(settings: Settings, location: str, loaded: DeltaTable | None = None) -> int | None:
    """The newest version in the table (None when there is none), from the files' statistics alone."""
    loaded = loaded or table(settings, location)
    if loaded is None:
        return None
    actions = pa.table(loaded.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return None
    if "max.version" in actions.column_names and actions.column("max.version").null_count == 0:
        return int(pc.max(actions.column("max.version")).as_py())
    # A writer that kept no statistics: read the one column.
    found = lake.as_dataset(settings, location, loaded).to_table(columns=["version"])
    return int(pc.max(found.column(0)).as_py()) if found.num_rows else None


def row(settings: Settings, location: str, version: int, columns: list[str] | None = None) -> dict[str, Any] | None:
    """Version ``version``'s row, or None when the table has no such version. Reads the one file
    whose statistics can hold it."""
    loaded = table(settings, location)
    if loaded is None:
        return None
    rows = (
        lake.as_dataset(settings, location, loaded, files=[("version", "=", version)])
        .to_table(columns=columns, filter=pc.field("version") == version)
        .to_pylist()
    )
    return rows[0] if rows else None


def read(
    settings: Settings, location: str, version: int | None, never_fitted: Callable[[int], LookupError]
) -> dict[str, Any] | None:
    """Version ``version``'s row (None for None: the table holds no version yet, as its registry's
    newest says); ``never_fitted(version)`` is raised for a version the table does not hold."""
    if version is None:
        return None
    found = row(settings, location, version)
    if found is None:
        raise never_fitted(version)
    return found


class Followed:
    """A versions table looked at again and again (the stream, every micro-batch): ``changed()``
    says whether it has a commit since the last look (delta-rs reads just the new commits, no
    Spark job). A table that does not exist yet has not changed."""

    def __init__(self, settings: Settings, location: str) -> None:
        self._settings, self._location = settings, location
        self._table: DeltaTable | None = None
        self._seen: int | None = None

    def changed(self) -> bool:
        if self._table is None:
            self._table = table(self._settings, self._location)
            if self._table is None:
                return False
        else:
            self._table.update_incremental()
        version = self._table.version()
        changed, self._seen = version != self._seen, version
        return changed


def listed(settings: Settings, location: str, columns: list[str]) -> list[dict[str, Any]]:
    """``columns`` of every version, oldest first (for ``list`` commands: keep the columns small)."""
    loaded = table(settings, location)
    if loaded is None:
        return []
    rows = lake.as_dataset(settings, location, loaded).to_table(columns=columns).to_pylist()
    return sorted(rows, key=lambda r: r["version"])


def append(
    spark: SparkSession, location: str, frame: pd.DataFrame, schema: StructType, txn_app_id: str, version: int
) -> None:
    """Append ``frame`` (one version's row) at most once: Delta skips an append whose ``txnVersion``
    is not above the highest committed for ``txn_app_id``. The caller reads the version back to
    learn whether the row is its own."""
    spark.createDataFrame(frame, schema).write.format("delta").mode("append").option("txnAppId", txn_app_id).option(
        "txnVersion", version
    ).save(location)
