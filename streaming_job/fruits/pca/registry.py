"""The PCA registry: the one module that reads and writes ``pca_models`` and projects onto a version.

Each refit appends one version, one row in one file of its own (``io.versions``); nothing rewrites or deletes a
version, so every version stays readable (reproducible results, time travel). Readers take one
version, never the table: ``newest_version`` reads the log's file statistics only, ``model`` the
file whose statistics can hold the version asked for (delta-rs, no Spark job). (``versions``, for
``fruits pca list``, reads the small columns of every version.) A table root with no ``pca_models``
table yet reads as no version.

Vectors in a PCA space are made where they are used, never stored by rewriting ``features``:
``project_column`` in Spark (the stream's new rows, the ``features_pca`` view), ``PcaModel.project``
with numpy (the JVM-free store, the plots).

Example::

    model = registry.model(settings)               # the newest version, or None before the first refit
    v3 = registry.model(settings, version=3)       # any version kept
    df.withColumn("pca", registry.project_column(spark, v3))

Limitations: one refit commits at a time (``fruits pca refit`` takes a lease); a second one that
computed the same version commits nothing and fails (``commit``).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from deltalake import DeltaTable

from ..config import Settings
from ..io import versions as versions_table
from .model import PcaModel

if TYPE_CHECKING:  # the Spark side only: the JVM-free store reads models without pyspark
    from pyspark.sql import Column, SparkSession

# Each commit of a version is tagged with it: Delta skips an append whose txnVersion is not above
# the highest committed for this txnAppId, so a version is committed at most once.
TXN_APP_ID = "fruits-pca-models"


def newest_version(settings: Settings, table: DeltaTable | None = None) -> int | None:
    """The newest version in ``pca_models`` (None when there is none), from the files' statistics alone."""
    return versions_table.newest(settings, settings.pca_models_table, table)


def resolve(settings: Settings, version: int | None = None, table: DeltaTable | None = None) -> int | None:
    """The version to read: ``version``, or the newest when None (None before the first refit).
    ``LookupError`` for a version never fitted: versions are 1 .. newest, none deleted."""
    newest = newest_version(settings, table)
    if version is not None and not 1 <= version <= (newest or 0):
        raise _never_fitted(version)
    return newest if version is None else version


def _never_fitted(version: int) -> LookupError:
    return LookupError(f"there is no PCA version {version}; `fruits pca list` shows the versions kept")


def model(settings: Settings, version: int | None = None) -> PcaModel | None:
    """PCA ``version`` (the newest when None), or None when no refit has run yet. Reads the one
    file whose statistics can hold that version. ``LookupError`` for a version never fitted."""
    found = versions_table.read(
        settings, settings.pca_models_table, newest_version(settings) if version is None else version, _never_fitted
    )
    return None if found is None else PcaModel.from_record(found)


def versions(settings: Settings) -> list[dict[str, Any]]:
    """One line per version kept, oldest first: version, k, the variance its k components explain,
    rows and table version fitted on, when, the feature model (the vectors are not read)."""
    columns = [
        "version",
        "k",
        "explained_variance_ratio",
        "row_count",
        "source_table_version",
        "fitted_at",
        "feature_model_id",
    ]
    rows = versions_table.listed(settings, settings.pca_models_table, columns)
    return [
        {
            "version": r["version"],
            "k": r["k"],
            "explained_variance": round(float(sum(r["explained_variance_ratio"][: r["k"]])), 4),
            **{name: r[name] for name in columns[3:]},
        }
        for r in rows
    ]


def commit(spark: SparkSession, settings: Settings, new: PcaModel) -> None:
    """Append ``new`` as its version: at most once, whatever happens. ``RuntimeError`` when another
    refit committed that version meanwhile (this one then wrote nothing)."""
    from ..spark.schema import PCA_MODELS

    # One row through pandas and Arrow: as Python lists, k x 1280 floats took seconds at k = 340.
    row = pd.DataFrame(
        {
            "version": [new.version],
            "k": [new.k],
            "mean": [new.mean],
            "components": [new.components.ravel()],
            "explained_variance_ratio": [new.explained_variance_ratio],
            "row_count": [new.row_count],
            "source_table_version": [new.source_table_version],
            "fitted_at": [dt.datetime.now(dt.UTC)],
            "feature_model_id": [new.feature_model_id],
        }
    )
    versions_table.append(spark, settings.pca_models_table, row, PCA_MODELS, TXN_APP_ID, new.version)
    # Ours if it holds our components (read back as float32: compared within float32's precision).
    committed = model(settings, new.version)
    if (
        committed is None
        or committed.components.shape != new.components.shape
        or not np.allclose(committed.components, new.components, rtol=1e-5, atol=1e-6)
    ):
        raise RuntimeError(
            f"PCA version {new.version} was committed by another refit meanwhile; this one wrote "
            "nothing. Run the refit again (fruits pca refit takes a lease so that this is rare)."
        )


def project_column(spark: SparkSession, pca: PcaModel) -> Column:
    """A column expression projecting ``features`` with ``pca`` (``PcaModel.project_arrow``, the
    model broadcast once); null for a row of another feature model (``model_id``)."""
    from pyspark.sql.types import ArrayType, FloatType

    from ..spark.columns import features_column

    return features_column(spark, pca.project_arrow, ArrayType(FloatType()))
