"""The ``fruits`` command: the demo, and each stage on its own against the emulator or AWS.

Exit codes: 0 done (healthy, found); 1 failed (no table yet, an unknown key or version, a problem
``fruits health`` found, any other error: one line, its traceback with ``-v``); 2 a usage mistake
(a flag, a ``FRUITS_*`` setting or a SQL statement refused, before anything ran); 3 ``fruits
status`` of a key the pipeline never saw; 130 stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import version
from .config import VACUUM_RETAIN_HOURS, Settings, SettingsError
from .local.paths import BUNDLED_WEIGHTS, DEMO_WORK, SAMPLE_IMAGES
from .progress import progress_for
from .query.result import QueryError

# Every command imports what it needs when it runs: `fruits --help` and `fruits status` load no
# Spark and no emulator (tests/test_import_boundaries.py).


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        endpoint_url=args.endpoint_url,
        region=args.region,
        bucket=args.bucket,
        table_root=args.table_root,
        weights=getattr(args, "weights", None),
        queue=args.queue,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .local import demo

    return demo.run(
        images_dir=Path(args.images), work_dir=Path(args.work), per_class=args.per_class, weights=args.weights
    )


def cmd_emulator(args: argparse.Namespace) -> int:
    from .local import emulator

    with emulator.LocalAWS(port=args.port) as endpoint:
        emulator.provision(_settings(args).with_(endpoint_url=endpoint))
        print(
            f"local AWS emulator on {endpoint}, provisioned. In another shell:\n"
            f"  export FRUITS_ENDPOINT_URL={endpoint}\n"
            "Ctrl-C stops it (its contents are in memory only).",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from .local import emulator

    emulator.provision(_settings(args))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from .local import upload

    settings = _settings(args)
    images = upload.sample_images(Path(args.folder), args.per_class)
    with progress_for(settings, "upload", len(images), "image") as bar:
        keys = upload.upload_images(settings, images, on_progress=lambda done, _: bar.advance_to(done))
    print(f"uploaded {len(keys)} images")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from .local import ingest

    settings = _settings(args)
    with progress_for(settings, "ingest", ingest.backlog(settings), "message") as bar:
        stats = ingest.drain(
            settings, visibility_timeout=args.visibility_timeout, on_progress=lambda done: bar.advance_to(done.deleted)
        )
    print(f"{stats.invocations} invocations, {stats.deleted} acknowledged, {stats.failed} failed deliveries")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from .spark.session import get_spark
    from .stream import job

    settings = _settings(args)
    catch_up = args.trigger == "availableNow"
    trigger: dict[str, Any] = {"availableNow": True} if catch_up else {"processingTime": args.trigger}
    # One stream per table set: a second one refuses (or waits, --wait) instead of appending twice.
    lease = _take_lease(settings, "stream", args.wait, "not started")
    if lease is None:
        return 1
    with lease:
        spark = get_spark(settings)
        if not catch_up:  # a service: its per-micro-batch lines are its progress
            return _until_done(job.start(spark, settings, trigger=trigger, guard=lease.check))
        from .health import pending_uploads

        waiting, read = pending_uploads(settings), job.RowsRead()  # counted before the stream reads any
        with progress_for(settings, "stream", waiting, "upload", spark) as bar:
            handle = job.start(spark, settings, trigger=trigger, guard=lease.check)
            return _until_done(handle, lambda: bar.advance_to(read(handle)), say=bar.write)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _until_done(handle: Any, on_tick: Callable[[], None] | None = None, say: Callable[[str], None] = _say) -> int:
    """Wait for the stream; the exit code tells the truth to a supervisor: 0 when it finished, 1
    when it failed, 130 when stopped by Ctrl-C, 143 by SIGTERM (a cancelled job run), after a clean
    stop that releases the lease, with no traceback.

    The signals only set a flag: pyspark's own SIGINT handler calls into the JVM from inside the
    call it interrupted and breaks the connection (the 'reentrant call' traceback)."""
    import signal

    from pyspark.errors import StreamingQueryException

    interrupted: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: interrupted.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while True:
            finished = handle.awaitTermination(1)
            if on_tick is not None:
                on_tick()
            if finished:
                break
            if interrupted:
                handle.stop()
                say("fruits: stream stopped")
                return 128 + interrupted[0]
    except StreamingQueryException as exc:
        say(f"fruits: the stream failed: {str(exc).splitlines()[0]}")
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failure = handle.exception()
    if failure is not None:
        say(f"fruits: the stream failed: {failure}")
        return 1
    return 0


def _take_lease(settings: Settings, name: str, wait: float, refused: str) -> Any:
    """The ``name`` lease (``fruits.io.lease``), or None after saying who holds it."""
    from .io.lease import Lease, LeaseHeld

    lease = Lease(settings, name, ttl=settings.lease_seconds)
    try:
        return lease.acquire(wait=wait)
    except LeaseHeld as exc:
        print(f"fruits: {refused}: {exc}", file=sys.stderr)
        return None


def cmd_pca_refit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # One refit at a time: a scheduled run that finds another still running skips (exit 0).
    lease = _take_lease(settings, "refit", args.wait, "refit skipped")
    if lease is None:
        return 0
    with lease:
        return _refit(args, settings, lease.check)


def _refit(args: argparse.Namespace, settings: Settings, guard: Callable[[], None]) -> int:
    from .pca import refit
    from .spark.session import get_spark

    spark = get_spark(settings)
    fit_args: dict[str, Any] = {
        "threshold": args.threshold,
        "k": args.k,
        "full": args.full,
        "guard": guard,
        "reject_quantile": args.reject_quantile,
    }
    if args.every is None and args.min_new_rows is None:
        with progress_for(settings, "refit", len(refit.STEPS), "step", spark) as bar:
            fit = refit.refit(spark, settings, on_step=bar.stage, **fit_args)
        _print_refit(fit)
        return 0
    print(
        f"refitting every {args.every} min (if rows arrived) or after {args.min_new_rows} new rows; Ctrl-C stops",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the loop between fits
        refit.run_periodically(
            spark,
            settings,
            every_minutes=args.every,
            min_new_rows=args.min_new_rows,
            poll_seconds=args.poll,
            on_fit=_print_refit,
            **fit_args,
        )
    return 0


def _quantile(value: str) -> float:
    from .classifier import check_quantile

    try:
        check_quantile(float(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return float(value)


def _print_refit(fit: Any) -> None:
    m = fit.model
    print(
        f"PCA version {m.version} ({fit.mode}, {fit.rows_read} rows read, {fit.solver}): k={m.k}, "
        f"explained variance {m.explained_variance_ratio[: m.k].sum():.4f}, rows {m.row_count}, "
        f"table version {m.source_table_version}; " + ", ".join(f"{name} {s:.1f}s" for name, s in fit.seconds.items()),
        flush=True,
    )
    for uri in fit.plots:
        print(f"  plot: {uri}", flush=True)
    if (index := fit.index) is not None and index.manifest is not None:
        m = index.manifest
        print(
            f"  similarity index: {index.mode} ({index.reason}), {m.rows} rows in {len(m.segments)} segment(s), "
            f"PCA version {m.pca_version}, features version {m.features_version}, {index.seconds:.1f}s",
            flush=True,
        )
    if (done := fit.classifier) is not None:
        c = done.classifier
        found = (
            f": version {done.version}"
            if c is None and done.version is not None
            else ""
            if c is None
            else (
                f": version {c.version}, {len(c.labels)} classes, {len(c.prototype_hashes)} prototypes of "
                f"{c.reference_rows} reference rows, threshold {c.threshold:.3f}, "
                f"held-out top-1 {c.held_out_top1:.3f}, rejected {c.held_out_rejected:.3f}"
            )
        )
        print(f"  classifier: {done.mode} ({done.reason}){found}, {done.seconds:.1f}s", flush=True)


def cmd_pca_list(args: argparse.Namespace) -> int:
    from .pca import registry

    return _print_versions(
        registry.versions(_settings(args)),
        args.json,
        "no PCA version yet: run `fruits pca refit` once the table has rows",
    )


def cmd_classifier_list(args: argparse.Namespace) -> int:
    from .classifier import registry

    settings = _settings(args)
    return _print_versions(
        registry.versions(settings),
        args.json,
        "no classifier yet: `fruits pca refit` fits one once the table has reference rows "
        f"(uploads under {', '.join(settings.reference_prefixes)})",
    )


def _print_versions(versions: list[dict[str, Any]], as_json: bool, none_yet: str) -> int:
    from .query.result import QueryResult, format_table

    if as_json:
        print(json.dumps(versions, default=str))
    elif not versions:
        print(none_yet)
    else:
        print(format_table(QueryResult(list(versions[0]), [tuple(v.values()) for v in versions], {})))
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    from .spark.maintenance import maintain, steps
    from .spark.session import get_spark

    settings = _settings(args)
    # The refit's tables have one writer: they are vacuumed while no refit runs (the ledger regardless).
    lease = _take_lease(settings, "refit", args.wait, "the PCA tables are not vacuumed this time")
    with lease or contextlib.nullcontext():
        spark = get_spark(settings)
        with progress_for(settings, "maintain", len(steps(settings, lease is not None)), "step", spark) as bar:
            report = maintain(
                spark, settings, retain_hours=args.retain_hours, pca_tables=lease is not None, on_step=bar.stage
            )
    for location, deleted in report.vacuumed.items():
        print(f"VACUUM {location}: {deleted} files deleted ({args.retain_hours:g} h retained)")
    if (done := report.ledger) is not None:
        days = ", ".join(d.isoformat() for d in done.days) or "none needed"
        print(
            f"uploads ledger {settings.uploads_table}: earlier days sorted by key: {days}; {done.files_removed} "
            f"files rewritten into {done.files_added} (today's compacted too); {done.vacuumed} replaced files deleted"
        )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from .query.result import format_table

    settings = _settings(args)
    if args.engine == "duckdb":
        from .query.store import FeatureStore

        result = FeatureStore(settings).sql(args.sql, as_of_version=args.as_of_version, pca_version=args.pca_version)
    else:
        from .query.sql import sql
        from .spark.session import get_spark

        result = sql(
            get_spark(settings), settings, args.sql, as_of_version=args.as_of_version, pca_version=args.pca_version
        )
    if args.json:
        print(
            json.dumps(
                {"versions": result.versions, "rows": [dict(zip(result.columns, r)) for r in result.rows]}, default=str
            )
        )
    else:
        print(format_table(result))
    return 0


def _target(value: str) -> str | Path:
    """A local image file if one exists at ``value``, else an upload key."""
    return Path(value) if Path(value).is_file() else value


def _neighbour_table(neighbours: list[Any], versions: dict[str, int]) -> str:
    from .query.result import QueryResult, format_table

    rows = [(i, n.key, n.label, round(n.distance, 4)) for i, n in enumerate(neighbours, 1)]
    return format_table(QueryResult(["rank", "key", "label", "distance"], rows, versions), max_width=80)


def cmd_similar(args: argparse.Namespace) -> int:
    from .query.result import to_json
    from .query.store import FeatureStore

    store = FeatureStore(_settings(args))
    neighbours = store.similar(_target(args.target), k=args.k)
    if args.json:
        print(to_json(neighbours))
    else:
        print(_neighbour_table(neighbours, {"pca_models": store.pca_model().version}))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from .query.result import to_json
    from .query.store import FeatureStore

    s = FeatureStore(_settings(args)).classify(
        _target(args.target), k=args.k, classifier_version=args.classifier_version
    )
    if args.json:
        print(to_json(s))
        return 0
    candidates = ", ".join(f"{c.label} {c.similarity:.3f}" for c in s.candidates)
    answer = (
        "unknown: resembles no reference photo enough" if s.unknown else f"{s.label} (confidence {s.confidence:.0%})"
    )
    print(
        f"{answer}; similarity {s.similarity:.3f}, threshold {s.threshold:.3f}; classifier version "
        f"{s.classifier_version}\ncandidates: {candidates}"
    )
    if s.neighbours:
        print(f"nearest labelled rows:\n{_neighbour_table(s.neighbours, {'pca_models': s.pca_version})}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from .health import Thresholds, check

    report = check(_settings(args), Thresholds(stale_after_s=args.stale_after, max_dead_letters=args.max_dead_letters))
    if args.json:
        print(report.to_json())
        return 1 if report.problems else 0
    print(_health_screen(report))
    return 1 if report.problems else 0


def _health_screen(report: Any) -> str:
    def count(value: int | None, what: str) -> str:
        return f"? {what}" if value is None else f"{value:,} {what}"

    def age(seconds: float | None) -> str:
        if seconds is None:
            return "never"
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size:
                return f"{seconds / size:.1f} {unit} ago"
        return f"{seconds:.0f} s ago"

    def reasons(window: str) -> str:
        found = report.quarantined.get(window)
        return "?" if found is None else (", ".join(f"{r} {n}" for r, n in sorted(found.items())) or "none")

    versions = report.versions
    pca, classifier, index = versions.get("pca"), versions.get("classifier"), versions.get("index")
    lines = [
        f"fruits health at {report.checked_at}",
        f"  queue        {count(report.queue_depth, 'waiting')}, {count(report.dead_letters, 'dead letters')}",
        f"  ledger       {count(report.pending_uploads, 'upload(s) not yet read by the stream')}"
        + ("" if report.stream_offset is None else f" (it reads version {report.stream_offset} next)"),
        f"  stream       newest commit {age(report.newest_commit_age_s)}; rows written: "
        f"{report.rows.get('last_hour', '?')} last hour, {report.rows.get('last_day', '?')} last day",
        f"  quarantined  last hour: {reasons('last_hour')}; last day: {reasons('last_day')}",
        "  latency      upload to row, last hour: "
        + (
            f"p50 {report.latency_s['p50']:g} s, p95 {report.latency_s['p95']:g} s ({report.latency_s['rows']} rows)"
            if report.latency_s
            else "no rows"
        ),
        "  versions     "
        + "; ".join(
            [
                f"PCA v{pca['version']} ({age(pca['age_s'])})" if pca else "no PCA yet",
                f"classifier v{classifier['version']} ({age(classifier['age_s'])})"
                if classifier
                else "no classifier yet",
                f"index in PCA v{index['pca_version']}, {index['rows']:,} rows" if index else "no index yet",
            ]
        ),
        "  leases       "
        + "; ".join(
            f"{name}: "
            + (
                "free"
                if held is None
                else f"{held['owner']} until {held['expires_at']}" + (" (expired)" if held["expired"] else "")
            )
            for name, held in report.leases.items()
        ),
    ]
    lines += [f"PROBLEM: {p}" for p in report.problems] or ["OK"]
    lines += [f"  (could not read {n})" for n in report.notes]
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app
    from .query.store import FeatureStore

    settings = _settings(args)
    if args.max_body_bytes is not None:
        settings = settings.with_(api_max_body_bytes=args.max_body_bytes)
    print(f"fruits serve: http://{args.host}:{args.port} (the API's page: /docs; Ctrl-C stops it)", flush=True)
    # Access lines with -v only: under load they would be most of the log.
    uvicorn.run(
        create_app(FeatureStore(settings)),
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .query.result import to_json
    from .query.store import FeatureStore

    status = FeatureStore(_settings(args)).status(args.key)
    code = 3 if status.state == "unknown" else 0  # the same with --json: a script reads either
    if args.json:
        print(to_json(status))
        return code
    print(f"{status.key}: {status.state} ({status.detail})")
    for row in status.rows:
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return code


def cmd_model_compile(args: argparse.Namespace) -> int:
    from .featurize.build import compile_model, load_weights
    from .featurize.model import COMPILED_SUFFIX

    spec = args.weights or Settings.from_env().weights
    if spec.endswith(COMPILED_SUFFIX):
        print(f"fruits: {spec} is already a compiled model; give --weights imagenet or a weights file", file=sys.stderr)
        return 2
    compiled = compile_model(load_weights(spec))
    path = compiled.save(Path(args.out))
    print(
        f"{compiled.model_id}: {path} ({len(compiled.data) / 1e6:.1f} MB) and {path.with_suffix('.json').name}; "
        f"FRUITS_WEIGHTS={path} runs the pipeline on it without TensorFlow"
    )
    return 0


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high``, checked before anything starts (the JVM)."""

    def parse(value: str) -> int:
        if not value.isascii() or not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, not {value!r}")
        return int(value)

    return parse


def _number(accepts: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: a number ``accepts`` takes, checked before anything starts."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not accepts(number):
            raise argparse.ArgumentTypeError(f"expected {expected}, not {value!r}")
        return number

    return parse


_seconds = _number(lambda x: 0 <= x < math.inf, "a number of 0 or more")
_fraction = _number(lambda x: 0 < x <= 1, "a share above 0 and at most 1 (0.95 for 95 %)")
_positive = _whole(1)
# Delta refuses a shorter VACUUM retention (its retentionDurationCheck): a reader of last week's
# versions, and the incremental PCA statistics, need those files. Refused here, before the JVM.
_retention = _number(
    lambda x: VACUUM_RETAIN_HOURS <= x < math.inf,
    f"at least {VACUUM_RETAIN_HOURS} hours (Delta's safety check: readers of the last "
    f"{VACUUM_RETAIN_HOURS // 24} days' versions need their files)",
)


def cmd_replay_dlq(args: argparse.Namespace) -> int:
    from .io import dead_letters

    replayed = dead_letters.replay(_settings(args), limit=args.max, dry_run=args.dry_run)
    verb = "would move" if args.dry_run else "moved"
    for message in replayed:
        done = (
            f"left {message.message_id} in the dead-letter queue ({message.error})"
            if message.error
            else f"{verb} {message.message_id}"
        )
        print(f"{done} (received {message.receive_count}x): {message.summary}")
    left = sum(1 for m in replayed if m.error)
    print(
        f"{verb} {len(replayed) - left} message(s) from the dead-letter queue back to the event queue"
        + (f"; {left} left in place (run again to retry them)" if left else ""),
        flush=True,
    )
    return 1 if left else 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from .spark import bundle

    out = Path(args.out)
    bundle.write(out, project=Path(args.project))
    print(
        f"{out / bundle.ENTRY_POINT} and {out / bundle.ENVIRONMENT}; the model: fruits model compile "
        f"--out {out / bundle.MODEL_DIR / bundle.MODEL_FILE}"
    )
    return 0


def cmd_deploy_artifacts(args: argparse.Namespace) -> int:
    from .spark import bundle

    for uri in bundle.upload(_settings(args), Path(args.source)):
        print(uri)
    return 0


def cmd_jars(args: argparse.Namespace) -> int:
    from .spark import jars

    jars.main(Settings.from_env().jars_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint-url", help="S3/SQS endpoint (the emulator); default FRUITS_ENDPOINT_URL or AWS")
    common.add_argument("--region", help="default FRUITS_REGION or eu-west-3")
    common.add_argument("--bucket", help="default FRUITS_BUCKET or fruits-images")
    common.add_argument("--queue", help="default FRUITS_QUEUE or fruits-uploads")
    common.add_argument("--table-root", help="Delta tables root (s3a://... or a path); default s3a://<bucket>/tables")
    # -v after the subcommand too; SUPPRESS keeps a -v given before it (argparse would reset it).
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log at INFO, and show the traceback of an error",
    )

    parser = argparse.ArgumentParser(prog="fruits", description=__doc__)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log at INFO (the Lambda's JSON logs too), and show the traceback of an error",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole pipeline locally on the sample images")
    p.add_argument("--images", default=str(SAMPLE_IMAGES), help="a folder of <Class Name>/<file> photos")
    p.add_argument("--work", default=str(DEMO_WORK), help="where the tables go (wiped first)")
    p.add_argument("--per-class", type=_positive, help="upload at most N images per class")
    p.add_argument("--weights", default=str(BUNDLED_WEIGHTS), help="MobileNetV2 weights or a compiled .tflite")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("emulator", parents=[common], help="run a provisioned local AWS emulator until Ctrl-C")
    p.add_argument("--port", type=_whole(0, 65535), default=5000)
    p.set_defaults(func=cmd_emulator)

    sub.add_parser("provision", parents=[common], help="create bucket, queues, notification").set_defaults(
        func=cmd_provision
    )

    p = sub.add_parser("upload", parents=[common], help="upload <folder>/<Class Name>/<file> images")
    p.add_argument("folder")
    p.add_argument("--per-class", type=_positive)
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("ingest", parents=[common], help="run the ingest Lambda on the queue until it is empty")
    p.add_argument("--visibility-timeout", type=_whole(0, 43200), default=30)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("stream", parents=[common], help="run the featurizer stream")
    p.add_argument("--trigger", default="availableNow", help="availableNow, or a processing-time interval")
    p.add_argument("--weights", help="imagenet or a weights file; default FRUITS_WEIGHTS or imagenet")
    p.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="if another stream holds the tables, wait this long for it instead of refusing",
    )
    p.set_defaults(func=cmd_stream)

    pca_parser = sub.add_parser("pca", help="PCA over the features table")
    pca_sub = pca_parser.add_subparsers(dest="pca_command", required=True)
    p = pca_sub.add_parser("refit", parents=[common], help="fit a new PCA version from the rows added since the last")
    p.add_argument("--threshold", type=_fraction, default=0.95, help="explained-variance threshold choosing k")
    p.add_argument("--k", type=_positive, help="fixed number of components instead of the threshold")
    p.add_argument("--full", action="store_true", help="recompute the statistics from every row")
    p.add_argument(
        "--reject-quantile",
        type=_quantile,
        metavar="Q",
        help="the classifier answers 'unknown' to this share of held-out reference photos (default: as "
        "the newest classifier, first 0.02); a new value fits a new classifier version",
    )
    p.add_argument("--every", type=_seconds, metavar="MINUTES", help="keep running: refit every N minutes")
    p.add_argument("--min-new-rows", type=_positive, metavar="M", help="keep running: refit after M new rows")
    p.add_argument("--poll", type=_seconds, default=30.0, help="seconds between checks for new rows")
    p.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="if another refit is running, wait this long for it instead of skipping",
    )
    p.set_defaults(func=cmd_pca_refit)
    p = pca_sub.add_parser("list", parents=[common], help="the PCA versions kept: k, variance, rows, when")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pca_list)

    p = sub.add_parser(
        "maintain",
        parents=[common],
        help="delete the PCA tables' unneeded files (VACUUM), compact and sort the uploads ledger "
        "(the stream maintains its own tables)",
    )
    p.add_argument(
        "--retain-hours",
        type=_retention,
        default=VACUUM_RETAIN_HOURS,
        help=f"VACUUM of the PCA tables keeps files no version needs for this long, {VACUUM_RETAIN_HOURS} "
        "or more (default); the ledger keeps its own (30 days)",
    )
    p.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="if a refit is running, wait this long for it instead of leaving the PCA tables for the next run",
    )
    p.set_defaults(func=cmd_maintain)

    p = sub.add_parser(
        "query", parents=[common], help="SQL over the tables features, quarantine, pca_models and the view features_pca"
    )
    p.add_argument("sql")
    p.add_argument(
        "--engine",
        choices=("spark", "duckdb"),
        default="spark",
        help="spark: Spark SQL (default); duckdb: JVM-free, delta-rs + DuckDB, for interactive use",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--as-of-version", type=_whole(0), help="read the features table at this Delta version")
    p.add_argument(
        "--pca-version", type=_positive, help="the PCA version features_pca projects onto (default: the newest)"
    )
    p.set_defaults(func=cmd_query)

    lookup = argparse.ArgumentParser(add_help=False, parents=[common])
    lookup.add_argument("target", help="an upload key (uploads/<Label>/<file>, or s3://bucket/key) or a local image")
    lookup.add_argument("-k", type=_whole(1, 100), default=10, help="number of neighbours")
    lookup.add_argument("--weights", help="for a local image: the weights the table was featurized with")
    lookup.add_argument("--json", action="store_true")
    sub.add_parser(
        "similar", parents=[lookup], help="nearest images (cosine, the similarity index's PCA space)"
    ).set_defaults(func=cmd_similar)
    p = sub.add_parser(
        "classify",
        parents=[lookup],
        help="what fruit is it: the classifier's answer (or unknown), candidates, nearest labelled rows",
    )
    p.add_argument(
        "--classifier-version", type=_positive, help="answer with this classifier version (default: the newest)"
    )
    p.set_defaults(func=cmd_classify)
    classifier_parser = sub.add_parser("classifier", help="the label classifier the refit fits")
    classifier_sub = classifier_parser.add_subparsers(dest="classifier_command", required=True)
    p = classifier_sub.add_parser(
        "list",
        parents=[common],
        help="the classifier versions kept: classes, reference rows, threshold, held-out metrics",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classifier_list)

    p = sub.add_parser(
        "health",
        parents=[common],
        help="the pipeline at a glance: queues, waiting uploads, the stream, quarantines, latency, "
        "versions, leases; exits 1 on a problem",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--stale-after",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="a problem when uploads wait and the stream has committed nothing for this long (default 600)",
    )
    p.add_argument(
        "--max-dead-letters",
        type=_whole(0),
        default=0,
        metavar="N",
        help="a problem when the dead-letter queue holds more than this (default 0)",
    )
    p.set_defaults(func=cmd_health)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="the HTTP API for the app's backend: classify a photo, an upload's status, similar images",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=_whole(0, 65535), default=8080, help="port to listen on (default 8080)")
    p.add_argument("--weights", help="the weights (or compiled .tflite) the table was featurized with")
    p.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=None,
        help="refuse larger photos with 413 (default FRUITS_API_MAX_BODY_BYTES, 20 MiB)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", parents=[common], help="processed, quarantined, pending or unknown")
    p.add_argument("key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    model_parser = sub.add_parser("model", help="the MobileNetV2 model as the jobs run it")
    model_sub = model_parser.add_subparsers(dest="model_command", required=True)
    p = model_sub.add_parser("compile", help="compile weights to a LiteRT artifact the jobs load without TensorFlow")
    p.add_argument("--weights", help="imagenet or a weights file; default FRUITS_WEIGHTS or imagenet")
    p.add_argument("--out", required=True, help="the artifact to write, <name>.tflite (its .json goes beside it)")
    p.set_defaults(func=cmd_model_compile)

    p = sub.add_parser(
        "replay-dlq",
        parents=[common],
        help="move dead-lettered upload events back to the event queue, once their cause is fixed",
    )
    p.add_argument("--max", type=_positive, default=None, help="move at most this many (default: all)")
    p.add_argument("--dry-run", action="store_true", help="list them only; move nothing")
    p.set_defaults(func=cmd_replay_dlq)
    p = sub.add_parser("bundle", help="write the jobs' entry point and packed Python environment (make emr-artifacts)")
    p.add_argument("--out", default="build/emr", help="folder to write (default: build/emr)")
    p.add_argument("--project", default=".", help="the project's root (default: .)")
    p.set_defaults(func=cmd_bundle)
    p = sub.add_parser(
        "deploy-artifacts",
        parents=[common],
        help="upload make emr-artifacts' bundle to s3://<FRUITS_BUCKET>/artifacts/, where the jobs run from",
    )
    p.add_argument("--from", dest="source", default="build/emr", help="the bundle's folder (default: build/emr)")
    p.set_defaults(func=cmd_deploy_artifacts)
    sub.add_parser("jars", help="fetch the Delta and S3A jars once (make does this)").set_defaults(func=cmd_jars)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    verbose = args.verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "false" if verbose else "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        code = args.func(args)
    except SettingsError as exc:  # a bad FRUITS_* value or option: one line that names it
        print(f"fruits: {exc}", file=sys.stderr)
        code = 2
    except QueryError as exc:  # a statement that is not a read, or ran past its bounds
        print(f"fruits: {exc}", file=sys.stderr)
        code = 2
    except (FileNotFoundError, LookupError) as exc:  # no table yet, no PCA model yet, an unknown key
        print(f"fruits: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("fruits: stopped (Ctrl-C)", file=sys.stderr)
        code = 130
    except Exception as exc:  # anything else: one line, the traceback with -v
        if verbose:
            raise
        text = str(exc).strip().splitlines()
        first = f"{type(exc).__name__}: {text[0] if text else 'no message'}"
        print(f"fruits: {first}{_what_to_do(exc)} (-v shows the traceback)", file=sys.stderr)
        code = 1
    sys.exit(code)


# A set-up mistake rather than a bug: what to do about it, after the AWS SDK's own words.
AWS_HINTS = {
    "NoCredentialsError": "set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) for AWS, or "
    "FRUITS_ENDPOINT_URL (--endpoint-url) for the local emulator",
    "EndpointConnectionError": "is the emulator running (fruits emulator), and FRUITS_ENDPOINT_URL (--endpoint-url) "
    "its address?",
}


def _what_to_do(exc: Exception) -> str:
    hint = AWS_HINTS.get(type(exc).__name__) if type(exc).__module__.startswith("botocore") else None
    return f"; {hint}" if hint else ""
