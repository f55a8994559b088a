"""Times as ntds writes them: ISO-8601 UTC, exact to the millisecond over datetime's whole range."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ntds.times import iso, iso_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_iso_ms_is_exact_against_calendar_arithmetic():
    """Checked against datetime's own integer arithmetic (no float seconds), so a cached calendar part that
    drifted, or a float rounding of milliseconds, fails."""
    rng = random.Random(3)
    lowest, highest = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31T23:59:59.999
    edges = [0, -1, 999, 1000, -1000, -1001, lowest, highest]
    for ms in edges + [rng.randrange(lowest, highest) for _ in range(20_000)]:
        exact = EPOCH + timedelta(milliseconds=ms)
        assert iso_ms(ms) == iso(exact) and iso_ms(ms, "seconds") == iso(exact, "seconds"), ms
    assert iso_ms(1_794_816_000_123) == "2026-11-16T08:00:00.123000Z"  # date -u -d @1794816000


@pytest.mark.parametrize("ms", [253_402_300_800_000, -62_135_596_800_001, 10**20])
def test_iso_ms_outside_the_calendar_raises_what_callers_catch(ms):
    with pytest.raises((ValueError, OverflowError, OSError)):
        iso_ms(ms)
