"""Upload-to-queryable latency through the full local path, with a processing-time trigger.

upload (boto3 PUT) -> S3 event -> SQS -> the Lambda handler (local event source mapping, polling
all the time) -> uploads ledger -> the stream (trigger every second) -> Delta commit -> the row is seen
by a reader polling the table (delta-rs, every 0.2 s). Uploads are paced (8 a second) so that the
figure is latency, not a backlog draining. ``plot`` draws the distribution (``results/latency.png``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import bench_settings, ingested
from pyspark.sql import SparkSession

from fruits import FeatureStore, stream
from fruits.local import ingest
from fruits.local.upload import upload_copies
from fruits_ingest.runner import RunStats

POLL_SECONDS = 0.2


def run(
    spark: SparkSession,
    endpoint: str,
    root: Path,
    images: list,
    uploads: int,
    blob: Any,
    rate: float = 8.0,
    timeout: float = 300.0,
) -> dict[str, float]:
    settings = bench_settings(endpoint, root, "latency")
    ingested(settings, images, 16, "warm")  # the first batch pays the one-off costs, unmeasured
    query = stream.start(spark, settings, trigger={"processingTime": "1 second"}, model=blob)
    store = FeatureStore(settings)
    stop = threading.Event()

    def lambda_poller() -> None:
        mapping, stats = ingest.event_source_mapping(settings), RunStats()
        while not stop.is_set():
            mapping.poll_once(stats)

    seen: dict[str, float] = {}

    def reader() -> None:
        while not stop.is_set():
            try:
                keys = store.dataset("features")[0].to_table(columns=["key"])["key"].to_pylist()
            except FileNotFoundError:
                keys = []
            now = time.time()
            for key in keys:
                seen.setdefault(key, now)
            time.sleep(POLL_SECONDS)

    threads = [threading.Thread(target=f, daemon=True) for f in (lambda_poller, reader)]
    for t in threads:
        t.start()
    try:
        while len(seen) < 16:  # warm-up rows visible: the stream is running
            time.sleep(0.5)
        sent: dict[str, float] = {}
        for i in range(uploads):
            key = upload_copies(settings, images[i % len(images) :][:1], 1, f"lat{i}_")[0]
            sent[key] = time.time()
            time.sleep(max(0.0, 1.0 / rate))
        deadline = time.time() + timeout
        while not all(k in seen for k in sent) and time.time() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        query.stop()
    latencies = np.array([seen[k] - t for k, t in sent.items() if k in seen])
    return {
        "uploads": uploads,
        "visible": len(latencies),
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "max_s": float(latencies.max()),
        "latencies_s": sorted(round(float(v), 3) for v in latencies),
    }


def plot(latencies: list[float], target: float, title: str, path: Path) -> None:
    """The share of uploads queryable after t seconds, p50 / p95 and the target marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.sort(latencies)
    share = np.arange(1, len(values) + 1) / len(values)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.step(values, share, where="post", color="#4c72b0", label=f"{len(values)} uploads")
    for q, style in ((50, "--"), (95, ":")):
        v = float(np.percentile(values, q))
        ax.axvline(v, color="#55a868", linestyle=style, linewidth=1.2, label=f"p{q} {v:.2f} s")
    ax.axvline(target, color="#c44e52", linewidth=1.2, label=f"target: p50 ≤ {target:g} s")
    ax.set_xlim(0, max(float(values[-1]), target) * 1.05)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("upload → queryable (s)")
    ax.set_ylabel("share of uploads")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
