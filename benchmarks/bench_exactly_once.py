"""The candidates for the stream's exactly-once check, per micro-batch, on the pinned Spark and Delta.

A ``quarantine``-shaped table (small rows: the check reads ids, not features) holds ``n`` rows,
partitioned by ``event_date``, in files of 10,000 rows, laid out two ways: ``history``, at 10,000 a
day (a longer history at the same daily volume), and ``one_day``, all in the newest day (a busier
day). Then ``--batches`` micro-batches of 50 ledger rows (40 new images dated the newest day, 10
already written), each followed by commits, as the stream makes one per micro-batch. The
``features`` table beside it is empty. Per micro-batch, timed:

- ``delta_rs_lookup``: what the stream does (``stream.written``): delta-rs picks the files of the
  batch's days whose id statistics could hold a batch id, Arrow reads their ``image_id`` column;
- ``spark_anti_join``: the batch anti-joined in Spark with the table's rows of the batch's days;
- ``merge_insert``: Delta's documented deduplication, ``MERGE ... WHEN NOT MATCHED THEN INSERT``
  on the id, restricted to the batch's days (it also writes: the commit of the micro-batch);
- ``txn_append`` against ``blind_append``: an append tagged with ``txnAppId``/``txnVersion``
  (Delta's idempotent write: only a replay of the same micro-batch) and an untagged one.

Medians of the micro-batches, in seconds, per layout and size; ``benchmarks/results/exactly_once.json``.
Run it alone: ``.venv/bin/python benchmarks/bench_exactly_once.py [--rows 10000,100000]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import functions as F

from fruits.config import Settings
from fruits.spark import tables as table
from fruits.spark.schema import PARTITION, QUARANTINE
from fruits.spark.session import get_spark
from fruits.stream.written import WrittenImages

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_DAY = 10_000
FILE_ROWS = 10_000
NEWEST = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


def rows(start: int, n: int, at: dt.datetime) -> list[tuple]:
    ids = (hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(start, start + n))
    return [(i, "b", f"uploads/{i}.jpg", None, None, at.date(), "not_an_image", "x", at, None) for i in ids]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(spark, root: Path, n: int, batches: int, per_day: int) -> dict[str, float]:  # noqa: ANN001
    settings = Settings(table_root=str(root))
    table.ensure_tables(spark, settings)
    location = settings.quarantine_table
    for start in range(0, n, FILE_ROWS):  # newest day last
        day = NEWEST - dt.timedelta(days=(n - start - 1) // per_day)
        table.append(spark.createDataFrame(rows(start, FILE_ROWS, day), QUARANTINE).coalesce(1), location)
    written = WrittenImages(settings, spark)
    times: dict[str, list[float]] = {
        k: [] for k in ("delta_rs_lookup", "spark_anti_join", "merge_insert", "txn_append", "blind_append")
    }
    fresh = n
    for i in range(batches):
        batch = spark.createDataFrame(rows(fresh, 40, NEWEST) + rows(n - 10, 10, NEWEST), QUARANTINE)
        fresh += 40
        arrow = batch.select("image_id", PARTITION, F.col("quarantined_at").alias("event_time")).toArrow()
        dates = sorted(set(arrow.column(PARTITION).to_pylist()))
        started = time.perf_counter()
        hits = written.among(arrow)  # the first look since the last commits, as in the stream
        times["delta_rs_lookup"].append(time.perf_counter() - started)
        assert sum(hits.to_pylist()) == 10, "the lookup must find exactly the 10 written images"

        def anti_join() -> None:
            have = table.read(spark, location).where(F.col(PARTITION).isin(dates)).select("image_id")
            assert batch.join(have, "image_id", "left_anti").count() == 40

        times["spark_anti_join"].append(timed(anti_join))
        date_list = ", ".join(f"DATE'{d}'" for d in dates)
        times["merge_insert"].append(
            timed(
                lambda: (
                    DeltaTable.forPath(spark, location)
                    .alias("t")
                    .merge(batch.alias("s"), f"t.image_id = s.image_id AND t.{PARTITION} IN ({date_list})")
                    .whenNotMatchedInsertAll()
                    .execute()
                )
            )
        )
        # Two more commits, as two more micro-batches would make (their rows are never looked up).
        extra = spark.createDataFrame(rows(10**9 + 100 * i, 40, NEWEST), QUARANTINE)
        times["txn_append"].append(
            timed(
                lambda: (
                    extra.write.format("delta")
                    .option("txnAppId", "bench")
                    .option("txnVersion", i)
                    .mode("append")
                    .save(location)
                )
            )
        )
        extra = spark.createDataFrame(rows(10**9 + 100 * i + 50, 40, NEWEST), QUARANTINE)
        times["blind_append"].append(timed(lambda: table.append(extra, location)))
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "exactly_once.json"))
    args = parser.parse_args()
    spark = get_spark(Settings(spark_log_level="ERROR"))
    sizes = [int(s) for s in args.rows.split(",")]
    (ROOT / "work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "work") as tmp:
        measure(spark, Path(tmp) / "warm-up", FILE_ROWS, 2, ROWS_PER_DAY)  # the JVM's classes, Spark's planner
        results = {
            f"{layout}/{n}": measure(spark, Path(tmp) / f"{layout}-{n}", n, args.batches, per_day)
            for layout, per_day in (("history", ROWS_PER_DAY), ("one_day", 10**12))
            for n in sizes
        }
    out = {
        "rows": sizes,
        "seconds_per_micro_batch": results,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    names = list(next(iter(results.values())))
    print(f"{'layout/rows':>16} " + " ".join(f"{k:>16}" for k in names))
    for case, medians in results.items():
        print(f"{case:>16} " + " ".join(f"{medians[k]:>16.3f}" for k in names))


if __name__ == "__main__":
    main()
