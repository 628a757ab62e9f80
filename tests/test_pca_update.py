"""The incremental PCA solve (``update``) against the exact one (``solve``): no Spark."""

from __future__ import annotations

import numpy as np

from fruits.pca.model import Stats, basis_size, solve, update

D = 256


def rows(n: int, seed: int, directions: np.ndarray, scales: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, len(scales))) * scales) @ directions + rng.normal(scale=0.05, size=(n, D)) + 0.3


def signal(rank: int) -> tuple[np.ndarray, np.ndarray]:
    directions = np.linalg.qr(np.random.default_rng(0).normal(size=(D, rank)))[0].T
    return directions, np.geomspace(10.0, 0.5, rank)


def captured(ratios: np.ndarray, k: int) -> float:
    return float(ratios[:k].sum())


def test_successive_updates_equal_exact_solves() -> None:
    directions, scales = signal(16)
    total = Stats.of(rows(3000, 1, directions, scales))
    fit = solve(total)
    basis = fit.components[: basis_size(fit.k, D)]
    for step in range(5):  # +1 % each time, every update from the previous update's basis
        added = rows(30, 10 + step, directions, scales)
        total = total + Stats.of(added)
        fit = update(total, added, basis)
        assert fit is not None, f"step {step}: the update declined"
        exact, k = solve(total), fit.k
        assert k == exact.k and 8 <= k <= 16
        np.testing.assert_allclose(fit.mean, exact.mean, rtol=1e-12)
        np.testing.assert_allclose(fit.ratios[:k], exact.ratios[:k], rtol=1e-8)
        assert captured(exact.ratios, k) - captured(fit.ratios, k) < 1e-10  # never above the exact: Ky Fan
        alignment = np.abs(np.sum(fit.components[:k] * exact.components[:k], axis=1))  # |cos|, 1 up to sign
        np.testing.assert_allclose(alignment, 1.0, atol=1e-6)
        assert len(fit.components) == len(fit.ratios) == basis_size(k, D)
        basis = fit.components


def test_an_update_finds_a_direction_the_old_basis_lacks() -> None:
    """A new kind of photo brings a direction of high variance orthogonal to every kept vector:
    the update must find it from the added rows alone (the projection onto the old basis cannot)."""
    directions, scales = signal(8)
    old = Stats.of(rows(2000, 2, directions, scales))
    old_fit = solve(old)
    basis = old_fit.components[: basis_size(old_fit.k, D)]
    fresh = np.random.default_rng(5).normal(size=D)
    fresh -= basis.T @ (basis @ fresh)
    fresh /= np.linalg.norm(fresh)
    new_rows = rows(20, 3, directions, scales) + np.random.default_rng(6).normal(scale=150.0, size=(20, 1)) * fresh
    total = old + Stats.of(new_rows)

    fit = update(total, new_rows, basis)
    assert fit is not None
    exact = solve(total)
    assert fit.k == exact.k
    assert abs(exact.components[0] @ fresh) > 0.99  # the new direction leads the exact fit ...
    assert abs(fit.components[0] @ exact.components[0]) > 1 - 1e-9  # ... and the update's
    np.testing.assert_allclose(fit.ratios[: fit.k], exact.ratios[: fit.k], rtol=1e-8)


def test_an_update_declines_when_it_would_be_wrong_or_not_cheaper() -> None:
    directions, scales = signal(8)
    old = Stats.of(rows(2000, 4, directions, scales))
    old_fit = solve(old)
    vectors, k = old_fit.components, old_fit.k
    added = rows(20, 5, directions, scales)
    total = old + Stats.of(added)
    assert update(total, added, vectors[: basis_size(k, D)]) is not None

    # A basis that misses the data's directions: the projected fit's residual fails the check.
    wrong = np.linalg.qr(np.random.default_rng(7).normal(size=(D, basis_size(k, D))))[0].T
    assert update(total, added, wrong) is None
    # More added rows than the small problem can hold cheaply: the exact solve is as fast.
    many = rows(200, 6, directions, scales)
    assert update(old + Stats.of(many), many, vectors[: basis_size(k, D)], sketch=1000) is None
    # A basis from features of another width.
    assert update(total, added, vectors[: basis_size(k, D), :128]) is None


def test_more_added_rows_than_the_sketch_still_equal_an_exact_solve() -> None:
    directions, scales = signal(8)
    old = Stats.of(rows(2000, 8, directions, scales))
    old_fit = solve(old)
    added = rows(200, 9, directions, scales)  # 200 directions of change, sketched by 64
    total = old + Stats.of(added)
    fit = update(total, added, old_fit.components[: basis_size(old_fit.k, D)], sketch=64)
    assert fit is not None
    exact, k = solve(total), fit.k
    assert k == exact.k
    np.testing.assert_allclose(fit.ratios[:k], exact.ratios[:k], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(fit.components[:k] * exact.components[:k], axis=1)), 1.0, atol=1e-6)
