"""Section 3, applications: share of flows, 1 in N, cumulative share, change against the previous week."""

from __future__ import annotations

import pandas as pd

from aggregator.report.query import TIER_COLUMNS, Query, day_index

KEY = "applications"
COLUMNS = [
    "application",
    "flows",
    "share",
    "one_in",
    "cumulative",
    "bytes_up",
    "bytes_down",
    "previous_flows",
    "previous_share",
    "share_change",
]


def lazy(q: Query) -> dict:
    apps = q.frame("applications", q.previous_first)
    apps = apps.assign(day=day_index(apps.interval_start, q.previous_first))
    columns = ["flows", "bytes_up", "bytes_down", *TIER_COLUMNS]
    return {"apps": apps.groupby(["day", "application"])[columns].sum(split_out=1)}


def week_split(apps: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(previous week, this week) application totals; days 0-6 of the frame are the previous week."""
    if not len(apps):
        empty = pd.DataFrame(columns=["flows", "bytes_up", "bytes_down", *TIER_COLUMNS], dtype="int64")
        return empty, empty
    day = apps.index.get_level_values("day")
    prev = apps[day < 7].groupby(level="application").sum()
    cur = apps[day >= 7].groupby(level="application").sum()
    return prev, cur


def assemble(q: Query, r: dict) -> list[dict]:
    prev, cur = week_split(r["applications.apps"])
    total, prev_total = int(cur.flows.sum()), int(prev.flows.sum())
    rows, cumulative = [], 0.0
    ranked = sorted(cur.iterrows(), key=lambda kv: (-int(kv[1].flows), kv[0]))
    for name, row in ranked:
        flows = int(row.flows)
        if not flows:
            continue
        share = 100.0 * flows / total
        cumulative += share
        prev_flows = int(prev.flows.get(name, 0)) if len(prev) else 0
        prev_share = 100.0 * prev_flows / prev_total if prev_total else 0.0
        rows.append(
            {
                "application": name,
                "flows": flows,
                "share": round(share, 4),
                "one_in": max(1, round(100.0 / share)),
                "cumulative": round(min(cumulative, 100.0), 4),
                "bytes_up": int(row.bytes_up),
                "bytes_down": int(row.bytes_down),
                "previous_flows": prev_flows,
                "previous_share": round(prev_share, 4),
                "share_change": round(share - prev_share, 4),
            }
        )
    return rows


def tables(report: dict) -> dict:
    return {"applications": (COLUMNS, [[r[h] for h in COLUMNS] for r in report[KEY]])}


def charts(report: dict, site_country: str) -> dict:
    return {}
