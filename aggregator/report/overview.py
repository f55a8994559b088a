"""Section 1, overview: one row per sensor (hours with data, totals, capture and spool drops), and the baselines
that judged each sensor's alerts this week (from the alerts themselves: each carries its baseline's id)."""

from __future__ import annotations

import pandas as pd

from aggregator.report.query import Query
from ntds.times import iso

KEY = "overview"
TOTALS = ("flows", "packets", "bytes", "packets_seen", "packets_dropped", "spool_dropped")


def lazy(q: Query) -> dict:
    summaries = q.frame("summaries")
    summaries = summaries.assign(hour=summaries.interval_start.dt.floor("h"))
    health = q.frame("health", q.history_first)
    health = health.assign(in_week=health.created >= pd.Timestamp(q.first, tz="UTC"))
    return {
        "per_sensor": summaries.groupby("sensor")[["flows", "packets", "bytes", "packets_seen", "packets_dropped"]].sum(
            split_out=1
        ),
        "hours": summaries.groupby(["sensor", "hour"]).size(split_out=1),
        "spool": health.groupby(["sensor", "in_week"]).spool_dropped.max(split_out=1),
    }


def assemble(q: Query, r: dict) -> dict:
    per_sensor = r["overview.per_sensor"]
    hours = r["overview.hours"]
    hours = hours.groupby(level="sensor").size() if len(hours) else hours
    spool = r["overview.spool"]
    spool_sensors = sorted({s for s, _ in spool.index}) if len(spool) else []
    rows = []
    for s in sorted(set(per_sensor.index) | set(spool_sensors)):
        row = per_sensor.loc[s] if s in per_sensor.index else None
        before = spool.get((s, False), 0)
        during = spool.get((s, True), before)
        rows.append(
            {
                "sensor": s,
                "hours_with_data": int(hours.get(s, 0)),
                **{k: int(row[k]) if row is not None else 0 for k in ("flows", "packets", "bytes")},
                "packets_seen": int(row["packets_seen"]) if row is not None else 0,
                "packets_dropped": int(row["packets_dropped"]) if row is not None else 0,
                "spool_dropped": max(0, int(during) - int(before)),
            }
        )
    totals = {k: sum(x[k] for x in rows) for k in TOTALS}
    totals["alerts"] = len(r["alerts.week"])
    totals["hours_with_data"] = sum(x["hours_with_data"] for x in rows)
    return {"sensors": rows, "totals": totals, "baselines": baselines_used(r["alerts.week"])}


def baselines_used(alerts: pd.DataFrame) -> list[dict]:
    """Per sensor, each baseline id its alerts carried, with how many and from when to when: a change of baseline
    during the week shows as two rows (`ntds-aggregator report` adds the version and the note it was promoted
    with)."""
    if not len(alerts):
        return []
    ids = alerts["baseline_id"].fillna("").astype(str)
    frame = alerts.assign(baseline_id=ids)
    rows = []
    for (sensor, baseline_id), mine in frame.groupby(["sensor", "baseline_id"]):
        rows.append({"sensor": sensor, "baseline_id": baseline_id or "(not named: an older sensor)",
                     "alerts": len(mine), "first": iso(mine["time"].min().to_pydatetime(), "auto"),
                     "last": iso(mine["time"].max().to_pydatetime(), "auto"),
                     "version": None, "promoted": "", "promoted_by": "", "note": ""})  # fmt: skip
    rows.sort(key=lambda x: (x["sensor"], x["first"]))
    return rows


def tables(report: dict) -> dict:
    sensors, used = report[KEY]["sensors"], report[KEY]["baselines"]
    return {
        "sensors": (list(sensors[0]) if sensors else ["sensor"], [list(r.values()) for r in sensors]),
        "baselines": (list(used[0]) if used else ["sensor", "baseline_id"], [list(r.values()) for r in used]),
    }


def charts(report: dict, site_country: str) -> dict:
    return {}
