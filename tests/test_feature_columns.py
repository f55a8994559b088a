"""The numeric feature columns in C (ntds/flows/columns_c.c) equal Python's, bit for bit and type for type.

`finalize_exact` is the definition (exact integers, Python's correctly rounded int/int); the C code must give
the same row for every flow it does not decline, and decline what it cannot do exactly. Checked on every flow
of the shared captures under both profiles, and on states drawn at random around the limits of exactness
(2^53, int64, 128-bit sums of squares).
"""

from __future__ import annotations

import random
import struct
from datetime import UTC
from types import SimpleNamespace

import pytest
from conftest import fixture_captures, shared_captures
from hypothesis import given, settings
from hypothesis import strategies as st

import ntds.flows.meter as meter
from ntds.flows import features
from ntds.flows.profiles import CORRECTED, UNICAUCA


def same(a: tuple, b: tuple) -> bool:
    """Equal values of equal types (repr tells 1 from 1.0, -0.0 from 0.0, and nan equals nan)."""
    return [(type(x), repr(x)) for x in a] == [(type(x), repr(x)) for x in b]


def test_every_flow_of_the_real_captures_gets_python_s_row(monkeypatch):
    captures = shared_captures() or fixture_captures()
    seen, declined, wrong = 0, 0, []
    real_finalize, real_exact = features.finalize, features.finalize_exact

    def exact_counted(*args):
        nonlocal declined
        declined += 1
        return real_exact(*args)

    def checked(state, flow, profile, tz):
        nonlocal seen
        row = real_finalize(state, flow, profile, tz)
        for p in (UNICAUCA, CORRECTED):  # the profile's switches only change the arithmetic here
            got = row if p is profile else real_finalize(state, flow, p, tz)
            if not same(got, real_exact(state, flow, p, tz)) and len(wrong) < 5:
                wrong.append((p.name, flow.src_ip, flow.dst_ip, got))
        seen += 1
        return row

    monkeypatch.setattr(meter, "finalize", checked)
    monkeypatch.setattr(features, "finalize_exact", exact_counted)
    for _ in meter.FlowMeter().read([str(p) for p in captures]):
        pass
    assert seen > 1000 and not wrong, wrong
    assert declined < seen / 2  # the C code does most rows (it declines only beyond 2^53)


FIELDS = features._Numbers._fields
CODES = features._STATE.format[1:].replace("x", "")
assert len(CODES) == len(FIELDS)

LIMITS = {"q": (-(2**63), 2**63 - 1), "Q": (0, 2**64 - 1), "i": (-(2**31), 2**31 - 1), "I": (0, 2**32 - 1),
          "b": (-128, 127), "B": (0, 255)}  # fmt: skip


def number(rnd: random.Random, code: str, top: int) -> int:
    """A field's value: mostly up to this example's `top`, sometimes anywhere in its type, sometimes at an
    edge of exactness."""
    lo, hi = LIMITS[code]
    pick = rnd.random()
    if pick < 0.8:
        return rnd.randint(0, min(hi, top))
    if pick < 0.9:
        return rnd.randint(lo, hi)
    edge = rnd.choice((0, 1, 2**31, 2**53, 2**62, 2**63, 2**64)) * rnd.choice((1, -1)) + rnd.randint(-2, 2)
    return min(max(edge, lo), hi)


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 2**64), st.sampled_from([UNICAUCA, CORRECTED]))
def test_random_states_get_python_s_row_or_python_s_error(seed, profile):
    # Values drawn by a generator seeded by hypothesis (drawing 230 fields one by one through hypothesis took
    # 13 ms an example); the failing state is in the assertion's message.
    rnd = random.Random(seed)
    top = 2 ** rnd.choice((6, 20, 32, 45, 52, 53, 54, 60, 63))  # most sums stay below 2^53; some go past it
    values = [number(rnd, c, top) for c in CODES]
    state = features._STATE.pack(*values)
    flow = SimpleNamespace(src_ip="10.0.0.1", src_port=1234, dst_ip="192.0.2.7", dst_port=443, protocol=6)

    def outcome(f):
        try:
            return "row", f(state, flow, profile, UTC)
        except (ZeroDivisionError, ValueError, OverflowError) as e:  # what Python's arithmetic raises
            return "error", type(e)

    got, expected = outcome(features.finalize), outcome(features.finalize_exact)
    assert got[0] == expected[0], dict(zip(FIELDS, values))
    if got[0] == "row":
        assert same(got[1], expected[1]), dict(zip(FIELDS, values))


def test_the_layout_reads_the_struct_as_cffi_does():
    # The flat view (one struct.unpack) against cffi's own field access, on a state of distinct numbers.
    values = [i * 7 + 1 if c in "qQiI" else i % 100 for i, c in enumerate(CODES)]
    state = features._STATE.pack(*values)
    s = features._ffi.from_buffer("struct ntds_flow *", state)
    view = features._Numbers._make(features._STATE.unpack(state))
    assert view.f_n == s.f.n and view.b_bulk_dur == s.b.bulk_dur and view.p_echo_max == s.p.echo_max
    assert [getattr(view, f"active_{i}") for i in range(6)] == list(s.active)
    assert [getattr(view, f"first_flags_{i}") for i in range(8)] == list(s.first_flags)
    assert features._STATE.size == features._ffi.sizeof("struct ntds_flow")
    assert struct.calcsize(features._ROW.format) == 8 * len(features._KINDS)


@pytest.mark.parametrize("profile", [UNICAUCA, CORRECTED])
def test_column_count(profile):
    values = [0] * len(CODES)
    values[FIELDS.index("n")] = 2
    values[FIELDS.index("subflows")] = 1
    row = features.finalize(features._STATE.pack(*values), SimpleNamespace(src_ip="10.0.0.1", src_port=1,
                            dst_ip="10.0.0.2", dst_port=2, protocol=17), profile, UTC)  # fmt: skip
    assert len(row) == 85
