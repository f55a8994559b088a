"""Anomaly scorers for one application's flows: small estimators with uniform verbs.

A scorer sees a flow as its seven radar axes (the notebook's
`display_proto_radar`): duration, volume, avpktsz, dnuprat, pktlenvar,
fwdpktlen, bwdpktlen. `fit` / `learn_one` learn the population, `score_many` /
`score_one` return the combined score and the per-axis scores that explain it.
Parameters are plain floats so they round-trip through the JSON baseline file.

- `PseudoSigma`: the notebook's method, kept faithful. A "pseudo-sigma" per axis
  from the distance of the population's min and max to its mode, divided by
  (pseudo_sigmae + 1); axis score |x - mode| / pseudo-sigma; axes combined by
  mean (the notebook's default) or max.
- `RobustLog`: the default. Volumes and durations span orders of magnitude, so
  each axis is compared on log1p scale against its median, in units of a robust
  spread (1.4826 x MAD, falling back to IQR/1.349 and a floor); axes combined by
  mean. Unlike min/max, median and MAD do not move when the population holds
  one extreme flow, which keeps the score's distribution stable between the
  training and the scored traffic. The mean (rather than the max) keeps one
  noisy, discrete axis (Down.Up.Ratio) from making ordinary flows rare: with max
  the far tiers fired 4-40x too often and moderate anomalies were missed
  (bench/bench_scoring.py, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ntds.detect.population import Histogram

AXES: tuple[str, ...] = ("duration", "volume", "avpktsz", "dnuprat", "pktlenvar", "fwdpktlen", "bwdpktlen")


def _combine(per_axis: np.ndarray, how: str) -> np.ndarray:
    return per_axis.max(axis=1) if how == "max" else per_axis.mean(axis=1)


class Scorer(ABC):
    """The contract every per-flow scorer keeps (tests/test_scoring.py runs it over `SCORERS`).

    A scorer sees flows as (n, 7) arrays of the radar axes. `fit` learns a
    population, `learn_one` adds one flow (refit lazily at the next score),
    `score_many` / `score_one` return the combined score and the per-axis
    scores that explain it, `typical` the value each axis is compared with,
    `params` / `load` round-trip the fitted state through the JSON baseline
    (plain floats: no pickle ever reaches a sensor).
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, str]] = {}
    """What `params` holds: name -> "finite", "non-negative" or "positive" (one number per axis), or "int"."""

    @classmethod
    def check_params(cls, params: object) -> None:
        """ValueError naming the first parameter that is missing, of the wrong length or out of range: a
        baseline that would load and then fail (or silently never alert) is refused at load."""
        if not isinstance(params, dict) or set(params) != set(cls.PARAMS):
            raise ValueError(f"model parameters must be exactly {sorted(cls.PARAMS)}")
        for key, rule in cls.PARAMS.items():
            v = params[key]
            if rule == "int":
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 1000:
                    raise ValueError(f"model.{key}: expected a whole number from 1 to 999")
                continue
            ok = (
                isinstance(v, list)
                and len(v) == len(AXES)
                and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            )
            ok = ok and (rule == "finite" or all(x >= 0 for x in v)) and (rule != "positive" or all(x > 0 for x in v))
            if not ok:
                raise ValueError(f"model.{key}: expected {len(AXES)} {rule} numbers")

    def __init__(self, combine: str) -> None:
        if combine not in ("mean", "max"):
            raise ValueError(f"combine must be 'mean' or 'max', not {combine!r}")
        self.combine = combine
        self._pending: list[np.ndarray] = []
        self._seen = np.empty((0, len(AXES)))
        self.fitted = False

    def learn_one(self, x) -> Scorer:
        """Add one flow (7 axis values); parameters are refit on the next score."""
        self._pending.append(np.asarray(x, dtype=float).reshape(1, len(AXES)))
        return self

    def _ready(self) -> None:
        if self._pending:
            batch = np.vstack(self._pending)
            self._pending.clear()
            self.fit(np.vstack([self._seen, batch]) if self.fitted else batch)
        if not self.fitted:
            raise ValueError("scorer has learned nothing yet")

    def fit(self, X) -> Scorer:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != len(AXES) or len(X) == 0:
            raise ValueError(f"expected an (n, {len(AXES)}) array with n > 0, got {X.shape}")
        self._seen = X
        self._fit(X)
        self.fitted = True
        return self

    def score_many(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(combined scores, per-axis scores) for an (n, 7) batch."""
        self._ready()
        per_axis = self._per_axis(np.asarray(X, dtype=float))
        return _combine(per_axis, self.combine), per_axis

    def score_one(self, x) -> tuple[float, np.ndarray]:
        combined, per_axis = self.score_many(np.asarray(x, dtype=float).reshape(1, len(AXES)))
        return float(combined[0]), per_axis[0]

    LEARNS_FROM_HISTOGRAMS: ClassVar[bool] = False
    """Whether `fit_histograms` can fit this scorer from per-axis histograms (`baseline learn`)."""

    def fit_histograms(self, hists: Sequence[Histogram]) -> Scorer:
        """Fit from the seven axes' mergeable histograms (ntds.detect.population) instead of the flows: what
        `baseline learn` does with the sensors' statistics."""
        if not self.LEARNS_FROM_HISTOGRAMS:
            raise ValueError(f"the {self.name} method needs the flows themselves (baseline build); "
                             f"learning from statistics needs {', '.join(learnable())}")  # fmt: skip
        if len(hists) != len(AXES) or any(h.count == 0 for h in hists):
            raise ValueError(f"expected {len(AXES)} non-empty axis histograms")
        self._fit_histograms(hists)
        self._seen = np.empty((0, len(AXES)))
        self.fitted = True
        return self

    def _fit_histograms(self, hists: Sequence[Histogram]) -> None:
        raise NotImplementedError

    def load(self, params: dict) -> Scorer:
        """Take fitted parameters from a baseline file (as `params` wrote them)."""
        self._load(params)
        self.fitted = True
        self._seen = np.empty((0, len(AXES)))
        return self

    @abstractmethod
    def _fit(self, X: np.ndarray) -> None:
        """Learn the parameters from a population."""

    @abstractmethod
    def _per_axis(self, X: np.ndarray) -> np.ndarray:
        """(n, 7) non-negative per-axis scores."""

    @abstractmethod
    def _load(self, params: dict) -> None:
        """Set the parameters from `params()` output."""

    @abstractmethod
    def typical(self) -> np.ndarray:
        """The value each axis is compared with, for explanations."""

    @abstractmethod
    def params(self) -> dict:
        """The fitted parameters as JSON-ready plain numbers."""


SCORERS: dict[str, type[Scorer]] = {}
"""Every registered scorer by its method name (`baseline build --method`)."""


def register(cls: type[Scorer]) -> type[Scorer]:
    SCORERS[cls.name] = cls
    return cls


def learnable() -> list[str]:
    """The methods `baseline learn` can fit from statistics."""
    return [name for name, cls in SCORERS.items() if cls.LEARNS_FROM_HISTOGRAMS]


def mode(values: np.ndarray) -> float:
    """Most frequent value; the smallest of equally frequent ones (as scipy.stats.mode)."""
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[np.argmax(counts)])


@register
class PseudoSigma(Scorer):
    name = "pseudo-sigma"
    PARAMS: ClassVar[dict[str, str]] = {"mode": "finite", "pseudo_sigma": "non-negative", "pseudo_sigmae": "int"}

    def __init__(self, combine: str = "mean", pseudo_sigmae: int = 5) -> None:
        super().__init__(combine)
        self.pseudo_sigmae = pseudo_sigmae

    def _fit(self, X: np.ndarray) -> None:
        self.mode_ = np.array([mode(X[:, j]) for j in range(X.shape[1])])
        pos = np.abs(X.max(axis=0) - self.mode_)
        neg = np.abs(self.mode_ - X.min(axis=0))
        both = (pos > 0) & (neg > 0)
        spread = np.where(both, (pos + neg) / 2, np.maximum(pos, neg))
        # An axis where every flow had the same value has no spread: 0 marks it.
        self.sigma_ = spread / (self.pseudo_sigmae + 1)

    def _per_axis(self, X: np.ndarray) -> np.ndarray:
        dist = np.abs(X - self.mode_)
        constant = self.sigma_ == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            score = dist / np.where(constant, 1.0, self.sigma_)
        # On a constant axis any other value is as far out as the population's edge.
        return np.where(constant, np.where(dist > 0, self.pseudo_sigmae + 1.0, 0.0), score)

    def typical(self) -> np.ndarray:
        return self.mode_

    def params(self) -> dict:
        return {"mode": self.mode_.tolist(), "pseudo_sigma": self.sigma_.tolist(), "pseudo_sigmae": self.pseudo_sigmae}

    def _load(self, params: dict) -> None:
        self.mode_ = np.array(params["mode"], dtype=float)
        self.sigma_ = np.array(params["pseudo_sigma"], dtype=float)
        self.pseudo_sigmae = int(params["pseudo_sigmae"])


@register
class RobustLog(Scorer):
    name = "robust"
    PARAMS: ClassVar[dict[str, str]] = {"log_median": "finite", "log_scale": "positive"}
    MIN_SCALE = 0.3
    """Smallest spread on log1p scale (about a 35% change counts as one unit)."""

    def __init__(self, combine: str = "mean") -> None:
        super().__init__(combine)

    def _fit(self, X: np.ndarray) -> None:
        L = np.log1p(np.clip(X, 0, None))
        self.median_ = np.median(L, axis=0)
        mad = 1.4826 * np.median(np.abs(L - self.median_), axis=0)
        q75, q25 = np.percentile(L, [75, 25], axis=0)
        self.scale_ = np.maximum(np.where(mad > 0, mad, (q75 - q25) / 1.349), self.MIN_SCALE)

    LEARNS_FROM_HISTOGRAMS: ClassVar[bool] = True

    def _fit_histograms(self, hists: Sequence[Histogram]) -> None:
        from ntds.detect.population import BIN_LOG1P

        self.median_ = np.array([h.quantile_log1p(0.5) for h in hists])
        # A spread under half a bin is below what the histogram resolves: as `fit` treats a MAD of 0 (a
        # population mostly of one value), fall back to the interquartile range.
        raw = np.array([h.mad_log1p(m) for h, m in zip(hists, self.median_)])
        mad = np.where(raw >= BIN_LOG1P / 2, 1.4826 * raw, 0.0)
        iqr = np.array([h.quantile_log1p(0.75) - h.quantile_log1p(0.25) for h in hists])
        iqr = np.where(iqr >= BIN_LOG1P / 2, iqr, 0.0)
        self.scale_ = np.maximum(np.where(mad > 0, mad, iqr / 1.349), self.MIN_SCALE)

    def _per_axis(self, X: np.ndarray) -> np.ndarray:
        return np.abs(np.log1p(np.clip(X, 0, None)) - self.median_) / self.scale_

    def typical(self) -> np.ndarray:
        return np.expm1(self.median_)

    def params(self) -> dict:
        return {"log_median": self.median_.tolist(), "log_scale": self.scale_.tolist()}

    def _load(self, params: dict) -> None:
        self.median_ = np.array(params["log_median"], dtype=float)
        self.scale_ = np.array(params["log_scale"], dtype=float)


def make_scorer(method: str, combine: str | None = None) -> Scorer:
    try:
        cls = SCORERS[method]
    except KeyError:
        raise ValueError(f"unknown scoring method {method!r} (choose from {', '.join(SCORERS)})") from None
    return cls(combine=combine) if combine else cls()


# -- rarity tiers ------------------------------------------------------------------------

TIER_LABELS = (
    "common event",
    "1 in 10 event",
    "1 in 100 event",
    "1 in 1000 event",
    "1 in 10000 event",
    "1 in 100000 event",
)
MIN_RAREST = 1e-6
"""The rarest tier needs a score above 0 even where every training flow scored 0 (identical flows)."""
MIN_EXCEEDANCES = 5
"""A tier's threshold is read off the population only where at least this many flows exceed it."""


def tier_thresholds(scores: np.ndarray, weights: np.ndarray | None = None) -> list[float]:
    """Score thresholds so that about 1 flow in 10**k of this population scores above tier k.

    Where the population is too small to see 10**-k directly (fewer than
    MIN_EXCEEDANCES flows above), the tail is extrapolated: scores beyond the 90th
    percentile are fitted as linear in log10(1/p) (an exponential tail) and read
    off at p = 10**-k. Thresholds never decrease with k.

    `weights`: how many flows each score stands for (a weighted sample, as
    `baseline learn` pools from the sensors' statistics); a tier is then read
    off directly only where the sample itself holds MIN_EXCEEDANCES flows above
    it, and the estimated population MIN_EXCEEDANCES too.
    """
    if weights is not None:
        return _weighted_tier_thresholds(np.asarray(scores, dtype=float), np.asarray(weights, dtype=float))
    s = np.sort(np.asarray(scores, dtype=float))
    n = len(s)
    if n == 0:
        raise ValueError("no scores to calibrate tiers on")
    # empirical survival: P(score > s[i]) ~ (n - 1 - i) / n
    ranks = np.arange(n)
    p_emp = (n - ranks) / n

    def direct(p: float) -> float | None:
        return float(np.quantile(s, 1 - p, method="higher")) if n * p >= MIN_EXCEEDANCES else None

    return _thresholds(s, p_emp, direct)


def _weighted_tier_thresholds(scores: np.ndarray, weights: np.ndarray) -> list[float]:
    if len(scores) == 0 or weights.sum() <= 0:
        raise ValueError("no scores to calibrate tiers on")
    order = np.argsort(scores, kind="stable")
    s, w = scores[order], weights[order]
    total = w.sum()
    above_or_at = np.cumsum(w[::-1])[::-1]  # weight of the flows scoring s[i] or more
    p_emp = above_or_at / total
    n = len(s)
    strictly_above = np.append(above_or_at[1:], 0.0) / total

    def direct(p: float) -> float | None:
        # the smallest score with at most a fraction p of the weight strictly above it
        i = int(np.argmax(strictly_above <= p))
        if total * p < MIN_EXCEEDANCES or n - 1 - i < MIN_EXCEEDANCES:
            return None
        return float(s[i])

    return _thresholds(s, p_emp, direct)


def _thresholds(s: np.ndarray, p_emp: np.ndarray, direct) -> list[float]:
    """Tiers 1..5 from sorted scores and their empirical survival: read off where `direct` can, else from the
    exponential tail fit."""
    out: list[float] = []
    tail = p_emp <= 0.1
    fit = None
    if tail.sum() >= 3 and np.ptp(s[tail]) > 0:
        slope, intercept = np.polyfit(np.log10(1 / p_emp[tail]), s[tail], 1)
        fit = (max(slope, 0.0), intercept)
    for k in range(1, 6):
        p = 10.0**-k
        t = direct(p)
        if t is None:
            t = float(fit[0] * k + fit[1]) if fit is not None else float(s[-1])
        out.append(max(t, out[-1]) if out else max(t, 0.0))  # scores are >= 0: so are thresholds
    out[-1] = max(out[-1], MIN_RAREST)
    return out


def tier_of(scores: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Tier 0..5 of each score: the highest k whose threshold it exceeds (strictly)."""
    t = np.asarray(thresholds, dtype=float)
    return (np.asarray(scores, dtype=float)[:, None] > t[None, :]).sum(axis=1)
