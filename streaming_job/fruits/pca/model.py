"""PCA's linear algebra, with numpy (and Arrow columns at its edge): the model, the exact fit and
the incremental one.

``solve`` fits from sufficient statistics (``Stats``) by one symmetric eigenproblem on the
d x d covariance; ``update`` reaches the same fit from the previous fit's leading vectors and the
rows added since, by one Rayleigh-Ritz step on a much smaller eigenproblem, and declines (None)
when its residual check fails. Both return a ``Fit``. ``PcaModel`` is one stored version; its
``project_arrow`` is the one projection of an Arrow column, which Spark's UDF (``registry``) and
DuckDB's (the store) both call.

Example::

    fit = update(total, added_rows, previous_basis) or solve(total, threshold=0.95)
    fit.k, fit.ratios[: fit.k].sum()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..featurize.model import FEATURE_DIM

log = logging.getLogger(__name__)

# The incremental solve (``update``): extra leading vectors kept beyond k, the largest residual
# accepted (relative to the largest eigenvalue), the most added rows taken as they are (more are
# sketched), and the share of d above which the small eigenproblem no longer pays.
BASIS_MARGIN = 32
RESIDUAL_TOL = 1e-4
SKETCH_COLUMNS = 256
SUBSPACE_SHARE = 0.6


@dataclass
class Stats:
    """Sufficient statistics of a set of feature rows (float64)."""

    n: int
    total: np.ndarray  # (d,)
    outer: np.ndarray  # (d, d)

    @classmethod
    def empty(cls, d: int = FEATURE_DIM) -> Stats:
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @classmethod
    def of(cls, x: np.ndarray) -> Stats:
        x = np.asarray(x, dtype=np.float64)
        return cls(len(x), x.sum(axis=0), x.T @ x)

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.n + other.n, self.total + other.total, self.outer + other.outer)


@dataclass
class PcaModel:
    version: int
    k: int
    mean: np.ndarray
    components: np.ndarray  # (k, d)
    explained_variance_ratio: np.ndarray  # descending: all d (exact solve) or the leading ones (update)
    row_count: int
    source_table_version: int
    feature_model_id: str

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> PcaModel:
        """A model from one ``pca_models`` row, as Spark (``Row.asDict()``) or Arrow gives it."""
        mean = np.asarray(r["mean"])
        return cls(
            version=r["version"],
            k=r["k"],
            mean=mean,
            components=np.asarray(r["components"]).reshape(r["k"], len(mean)),
            explained_variance_ratio=np.asarray(r["explained_variance_ratio"]),
            row_count=r["row_count"],
            source_table_version=r["source_table_version"],
            feature_model_id=r["feature_model_id"],
        )

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T).astype(np.float32)

    def project_arrow(
        self, features: pa.Array | pa.ChunkedArray, model_ids: pa.Array | pa.ChunkedArray
    ) -> pa.ListArray:
        """An Arrow column of ``features`` (1280-float lists) projected, as float lists; null where a
        row has no features or is of another feature model (``model_ids``): another space."""
        features, model_ids = (
            c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in (features, model_ids)
        )
        same_model = pc.fill_null(pc.equal(model_ids, self.feature_model_id), False)
        mine = pc.and_(same_model, pc.is_valid(features)).to_numpy(zero_copy_only=False)
        vectors = np.zeros((len(features), self.k), dtype=np.float32)
        if mine.any():
            vectors[mine] = self.project(matrix(features.filter(pa.array(mine)), len(self.mean)))
        offsets = pa.array(np.arange(0, vectors.size + 1, self.k, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel()), mask=pa.array(~mine))


def matrix(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """An Arrow column of ``width``-long float lists as an (n, width) array, without copying.
    ``ValueError`` for a null row or a list of another length."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"{column.null_count} rows have no features; PCA needs every row's vector")
    lengths = pc.min_max(pc.list_value_length(column))
    if len(column) and (lengths["min"].as_py(), lengths["max"].as_py()) != (width, width):
        raise ValueError(f"feature vectors of length {lengths['min']}..{lengths['max']}, expected {width}")
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)


@dataclass(frozen=True)
class Fit:
    """A fitted PCA: the mean, the components (all d for ``solve``, the leading ``basis_size`` for
    ``update``; descending), their explained-variance ratios, and the chosen k."""

    mean: np.ndarray
    components: np.ndarray
    ratios: np.ndarray
    k: int


def solve(stats: Stats, threshold: float = 0.95, k: int | None = None) -> Fit:
    """The exact fit: every component, descending, and the chosen k."""
    if stats.n < 2:
        raise ValueError(f"PCA needs at least 2 feature rows; the table has {stats.n}")
    mean = stats.total / stats.n
    cov = (stats.outer - stats.n * np.outer(mean, mean)) / (stats.n - 1)
    eigenvalues, vectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    vectors = vectors[:, order].T
    ratios = eigenvalues / eigenvalues.sum()
    return Fit(mean, vectors, ratios, _choose_k(ratios, threshold, k, stats.n))


def _choose_k(ratios: np.ndarray, threshold: float, k: int | None, n: int) -> int:
    if k is None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"explained-variance threshold must be in (0, 1], got {threshold}")
        k = int(np.searchsorted(np.cumsum(ratios), threshold - 1e-12) + 1)
    return max(1, min(k, len(ratios), n - 1))


def basis_size(k: int, d: int) -> int:
    """How many leading vectors a fit keeps for the next incremental solve: k and a margin, so
    that the k-th component still has room to move."""
    return min(d, k + max(BASIS_MARGIN, k // 4))


def update(
    stats: Stats,
    added: np.ndarray,
    basis: np.ndarray,
    threshold: float = 0.95,
    k: int | None = None,
    tol: float = RESIDUAL_TOL,
    sketch: int = SKETCH_COLUMNS,
) -> Fit | None:
    """The fit of ``stats`` from the previous fit's leading vectors ``basis`` and the rows
    ``added`` since (already in ``stats``), by one Rayleigh-Ritz step; None when that is not
    accurate enough or not cheaper.

    The new covariance is the old one scaled plus a change of low rank, whose range is spanned by
    the added rows less the new mean (the shift of the mean lies in it too). The solve projects the
    covariance onto ``basis`` plus that range (sketched with ``sketch`` random columns beyond that
    many rows) and solves that small eigenproblem instead of the d x d one. It is accepted when
    every kept component is an eigenvector to within ``tol`` of the largest eigenvalue:
    ``||C y - t y|| <= tol * t_1``. Returns a ``Fit`` like ``solve``'s, with the ratios and
    components of the subspace's leading vectors only (``basis_size(k, d)`` of them, not all d).

    Example::

        total = previous.stats + Stats.of(rows)
        fit = update(total, rows, previous.basis) or solve(total)

    Limitations: the result is approximate. Each update drops what lies outside the kept vectors,
    so errors can add up over successive updates; the residual check is what bounds them (on rows
    with real features' spectrum, k = 353, the variance kept stayed within 4e-7 of the exact fit's
    over 60 updates of +1 %). k from the threshold can be one more than the exact fit's when the
    cumulative ratio sits within that error of the threshold.
    """
    d = len(stats.total)
    if (
        basis.ndim != 2
        or basis.shape[1] != d
        or added.ndim != 2
        or added.shape[1] != d
        or stats.n < 2
        or not len(added)
    ):
        return None
    if len(basis) + min(len(added), sketch) > SUBSPACE_SHARE * d:
        return None  # the small eigenproblem would cost about what the full one does
    n = stats.n
    mean = stats.total / n
    change = (added - mean).T  # (d, rows)
    if change.shape[1] > sketch:  # its dominant range: change change^T times a random block
        change = change @ (change.T @ (np.random.default_rng(n).random((d, sketch)) - 0.5))
    extra = _orthonormal(_orthonormal(change, basis), basis)  # twice: once leaves rounding along both
    q = np.hstack([basis.T, extra])
    cq = (stats.outer @ q - np.outer(n * mean, mean @ q)) / (n - 1)
    small = q.T @ cq
    values, vectors = np.linalg.eigh((small + small.T) / 2)
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
    total_variance = (np.trace(stats.outer) - n * mean @ mean) / (n - 1)
    if values[0] <= 0.0:
        return None  # no variance at all: leave it to ``solve``
    chosen_k = _choose_k(values / total_variance, threshold, k, n)
    if chosen_k >= len(values):
        return None
    kept = min(len(values), basis_size(chosen_k, d))
    ritz = q @ vectors[:, :kept]  # the kept vectors in feature space, the first chosen_k the components
    residual = np.linalg.norm(cq @ vectors[:, :chosen_k] - ritz[:, :chosen_k] * values[:chosen_k], axis=0)
    worst = float(residual.max() / values[0])
    if worst > tol:
        log.info("incremental PCA solve: residual %.1e above %.0e; solving exactly", worst, tol)
        return None
    return Fit(mean, ritz.T, values[:kept] / total_variance, chosen_k)


def _orthonormal(y: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the part of ``y``'s columns outside ``basis``'s rows, from the
    eigenvectors of its Gram matrix (a QR costs 4x more here). Directions below 1e-7 of the largest
    singular value are dropped: rounding, where the columns depend on each other (equal rows)."""
    y = y - basis.T @ (basis @ y)
    values, vectors = np.linalg.eigh(y.T @ y)
    keep = values > (1e-7**2) * values[-1]
    return (y @ vectors[:, keep]) / np.sqrt(values[keep])
