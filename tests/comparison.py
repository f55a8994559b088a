"""Match the sensor's rows against the reference's (spec 7.2) and list every disagreement."""

from __future__ import annotations

import math
from collections import defaultdict

from ntds.flows.columns import COLUMNS, FLOAT_COLUMNS

TIME_COLUMNS = frozenset(
    ["Flow.Duration", "Flow.Bytes.s", "Flow.Packets.s", "Fwd.Packets.s", "Bwd.Packets.s"]
    + [c for c in COLUMNS if ".IAT." in c or c.startswith(("Active.", "Idle."))]
)
LENGTH_FLOATS = FLOAT_COLUMNS - TIME_COLUMNS


def match_key(row: dict) -> tuple:
    """Flow.ID, source end and start time truncated to the millisecond (spec 7.2)."""
    return row["Flow.ID"], row["Source.IP"], row["Source.Port"], row["Timestamp"]


def same(a, b, rel: float = 0.0) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return a == b or abs(a - b) <= rel * max(abs(a), abs(b))
    return a == b


def compare(sensor_rows: list[dict], reference_rows: list[dict], start_ms, known: dict | None = None) -> list[str]:
    """Every difference as a readable line; empty means the two meters agree one to one.

    start_ms(row) gives a row's start in ms (the Timestamp column has 1 s resolution).
    Flows the reference marks as a known deviation (row["_known"]) are left out of the
    comparison, with every flow of the same Flow.ID, and collected into `known`."""
    problems: list[str] = []
    skip = {r["Flow.ID"]: r["_known"] for r in reference_rows if r.get("_known")}
    if known is not None:
        known.update(skip)
    sensor_rows = [r for r in sensor_rows if r["Flow.ID"] not in skip]
    reference_rows = [r for r in reference_rows if r["Flow.ID"] not in skip]
    groups: dict[tuple, list[list[dict]]] = defaultdict(lambda: [[], []])
    for side, rows in ((0, sensor_rows), (1, reference_rows)):
        for r in rows:
            groups[match_key(r) + (start_ms(r),)][side].append(r)
    for key, (mine, ref) in groups.items():
        if len(mine) != len(ref):
            problems.append(f"{key}: sensor has {len(mine)} flows, reference {len(ref)}")
            continue
        order = lambda r: (r["Total.Fwd.Packets"], r["Total.Backward.Packets"], r["Flow.Duration"])  # noqa: E731
        for a, b in zip(sorted(mine, key=order), sorted(ref, key=order)):
            for col in COLUMNS[:85]:
                rel = 1e-9 if col in LENGTH_FLOATS or col in TIME_COLUMNS else 0.0
                if not same(a[col], b[col], rel):
                    problems.append(f"{key}: {col}: sensor {a[col]!r}, reference {b[col]!r}")
    return problems
