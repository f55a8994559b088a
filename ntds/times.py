"""Times as ntds writes and reads them: ISO-8601 in UTC with a `Z`, one formatter for every record type.

Flow starts, wire envelopes, summaries, baselines and alerts all carry times
as text; writing them through one function keeps them comparable as strings
and parseable by every SOC tool (Suricata EVE and Zeek JSON logs use the same
form).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


def iso(t: datetime, timespec: str = "microseconds") -> str:
    """An aware datetime as ISO-8601 UTC text ending in Z."""
    return t.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def iso_ms(ms: int, timespec: str = "microseconds") -> str:
    """Milliseconds since the epoch as ISO-8601 UTC; ValueError/OverflowError/OSError outside datetime's range.

    Every flow and summary is stamped this way, so the calendar part is computed once per second (cached)."""
    second, milli = divmod(ms, 1000)
    if timespec == "microseconds":
        return f"{_second(second)}.{milli:03d}000Z"
    if timespec == "seconds":
        return f"{_second(second)}Z"
    return iso(datetime.fromtimestamp(ms / 1000, UTC), timespec)


@lru_cache(maxsize=4096)
def _second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds").removesuffix("+00:00")


def now_iso(timespec: str = "microseconds") -> str:
    return iso(datetime.now(UTC), timespec)


def parse_time(text: str) -> datetime:
    """A time written with a zone as an aware UTC datetime; ValueError if it is not ISO-8601 with a zone."""
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError("no time zone")
    return t.astimezone(UTC)
