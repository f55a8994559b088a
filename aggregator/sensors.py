"""What the aggregator knows of each sensor: status, age of its last message, backlog, drops, baseline, quota
refusals (`refused`: messages refused over a quota, resends included; `over_quota`: one within ONLINE_S).

One place computes it for `ntds-aggregator sensors`, the alert manager's sensor page and the metrics, so
they never disagree.
"""

from __future__ import annotations

ONLINE_S = 180
"""A sensor heard from within this many seconds is online (health messages come every minute by default)."""
STALE_S = 900
"""Heard from within this many seconds but not ONLINE_S: stale. Beyond: offline."""


def status(last_seen: float, health: dict | None, now: float) -> str:
    """online, stale, offline, or stopped (its last health message said it was stopping)."""
    if health and health.get("state") == "stopping":
        return "stopped"
    age = now - last_seen
    return "online" if age < ONLINE_S else "stale" if age < STALE_S else "offline"


def describe(row: dict, now: float) -> dict:
    """A store `sensors()` row with status, age, backlog and drops added."""
    health = row.get("health") or {}
    hello = row.get("hello") or {}
    return row | {
        "status": status(row["last_seen"], health, now),
        "age_s": max(0.0, now - row["last_seen"]),
        "backlog": health.get("spool_messages"),
        "drops": sum((health.get("spool_dropped") or {}).values()) if health else None,
        "packets_seen": health.get("packets_seen"),
        "packets_dropped": health.get("packets_dropped"),
        "baseline": hello.get("baseline_id"),
        # the indicator set it matches with (its serial, 0: none), its size, and pushed sets it refused
        "intel_serial": health.get("intel_serial", hello.get("intel_serial", 0)) or 0,
        "intel_indicators": health.get("intel_indicators", 0) or 0,
        "intel_refused": health.get("intel_refused", 0) or 0,
        "refused": row.get("refused", 0),
        "over_quota": bool(row.get("refused_last")) and now - row["refused_last"] < ONLINE_S,
    }
