"""The packet ring on disk: files the meters write while capturing, and the keeper that bounds them.

Each meter process writes the packets it captures, as captured, into pcap files
of `ring_file_mb` in `ring_dir`, named for the meter (its process id) and the time of
their first packet: `ring-<meter>-<seconds>-<nanoseconds>.pcap`. The name is the ring's index
by time: a file holds the packets from its first packet's time until its
modification time (the meters flush at least once a second). The writing is C
(`ntds/flows/packet_tap.c`), in the meter, from the same packet NFStream meters.

The keeper (the sensor's main loop, every few seconds) removes the oldest files
while the ring holds more than `ring_mb` or files older than `ring_max_age_s`,
never a file a meter is still writing (the newest of each meter, written to within a minute; a meter is
named by its process id, so a stopped meter's last file goes like any other).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

WRITING_S = 60
"""A meter's newest file written to within this long is still being written: never removed."""
_NAME = re.compile(r"^ring-(\d+)-(\d+)-(\d{9})\.pcap$")


@dataclass(frozen=True)
class RingFile:
    path: Path
    meter: int
    first_ms: int
    end_ms: int
    """Last write (a bound on its last packet's time)."""
    size: int

    def overlaps(self, since_ms: int, until_ms: int) -> bool:
        return self.first_ms <= until_ms and self.end_ms >= since_ms


def ring_files(folder: Path) -> list[RingFile]:
    """The ring's files, oldest first."""
    out = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for e in entries:
        m = _NAME.match(e.name)
        if not m:
            continue
        try:
            st = e.stat()
        except OSError:
            continue  # removed meanwhile
        first_ms = int(m.group(2)) * 1000 + int(m.group(3)) // 1_000_000
        out.append(RingFile(Path(e.path), int(m.group(1)), first_ms, max(first_ms, st.st_mtime_ns // 1_000_000),
                            st.st_size))  # fmt: skip
    return sorted(out, key=lambda f: (f.first_ms, f.meter))


def prune(folder: Path, max_bytes: int, max_age_s: float, now: float | None = None) -> tuple[int, int]:
    """Remove the oldest ring files beyond the caps; returns (files removed, bytes the ring holds now)."""
    now = time.time() if now is None else now
    files = ring_files(folder)
    newest = {}
    for f in files:
        newest[f.meter] = f
    writing = {f.path for f in newest.values() if now * 1000 - f.end_ms < WRITING_S * 1000}
    total = sum(f.size for f in files)
    removed = 0
    for f in files:
        if f.path in writing:
            continue
        if total > max_bytes or (max_age_s and now * 1000 - f.end_ms > max_age_s * 1000):
            with contextlib.suppress(FileNotFoundError):
                f.path.unlink()
            total -= f.size
            removed += 1
    return removed, total
