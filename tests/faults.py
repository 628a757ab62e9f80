"""Network faults between the executors and the emulator, for the reliability tests."""

from __future__ import annotations

import socket
import struct
import threading
import time
from urllib.parse import urlsplit


class FlakyProxy:
    """A TCP forwarder to the emulator that fails the first connections it sees.

    - ``drop=N``: the first N connections are reset (RST), as a server dropping connections does.
    - ``outage=S``: the first connection is reset, then the port refuses every connection for S
      seconds (nothing listens on it), then forwarding resumes: the emulator briefly unreachable.

    Example::

        proxy = FlakyProxy(settings.endpoint_url, outage=3.0)
        run_stream(spark, settings.with_(endpoint_url=proxy.url), blob)
        proxy.close()
    """

    def __init__(self, target_url: str, drop: int = 0, outage: float = 0.0) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.drop = drop if not outage else 1
        self.outage = outage
        self.dropped = self.forwarded = 0
        self.down_at: float | None = None  # monotonic times of the outage
        self.up_at: float | None = None
        self.first_forward_at: float | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if self.dropped < self.drop:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                self.dropped += 1
                if self.outage and self.down_at is None:
                    self._go_down()
                continue
            upstream = socket.create_connection(self.target)
            self.forwarded += 1
            if self.first_forward_at is None:
                self.first_forward_at = time.monotonic()
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _go_down(self) -> None:
        """Stop listening for ``outage`` seconds. The port stays bound (so no one else takes it) but
        has no listener, so the kernel refuses connections to it."""
        self.down_at = time.monotonic()
        self.server.close()
        bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bound.bind(("127.0.0.1", self.port))
        if self._closed.wait(self.outage):  # closed during the outage: stay down
            bound.close()
            return
        bound.listen()
        self.server = bound
        self.up_at = time.monotonic()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self._closed.set()
        self.server.close()
