"""Leases: one stream, one refit at a time per table set, across processes and machines.

A lease is a small JSON object in the table root (``<table root>/_leases/<name>.json``): who holds
it and until when. It is taken and renewed with compare-and-swap writes, so two contenders never
both win:

- on S3, conditional writes (``If-None-Match: *`` to take a free lease, ``If-Match: <etag>`` to
  renew one or take over an expired one, and to release it);
- on a local path (the embedded default), the same checks under an exclusive ``flock``.

A holder renews in the background (every third of ``ttl``); a crashed holder's lease expires after
``ttl`` seconds, so a restart is never blocked for longer. A holder whose renewal was refused (it
was paused and someone took over), or that has not renewed for 90 % of ``ttl`` (S3 unreachable or
throttled: others may take over soon), has lost the lease: ``check`` then raises. The stream checks
right before each table write, the refit before each of its writes. A lease is not a fence: a
write that passed its check a moment before the lease ran out still lands.

Example::

    with Lease(settings, "stream", ttl=120) as lease:      # LeaseHeld if another process has it
        ...
        lease.check()                                      # LeaseLost if it was taken over

Limitations: expiry compares the holder's and the contender's clocks (NTP keeps them within a
second; the ttl is minutes). The table root must be S3 or a local path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from botocore.exceptions import ClientError

from ..config import Settings
from . import aws, lake

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another process holds the lease."""


class LeaseLost(RuntimeError):
    """This process held the lease and no longer does."""


def _now() -> float:
    return time.time()


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


# A holder stops counting on its lease this far into the ttl without a renewal: a margin for the
# clocks and the time a contender takes to notice the expiry.
TRUSTED_SHARE = 0.9


class Lease:
    def __init__(self, settings: Settings, name: str, ttl: float = 120.0) -> None:
        self.settings = settings
        self.name = name
        self.ttl = ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        root = settings.table_root.rstrip("/")
        # Resolved as the tables' paths are: a file:// root is that folder, not one below the working directory.
        self.uri = f"{root if aws.is_s3(root) else lake.path_in(root)}/_leases/{name}.json"
        self._etag: str | None = None  # S3: the version we wrote; local: the content we wrote
        self._lost: str | None = None
        self._valid_until = 0.0  # monotonic time after which this holder no longer counts on the lease
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._s3 = aws.client("s3", settings) if aws.is_s3(self.uri) else None

    # --- storage: read the current holder, write if unchanged -------------------------------------

    def _body(self) -> bytes:
        now = _now()
        return json.dumps(
            {
                "owner": self.owner,
                "acquired": _stamp(now),
                "expires": now + self.ttl,
                "expires_at": _stamp(now + self.ttl),
            }
        ).encode()

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The current holder and the token a conditional write must name (None, None when free)."""
        if self._s3 is not None:
            bucket, key = aws.split_s3_uri(self.uri)
            try:
                got = self._s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if aws.error_code(exc) in ("NoSuchKey", "404"):
                    return None, None
                raise
            return json.loads(got["Body"].read()), got["ETag"]
        path = Path(self.uri)
        if not path.exists():
            return None, None
        text = path.read_text()
        return json.loads(text), text

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease and until when (``owner``, ``acquired``, ``expires_at``, ``expired``),
        or None when it is free. A read: it takes nothing."""
        found, _ = self._read()
        if found is None:
            return None
        return {
            "owner": found.get("owner"),
            "acquired": found.get("acquired"),
            "expires_at": found.get("expires_at"),
            "expired": float(found.get("expires", 0)) < _now(),
        }

    def _write_if(self, expected: str | None, body: bytes | None) -> str | None:
        """Write ``body`` (None: delete) if the lease is still ``expected`` (None: absent); the new
        token, or raise ``LeaseHeld`` when someone else wrote in between."""
        if self._s3 is not None:
            bucket, key = aws.split_s3_uri(self.uri)
            condition = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
            try:
                if body is None:
                    self._s3.delete_object(Bucket=bucket, Key=key, **condition)
                    return None
                return self._s3.put_object(Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
            except ClientError as exc:
                if aws.error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    raise LeaseHeld(f"the lease {self.uri} changed under us") from exc
                raise
        path = Path(self.uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = path.read_text() if path.exists() else None
            if current != expected:
                raise LeaseHeld(f"the lease {self.uri} changed under us")
            if body is None:
                path.unlink()
                return None
            tmp = path.with_suffix(f".{self.owner.replace(':', '-')}.tmp")
            tmp.write_bytes(body)
            tmp.replace(path)
            return body.decode()

    # --- the lease ------------------------------------------------------------------------------

    def acquire(self, wait: float = 0.0) -> Lease:
        """Take the lease, waiting up to ``wait`` seconds for its holder to release it or expire;
        ``LeaseHeld`` (naming the holder and until when) if that does not happen."""
        deadline = _now() + wait
        while True:
            holder, token = self._read()
            if holder is None or holder["expires"] < _now():
                if holder is not None:
                    log.warning(
                        "taking over the expired %s lease of %s (expired %s)",
                        self.name,
                        holder["owner"],
                        holder["expires_at"],
                    )
                with contextlib.suppress(LeaseHeld):  # another contender won: look again
                    self._write(token)
                    self._lost = None
                    self._start_heartbeat()
                    return self
            elif _now() >= deadline:
                raise LeaseHeld(
                    f"another {self.name} holds the tables under {self.settings.table_root}: {holder['owner']}, "
                    f"until {holder['expires_at']} unless it renews. Stop it first, or wait for it (--wait); a "
                    f"crashed one's lease expires within {self.ttl:.0f} s"
                )
            time.sleep(min(2.0, max(0.1, deadline - _now())))

    def _write(self, expected: str | None) -> None:
        """Write our lease over ``expected``; trusted for ``TRUSTED_SHARE`` of the ttl from the request."""
        started = time.monotonic()
        self._etag = self._write_if(expected, self._body())
        self._valid_until = started + TRUSTED_SHARE * self.ttl

    def renew(self) -> None:
        try:
            self._over_ours(self._write)
        except LeaseHeld as exc:
            self._lost = f"the {self.name} lease was taken over ({exc})"
            raise LeaseLost(self._lost) from exc

    def _over_ours(self, write: Callable[[str | None], object]) -> None:
        """``write`` over the version we recorded; if that changed, over the current one as long as
        it still names us (our own earlier write landed and its answer was lost: a timeout, a
        retried request). ``LeaseHeld`` when someone else holds it."""
        try:
            write(self._etag)
        except LeaseHeld:
            holder, token = self._read()
            if holder is None or holder.get("owner") != self.owner:
                raise
            write(token)

    def check(self) -> None:
        """Raise ``LeaseLost`` if this process no longer holds the lease."""
        if not self._lost and time.monotonic() > self._valid_until:
            self._lost = (
                f"the {self.name} lease expired without a renewal for {TRUSTED_SHARE * self.ttl:.0f} s "
                "(S3 unreachable or throttled?): another process may hold it now"
            )
        if self._lost:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._etag is not None and not self._lost:
            try:
                self._over_ours(lambda token: self._write_if(token, None))
            except LeaseHeld:
                pass  # taken over meanwhile: not ours to delete
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself; never mask the exit code
                log.warning("could not release the %s lease (%s); it expires within %.0f s", self.name, exc, self.ttl)
        self._etag = None

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.renew()
                except LeaseLost:
                    pass  # check() below says so
                except Exception as exc:  # noqa: BLE001 - a transient error: the next beat retries
                    log.warning("could not renew the %s lease: %s", self.name, exc)
                try:
                    self.check()
                except LeaseLost as exc:
                    log.error("%s", exc)
                    return

        self._stop.clear()
        self._heartbeat = threading.Thread(target=beat, name=f"lease-{self.name}", daemon=True)
        self._heartbeat.start()

    def __enter__(self) -> Lease:
        return self if self._etag is not None else self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
