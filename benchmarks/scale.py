"""``make bench-scale``: does anything per micro-batch, per restart, per refit or per query grow
with the table? The same measures on a history of 10,000, 100,000 and 1,000,000 images, and
discovery after 1,000 and 20,000 commits of the uploads ledger (one per Lambda invocation). Writes
``benchmarks/results/scale.json`` (the shape the issue fixes) and ``scale-extra.json`` (build costs,
per-state status times, sizes: what the README's extrapolation uses).

The history comes from ``scale_tables.py`` (synthetic rows in the stream's tables and a fitted PCA
version, cached under ``work/scale-cache/``). On it, everything is the real pipeline: photos
uploaded to the emulator's S3 (over HTTP), their events through SQS and the ingest Lambda's
handler, ``fruits stream`` in a process of its own, the refit, the JVM-free store. Tables and
checkpoints are on local disk (a 1,000,000-row table is 5.5 GB; the emulator keeps S3 in memory).

Timings come from the stream's own checkpoint: ``offsets/<n>`` is written when batch n starts,
``commits/<n>`` when it has committed, and the offset itself says up to which ledger version batch
n read (the Delta source's ``reservoirVersion``). So ``micro_batch_s`` = commit - offset of the
batch that read the round's ledger commit, ``discovery_s`` = its offset - the ledger commit's time,
``restart_s`` = the first commit - the process's start. ``driver_peak_rss_mb`` is the VmHWM of the
stream's Python driver plus its JVM (whose local executor is in the same process): how far the JVM's
heap grew, which its collector decides as much as what it holds (4 GB allowed). So the extra file
also records ``driver_held_mb`` after the micro-batches: the JVM's heap in use right after a full
collection, and the Python driver's resident set.

The similarity index (``fruits.similarity``) is timed apart from the refit that runs it: a full
build over the table (``index_build_s``, ``index_mb_per_million_rows``), then one update after the
timed refits (``index_update_s``: their +1 % rows each). The queries then run with a tail of 1 %
rows newer than the index, searched exactly, as between two refits.

Usage: python benchmarks/scale.py [--sizes 10000,100000,1000000] [--ledger-commits 1000,20000]
                                  [--repeat 5] [--restarts 3] [--cache work/scale-cache]
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from deltalake.exceptions import DeltaError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import vmhwm_mb
from scale_tables import append_synthetic, cached_tables, copy_tables, synthetic_key

from fruits import similarity
from fruits.config import Settings
from fruits.io import aws, lake
from fruits.local import emulator, ingest, upload
from fruits.local.paths import BUNDLED_WEIGHTS, SAMPLE_IMAGES
from fruits_ingest import ledger
from fruits_ingest.events import ImageEvent

BATCH_IMAGES = 100
RESTART_IMAGES = 20
STATUS_KEYS = 10  # per state: processed, quarantined, pending, unknown
REFIT_BUDGET_S = 240  # refits after the first stop once they have taken this long together
ROOT = Path(__file__).resolve().parents[1]
FRUITS = str(Path(sys.executable).with_name("fruits"))
log = logging.getLogger("bench-scale")


# --- the stream as a process ---------------------------------------------------------------


class Stream:
    """``fruits stream --trigger "0 seconds"`` on ``settings``, in a process of its own; stopped at
    the latest when the benchmark exits (a failed run once left one polling through the next run)."""

    def __init__(self, settings: Settings, log_file: Path, **env: str) -> None:
        variables = {
            **os.environ,
            **{
                f"FRUITS_{k.upper()}": str(v)
                for k, v in settings.model_dump().items()
                if v is not None and k in settings.model_fields_set
            },
            **env,
        }
        self.settings = settings
        self.started = time.time()
        self.log = log_file.open("ab")
        self.process = subprocess.Popen(
            [FRUITS, "stream", "--trigger", "0 seconds"], env=variables, stdout=self.log, stderr=subprocess.STDOUT
        )
        _RUNNING.add(self)

    def _jvm(self) -> list[int]:
        return [pid for pid in _children(self.process.pid) if b"java" in _cmdline(pid)]

    def peak_rss_mb(self) -> float:
        """VmHWM of the driver: this process and its JVM child, in MB."""
        return sum(vmhwm_mb(pid) for pid in [self.process.pid, *self._jvm()])

    def held_mb(self) -> dict[str, float]:
        """What the driver holds now, not how far its heap grew: the JVM's heap in use right after a
        full collection (``jcmd GC.run``, then ``GC.heap_info``) and the Python driver's resident set."""
        live = 0.0
        for pid in self._jvm():
            subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=60, check=True)
            info = subprocess.run(
                ["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60, check=True
            ).stdout
            used = re.search(r"heap\s+total \d+K, used (\d+)K", info)
            live += int(used.group(1)) / 1024 if used else float("nan")
        return {"jvm_live_heap_mb": live, "python_rss_mb": vmhwm_mb(self.process.pid, "VmRSS")}

    def wait_committed(self, versions: set[int], timeout: float) -> int:
        """The last batch that read any of the ledger's ``versions``, once all of them have committed."""
        found: dict[int, int] = {}

        def done() -> bool:
            found.update(batches_reading(self.settings, versions))
            committed = max(checkpoint_times(self.settings, "commits"), default=-1)
            return all(found.get(v, committed + 1) <= committed for v in versions)

        wait_for(done, timeout, f"{len(versions)} ledger commit(s) streamed", self)
        return max(found[v] for v in versions)

    def stop(self) -> None:
        _RUNNING.discard(self)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        if self.process.returncode not in (0, 143):
            raise RuntimeError(f"the stream exited with {self.process.returncode}; see {self.log.name}")


_RUNNING: set[Stream] = set()
atexit.register(lambda: [stream.stop() for stream in list(_RUNNING)])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def checkpoint_times(settings: Settings, kind: str) -> dict[int, float]:
    """Batch id -> the mtime of the checkpoint's ``offsets/<n>`` or ``commits/<n>``."""
    folder = Path(settings.checkpoint) / kind
    return (
        {int(p.name): p.stat().st_mtime for p in folder.glob("[0-9]*") if p.name.isdigit()} if folder.is_dir() else {}
    )


def batches_reading(settings: Settings, versions: set[int]) -> dict[int, int]:
    """Ledger version -> the batch that read it, from the Delta source's offsets (``offsets/<n>``:
    the ledger version and file index batch n read up to; one file per Lambda commit). A batch of
    the starting snapshot (``isStartingVersion``) counts only once the snapshot is done."""
    ends = []
    folder = Path(settings.checkpoint) / "offsets"
    for entry in folder.glob("[0-9]*") if folder.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            offset = json.loads(entry.read_text().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            continue  # being written
        if not offset.get("isStartingVersion"):
            ends.append((int(entry.name), offset["reservoirVersion"], offset["index"]))
    found = {}
    for version in versions:
        reading = [n for n, read_to, index in ends if read_to > version or (read_to == version and index >= 0)]
        if reading:
            found[version] = min(reading)
    return found


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, stream: Stream | None = None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if stream is not None and stream.process.poll() is not None:
            raise RuntimeError(
                f"the stream exited ({stream.process.returncode}) while waiting for {what}; see {stream.log.name}"
            )
        if time.time() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.05)


def ledger_version(settings: Settings) -> int:
    """The uploads ledger's newest version (-1 before it exists)."""
    from deltalake.exceptions import TableNotFoundError

    try:
        return lake.delta_table(settings, settings.uploads_table).version()
    except TableNotFoundError:
        return -1


def uploaded_and_ingested(
    settings: Settings, images: list[tuple[str, Path]], n: int, tag: str, broken: int = 0
) -> tuple[list[str], set[int]]:
    """Upload ``n`` photos (and ``broken`` corrupt ones) under new keys, then run the ingest Lambda
    until the queue is empty: returns the keys and the ledger versions it appended (one, mostly:
    the event source mapping gathers up to 100 events per invocation)."""
    before = ledger_version(settings)
    keys = upload.upload_copies(settings, images, n, tag)
    s3 = aws.client("s3", settings)
    bad = [f"{settings.reference_prefixes[0]}broken/{tag}{i}.jpg" for i in range(broken)]
    for key in bad:
        s3.put_object(Bucket=settings.bucket, Key=key, Body=b"\xff\xd8 not a jpeg")
    ingest.event_source_mapping(settings, batching_window=3).drain()
    return keys + bad, set(range(before + 1, ledger_version(settings) + 1))


# --- one table size ------------------------------------------------------------------------


def measure_size(
    spark,
    base: Settings,
    n: int,
    model_id: str,
    images,
    args: argparse.Namespace,  # noqa: ANN001
    work: Path,
) -> dict[str, Any]:
    from fruits.pca.refit import refit
    from fruits.query.store import FeatureStore

    built = cached_tables(spark, base, n, model_id, Path(args.cache))
    settings = base.with_(bucket=f"scale-{n}", queue=f"scale-{n}", table_root=str(work / f"t{n}"))
    emulator.provision(settings)
    copy_tables(built.root, Path(settings.table_root))
    out: dict[str, Any] = {
        "k": built.k,
        "write_s": built.write_s,
        "first_refit_s": built.first_refit_s,
        "cache_reused": built.reused,
    }

    # Micro-batches of 100 real photos through the Lambda: one warm-up (with broken uploads, for
    # the quarantine), then `repeat`.
    stream = Stream(settings, work / f"stream-{n}.log")
    batches, quarantined = [], []
    for i in range(args.repeat + 1):
        keys, versions = uploaded_and_ingested(
            settings, images, BATCH_IMAGES, f"b{n}-{i}-", broken=STATUS_KEYS if i == 0 else 0
        )
        quarantined += keys[BATCH_IMAGES:]
        last = stream.wait_committed(versions, 900)
        first = min(batches_reading(settings, versions).values())
        offsets, commits = checkpoint_times(settings, "offsets"), checkpoint_times(settings, "commits")
        if i:
            batches.append(commits[last] - offsets[first])
        log.info(
            "%d rows: micro-batch %d took %.2f s (batches %d-%d)", n, i, commits[last] - offsets[first], first, last
        )
    out["driver_peak_rss_mb"] = stream.peak_rss_mb()
    out["driver_held_mb"] = stream.held_mb()
    stream.stop()
    out["micro_batch_s"] = statistics.median(batches)
    out["micro_batch_all_s"] = batches
    log.info(
        "%d rows: micro-batch %.2f s (median of %d), driver peak %.0f MB, held %s",
        n,
        out["micro_batch_s"],
        len(batches),
        out["driver_peak_rss_mb"],
        {k: round(v) for k, v in out["driver_held_mb"].items()},
    )

    restarts = []
    for i in range(args.restarts):
        _, versions = uploaded_and_ingested(settings, images, RESTART_IMAGES, f"r{n}-{i}-")
        stream = Stream(settings, work / f"restart-{n}.log")
        last = stream.wait_committed(versions, 900)
        restarts.append(checkpoint_times(settings, "commits")[last] - stream.started)
        out["driver_peak_rss_mb"] = max(out["driver_peak_rss_mb"], stream.peak_rss_mb())
        stream.stop()
        log.info("%d rows: restart %d took %.1f s", n, i, restarts[-1])
    out["restart_s"] = statistics.median(restarts)
    out["restart_all_s"] = restarts

    # Uploads the Lambda recorded while no stream runs: pending.
    pending, _ = uploaded_and_ingested(settings, images, STATUS_KEYS, f"p{n}-")

    # A refit first takes in the stream's rows since the cached fit (a warm-up, not timed), so that
    # each timed refit reads +1 % rows and nothing else. The similarity index is timed on its own:
    # its first build here, then one update after the refits (what the refit job does after a fit).
    refit(spark, settings, update_index=False)
    out.update(measure_index_build(settings, n))
    refits, rows_added = [], 0
    while len(refits) < args.repeat and (not refits or sum(refits) < REFIT_BUDGET_S):
        append_synthetic(settings, n + rows_added, n // 100, model_id)
        rows_added += n // 100
        started = time.perf_counter()
        fit = refit(spark, settings, update_index=False)  # `fruits pca refit` without the index: fit, store, plots
        refits.append(time.perf_counter() - started)
        log.info(
            "%d rows: refit (%s, %d rows read, %s) took %.1f s", n, fit.mode, fit.rows_read, fit.solver, refits[-1]
        )
    out["refit_s"], out["refit_all_s"] = statistics.median(refits), refits
    done = similarity.update(settings)
    out["index_update_s"], out["index_update_rows"], out["index_segments"] = (
        done.seconds,
        done.rows_added,
        len(done.manifest.segments),
    )
    log.info(
        "%d rows: index update (%s, %d rows) took %.1f s: %d segments",
        n,
        done.mode,
        done.rows_added,
        done.seconds,
        out["index_segments"],
    )
    # A tail for the queries: 1 % more rows since the index's update, searched exactly.
    append_synthetic(settings, n + rows_added, n // 100, model_id)
    out["index_tail_rows"] = n // 100

    rng = np.random.default_rng(3)
    processed = [synthetic_key(int(i)) for i in rng.choice(n, size=max(50, 10 * args.repeat), replace=False)]
    out.update(
        measure_queries(
            FeatureStore(settings),
            processed,
            {
                "processed": processed[:STATUS_KEYS],
                "quarantined": quarantined,
                "pending": pending,
                "unknown": [f"{settings.reference_prefixes[0]}never/{i}.jpg" for i in range(STATUS_KEYS)],
            },
        )
    )
    out["table_bytes"] = folder_bytes(Path(settings.features_table))
    out["checkpoint_bytes"] = folder_bytes(Path(settings.checkpoint))
    shutil.rmtree(settings.table_root)  # a copy: the cache keeps the history
    return out


def measure_index_build(settings: Settings, n: int) -> dict[str, Any]:
    """A full build of the similarity index over the table, and its size."""
    done = similarity.update(settings, rebuild=True)
    size = folder_bytes(Path(settings.table_root) / "similarity")
    log.info(
        "%d rows: similarity index built in %.1f s (%d rows, %.0f MB)", n, done.seconds, done.manifest.rows, size / 1e6
    )
    return {
        "index_build_s": done.seconds,
        "index_rows": done.manifest.rows,
        "index_bytes": size,
        "index_mb_per_million_rows": size / 1e6 / done.manifest.rows * 1e6,
    }


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure_queries(store, keys: list[str], status_keys: dict[str, list[str]]) -> dict[str, Any]:  # noqa: ANN001
    out: dict[str, Any] = {}
    started = time.perf_counter()
    store.similar(keys[0], k=10)  # the first call loads what the store keeps in memory
    out["similar_first_s"] = time.perf_counter() - started
    times, answers = [], {}
    for key in keys:
        started = time.perf_counter()
        answers[key] = store.similar(key, k=10)
        times.append(time.perf_counter() - started)
    out["similar_p50_ms"] = 1000 * statistics.median(times)
    out["similar_recall_at_10"] = recall_at_10(store, answers)
    by_state: dict[str, list[float]] = {}
    for state, wanted in status_keys.items():
        for key in wanted:
            started = time.perf_counter()
            answer = store.status(key)
            by_state.setdefault(state, []).append(time.perf_counter() - started)
            if answer.state != state:
                raise AssertionError(f"status({key!r}) is {answer.state!r}, expected {state!r}: {answer.detail}")
    out["status_p50_ms"] = 1000 * statistics.median([t for ts in by_state.values() for t in ts])
    out["status_p50_ms_by_state"] = {s: 1000 * statistics.median(ts) for s, ts in by_state.items()}
    log.info(
        "similar: first call %.1f s, p50 %.1f ms (recall@10 %.3f); status p50 %.1f ms %s",
        out["similar_first_s"],
        out["similar_p50_ms"],
        out["similar_recall_at_10"],
        out["status_p50_ms"],
        {s: round(v, 1) for s, v in out["status_p50_ms_by_state"].items()},
    )
    return out


def recall_at_10(store, answers: dict[str, list]) -> float:  # noqa: ANN001
    """Share of each answer within the exact 10 nearest (cosine, over every row's vector in the
    similarity index's PCA version, projected here from the table, not taken from the store), ties
    counted as found."""
    from fruits.pca.model import matrix

    model = store.pca_model(similarity.read_manifest(store.settings).pca_version)
    keys, parts = [], []
    # Every row projected here from its 1280-d features, a batch at a time (memory: the k-d vectors).
    for batch in store.dataset("features").dataset.to_batches(columns=["key", "features"], batch_size=8192):
        if batch.num_rows:
            keys.append(batch.column("key").to_numpy(zero_copy_only=False))
            parts.append(model.project(matrix(batch.column("features"), len(model.mean))))
    keys, vectors = np.concatenate(keys), np.concatenate(parts)
    del parts
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    found = []
    rows = {key: i for i, key in enumerate(keys)}
    for key, neighbours in answers.items():
        row = rows[key]
        distances = 1.0 - unit @ unit[row]
        distances[row] = np.inf
        tenth = np.partition(distances, 9)[9]
        # The neighbours' exact distances: the index's own are from its f16 vectors (about 1e-3 off).
        found.append(sum(distances[rows[n.key]] <= tenth + 1e-5 for n in neighbours[:10]) / 10)
    return float(np.mean(found))


# --- discovery -----------------------------------------------------------------------------


def append_commit(settings: Settings, key: str, etag: str) -> tuple[int, float, float, bool | None]:
    """Append one row to the uploads ledger as a Lambda invocation does (compacting when it is its
    turn); returns the new version, when the commit completed, how long the append took and whether
    a compaction due failed (``None``: none was due). The Lambda logs a failed one and goes on."""
    event = ImageEvent(settings.bucket, key, 1, etag, None, None, "2026-12-03T00:00:00Z", "ObjectCreated:Put", "bench")
    uri, options = lake.delta_uri(settings.uploads_table), lake.storage_options(settings)
    started = time.perf_counter()
    version = ledger.append(uri, [event], options)
    took, committed, failed = time.perf_counter() - started, time.time(), None
    if version % ledger.COMPACT_EVERY == 0:
        try:
            ledger.compact(uri, [event], options)
            failed = False
        except DeltaError as exc:
            log.warning("compaction after version %d failed: %s", version, exc)
            failed = True
    return version, committed, took, failed


def measure_discovery(base: Settings, counts: list[int], images, repeat: int, work: Path) -> dict[str, Any]:  # noqa: ANN001
    """For each count: that many ledger commits processed (cumulatively, each naming one already
    known upload), then new commits, each timed from its commit to the start of the batch that
    reads it. Also ``status`` of an unknown key after that many commits."""
    from fruits.query.store import FeatureStore

    # The ledger on local disk: on the emulator's S3 (one process, whose listings scan the bucket)
    # priming 1,000 commits took over 12 minutes and each trigger 2.5, which measures the emulator.
    # Locally Delta lists the whole _delta_log/ at each trigger, as S3DynamoDBLogStore does on AWS.
    settings = base.with_(bucket="scale-discovery", queue="scale-discovery", table_root=str(work / "discovery"))
    emulator.provision(settings)
    s3 = aws.client("s3", settings)
    known = upload.upload_copies(settings, images[:1], 1, "d-")[0]
    known_etag = s3.head_object(Bucket=settings.bucket, Key=known)["ETag"].strip('"')
    out: dict[str, Any] = {
        "discovery_s": {},
        "discovery_all_s": {},
        "status_unknown_ms": {},
        "prime_s": {},
        "status_unknown_sorted_ms": {},
        "ledger_maintain_s": {},
        "append_ms": {},
        "compactions": {},
        "compactions_failed": {},
    }
    processed = 0
    for count in counts:
        # Started first, the stream reads the primed commits as they come (a stream started on an
        # existing ledger would read it as one starting snapshot, whose offsets say less).
        stream = Stream(settings, work / "discovery.log", FRUITS_MAX_FILES_PER_TRIGGER="2000")
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:  # concurrent appends, as concurrent invocations make them
            appends = list(pool.map(lambda _: append_commit(settings, known, known_etag), range(processed, count)))
        out["prime_s"][str(count)] = time.perf_counter() - started
        out["append_ms"][str(count)] = 1000 * statistics.median(took for _, _, took, _ in appends[-500:])
        out["compactions_failed"][str(count)] = sum(failed is True for *_, failed in appends)
        out["compactions"][str(count)] = sum(failed is not None for *_, failed in appends)
        stream.wait_committed({max(version for version, *_ in appends)}, 3600)  # not a compaction's
        log.info(
            "%d ledger commits processed (%d new, appended in %.0f s, the last 500 appends %.0f ms each "
            "with 8 at once) in %.0f s",
            count,
            count - processed,
            out["prime_s"][str(count)],
            out["append_ms"][str(count)],
            time.perf_counter() - started,
        )
        processed = count
        delays = []
        for i in range(repeat + 1):
            key = upload.upload_copies(settings, images, 1, f"d{count}-{i}-")[0]
            etag = s3.head_object(Bucket=settings.bucket, Key=key)["ETag"].strip('"')
            version, committed_at, *_ = append_commit(settings, key, etag)
            batch = stream.wait_committed({version}, 600)
            if i:
                delays.append(checkpoint_times(settings, "offsets")[batch] - committed_at)
        stream.stop()
        out["discovery_s"][str(count)] = statistics.median(delays)
        out["discovery_all_s"][str(count)] = delays

        def unknown() -> None:  # a new store: it opens the three tables
            FeatureStore(settings).status(f"{settings.reference_prefixes[0]}never/seen.jpg")

        out["status_unknown_ms"][str(count)] = 1000 * timed(unknown)
        # What maintenance leaves (daily on AWS): the day sorted by key_hash, its small files replaced.
        out["ledger_maintain_s"][str(count)] = timed(
            lambda: ledger.maintain(lake.delta_uri(settings.uploads_table), lake.storage_options(settings))
        )
        out["status_unknown_sorted_ms"][str(count)] = 1000 * timed(unknown)
        log.info(
            "after %d ledger commits: discovery %.2f s (median of %d), status of an unknown key %.0f ms "
            "(%.0f ms once maintenance sorted the day in %.1f s)",
            count,
            out["discovery_s"][str(count)],
            len(delays),
            out["status_unknown_ms"][str(count)],
            out["status_unknown_sorted_ms"][str(count)],
            out["ledger_maintain_s"][str(count)],
        )
    return out


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument(
        "--ledger-commits",
        default="1000,20000",
        help='"" skips discovery: the last run\'s figures stand in scale.json, dated in scale-extra.json',
    )
    parser.add_argument("--repeat", type=int, default=5, help="micro-batches, refits (within a budget), discovery")
    parser.add_argument("--restarts", type=int, default=3, help="restarts per size (each starts Spark: ~40 s)")
    parser.add_argument("--cache", default=str(ROOT / "work" / "scale-cache"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the ingest Lambda's per-invocation lines
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for quiet in ("py4j", "botocore", "fruits", "fruits_ingest"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # "connection pool is full" while priming
    sizes, counts = [int(s) for s in args.sizes.split(",")], [int(c) for c in args.ledger_commits.split(",") if c]

    from fruits.featurize.build import load_model
    from fruits.spark.session import get_spark

    began = time.time()
    images = upload.sample_images(SAMPLE_IMAGES, per_class=4)  # 100 photos, 25 classes
    (ROOT / "work").mkdir(exist_ok=True)
    with emulator.LocalAWS() as endpoint, tempfile.TemporaryDirectory(dir=ROOT / "work") as tmp:
        work = Path(tmp)
        compiled = Path(args.cache) / "model.tflite"
        if not compiled.exists():
            compiled.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [FRUITS, "model", "compile", "--weights", str(BUNDLED_WEIGHTS), "--out", str(compiled)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        model_id = load_model(str(compiled)).model_id
        base = Settings(endpoint_url=endpoint, weights=str(compiled), spark_log_level="ERROR")
        spark = get_spark(base)
        results = {str(n): measure_size(spark, base, n, model_id, images, args, work) for n in sizes}
        discovery = measure_discovery(base, counts, images, args.repeat, work) if counts else None
        for name in ("stream", "restart", "discovery"):  # keep the streams' logs for a look afterwards
            for found in work.glob(f"{name}*.log"):
                shutil.copy(found, ROOT / "work" / f"scale-{found.name}")

    keys = (
        "micro_batch_s",
        "driver_peak_rss_mb",
        "restart_s",
        "refit_s",
        "similar_p50_ms",
        "similar_recall_at_10",
        "status_p50_ms",
    )
    extra_json = Path(args.json).with_name(Path(args.json).stem + "-extra.json")
    if discovery is None:  # --ledger-commits "": the last run's discovery figures stand, with their date
        last = json.loads(extra_json.read_text())
        discovery = last["discovery"]
        discovery.setdefault("measured_at", last["measured_at"])
        counts = json.loads(Path(args.json).read_text())["ledger_commits"]
    scale = {
        "rows": sizes,
        **{k: {str(n): round(results[str(n)][k], 4) for n in sizes} for k in keys},
        "ledger_commits": counts,
        "discovery_s": {str(c): round(v, 4) for c, v in discovery["discovery_s"].items()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(scale, indent=1) + "\n")
    load = os.getloadavg()
    extra = {
        "machine": f"{os.cpu_count()} cores",
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "minutes": round((time.time() - began) / 60, 1),
        "load_average_at_end": [round(x, 2) for x in load],
        "discovery": discovery,
        **results,
    }
    extra_json.write_text(json.dumps(extra, indent=1) + "\n")
    print_table(scale, extra)


def print_table(scale: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    sizes, counts = scale["rows"], scale["ledger_commits"]

    def ratio(name: str, keys: list[int]) -> float:
        values = scale[name]
        return values[str(keys[-1])] / max(values[str(keys[0])], 1e-9)

    rss = scale["driver_peak_rss_mb"]
    checks = [
        ("micro_batch_s largest/smallest", ratio("micro_batch_s", sizes), "<= 1.5"),
        ("restart_s largest/smallest", ratio("restart_s", sizes), "<= 1.5"),
        ("refit_s largest/smallest", ratio("refit_s", sizes), "<= 1.5"),
        ("discovery_s largest/smallest", ratio("discovery_s", counts), "<= 1.5"),
        ("driver RSS growth (MB)", rss[str(sizes[-1])] - rss[str(sizes[0])], "< 300"),
        (f"similar p50 at {sizes[-1]:,} (ms)", scale["similar_p50_ms"][str(sizes[-1])], "<= 20"),
        (f"recall@10 at {sizes[-1]:,}", scale["similar_recall_at_10"][str(sizes[-1])], ">= 0.95"),
        ("status p50, worst size (ms)", max(scale["status_p50_ms"].values()), "<= 50"),
    ]
    print(json.dumps(scale, indent=1))
    if extra:
        largest = extra[str(sizes[-1])]
        print(
            f"similarity index at {sizes[-1]:,} rows: built in {largest['index_build_s']:.0f} s, "
            f"{largest['index_mb_per_million_rows']:.0f} MB per million rows; an update of "
            f"{largest['index_update_rows']:,} rows {largest['index_update_s']:.1f} s, "
            f"{largest['index_segments']} segments"
        )
    for name, value, target in checks:
        op, bound = target.split()
        ok = {"<=": value <= float(bound), "<": value < float(bound), ">=": value >= float(bound)}[op]
        print(f"{name:40s} {value:10.3f}  target {target:8s} {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
