"""`ntds-aggregator baseline diff CURRENT CANDIDATE`: what a new baseline would change, before it is promoted.

Per entry (application, port class, all traffic): present in both, new, or gone;
its flow count; the typical value of each scoring axis (the scorer's own median,
in the axis's unit) and how far it moved; the tier 3 threshold. An axis whose
typical value moved by more than `SHIFT` times is called out: the candidate
will judge that application's flows differently. Both files are loaded and
validated exactly as a sensor loads them.

With `--flows` (flow records or captures of a recent week, e.g. the sensor's
own `flow_records_dir` files), both baselines score the same flows and the
diff says how many would reach each tier: the alert rate each would have
produced, per 10,000 scored flows. With `--config aggregator.yaml` the same
is estimated, without any flow file, from the newest week of the sensors'
statistics in the archive (ntds.detect.population: each sampled flow stands
for the flows of its stratum).
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


def rates(baseline: Baseline, apps, metrics, classes) -> dict:
    """Scored flows at each tier or above, and per 10,000 scored flows."""
    tiers = baseline.score(apps, metrics, classes).tier if len(apps) else []
    n = len(apps)
    at_least = [int(sum(1 for t in tiers if t >= k)) for k in range(1, 6)]
    return {"scored": n, "at_least_tier": at_least,
            "per_10000": [round(x * 10_000 / n, 2) if n else 0.0 for x in at_least]}  # fmt: skip


def rates_from_statistics(baseline: Baseline, groups) -> dict:
    """`rates` estimated from the sensors' statistics (each sampled flow weighted by the flows it stands for)."""
    from aggregator.baseline_learn import sampled_tiers

    tier, _, weight = sampled_tiers(baseline, groups)
    n = float(weight.sum())
    at_least = [float(weight[tier >= k].sum()) for k in range(1, 6)]
    return {"scored": round(n), "at_least_tier": [round(x) for x in at_least],
            "per_10000": [round(x * 10_000 / n, 2) if n else 0.0 for x in at_least]}  # fmt: skip


def diff(current_path: Path, candidate_path: Path, flows: list[Path] | None = None, archive=None) -> dict:
    """The comparison; with `flows`, both score those flow records; with `archive`, both are estimated on the
    newest week of the sensors' statistics in it."""
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
    if flows:
        from aggregator.baseline_build import collect, local_networks

        got = collect(flows, cur.profile, local_networks(None), False, False)
        out["flows"] = {"inputs": [str(f) for f in flows], "current": rates(cur, got.apps, got.metrics, got.classes),
                        "candidate": rates(cand, got.apps, got.metrics, got.classes)}  # fmt: skip
    if archive is not None:
        from datetime import timedelta

        from aggregator.baseline_learn import newest_day, read_groups
        from ntds.errors import InputError

        last = newest_day(archive, None)
        if last is None:
            raise InputError("the archive holds no statistics yet (sensors send them every stats_interval_s)")
        first = last - timedelta(days=6)
        groups, sensors = read_groups(archive, first, last, None)
        out["statistics"] = {"days": [first.isoformat(), last.isoformat()], "sensors": sensors,
                             "current": rates_from_statistics(cur, groups),
                             "candidate": rates_from_statistics(cand, groups)}  # fmt: skip
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
    if "flows" in d:
        cur, cand = d["flows"]["current"], d["flows"]["candidate"]
        lines.append(f"on {cur['scored']:,} scored flows of {', '.join(d['flows']['inputs'])}, per 10,000 at tier "
                     "1+ .. 5+:")  # fmt: skip
        lines.append(f"  current:   {' / '.join(f'{x:g}' for x in cur['per_10000'])}")
        lines.append(f"  candidate: {' / '.join(f'{x:g}' for x in cand['per_10000'])}")
    if "statistics" in d:
        st = d["statistics"]
        cur, cand = st["current"], st["candidate"]
        lines.append(f"on about {cur['scored']:,} scored flows of {', '.join(st['sensors'])}, {st['days'][0]}.."
                     f"{st['days'][1]} (estimated from their statistics), per 10,000 at tier 1+ .. 5+:")  # fmt: skip
        lines.append(f"  current:   {' / '.join(f'{x:g}' for x in cur['per_10000'])}")
        lines.append(f"  candidate: {' / '.join(f'{x:g}' for x in cand['per_10000'])}")
    return lines
