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
from .model import Classifier, vote

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

PROTOTYPES_PER_CLASS = 200
VOTERS = 3  # the nearest prototypes that vote
REJECT_QUANTILE = 0.02
HELD_OUT_ROWS = 2000
HELD_OUT_CHUNK = 256  # held-out rows compared with every prototype at a time (bounds the fit's memory)
MIN_REFERENCE_ROWS = 2  # leave-one-out needs another row
# What the fit reads of a reference row.
ROWS = pa.schema(
    [("image_id", pa.string()), ("label", pa.string()), ("features", pa.list_(pa.float32())), ("model_id", pa.string())]
)
COLUMNS = ROWS.names


@dataclass(frozen=True)
class Reference:
    """The prototypes: unit vectors grouped by label (ascending), their label indexes and hashes."""

    labels: tuple[str, ...]
    vectors: np.ndarray
    label_index: np.ndarray
    hashes: np.ndarray
    rows_seen: int  # reference rows read into the sample

    @classmethod
    def empty(cls) -> Reference:
        return cls((), np.zeros((0, 0), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64), 0)


@dataclass(frozen=True)
class ClassifierUpdate:
    """What the refit's classifier step did: ``fitted`` (a new version), ``unchanged`` (the newest
    version stands: no new reference row made the sample) or ``none`` (no classifier yet: too few
    reference rows), why, and the version that answers now (None: none)."""

    mode: str
    version: int | None
    classifier: Classifier | None  # the new version, when fitted
    added: int  # reference rows read
    seconds: float
    reason: str


def check_quantile(reject_quantile: float | None) -> None:
    if reject_quantile is not None and not 0.0 <= reject_quantile < 1.0:
        raise ValueError(
            f"a reject quantile is a share of the held-out reference rows, 0 <= q < 1, not {reject_quantile}"
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sample(base: Reference | None, rows: pa.Table, per_class: int | None = None) -> Reference:
    """The bottom-``per_class`` (default ``PROTOTYPES_PER_CLASS``) sample by hash of ``base`` and
    ``rows`` (``image_id``, ``label``, ``features``: reference rows only). The sample is chosen by
    hashes alone; only the rows chosen have their vectors made."""
    per_class = per_class or PROTOTYPES_PER_CLASS
    base = base or Reference.empty()
    if not rows.num_rows:
        return base
    names = np.array(rows.column("label").to_pylist())
    labels = np.array(sorted(set(base.labels) | set(names.tolist())))
    # The base's indexes name base.labels: mapped onto the merged list.
    index = np.concatenate(
        [
            np.searchsorted(labels, np.array(base.labels, dtype=labels.dtype))[base.label_index]
            if base.labels
            else np.zeros(0, np.int64),
            np.searchsorted(labels, names),
        ]
    )
    hashes = np.concatenate([base.hashes, [key_hash(i) for i in rows.column("image_id").to_pylist()]]).astype(np.int64)
    # Once per image (a replayed row), then per label the smallest hashes.
    _, first = np.unique(hashes, return_index=True)
    order = first[np.lexsort((hashes[first], index[first]))]
    kept = order[_rank_within(index[order]) < per_class]
    features = np.asarray(rows.column("features").combine_chunks().flatten(), dtype=np.float32)
    new = features.reshape(rows.num_rows, -1)
    vectors = np.empty((len(kept), new.shape[1]), np.float32)
    old = kept < len(base.hashes)
    vectors[old] = base.vectors.reshape(-1, new.shape[1])[kept[old]]
    # Unit length as the classifiers table keeps them (float16), then read back.
    vectors[~old] = _unit(_unit(new[kept[~old] - len(base.hashes)]).astype(np.float16).astype(np.float32))
    used, label_index = np.unique(index[kept], return_inverse=True)  # the labels that kept a prototype
    return Reference(
        tuple(labels[used].tolist()),
        vectors,
        label_index.astype(np.int32),
        hashes[kept],
        base.rows_seen + rows.num_rows,
    )


def of(classifier: Classifier) -> Reference:
    """The sample behind ``classifier``."""
    return Reference(
        classifier.labels,
        classifier.prototypes,
        classifier.prototype_labels,
        classifier.prototype_hashes,
        classifier.reference_rows,
    )


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """Each element's position within its run of equal ``groups`` (sorted)."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))


def fit(
    reference: Reference,
    *,
    version: int,
    feature_model_id: str,
    source_table_version: int,
    table_id: str,
    reject_quantile: float = REJECT_QUANTILE,
    k: int = VOTERS,
) -> Classifier:
    """A classifier on ``reference`` (``MIN_REFERENCE_ROWS`` at least), its threshold and metrics
    from leave-one-out held-out rows."""
    held = np.argsort(reference.hashes, kind="stable")[:HELD_OUT_ROWS]
    voters = min(k, len(reference.hashes) - 1)
    best, right = np.empty(len(held)), 0
    for start in range(0, len(held), HELD_OUT_CHUNK):
        part = held[start : start + HELD_OUT_CHUNK]
        sims = reference.vectors[part] @ reference.vectors.T
        sims[np.arange(len(part)), part] = -np.inf  # itself left out
        best[start : start + len(part)] = sims.max(axis=1)
        for row, truth in zip(sims, reference.label_index[part]):
            right += int(vote(row, reference.label_index, voters, len(reference.labels)).argmax() == truth)
    threshold = float(np.quantile(best, reject_quantile))
    return Classifier(
        version=version,
        feature_model_id=feature_model_id,
        labels=reference.labels,
        prototypes=reference.vectors,
        prototype_labels=reference.label_index,
        prototype_hashes=reference.hashes,
        threshold=threshold,
        k=k,
        reject_quantile=reject_quantile,
        reference_rows=reference.rows_seen,
        held_out_rows=len(held),
        held_out_top1=right / len(held),
        held_out_rejected=float((best < threshold).mean()),
        source_table_version=source_table_version,
        table_id=table_id,
    )


def update(
    spark: SparkSession,
    settings: Settings,
    *,
    guard: Callable[[], None] | None = None,
    rebuild: bool = False,
    reject_quantile: float | None = None,
) -> ClassifierUpdate:
    """Bring the classifier up to the ``features`` table's newest version (see the module): the
    reference rows added since the last read, merged into the newest version's sample, fitted as
    a new version if the sample changed. ``rebuild``: from every reference row. ``reject_quantile``:
    the threshold's (default: the newest version's, or ``REJECT_QUANTILE``); another than the
    newest version's fits a new version. ``guard`` is called right before the commit (the refit's
    lease is still its own)."""
    started = time.perf_counter()
    check_quantile(reject_quantile)
    table = lake.delta_table(settings, settings.features_table)
    version, table_id = table.version(), table.metadata().id
    newest = registry.summary(settings)
    quantile = (
        reject_quantile
        if reject_quantile is not None
        else newest["reject_quantile"]
        if newest is not None
        else REJECT_QUANTILE
    )
    # The newest version's sample grows only on its own table (one made anew is another table).
    own = newest if newest is not None and newest["table_id"] == table_id and not rebuild else None
    current = newest["version"] if newest is not None else None

    def result(mode: str, reason: str, added: int = 0, new: Classifier | None = None) -> ClassifierUpdate:
        return ClassifierUpdate(
            mode if current is not None or mode == "fitted" else "none",
            new.version if new is not None else current,
            new,
            added,
            time.perf_counter() - started,
            reason,
        )

    def mark(classifier_version: int | None) -> None:
        registry.write_progress(settings, registry.ReadMark(classifier_version or 0, version, table_id))

    requantile = own is not None and quantile != own["reject_quantile"]
    after = None if rebuild else _read_up_to(registry.read_progress(settings), own, table_id, version)
    if after == version and not requantile:
        return result("unchanged", f"read up to features version {version}")
    rows = _added_reference_rows(table, after, version) if after is not None else None
    if rows is not None and own is not None and set(rows.column("model_id").to_pylist()) - {own["feature_model_id"]}:
        rows = None  # another feature model: from every row
    base = None
    if rows is not None:
        if rows.num_rows == 0 and not requantile:
            mark(own["version"] if own is not None else None)
            return result("unchanged", f"no new reference rows up to features version {version}")
        base = of(registry.classifier(settings, own["version"])) if own is not None else None  # type: ignore[arg-type]
        reference, model_ids = sample(base, rows), set(rows.column("model_id").to_pylist())
        reason = f"{rows.num_rows} new reference rows since features version {after}"
    else:
        reference, model_ids = _sample_every_row(settings, table, spark)
        reason = "from every reference row"
    if len(model_ids) > 1:
        raise ValueError(
            f"the reference rows mix feature models {sorted(model_ids)}; the classifier needs one. "
            "Re-featurize or filter first."
        )
    added = reference.rows_seen - (base.rows_seen if base is not None else 0)
    if base is not None and not requantile and np.array_equal(reference.hashes, base.hashes):
        mark(own["version"])  # type: ignore[index]
        return result("unchanged", f"the {added} new reference rows did not make the sample", added)
    if len(reference.hashes) < MIN_REFERENCE_ROWS:
        if reference.rows_seen == 0:  # nothing to keep: the next refit reads from here
            mark(None)
        return result(
            "none",
            f"{reference.rows_seen} reference row(s): a classifier needs {MIN_REFERENCE_ROWS} "
            f"(uploads under {', '.join(settings.reference_prefixes)})",
            added,
        )
    new = fit(
        reference,
        version=(current or 0) + 1,
        feature_model_id=model_ids.pop() if model_ids else own["feature_model_id"],  # type: ignore[index]
        source_table_version=version,
        table_id=table_id,
        reject_quantile=quantile,
    )
    if guard is not None:
        guard()
    registry.commit(spark, settings, new)
    mark(new.version)
    done = result("fitted", reason, added, new)
    log.info(
        "classifier v%d (%s): %d classes, %d prototypes, threshold %.3f, held-out top-1 %.3f, %.1f s",
        new.version,
        reason,
        len(new.labels),
        len(new.prototype_hashes),
        new.threshold,
        new.held_out_top1,
        done.seconds,
    )
    return done


def _read_up_to(mark: registry.ReadMark | None, own: dict | None, table_id: str, version: int) -> int | None:
    """The features version the classifier has read up to on this table; None: read every
    reference row. ``own``: the newest version's summary, if it covers this table."""
    covered = own["source_table_version"] if own is not None else None
    if (
        mark is not None
        and mark.table_id == table_id
        and mark.classifier_version == (own["version"] if own is not None else 0)
    ):
        covered = max(mark.features_version, covered if covered is not None else -1)
    return covered if covered is not None and covered <= version else None


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
    reference, model_ids = Reference.empty(), set()
    for batch in lake.batches(settings, settings.features_table, table, COLUMNS, spark):
        rows = pa.Table.from_batches([batch])
        if rows.column("label").null_count:  # app rows: left out (a reference set alone skips the copy)
            rows = _labelled(rows)
        reference = sample(reference, rows)
        model_ids |= set(rows.column("model_id").to_pylist())
    return reference, model_ids
