"""`ntds-sensor score`: flows in (captures or flow files), scored alerts out, one JSON object per line."""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ntds.detect.alerts import COLUMNS, scored_alerts
from ntds.detect.baseline import Baseline
from ntds.detect.scoring import TIER_LABELS
from ntds.errors import InputError
from ntds.flows.files import kind_of, read_flow_table, records_to_columns, table_time
from ntds.flows.meter import EXTRA_COLUMNS, FlowMeter
from ntds.logs import printable
from ntds.wire.schema import TIME_MAX, TIME_MIN


def _chunks(path: Path, profile: str, skipped: list[int]) -> Iterator[tuple[dict, list[str]]]:
    """(column arrays, start times) per chunk of one input; flows whose time no alert can carry (a bogus
    capture clock) are left out and counted in skipped[0]."""
    if kind_of(path) == "capture":
        meter = FlowMeter(profile, on_warning=lambda m: print(f"ntds-sensor: warning: {m}", file=sys.stderr))
        records = list(meter.read([path]))
        start = EXTRA_COLUMNS.index("flow_start_utc")
        chunks = [(records_to_columns(records, COLUMNS), [r.extra[start] for r in records])]
    else:
        chunks = ((cols, [table_time(t) for t in cols["Timestamp"]]) for cols in read_flow_table(path, COLUMNS))
    for cols, times in chunks:
        keep = np.array([t is not None and not t.startswith("@") for t in times], dtype=bool)
        if not keep.all():
            skipped[0] += int((~keep).sum())
            cols = {k: v[keep] for k, v in cols.items()}
            times = [t for t, k in zip(times, keep) if k]
        yield cols, times


def score_command(args) -> int:
    for p in args.inputs:
        kind_of(p)
        if not p.exists():
            raise InputError(f"{p}: no such file")
    baseline = Baseline.load(args.baseline, feature_profile=args.profile)
    min_tier = 0 if args.all else args.min_tier
    tiers = [0] * len(TIER_LABELS)
    skipped = [0]
    top: list[tuple[float, int, dict]] = []
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for path in args.inputs:
            for cols, times in _chunks(path, args.profile, skipped):
                for alert in scored_alerts(baseline, cols, times, 0 if args.summary else min_tier)[1]:
                    tiers[alert["tier"]] += 1
                    if args.summary:
                        heapq.heappush(top, (alert["score"], sum(tiers), alert))
                        if len(top) > 5:
                            heapq.heappop(top)
                    if alert["tier"] >= min_tier:
                        out.write(json.dumps(alert, allow_nan=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if skipped[0]:
        print(f"ntds-sensor: warning: {skipped[0]} flows skipped: their start time is outside "
              f"{TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d} (a bogus capture clock)", file=sys.stderr)  # fmt: skip
    if args.summary:
        print_summary(tiers, [a for _, _, a in sorted(top, key=lambda x: (-x[0], x[1]))])
    return 0


def print_summary(tiers: list[int], top: list[dict]) -> None:
    """Flows per tier and the rarest flows with their explanations, on stderr."""
    print(f"{sum(tiers)} flows scored", file=sys.stderr)
    for k, n in enumerate(tiers):
        print(f"  tier {k} ({TIER_LABELS[k]}): {n}", file=sys.stderr)
    print("rarest flows:", file=sys.stderr)
    for a in top:
        why = ", ".join(f"{e['axis']} {e['value']:.4g} (typical {e['typical']:.4g})" for e in a["explanation"][:2])
        line = (
            f"  tier {a['tier']} score {a['score']:.2f} {a['application']} {a['src_ip']}:{a['src_port']} -> "
            f"{a['dst_ip']}:{a['dst_port']} [{a['baseline']}] {why}"
        )
        print(printable(line, 1000), file=sys.stderr)
