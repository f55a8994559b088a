"""`ntds-aggregator baseline learn`: a candidate baseline from what the sensors saw, without their flows.

Input: the `stats` messages in the archive (tables population_histograms and
population_samples; ntds.detect.population says what they hold), over the last
`--weeks` weeks of data up to `--until` (default: the newest day that holds
statistics), from every sensor or those named with `--sensor`. One aggregator
serves one site and pushes one baseline to all its sensors, so by default the
candidate is the site's baseline, learned from every sensor; `--sensor` learns
from some only (a site with one odd tap, or a test).

Per (application, port class), the fallback chain decides the entries exactly as
`baseline build` does from the flows (ntds.detect.baseline.plan). Each entry is
learned so that a minority of sensors cannot steer it (`fleet="median"`, the
default): every sensor's scorer is fitted from its own histograms and the
entry's parameters are the weighted median of the sensors'; its tier thresholds
come from the fleet's share of flows above each score, the weighted median of
the sensors' own shares (each from its weighted sample). A sensor's weight is
its flows in the entry, at most the median sensor's, so one that claims a
hundred times the others' traffic counts as one typical sensor. With three
sensors one may lie, with five two. `fleet="pooled"` adds every sensor's
statistics up first (exact for trusted sensors, and what one sensor gives either
way). The file has the same format and passes the same validation as one built
from flows.

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
- alert_rate: on the held-out week the candidate puts between half and twice as
  many flows at tier 3 or above as the active baseline does (plus or minus 1 in
  10,000), over all sensors and on each sensor's own week: a drop is refused as
  an increase is.
- leave_one_sensor_out: each sensor's held-out week is judged by a candidate
  learned without that sensor (the held-out week of a sensor that shaped the
  candidate cannot judge it): tiers 1-3 within LEAVE_OUT_FACTOR of nominal.
- canaries: known-anomalous synthetic flows, aimed with the active baseline
  (per entry, three shapes, the middle of tiers 3-5), must still reach their
  tier less one under the candidate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggregator.archive import only
from ntds.detect.baseline import (
    AXIS_INDEX,
    METRICS,
    Baseline,
    _class_key,
    _radar_sample,
    document,
    plan,
    supported_tier,
    validate,
)
from ntds.detect.population import MAX_TIER, N_BINS, Histogram, decode_axes
from ntds.detect.scoring import AXES, MIN_EXCEEDANCES, _thresholds, make_scorer, tier_of, tier_thresholds
from ntds.errors import InputError

MIN_FLOWS = 10_000
"""Scorable flows a candidate must have learned from to be promoted automatically."""
CALIBRATION_FACTOR = 2.0
MIN_EXPECTED = 20
"""A held-out tier is checked only where at least this many flows are expected above it."""
ALERT_TIER = 3
LEAVE_OUT_FACTOR = 3.0
"""Leave one sensor out: each sensor's held-out tier rates within this factor of nominal (one sensor's week is
smaller and noisier than the fleet's)."""
MAX_FOLDS = 10
"""Leave-one-sensor-out learns this many extra candidates at most: beyond ten sensors, ten groups of them."""
CANARY_SLACK = 1
"""A canary may fall this many tiers (a baseline that legitimately moves); poisoning drops them further."""
CANARY_REACH = 30.0
"""How far (in log1p units along a shape) canaries are looked for."""
HIST_COLUMNS = ["sensor", "interval_start", "application", "port_class", "metric", "first_bin", "bins",
                "non_finite", "sum", "sum_sq", "min", "max"]  # fmt: skip
SAMPLE_COLUMNS = ["sensor", "interval_start", "application", "port_class", "flows", "seen", "tiers", "axes"]


@dataclass
class Groups:
    """The statistics of a span, added up per (sensor, application, port class)."""

    sensors: np.ndarray
    """The sensor of each group."""
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

    def subset(self, mask: np.ndarray) -> Groups:
        """The groups in `mask` (with their sampled flows) as Groups of their own."""
        rows = np.flatnonzero(mask)
        new_index = np.full(len(mask), -1, dtype=np.int64)
        new_index[rows] = np.arange(len(rows))
        keep = mask[self.sample_group]
        return Groups(
            self.sensors[rows], self.apps[rows], self.port_classes[rows], self.flows[rows], self.counts[rows],
            self.moments[rows], self.low[rows], self.high[rows], new_index[self.sample_group[keep]],
            self.sample_axes[keep], self.sample_weight[keep],
        )  # fmt: skip

    def of_sensors(self, names) -> Groups:
        return self.subset(np.isin(self.sensors, list(names)))


def _read(files: list[str], columns: list[str], sensors: list[str] | None = None,
          filesystem=None) -> pa.Table | None:  # fmt: skip
    """The rows of `sensors` (all when None) in those archive files, or None when there are none."""
    tables = [only(pq.read_table(f, columns=columns, filesystem=filesystem), sensors) for f in files]
    tables = [t for t in tables if len(t)]
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
    """Add up histogram rows and pool sample rows per (sensor, application, port class)."""
    keys: dict[tuple[str, str, str], int] = {}

    def index(t: pa.Table) -> np.ndarray:
        triples = zip(t["sensor"].to_pylist(), t["application"].to_pylist(), t["port_class"].to_pylist())
        return np.array([keys.setdefault(k, len(keys)) for k in triples], dtype=np.int64)

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
        np.array([s for s, _, _ in names], dtype=object), np.array([a for _, a, _ in names], dtype=object),
        np.array([p for _, _, p in names], dtype=object), flows, counts, moments, low, high, sample_group,
        sample_axes, sample_weight,
    )  # fmt: skip


def _class_keys(port_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Port class keys of the groups, and which groups have none (a sensor's overflow group, or a name that
    does not parse: only the all-traffic entry learns from those)."""
    keys = np.full(len(port_classes), -1, dtype=np.int64)
    for i, name in enumerate(port_classes):
        with contextlib.suppress(ValueError, IndexError):
            keys[i] = _class_key(name)
    return keys, keys < 0


FLEETS = ("median", "pooled")
"""How sensors' statistics make one entry: "median" (the default) fits each sensor on its own and takes the
weighted median of the sensors (each weight bounded); "pooled" adds them all up first (exact when every sensor is
trusted, and what one sensor's statistics give either way)."""


def bounded_weights(flows: np.ndarray) -> np.ndarray:
    """Each sensor's weight in an entry: its flows there, at most the median sensor's. A sensor that claims a
    hundred times the others' flows counts as one typical sensor."""
    flows = np.asarray(flows, dtype=float)
    return np.minimum(flows, np.median(flows))


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Along axis 0 (one row per sensor): the value with half the weight on either side; where exactly half lies
    below, the middle of the two middle values (numpy's median for equal weights)."""
    values = np.asarray(values, dtype=float)
    shape = values.shape[1:]
    v = values.reshape(len(values), -1)
    order = np.argsort(v, axis=0, kind="stable")
    v = np.take_along_axis(v, order, axis=0)
    cum = np.cumsum(np.asarray(weights, dtype=float)[order], axis=0)
    half, eps = cum[-1] / 2, 1e-9 * cum[-1]
    i = (cum < half - eps).sum(axis=0)
    cols = np.arange(v.shape[1])
    exact = np.abs(cum[i, cols] - half) <= eps
    out = np.where(exact, (v[i, cols] + v[np.minimum(i + 1, len(v) - 1), cols]) / 2, v[i, cols])
    return out.reshape(shape)


def fleet_thresholds(scores: np.ndarray, weight: np.ndarray, sensor: np.ndarray, sensor_weight: np.ndarray) -> list:
    """Tier thresholds from the sensors' weighted samples (`sensor`: each sampled flow's sensor, 0..S-1), robust
    to a minority of them: at each score, the share of flows at or above it is estimated per sensor (its own
    samples, weighted as they stand for its flows) and the fleet's share is the weighted median of the sensors'
    (`sensor_weight`, bounded). A sensor whose flows pile up in the tail, or spread over ten decades, moves that
    median at most to the nearest honest sensor's share. Then read off as `tier_thresholds` does (directly where
    the samples show it, else from the exponential tail)."""
    order = np.argsort(scores, kind="stable")
    s, w, k = scores[order], weight[order], sensor[order]
    n, n_sensors = len(s), len(sensor_weight)
    own = np.bincount(k, weights=w, minlength=n_sensors)
    u = w / np.maximum(own[k], 1e-300)
    # Tiers are read where the fleet's share is at most 1 in 10, so only from where some sensor's own share first
    # falls to TAIL_FROM (the rest has every sensor, hence their median, above it), one position earlier for
    # `direct` to see the step: the same thresholds as from every position, for a fraction of the work.
    start = n
    for j in range(n_sensors):
        mine = np.flatnonzero(k == j)
        if len(mine):
            above = np.cumsum(u[mine][::-1])[::-1]
            first = int(np.argmax(above <= TAIL_FROM)) if (above <= TAIL_FROM).any() else len(mine)
            start = min(start, mine[first - 1] + 1 if first > 0 else 0)
    start = max(min(start, n - 1) - 1, 0)
    s_t, u_t, k_t = s[start:], u[start:], k[start:]
    share = np.zeros((n_sensors, n - start))
    share[k_t, np.arange(n - start)] = u_t
    at_or_above = np.cumsum(share[:, ::-1], axis=1)[:, ::-1]
    p = weighted_median(at_or_above, sensor_weight)
    strictly_above = np.append(p[1:], 0.0)
    total = float(np.sum(sensor_weight))

    def direct(q: float) -> float | None:
        i = int(np.argmax(strictly_above <= q))
        if total * q < MIN_EXCEEDANCES or n - 1 - (start + i) < MIN_EXCEEDANCES:
            return None
        return float(s_t[i])

    keep = p > 0  # a prefix: p never increases along the sorted scores
    return _thresholds(s_t[keep], p[keep], direct)


TAIL_FROM = 0.2
"""`fleet_thresholds` works from where some sensor's share of flows at or above a score is this (tiers start at
0.1)."""


def _sensors_in(groups: Groups, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sensors with flows in the groups of `mask`, and their flows there."""
    names, inverse = np.unique(groups.sensors[mask].astype(str), return_inverse=True)
    flows = np.bincount(inverse, weights=groups.flows[mask], minlength=len(names))
    return names[flows > 0], flows[flows > 0]


def _fit_entry(groups: Groups, mask: np.ndarray, method: str, fleet: str, fits: dict | None = None):
    """(scorer, the sensors it learned from, their bounded weights) of one entry; no sensors for the pooled fit.
    `fits`: each sensor's fitted parameters by the groups they came from, kept between candidates learned from
    the same statistics (leave-one-sensor-out refits only the median)."""
    names, flows = _sensors_in(groups, mask)
    if fleet == "pooled" or len(names) < 2:
        hists = groups.histograms(mask)
        return make_scorer(method).fit_histograms([hists[i] for i in AXIS_INDEX]), names[:0], flows[:0]
    weights = bounded_weights(flows)
    fits = {} if fits is None else fits
    params = []
    for name in names:
        mine = mask & (groups.sensors == name)
        key = (method, name, tuple(sorted(zip(groups.apps[mine], groups.port_classes[mine]))))
        if key not in fits:
            hists = groups.histograms(mine)
            fits[key] = make_scorer(method).fit_histograms([hists[i] for i in AXIS_INDEX]).params()
        params.append(fits[key])
    combined = {k: weighted_median(np.array([p[k] for p in params], dtype=float), weights).tolist() for k in params[0]}
    return make_scorer(method).load(combined), names, weights


def candidate(groups: Groups, *, min_count: int, feature_profile: str, inputs: list[str], extra_meta: dict,
              method: str = "robust", fleet: str = "median", judge_only: bool = False,
              fits: dict | None = None) -> dict:  # fmt: skip
    """The baseline document learned from `groups` (validated as a sensor validates it). `fleet`: how sensors
    combine (FLEETS). `judge_only`: only what scoring needs (no population statistics or radar sample, not
    validated), for the leave-one-sensor-out check; `fits`: see `_fit_entry`."""
    if fleet not in FLEETS:
        raise InputError(f"sensors combine by {' or '.join(FLEETS)}, not {fleet!r}")
    if groups.empty:
        raise InputError("no statistics to learn from in that span (sensors send them every stats_interval_s)")
    classes, unattributed = _class_keys(groups.port_classes)
    all_sensors, row_sensor = np.unique(groups.sensors.astype(str), return_inverse=True)
    entries: dict[str, dict] = {}
    combine = make_scorer(method).combine
    for name, mask, judges in plan(groups.apps, classes, groups.flows, min_count, unattributed):
        g, axes, weight = groups.sample(mask)
        if len(axes) == 0:
            raise InputError(f"entry {name!r}: statistics without sampled flows (damaged archive?)")
        scorer, names, weights = _fit_entry(groups, mask, method, fleet, fits)
        scores, per_axis = scorer.score_many(axes)
        if len(names):
            position = np.full(len(all_sensors), -1)  # each sensor's place in `names` (-1: no flows in the entry)
            position[np.searchsorted(all_sensors, names)] = np.arange(len(names))
            sensor = position[row_sensor[g]]
            known = sensor >= 0  # a sensor's samples without its flows: left out
            tiers = fleet_thresholds(scores[known], weight[known], sensor[known], weights)
        else:
            tiers = tier_thresholds(scores, weight)
        count = int(groups.flows[mask].sum())
        cap = supported_tier(count)
        entry = {"count": count, "judges": judges, "max_tier": cap, "model": scorer.params(), "tiers": tiers}
        if not judge_only:  # as `entry_document` writes it
            stats = {m: {**h.summary(), "histogram": h.coarse(25)} for m, h in zip(METRICS, groups.histograms(mask))}
            radar = _radar_sample(per_axis, np.minimum(tier_of(scores, tiers), cap))
            entry = {"count": count, "judges": judges, "max_tier": cap, "metrics": stats, "model": scorer.params(),
                     "tiers": tiers, "radar_sample": radar}  # fmt: skip
        entries[name] = entry
    ranked: dict[str, int] = {}
    for app, n in zip(groups.apps, groups.flows):
        ranked[app] = ranked.get(app, 0) + int(n)
    ranked = {k: v for k, v in ranked.items() if v > 0}
    doc = document(entries, method=method, combine=combine, min_count=min_count, feature_profile=feature_profile,
                   flows=int(groups.flows.sum()), ranked=ranked, applications=len(ranked), inputs=inputs,
                   extra_meta=extra_meta)  # fmt: skip
    if not judge_only:
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
    for d in reversed(archive.days("population_samples")):
        files = archive.files("population_samples", d, d, sensors)
        if any(len(only(pq.read_table(f, columns=["sensor"], filesystem=archive.filesystem), sensors)) for f in files):
            return d
    return None


def span(last: date, weeks: int) -> Span:
    first = last - timedelta(days=7 * weeks - 1)
    days = 7 * weeks
    held = 7 if days >= 14 else max(1, days // 4)
    return Span(first, last, last - timedelta(days=held - 1))


def read_groups(archive, first: date, last: date, sensors: list[str] | None) -> tuple[Groups, list[str]]:
    """The statistics of days first..last (inclusive) and the sensors they came from."""
    with archive.reading():
        hist = _read(archive.files("population_histograms", first, last, sensors), HIST_COLUMNS, sensors,
                     archive.filesystem)  # fmt: skip
        samples = _read(archive.files("population_samples", first, last, sensors), SAMPLE_COLUMNS, sensors,
                        archive.filesystem)  # fmt: skip
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


def tier_rates(tier: np.ndarray, cap: np.ndarray, weight: np.ndarray, factor: float) -> dict:
    """Per tier 1..3: the weighted share of flows at that tier or above over its nominal 1 in 10**k, counting only
    entries that can claim the tier; unchecked where fewer than MIN_EXPECTED flows are expected above it."""
    out = {}
    for k in (1, 2, 3):
        eligible = cap >= k
        n = float(weight[eligible].sum())
        if n * 10.0**-k < MIN_EXPECTED:
            out[str(k)] = {"checked": False, "held_out_flows": round(n)}
            continue
        rate = float(weight[eligible & (tier >= k)].sum()) / n
        ratio = rate / 10.0**-k
        out[str(k)] = {"checked": True, "held_out_flows": round(n), "rate": rate, "ratio_to_nominal": ratio,
                       "passed": 1 / factor <= ratio <= factor}  # fmt: skip
    return out


def _worst(tiers: dict) -> tuple[str, float] | None:
    """The checked tier furthest from nominal (either way), and its ratio."""
    checked = [(k, t["ratio_to_nominal"]) for k, t in tiers.items() if t["checked"]]
    if not checked:
        return None
    return max(checked, key=lambda kr: abs(np.log(max(kr[1], 1e-6))))


def leave_one_sensor_out(train: Groups, held: Groups | None, *, min_count: int, feature_profile: str,
                         method: str = "robust", fleet: str = "median", fits: dict | None = None) -> dict:  # fmt: skip
    """Each sensor's held-out week judged by a candidate learned without it (from every other sensor's training
    days): the tier rates of tiers 1..3 within LEAVE_OUT_FACTOR of nominal. Data from a sensor that did not shape
    the candidate is the only fair judge of what that sensor sent; a sensor that made up its statistics, or one
    whose traffic really is unlike the others', fails here and is named."""
    names = sorted(set(train.sensors.astype(str)))
    if len(names) < 2:
        return {"passed": True, "why": "one sensor: no other sensor to judge its statistics"}
    if held is None or held.empty:
        return {"passed": False, "why": "no held-out statistics"}
    folds = [names[i::MAX_FOLDS] for i in range(min(MAX_FOLDS, len(names)))]
    sensors: dict[str, dict] = {}
    fits = {} if fits is None else fits
    for fold in folds:
        label = ", ".join(fold)
        rest, mine = train.subset(~np.isin(train.sensors, fold)), held.of_sensors(fold)
        if rest.empty or mine.empty:
            sensors[label] = {"checked": False, "why": "no held-out statistics" if mine.empty else "nothing else"}
            continue
        try:
            doc = candidate(rest, min_count=min_count, feature_profile=feature_profile, inputs=[], extra_meta={},
                            method=method, fleet=fleet, judge_only=True, fits=fits)  # fmt: skip
        except InputError as e:
            sensors[label] = {"checked": False, "why": str(e)}
            continue
        tiers = tier_rates(*sampled_tiers(Baseline(doc, "leave-one-out"), mine), LEAVE_OUT_FACTOR)
        checked = any(t["checked"] for t in tiers.values())
        sensors[label] = {"checked": checked, "tiers": tiers,
                          "passed": all(t["passed"] for t in tiers.values() if t["checked"])}  # fmt: skip
    judged = {k: v for k, v in sensors.items() if v["checked"]}
    out = {"sensors": sensors, "factor": LEAVE_OUT_FACTOR}
    if not judged:
        return out | {"passed": False, "why": "no sensor held out enough flows to judge"}
    worst = max(judged, key=lambda k: abs(np.log(max(_worst(judged[k]["tiers"])[1], 1e-6))))
    tier, ratio = _worst(judged[worst]["tiers"])
    return out | {"worst": {"sensor": worst, "tier": int(tier), "ratio_to_nominal": ratio},
                  "passed": all(v["passed"] for v in judged.values())}  # fmt: skip


CANARY_SHAPES = {
    "bulk upload": {"duration": 1.0, "volume": 1.0, "fwdpktlen": 1.0},
    "long and quiet": {"duration": 1.0, "volume": -1.0, "avpktsz": -1.0},
    "every axis": dict.fromkeys(AXES, 1.0),
}
"""Directions (on log1p scale, per axis) in which canaries leave an entry's typical flow."""
CANARY_TIERS = (3, 4, 5)


def canaries(reference: Baseline) -> list[dict]:
    """Known-anomalous synthetic flows: per entry of `reference` (the active baseline), shape and tier 3..5 it can
    claim, the flow that leaves the entry's typical values in that shape just far enough to score in the middle
    of that tier's band (between its threshold and the next; 10% above the tier 5 threshold)."""
    out = []
    for name, scorer in reference.scorers.items():
        thresholds = reference.tiers[name]
        base = np.log1p(np.clip(scorer.typical(), 0, None))
        for shape, directions in CANARY_SHAPES.items():
            u = np.array([directions.get(a, 0.0) for a in AXES])

            def flow(d: float, u=u, base=base) -> np.ndarray:
                return np.expm1(np.clip(base + d * u, 0, None))[None, :]

            def score(d: float, scorer=scorer, flow=flow) -> float:
                return float(scorer.score_many(flow(d))[0][0])

            for k in CANARY_TIERS:
                if k > reference.caps[name]:
                    continue
                low = thresholds[k - 1]
                target = (low + thresholds[k]) / 2 if k < len(thresholds) else low * 1.1 + 1e-3
                if target <= low or score(CANARY_REACH) <= target:
                    continue
                lo, hi = 0.0, CANARY_REACH
                for _ in range(50):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if score(mid) < target else (lo, mid)
                x = flow(hi)
                if int(tier_of(scorer.score_many(x)[0], thresholds)[0]) != k:
                    continue  # a band too narrow to aim into
                out.append({"entry": name, "shape": shape, "tier": k, "axes": x[0].tolist()})
    return out


def canary_check(cand: Baseline, reference: Baseline | None) -> dict:
    """Every canary of the active baseline scored by the candidate's entry of the same name: it must reach its
    tier, less CANARY_SLACK (and within what the candidate's entry can claim)."""
    if reference is None:
        return {"passed": True, "why": "no active baseline to aim canaries with"}
    results, missing = [], 0
    for c in canaries(reference):
        e = c["entry"]
        if e not in cand.scorers:
            missing += 1
            continue
        s, _ = cand.scorers[e].score_many(np.array([c["axes"]]))
        got = min(int(tier_of(s, cand.tiers[e])[0]), cand.caps[e])
        need = min(c["tier"], cand.caps[e]) - CANARY_SLACK
        results.append({"entry": e, "shape": c["shape"], "tier": c["tier"], "candidate_tier": got,
                        "passed": got >= need})  # fmt: skip
    failed = [r for r in results if not r["passed"]]
    out = {"canaries": len(results), "not_in_candidate": missing, "failed": failed}
    if not results:
        return out | {"passed": True, "why": "the active baseline has no entry that claims tier 3"}
    return out | {"passed": not failed}


def alert_rate(tier: np.ndarray, weight: np.ndarray, sensor: np.ndarray, active: Baseline | None,
               held: Groups) -> dict:  # fmt: skip
    """Flows at ALERT_TIER or above on the held-out week: the candidate's rate within half to twice the active
    baseline's (plus or minus 1 in 10,000), over all sensors and for each sensor on its own (where either expects
    MIN_EXPECTED such flows). A drop is refused as an increase is: a candidate that stops alerting on what the
    active baseline alerts on is as suspect as one that floods."""
    total = float(weight.sum())
    rate = float(weight[tier >= ALERT_TIER].sum()) / total
    out: dict = {"candidate_per_10000": rate * 1e4}
    if active is None:
        return out | {"passed": True, "why": "no active baseline to compare with"}
    a_tier, _, _ = sampled_tiers(active, held)

    def within(c: float, a: float) -> bool:
        return a / 2 - 1e-4 <= c <= 2 * a + 1e-4

    active_rate = float(weight[a_tier >= ALERT_TIER].sum()) / total
    per_sensor = {}
    for name in sorted(set(sensor)):
        mine = sensor == name
        n = float(weight[mine].sum())
        c = float(weight[mine & (tier >= ALERT_TIER)].sum()) / n
        a = float(weight[mine & (a_tier >= ALERT_TIER)].sum()) / n
        checked = max(c, a) * n >= MIN_EXPECTED
        per_sensor[name] = {"candidate_per_10000": c * 1e4, "active_per_10000": a * 1e4, "checked": checked,
                            "passed": within(c, a) or not checked}  # fmt: skip
    off = [k for k, v in per_sensor.items() if not v["passed"]]
    return out | {"active_per_10000": active_rate * 1e4, "sensors": per_sensor, "off": off,
                  "passed": within(rate, active_rate) and not off}  # fmt: skip


CHECKS = ("enough_flows", "calibration", "alert_rate", "leave_one_sensor_out", "canaries")


def checks(doc: dict, held_out: Groups | None, active: Baseline | None, leave_out: dict | None = None) -> dict:
    """The documented checks (module docstring): each with its figures and whether it passed. `leave_out`: the
    leave-one-sensor-out check's result (it needs the training statistics, which `learn` has)."""
    flows = int(doc["counts"]["flows"])
    out: dict = {"enough_flows": {"flows": flows, "minimum": MIN_FLOWS, "passed": flows >= MIN_FLOWS}}
    out["leave_one_sensor_out"] = leave_out or {"passed": False, "why": "not run"}
    cand = Baseline(doc, "candidate")
    out["canaries"] = canary_check(cand, active)
    if held_out is None or held_out.empty:
        out["calibration"] = {"passed": False, "why": "no held-out statistics"}
        out["alert_rate"] = {"passed": False, "why": "no held-out statistics"}
        return out | {"passed": False}
    tier, cap, weight = sampled_tiers(cand, held_out)
    tiers = tier_rates(tier, cap, weight, CALIBRATION_FACTOR)
    calibrated = tiers["1"]["checked"] and all(t["passed"] for t in tiers.values() if t["checked"])
    out["calibration"] = {"tiers": tiers, "passed": calibrated}
    out["alert_rate"] = alert_rate(tier, weight, held_out.sensors[held_out.sample_group].astype(str), active,
                                   held_out)  # fmt: skip
    return out | {"passed": all(out[c]["passed"] for c in CHECKS)}


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
    if "active_per_10000" in ar:
        line = (f"flows at tier {ALERT_TIER}+ per 10,000 held out: candidate {ar['candidate_per_10000']:.1f}, "
                f"active {ar['active_per_10000']:.1f} (within half to twice)")  # fmt: skip
        for name in ar["off"][:3]:
            s = ar["sensors"][name]
            line += f"; {name} alone: candidate {s['candidate_per_10000']:.1f}, active {s['active_per_10000']:.1f}"
        lines.append(f"{line}: {ok[ar['passed']]}")
    elif "candidate_per_10000" in ar:
        lines.append(f"flows at tier {ALERT_TIER}+ per 10,000 held out: candidate {ar['candidate_per_10000']:.1f} "
                     f"({ar['why']}): {ok[ar['passed']]}")  # fmt: skip
    else:
        lines.append(f"alert rate: {ar['why']}: FAILED")
    lo = c["leave_one_sensor_out"]
    if "worst" in lo:
        w = lo["worst"]
        n = len(lo["sensors"])
        lines.append(f"leave one sensor out: {n} sensors' held-out weeks judged by candidates learned without them, "
                     f"furthest {w['sensor']} at tier {w['tier']} {w['ratio_to_nominal']:.2f}x nominal (within "
                     f"{lo['factor']:g}x): {ok[lo['passed']]}")  # fmt: skip
    else:
        lines.append(f"leave one sensor out: {lo['why']}: {ok[lo['passed']]}")
    ca = c["canaries"]
    if ca.get("canaries"):
        line = f"canaries: {ca['canaries'] - len(ca['failed'])} of {ca['canaries']} known-anomalous flows at their tier"
        if ca["failed"]:
            f = min(ca["failed"], key=lambda r: r["candidate_tier"] - r["tier"])
            line += (f", {len(ca['failed'])} fell (e.g. {f['entry']} {f['shape']}: tier {f['tier']} -> "
                     f"{f['candidate_tier']})")  # fmt: skip
        lines.append(f"{line}: {ok[ca['passed']]}")
    else:
        lines.append(f"canaries: {ca['why']}: {ok[ca['passed']]}")
    return lines


def learn(archive, *, weeks: int, until: date | None, sensors: list[str] | None, min_count: int,
          feature_profile: str, active: Baseline | None, fleet: str = "median") -> tuple[dict, dict, Span]:  # fmt: skip
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
                        "sampled_flows": int(len(train.sample_weight)), "sensors_combined_by": fleet,
                        "learned_at": datetime.now(UTC).isoformat(timespec="seconds")}}  # fmt: skip
    fits: dict = {}
    doc = candidate(train, min_count=min_count, feature_profile=feature_profile, inputs=inputs, extra_meta=meta,
                    fleet=fleet, fits=fits)  # fmt: skip
    leave_out = leave_one_sensor_out(train, held, min_count=min_count, feature_profile=feature_profile, fleet=fleet,
                                     fits=fits)  # fmt: skip
    return doc, checks(doc, held, active, leave_out), sp
