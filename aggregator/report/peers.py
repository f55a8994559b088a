"""Section 6, peer-to-peer: host pairs inside the site, two-way against one-way, and the pair heatmap."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aggregator.report.chart_kit import figure, ip_key, label, svg
from aggregator.report.query import Query, day_index

KEY = "peer_to_peer"
COLUMNS = [
    "a",
    "b",
    "flows",
    "two_way",
    "one_way",
    "bytes_ab",
    "bytes_ba",
    "bytes",
    "active_days",
    "bytes_per_active_day",
]


def lazy(q: Query) -> dict:
    pairs = q.frame("peer_pairs")
    pairs = pairs.assign(day=day_index(pairs.interval_start, q.first))
    columns = ["flows", "two_way", "one_way", "bytes_ab", "bytes_ba"]
    return {
        "pairs": pairs.groupby(["a", "b", "day"])[columns].sum(split_out=1),
        "omitted": q.frame("summaries")[["pairs_omitted_flows", "pairs_omitted_bytes"]].sum(),
    }


def assemble(q: Query, r: dict) -> dict:
    table: pd.DataFrame = r["peer_to_peer.pairs"]
    pairs = []
    if len(table):
        for (a, b), sub in table.groupby(level=["a", "b"]):
            total_ab, total_ba = int(sub.bytes_ab.sum()), int(sub.bytes_ba.sum())
            active = int(((sub.flows > 0) | (sub.bytes_ab + sub.bytes_ba > 0)).sum())
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "flows": int(sub.flows.sum()),
                    "two_way": int(sub.two_way.sum()),
                    "one_way": int(sub.one_way.sum()),
                    "bytes_ab": total_ab,
                    "bytes_ba": total_ba,
                    "bytes": total_ab + total_ba,
                    "active_days": active,
                    "bytes_per_active_day": round((total_ab + total_ba) / active, 3) if active else 0.0,
                }
            )
    pairs.sort(key=lambda p: (-p["bytes"], p["a"], p["b"]))
    omitted = r["peer_to_peer.omitted"]
    return {
        "pairs": pairs,
        "two_way": sum(p["two_way"] for p in pairs),
        "one_way": sum(p["one_way"] for p in pairs),
        "omitted": {k: int(omitted[f"pairs_omitted_{k}"]) for k in ("flows", "bytes")},
    }


def tables(report: dict) -> dict:
    return {"peer_pairs": (COLUMNS, [[p[h] for h in COLUMNS] for p in report[KEY]["pairs"]])}


def charts(report: dict, site_country: str, limit: int = 30) -> dict:
    """Hosts on both axes; colour = average bytes per active day, size = total bytes, label = active days."""
    pairs = report[KEY]["pairs"][:limit]
    hosts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs}, key=ip_key)
    n = max(len(hosts), 1)
    fig, axes = figure(min(2 + 0.45 * n, 11), min(1.6 + 0.4 * n, 9))
    ax = axes[0][0]
    if not pairs:
        ax.text(0.5, 0.5, "no peer-to-peer traffic this week", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return {"pairs": svg(fig)}
    idx = {h: i for i, h in enumerate(hosts)}
    xs = [idx[p["a"]] for p in pairs]
    ys = [idx[p["b"]] for p in pairs]
    avg = np.log10(1 + np.array([p["bytes_per_active_day"] for p in pairs]))
    total = np.array([p["bytes"] for p in pairs], dtype=float)
    sizes = 80 + 900 * np.sqrt(total / total.max()) if total.max() > 0 else np.full(len(pairs), 80.0)
    sc = ax.scatter(xs, ys, s=sizes, c=avg, cmap="viridis", edgecolors="black", linewidths=0.4)
    for x, y, p in zip(xs, ys, pairs, strict=True):
        ax.annotate(str(p["active_days"]), (x, y), ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(n), [label(h) for h in hosts], rotation=60, fontsize=7)
    ax.set_yticks(range(n), [label(h) for h in hosts], fontsize=7)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(alpha=0.2)
    fig.colorbar(sc, ax=ax, label="log10(1 + bytes per active day)")
    return {"pairs": svg(fig)}
