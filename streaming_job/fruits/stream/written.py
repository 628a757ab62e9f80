"""The stream's exactly-once check, kept by the tables: which images ``features`` or ``quarantine`` hold.

Before featurizing a micro-batch, the stream drops every image already written: a redelivered
event, a ledger row appended twice, or a micro-batch replayed after a crash whose rows had
committed. Nothing is kept on the driver between micro-batches. Both tables are partitioned by
``event_date``, the S3 event's UTC date, which a redelivered event repeats; a lookup reads
the partitions of the micro-batch's dates only and, of their files, only those whose ``image_id``
statistics could hold one of the ids (delta-rs's file pruning), then the ``image_id`` column of
those. So its cost follows the days the micro-batch touches, not the table's size or age, and a
restart reads nothing in advance.

An event within ``MARGIN`` of midnight is looked up in the neighbouring day too: the same bytes
PUT again (a client's retry) under the same key is the same image, and a retry can cross midnight.
An event without a time is dated by the Lambda's append, so its redelivery may come a day later:
it is looked up in the day before as well.

Example::

    written = WrittenImages(settings)
    mask = written.among(rows)   # rows: Arrow, with image_id, event_date and event_time

Limitations: the same image uploaded again more than ``MARGIN`` away from the first upload's day
gets a second row (with its own ``event_date``). The ids are SHA-256 digests, so a file the
stream appended spans every id and the statistics prune nothing until a day's files are sorted by
``image_id`` (nothing sorts them yet): a lookup reads the ``image_id`` column of the days it
touches, whole. A table with deletion vectors or column mapping is looked up with a Spark query
instead, which costs a Spark job.
"""

from __future__ import annotations

import datetime as dt
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..config import Settings
from ..io import lake
from ..spark import tables as table
from ..spark.schema import PARTITION

log = logging.getLogger(__name__)

MARGIN = dt.timedelta(hours=1)


def lookup_dates(rows: pa.Table) -> list[dt.date]:
    """The partitions to look in for ``rows`` (``event_date``, and ``event_time``, null when the
    event had none): each row's date, the neighbouring day for an event within ``MARGIN`` of
    midnight, and the day before for an event without a time."""
    dates = set()
    for date, when in zip(rows.column(PARTITION).to_pylist(), rows.column("event_time").to_pylist()):
        if when is None:
            dates.update({date, date - dt.timedelta(days=1)})
        else:
            time = when.astimezone(dt.UTC) if when.tzinfo else when  # naive: already UTC
            dates.update({date, (time - MARGIN).date(), (time + MARGIN).date()})
    return sorted(dates)


def candidates(settings: Settings, location: str, delta: DeltaTable, ids: pa.Array, dates: list[dt.date]) -> ds.Dataset:
    """The files of ``delta`` that could hold one of ``ids``: in the partitions of ``dates``, and with
    ``image_id`` statistics whose range holds one of them (delta-rs's file pruning)."""
    return lake.as_dataset(settings, location, delta, [(PARTITION, "in", dates), ("image_id", "in", ids.to_pylist())])


class WrittenImages:
    """Looks ids up in ``features`` and ``quarantine`` (or in ``locations``), at their newest versions."""

    def __init__(
        self, settings: Settings, spark: SparkSession | None = None, locations: tuple[str, ...] | None = None
    ) -> None:
        self._settings = settings
        self._spark = spark  # only for tables Arrow cannot read file by file
        self._tables: dict[str, DeltaTable] = {
            location: lake.delta_table(settings, location)
            for location in locations or (settings.features_table, settings.quarantine_table)
        }

    def among(self, rows: pa.Table) -> pa.ChunkedArray:
        """A boolean mask over ``rows``: which images either table already holds."""
        if not rows.num_rows:
            return pa.chunked_array([pa.array([], pa.bool_())])
        ids, dates = pc.unique(rows.column("image_id")), lookup_dates(rows)
        kind = rows.column("image_id").type
        found = [self._ids_in(location, delta, ids, dates).cast(kind) for location, delta in self._tables.items()]
        return pc.is_in(rows.column("image_id"), value_set=pa.concat_arrays(found))

    def _ids_in(self, location: str, delta: DeltaTable, ids: pa.Array, dates: list[dt.date]) -> pa.Array:
        delta.update_incremental()  # reads the commits since the last look, not the whole log
        if not lake.plain_files(delta):
            return self._ids_through_spark(location, ids, dates)
        wanted = pc.field("image_id").isin(ids) & pc.field(PARTITION).isin(pa.array(dates, pa.date32()))
        found = candidates(self._settings, location, delta, ids, dates).to_table(columns=["image_id"], filter=wanted)
        return found.column(0).combine_chunks()

    def _ids_through_spark(self, location: str, ids: pa.Array, dates: list[dt.date]) -> pa.Array:
        """A Delta reader's answer, for tables whose rows are not just their files' rows."""
        if self._spark is None:
            raise ValueError(f"{location} needs a Delta reader (deletion vectors or column mapping); pass spark")
        found = (
            table.read(self._spark, location)
            .where(F.col(PARTITION).isin(dates) & F.col("image_id").isin(ids.to_pylist()))
            .select("image_id")
            .toArrow()
        )
        return found.column(0).combine_chunks()
