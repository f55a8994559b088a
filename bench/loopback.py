"""What the benchmarks need to run real programs on 127.0.0.1: a free port, and waiting for a web UI to answer."""

from __future__ import annotations

import socket
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ui(base: str, timeout_s: float = 60) -> None:
    """Until `base`/login answers; the benchmark stops with one line if it never does."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(base + "/login", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > end:
                raise SystemExit("bench: the UI did not start") from None
            time.sleep(0.2)
