"""Fitting the classifier, by the refit: a bounded, mergeable sample of the reference rows, and a
reject threshold from held-out ones.

**Reference rows** are the rows with a label (the stream labels only uploads under a reference
prefix, ``FRUITS_REFERENCE_PREFIXES``); app uploads have none and never train the classifier.

**The sample** (the prototypes): per label, the ``PROTOTYPES_PER_CLASS`` reference rows with the
smallest image-id hashes. A bottom-k sample is the same whatever order the rows came in, so a refit
merges the previous version's prototypes with the reference rows added since and gets the sample
of all of them: its cost follows the new rows and the sample, never the table. A refit whose new
rows hold no reference row writes no version (``registry`` keeps how far it has read).

**The threshold**: each held-out reference row (up to ``HELD_OUT_ROWS`` prototypes, those with the
smallest hashes) is answered by all the other prototypes, itself left out: its nearest
similarity, and whether the vote names its label (``held_out_top1``). The threshold is the
``REJECT_QUANTILE`` quantile of those similarities: that share of known-class photos is answered
"unknown", by construction (``held_out_rejected``). What it does to unseen classes and to images
that are no fruit is measured by ``benchmarks/bench_classify.py`` (README).

Example::

    done = update(spark, settings)                # by the refit, under its lease
    done.mode, done.classifier.version, done.classifier.threshold

Limitations: a reference photo that is a near-copy of another (a burst of the same fruit) makes
the leave-one-out similarities optimistic, so the threshold rejects fewer unseen images than it
would with independent photos; the benchmark measures on held-out classes for that reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from fruits_ingest.ledger import key_hash

from ..config import Settings
from ..io import changes, lake
from . import registry
from .model import Classifier

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

PROTOTYPES_PER_CLASS = 200
VOTERS = 3  # the nearest prototypes that vote
REJECT_QUANTILE = 0.02
HELD_OUT_ROWS = 2000
MIN_REFERENCE_ROWS = 4
# What the fit reads of a reference row.
ROWS = pa.schema([("image_id", pa.string()), ("label", pa.string()), ("features", pa.list_(pa.float32())),
                  ("model_id", pa.string())])
COLUMNS = ROWS.names


@dataclass(frozen=True)
class Reference:
    """The prototypes: unit vectors grouped by label (ascending), their label indexes and hashes."""

    labels: tuple[str, ...]
    vectors: np.ndarray
    label_index: np.ndarray
    hashes: np.ndarray
    rows_seen: int  # reference rows behind the sample


@dataclass(frozen=True)
class ClassifierUpdate:
    """What the refit's classifier step did: ``fitted`` (a new version), ``unchanged`` (no new
    reference rows) or ``none`` (no classifier: too few reference rows), and why."""

    mode: str
    classifier: Classifier | None
    added: int  # reference rows read
    seconds: float
    reason: str


def sample(base: Reference | None, rows: pa.Table, per_class: int = PROTOTYPES_PER_CLASS) -> Reference:
    """The bottom-``per_class`` sample by hash of ``base`` and ``rows`` (``image_id``, ``label``,
    ``features``: reference rows only)."""
    base = base or Reference((), np.zeros((0, 0), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64), 0)
    if not rows.num_rows:
        return base
    new = np.asarray(rows.column("features").combine_chunks().flatten(), dtype=np.float32).reshape(rows.num_rows, -1)
    names = np.array(rows.column("label").to_pylist())
    labels = np.array(sorted(set(base.labels) | set(names.tolist())))
    vectors = np.concatenate([base.vectors.reshape(-1, new.shape[1]),
                              new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)])
    # The base's indexes name base.labels: mapped onto the merged list.
    index = np.concatenate([np.searchsorted(labels, np.array(base.labels, dtype=labels.dtype))[base.label_index]
                            if base.labels else np.zeros(0, np.int64), np.searchsorted(labels, names)])
    hashes = np.concatenate([base.hashes, [key_hash(i) for i in rows.column("image_id").to_pylist()]]).astype(np.int64)
    # Once per image (a replayed row), then per label the smallest hashes.
    _, first = np.unique(hashes, return_index=True)
    order = first[np.lexsort((hashes[first], index[first]))]
    kept = order[_rank_within(index[order]) < per_class]
    return Reference(tuple(labels.tolist()), vectors[kept], index[kept].astype(np.int32), hashes[kept],
                     base.rows_seen + rows.num_rows)


def of(classifier: Classifier) -> Reference:
    """The sample behind ``classifier``."""
    return Reference(classifier.labels, classifier.prototypes, classifier.prototype_labels,
                     classifier.prototype_hashes, classifier.reference_rows)


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """Each element's position within its run of equal ``groups`` (sorted)."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))


def fit(reference: Reference, *, version: int, feature_model_id: str, source_table_version: int,
        reject_quantile: float = REJECT_QUANTILE, k: int = VOTERS) -> Classifier:
    """A classifier on ``reference``, its threshold and metrics from leave-one-out held-out rows."""
    held = np.argsort(reference.hashes, kind="stable")[:HELD_OUT_ROWS]
    sims = reference.vectors[held] @ reference.vectors.T
    sims[np.arange(len(held)), held] = -np.inf  # itself left out
    voters = min(k, len(reference.hashes) - 1)
    nearest = np.argpartition(-sims, voters - 1, axis=1)[:, :voters]
    right = 0
    for row, chosen in enumerate(nearest):
        weights = np.clip(sims[row, chosen], 0, None) + 1e-9
        votes = np.bincount(reference.label_index[chosen], weights=weights, minlength=len(reference.labels))
        right += int(votes.argmax() == reference.label_index[held[row]])
    best = sims.max(axis=1)
    threshold = float(np.quantile(best, reject_quantile))
    return Classifier(
        version=version, feature_model_id=feature_model_id, labels=reference.labels, prototypes=reference.vectors,
        prototype_labels=reference.label_index, prototype_hashes=reference.hashes, threshold=threshold, k=k,
        reject_quantile=reject_quantile, reference_rows=reference.rows_seen, held_out_rows=len(held),
        held_out_top1=right / len(held), held_out_rejected=float((best < threshold).mean()),
        source_table_version=source_table_version,
    )


def update(spark: SparkSession, settings: Settings, *, guard: Callable[[], None] | None = None,
           rebuild: bool = False, reject_quantile: float | None = None) -> ClassifierUpdate:
    """Bring the classifier up to the ``features`` table's newest version (see the module):
    the reference rows added since the last read, merged into the newest version's sample, fitted
    as a new version. ``rebuild``: from every reference row. ``reject_quantile``: the threshold's
    (default: the newest version's, or ``REJECT_QUANTILE``); another than the newest version's fits
    a new version. ``guard`` is called right before the commit (the refit's lease is still its own)."""
    started = time.perf_counter()
    table = lake.delta_table(settings, settings.features_table)
    version = table.version()
    newest = None if rebuild else registry.classifier(settings)
    if reject_quantile is not None and not 0.0 <= reject_quantile < 1.0:
        raise ValueError(f"a reject quantile is a share of the held-out reference rows, 0 <= q < 1, not {reject_quantile}")
    quantile = reject_quantile if reject_quantile is not None else newest.reject_quantile if newest is not None \
        else REJECT_QUANTILE
    same = newest is None or quantile == newest.reject_quantile
    after = None if rebuild else _read_up_to(settings, newest)
    if after is not None and after >= version and same:
        return ClassifierUpdate("unchanged", newest, 0, time.perf_counter() - started,
                                f"read up to features version {version}")
    rows = _added_reference_rows(table, after, version) if after is not None else None
    if rows is not None and newest is not None and set(rows.column("model_id").to_pylist()) - {newest.feature_model_id}:
        rows = None  # another feature model: start over
    if rows is not None:
        if newest is not None and rows.num_rows == 0 and same:
            registry.write_progress(settings, newest.version, version)
            return ClassifierUpdate("unchanged", newest, 0, time.perf_counter() - started,
                                    f"no new reference rows up to features version {version}")
        base = of(newest) if newest is not None else None
        reference, model_ids = sample(base, rows), set(rows.column("model_id").to_pylist())
        reason = f"{rows.num_rows} new reference rows since features version {after}"
    else:
        base = None
        reference, model_ids = _sample_every_row(settings, table, spark)
        reason = "from every reference row" if after is None else \
            "from every reference row: the commits since cannot be followed, or the feature model changed"
    if len(model_ids) > 1:
        raise ValueError(f"the reference rows mix feature models {sorted(model_ids)}; the classifier needs one. "
                         "Re-featurize or filter first.")
    added = reference.rows_seen - (base.rows_seen if base is not None else 0)
    if len(reference.labels) < 2 or len(reference.hashes) < MIN_REFERENCE_ROWS:
        if reference.rows_seen == 0:  # nothing to keep: the next refit reads from here
            registry.write_progress(settings, 0, version)
        return ClassifierUpdate("none", None, added, time.perf_counter() - started,
                                f"{reference.rows_seen} reference rows in {len(reference.labels)} classes: a "
                                f"classifier needs {MIN_REFERENCE_ROWS} rows in 2 classes (uploads under "
                                f"{', '.join(settings.reference_prefixes)})")
    new = fit(reference, version=(registry.newest_version(settings) or 0) + 1, feature_model_id=model_ids.pop()
              if model_ids else newest.feature_model_id,  # type: ignore[union-attr]
              source_table_version=version, reject_quantile=quantile)
    if guard is not None:
        guard()
    registry.commit(spark, settings, new)
    registry.write_progress(settings, new.version, version)
    seconds = time.perf_counter() - started
    log.info("classifier v%d (%s): %d classes, %d prototypes, threshold %.3f, held-out top-1 %.3f, %.1f s",
             new.version, reason, len(new.labels), len(new.prototype_hashes), new.threshold, new.held_out_top1, seconds)
    return ClassifierUpdate("fitted", new, added, seconds, reason)


def _read_up_to(settings: Settings, newest: Classifier | None) -> int | None:
    """The features version the classifier has read up to; None: read every reference row."""
    mark = registry.read_progress(settings)
    own = newest.source_table_version if newest is not None else None
    if mark is not None and mark[0] == (newest.version if newest is not None else 0) and mark[1] >= (own or 0):
        return mark[1]
    return own


def _labelled(rows: pa.Table) -> pa.Table:
    return rows.filter(pc.is_valid(rows.column("label")))


def _added_reference_rows(table: DeltaTable, after: int, upto: int) -> pa.Table | None:
    """The reference rows that commits ``after + 1 .. upto`` added (None: they cannot be followed).
    Their labels are read first: only the commits that hold a reference row are read whole."""
    found = changes.commits(table, after, upto)
    if not changes.followable(found):
        return None
    assert found is not None
    if not found:
        return ROWS.empty_table()
    labels = changes.rows_of(table, found, ["label", changes.COMMIT_VERSION])
    if labels is None:
        return None
    wanted = set(pc.unique(_labelled(labels).column(changes.COMMIT_VERSION)).to_pylist())
    if not wanted:
        return ROWS.empty_table()
    rows = changes.rows_of(table, [c for c in found if c.version in wanted], COLUMNS)
    return None if rows is None else _labelled(rows).cast(ROWS)


def _sample_every_row(settings: Settings, table: DeltaTable, spark: SparkSession) -> tuple[Reference, set[str]]:
    """The sample of every reference row of the table (read a batch at a time), and their feature models."""
    reference, model_ids = sample(None, ROWS.empty_table()), set()
    for batch in lake.batches(settings, settings.features_table, table, COLUMNS, spark):
        rows = _labelled(pa.Table.from_batches([batch]).cast(ROWS))
        reference = sample(reference, rows)
        model_ids |= set(rows.column("model_id").to_pylist())
    return reference, model_ids
