"""The PCA plots of the original notebooks, written as PNG next to each model version.

- ``scree.png``: per-component and cumulative explained variance, the threshold and k marked;
- ``pc1_pc2.png``: a sample of rows (at most 5,000, from whole files picked at random) projected on
  the first two components, coloured by label.

Example::

    paths = write_pca_plots(spark, settings, model, threshold=0.95)
    # ['<table root>/pca_plots/v3/scree.png', '<table root>/pca_plots/v3/pc1_pc2.png']
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..config import Settings
from ..io import aws, lake
from .model import matrix

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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
        ax.scatter(
            points[mask, 0],
            points[mask, 1],
            s=14,
            alpha=0.8,
            color=colors[i % len(colors)],
            marker=markers[(i // len(colors)) % len(markers)],
            label=name,
        )
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


def sample_rows(spark: SparkSession, settings: Settings, seed: int, size: int = SCATTER_SAMPLE) -> tuple[pa.Table, int]:
    """Up to ``size`` rows (``label``, ``features``) of the features table, and how many rows it has.

    Files are picked at random and read from their start, at most an eighth of the sample from each
    (more when there are fewer files), until the sample is full: a row group or so per file read,
    whatever the table holds (the count comes from the log). A table with deletion vectors or
    column mapping is sampled through Spark instead (its first ``size`` rows; the count then
    includes deleted rows)."""
    table = lake.delta_table(settings, settings.features_table)
    total = int(pc.sum(pa.table(table.get_add_actions(flatten=True)).column("num_records")).as_py() or 0)
    if not lake.plain_files(table):
        from ..spark import tables

        return tables.read(spark, settings.features_table).select("label", "features").limit(size).toArrow(), total
    dataset = lake.as_dataset(settings, settings.features_table, table)
    fragments = list(dataset.get_fragments())
    rng = np.random.default_rng(seed)
    per_file = max(size // 8, -(-size // max(len(fragments), 1)))
    parts: list[pa.RecordBatch] = []
    held = 0
    for i in rng.permutation(len(fragments)):
        taken = 0
        # The dataset's schema: files written by other writers may type strings otherwise (string_view).
        for whole in fragments[i].to_batches(schema=dataset.schema, columns=["label", "features"], batch_size=1024):
            batch = whole.slice(0, min(per_file - taken, size - held))
            parts.append(batch)
            taken, held = taken + batch.num_rows, held + batch.num_rows
            if taken >= per_file or held >= size:
                break
        if held >= size:
            break
    empty = dataset.schema.empty_table().select(["label", "features"])
    return pa.Table.from_batches(parts) if parts else empty, total


def write_pca_plots(spark: SparkSession, settings: Settings, model: PcaModel, threshold: float | None) -> list[str]:
    """Draw both plots for ``model`` (the scatter from ``sample_rows``, projected here) and write
    them; returns their URIs."""
    folder = f"{settings.pca_plots}/v{model.version}"
    sample, total = sample_rows(spark, settings, seed=model.version)
    labels = ["(no label)" if label is None else label for label in sample.column("label").to_pylist()]
    if sample.num_rows:
        features = matrix(sample.column("features"), len(model.mean))
        points = ((features - model.mean) @ model.components[:2].T).reshape(-1, min(2, model.k))
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))  # k = 1: PC2 drawn as 0
    else:
        points = np.zeros((0, 2))
    written = []
    for name, png in (
        ("scree.png", scree(model.explained_variance_ratio, model.k, threshold, model.version)),
        ("pc1_pc2.png", pc_scatter(points, labels, model.version, total)),
    ):
        uri = f"{folder}/{name}"
        aws.write_bytes(settings, uri, png, content_type="image/png")
        written.append(uri)
    return written
