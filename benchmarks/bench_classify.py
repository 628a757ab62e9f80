"""Label suggestions through the similarity index against exact search: leave-one-out accuracy on
the 300 sample photos, both ways in one run.

The photos are featurized with the bundled weights and written to a ``features`` table as the
stream writes rows; a refit fits PCA and builds the index. Then, for every photo, ``classify``
through the store (the index: its own row left out, so leave-one-out) and by exact search
(cosine over every other row's vector in the same PCA version, the same vote: ``store.vote``).
``benchmarks/results/classify.json``. Run it alone: ``.venv/bin/python benchmarks/bench_classify.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from fruits.config import Settings
from fruits.featurize.build import compile_model, load_weights
from fruits.featurize.images import decode
from fruits.featurize.model import Featurizer
from fruits.local.paths import BUNDLED_WEIGHTS, SAMPLE_IMAGES
from fruits.local.upload import sample_images
from fruits.pca.refit import refit
from fruits.query.store import FeatureStore, Neighbour, vote
from fruits.spark import tables as table
from fruits.spark.schema import FEATURES
from fruits.spark.session import get_spark

ROOT = Path(__file__).resolve().parents[1]


def featurized() -> tuple[list[tuple[str, Path]], np.ndarray, str]:
    blob = load_weights(str(BUNDLED_WEIGHTS))
    featurizer = Featurizer(compile_model(blob))
    images = sample_images(SAMPLE_IMAGES)
    pixels = np.stack([decode(p.read_bytes()) for _, p in images])
    return images, np.concatenate([featurizer(pixels[i:i + 32]) for i in range(0, len(pixels), 32)]), blob.model_id


def exact_leave_one_out(keys: list[str], labels: list[str], unit: np.ndarray, k: int, pca_version: int) -> float:
    right = 0
    for i in range(len(keys)):
        distances = 1.0 - unit @ unit[i]
        distances[i] = np.inf
        nearest = np.argsort(distances, kind="stable")[:k]
        neighbours = [Neighbour(keys[j], labels[j], float(distances[j]), str(j)) for j in nearest]
        right += vote(neighbours, pca_version).label == labels[i]
    return right / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="5,10", help="neighbours that vote, comma-separated")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "classify.json"))
    args = parser.parse_args()
    images, features, model_id = featurized()
    with tempfile.TemporaryDirectory(prefix="fruits-bench-classify-") as work:
        settings = Settings(table_root=f"{work}/tables", weights=str(BUNDLED_WEIGHTS))
        spark = get_spark(settings, master="local[2]", app_name="bench-classify")
        table.ensure_tables(spark, settings)
        now = dt.datetime.now(dt.UTC)
        keys = [f"uploads/{label}/{path.name}" for label, path in images]
        labels = [label for label, _ in images]
        rows = pd.DataFrame({
            "image_id": [f"id-{i}" for i in range(len(images))], "bucket": settings.bucket, "key": keys,
            "label": labels,
            "size": 1, "etag": "e", "version_id": None, "event_time": now, "event_date": now.date(), "ingested_at": now,
            "features": list(features), "model_id": model_id, "pca_features": None, "pca_version": None,
        })
        spark.createDataFrame(rows, FEATURES).write.format("delta").mode("append").save(settings.features_table)
        fit = refit(spark, settings, write_plots=False)
        spark.stop()
        store = FeatureStore(settings)
        model = fit.model
        vectors = model.project(features)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        out: dict = {"rows": len(images), "labels": len(set(labels)), "pca_k": model.k, "accuracy": {},
                     "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        for k in (int(v) for v in args.k.split(",")):
            started = time.perf_counter()
            index = sum(store.classify(key, k=k).label == label for key, label in zip(keys, labels)) / len(keys)
            per_call_ms = 1000 * (time.perf_counter() - started) / len(keys)
            out["accuracy"][str(k)] = {"index": index, "exact": exact_leave_one_out(keys, labels, unit, k,
                                                                                     model.version),
                                       "index_ms_per_call": per_call_ms}
            print(f"k={k}: leave-one-out accuracy through the index {index:.3f}, exact "
                  f"{out['accuracy'][str(k)]['exact']:.3f} ({per_call_ms:.1f} ms a call)")
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
