"""Two network namespaces joined by a veth pair, for live-capture tests and benchmarks.

Capture runs inside one (`vcap`), traffic is sent from the other (`vsnd`), so no
test packet can reach any other interface or be routed anywhere. Both
namespaces, and with them the pair, are removed on the way out, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def veth_namespaces(prefix: str = "ntds") -> Iterator[tuple[str, str]]:
    """(capture namespace, sending namespace); the capture end is `vcap`, the sending end `vsnd`."""
    tag = f"{os.getpid() % 100000}"
    cap, snd = f"{prefix}-cap-{tag}", f"{prefix}-snd-{tag}"
    steps = [
        ["ip", "netns", "add", cap],
        ["ip", "netns", "add", snd],
        ["ip", "link", "add", "vcap", "netns", cap, "type", "veth", "peer", "name", "vsnd", "netns", snd],
        ["ip", "-n", cap, "link", "set", "lo", "up"],
        ["ip", "-n", cap, "link", "set", "vcap", "up"],
        ["ip", "-n", snd, "link", "set", "vsnd", "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield cap, snd
    finally:
        for ns in (cap, snd):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
