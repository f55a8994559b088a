"""The weekly report's charts, drawn from `report.json` numbers as inline SVG strings.

Every chart takes the report dict (never the archive), so the HTML shows
exactly the numbers in report.json. SVG keeps the page one self-contained file
that opens offline: no scripts, no fonts or images fetched. The world map
draws country outlines from `aggregator.report.world`.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from matplotlib.figure import Figure

from aggregator.baseline_plots import TIER_COLOURS
from aggregator.report.world import outlines
from ntds.detect.scoring import TIER_LABELS

MB = 1e6
CLASS_COLOURS = {"external": "#1565c0", "local_service": "#00897b", "peer_to_peer": "#f4511e"}
KIND_COLOURS = {"ssdp_no_answer": "#8e24aa", "p2p_one_way": "#f4511e", "unanswered": "#546e7a"}
_RC = {"svg.fonttype": "none", "svg.hashsalt": "ntds", "font.size": 9}


def _svg(fig: Figure) -> str:
    import matplotlib

    with matplotlib.rc_context(_RC):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)


def _figure(w: float, h: float, rows: int = 1, cols: int = 1):
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(w, h))
        axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _short_days(days: list[str]) -> list[str]:
    from datetime import date

    return [date.fromisoformat(d).strftime("%a %d") for d in days]


def throughput(report: dict, span: str) -> str:
    """Stacked areas, up and down, per traffic class; span is "daily" or "weekly"."""
    t = report["throughput"]
    labels = _short_days(t["days"]) if span == "daily" else [w[5:] for w in t["weeks"]]
    fig, axes = _figure(10, 3.2, 1, 2)
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
    return _svg(fig)


def tiers_per_day(report: dict) -> str:
    a = report["alerts"]["flows_per_tier_per_day"]
    days = _short_days(report["throughput"]["days"])
    fig, axes = _figure(10, 3.2)
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
    return _svg(fig)


def unanswered(report: dict) -> str:
    u = report["unanswered"]
    fig, axes = _figure(10, 3)
    ax = axes[0][0]
    x = np.arange(7)
    bottom = np.zeros(7)
    for kind, series in u["kinds"].items():
        ax.bar(x, series["flows"], bottom=bottom, color=KIND_COLOURS[kind], label=kind.replace("_", " "))
        bottom += series["flows"]
    ax.set_xticks(x, _short_days(u["days"]))
    ax.set_ylabel("flows")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _svg(fig)


def pair_heatmap(report: dict, limit: int = 30) -> str:
    """Hosts on both axes; colour = average bytes per active day, size = total bytes, label = active days."""
    pairs = report["peer_to_peer"]["pairs"][:limit]
    hosts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs}, key=_ip_key)
    n = max(len(hosts), 1)
    fig, axes = _figure(min(2 + 0.45 * n, 11), min(1.6 + 0.4 * n, 9))
    ax = axes[0][0]
    if not pairs:
        ax.text(0.5, 0.5, "no peer-to-peer traffic this week", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _svg(fig)
    idx = {h: i for i, h in enumerate(hosts)}
    xs = [idx[p["a"]] for p in pairs]
    ys = [idx[p["b"]] for p in pairs]
    avg = np.log10(1 + np.array([p["bytes_per_active_day"] for p in pairs]))
    total = np.array([p["bytes"] for p in pairs], dtype=float)
    sizes = 80 + 900 * np.sqrt(total / total.max()) if total.max() > 0 else np.full(len(pairs), 80.0)
    sc = ax.scatter(xs, ys, s=sizes, c=avg, cmap="viridis", edgecolors="black", linewidths=0.4)
    for x, y, p in zip(xs, ys, pairs, strict=True):
        ax.annotate(str(p["active_days"]), (x, y), ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(n), hosts, rotation=60, fontsize=7)
    ax.set_yticks(range(n), hosts, fontsize=7)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(alpha=0.2)
    fig.colorbar(sc, ax=ax, label="log10(1 + bytes per active day)")
    return _svg(fig)


def countries(report: dict, limit: int = 15) -> str:
    rows = report["geography"][:limit][::-1]
    fig, axes = _figure(10, 0.8 + 0.3 * max(len(rows), 1))
    ax = axes[0][0]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["bytes_in"] / MB for r in rows], 0.4, color="#1565c0", label="inbound")
    ax.barh(y + 0.2, [r["bytes_out"] / MB for r in rows], 0.4, color="#ef6c00", label="outbound")
    ax.set_yticks(y, [f"{r['country']} ({r.get('name', '')})" for r in rows], fontsize=8)
    ax.set_xlabel("MB")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def world_map(report: dict, site_country: str = "") -> str:
    """Countries shaded by the highest tier seen; arrows from the site, width by bytes."""
    from matplotlib.collections import PolyCollection

    world = outlines()
    seen = {r["country"]: r for r in report["geography"]}
    fig, axes = _figure(11, 5.2)
    ax = axes[0][0]
    polys, colours = [], []
    for code, (rings, _, _) in world.items():
        row = seen.get(code)
        colour = TIER_COLOURS[row["max_tier"]] if row else "#eceff1"
        for ring in rings:
            polys.append(ring)
            colours.append(colour)
    ax.add_collection(PolyCollection(polys, facecolors=colours, edgecolors="#90a4ae", linewidths=0.2))
    origin = world.get(site_country, (None, None, None))[1]
    top = max((r["bytes_in"] + r["bytes_out"] for r in seen.values()), default=0)
    if origin and top:
        for code, row in seen.items():
            centre = world.get(code, (None, None, None))[1]
            if not centre or code == site_country:
                continue
            width = 0.5 + 4 * math.sqrt((row["bytes_in"] + row["bytes_out"]) / top)
            ax.annotate(
                "",
                xy=(centre[1], centre[0]),
                xytext=(origin[1], origin[0]),
                arrowprops={
                    "arrowstyle": "-|>",
                    "color": TIER_COLOURS[row["max_tier"]],
                    "lw": width,
                    "connectionstyle": "arc3,rad=0.2",
                    "alpha": 0.8,
                },
            )
        ax.plot([origin[1]], [origin[0]], "k*", markersize=10)
    for k in range(len(TIER_COLOURS)):
        ax.plot([], [], "s", color=TIER_COLOURS[k], label=f"{k}: {TIER_LABELS[k]}")
    ax.legend(loc="lower left", fontsize=7, title="highest tier", title_fontsize=7)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return _svg(fig)


def _ip_key(ip: str):
    import ipaddress

    try:
        a = ipaddress.ip_address(ip)
        return (a.version, int(a))
    except ValueError:
        return (9, 0)
