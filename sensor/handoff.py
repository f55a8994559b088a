"""Finished flows from the capture threads to the analysis loop, a list at a time.

A `queue.Queue` handed over one flow at a time: a lock, a condition and a wake-up of the other thread for
every flow, most of what `replay` spent beyond `score` on short flows (docs/benchmarks.md, issue 28). Here a
capture thread appends to a list under a plain lock and queues the list when it holds BATCH items; the loop,
finding the queue empty, takes the partial list itself, so a lone flow on a quiet tap waits at most POLL_S.
Order is kept: full lists are queued under the same lock, and the loop takes the partial list only when,
under that lock, nothing is queued before it. Memory stays bounded: at most `capacity` items are queued (the
capture thread waits when the loop is that far behind).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

BATCH = 64
POLL_S = 0.01
"""How often the loop, waiting, looks at what a capture thread holds."""


class Handoff:
    def __init__(self, capacity: int) -> None:
        self._queue: queue.Queue[list] = queue.Queue(max(1, capacity // BATCH))
        self._lock = threading.Lock()
        self._held: list = []

    def put(self, item: Any) -> None:
        """From a capture thread: one flow (or the end of a source)."""
        with self._lock:
            self._held.append(item)
            if len(self._held) >= BATCH:
                self._queue.put(self._held)  # may wait (bounded): the loop never needs this lock then
                self._held = []

    def get(self, timeout: float) -> list:
        """From the loop: the next items in order, waiting at most `timeout` for any; [] if none came. Items
        a capture thread holds in a partial list are taken after at most POLL_S."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._queue.get(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                pass
            with self._lock:
                if not self._queue.empty():  # a full list was queued meanwhile: it comes first
                    return self._queue.get_nowait()
                if self._held:
                    held, self._held = self._held, []
                    return held
            if time.monotonic() >= deadline:
                return []

    def get_nowait(self) -> list:
        return self.get(0)
