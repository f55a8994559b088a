"""Section 4, alerts: scored flows per tier per day, the strongest alerts, the per-host view (hosts by alert
kind, scanners, beacons), tiers per application.

Alerts arrive grouped (a count per alert), so the week's alert table is small:
it is read whole and the per-host views are made from it with pandas. Alerts
an older sensor sent (no kind) count as flow alerts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from aggregator.report.applications import week_split
from aggregator.report.chart_kit import TIER_COLOURS, figure, short_days, svg
from aggregator.report.query import TIER_COLUMNS, Query, ints
from ntds.detect.scoring import TIER_LABELS
from ntds.times import iso
from ntds.wire.schema import TIERS

KEY = "alerts"
RAREST = 20
HOSTS = 20
"""Source hosts listed by alerts started."""
SCAN_KINDS = ("port-scan", "host-sweep")
LISTED = 50
"""Scanners and beacons listed."""
_COLUMNS = ["sensor", "seq", "time", "last_seen", "kind", "signature", "count", "flow_id", "src_ip", "src_port",
            "dst_ip", "dst_port", "protocol", "application", "domain", "baseline", "baseline_id", "score", "tier",
            "tier_label", "explanation"]  # fmt: skip


def lazy(q: Query) -> dict:
    return {"week": q.frame("alerts")[_COLUMNS]}


def _week_alerts(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["kind"] = frame["kind"].fillna("flow")
    frame["signature"] = frame["signature"].fillna("")
    frame["count"] = frame["count"].fillna(1).astype("int64")
    frame["last_seen"] = frame["last_seen"].fillna(frame["time"])
    return frame


def assemble(q: Query, r: dict) -> dict:
    apps, week = r["applications.apps"], _week_alerts(r["alerts.week"])
    alert_count = week.groupby("tier").size()
    per_day = [[0] * 7 for _ in range(TIERS)]
    if len(apps):
        day = apps.index.get_level_values("day")
        by_day = apps[day >= 7].groupby(level="day")[TIER_COLUMNS].sum()
        for d, row in by_day.iterrows():
            for k in range(TIERS):
                per_day[k][int(d) - 7] = int(row[f"tier{k}"])
    _, cur = week_split(apps)
    per_app = [
        {"application": name, "tiers": ints(row[TIER_COLUMNS])}
        for name, row in sorted(cur.iterrows(), key=lambda kv: kv[0])
        if int(row[TIER_COLUMNS].sum())
    ]
    return {
        "flows_per_tier_per_day": per_day,
        "alerts_per_tier": [int(alert_count.get(k, 0)) for k in range(TIERS)],
        "alerts_per_kind": {str(k): int(n) for k, n in sorted(week.groupby("kind").size().items())},
        "rarest": _rarest(week),
        "tiers_per_application": per_app,
        "hosts": _hosts(week),
        "scanners": _scanners(week),
        "beacons": _beacons(week),
    }


RANKING = (["tier", "score", "time", "sensor", "seq"], [False, False, True, True, True])
"""Rarest first; ties by time, then sensor and sequence: never by file order, which differs between an
archive and its mirror from several aggregators."""


def _rarest(week: pd.DataFrame) -> list[dict]:
    top = week.sort_values(RANKING[0], ascending=RANKING[1])
    listed = []
    for a in top.head(RAREST).itertuples(index=False):
        listed.append(
            {
                "sensor": a.sensor,
                "kind": a.kind,
                "signature": a.signature,
                "count": int(a.count),
                "time": iso(a.time.to_pydatetime(), "auto"),
                "last_seen": iso(a.last_seen.to_pydatetime(), "auto"),
                "flow_id": a.flow_id,
                "src_ip": a.src_ip,
                "src_port": int(a.src_port),
                "dst_ip": a.dst_ip,
                "dst_port": int(a.dst_port),
                "protocol": int(a.protocol),
                "application": a.application,
                "score": float(a.score),
                "tier": int(a.tier),
                "tier_label": a.tier_label,
                "explanation": json.loads(a.explanation),
            }
        )
    return listed


def _hosts(week: pd.DataFrame) -> list[dict]:
    """Hosts by the alerts that name them as responsible, per kind and tier, strongest first: a scan is many
    ordinary-looking flows from one host, which a list of single rare flows does not show."""
    rows = []
    for ip, mine in week.groupby("src_ip"):
        if not ip:  # overflow summaries name no host
            continue
        tiers = [int((mine["tier"] == k).sum()) for k in range(TIERS)]
        kinds = {str(k): int(n) for k, n in sorted(mine.groupby("kind").size().items())}
        rows.append({"src_ip": ip, "alerts": len(mine), "max_tier": int(mine["tier"].max()), "tiers": tiers,
                     "kinds": kinds})  # fmt: skip
    rows.sort(key=lambda h: (-h["max_tier"], -h["alerts"], h["src_ip"]))
    return rows[:HOSTS]


def _scanners(week: pd.DataFrame) -> list[dict]:
    """Source hosts of scan alerts: the targets they probed and the most ports (port scans) or hosts (sweeps) one
    alert counted failing."""
    scans = week[week["kind"].isin(SCAN_KINDS)]
    rows = []
    for ip, mine in scans.groupby("src_ip"):
        ports = mine[mine["kind"] == "port-scan"]
        sweeps = mine[mine["kind"] == "host-sweep"]
        rows.append({
            "src_ip": ip, "alerts": len(mine), "max_tier": int(mine["tier"].max()),
            "hosts_scanned": int(ports["dst_ip"].nunique()), "ports_swept": int(sweeps["dst_port"].nunique()),
            "most_ports": int(ports["count"].max()) if len(ports) else 0,
            "most_hosts": int(sweeps["count"].max()) if len(sweeps) else 0,
            "first_seen": iso(mine["time"].min().to_pydatetime(), "auto"),
            "last_seen": iso(mine["last_seen"].max().to_pydatetime(), "auto"),
        })  # fmt: skip
    rows.sort(key=lambda h: (-h["max_tier"], -max(h["most_ports"], h["most_hosts"]), h["src_ip"]))
    return rows[:LISTED]


def _beacons(week: pd.DataFrame) -> list[dict]:
    """Beacon alerts per (client, destination, port): the strongest one's interval, connections and score."""
    beacons = week[week["kind"] == "beacon"]
    rows = []
    for (src, dst, port), mine in beacons.groupby(["src_ip", "dst_ip", "dst_port"]):
        best = mine.sort_values(RANKING[0], ascending=RANKING[1]).iloc[0]
        facts = {e["axis"]: e for e in json.loads(best["explanation"])}
        rows.append({
            "src_ip": src, "dst_ip": dst, "dst_port": int(port), "application": best["application"],
            "tier": int(best["tier"]), "score": float(best["score"]), "connections": int(mine["count"].max()),
            "interval_s": float(facts["interval"]["value"]) if "interval" in facts else None,
            "first_seen": iso(mine["time"].min().to_pydatetime(), "auto"),
            "last_seen": iso(mine["last_seen"].max().to_pydatetime(), "auto"),
        })  # fmt: skip
    rows.sort(key=lambda b: (-b["tier"], -b["score"], b["src_ip"]))
    return rows[:LISTED]


def endpoint(ip: str, port: int) -> str:
    """An address with its port, where a port applies (host-level alerts name hosts, not ports)."""
    return f"{ip}:{port}" if port else ip


def explain(explanation: list[dict]) -> str:
    """One line per alert: what made it an alert, in words with units (numbers for alerts that have no words)."""
    return "; ".join(
        e.get("text") or f"{e['axis']} {e['value']:.4g} (typical {e['typical']:.4g}, score {e['score']:.2f})"
        for e in explanation
    )


def tables(report: dict) -> dict:
    a = report[KEY]
    tiers = [f"tier{k}" for k in range(TIERS)]
    days = report["throughput"]["days"]
    return {
        "tiers_per_day": (
            ["day", *tiers],
            [[d] + [a["flows_per_tier_per_day"][k][i] for k in range(TIERS)] for i, d in enumerate(days)],
        ),
        "rarest_alerts": (
            [
                "tier",
                "score",
                "kind",
                "count",
                "first_seen",
                "last_seen",
                "sensor",
                "application",
                "source",
                "destination",
                "flow_id",
                "signature",
                "explanation",
            ],
            [
                [
                    x["tier"],
                    x["score"],
                    x["kind"],
                    x["count"],
                    x["time"],
                    x["last_seen"],
                    x["sensor"],
                    x["application"],
                    endpoint(x["src_ip"], x["src_port"]),
                    endpoint(x["dst_ip"], x["dst_port"]),
                    x["flow_id"],
                    x["signature"],
                    explain(x["explanation"]),
                ]
                for x in a["rarest"]
            ],
        ),
        "alert_hosts": (
            ["src_ip", "alerts", "max_tier", *tiers, "kinds"],
            [
                [
                    h["src_ip"],
                    h["alerts"],
                    h["max_tier"],
                    *h["tiers"],
                    "; ".join(f"{k} {n}" for k, n in h["kinds"].items()),
                ]
                for h in a["hosts"]
            ],
        ),  # fmt: skip
        "scanners": _columns(SCANNER_COLUMNS, a["scanners"]),
        "beacons": _columns(BEACON_COLUMNS, a["beacons"]),
        "tiers_per_application": (
            ["application", *tiers],
            [[r["application"], *r["tiers"]] for r in a["tiers_per_application"]],
        ),
    }


SCANNER_COLUMNS = ("src_ip", "alerts", "max_tier", "hosts_scanned", "most_ports", "ports_swept", "most_hosts",
                   "first_seen", "last_seen")  # fmt: skip
BEACON_COLUMNS = ("src_ip", "dst_ip", "dst_port", "application", "tier", "score", "connections", "interval_s",
                  "first_seen", "last_seen")  # fmt: skip


def _columns(names: tuple[str, ...], rows: list[dict]) -> tuple[list[str], list[list]]:
    """A CSV table of some fields of each row, in the order named."""
    return list(names), [[x[k] for k in names] for x in rows]


def charts(report: dict, site_country: str) -> dict:
    a = report[KEY]["flows_per_tier_per_day"]
    days = short_days(report["throughput"]["days"])
    fig, axes = figure(10, 3.2)
    ax = axes[0][0]
    x = np.arange(7)
    width = 0.13
    for k, counts in enumerate(a):
        ax.bar(x + (k - 2.5) * width, counts, width, color=TIER_COLOURS[k], label=f"{k}: {TIER_LABELS[k]}")
    if any(any(c) for c in a):
        ax.set_yscale("log")
    ax.set_xticks(x, days)
    ax.set_ylabel("scored flows (log)")
    ax.legend(fontsize=7, ncols=3)
    ax.grid(alpha=0.3, axis="y")
    return {"tiers": svg(fig)}
