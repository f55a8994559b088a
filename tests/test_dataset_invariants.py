"""Spec 7.4: invariants every row of the data set satisfies, and so must the sensor's unicauca output.

Checked on every flow the sensor writes for the fixtures and for every shared
capture. They hold by construction of the dataset-era tool (first-packet flags,
duplicated first length, copied subflows), so a row that breaks one is a bug.
"""

from __future__ import annotations

import math

import pytest
from conftest import fixture_captures, sensor_rows, shared_captures

CAPTURES = fixture_captures() + shared_captures()


def check(r: dict) -> list[str]:
    bad = []
    f, b = r["Total.Fwd.Packets"], r["Total.Backward.Packets"]
    n = f + b
    total = r["Total.Length.of.Fwd.Packets"] + r["Total.Length.of.Bwd.Packets"]

    def need(ok: bool, what: str) -> None:
        if not ok:
            bad.append(what)

    need(n >= 2, "at least 2 packets")
    for side in ("Fwd", "Bwd"):
        for c in ("Avg.Bytes.Bulk", "Avg.Packets.Bulk", "Avg.Bulk.Rate"):
            need(r[f"{side}.{c}"] == 0, f"{side}.{c} = 0")
    # the first packet's PSH bit sits under SYN.Flag.Count and URG under CWE (spec 4.2); it is counted
    # in the first packet's direction, which is backward only for a flow continuing after a 120 s split
    need(r["SYN.Flag.Count"] == r["Fwd.PSH.Flags"] + r["Bwd.PSH.Flags"], "SYN.Flag.Count = first packet's PSH")
    need(r["CWE.Flag.Count"] == r["Fwd.URG.Flags"] + r["Bwd.URG.Flags"], "CWE.Flag.Count = first packet's URG")
    for c in ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "CWE", "ECE"):
        need(r[f"{c}.Flag.Count"] in (0, 1), f"{c}.Flag.Count in 0/1")
    need(
        (r["Subflow.Fwd.Packets"], r["Subflow.Fwd.Bytes"], r["Subflow.Bwd.Packets"], r["Subflow.Bwd.Bytes"])
        == (f, r["Total.Length.of.Fwd.Packets"], b, r["Total.Length.of.Bwd.Packets"]),
        "subflows = totals",
    )
    need(r["Fwd.Header.Length.1"] == r["Fwd.Header.Length"], "Fwd.Header.Length.1 = Fwd.Header.Length")
    need(r["Avg.Fwd.Segment.Size"] == r["Fwd.Packet.Length.Mean"], "Avg.Fwd.Segment.Size = Fwd mean")
    need(r["Down.Up.Ratio"] == (b // f if f else 0), "Down.Up.Ratio = B // F")
    first_len = r["Average.Packet.Size"] * n - total
    # L_1 is the first packet's length: within the forward range, or, for a flow that continues
    # after a 120 s split and opens with a backward packet, within the backward range
    in_fwd = r["Fwd.Packet.Length.Min"] - 1e-6 <= first_len <= r["Fwd.Packet.Length.Max"] + 1e-6
    in_bwd = b > 0 and r["Bwd.Packet.Length.Min"] - 1e-6 <= first_len <= r["Bwd.Packet.Length.Max"] + 1e-6
    # Fwd.PSH.Flags only says the first packet had PSH (counted forward whatever its direction, spec 3), so the
    # row never tells the first packet's direction
    need(r["Bwd.PSH.Flags"] == 0 and r["Bwd.URG.Flags"] == 0, "Bwd.PSH/URG.Flags are always 0")
    need(in_fwd or in_bwd, "first length within one direction's range")
    need(math.isclose(r["Packet.Length.Mean"] * (n + 1), r["Average.Packet.Size"] * n, rel_tol=1e-9, abs_tol=1e-9),
         "Packet.Length.Mean x (N+1) = Average.Packet.Size x N")  # fmt: skip
    rate = r["Flow.Bytes.s"]
    if r["Flow.Duration"] > 0:
        need(
            math.isclose(rate * r["Flow.Duration"] / 1e6, total, rel_tol=1e-9, abs_tol=1e-6), "rate x duration = bytes"
        )
    else:
        need(math.isinf(rate) if total else math.isnan(rate), "zero duration: Infinity or NaN")
    return bad


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_unicauca_rows_satisfy_the_dataset_invariants(path):
    problems = []
    for r in sensor_rows([path], "unicauca"):
        for what in check(r):
            problems.append(f"{r['Flow.ID']} start {r['_start_ms']}: {what}")
    assert not problems, f"{len(problems)} broken invariants:\n" + "\n".join(problems[:20])
