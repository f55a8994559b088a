"""`ntds-sensor score`: flows in, scored alerts out (one JSON object per line).

An alert names the flow (Flow.ID and its two ends), the application, when it
started, its score and rarity tier, which baseline entry judged it (the
application's own, or all traffic for applications the baseline does not
model) and the axes that made it unusual.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ntds.detect.baseline import ALL_TRAFFIC, AXIS_INDEX, METRIC_COLUMNS, Baseline, metrics_matrix
from ntds.detect.scoring import TIER_LABELS
from ntds.errors import InputError
from ntds.flows.files import kind_of, read_flow_table, records_to_columns
from ntds.flows.meter import EXTRA_COLUMNS, FlowMeter

IDENTITY = ["Flow.ID", "Source.IP", "Source.Port", "Destination.IP", "Destination.Port", "Protocol", "Timestamp"]
COLUMNS = [*IDENTITY, "ProtocolName", *METRIC_COLUMNS]


def _chunks(path: Path, profile: str) -> Iterator[tuple[dict, list[str]]]:
    """(column arrays, start times) per chunk of one input."""
    if kind_of(path) == "capture":
        meter = FlowMeter(profile, on_warning=lambda m: print(f"ntds-sensor: warning: {m}", file=sys.stderr))
        records = list(meter.read([path]))
        start = EXTRA_COLUMNS.index("flow_start_utc")
        yield records_to_columns(records, COLUMNS), [r.extra[start] for r in records]
    else:
        for cols in read_flow_table(path, COLUMNS):
            yield cols, [table_time(t) for t in cols["Timestamp"]]


def table_time(text) -> str:
    """A flow file's Timestamp as the ISO-8601 UTC time alerts carry.

    Unicauca timestamps (dd/MM/yyyyhh:mm:ss) have a 12-hour clock without AM/PM
    and no zone: the hour is taken as written and the zone as UTC, so a time
    from a flow file can be 12 hours early. Captures do not have this problem.
    """
    text = str(text)
    try:
        t = datetime.strptime(text, "%d/%m/%Y%H:%M:%S") if "/" in text else datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"unreadable Timestamp {text[:40]!r} in a flow file") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def scored_alerts(baseline: Baseline, cols: dict, times: list[str], min_tier: int) -> tuple[np.ndarray, list[dict]]:
    """Score one chunk: every flow's tier, and the alert objects at or above min_tier."""
    apps = cols["ProtocolName"].astype(str)
    M = metrics_matrix(cols)
    scored = baseline.score(apps, M)
    axes = M[:, AXIS_INDEX]
    out = []
    for i in np.flatnonzero(scored.tier >= min_tier):
        entry = scored.entry[i]
        out.append(
            {
                "time": times[i],
                "flow_id": str(cols["Flow.ID"][i]),
                "src_ip": str(cols["Source.IP"][i]),
                "src_port": int(cols["Source.Port"][i]),
                "dst_ip": str(cols["Destination.IP"][i]),
                "dst_port": int(cols["Destination.Port"][i]),
                "protocol": int(cols["Protocol"][i]),
                "application": str(apps[i]),
                "baseline": "all-traffic" if entry == ALL_TRAFFIC else "application",
                "score": round(float(scored.score[i]), 6),
                "tier": int(scored.tier[i]),
                "tier_label": TIER_LABELS[int(scored.tier[i])],
                "explanation": baseline.explain(entry, axes[i], scored.per_axis[i]),
            }
        )
    return scored.tier, out


def alerts(baseline: Baseline, cols: dict, times: list[str], min_tier: int) -> Iterator[dict]:
    """Score one chunk; yield the alert objects at or above min_tier."""
    yield from scored_alerts(baseline, cols, times, min_tier)[1]


def score_command(args) -> int:
    for p in args.inputs:
        kind_of(p)
        if not p.exists():
            raise InputError(f"{p}: no such file")
    baseline = Baseline.load(args.baseline, feature_profile=args.profile)
    min_tier = 0 if args.all else args.min_tier
    tiers = [0] * len(TIER_LABELS)
    top: list[tuple[float, int, dict]] = []
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for path in args.inputs:
            for cols, times in _chunks(path, args.profile):
                for alert in alerts(baseline, cols, times, 0 if args.summary else min_tier):
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
        print(
            f"  tier {a['tier']} score {a['score']:.2f} {a['application']} {a['src_ip']}:{a['src_port']} -> "
            f"{a['dst_ip']}:{a['dst_port']} [{a['baseline']}] {why}",
            file=sys.stderr,
        )
