"""``fruits serve`` as a process of its own on a free local port: for the demo, the tests and the
benchmarks, which call it over real HTTP as the app's backend would.

Example::

    with serving({**os.environ, "FRUITS_TABLE_ROOT": root}) as url:    # 'http://127.0.0.1:41233'
        urllib.request.urlopen(f"{url}/readyz")
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping


class ServerError(RuntimeError):
    """The server exited, or did not become ready in time: the message holds what it logged."""


@contextlib.contextmanager
def serving(env: Mapping[str, str], *, ready: bool = True, within: float = 120.0) -> Iterator[str]:
    """The base URL of ``fruits serve`` run with ``env`` on 127.0.0.1, once ``/readyz`` says it is
    ready (``ready`` False: once it answers at all). Its log is printed if the block fails.

    The port is one the system had free a moment before the server binds it: a process taking it
    in between makes the server exit, which raises ``ServerError`` with its log."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fruits", "serve", "--port", str(port)],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def logged() -> str:
            log.seek(0)
            return log.read()

        try:
            _wait(process, f"{url}/{'readyz' if ready else 'healthz'}", time.monotonic() + within, logged)
            yield url
        except BaseException:
            print(f"--- fruits serve's log ---\n{logged()}", file=sys.stderr)
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait(process: subprocess.Popen, probe: str, deadline: float, logged: Callable[[], str]) -> None:
    while True:
        if process.poll() is not None:
            raise ServerError(f"fruits serve exited with {process.returncode}: {logged()}")
        try:
            with urllib.request.urlopen(probe, timeout=5) as answer:
                if answer.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # 503: not ready yet
            if time.monotonic() > deadline:
                raise ServerError(f"fruits serve is not ready: {exc.read().decode()}") from None
        except OSError:  # not listening yet
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)
