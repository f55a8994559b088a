"""The per-application baseline: what normal looks like, in one versioned JSON file.

Built by `ntds-aggregator baseline build` from flow records, read by the sensor
to score every flow locally. The file holds, per entry: the notebook's nine
population metrics (count, mode, median, mean, std), the fitted scorer's
parameters, the five tier thresholds and the highest tier the entry's size
supports; plus the application ranking. JSON, not pickle: it is read on every
sensor and must be safe to load and easy to review.

Entries form a fallback chain, each fitted on exactly the flows it will judge:

1. an application (ProtocolName) with at least `min_count` scorable flows;
2. a port class ("TCP/445", "UDP/high"): flows of applications without an
   entry, by protocol and service port, where the class has `min_count` flows;
3. all traffic: the flows neither of the above judges.

Only scorable flows are learned and judged: answered, and for TCP carrying
payload. Single-packet, unanswered, refused and handshake-only flows are what
the host-level detectors and the unanswered counters are for; as a population
they are degenerate (all-zero axes) and would make every real conversation look
rare.

A tier is claimed only where the entry's own flows show it: tier k needs at
least MIN_EXCEEDANCES x 10**k flows (5,000 for "1 in 1000"). A smaller entry's
flows are capped at the highest tier it supports, instead of extrapolating a
tail its data never showed (bench/bench_scoring.py measures the calibration
on held-out traffic).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntds.atomic import atomic_write_text
from ntds.detect.explain import axis_text
from ntds.detect.scoring import (
    AXES,
    MIN_EXCEEDANCES,
    SCORERS,
    TIER_LABELS,
    make_scorer,
    tier_of,
    tier_thresholds,
)
from ntds.errors import InputError
from ntds.flows.clock import TIME_PRECISION_US
from ntds.networks import PROTOCOL_NAMES, protocol_name
from ntds.times import now_iso

FORMAT = "ntds-baseline"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1 files (no port classes, no tier caps) still load: their caps are derived from the counts."""
ALL_TRAFFIC = "*all-traffic*"
HIGH_PORT = 32768
"""Ports from here up are clients' ephemeral ports (Linux starts at 32768, Windows at 49152)."""
_CLASS_SCALE = 100_000
_HIGH = 99_999

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


def service_keys(protocol, src_port, dst_port) -> np.ndarray:
    """Integer key of each flow's port class: protocol and service port (the destination's if it is below
    HIGH_PORT, else the source's if that is, else "high"); no port for protocols without ports."""
    proto = np.asarray(protocol, dtype=np.int64)
    sport = np.asarray(src_port, dtype=np.int64)
    dport = np.asarray(dst_port, dtype=np.int64)
    port = np.where(dport < HIGH_PORT, dport, np.where(sport < HIGH_PORT, sport, _HIGH))
    port = np.where((proto == 6) | (proto == 17) | (proto == 132), port, 0)
    return proto * _CLASS_SCALE + port


def class_name(key: int) -> str:
    """The entry name of a port class key: "*TCP/445*", "*UDP/high*", "*ICMP*"."""
    proto, port = divmod(int(key), _CLASS_SCALE)
    name = protocol_name(proto)
    if proto not in (6, 17, 132):
        return f"*{name}*"
    return f"*{name}/{'high' if port == _HIGH else port}*"


def entry_kind(name: str) -> str:
    """What an entry is, in words (the alert's `baseline` field)."""
    if name == ALL_TRAFFIC:
        return "all-traffic"
    if name.startswith("*") and name.endswith("*"):
        return f"port class {name[1:-1]}"
    return "application"


def scorable(protocol, packets_bwd, payload) -> np.ndarray:
    """Flows a baseline judges: answered, and for TCP carrying payload (see the module's docstring)."""
    proto = np.asarray(protocol, dtype=float)
    return (np.asarray(packets_bwd, dtype=float) > 0) & ((proto != 6) | (np.asarray(payload, dtype=float) > 0))


SCORABLE_COLUMNS = ("Protocol", "Source.Port", "Destination.Port", "Total.Backward.Packets")


def scorable_columns(cols: dict) -> np.ndarray:
    """`scorable` from a flow table's columns (volume is the two payload totals)."""
    payload = np.asarray(cols["Total.Length.of.Fwd.Packets"], dtype=float) + np.asarray(
        cols["Total.Length.of.Bwd.Packets"], dtype=float
    )
    return scorable(cols["Protocol"], cols["Total.Backward.Packets"], payload)


def supported_tier(count: int) -> int:
    """Highest tier an entry of `count` flows can claim: k with count >= MIN_EXCEEDANCES * 10**k."""
    k = 0
    while k < len(TIER_LABELS) - 1 and count >= MIN_EXCEEDANCES * 10 ** (k + 1):
        k += 1
    return k


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


def plan(apps, classes, counts, min_count: int, unattributed=None) -> list[tuple[str, np.ndarray, str]]:
    """The fallback chain (see the module docstring): (entry name, which rows it is fitted on and judges, what it
    judges in words). A row is one flow (`build`) or one group of flows with its count (`baseline learn`);
    `classes`: port class keys (`service_keys`), None for no class entries; `unattributed`: rows only the
    all-traffic entry may learn from (a sensor's overflow group)."""
    apps = np.asarray(apps).astype(str)
    counts = np.asarray(counts, dtype=np.int64)
    names, inverse = np.unique(apps, return_inverse=True)
    free = np.ones(len(apps), dtype=bool) if unattributed is None else ~np.asarray(unattributed, dtype=bool)
    per_app = np.bincount(inverse[free], weights=counts[free], minlength=len(names))
    out: list[tuple[str, np.ndarray, str]] = []
    rest = np.ones(len(apps), dtype=bool)
    for j, name in enumerate(names):
        if per_app[j] >= min_count and free[inverse == j].all():
            mask = inverse == j
            out.append((str(name), mask, "flows of this application"))
            rest &= ~mask
    if classes is not None and (rest & free).any():
        keys = np.asarray(classes)
        uniq, cinv = np.unique(keys[rest & free], return_inverse=True)
        per_class = np.bincount(cinv, weights=counts[rest & free], minlength=len(uniq))
        for key, n in zip(uniq, per_class):
            if n >= min_count:
                mask = rest & free & (keys == key)
                out.append((class_name(key), mask, "flows of applications without an entry, on this port class"))
                rest &= ~mask
    total = int(counts.sum())
    if counts[rest].sum() >= min(min_count, total) and rest.any():
        out.append((ALL_TRAFFIC, rest, "flows no application or port class entry judges"))
    else:  # every flow has an entry: unseen traffic is judged against all of it (said in `judges`)
        out.append((ALL_TRAFFIC, np.ones(len(apps), dtype=bool), "unseen traffic, fitted on all flows"))
    return out


def entry_document(
    count: int, judges: str, metrics: dict[str, dict], scorer, scores: np.ndarray, per_axis: np.ndarray,
    weights: np.ndarray | None = None,
) -> dict:  # fmt: skip
    """One entry of the baseline file from its fitted scorer and the scores of its flows (a weighted sample of
    them with `weights`)."""
    tiers = tier_thresholds(scores, weights)
    cap = supported_tier(count)
    return {
        "count": count,
        "judges": judges,
        "max_tier": cap,
        "metrics": metrics,
        "model": scorer.params(),
        "tiers": tiers,
        "radar_sample": _radar_sample(per_axis, np.minimum(tier_of(scores, tiers), cap)),
    }


def document(
    entries: dict[str, dict], *, method: str, combine: str, min_count: int, feature_profile: str, flows: int,
    ranked: dict[str, int], applications: int, inputs: list[str] | None = None, extra_meta: dict | None = None,
) -> dict:  # fmt: skip
    """The whole baseline file around its entries: format, version, what it was made from, the ranking
    (`ranked`: flows per application; `applications`: how many the scorable flows held)."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "feature_profile": feature_profile,
        "time_precision_us": TIME_PRECISION_US,
        "built": now_iso("seconds"),
        "inputs": inputs or [],
        "method": method,
        "combine": combine,
        "axes": list(AXES),
        "min_count": min_count,
        "counts": {
            "flows": flows,
            "applications": applications,
            "modelled": sum(1 for k in entries if entry_kind(k) == "application"),
            "port_classes": sum(1 for k in entries if entry_kind(k).startswith("port class")),
        },
    }
    meta.update(extra_meta or {})
    return {**meta, "ranking": ranking(ranked), "applications": entries}


def build(
    apps: np.ndarray,
    metrics: np.ndarray,
    *,
    classes: np.ndarray | None = None,
    method: str = "robust",
    combine: str | None = None,
    min_count: int = 100,
    feature_profile: str = "unicauca",
    inputs: list[str] | None = None,
    extra_meta: dict | None = None,
    counts: dict[str, int] | None = None,
) -> dict:
    """The baseline document from scorable flows' application names, (n, 9) metrics and port class keys
    (`service_keys`; None: no class entries). `counts`: flows per application of all flows read (scorable
    or not) for the ranking; default: the scorable ones."""
    apps = np.asarray(apps).astype(str)
    if len(apps) == 0:
        raise InputError("no scorable flows to build a baseline from (answered, with payload for TCP)")
    entries: dict[str, dict] = {}
    combine_used = combine or make_scorer(method).combine
    for name, mask, judges in plan(apps, classes, np.ones(len(apps), dtype=np.int64), min_count):
        M = metrics[mask]
        X = M[:, AXIS_INDEX]
        scorer = make_scorer(method, combine).fit(X)
        scores, per_axis = scorer.score_many(X)
        stats = {name: {**_stats(M[:, i]), "histogram": _histogram(M[:, i])} for i, name in enumerate(METRICS)}
        entries[name] = entry_document(int(mask.sum()), judges, stats, scorer, scores, per_axis)
    names, app_counts = np.unique(apps, return_counts=True)
    ranked = counts or {str(k): int(v) for k, v in zip(names, app_counts)}
    return document(entries, method=method, combine=combine_used, min_count=min_count,
                    feature_profile=feature_profile, flows=int(len(apps)), ranked=ranked, applications=len(names),
                    inputs=inputs, extra_meta=extra_meta)  # fmt: skip


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
    capped: np.ndarray
    """Flows whose score passed a threshold beyond their entry's supported tier (the tier says the cap)."""
    raw_tier: np.ndarray
    """The tier before the cap: how rare the flow looked, which decides how likely the sensor's statistics keep it
    (ntds.detect.population)."""


class Baseline:
    """A loaded baseline: scores batches of flows against their application's entry."""

    def __init__(self, doc: dict, source: str = "baseline") -> None:
        self.doc = doc
        self.source = source
        self.method = doc["method"]
        self.profile = doc["feature_profile"]
        self.scorers = {}
        self.tiers = {}
        self.caps: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.class_keys: dict[int, str] = {}
        for name, e in doc["applications"].items():
            scorer = make_scorer(self.method, doc["combine"]).load(e["model"])
            self.scorers[name] = scorer
            self.tiers[name] = e["tiers"]
            self.counts[name] = e["count"]
            self.caps[name] = e.get("max_tier", supported_tier(e["count"]))
        for key_name in self.scorers:
            if entry_kind(key_name).startswith("port class"):
                self.class_keys[_class_key(key_name)] = key_name

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
        if doc.get("version") not in READABLE_VERSIONS:
            raise InputError(
                f"{p}: baseline format version {doc.get('version')!r:.20}, this sensor reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
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

    def entries(self, apps, classes=None) -> list[str]:
        """The entry that judges each flow: its application's, else its port class's, else all traffic."""
        apps = np.asarray(apps).astype(str)
        keys = np.full(len(apps), ALL_TRAFFIC, dtype=object)
        if len(apps) == 0:
            return []
        uniq, inverse = np.unique(apps, return_inverse=True)
        own = np.array([u in self.scorers and entry_kind(u) == "application" for u in uniq])[inverse]
        keys[own] = apps[own]
        if classes is not None and self.class_keys and not own.all():
            rest = ~own
            cu, cinv = np.unique(np.asarray(classes)[rest], return_inverse=True)
            names = np.array([self.class_keys.get(int(k), ALL_TRAFFIC) for k in cu], dtype=object)
            keys[rest] = names[cinv]
        return keys.tolist()

    def score(self, apps, metrics: np.ndarray, classes=None) -> ScoredFlows:
        """Score a batch: each flow against the entry that judges it (`entries`)."""
        apps = np.asarray(apps).astype(str)
        n = len(apps)
        X = np.asarray(metrics, dtype=float)[:, AXIS_INDEX]
        score = np.zeros(n)
        tier = np.zeros(n, dtype=int)
        capped = np.zeros(n, dtype=bool)
        raw_tier = np.zeros(n, dtype=int)
        per_axis = np.zeros((n, len(AXES)))
        entry = self.entries(apps, classes)
        keys = np.array(entry, dtype=object)
        for name in set(entry):
            mask = keys == name
            s, pa = self.scorers[name].score_many(X[mask])
            score[mask], per_axis[mask] = s, pa
            raw = tier_of(s, self.tiers[name])
            raw_tier[mask] = raw
            cap = self.caps[name]
            tier[mask] = np.minimum(raw, cap)
            capped[mask] = raw > cap
        return ScoredFlows(score, tier, per_axis, entry, capped, raw_tier)

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
                "text": axis_text(AXES[j], float(x_axes[j]), float(typical[j])),
            }
            for j in order
        ]


def _class_key(name: str) -> int:
    """The key of a port class entry name (inverse of class_name); ValueError for a malformed name."""
    inner = name[1:-1]
    proto_name, _, port = inner.partition("/")
    protos = {v: k for k, v in PROTOCOL_NAMES.items()}
    proto = protos.get(proto_name)
    if proto is None and proto_name.startswith("IP-") and proto_name[3:].isdigit():
        proto = int(proto_name[3:])
    if proto is None or not 0 <= proto <= 255:
        raise ValueError(f"entry {name[:40]!r}: not a port class")
    if proto not in (6, 17, 132):
        return proto * _CLASS_SCALE
    if port == "high":
        return proto * _CLASS_SCALE + _HIGH
    if not port.isdigit() or not 0 <= int(port) < HIGH_PORT:
        raise ValueError(f"entry {name[:40]!r}: not a port class")
    return proto * _CLASS_SCALE + int(port)


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
        cap = e.get("max_tier", 0)
        if not isinstance(cap, int) or isinstance(cap, bool) or not 0 <= cap <= 5:
            raise ValueError(f"{where}.max_tier: expected a whole number from 0 to 5")
        if entry_kind(name).startswith("port class"):
            _class_key(name)


__all__ = [
    "ALL_TRAFFIC",
    "Baseline",
    "METRICS",
    "TIER_LABELS",
    "build",
    "class_name",
    "entry_kind",
    "metrics_matrix",
    "save",
    "scorable",
    "service_keys",
]
