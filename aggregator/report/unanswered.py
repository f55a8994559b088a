"""Section 5, unanswered traffic: SSDP searches, one-way peer-to-peer attempts and the rest, per day."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from aggregator.report.chart_kit import figure, short_days, svg
from aggregator.report.query import Query, day_index
from ntds.wire.schema import UNANSWERED_KINDS

KEY = "unanswered"
KIND_COLOURS = {"ssdp_no_answer": "#8e24aa", "p2p_one_way": "#f4511e", "unanswered": "#546e7a"}


def lazy(q: Query) -> dict:
    unanswered = q.frame("unanswered")
    unanswered = unanswered.assign(day=day_index(unanswered.interval_start, q.first))
    return {"per_day": unanswered.groupby(["day", "kind"])[["flows", "bytes"]].sum(split_out=1)}


def assemble(q: Query, r: dict) -> dict:
    return _per_day(q.week.days, r["unanswered.per_day"])


def _per_day(days: list[date], table: pd.DataFrame) -> dict:
    out = {k: {"flows": [0] * 7, "bytes": [0] * 7} for k in UNANSWERED_KINDS}
    for (d, kind), row in table.iterrows():
        if kind in out and 0 <= d < 7:
            out[kind]["flows"][d] += int(row.flows)
            out[kind]["bytes"][d] += int(row.bytes)
    return {"days": [d.isoformat() for d in days], "kinds": out}


def tables(report: dict) -> dict:
    u = report[KEY]
    return {
        "unanswered": (
            ["day"] + [f"{k}_{m}" for k in u["kinds"] for m in ("flows", "bytes")],
            [[d] + [v[m][i] for v in u["kinds"].values() for m in ("flows", "bytes")] for i, d in enumerate(u["days"])],
        )
    }


def charts(report: dict, site_country: str) -> dict:
    u = report[KEY]
    fig, axes = figure(10, 3)
    ax = axes[0][0]
    x = np.arange(7)
    bottom = np.zeros(7)
    for kind, series in u["kinds"].items():
        ax.bar(x, series["flows"], bottom=bottom, color=KIND_COLOURS[kind], label=kind.replace("_", " "))
        bottom += series["flows"]
    ax.set_xticks(x, short_days(u["days"]))
    ax.set_ylabel("flows")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return {"unanswered": svg(fig)}
