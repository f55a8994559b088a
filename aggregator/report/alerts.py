"""Section 4, alerts: scored flows per tier per day, the rarest alerts, the hosts that started alerts, tiers per
application."""

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


def lazy(q: Query) -> dict:
    alerts = q.frame("alerts")
    return {
        "rarest": alerts.nlargest(RAREST, ["tier", "score"]),
        "count": alerts.groupby("tier").size(split_out=1),
        "hosts": alerts.groupby(["src_ip", "tier"]).size(split_out=1),
    }


def assemble(q: Query, r: dict) -> dict:
    apps, alert_count = r["applications.apps"], r["alerts.count"]
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
        "rarest": _rarest(r["alerts.rarest"]),
        "tiers_per_application": per_app,
        "hosts": _hosts(r["alerts.hosts"]),
    }


def _rarest(rarest: pd.DataFrame) -> list[dict]:
    top = rarest.sort_values(["tier", "score", "time", "sensor", "seq"], ascending=[False, False, True, True, True])
    listed = []
    for a in top.head(RAREST).itertuples(index=False):
        listed.append(
            {
                "sensor": a.sensor,
                "time": iso(a.time.to_pydatetime(), "auto"),
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


def _hosts(counts: pd.Series) -> list[dict]:
    """Source hosts by the alerts they started, rarest tier first: a scan is many ordinary-looking
    flows from one host, which a list of single rare flows does not show."""
    hosts: dict[str, list[int]] = {}
    for (ip, tier), n in counts.items():
        hosts.setdefault(ip, [0] * TIERS)[int(tier)] += int(n)
    rows = [{"src_ip": ip, "alerts": sum(t), "max_tier": max(k for k in range(TIERS) if t[k]), "tiers": t}
            for ip, t in hosts.items()]  # fmt: skip
    rows.sort(key=lambda h: (-h["max_tier"], -h["alerts"], h["src_ip"]))
    return rows[:HOSTS]


def explain(explanation: list[dict]) -> str:
    """One line per alert: which radar axes were unusual, and how far from typical."""
    return "; ".join(
        f"{e['axis']} {e['value']:.4g} (typical {e['typical']:.4g}, score {e['score']:.2f})" for e in explanation
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
            ["tier", "score", "time", "sensor", "application", "source", "destination", "flow_id", "explanation"],
            [
                [
                    x["tier"],
                    x["score"],
                    x["time"],
                    x["sensor"],
                    x["application"],
                    f"{x['src_ip']}:{x['src_port']}",
                    f"{x['dst_ip']}:{x['dst_port']}",
                    x["flow_id"],
                    explain(x["explanation"]),
                ]
                for x in a["rarest"]
            ],
        ),
        "alert_hosts": (
            ["src_ip", "alerts", "max_tier", *tiers],
            [[h["src_ip"], h["alerts"], h["max_tier"], *h["tiers"]] for h in a["hosts"]],
        ),
        "tiers_per_application": (
            ["application", *tiers],
            [[r["application"], *r["tiers"]] for r in a["tiers_per_application"]],
        ),
    }


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
