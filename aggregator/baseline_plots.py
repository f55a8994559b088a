"""`ntds-aggregator baseline plots`: the notebook's figures, from a baseline (or flows).

Per application: the 3x3 log-count histograms of the nine population metrics,
the radar plot of per-axis scores coloured by rarity tier, and one text table of
the median of every metric per application. The baseline carries what the
figures need (histograms over log10(1 + value), and a sample of per-axis scores
with the rarest flows first), so plots never need the original traffic.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ntds.detect.baseline import ALL_TRAFFIC, HISTOGRAM_EDGES, METRICS
from ntds.detect.scoring import AXES, TIER_LABELS

TIER_COLOURS = ("#9e9e9e", "#2e7d32", "#f9a825", "#ef6c00", "#c62828", "#6a1b9a")


def _safe(name: str) -> str:
    return "all-traffic" if name == ALL_TRAFFIC else re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def histograms(name: str, entry: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    centres = (HISTOGRAM_EDGES[:-1] + HISTOGRAM_EDGES[1:]) / 2
    width = HISTOGRAM_EDGES[1] - HISTOGRAM_EDGES[0]
    for ax, metric in zip(axes.flat, METRICS):
        counts = np.array(entry["metrics"][metric]["histogram"])
        ax.bar(centres, counts, width=width, color="#1565c0")
        if counts.any():
            ax.set_yscale("log")
            hi = centres[np.flatnonzero(counts)[-1]] + width
            ax.set_xlim(0, max(hi, 1.0))
        ax.set_title(metric)
        ax.set_xlabel("log10(1 + value)")
        ax.set_ylabel("flows")
    fig.suptitle(f"{name}: population metrics of {entry['count']} flows")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def radar(name: str, entry: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    sample = np.array(entry["radar_sample"], dtype=float)
    theta = np.linspace(0, 2 * np.pi, len(AXES), endpoint=False)
    closed = np.concatenate([theta, theta[:1]])
    fig = plt.figure(figsize=(9, 9))
    ax = fig.add_subplot(111, polar=True)
    seen = set()
    # common flows first, so the rare ones are drawn on top
    for row in sample[np.argsort(sample[:, -1], kind="stable")] if len(sample) else []:
        tier = int(row[-1])
        values = np.concatenate([row[:-1], row[:1]])
        label = TIER_LABELS[tier] if tier not in seen else None
        seen.add(tier)
        ax.plot(closed, values, color=TIER_COLOURS[tier], alpha=0.35 if tier == 0 else 0.8, lw=1, label=label)
    ax.set_xticks(theta)
    ax.set_xticklabels(AXES)
    ax.set_title(f"{name}: per-axis scores of {len(sample)} flows by rarity tier", pad=20)
    if seen:
        ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.1), fontsize=9)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def metrics_table(doc: dict) -> str:
    """Median of every metric per application, the notebook's table, in ranking order."""
    names = [r["application"] for r in doc["ranking"] if r["application"] in doc["applications"]] + [ALL_TRAFFIC]
    head = f"{'ProtocolName':<24}{'count':>9}" + "".join(f"{m:>14}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for name in names:
        e = doc["applications"][name]
        cells = []
        for m in METRICS:
            v = e["metrics"][m]["median"]
            cells.append(f"{'-':>14}" if v is None else f"{v:>14.6g}")
        lines.append(f"{name:<24}{e['count']:>9}" + "".join(cells))
    return "\n".join(lines) + "\n"


def plot_all(doc: dict, outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, entry in doc["applications"].items():
        h = outdir / f"{_safe(name)}_histograms.png"
        r = outdir / f"{_safe(name)}_radar.png"
        histograms(name, entry, h)
        radar(name, entry, r)
        written += [h, r]
    table = outdir / "metrics.txt"
    table.write_text(metrics_table(doc), encoding="utf-8")
    written.append(table)
    return written
