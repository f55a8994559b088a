"""`ntds-aggregator baseline learn`: a candidate baseline from what the sensors saw, without their flows.

Input: the `stats` messages in the archive (tables population_histograms and
population_samples; ntds.detect.population says what they hold), over the last
`--weeks` weeks of data up to `--until` (default: the newest day that holds
statistics), from every sensor or those named with `--sensor`. One aggregator
serves one site and pushes one baseline to all its sensors, so by default the
candidate is the site's baseline, learned from every sensor; `--sensor` learns
from some only (a site with one odd tap, or a test).

Per (application, port class), histograms are added and samples pooled; the
fallback chain decides the entries exactly as `baseline build` does from the
flows (ntds.detect.baseline.plan); each entry's scorer is fitted from its axes'
histograms and its tier thresholds are read off the pooled, weighted sample.
The file has the same format and passes the same validation as one built from
flows.

Checks (`checks`), recorded with the version when it is promoted; with
`--promote` (or `auto_promote: true` in aggregator.yaml) the candidate is
promoted only when all of them pass:

- enough_flows: the candidate learned from at least MIN_FLOWS scorable flows.
- calibration: the newest week of the span (the newest quarter of a span under
  two weeks) is held out: the candidate is learned from the rest, and the held-out
  week's samples, scored by it, must reach tiers 1, 2 and 3 at 1/2 to 2x their
  nominal rate (1 in 10, 100, 1000), counting only entries that can claim the
  tier; a tier with too few held-out flows to tell (under 20 expected) is
  reported as unchecked, and tier 1 must be checked.
- alert_rate: on the held-out week the candidate puts at most twice as many
  flows at tier 3 or above as the active baseline does (plus 1 in 10,000).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ntds.detect.baseline import (
    AXIS_INDEX,
    METRICS,
    Baseline,
    _class_key,
    document,
    entry_document,
    plan,
    validate,
)
from ntds.detect.population import MAX_TIER, N_BINS, Histogram, decode_axes
from ntds.detect.scoring import AXES, make_scorer
from ntds.errors import InputError

MIN_FLOWS = 10_000
"""Scorable flows a candidate must have learned from to be promoted automatically."""
CALIBRATION_FACTOR = 2.0
MIN_EXPECTED = 20
"""A held-out tier is checked only where at least this many flows are expected above it."""
ALERT_TIER = 3
HIST_COLUMNS = ["sensor", "interval_start", "application", "port_class", "metric", "first_bin", "bins",
                "non_finite", "sum", "sum_sq", "min", "max"]  # fmt: skip
SAMPLE_COLUMNS = ["sensor", "interval_start", "application", "port_class", "flows", "seen", "tiers", "axes"]


@dataclass
class Groups:
    """The statistics of a span, added up per (application, port class)."""

    apps: np.ndarray
    port_classes: np.ndarray
    flows: np.ndarray
    counts: np.ndarray
    """(groups, 9, N_BINS) histogram counts."""
    moments: np.ndarray
    """(groups, 9, 3): non-finite count, sum, sum of squares."""
    low: np.ndarray
    high: np.ndarray
    sample_group: np.ndarray
    """Which group each pooled sampled flow belongs to."""
    sample_axes: np.ndarray
    sample_weight: np.ndarray

    @property
    def empty(self) -> bool:
        return int(self.flows.sum()) == 0

    def histograms(self, mask: np.ndarray) -> list[Histogram]:
        """The nine metrics' histograms of the groups in `mask`, added."""
        out = []
        for j in range(len(METRICS)):
            h = Histogram(self.counts[mask, j].sum(axis=0))
            h.non_finite = int(self.moments[mask, j, 0].sum())
            h.total, h.total_sq = float(self.moments[mask, j, 1].sum()), float(self.moments[mask, j, 2].sum())
            h.low, h.high = float(self.low[mask, j].min()), float(self.high[mask, j].max())
            out.append(h)
        return out

    def sample(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group of each sampled flow, axes, how many flows each stands for) of the groups in `mask`."""
        keep = mask[self.sample_group]
        return self.sample_group[keep], self.sample_axes[keep], self.sample_weight[keep]


def _read(files: list[str], columns: list[str]) -> pa.Table:
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables) if tables else None


def _lists(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, row of each value, offset of each row's first value) of a list column."""
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    offsets = offsets - offsets[0]
    values = arr.flatten().to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    return values, np.repeat(np.arange(len(lengths)), lengths), offsets[:-1]


def group_stats(hist: pa.Table | None, samples: pa.Table | None) -> Groups:
    """Add up histogram rows and pool sample rows per (application, port class)."""
    keys: dict[tuple[str, str], int] = {}

    def index(t: pa.Table) -> np.ndarray:
        pairs = zip(t["application"].to_pylist(), t["port_class"].to_pylist())
        return np.array([keys.setdefault(k, len(keys)) for k in pairs], dtype=np.int64)

    h_group = index(hist) if hist is not None else np.empty(0, dtype=np.int64)
    s_group = index(samples) if samples is not None else np.empty(0, dtype=np.int64)
    g = len(keys)
    m = len(METRICS)
    counts = np.zeros((g, m, N_BINS), dtype=np.int64)
    moments = np.zeros((g, m, 3))
    low = np.full((g, m), np.inf)
    high = np.full((g, m), -np.inf)
    if hist is not None and len(hist):
        metric_of = {name: j for j, name in enumerate(METRICS)}
        metric = np.array([metric_of[x] for x in hist["metric"].to_pylist()], dtype=np.int64)
        base = (h_group * m + metric) * N_BINS + hist["first_bin"].to_numpy()
        values, row, starts = _lists(hist["bins"])
        flat = base[row] + np.arange(len(values)) - starts[row]
        counts += np.bincount(flat, weights=values, minlength=g * m * N_BINS).astype(np.int64).reshape(g, m, N_BINS)
        cell = h_group * m + metric
        for k, col in enumerate(("non_finite", "sum", "sum_sq")):
            moments.reshape(-1, 3)[:, k] += np.bincount(cell, weights=hist[col].to_numpy().astype(float),
                                                        minlength=g * m)  # fmt: skip
        has = np.bincount(row, minlength=len(hist)) > 0
        np.minimum.at(low.reshape(-1), cell[has], hist["min"].to_numpy()[has])
        np.maximum.at(high.reshape(-1), cell[has], hist["max"].to_numpy()[has])
    flows = np.zeros(g, dtype=np.int64)
    sample_group = np.empty(0, dtype=np.int64)
    sample_axes = np.empty((0, len(AXES)))
    sample_weight = np.empty(0)
    if samples is not None and len(samples):
        np.add.at(flows, s_group, samples["flows"].to_numpy())
        tiers, row, _ = _lists(samples["tiers"])
        tiers = tiers.astype(np.int64)
        seen = _lists(samples["seen"])[0].astype(float).reshape(-1, MAX_TIER + 1)
        cell = row * (MAX_TIER + 1) + tiers
        kept = np.bincount(cell, minlength=len(samples) * (MAX_TIER + 1))
        sample_group = s_group[row]
        sample_axes = decode_axes(_lists(samples["axes"])[0])
        sample_weight = seen.reshape(-1)[cell] / kept[cell]
    names = list(keys)
    return Groups(
        np.array([a for a, _ in names], dtype=object), np.array([p for _, p in names], dtype=object), flows, counts,
        moments, low, high, sample_group, sample_axes, sample_weight,
    )  # fmt: skip


def _class_keys(port_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Port class keys of the groups, and which groups have none (a sensor's overflow group, or a name that
    does not parse: only the all-traffic entry learns from those)."""
    keys = np.full(len(port_classes), -1, dtype=np.int64)
    for i, name in enumerate(port_classes):
        with contextlib.suppress(ValueError, IndexError):
            keys[i] = _class_key(name)
    return keys, keys < 0


def candidate(groups: Groups, *, min_count: int, feature_profile: str, inputs: list[str], extra_meta: dict,
              method: str = "robust") -> dict:  # fmt: skip
    """The baseline document learned from `groups` (validated as a sensor validates it)."""
    if groups.empty:
        raise InputError("no statistics to learn from in that span (sensors send them every stats_interval_s)")
    classes, unattributed = _class_keys(groups.port_classes)
    entries: dict[str, dict] = {}
    combine = make_scorer(method).combine
    for name, mask, judges in plan(groups.apps, classes, groups.flows, min_count, unattributed):
        hists = groups.histograms(mask)
        scorer = make_scorer(method).fit_histograms([hists[i] for i in AXIS_INDEX])
        _, axes, weight = groups.sample(mask)
        if len(axes) == 0:
            raise InputError(f"entry {name!r}: statistics without sampled flows (damaged archive?)")
        scores, per_axis = scorer.score_many(axes)
        stats = {m: {**h.summary(), "histogram": h.coarse(25)} for m, h in zip(METRICS, hists)}
        entries[name] = entry_document(int(groups.flows[mask].sum()), judges, stats, scorer, scores, per_axis, weight)
    ranked: dict[str, int] = {}
    for app, n in zip(groups.apps, groups.flows):
        ranked[app] = ranked.get(app, 0) + int(n)
    ranked = {k: v for k, v in ranked.items() if v > 0}
    doc = document(entries, method=method, combine=combine, min_count=min_count, feature_profile=feature_profile,
                   flows=int(groups.flows.sum()), ranked=ranked, applications=len(ranked), inputs=inputs,
                   extra_meta=extra_meta)  # fmt: skip
    validate(doc)
    return doc


# -- reading the archive --------------------------------------------------------------


@dataclass
class Span:
    first: date
    last: date
    held_out_from: date | None
    """The first held-out day (None: nothing held out)."""


def newest_day(archive, sensors: list[str] | None) -> date | None:
    root = Path(archive.root) / "population_samples"
    days = sorted(p.name[4:] for p in root.glob("day=*")) if root.is_dir() else []
    for d in reversed(days):
        if archive.files("population_samples", date.fromisoformat(d), date.fromisoformat(d), sensors):
            return date.fromisoformat(d)
    return None


def span(last: date, weeks: int) -> Span:
    first = last - timedelta(days=7 * weeks - 1)
    days = 7 * weeks
    held = 7 if days >= 14 else max(1, days // 4)
    return Span(first, last, last - timedelta(days=held - 1))


def read_groups(archive, first: date, last: date, sensors: list[str] | None) -> tuple[Groups, list[str]]:
    """The statistics of days first..last (inclusive) and the sensors they came from."""
    with archive.reading():
        hist = _read(archive.files("population_histograms", first, last, sensors), HIST_COLUMNS)
        samples = _read(archive.files("population_samples", first, last, sensors), SAMPLE_COLUMNS)
    names = sorted(set(samples["sensor"].to_pylist())) if samples is not None else []
    return group_stats(hist, samples), names


# -- checks ---------------------------------------------------------------------------


def sampled_tiers(baseline: Baseline, groups: Groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(capped tier, the cap of the entry that judged it, flows it stands for) of every sampled flow."""
    classes, _ = _class_keys(groups.port_classes)
    g, axes, weight = groups.sample(np.ones(len(groups.flows), dtype=bool))
    metrics = np.zeros((len(axes), len(METRICS)))
    metrics[:, AXIS_INDEX] = axes
    scored = baseline.score(groups.apps[g].astype(str), metrics, classes[g])
    caps = np.array([baseline.caps[e] for e in scored.entry], dtype=int)
    return scored.tier, caps, weight


def checks(doc: dict, held_out: Groups | None, active: Baseline | None) -> dict:
    """The documented checks (module docstring): each with its figures and whether it passed."""
    flows = int(doc["counts"]["flows"])
    out: dict = {"enough_flows": {"flows": flows, "minimum": MIN_FLOWS, "passed": flows >= MIN_FLOWS}}
    if held_out is None or held_out.empty:
        out["calibration"] = {"passed": False, "why": "no held-out statistics"}
        out["alert_rate"] = {"passed": False, "why": "no held-out statistics"}
        return out | {"passed": False}
    cand = Baseline(doc, "candidate")
    tier, cap, weight = sampled_tiers(cand, held_out)
    tiers = {}
    for k in (1, 2, 3):
        eligible = cap >= k
        n = float(weight[eligible].sum())
        if n * 10.0**-k < MIN_EXPECTED:
            tiers[str(k)] = {"checked": False, "held_out_flows": round(n)}
            continue
        rate = float(weight[eligible & (tier >= k)].sum()) / n
        ratio = rate / 10.0**-k
        tiers[str(k)] = {"checked": True, "held_out_flows": round(n), "rate": rate, "ratio_to_nominal": ratio,
                         "passed": 1 / CALIBRATION_FACTOR <= ratio <= CALIBRATION_FACTOR}  # fmt: skip
    calibrated = tiers["1"]["checked"] and all(t["passed"] for t in tiers.values() if t["checked"])
    out["calibration"] = {"tiers": tiers, "passed": calibrated}
    total = float(weight.sum())
    rate = float(weight[tier >= ALERT_TIER].sum()) / total
    rate_check = {"candidate_per_10000": rate * 1e4}
    if active is None:
        rate_check |= {"passed": True, "why": "no active baseline to compare with"}
    else:
        a_tier, _, a_weight = sampled_tiers(active, held_out)
        active_rate = float(a_weight[a_tier >= ALERT_TIER].sum()) / float(a_weight.sum())
        rate_check |= {"active_per_10000": active_rate * 1e4, "passed": rate <= 2 * active_rate + 1e-4}
    out["alert_rate"] = rate_check
    return out | {"passed": all(out[c]["passed"] for c in ("enough_flows", "calibration", "alert_rate"))}


def words(c: dict) -> list[str]:
    """The checks in words, one line each."""
    ok = {True: "passed", False: "FAILED"}
    lines = [f"enough flows: {c['enough_flows']['flows']:,} learned from (at least {MIN_FLOWS:,}): "
             f"{ok[c['enough_flows']['passed']]}"]  # fmt: skip
    cal = c["calibration"]
    if "tiers" in cal:
        parts = []
        for k, t in cal["tiers"].items():
            if t["checked"]:
                parts.append(f"tier {k} {t['ratio_to_nominal']:.2f}x nominal")
            else:
                parts.append(f"tier {k} unchecked ({t['held_out_flows']:,} held-out flows)")
        lines.append(f"calibration on the held-out week: {', '.join(parts)}: {ok[cal['passed']]}")
    else:
        lines.append(f"calibration: {cal['why']}: FAILED")
    ar = c["alert_rate"]
    if "candidate_per_10000" in ar:
        against = f", active {ar['active_per_10000']:.1f}" if "active_per_10000" in ar else f" ({ar.get('why')})"
        lines.append(f"flows at tier {ALERT_TIER}+ per 10,000 held out: candidate {ar['candidate_per_10000']:.1f}"
                     f"{against}: {ok[ar['passed']]}")  # fmt: skip
    else:
        lines.append(f"alert rate: {ar['why']}: FAILED")
    return lines


def learn(archive, *, weeks: int, until: date | None, sensors: list[str] | None, min_count: int,
          feature_profile: str, active: Baseline | None) -> tuple[dict, dict, Span]:  # fmt: skip
    """(candidate document, checks, span): learned from the span without its held-out days, checked on them."""
    last = until or newest_day(archive, sensors)
    if last is None:
        raise InputError("the archive holds no statistics yet: sensors send them every stats_interval_s "
                         "(sensor.yaml), and serve archives them")  # fmt: skip
    sp = span(last, weeks)
    train, names = read_groups(archive, sp.first, sp.held_out_from - timedelta(days=1), sensors)
    held, _ = read_groups(archive, sp.held_out_from, sp.last, sensors)
    if train.empty:  # a span of one short capture: learn from all of it, nothing left to check on
        train, names = read_groups(archive, sp.first, sp.last, sensors)
        held, sp = None, Span(sp.first, sp.last, None)
    learned_to = (sp.held_out_from - timedelta(days=1)) if sp.held_out_from else sp.last
    inputs = [f"archive statistics {sp.first}..{learned_to} from {', '.join(names) or 'no sensor'}"]
    meta = {"learned": {"from": sp.first.isoformat(), "to": learned_to.isoformat(), "sensors": names,
                        "held_out": [sp.held_out_from.isoformat(), sp.last.isoformat()] if sp.held_out_from else None,
                        "sampled_flows": int(len(train.sample_weight)),
                        "learned_at": datetime.now(UTC).isoformat(timespec="seconds")}}  # fmt: skip
    doc = candidate(train, min_count=min_count, feature_profile=feature_profile, inputs=inputs, extra_meta=meta)
    return doc, checks(doc, held, active), sp
