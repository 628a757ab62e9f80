"""The poison-pill rule: an upload that makes its micro-batch fail is quarantined, the batch goes on.

Every failure an upload can cause on purpose is classified where it happens (``fetch`` and
``decode`` raise ``ImageError`` with a reason). What no classification catches (a native decoder
that crashes its Python worker, a worker the OS kills for memory) fails the Spark tasks of the
micro-batch, then the micro-batch, and the stream would replay the same offsets forever. So when
featurizing a micro-batch fails, the stream isolates the culprits instead:

1. a failure that is not the images' fault re-raises at once (``systemic``: S3 unreachable or
   throttling past the fetch's patience, a model that puts out NaN); the stream stops and its
   restart replays the batch, as designed;
2. otherwise the batch's images are scored again in halves, recursively (``isolate``): the parts
   that succeed keep their results, and an image that fails alone, twice, is ``poison``;
3. if every image failed alone, the fault is more likely the job's than every image's: the batch
   fails again, and its attempt is counted in the checkpoint (``Attempts``). From the
   ``poison_attempts``-th failure of the same micro-batch (across restarts) on, the images that
   fail alone are quarantined even so: one upload alone in its micro-batch cannot stop the stream.

Cost: one Spark job per part tried, about ``2 log2(n)`` per poison image in a batch of ``n``,
only on a batch that failed. Example::

    results, poisoned = isolate(len(rows), lambda part: score(rows.take(part)))
    # results: the scores of the parts that succeeded; poisoned: {row: the worker's error}

Limitations: a failure that strikes at random (a worker killed for the memory its neighbours
used) can make a healthy image fail alone twice: it is quarantined as ``poison`` with the error,
not lost, and can be sent again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TypeVar

from ..config import Settings
from ..io import lake

log = logging.getLogger(__name__)

T = TypeVar("T")

# Worker errors that are never an image's fault (their classes, as Spark reports them).
SYSTEMIC = ("S3Unavailable", "BrokenModel")


def systemic(exc: BaseException) -> bool:
    """Whether a failed micro-batch failed for the job's reasons rather than an image's."""
    return any(name in str(exc) for name in SYSTEMIC)


def summary(exc: BaseException, limit: int = 500) -> str:
    """The failure in one line, for the quarantine's ``error`` column and the log: the worker's own
    error line when Spark's report holds a Python traceback, else the task's last failure (``Python
    worker exited unexpectedly (crashed)`` for a worker that died), else the report's first line."""
    text = str(exc)
    raised = re.findall(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*$", text, flags=re.MULTILINE)
    lost = re.findall(r"most recent failure: Lost task [^)]*\)[^:]*: (.*)$", text, flags=re.MULTILINE)
    if "Traceback (most recent call last)" in text and raised:
        line = raised[-1]
    elif lost:
        line = lost[-1]
    else:
        line = next((t for t in text.splitlines() if t.strip()), type(exc).__name__)
    return line.strip()[:limit]


def isolate(n: int, score: Callable[[list[int]], T], tries: int = 2) -> tuple[list[T], dict[int, str]]:
    """Score rows ``0..n-1`` in parts: ``score(part)`` for halves of halves of the rows, until each
    part succeeds or is one row that failed ``tries`` times. Returns the results of the parts that
    succeeded and, for each row that failed alone, its error (``summary``)."""
    results: list[T] = []
    poisoned: dict[int, str] = {}
    pending = [list(range(n))]
    while pending:
        part = pending.pop()
        for attempt in range(tries if len(part) == 1 else 1):
            try:
                results.append(score(part))
                break
            except Exception as exc:
                if systemic(exc):
                    raise
                if len(part) > 1:
                    half = len(part) // 2
                    pending += [part[half:], part[:half]]
                elif attempt == tries - 1:
                    poisoned[part[0]] = summary(exc)
    return results, poisoned


class Attempts:
    """How many times a micro-batch failed on every one of its images, kept in the stream's
    checkpoint (``<checkpoint>/poison/<batch id>``: a few bytes, only for a batch failing now)."""

    def __init__(self, settings: Settings, batch_id: int) -> None:
        self.fs = lake.filesystem(settings)
        self.folder = f"{lake.path_in(settings.checkpoint)}/poison"
        self.path = f"{self.folder}/{batch_id}"

    def count(self) -> int:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return int(f.read() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def add(self) -> int:
        """Count one more failure; returns the count."""
        count = self.count() + 1
        self.fs.create_dir(self.folder, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(str(count).encode())
        return count

    def clear(self) -> None:
        """Forget every counted batch (this one went through; older ones are behind it)."""
        try:
            self.fs.delete_dir(self.folder)
        except FileNotFoundError:
            pass
        except OSError as exc:  # nothing depends on it: the next success clears it
            log.warning("could not clear %s: %s", self.folder, exc)
