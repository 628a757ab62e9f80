"""``make bench``: every benchmark in one session, as ratios measured in the same run.

Prints one table (with the targets of the benchmarks issue) and writes the JSON, and the latency
distribution as ``latency.png``, next to it.

Usage: python benchmarks/run.py [--uploads 2100] [--latency-uploads 200] [--pca-rows 20000,100000]
                                [--pca-mobilenet-rows 20000,100000]
                                [--only featurize,latency,pca,decode,api] [--api-load-seconds 60]
                                [--json benchmarks/results/bench.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The Lambda runs in this process: quiet, no EMF lines on stdout (as `fruits` sets them), so that
# its logging is not part of what the latency benchmark measures.
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

import bench_api
import bench_decode
import bench_featurize
import bench_latency
import bench_pca

from fruits.config import Settings
from fruits.featurize.build import load_weights
from fruits.local import emulator, upload
from fruits.local.paths import BUNDLED_WEIGHTS, SAMPLE_IMAGES
from fruits.progress import Progress
from fruits.spark.session import get_spark

PARTS = ("featurize", "latency", "pca", "decode", "api")


def row(name: str, value: float, unit: str, target: str = "", ok: bool | None = None) -> tuple[str, str, str, str]:
    verdict = "" if ok is None else ("met" if ok else "missed")
    return name, f"{value:,.3f}".rstrip("0").rstrip(".") + (f" {unit}" if unit else ""), target, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=2100)
    parser.add_argument("--latency-uploads", type=int, default=200)
    parser.add_argument("--pca-rows", default="20000,100000")
    parser.add_argument("--pca-mobilenet-rows", default="20000,100000", help="'0': skip the realistic-spectrum tables")
    parser.add_argument("--api-load-seconds", type=float, default=60.0)
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--json", default="benchmarks/results/bench.json")
    args = parser.parse_args()
    only = set(args.only.split(","))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fruits").setLevel(logging.INFO)

    images = upload.sample_images(SAMPLE_IMAGES)
    blob = load_weights(str(BUNDLED_WEIGHTS))
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
    }
    table: list[tuple[str, str, str, str]] = []
    started = time.perf_counter()
    parts = [part for part in PARTS if part in only]
    # A bar over the parts (no Spark note: nothing polls the JVM while a benchmark measures it).
    with (
        Progress("bench", len(parts), "part", every=Settings().progress_seconds) as bar,
        emulator.LocalAWS() as endpoint,
        tempfile.TemporaryDirectory() as tmp,
    ):
        root = Path(tmp)
        spark = get_spark(Settings(endpoint_url=endpoint))
        if "featurize" in only:
            bar.stage("featurize")
            bar.write(f"featurize: {args.uploads} uploads, ours / original / ceiling ...")
            ours = bench_featurize.ours(spark, endpoint, root, images, args.uploads, blob)
            original = bench_featurize.original(spark, str(ours.pop("bucket")), root, blob)
            top = bench_featurize.ceiling_tf_function(blob, images, args.uploads, Settings().batch_size)
            runtime = bench_featurize.ceiling_litert(blob, images, args.uploads, Settings().batch_size)
            results["featurize"] = {"ours": ours, "original": original, "ceiling": top, "ceiling_litert": runtime}
            vs_top, vs_original = (
                ours["images_per_s"] / top["images_per_s"],
                ours["images_per_s"] / original["images_per_s"],
            )
            table += [
                row("featurize: ours", ours["images_per_s"], "img/s"),
                row("featurize: original notebooks' approach", original["images_per_s"], "img/s"),
                row("featurize: ceiling (tf.function, in memory)", top["images_per_s"], "img/s"),
                row("featurize: our LiteRT model alone (in memory)", runtime["images_per_s"], "img/s"),
                row("ours / ceiling", vs_top, "", ">= 0.85", vs_top >= 0.85),
                row("ours / original", vs_original, "", ">= 2.5", vs_original >= 2.5),
                row("ours / our model alone", ours["images_per_s"] / runtime["images_per_s"], ""),
                row("peak RSS of a Python worker", ours["worker_peak_rss_mb"], "MB"),
            ]
        if "latency" in only:
            bar.stage("latency")
            bar.write(f"latency: {args.latency_uploads} uploads through the full local path ...")
            latency = bench_latency.run(spark, endpoint, root, images, args.latency_uploads, blob)
            results["latency"] = latency
            bench_latency.plot(
                latency["latencies_s"],
                5.0,
                f"Upload to queryable, {results['date']}, {results['machine']}",
                Path(args.json).with_name("latency.png"),
            )
            table += [
                row("upload -> queryable, p50", latency["p50_s"], "s", "<= 5 s", latency["p50_s"] <= 5.0),
                row("upload -> queryable, p95", latency["p95_s"], "s"),
            ]
        if "pca" in only:
            bar.stage("pca")
            pca_results: dict[str, object] = {}
            for n in (int(v) for v in args.pca_rows.split(",")):
                bar.write(f"pca: {n:,} synthetic rows, ours vs Spark ML, incremental vs full ...")
                r = bench_pca.run(spark, root, n)
                pca_results[str(n)] = r
                speedup = r["spark_ml_s"] / r["ours_full_s"]
                share = r["ours_incremental_s"] / r["ours_full_s"]
                table += [
                    row(f"pca fit {n:,} rows: Spark ML", r["spark_ml_s"], "s"),
                    row(f"pca fit {n:,} rows: ours (full)", r["ours_full_s"], "s"),
                    row(f"pca {n:,}: Spark ML / ours", speedup, "x", ">= 10", speedup >= 10),
                    row(f"pca {n:,}: incremental (+1 %) / full (k={r['k']})", share, "", "<= 0.1", share <= 0.1),
                    row(f"pca {n:,}: whole refit (fit and store), full", r["refit_full_wall_s"], "s"),
                    row(f"pca {n:,}: whole refit (fit and store), incremental", r["refit_incremental_wall_s"], "s"),
                ]
            realistic = [int(v) for v in args.pca_mobilenet_rows.split(",") if v.strip() and int(v)]
            if realistic:
                bar.write("pca: featurizing augmented sample photos for rows with MobileNetV2 features' spectrum ...")
                rows = bench_pca.mobilenet_like(blob, images)
            for n in realistic:
                bar.write(f"pca: {n:,} MobileNetV2-like rows, incremental vs full ...")
                r = bench_pca.run(spark, root, n, rows, "mobilenet", whole=False)
                pca_results[f"mobilenet-{n}"] = r
                share = r["ours_incremental_s"] / r["ours_full_s"]
                table += [
                    row(f"pca {n:,} MobileNetV2-like rows: full fit", r["ours_full_s"], "s"),
                    row(
                        f"pca {n:,} MobileNetV2-like: incremental (+1 %) / full (k={r['k']})",
                        share,
                        "",
                        "<= 0.1",
                        share <= 0.1,
                    ),
                ]
            results["pca"] = pca_results
        if "api" in only:
            bar.stage("api")
            bar.write("api: POST /v1/classify from a warm fruits serve, 1 and 8 clients, then a load ...")
            api = bench_api.run(spark, root, images, blob, args.api_load_seconds)
            results["api"] = api
            for name, what in (("small", "100x100 JPEG"), ("12mp", "12 MP JPEG")):
                single, many = api[f"{name}_1"], api[f"{name}_{bench_api.CLIENTS}"]
                table += [
                    row(f"classify {what}, 1 client, p50", single["p50_ms"], "ms", "<= 50 ms", single["p50_ms"] <= 50),
                    row(f"classify {what}, 1 client, p95", single["p95_ms"], "ms"),
                    row(f"classify {what}, 8 clients, p50", many["p50_ms"], "ms"),
                    row(f"classify {what}, 8 clients, p95", many["p95_ms"], "ms", "<= 150 ms", many["p95_ms"] <= 150),
                ]
            load = api["load"]
            table += [
                row(f"classify load, 8 clients for {load['seconds']:g} s: requests", load["requests"], ""),
                row("classify load: errors", load["errors"], "", "0", load["errors"] == 0),
                row("classify load: throughput", load["requests_per_s"], "req/s"),
            ]
        spark.stop()
        if "decode" in only:
            bar.stage("decode")
            bar.write("decode: a 12-megapixel JPEG with and without draft mode ...")
            decode = bench_decode.run()
            results["decode"] = decode
            table += [
                row("decode 12 MP: full decode", decode["full_ms"], "ms"),
                row("decode 12 MP: draft mode (ours)", decode["draft_ms"], "ms"),
                row("decode: full / draft", decode["full_ms"] / decode["draft_ms"], "x"),
            ]
    results["seconds"] = round(time.perf_counter() - started, 1)

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    widths = [max(len(r[i]) for r in [("measure", "value", "target", "")] + table) for i in range(4)]
    print()
    for r in [("measure", "value", "target", "")] + table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"\n{results['machine']}; {results['seconds']:.0f} s in all; JSON in {args.json}")


if __name__ == "__main__":
    main()
