"""What a baseline is made of, as statistics that add up: sensors count, the aggregator learns.

A baseline entry needs, of the scorable flows it judges, (a) each axis's median
and spread on log1p scale (the robust scorer's parameters), (b) the quantiles
of the *combined* score far into the tail (the tier thresholds), and (c) the
notebook's population metrics. A sensor cannot send its raw flows, and per-axis
summaries cannot give (b): the combined score is a function of all seven axes
of one flow at once, under parameters not yet known when the flow is seen.

So each sensor keeps, per interval and per (application, port class), a
`Population`:

- per metric, a `Histogram` of log10(1 + value) in BINS_PER_DECADE bins per
  decade (1/100 decade: 2.3% wide), with the count, sum, sum of squares, least
  and greatest value. Counts add, so histograms merge exactly across intervals
  and sensors; medians, spreads and quantiles are read off with linear
  interpolation inside a bin (error well under one bin).
- a `Sample` of flows' seven axes, stratified by how rare the sensor's active
  baseline found them: per tier 0..5, a uniform sample of at most K_PER_TIER
  flows and the number of flows that tier saw. A calibrated baseline puts 1 flow
  in 10**k in tier k, so the rare flows a threshold is read from are kept far
  more often than common ones, and each kept flow stands for seen / kept flows
  of its tier: the estimate of how many flows score above any threshold, under
  *any* candidate parameters, is unbiased (a stratified Horvitz-Thompson
  estimate). A sensor whose baseline is stale or miscalibrated only fills the
  strata unevenly, which makes the estimates noisier, never biased.

The aggregator fits each entry's scorer from histograms (`Scorer.fit_histograms`)
and reads the tier thresholds off weighted samples (aggregator/baseline_learn.py):
per sensor, combined by weighted median so that a minority of sensors cannot
steer the result (or, with `--combine-sensors pooled`, from everything added
up); tests/test_learning.py and bench/bench_learn.py measure how close that
comes to `baseline build` on the flows themselves, tests/test_learning_poison.py
what one lying sensor can still do. Everything here is what a sensor *says* it
saw: merging is exact, but nothing in a statistic proves the flows existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ntds.detect.scoring import AXES

BINS_PER_DECADE = 100
DECADES = 12
N_BINS = BINS_PER_DECADE * DECADES
"""log10(1 + value) from 0 to 12: values up to 10**12 (a TB, an 11-day duration in us); larger ones land in the last
bin."""
BIN_LOG1P = math.log(10) / BINS_PER_DECADE
"""One bin's width on the natural log1p scale the robust scorer works on."""
K_PER_TIER = 43
"""Flows kept per tier, (application, port class) and interval: 6 x 43 = 258 at most, about 10 kB on the wire."""
SAMPLE_K = K_PER_TIER * 6
"""At most this many flows sampled per (application, port class) and interval."""
AXIS_UNITS = 1000
"""Sampled axes travel as round(1000 * log1p(value)): 0.1% resolution, small integers on the wire."""
AXIS_TOP = int(round(AXIS_UNITS * math.log(1 + 10.0**DECADES)))
MAX_TIER = 5


def bin_of(values: np.ndarray) -> np.ndarray:
    """The histogram bin of each finite value (negative values count as 0)."""
    v = np.log10(1 + np.clip(values, 0, None)) * BINS_PER_DECADE
    return np.clip(v.astype(np.int64), 0, N_BINS - 1)


@dataclass
class Histogram:
    """One metric of one population: log-binned counts plus exact moments and range."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, dtype=np.int64))
    non_finite: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def add_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=float)
        finite = values[np.isfinite(values)]
        self.non_finite += len(values) - len(finite)
        if len(finite):
            self.counts += np.bincount(bin_of(finite), minlength=N_BINS)
            self.total += float(finite.sum())
            self.total_sq += float(np.square(finite).sum())
            self.low = min(self.low, float(finite.min()))
            self.high = max(self.high, float(finite.max()))

    def merge(self, other: Histogram) -> None:
        self.counts += other.counts
        self.non_finite += other.non_finite
        self.total += other.total
        self.total_sq += other.total_sq
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    # -- reading ------------------------------------------------------------------------

    def _cum(self) -> np.ndarray:
        """The cdf at each bin edge: counts spread evenly inside each bin, linear in between."""
        return np.concatenate([[0], np.cumsum(self.counts)]) / max(self.count, 1)

    def _position(self, cum: np.ndarray, q: float) -> float:
        """The first position (in bins, fractional) where the interpolated cdf reaches q."""
        j = int(np.searchsorted(cum, q, side="left"))
        if j == 0:
            return 0.0
        if j > N_BINS:
            return float(N_BINS)
        lo, hi = cum[j - 1], cum[j]
        return (j - 1) + (q - lo) / (hi - lo) if hi > lo else float(j)

    def quantile_bins(self, q: float) -> float:
        """The q-quantile in bins (fractional: linear inside the bin). Where exactly a fraction q of the flows lies
        below a gap (an even count split between two clusters), the middle of the gap, as numpy's median takes
        the mean of the two middle values."""
        n = max(self.count, 1)
        cum = self._cum()
        return (self._position(cum, q) + self._position(cum, min(q + 0.5 / n, 1.0))) / 2

    def quantile_log1p(self, q: float) -> float:
        """The q-quantile of log1p(value) (natural log, the robust scorer's scale)."""
        return self.quantile_bins(q) * BIN_LOG1P

    def median_value(self) -> float:
        return float(np.expm1(self.quantile_log1p(0.5)))

    def mad_log1p(self, median_log1p: float) -> float:
        """Median absolute deviation of log1p(value) around `median_log1p`: the r with half the population within
        median +- r (by bisection on the interpolated distribution; the middle of a gap, as `quantile_bins`)."""
        m = median_log1p / BIN_LOG1P
        half = 0.5 / max(self.count, 1)
        edges, cum = np.arange(N_BINS + 1), self._cum()

        def smallest(share: float) -> float:
            lo, hi = 0.0, float(N_BINS)
            for _ in range(50):
                r = (lo + hi) / 2
                inside = np.interp(m + r, edges, cum) - np.interp(m - r, edges, cum)
                lo, hi = (lo, r) if inside >= share else (r, hi)
            return hi

        return (smallest(0.5) + smallest(min(0.5 + half, 1.0))) / 2 * BIN_LOG1P

    def mode_value(self) -> float:
        """The centre of the fullest bin (the exact mode of raw values is not mergeable)."""
        j = int(np.argmax(self.counts))
        return float(10 ** ((j + 0.5) / BINS_PER_DECADE) - 1)

    def coarse(self, per_bin: int) -> list[int]:
        """Counts in bins `per_bin` fine bins wide (the baseline file's quarter-decade histogram: 25)."""
        return self.counts.reshape(-1, per_bin).sum(axis=1).astype(int).tolist()

    def summary(self) -> dict:
        """The baseline file's population statistics of this metric (as `baseline build` writes them)."""
        n = self.count
        if n == 0:
            return {"count": 0, "non_finite": self.non_finite, "mode": None, "median": None, "mean": None, "std": None}
        mean = self.total / n
        return {
            "count": n,
            "non_finite": self.non_finite,
            "mode": self.mode_value(),
            "median": self.median_value(),
            "mean": mean,
            "std": math.sqrt(max(self.total_sq / n - mean * mean, 0.0)),
        }

    # -- wire ---------------------------------------------------------------------------

    def to_wire(self, metric: str) -> dict:
        nz = np.flatnonzero(self.counts)
        first, last = (int(nz[0]), int(nz[-1])) if len(nz) else (0, -1)
        return {
            "metric": metric,
            "first_bin": first,
            "bins": zero_runs(self.counts[first : last + 1]),
            "non_finite": self.non_finite,
            "sum": self.total,
            "sum_sq": self.total_sq,
            "min": self.low if len(nz) else 0.0,
            "max": self.high if len(nz) else 0.0,
        }


@dataclass
class Sample:
    """A sample of flows' axes, stratified by the tier the active baseline gave them: in each tier, a uniform
    sample of at most K_PER_TIER flows (the K with the smallest random keys), and how many flows that tier
    saw. A kept flow stands for seen / kept flows of its tier."""

    axes: np.ndarray = field(default_factory=lambda: np.empty((0, len(AXES)), dtype=np.int64))
    tiers: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    seen: np.ndarray = field(default_factory=lambda: np.zeros(MAX_TIER + 1, dtype=np.int64))
    k: int = K_PER_TIER

    def add_many(self, axes_values: np.ndarray, tiers: np.ndarray, rng: np.random.Generator) -> None:
        """Flows' seven axis values (raw) and the rarity tier the active baseline gave them (uncapped)."""
        tiers = np.clip(np.asarray(tiers, dtype=np.int64), 0, MAX_TIER)
        self.seen += np.bincount(tiers, minlength=MAX_TIER + 1)
        axes = np.vstack([self.axes, encode_axes(axes_values)])
        all_tiers = np.concatenate([self.tiers, tiers])
        keys = np.concatenate([self.keys, rng.random(len(tiers))])
        if np.bincount(all_tiers, minlength=MAX_TIER + 1).max() > self.k:
            order = np.lexsort((keys, all_tiers))  # by tier, then key
            sorted_tiers = all_tiers[order]
            first = np.searchsorted(sorted_tiers, sorted_tiers, side="left")
            keep = order[np.arange(len(order)) - first < self.k]
            axes, all_tiers, keys = axes[keep], all_tiers[keep], keys[keep]
        self.axes, self.tiers, self.keys = axes, all_tiers, keys

    def stands_for(self) -> np.ndarray:
        """How many flows each kept flow represents: its tier's flows over its tier's kept flows."""
        return stands_for(self.tiers, self.seen)

    def to_wire(self) -> dict:
        return {
            "k": self.k,
            "seen": self.seen.astype(int).tolist(),
            "tiers": self.tiers.astype(int).tolist(),
            "axes": self.axes.reshape(-1).astype(int).tolist(),
        }


def stands_for(tiers: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Per kept flow, seen / kept of its tier (one sample's tiers, and its flows seen per tier)."""
    kept = np.bincount(tiers, minlength=MAX_TIER + 1)
    return seen[tiers] / np.maximum(kept[tiers], 1)


def zero_runs(counts: np.ndarray) -> list[int]:
    """Counts with each run of n > 1 empty bins written as -n: a thin population costs a few numbers, not one per
    bin of its range."""
    out: list[int] = []
    zeros = 0
    for c in counts.astype(int).tolist():
        if c == 0:
            zeros += 1
            continue
        if zeros:
            out.append(-zeros if zeros > 1 else 0)
            zeros = 0
        out.append(c)
    if zeros:
        out.append(-zeros if zeros > 1 else 0)
    return out


def expand_runs(runs: list[int]) -> list[int]:
    """The counts `zero_runs` wrote, bin by bin (ValueError beyond N_BINS bins)."""
    out: list[int] = []
    for c in runs:
        if c < 0:
            out.extend([0] * -c)
        else:
            out.append(c)
        if len(out) > N_BINS:
            raise ValueError(f"histogram of more than {N_BINS} bins")
    return out


def encode_axes(values: np.ndarray) -> np.ndarray:
    """Raw axis values as round(AXIS_UNITS * log1p(value)), non-finite and negative values as 0, capped."""
    v = np.asarray(values, dtype=float).reshape(-1, len(AXES))
    v = np.where(np.isfinite(v), np.clip(v, 0, None), 0.0)
    return np.clip(np.rint(np.log1p(v) * AXIS_UNITS), 0, AXIS_TOP).astype(np.int64)


def decode_axes(encoded) -> np.ndarray:
    """(n, 7) raw axis values from the wire's integers."""
    return np.expm1(np.asarray(encoded, dtype=float).reshape(-1, len(AXES)) / AXIS_UNITS)


def check_wire_group(g: dict, metrics: tuple[str, ...], where: str) -> None:
    """ValueError naming what is inconsistent or out of bounds in one group of a stats message (the schema has
    already checked each field's type and range)."""
    seen = set()
    for i, m in enumerate(g["metrics"]):
        at = f"{where}.metrics[{i}]"
        if m["metric"] not in metrics or m["metric"] in seen:
            raise ValueError(f"{at}.metric: not one of the baseline's metrics, or repeated")
        seen.add(m["metric"])
        if m["first_bin"] + len(expand_runs(m["bins"])) > N_BINS:
            raise ValueError(f"{at}.bins: beyond bin {N_BINS - 1}")
        if m["bins"] and (m["min"] > m["max"] or m["sum_sq"] < 0):
            raise ValueError(f"{at}: min above max, or a negative sum of squares")
    s = g["sample"]
    n = len(s["tiers"])
    kept = np.bincount(np.asarray(s["tiers"], dtype=np.int64), minlength=MAX_TIER + 1)
    if len(s["axes"]) != n * len(AXES) or (kept > np.minimum(s["seen"], s["k"])).any():
        raise ValueError(f"{where}.sample: {n} tiers and {len(s['axes'])} axis values for k={s['k']} and "
                         f"seen={s['seen']}")  # fmt: skip


class Population:
    """The scorable flows of one application and port class in one interval: a histogram per metric and a
    sample of the axes. Everything adds: `merge` two, or send both and let the aggregator add them."""

    QUEUED = 1024
    """Flows `queue` holds before counting them in one go (a few flows a batch cost as much as a thousand)."""

    def __init__(self, metrics: tuple[str, ...], axis_index: list[int]) -> None:
        self.metrics = metrics
        self.axis_index = axis_index
        self.flows = 0
        self.hists = [Histogram() for _ in metrics]
        self.sample = Sample()
        self._queued: list[tuple[np.ndarray, np.ndarray]] = []
        self._queued_n = 0
        self._rng: np.random.Generator | None = None

    def queue(self, values: np.ndarray, tiers: np.ndarray, rng: np.random.Generator) -> None:
        """`add_many`, deferred until QUEUED flows wait (or the pieces are read)."""
        self._queued.append((values, tiers))
        self._queued_n += len(values)
        self._rng = rng
        if self._queued_n >= self.QUEUED:
            self.flush()

    def flush(self) -> None:
        if self._queued:
            values = np.vstack([v for v, _ in self._queued])
            tiers = np.concatenate([t for _, t in self._queued])
            self._queued, self._queued_n = [], 0
            self.add_many(values, tiers, self._rng)

    def add_many(self, values: np.ndarray, tiers: np.ndarray, rng: np.random.Generator) -> None:
        """Flows' metrics ((n, 9), as `metrics_matrix`) and their uncapped tiers under the active baseline."""
        values = np.asarray(values, dtype=float)
        n, m = values.shape
        self.flows += n
        finite = np.isfinite(values)
        clean = np.where(finite, values, 0.0)
        flat = (bin_of(clean) + np.arange(m) * N_BINS)[finite]
        counts = np.bincount(flat, minlength=m * N_BINS).reshape(m, N_BINS)
        totals, squares = clean.sum(axis=0), np.square(clean).sum(axis=0)
        lows = np.where(finite, values, np.inf).min(axis=0)
        highs = np.where(finite, values, -np.inf).max(axis=0)
        bad = n - finite.sum(axis=0)
        for j, h in enumerate(self.hists):
            h.counts += counts[j]
            h.non_finite += int(bad[j])
            h.total += float(totals[j])
            h.total_sq += float(squares[j])
            h.low = min(h.low, float(lows[j]))
            h.high = max(h.high, float(highs[j]))
        self.sample.add_many(values[:, self.axis_index], tiers, rng)

    def pieces(self) -> list[tuple[str, dict]]:
        """The wire pieces: one per metric and the sample (a big group is sent in several parts)."""
        self.flush()
        return [("metric", h.to_wire(name)) for name, h in zip(self.metrics, self.hists)] + [
            ("sample", self.sample.to_wire())
        ]
