"""Logging for both programs: one line per event, bounded in volume, safe to print.

Two things make a log dangerous on a security tool. A flood of bad input (a
hundred thousand malformed messages) must not become gigabytes of identical
warnings, so each repeated line is let through a few times a minute and the
rest are counted and reported. And a log line may carry text from the network
(a sensor name, a server name): control characters and terminal escape
sequences are shown escaped, never sent to the terminal or journal as they are.
"""

from __future__ import annotations

import logging
import sys
import time

BURST = 5
"""Lines with the same template let through per window before counting starts."""
WINDOW_S = 60.0


def printable(text: object, limit: int = 200) -> str:
    """Text for a terminal, a log or a chart: control characters escaped, long text cut."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "…"
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class RateLimit(logging.Filter):
    """Lets BURST records of each message template through per WINDOW_S; then counts the rest and says how
    many were held back when the template next gets through."""

    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple[str, str], list[float]] = {}  # (logger, template) -> [window start, passed, held]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            held = int(entry[2]) if entry else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 10_000:  # templates are few; arbitrary keys would be a bug, not a reason to grow
                self._seen.clear()
            if held:
                record.msg = f"{record.msg} ({held} more like this in the last {self.window_s:.0f} s were not logged)"
            return True
        if entry[1] < self.burst:
            entry[1] += 1
            return True
        entry[2] += 1
        return False


class SafeFormatter(logging.Formatter):
    """Escapes control characters in the formatted line (arguments may come from the network)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), limit=4000)


def setup(program: str) -> None:
    """One handler on stderr (the journal under systemd) with rate limiting and escaping."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(f"%(asctime)s {program} %(levelname)s %(message)s"))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
