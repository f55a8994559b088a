"""Section 2, throughput: bytes up and down per traffic class, per day this week and per week over 12 weeks."""

from __future__ import annotations

import numpy as np

from aggregator.report.chart_kit import CLASS_COLOURS, MB, figure, short_days, svg
from aggregator.report.query import HISTORY_WEEKS, Query, day_index
from ntds.wire.schema import TRAFFIC_CLASSES

KEY = "throughput"
REPORTED_CLASSES = ("external", "local_service", "peer_to_peer")
"""The classes the report charts; "other" (multicast, no local host) is only in the totals."""


def lazy(q: Query) -> dict:
    traffic = q.frame("traffic", q.history_first)
    traffic = traffic.assign(day=day_index(traffic.interval_start, q.history_first))
    columns = ["bytes_up", "bytes_down", "packets_up", "packets_down"]
    return {"traffic": traffic.groupby(["day", "class"])[columns].sum(split_out=1)}


def assemble(q: Query, r: dict) -> dict:
    traffic = r["throughput.traffic"]
    week = q.week
    offset = (week.first - q.history_first).days
    daily: dict = {}
    weekly: dict = {}
    for cls in REPORTED_CLASSES:
        daily[cls], weekly[cls] = {}, {}
        for col in ("bytes_up", "bytes_down"):
            per_day = [0] * (7 * HISTORY_WEEKS)
            if len(traffic):
                sub = traffic.xs(cls, level="class") if cls in traffic.index.get_level_values("class") else None
                if sub is not None:
                    for d, v in sub[col].items():
                        if 0 <= d < len(per_day):
                            per_day[d] += int(v)
            daily[cls][col] = per_day[offset : offset + 7]
            weekly[cls][col] = [sum(per_day[i : i + 7]) for i in range(0, 7 * HISTORY_WEEKS, 7)]
    return {
        "days": [d.isoformat() for d in week.days],
        "daily": daily,
        "weeks": [str(week.shifted(i - HISTORY_WEEKS + 1)) for i in range(HISTORY_WEEKS)],
        "weekly": weekly,
        "classes": list(REPORTED_CLASSES),
        "all_classes": list(TRAFFIC_CLASSES),
    }


def tables(report: dict) -> dict:
    t = report[KEY]
    header = ["day"] + [f"{c}_{col}" for c in t["classes"] for col in ("bytes_up", "bytes_down")]

    def row(span: str, i: int) -> list:
        return [t[span][c][col][i] for c in t["classes"] for col in ("bytes_up", "bytes_down")]

    return {
        "throughput_daily": (header, [[d, *row("daily", i)] for i, d in enumerate(t["days"])]),
        "throughput_weekly": (["week", *header[1:]], [[w, *row("weekly", i)] for i, w in enumerate(t["weeks"])]),
    }


def _chart(report: dict, span: str) -> str:
    """Stacked areas, up and down, per traffic class; span is "daily" or "weekly"."""
    t = report[KEY]
    labels = short_days(t["days"]) if span == "daily" else [w[5:] for w in t["weeks"]]
    fig, axes = figure(10, 3.2, 1, 2)
    x = np.arange(len(labels))
    for ax, col, title in zip(axes[0], ("bytes_up", "bytes_down"), ("up (from local clients)", "down"), strict=True):
        ys = [np.array(t[span][c][col]) / MB for c in t["classes"]]
        ax.stackplot(x, ys, labels=[c.replace("_", " ") for c in t["classes"]], colors=list(CLASS_COLOURS.values()))
        ax.set_xticks(x, labels, rotation=45 if span == "weekly" else 0)
        ax.set_title(title)
        ax.set_ylabel("MB")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    return svg(fig)


def charts(report: dict, site_country: str) -> dict:
    return {"daily": _chart(report, "daily"), "weekly": _chart(report, "weekly")}
