"""Section 7, geography: bytes in and out by the remote host's country, and a world map coloured by the highest
tier seen, with arrows from the site's country."""

from __future__ import annotations

import math

import numpy as np

from aggregator.report.chart_kit import MB, TIER_COLOURS, figure, label, svg
from aggregator.report.query import Query
from aggregator.report.world import country_name, outlines
from ntds.detect.scoring import TIER_LABELS

KEY = "geography"
COLUMNS = ["country", "name", "flows", "bytes_in", "bytes_out", "max_tier"]


def lazy(q: Query) -> dict:
    countries = q.frame("countries")
    aggregate = {"flows": "sum", "bytes_in": "sum", "bytes_out": "sum", "max_tier": "max"}
    return {"countries": countries.groupby("country").agg(aggregate, split_out=1)}


def assemble(q: Query, r: dict) -> list[dict]:
    rows = [
        {
            "country": cc,
            "name": country_name(cc),
            "flows": int(x.flows),
            "bytes_in": int(x.bytes_in),
            "bytes_out": int(x.bytes_out),
            "max_tier": int(x.max_tier),
        }
        for cc, x in r["geography.countries"].iterrows()
    ]
    rows.sort(key=lambda c: (-(c["bytes_in"] + c["bytes_out"]), c["country"]))
    return rows


def tables(report: dict) -> dict:
    return {"countries": (COLUMNS, [[c[h] for h in COLUMNS] for c in report[KEY]])}


def _countries(report: dict, limit: int = 15) -> str:
    rows = report[KEY][:limit][::-1]
    fig, axes = figure(10, 0.8 + 0.3 * max(len(rows), 1))
    ax = axes[0][0]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["bytes_in"] / MB for r in rows], 0.4, color="#1565c0", label="inbound")
    ax.barh(y + 0.2, [r["bytes_out"] / MB for r in rows], 0.4, color="#ef6c00", label="outbound")
    ax.set_yticks(y, [label(f"{r['country']} ({r.get('name', '')})") for r in rows], fontsize=8)
    ax.set_xlabel("MB")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return svg(fig)


def _world_map(report: dict, site_country: str = "") -> str:
    """Countries shaded by the highest tier seen; arrows from the site, width by bytes."""
    from matplotlib.collections import PolyCollection

    world = outlines()
    seen = {r["country"]: r for r in report[KEY]}
    fig, axes = figure(11, 5.2)
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
    return svg(fig)


def charts(report: dict, site_country: str) -> dict:
    return {"map": _world_map(report, site_country), "countries": _countries(report)}
