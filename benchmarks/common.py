"""Shared pieces of the benchmarks: settings per benchmark, uploads ready in the ledger, worker memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fruits import stream
from fruits.config import Settings
from fruits.local import emulator, ingest
from fruits.local.paths import BUNDLED_WEIGHTS
from fruits.local.upload import upload_copies


def bench_settings(endpoint: str, root: Path, name: str, **changes: object) -> Settings:
    settings = Settings(
        endpoint_url=endpoint,
        bucket=f"bench-{name}",
        queue=f"bench-{name}",
        table_root=str(root / name),
        weights=str(BUNDLED_WEIGHTS),
    ).with_(**changes)
    emulator.provision(settings)
    return settings


def ingested(settings: Settings, images: list[tuple[str, Path]], total: int, tag: str) -> list[str]:
    """Upload, then run the ingest Lambda until the queue is empty: the ledger holds them."""
    keys = upload_copies(settings, images, total, tag)
    ingest.drain(settings)
    return keys


def timed_stream(spark, settings: Settings, blob) -> float:  # noqa: ANN001
    started = time.perf_counter()
    stream.start(spark, settings, model=blob).awaitTermination()
    return time.perf_counter() - started


def vmhwm_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's peak resident set (VmHWM; or another ``field`` of its status, VmRSS: now) in MB;
    0 once it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")), 0) / 1024


def peak_worker_rss_mb() -> float:
    """The largest peak resident set (VmHWM) among this machine's PySpark Python workers."""
    peak = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # the process ended meanwhile
        if b"pyspark.daemon" in cmdline or b"pyspark.worker" in cmdline:
            peak = max(peak, vmhwm_mb(int(pid)))
    return peak
