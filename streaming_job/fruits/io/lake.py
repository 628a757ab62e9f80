"""The Delta tables without Spark: their state through delta-rs, their files through Arrow's native
local or S3 filesystem.

Used where a Spark job would cost more than the work itself: the JVM-free store, reading the small
PCA tables, and planning the PCA statistics pass (whose tasks read Parquet files with Arrow).

Example::

    table = delta_table(settings, settings.features_table)
    fs = filesystem(settings)
    fs.open_input_file(path_in(table.file_uris()[0]))

Limitations: Arrow reads data files as they are, so callers check ``plain_files`` first: a table
with deletion vectors or column mapping must be read through a Delta reader (``batches`` does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pa_fs
from botocore.exceptions import NoCredentialsError
from deltalake import DeltaTable

from ..config import Settings
from . import aws

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def delta_uri(location: str) -> str:
    """The location as delta-rs names it (``s3://`` where Spark says ``s3a://``)."""
    return location.replace("s3a://", "s3://", 1)


def storage_options(settings: Settings) -> dict[str, str]:
    """delta-rs's options for the configured endpoint (the emulator) or the default AWS chain."""
    options = {"AWS_REGION": settings.region}
    if settings.endpoint_url:
        key, secret = aws.emulator_credentials()
        options.update(
            AWS_ENDPOINT_URL=settings.endpoint_url,
            AWS_ALLOW_HTTP="true",
            AWS_ACCESS_KEY_ID=key,
            AWS_SECRET_ACCESS_KEY=secret,
        )
    return options


@contextlib.contextmanager
def _credentials_named() -> Iterator[None]:
    """delta-rs reports missing AWS credentials as an OSError ("Kernel error -> Operation not
    supported", the chain it tried below): raised as boto3's ``NoCredentialsError`` instead."""
    try:
        yield
    except OSError as exc:
        if "no credentials found" in str(exc):
            raise NoCredentialsError() from exc
        raise


def delta_table(settings: Settings, location: str, version: int | None = None) -> DeltaTable:
    """The Delta table at ``location`` (a local path or an S3 URI), at ``version`` or the newest."""
    with _credentials_named():
        return DeltaTable(delta_uri(location), version=version, storage_options=storage_options(settings))


def exists(settings: Settings, location: str) -> bool:
    """Whether a Delta table is at ``location`` (a look at its log, not a load of it)."""
    with _credentials_named():
        return DeltaTable.is_deltatable(delta_uri(location), storage_options(settings))


class Snapshot(NamedTuple):
    """A table as a pyarrow dataset at one Delta version."""

    dataset: ds.Dataset
    version: int


def dataset(settings: Settings, location: str, version: int | None = None) -> Snapshot:
    """The table as a pyarrow dataset read through Arrow's filesystem, and its Delta version."""
    table = delta_table(settings, location, version)
    return Snapshot(as_dataset(settings, location, table), table.version())


def as_dataset(
    settings: Settings, location: str, table: DeltaTable, files: list[tuple[str, str, Any]] | None = None
) -> ds.Dataset:
    """``table`` as a pyarrow dataset; ``files``: delta-rs tuple filters that select the files (exactly
    on partition columns, by their min/max statistics on others: a superset of the matching files)."""
    return table.to_pyarrow_dataset(
        filesystem=pa_fs.SubTreeFileSystem(path_in(location), filesystem(settings)), file_pruning_predicate=files
    )


def filesystem(settings: Settings) -> pa_fs.FileSystem:
    """Arrow's S3 filesystem for the configured endpoint, or the local one when no S3 is involved.

    Arrow's own filesystems read in native threads. (delta-rs's default, a Python filesystem
    calling into Rust, can abort the interpreter at exit after a threaded scan.)
    """
    if not aws.is_s3(settings.table_root):
        return pa_fs.LocalFileSystem()
    options = storage_options(settings)
    return pa_fs.S3FileSystem(
        region=settings.region,
        endpoint_override=settings.endpoint_url,
        scheme="http" if (settings.endpoint_url or "").startswith("http://") else "https",
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
    )


def path_in(uri: str) -> str:
    """A location as a path in ``filesystem``'s terms: ``bucket/key`` for S3, absolute otherwise."""
    if aws.is_s3(uri):
        return "/".join(aws.split_s3_uri(uri))
    return str(Path(uri.removeprefix("file://")).resolve())


def plain_files(table: DeltaTable) -> bool:
    """Whether the table's rows are exactly the rows of its data files, as Arrow reads them: no
    deletion vectors, no column mapping."""
    protocol = table.protocol()
    if protocol.min_reader_version == 2:  # column mapping
        return False
    return not {"deletionVectors", "columnMapping"} & set(protocol.reader_features or [])


def batches(
    settings: Settings, location: str, table: DeltaTable, columns: list[str], spark: SparkSession | None = None
) -> Iterator[pa.RecordBatch]:
    """The ``columns`` of ``table``'s rows (as loaded) a batch at a time; through Spark, all at
    once, for a table with deletion vectors or column mapping (Arrow reads files, which would bring
    deleted rows back)."""
    if plain_files(table):
        yield from as_dataset(settings, location, table).to_batches(columns=columns, batch_size=8192)
        return
    if spark is None:
        raise LookupError(
            f"the table {location} has deletion vectors or column mapping: only a job with Spark "
            "(the refit) can read it whole"
        )
    from ..spark import tables

    yield from (
        tables.read(spark, location, version=table.version()).select(*columns).toArrow().to_batches(max_chunksize=8192)
    )


@dataclass(frozen=True)
class DataFile:
    uri: str  # absolute: a local path or s3:// URI
    size: int  # bytes


class TableFiles(NamedTuple):
    files: list[DataFile]
    version: int


def table_files(
    settings: Settings, location: str, version: int | None = None, table: DeltaTable | None = None
) -> TableFiles | None:
    """The table's data files at ``version`` (or the newest), or those of ``table`` as loaded, and
    that version; None when its rows are not just its files' rows (deletion vectors, column mapping)."""
    table = table or delta_table(settings, location, version)
    if not plain_files(table):
        return None
    actions = pa.table(table.get_add_actions(flatten=True)).select(["path", "size_bytes"]).to_pydict()
    files = [DataFile(_absolute(location, p), size) for p, size in zip(actions["path"], actions["size_bytes"])]
    return TableFiles(files, table.version())


def _absolute(location: str, path: str) -> str:
    return path if "://" in path else f"{delta_uri(location)}/{unquote(path)}"
