"""The per-application baseline: what normal looks like, in one versioned JSON file.

Built by `ntds-aggregator baseline build` from flow records, read by the sensor
to score every flow locally. The file holds, per application (ProtocolName):
the notebook's nine population metrics (count, mode, median, mean, std), the
fitted scorer's parameters and the five tier thresholds learned from the
application's own flows; plus the application ranking and an all-traffic entry
(`ALL_TRAFFIC`) for applications too rare or never seen. JSON, not pickle: it
is read on every sensor and must be safe to load and easy to review.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntds.atomic import atomic_write_text
from ntds.detect.scoring import AXES, SCORERS, TIER_LABELS, make_scorer, tier_of, tier_thresholds
from ntds.errors import InputError
from ntds.flows.clock import TIME_PRECISION_US
from ntds.times import now_iso

FORMAT = "ntds-baseline"
VERSION = 1
ALL_TRAFFIC = "*all-traffic*"

METRICS: dict[str, str | tuple[str, ...]] = {
    "flowrate": "Flow.Bytes.s",
    "duration": "Flow.Duration",
    "volume": ("Total.Length.of.Fwd.Packets", "Total.Length.of.Bwd.Packets"),
    "avpktsz": "Average.Packet.Size",
    "dnuprat": "Down.Up.Ratio",
    "pktlenvar": "Packet.Length.Variance",
    "fwdpktlen": "Fwd.Packet.Length.Mean",
    "bwdpktlen": "Bwd.Packet.Length.Mean",
    "actmean": "Active.Mean",
}
"""The notebook's nine population metrics and the columns they come from. Volume is the
flow's bytes (the notebook's flowrate x duration, without its unit slip and its
Infinity for zero-duration flows)."""

METRIC_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(c for v in METRICS.values() for c in (v if isinstance(v, tuple) else (v,)))
)
AXIS_INDEX = [list(METRICS).index(a) for a in AXES]


def metrics_matrix(columns: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 9) float array of the nine metrics from column arrays named as the data set's."""
    out = []
    for source in METRICS.values():
        if isinstance(source, tuple):
            out.append(sum(np.asarray(columns[c], dtype=float) for c in source))
        else:
            out.append(np.asarray(columns[source], dtype=float))
    return np.column_stack(out) if out else np.empty((0, len(METRICS)))


def _stats(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return {"count": 0, "non_finite": int(len(values)), "mode": None, "median": None, "mean": None, "std": None}
    uniq, counts = np.unique(finite, return_counts=True)
    return {
        "count": int(len(finite)),
        "non_finite": int(len(values) - len(finite)),
        "mode": float(uniq[np.argmax(counts)]),
        "median": float(np.median(finite)),
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite)),
    }


HISTOGRAM_EDGES = np.linspace(0.0, 12.0, 49)
"""Bins of log10(1 + value): 48 bins a quarter-decade wide, from 0 to 10**12."""
RADAR_SAMPLE = 400


def _histogram(values: np.ndarray) -> list[int]:
    """Counts of log10(1 + value) over HISTOGRAM_EDGES (finite, non-negative values; the rest clipped)."""
    finite = values[np.isfinite(values)]
    counts, _ = np.histogram(np.clip(np.log10(1 + np.clip(finite, 0, None)), 0, 11.999), bins=HISTOGRAM_EDGES)
    return counts.astype(int).tolist()


def _radar_sample(per_axis: np.ndarray, tiers: np.ndarray) -> list[list[float]]:
    """Per-axis scores of up to RADAR_SAMPLE flows for the radar figure: the rarest first, then an even spread.

    Each row is the seven axis scores followed by the flow's tier."""
    order = np.argsort(-per_axis.max(axis=1), kind="stable")
    rare = order[: RADAR_SAMPLE // 4]
    rest = order[RADAR_SAMPLE // 4 :]
    step = max(1, len(rest) // (RADAR_SAMPLE - len(rare)))
    picked = np.concatenate([rare, rest[::step][: RADAR_SAMPLE - len(rare)]])
    return [[round(float(v), 4) for v in per_axis[i]] + [int(tiers[i])] for i in picked]


def ranking(counts: dict[str, int]) -> list[dict]:
    """The notebook's application ranking: share %, 1/likelihood, cumulative %, count."""
    total = sum(counts.values())
    rows, cumulative = [], 0.0
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        share = 100.0 * n / total
        cumulative += share
        rows.append(
            {
                "application": name,
                "share_pct": share,
                "inv_likelihood": int(100.0 / share + 0.5),
                "cumulative_pct": cumulative,
                "count": n,
            }
        )
    return rows


def build(
    apps: np.ndarray,
    metrics: np.ndarray,
    *,
    method: str = "robust",
    combine: str | None = None,
    min_count: int = 100,
    feature_profile: str = "unicauca",
    inputs: list[str] | None = None,
    extra_meta: dict | None = None,
) -> dict:
    """The baseline document from per-flow application names and (n, 9) metrics."""
    apps = np.asarray(apps).astype(str)
    if len(apps) == 0:
        raise InputError("no flows to build a baseline from")
    names, counts = np.unique(apps, return_counts=True)
    entries: dict[str, dict] = {}
    combine_used = None

    def entry(mask: np.ndarray) -> dict:
        nonlocal combine_used
        M = metrics[mask]
        X = M[:, AXIS_INDEX]
        scorer = make_scorer(method, combine).fit(X)
        combine_used = scorer.combine
        scores, per_axis = scorer.score_many(X)
        tiers = tier_thresholds(scores)
        return {
            "count": int(mask.sum()),
            "metrics": {name: {**_stats(M[:, i]), "histogram": _histogram(M[:, i])} for i, name in enumerate(METRICS)},
            "model": scorer.params(),
            "tiers": tiers,
            "radar_sample": _radar_sample(per_axis, tier_of(scores, tiers)),
        }

    for name, n in zip(names, counts):
        if n >= min_count:
            entries[str(name)] = entry(apps == name)
    entries[ALL_TRAFFIC] = entry(np.ones(len(apps), dtype=bool))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "feature_profile": feature_profile,
        "time_precision_us": TIME_PRECISION_US,
        "built": now_iso("seconds"),
        "inputs": inputs or [],
        "method": method,
        "combine": combine_used,
        "axes": list(AXES),
        "min_count": min_count,
        "counts": {"flows": int(len(apps)), "applications": int(len(names)), "modelled": len(entries) - 1},
    }
    meta.update(extra_meta or {})
    return {**meta, "ranking": ranking({str(k): int(v) for k, v in zip(names, counts)}), "applications": entries}


def save(doc: dict, path: Path) -> None:
    """Write atomically: a sensor never reads half a baseline."""
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


@dataclass
class ScoredFlows:
    """Scores of a batch: combined score, tier, per-axis scores, and which baseline entry was used."""

    score: np.ndarray
    tier: np.ndarray
    per_axis: np.ndarray
    entry: list[str]


class Baseline:
    """A loaded baseline: scores batches of flows against their application's entry."""

    def __init__(self, doc: dict, source: str = "baseline") -> None:
        self.doc = doc
        self.source = source
        self.method = doc["method"]
        self.profile = doc["feature_profile"]
        self.scorers = {}
        self.tiers = {}
        for name, e in doc["applications"].items():
            scorer = make_scorer(self.method, doc["combine"]).load(e["model"])
            self.scorers[name] = scorer
            self.tiers[name] = e["tiers"]

    @property
    def id(self) -> str:
        """Names this baseline in hello messages and alerts: its build time and method."""
        return f"{self.doc['built']} {self.method}"

    @classmethod
    def load(cls, path: str | Path, feature_profile: str | None = None) -> Baseline:
        """Read and validate a baseline file; any problem is one InputError line."""
        p = Path(path)
        try:
            if p.stat().st_size > MAX_FILE_BYTES:
                raise InputError(f"{p}: not a baseline (over {MAX_FILE_BYTES // 2**20} MB)")
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{p}: no such baseline file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{p}: cannot read baseline: {e}") from None
        try:
            doc = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: not a baseline (invalid JSON at line {e.lineno})") from None
        except (RecursionError, ValueError) as e:
            raise InputError(
                f"{p}: not a baseline ({'nested too deeply' if isinstance(e, RecursionError) else e})"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InputError(f"{p}: not an ntds baseline file")
        if doc.get("version") != VERSION:
            raise InputError(
                f"{p}: baseline format version {doc.get('version')!r}, this sensor reads version {VERSION}"
            )
        if feature_profile is not None and doc.get("feature_profile") != feature_profile:
            raise InputError(
                f"{p}: baseline built for feature profile {doc.get('feature_profile')!r}, "
                f"the sensor runs {feature_profile!r}"
            )
        try:
            validate(doc)
            baseline = cls(doc, str(p))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise InputError(f"{p}: corrupt baseline ({e})") from None
        return baseline

    def score(self, apps, metrics: np.ndarray) -> ScoredFlows:
        """Score a batch: each flow against its application's entry, else the all-traffic one."""
        apps = np.asarray(apps).astype(str)
        n = len(apps)
        X = np.asarray(metrics, dtype=float)[:, AXIS_INDEX]
        score = np.zeros(n)
        tier = np.zeros(n, dtype=int)
        per_axis = np.zeros((n, len(AXES)))
        entry = [ALL_TRAFFIC] * n
        for name in np.unique(apps):
            mask = apps == name
            key = name if name in self.scorers else ALL_TRAFFIC
            s, pa = self.scorers[key].score_many(X[mask])
            score[mask], per_axis[mask] = s, pa
            tier[mask] = tier_of(s, self.tiers[key])
            if key != ALL_TRAFFIC:
                for i in np.flatnonzero(mask):
                    entry[i] = key
        return ScoredFlows(score, tier, per_axis, entry)

    def explain(self, entry: str, x_axes: np.ndarray, per_axis: np.ndarray, top: int = 3) -> list[dict]:
        """The axes that contributed most: the flow's value, the baseline's typical value, the axis score."""
        typical = self.scorers[entry].typical()
        order = np.argsort(-per_axis, kind="stable")[:top]
        return [
            {
                "axis": AXES[j],
                "value": float(x_axes[j]),
                "typical": float(typical[j]),
                "score": round(float(per_axis[j]), 4),
            }
            for j in order
        ]


MAX_FILE_BYTES = 64 * 2**20
"""A baseline is a few MB at most (hundreds of applications with histograms and radar samples)."""


def _no_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise ValueError("a number with more than 20 digits")
    return int(text)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def validate(doc: dict) -> None:
    """Every field the sensor uses, by type, length, range and order: ValueError naming the first bad one.

    A baseline that loads must score: a wrong-length model would crash the first batch (and, after a
    SIGHUP, the running sensor), NaN or a zero spread would silently never alert, zero thresholds would
    make every flow tier 5."""
    if doc.get("method") not in SCORERS:
        raise ValueError(f"method {doc.get('method')!r:.40} is not one of {', '.join(SCORERS)}")
    if doc.get("combine") not in ("mean", "max"):
        raise ValueError("combine must be mean or max")
    if doc.get("axes", list(AXES)) != list(AXES):
        raise ValueError(f"axes must be {', '.join(AXES)}")
    if not isinstance(doc.get("built"), str) or len(doc["built"]) > 64:
        raise ValueError("built must be a time")
    apps = doc.get("applications")
    if not isinstance(apps, dict) or ALL_TRAFFIC not in apps:
        raise ValueError("applications must hold an all-traffic entry")
    if len(apps) > 100_000:
        raise ValueError("too many applications")
    scorer = SCORERS[doc["method"]]
    for name, e in apps.items():
        where = f"applications[{name[:40]!r}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: not an object")
        if not isinstance(e.get("count"), int) or e["count"] < 1:
            raise ValueError(f"{where}.count: expected a positive whole number")
        try:
            scorer.check_params(e.get("model"))
        except ValueError as err:
            raise ValueError(f"{where}.{err}") from None
        t = e.get("tiers")
        if not (isinstance(t, list) and len(t) == 5 and all(_number(v) and v >= 0 for v in t)):
            raise ValueError(f"{where}.tiers: expected 5 non-negative numbers")
        if any(t[i] > t[i + 1] for i in range(4)) or t[4] <= 0:
            raise ValueError(f"{where}.tiers: must not decrease, and the rarest must be above 0")


__all__ = ["ALL_TRAFFIC", "Baseline", "METRICS", "TIER_LABELS", "build", "metrics_matrix", "save"]
