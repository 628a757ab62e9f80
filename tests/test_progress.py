"""Progress on long work: a tqdm bar on a terminal, a plain line every so often in a log, nothing
when turned off; the count, total, stage and note as the work reports them."""

from __future__ import annotations

import io
import logging
import re
import time

from fruits.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def wait_for(predicate, within: float = 30.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_plain_line_says_count_total_rate_and_the_stage_with_its_note() -> None:
    with Progress("refit", 6, "step", every=0, detail=lambda: "stage 3: 40/200 tasks") as bar:
        bar.stage("statistics")
        assert bar.done == 0  # a stage counts once the next one starts
        bar.stage("solve")
        assert bar.done == 1
        assert re.fullmatch(r"refit: 1/6 step \[\d\d:\d\d<(\d\d:\d\d|\?), \d+\.\d step/s\] solve", bar.line())

    # Done: the last step counts, and steps the work skipped leave the total.
    assert (bar.done, bar.total) == (2, 2)

    with Progress("stream", None, "upload", every=0) as bar:
        bar.advance_to(12)
        bar.advance(3)
        assert bar.line().startswith("stream: 15 upload [")  # no total known: a count, no ETA


def test_off_a_terminal_a_line_comes_every_so_often_with_the_note() -> None:
    log = io.StringIO()
    with Progress("upload", 300, "image", every=0.01, detail=lambda: "stage 2: 1/4 tasks", file=log) as bar:
        bar.advance(120)
        assert wait_for(lambda: "\n" in log.getvalue())
    first = log.getvalue().splitlines()[0]
    assert re.fullmatch(r"upload: 120/300 image \[\d\d:\d\d<\S+, \d+\.\d image/s\] stage 2: 1/4 tasks", first), first
    assert "\r" not in log.getvalue()  # no bar drawing in a log


def test_a_short_run_in_a_log_prints_nothing_and_zero_turns_progress_off() -> None:
    for every, file in ((30.0, io.StringIO()), (0, Terminal())):
        with Progress("upload", 3, "image", every=every, file=file) as bar:
            bar.advance(3)
        assert file.getvalue() == ""


def test_on_a_terminal_a_bar_ends_on_the_last_count_and_log_lines_go_above_it(monkeypatch) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    handler = logging.StreamHandler()  # the console's handler, as logging.basicConfig makes it
    logging.getLogger().addHandler(handler)
    try:
        with Progress("upload", 5, "image", every=30) as bar:
            for _ in range(5):
                bar.advance()
            logging.getLogger("fruits.test_progress").warning("a log line")
    finally:
        logging.getLogger().removeHandler(handler)
    drawn = screen.getvalue()
    assert "upload:" in drawn and "5/5 [" in drawn, drawn
    # The bar is cleared before the log line is written (then drawn again below it).
    assert re.search(r"\r *\ra log line\n", drawn), repr(drawn)


def test_a_message_is_a_line_of_its_own_on_a_terminal_and_in_a_log() -> None:
    for file in (Terminal(), io.StringIO()):
        with Progress("bench", 5, "part", every=30, file=file) as bar:
            bar.stage("latency")
            bar.write("latency: 200 uploads through the full local path ...")
        assert "latency: 200 uploads through the full local path ...\n" in file.getvalue()
        assert "bench:" not in file.getvalue().split("latency: 200")[1].split("\n")[0]  # not drawn into the bar


def test_counts_from_several_threads_add_up() -> None:
    import threading

    with Progress("upload", None, "image", every=0) as bar:
        threads = [threading.Thread(target=lambda: [bar.advance() for _ in range(20_000)]) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert bar.done == 80_000


def test_a_failing_note_is_left_out_not_raised() -> None:
    def broken() -> str:
        raise RuntimeError("the JVM is gone")

    log = io.StringIO()
    with Progress("maintain", 2, "step", every=0.01, detail=broken, file=log) as bar:
        bar.stage("VACUUM pca_models")
        assert wait_for(lambda: "\n" in log.getvalue())
    assert log.getvalue().splitlines()[0].endswith("] VACUUM pca_models")
