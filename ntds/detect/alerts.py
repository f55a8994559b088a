"""Alerts: the wire body of a flow judged rare, built in one place for `run`, `replay` and `score`.

An alert names the flow (Flow.ID and its two ends), the application, when it
started, its score and rarity tier, which baseline entry judged it (the
application's own, or all traffic for applications the baseline does not
model) and the axes that made it unusual.
"""

from __future__ import annotations

import numpy as np

from ntds.detect.baseline import ALL_TRAFFIC, AXIS_INDEX, METRIC_COLUMNS, Baseline, metrics_matrix
from ntds.detect.scoring import TIER_LABELS

IDENTITY = ["Flow.ID", "Source.IP", "Source.Port", "Destination.IP", "Destination.Port", "Protocol", "Timestamp"]
COLUMNS = [*IDENTITY, "ProtocolName", *METRIC_COLUMNS]


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
