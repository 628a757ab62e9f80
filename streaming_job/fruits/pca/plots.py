"""The PCA plots of the original notebooks, written as PNG next to each model version.

- ``scree.png``: per-component and cumulative explained variance, the threshold and k marked;
- ``pc1_pc2.png``: a sample of rows (at most 5,000) on the first two components, coloured by label.

Example::

    paths = write_pca_plots(spark, settings, model, threshold=0.95)
    # ['<table root>/pca_plots/v3/scree.png', '<table root>/pca_plots/v3/pc1_pc2.png']
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..config import Settings
from ..io import aws
from ..spark import tables as table

if TYPE_CHECKING:
    from .model import PcaModel

SCATTER_SAMPLE = 5000


def scree(ratios: np.ndarray, k: int, threshold: float | None, version: int) -> bytes:
    """Bars per component and the cumulative curve, over the first max(2k, 20) components."""
    shown = min(len(ratios), max(2 * k, 20))
    x = np.arange(1, shown + 1)
    cumulative = np.cumsum(ratios)[:shown]
    fig = Figure(figsize=(9, 5), dpi=110)  # a Figure, not pyplot: no GUI backend, no global state
    ax = fig.subplots()
    ax.bar(x, ratios[:shown], color="#4c72b0", label="per component")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    right = ax.twinx()
    right.plot(x, cumulative, color="#dd8452", label="cumulative")
    right.set_ylim(0, 1.02)
    right.set_ylabel("cumulative explained variance")
    if threshold is not None:
        right.axhline(threshold, color="#c44e52", linestyle="--", linewidth=1, label=f"threshold {threshold:.0%}")
    right.axvline(k, color="#55a868", linestyle=":", linewidth=1.5, label=f"k = {k} ({cumulative[k - 1]:.1%})")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="center right")
    ax.set_title(f"PCA v{version}: scree plot")
    return _png(fig)


def pc_scatter(points: np.ndarray, labels: list[str], version: int, total_rows: int) -> bytes:
    """The first two components of ``points``, one colour (and marker) per label."""
    names = sorted(set(labels))
    colors = [*colormaps["tab20"].colors, *colormaps["tab20b"].colors]
    markers = "osD^v<>"
    fig = Figure(figsize=(10, 7), dpi=110)
    ax = fig.subplots()
    label_array = np.asarray(labels)
    for i, name in enumerate(names):
        mask = label_array == name
        ax.scatter(points[mask, 0], points[mask, 1], s=14, alpha=0.8, color=colors[i % len(colors)],
                   marker=markers[(i // len(colors)) % len(markers)], label=name)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    shown = f"{len(points):,} of {total_rows:,} rows" if len(points) < total_rows else f"{len(points):,} rows"
    ax.set_title(f"PCA v{version}: PC1 / PC2 by label ({shown})")
    if len(names) <= 40:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=1.2, frameon=False)
    return _png(fig)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_pca_plots(
    spark: SparkSession, settings: Settings, model: PcaModel, threshold: float | None
) -> list[str]:
    """Draw both plots for ``model`` (its rows must be re-projected) and write them; returns their URIs."""
    folder = f"{settings.pca_plots}/v{model.version}"
    rows = table.read(spark, settings.features_table).where(F.col("pca_version") == model.version)
    total = rows.count()
    if total > SCATTER_SAMPLE:
        rows = rows.sample(fraction=min(1.0, 1.2 * SCATTER_SAMPLE / total), seed=model.version).limit(SCATTER_SAMPLE)
    sample = rows.select(F.coalesce("label", F.lit("(no label)")).alias("label"),
                         F.slice("pca_features", 1, 2).alias("pc")).collect()
    points = np.array([r.pc + [0.0] * (2 - len(r.pc)) for r in sample], dtype=np.float64).reshape(-1, 2)
    written = []
    for name, png in (
        ("scree.png", scree(model.explained_variance_ratio, model.k, threshold, model.version)),
        ("pc1_pc2.png", pc_scatter(points, [r.label for r in sample], model.version, total)),
    ):
        uri = f"{folder}/{name}"
        aws.write_bytes(settings, uri, png, content_type="image/png")
        written.append(uri)
    return written
