"""The classifier registry: the one module that reads and writes ``classifiers``.

Each fit that changed the reference sample (or the reject quantile) appends one version (one
row: the prototypes, the threshold, the held-out metrics; ``io.versions``), read by version like
the PCA models. Beside the table, ``_checkpoints/classifier.json`` (a ``ReadMark``) records how far
the refit has read ``features`` for the classifier: a refit that changed nothing writes no
version, only that mark, so the next refit reads from there and no further back.

Example::

    classifier = registry.classifier(settings)             # the newest, or None before the first fit
    registry.classifier(settings, version=2).answer(features)

Limitations: one refit at a time (``fruits pca refit`` takes a lease).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..config import Settings
from ..io import aws, lake
from ..io import versions as versions_table
from .model import Classifier

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

TXN_APP_ID = "fruits-classifiers"
# What a refit reads of the newest version to decide whether it must read the rest.
SUMMARY = ["version", "feature_model_id", "reject_quantile", "source_table_version", "table_id"]


@dataclass(frozen=True)
class ReadMark:
    """How far the classifier has read ``features``: up to ``features_version`` of the table
    ``table_id``, the newest version then being ``classifier_version`` (0: none)."""

    classifier_version: int
    features_version: int
    table_id: str


def progress_uri(settings: Settings) -> str:
    return f"{settings.table_root}/_checkpoints/classifier.json"


def newest_version(settings: Settings) -> int | None:
    return versions_table.newest(settings, settings.classifiers_table)


def _never_fitted(version: int) -> LookupError:
    return LookupError(f"there is no classifier version {version}; `fruits classifier list` shows the versions kept")


def summary(settings: Settings) -> dict[str, Any] | None:
    """The newest version's ``SUMMARY`` columns (not its prototypes), or None before the first."""
    newest = newest_version(settings)
    return None if newest is None else versions_table.row(settings, settings.classifiers_table, newest, SUMMARY)


def classifier(settings: Settings, version: int | None = None) -> Classifier | None:
    """Classifier ``version`` (the newest when None), or None before the first fit. ``LookupError``
    for a version never fitted."""
    found = versions_table.read(
        settings, settings.classifiers_table, newest_version(settings) if version is None else version, _never_fitted
    )
    return None if found is None else Classifier.from_record(found)


def versions(settings: Settings) -> list[dict[str, Any]]:
    """One line per version, oldest first: its classes, reference rows, threshold, held-out metrics."""
    columns = [
        "version",
        "labels",
        "reference_rows",
        "threshold",
        "reject_quantile",
        "held_out_rows",
        "held_out_top1",
        "held_out_rejected",
        "source_table_version",
        "fitted_at",
        "feature_model_id",
    ]
    rows = versions_table.listed(settings, settings.classifiers_table, columns)
    return [{**{k: v for k, v in r.items() if k != "labels"}, "classes": len(r["labels"])} for r in rows]


def commit(spark: SparkSession, settings: Settings, new: Classifier) -> None:
    """Append ``new`` as its version, at most once. ``RuntimeError`` when another refit committed
    that version meanwhile (this one then wrote nothing)."""
    from ..spark.schema import CLASSIFIERS

    record = {**new.to_record(), "fitted_at": new.fitted_at or dt.datetime.now(dt.UTC)}
    versions_table.append(
        spark, settings.classifiers_table, pd.DataFrame([record]), CLASSIFIERS, TXN_APP_ID, new.version
    )
    committed = versions_table.row(settings, settings.classifiers_table, new.version, ["prototype_hashes"])
    if committed is None or committed["prototype_hashes"] != record["prototype_hashes"]:
        raise RuntimeError(
            f"classifier version {new.version} was committed by another refit meanwhile; this one "
            "wrote nothing. Run the refit again."
        )


def read_progress(settings: Settings) -> ReadMark | None:
    """The mark, or None (none yet, or unreadable: the newest version's own coverage serves)."""
    try:
        with lake.filesystem(settings).open_input_stream(lake.path_in(progress_uri(settings))) as f:
            mark = json.loads(f.read().decode())
        return ReadMark(int(mark["classifier_version"]), int(mark["features_version"]), str(mark["table_id"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def write_progress(settings: Settings, mark: ReadMark) -> None:
    data = {**asdict(mark), "written_at": dt.datetime.now(dt.UTC).isoformat()}
    aws.write_bytes(settings, progress_uri(settings), json.dumps(data).encode(), "application/json")


def answer_column(spark: SparkSession, found: Classifier) -> Column:
    """A struct column ``suggested_label, confidence, unknown`` answering ``features`` with
    ``found`` (``Classifier.answer_arrow``, the classifier broadcast once); null for a row of
    another feature model."""
    from ..spark.columns import features_column
    from ..spark.schema import ANSWER

    return features_column(spark, found.answer_arrow, ANSWER)
