"""A fruit classifier that can say "I don't know": labelled reference prototypes and a reject threshold.

A ``Classifier`` holds a bounded sample of the reference rows' feature vectors (MobileNetV2's 1280
features, unit length, float16 when stored), their labels, and a threshold on the cosine
similarity to the nearest of them. An image is answered by its nearest prototypes:

- ``unknown`` when even the nearest prototype is less similar than ``threshold``: the image
  resembles no reference photo (not a fruit, or a fruit class the reference set lacks);
- otherwise ``label``: the similarity-weighted vote of the ``k`` nearest prototypes.

Either way ``confidence`` is the vote winner's share of that vote, and ``candidates`` lists the
winner first, then the other classes by their nearest prototype's similarity.
The threshold and the held-out metrics come from the fit (``classifier.fit``).

Example::

    answers = classifier.answer(features)       # features: (n, 1280) float32
    answers[0].label, answers[0].unknown, answers[0].confidence, answers[0].candidates

Limitations: cosine similarity on ImageNet features separates photos that look alike; a new fruit
class that looks like a known one (a new apple variety) may be named as that one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CANDIDATES = 3  # classes an answer lists


@dataclass(frozen=True)
class Candidate:
    label: str
    similarity: float  # cosine similarity of the class's nearest prototype, 1 = same direction


@dataclass(frozen=True)
class Answer:
    label: str | None  # None when unknown
    unknown: bool
    confidence: float  # the vote winner's (candidates[0]'s) share of the k nearest prototypes' weighted vote
    similarity: float  # to the nearest prototype; below the threshold: unknown
    candidates: list[Candidate]  # the vote winner, then the other classes by similarity


# The answer columns of a features row, as ``answer_arrow`` gives them.
ANSWER_TYPE = pa.struct([("suggested_label", pa.string()), ("confidence", pa.float32()), ("unknown", pa.bool_())])


def vote(sims: np.ndarray, prototype_labels: np.ndarray, k: int, classes: int) -> np.ndarray:
    """Per class, the similarity-weighted votes of the ``k`` prototypes most similar (``sims``: one
    row's similarities to the prototypes, labelled by ``prototype_labels``)."""
    k = min(k, len(sims))
    nearest = np.argpartition(-sims, k - 1)[:k]
    return np.bincount(prototype_labels[nearest], weights=np.clip(sims[nearest], 0, None) + 1e-9, minlength=classes)


@dataclass(frozen=True)
class Classifier:
    version: int
    feature_model_id: str
    labels: tuple[str, ...]  # sorted
    prototypes: np.ndarray  # (n, d) float32, unit rows, grouped by label
    prototype_labels: np.ndarray  # (n,) int32 index into labels, ascending
    prototype_hashes: np.ndarray  # (n,) int64: the reference rows' image-id hashes (the sample's order)
    threshold: float
    k: int
    reject_quantile: float  # the share of held-out reference rows the threshold rejects, by construction
    reference_rows: int  # reference rows read by this and earlier versions (a replayed row counts again)
    held_out_rows: int
    held_out_top1: float  # leave-one-out top-1 over the held-out reference rows
    held_out_rejected: float  # their share below the threshold
    source_table_version: int  # the features table version the fit covers
    table_id: str  # the features table's Delta id: a table made anew is another table
    fitted_at: dt.datetime | None = None
    _starts: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Where each label's prototypes start: one reduceat gives every class's best similarity.
        object.__setattr__(self, "_starts", np.searchsorted(self.prototype_labels, np.arange(len(self.labels))))

    def similarities(self, features: np.ndarray) -> np.ndarray:
        """(m, n) cosine similarities of ``features`` (m, d) to the prototypes."""
        x = np.asarray(features, dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.where(norms == 0, 1, norms)) @ self.prototypes.T

    def answer(self, features: np.ndarray, leave_out: int | None = None) -> list[Answer]:
        """One ``Answer`` per row of ``features`` (m, d), MobileNetV2 features of this feature model.
        ``leave_out``: the image-id hash (``fruits_ingest.ledger.key_hash``) of a prototype not to
        compare with (a reference row asked about itself)."""
        sims = self.similarities(features)
        if leave_out is not None:
            sims[:, self.prototype_hashes == leave_out] = -1.0  # the least similar a direction can be
        return [self._answer(row) for row in sims]

    def _answer(self, sims: np.ndarray) -> Answer:
        votes = vote(sims, self.prototype_labels, self.k, len(self.labels))
        winner = int(votes.argmax())
        best = np.maximum.reduceat(sims, self._starts)
        similarity = float(best.max())
        others = [int(i) for i in np.argsort(-best, kind="stable") if i != winner][: CANDIDATES - 1]
        unknown = similarity < self.threshold
        return Answer(
            label=None if unknown else self.labels[winner],
            unknown=bool(unknown),
            confidence=float(votes[winner] / votes.sum()),
            similarity=similarity,
            candidates=[Candidate(self.labels[i], float(best[i])) for i in (winner, *others)],
        )

    def answer_arrow(self, features: pa.Array, model_ids: pa.Array) -> pa.StructArray:
        """``ANSWER_TYPE`` per row: null for a row of another feature model (or without features)."""
        mine = np.asarray(pc.equal(model_ids, self.feature_model_id).fill_null(False), dtype=bool)
        mine &= np.asarray(features.is_valid(), dtype=bool)
        labels: list[str | None] = [None] * len(features)
        confidence: list[float | None] = [None] * len(features)
        unknown: list[bool | None] = [None] * len(features)
        rows = np.flatnonzero(mine)
        if rows.size:
            chosen = features.take(pa.array(rows))
            vectors = np.asarray(chosen.flatten(), dtype=np.float32).reshape(len(rows), -1)
            for row, found in zip(rows, self.answer(vectors)):
                labels[row], confidence[row], unknown[row] = found.label, found.confidence, found.unknown
        return pa.StructArray.from_arrays(
            [pa.array(labels, pa.string()), pa.array(confidence, pa.float32()), pa.array(unknown, pa.bool_())],
            fields=list(ANSWER_TYPE),
            mask=pa.array(~mine),
        )

    def to_record(self) -> dict[str, Any]:
        """The ``classifiers`` table's row (``spark.schema.CLASSIFIERS``)."""
        return {
            "version": self.version,
            "feature_model_id": self.feature_model_id,
            "labels": list(self.labels),
            "dim": int(self.prototypes.shape[1]),
            "prototypes": self.prototypes.astype("<f2").tobytes(),
            "prototype_labels": self.prototype_labels.astype("<i4").tobytes(),
            "prototype_hashes": self.prototype_hashes.astype("<i8").tobytes(),
            "threshold": self.threshold,
            "k": self.k,
            "reject_quantile": self.reject_quantile,
            "reference_rows": self.reference_rows,
            "held_out_rows": self.held_out_rows,
            "held_out_top1": self.held_out_top1,
            "held_out_rejected": self.held_out_rejected,
            "source_table_version": self.source_table_version,
            "table_id": self.table_id,
            "fitted_at": self.fitted_at,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Classifier:
        vectors = np.frombuffer(r["prototypes"], dtype="<f2").astype(np.float32).reshape(-1, r["dim"])
        # Unit again after float16 storage.
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return cls(
            version=r["version"],
            feature_model_id=r["feature_model_id"],
            labels=tuple(r["labels"]),
            prototypes=vectors,
            prototype_labels=np.frombuffer(r["prototype_labels"], dtype="<i4").astype(np.int32),
            prototype_hashes=np.frombuffer(r["prototype_hashes"], dtype="<i8").astype(np.int64),
            threshold=r["threshold"],
            k=r["k"],
            reject_quantile=r["reject_quantile"],
            reference_rows=r["reference_rows"],
            held_out_rows=r["held_out_rows"],
            held_out_top1=r["held_out_top1"],
            held_out_rejected=r["held_out_rejected"],
            source_table_version=r["source_table_version"],
            table_id=r["table_id"],
            fitted_at=r.get("fitted_at"),
        )
