"""Featurization throughput of the streaming job against the model's own ceiling, in one run.

    ours:    the featurizer stream (availableNow) over manifests of N uploads, through the emulator:
             fetch on executors, decode, MobileNetV2, idempotent Delta appends. JVM start and model build
             are excluded by a warm-up run on a separate bucket first.
    ceiling: the same model in this one Python process on pre-decoded tensors, compiled tf.function.

Usage: python benchmarks/bench_featurize.py [--uploads 2100] [--json benchmarks/results/featurize.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fruits import aws, emulator, ingest, stream, upload
from fruits.config import Settings
from fruits.demo import BUNDLED_WEIGHTS, SAMPLE_IMAGES
from fruits.images import decode
from fruits.model import get_featurizer, load_weights
from fruits.spark import get_spark


def upload_copies(settings: Settings, images: list[tuple[str, Path]], total: int) -> int:
    s3 = aws.client("s3", settings)
    blobs = [(label, path.name, path.read_bytes()) for label, path in images]
    jobs = [(f"{settings.upload_prefix}{label}/copy{i // len(blobs)}_{name}", data)
            for i, (label, name, data) in ((i, blobs[i % len(blobs)]) for i in range(total))]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: s3.put_object(Bucket=settings.bucket, Key=job[0], Body=job[1]), jobs))
    return len(jobs)


def prepared(endpoint: str, root: Path, name: str, total: int, images: list[tuple[str, Path]]) -> Settings:
    settings = Settings(endpoint_url=endpoint, bucket=f"bench-{name}", queue=f"bench-{name}",
                        table_root=str(root / name), weights=str(BUNDLED_WEIGHTS))
    emulator.provision(settings)
    upload_copies(settings, images, total)
    ingest.drain(settings)
    return settings


def run_stream(settings: Settings, blob) -> float:
    spark = get_spark(settings)
    started = time.perf_counter()
    stream.start(spark, settings, blob=blob).awaitTermination()
    return time.perf_counter() - started


def ceiling(blob, images: list[tuple[str, Path]], total: int, batch_size: int) -> float:
    pixels = np.stack([decode(path.read_bytes()) for _, path in images])
    featurizer = get_featurizer(blob)
    featurizer(pixels[:batch_size])  # trace + warm up
    reps = -(-total // len(pixels))
    started = time.perf_counter()
    for _ in range(reps):
        for start in range(0, len(pixels), batch_size):
            featurizer(pixels[start : start + batch_size])
    return reps * len(pixels) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=2100)
    parser.add_argument("--json", default="benchmarks/results/featurize.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fruits").setLevel(logging.INFO)

    images = upload.sample_images(SAMPLE_IMAGES)
    blob = load_weights(str(BUNDLED_WEIGHTS))
    with emulator.LocalAWS() as endpoint, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = prepared(endpoint, root, "warmup", 64, images)
        main_run = prepared(endpoint, root, "main", args.uploads, images)
        print(f"uploads: {args.uploads} (+64 warm-up), manifests ready", flush=True)
        run_stream(warm, blob)
        seconds = run_stream(main_run, blob)
        spark = get_spark(main_run)
        rows = spark.read.format("delta").load(main_run.features_table).count()
        ours = rows / seconds
        spark.stop()
    top = ceiling(blob, images, args.uploads, main_run.batch_size)

    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "uploads": args.uploads, "rows": rows, "stream_seconds": round(seconds, 2),
        "ours_images_per_s": round(ours, 1), "ceiling_images_per_s": round(top, 1),
        "ours_over_ceiling": round(ours / top, 3),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'measure':<34}{'value':>12}")
    print(f"{'stream (ours), images/s':<34}{ours:>12.1f}")
    print(f"{'ceiling (tf.function), images/s':<34}{top:>12.1f}")
    print(f"{'ours / ceiling':<34}{ours / top:>12.3f}")
    print(f"({rows} rows in {seconds:.1f}s; JSON in {args.json})")


if __name__ == "__main__":
    main()
