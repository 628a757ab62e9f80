"""Progress on long work: a bar with rate and ETA on a terminal (tqdm), a plain line every
``FRUITS_PROGRESS_SECONDS`` when the output is a log or a pipe.

Example::

    with Progress("upload", total=len(images), unit="image", every=settings.progress_seconds) as bar:
        for image in images:
            send(image)
            bar.advance()

    with progress_for(settings, "refit", len(STEPS), "step", spark) as bar:   # noted with Spark's tasks
        refit(spark, settings, on_step=bar.stage)

Work in named steps (a refit: statistics, solve, plots...) calls ``bar.stage("plots")``: the step
before counts as done. ``detail`` is asked for a note once a second (the Spark tasks of the step
running now, ``spark.session.running_tasks``).

Off a terminal the line reads as the bar does, without the bar:
``upload: 120/300 image [00:03<00:04, 40.0 image/s]``; a run shorter than ``every`` prints
none (the command's own summary says what it did). ``every=0``: nothing at all.

Limitations: one bar at a time; log lines printed while a bar is drawn go above it only through
the ``logging`` module (``tqdm.contrib.logging``), not through ``print``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from .config import Settings

TICK_SECONDS = 1.0


class Progress:
    """One long piece of work: ``advance`` (or ``advance_to``) as items finish, ``stage`` as named
    steps start; a context manager that ends the bar or the lines."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "it",
        *,
        every: float = 30.0,
        detail: Callable[[], str] | None = None,
        file: TextIO | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.every, self.detail = what, total, unit, every, detail
        self.file = file or sys.stderr
        self.done = 0
        self._started = time.monotonic()
        self._stage: str | None = None
        self._note = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # tqdm only on a terminal: off one, its carriage returns would garble a log.
        self._bar = (
            tqdm(total=total, desc=what, unit=unit, file=self.file, leave=False, dynamic_ncols=True)
            if every > 0 and _is_terminal(self.file)
            else None
        )
        self._redirect = logging_redirect_tqdm() if self._bar is not None else contextlib.nullcontext()
        self._ticker = threading.Thread(target=self._tick, name=f"progress-{what}", daemon=True)

    def __enter__(self) -> Progress:
        self._redirect.__enter__()
        if self.every > 0:
            self._ticker.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=5)  # a note's call can hang (a stuck JVM): not this exit too
        if kind is None and self._stage is not None:
            with self._lock:
                self._count(1)  # the last step is done; steps the work skipped leave the total
                self.total = self.done
                if self._bar is not None:
                    self._bar.total = self.done
        if self._bar is not None:
            self._bar.refresh()  # the last count is drawn, however soon after the one before it came
            self._bar.close()
        self._redirect.__exit__(kind, error, trace)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._count(n)

    def advance_to(self, done: int) -> None:
        """For a count that callbacks report as a running total."""
        with self._lock:
            self._count(done - self.done)

    def _count(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)
        self.done += n

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()

    def stage(self, name: str) -> None:
        """A named step starts; the one before (if any) is done."""
        with self._lock:
            if self._stage is not None:
                self._count(1)
            self._stage = name
            self._show()

    def write(self, message: str) -> None:
        """A line of its own: above the bar on a terminal, in order in a log."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(message, file=self.file)
            else:
                print(message, file=self.file, flush=True)

    def line(self) -> str:
        """The state as one plain line, what a log gets every ``every`` seconds:
        ``refit: 1/6 step [00:42<?, 0.0 step/s] stats stage 3: 40/200 tasks``."""
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = tqdm.format_interval((self.total - self.done) / rate) if self.total and rate > 0 else "?"
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        postfix = self._postfix()
        return f"{self.what}: {count} {self.unit} [{tqdm.format_interval(elapsed)}<{eta}, {rate:.1f} {self.unit}/s]" + (
            f" {postfix}" if postfix else ""
        )

    def _tick(self) -> None:
        last_line = time.monotonic()
        while not self._stop.wait(TICK_SECONDS):
            due = self._bar is not None or time.monotonic() - last_line >= self.every
            if not due:
                continue  # off a terminal the note is asked for only when a line is due
            note = self._detail()
            with self._lock:
                self._note = note
                if self._bar is not None:
                    self._show()
                    continue
                last_line = time.monotonic()
                try:
                    print(self.line(), file=self.file, flush=True)
                except (OSError, ValueError):  # the log went away (a closed pipe): the work goes on
                    return

    def _detail(self) -> str:
        try:
            return self.detail() if self.detail is not None else ""
        except Exception:  # noqa: BLE001 (a note is never worth failing the work it describes)
            return ""

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix())

    def _postfix(self) -> str:
        return " ".join(part for part in (self._stage, self._note) if part)


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def progress_for(
    settings: Settings, what: str, total: int | None, unit: str, spark: SparkSession | None = None
) -> Progress:
    """A ``Progress`` every ``settings.progress_seconds``; with ``spark``, noted with the Spark
    tasks running (``spark.session.running_tasks``)."""
    detail = None
    if spark is not None:
        from .spark.session import running_tasks  # only a Spark job's progress loads pyspark

        detail = functools.partial(running_tasks, spark)
    return Progress(what, total, unit, every=settings.progress_seconds, detail=detail)
