"""`ntds-aggregator baseline diff CURRENT CANDIDATE`: what a new baseline would change, before it is promoted.

Per entry (application, port class, all traffic): present in both, new, or gone;
its flow count; the typical value of each scoring axis (the scorer's own median,
in the axis's unit) and how far it moved; the tier 3 threshold. An axis whose
typical value moved by more than `SHIFT` times is called out: the candidate
will judge that application's flows differently. Both files are loaded and
validated exactly as a sensor loads them.
"""

from __future__ import annotations

import math
from pathlib import Path

from ntds.detect.baseline import Baseline
from ntds.detect.explain import AXIS_UNITS, AXIS_WORDS, value

SHIFT = 2.0
"""An axis whose typical value moved by more than this factor (either way) is reported as shifted."""


def _typicals(b: Baseline, name: str) -> dict[str, float]:
    """The scorer's typical value per axis (the robust scorer keeps medians on log1p scale)."""
    model = b.doc["applications"][name].get("model", {})
    axes = b.doc.get("axes", [])
    if "log_median" in model:
        return {a: math.expm1(m) for a, m in zip(axes, model["log_median"])}
    metrics = b.doc["applications"][name].get("metrics", {})
    return {a: metrics[a]["median"] for a in axes if a in metrics and metrics[a].get("median") is not None}


def diff(current_path: Path, candidate_path: Path) -> dict:
    cur, cand = Baseline.load(current_path), Baseline.load(candidate_path)
    names_cur, names_cand = set(cur.scorers), set(cand.scorers)
    out: dict = {
        "current": {"id": cur.id, "profile": cur.profile, "entries": len(names_cur)},
        "candidate": {"id": cand.id, "profile": cand.profile, "entries": len(names_cand)},
        "same_profile": cur.profile == cand.profile,
        "same_method": cur.method == cand.method,
        "new": sorted(names_cand - names_cur),
        "gone": sorted(names_cur - names_cand),
        "changed": [],
    }
    for name in sorted(names_cur & names_cand):
        before, after = _typicals(cur, name), _typicals(cand, name)
        axes = []
        for axis in sorted(set(before) & set(after)):
            a, b = before[axis], after[axis]
            factor = (b + 1) / (a + 1)  # +1: axes that are often 0 (a ratio, a variance) stay comparable
            axes.append({"axis": axis, "before": a, "after": b, "factor": factor,
                         "shifted": factor > SHIFT or factor < 1 / SHIFT})  # fmt: skip
        t_before, t_after = cur.tiers[name][2], cand.tiers[name][2]
        out["changed"].append({
            "entry": name, "count_before": cur.counts[name], "count_after": cand.counts[name],
            "tier3_before": t_before, "tier3_after": t_after, "axes": axes,
            "shifted": [x["axis"] for x in axes if x["shifted"]],
        })  # fmt: skip
    return out


def words(d: dict) -> list[str]:
    """The diff as sentences for an operator."""
    lines = [f"current {d['current']['id']} ({d['current']['entries']} entries) -> candidate {d['candidate']['id']} "
             f"({d['candidate']['entries']} entries)"]  # fmt: skip
    if not d["same_profile"]:
        lines.append(f"feature profile changes: {d['current']['profile']} -> {d['candidate']['profile']} "
                     "(sensors of the old profile will refuse it)")  # fmt: skip
    if not d["same_method"]:
        lines.append("scoring method changes: scores are not comparable across the two")
    lines.append(f"new entries ({len(d['new'])}): {', '.join(d['new']) or 'none'}")
    lines.append(f"gone entries ({len(d['gone'])}): {', '.join(d['gone']) or 'none'} (their flows fall back to a port "
                 "class or all traffic)")  # fmt: skip
    moved = [c for c in d["changed"] if c["shifted"]]
    lines.append(f"entries in both: {len(d['changed'])}, with a typical value moved more than {SHIFT:g}x: {len(moved)}")
    for c in moved:
        parts = []
        for x in c["axes"]:
            if x["shifted"]:
                unit = AXIS_UNITS.get(x["axis"], "")
                parts.append(f"{AXIS_WORDS.get(x['axis'], x['axis'])} {value(unit, x['before'])} -> "
                             f"{value(unit, x['after'])}")  # fmt: skip
        lines.append(f"  {c['entry']} ({c['count_before']:,} -> {c['count_after']:,} flows): {'; '.join(parts)}")
    return lines
