"""``POST /v1/classify`` from a warm ``fruits serve``, over real HTTP on this machine.

The tables are the sample's reference rows (every 6th photo held out) written as the stream writes
them and refitted by the pipeline's own refit (PCA, index, classifier); the server is a process of
its own (``fruits.local.server``), warmed by a few requests. Then, each client a thread with its
own keep-alive connection:

- a 100x100 JPEG (a held-out sample photo) and a 12-megapixel JPEG (``bench_decode``'s: a sample
  photo at 4000x3000 with sensor-like noise, about the bytes a phone writes), each from 1 client
  and from 8 clients at once: p50 and p95 of the request's time as the client sees it;
- a 60-second load of 8 clients, every 10th request a 12-megapixel photo: requests, errors (any
  status but 200, any connection error) and throughput.

Part of ``make bench`` (``benchmarks/run.py --only api``).
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_decode
import numpy as np

from fruits.config import Settings
from fruits.featurize.build import compile_model
from fruits.local.reference import write_reference_rows
from fruits.local.server import serving
from fruits.pca.refit import refit

HELD_OUT_EVERY = 6
CLIENTS = 8


def tables(spark, root: Path, reference: list[tuple[str, Path]], blob) -> Settings:  # noqa: ANN001
    compiled = compile_model(blob)
    settings = Settings(
        table_root=str(root / "api" / "tables"), weights=str(compiled.save(root / "api" / "model.tflite"))
    )
    write_reference_rows(spark, settings, reference, compiled)
    refit(spark, settings, write_plots=False)
    return settings


class Client:
    """One keep-alive connection; ``post`` returns the status and the seconds it took."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(self, body: bytes) -> tuple[int, float]:
        started = time.perf_counter()
        self._connection.request("POST", "/v1/classify", body=body, headers={"Content-Type": "image/jpeg"})
        answer = self._connection.getresponse()
        answer.read()
        return answer.status, time.perf_counter() - started

    def close(self) -> None:
        self._connection.close()


def latencies(url: str, body: bytes, clients: int, each: int) -> dict[str, float]:
    """``clients`` clients posting ``body`` ``each`` times at once: p50 and p95 in ms."""
    start = threading.Barrier(clients)

    def one() -> list[float]:
        client = Client(url)
        start.wait()
        try:
            out = []
            for _ in range(each):
                status, seconds = client.post(body)
                if status != 200:
                    raise RuntimeError(f"POST /v1/classify answered {status}")
                out.append(seconds)
            return out
        finally:
            client.close()

    with ThreadPoolExecutor(clients) as pool:
        times = np.concatenate([f.result() for f in [pool.submit(one) for _ in range(clients)]]) * 1000
    return {
        "requests": len(times),
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "max_ms": float(times.max()),
    }


def load(url: str, small: bytes, big: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` clients posting for ``seconds``, every 10th request the big photo."""
    stop = time.monotonic() + seconds

    def one() -> tuple[int, int, list[float]]:
        client, done, errors, times = Client(url), 0, 0, []
        try:
            while time.monotonic() < stop:
                try:
                    status, took = client.post(big if done % 10 == 9 else small)
                    errors += status != 200
                    times.append(took)
                except OSError:
                    errors += 1
                    client.close()
                    client = Client(url)
                done += 1
            return done, errors, times
        finally:
            client.close()

    with ThreadPoolExecutor(clients) as pool:
        results = [f.result() for f in [pool.submit(one) for _ in range(clients)]]
    times = np.concatenate([r[2] for r in results]) * 1000
    requests = sum(r[0] for r in results)
    return {
        "seconds": seconds,
        "clients": clients,
        "requests": requests,
        "errors": sum(r[1] for r in results),
        "requests_per_s": requests / seconds,
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
    }


def run(spark, root: Path, images: list[tuple[str, Path]], blob, load_seconds: float = 60.0) -> dict:  # noqa: ANN001
    settings = tables(spark, root, [im for i, im in enumerate(images) if i % HELD_OUT_EVERY], blob)
    held_out = [im for i, im in enumerate(images) if not i % HELD_OUT_EVERY]
    small, big = held_out[0][1].read_bytes(), bench_decode.twelve_megapixel_jpeg()
    env = {**os.environ, "FRUITS_TABLE_ROOT": settings.table_root, "FRUITS_WEIGHTS": settings.weights}
    with serving(env) as url:
        warm = Client(url)
        for body in (small, big) * 5:
            warm.post(body)
        warm.close()
        out: dict = {"small_bytes": len(small), "big_bytes": len(big)}
        for name, body, each in (("small", small, 200), ("12mp", big, 40)):
            out[f"{name}_1"] = latencies(url, body, 1, each)
            out[f"{name}_{CLIENTS}"] = latencies(url, body, CLIENTS, max(each // 4, 5))
        out["load"] = load(url, small, big, CLIENTS, load_seconds)
    return out
