"""Explanations in words, with units: what an analyst reads first.

"duration 9.247e+07 (typical 1.4e+04)" makes the reader do arithmetic;
"92 s, typically 14 ms" does not. Every number an alert explains goes through
one formatter per unit here, for flow axes and host-level facts alike.
"""

from __future__ import annotations

import math

AXIS_UNITS = {
    "duration": "us",
    "volume": "bytes",
    "avpktsz": "bytes",
    "dnuprat": "ratio",
    "pktlenvar": "bytes2",
    "fwdpktlen": "bytes",
    "bwdpktlen": "bytes",
}
AXIS_WORDS = {
    "duration": "duration",
    "volume": "payload volume",
    "avpktsz": "average packet size",
    "dnuprat": "download/upload packet ratio",
    "pktlenvar": "packet size spread",
    "fwdpktlen": "size of packets sent",
    "bwdpktlen": "size of packets received",
}


def _num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2f}".rstrip("0").rstrip(".")


def duration(us: float) -> str:
    """Microseconds in the largest unit that reads well: 431 µs, 14 ms, 92 s, 3.5 min, 2.1 h, 3 days."""
    if not math.isfinite(us):
        return "unknown"
    s = us / 1e6
    if s < 1e-3:
        return f"{_num(us)} µs"
    if s < 1:
        return f"{_num(us / 1e3)} ms"
    if s < 120:
        return f"{_num(s)} s"
    if s < 7200:
        return f"{_num(s / 60)} min"
    if s < 172_800:
        return f"{_num(s / 3600)} h"
    return f"{_num(s / 86400)} days"


def size(b: float) -> str:
    """Bytes in decimal units: 280 B, 52 kB, 3.1 MB, 1.2 GB."""
    if not math.isfinite(b):
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            return f"{_num(b / scale)} {unit}"
    return f"{_num(b)} B"


def value(unit: str, v: float) -> str:
    if unit == "us":
        return duration(v)
    if unit == "bytes":
        return size(v)
    if unit == "bytes2":  # a variance: shown as the spread it implies
        return f"± {size(math.sqrt(max(v, 0.0)))}" if math.isfinite(v) else "unknown"
    if unit == "s":
        return duration(v * 1e6)
    if unit == "ratio":
        return _num(v)
    return f"{_num(v)} {unit}".rstrip()


def axis_text(axis: str, v: float, typical: float) -> str:
    """One axis of a flow alert: "duration 92 s, typically 14 ms"."""
    unit = AXIS_UNITS.get(axis, "")
    return f"{AXIS_WORDS.get(axis, axis)} {value(unit, v)}, typically {value(unit, typical)}"


def rate(count: float, seconds: float, what: str) -> str:
    """ "120 ports in 5 min"-style counts over a window."""
    return f"{count:,.0f} {what} in {duration(seconds * 1e6)}"


def plural(count: int, noun: str) -> str:
    """ "1 unique name", "2 unique names": signatures are read by people."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
