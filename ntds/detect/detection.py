"""Detection: the one place finished flows become alerts (capture -> features -> **detect** -> publish).

`ntds-sensor run`, `replay` and `score` all hand their flows, in the order
they finished, to one `Detection`:

1. per flow, rarity against the baseline, for scorable flows only (answered,
   and for TCP carrying payload; see ntds.detect.baseline), in numpy batches;
2. every flow, single-packet and unanswered ones included, through each
   enabled host-level detector (ntds.detect.hosts);
3. every flow against the indicator set, if one is loaded (ntds.intel: its two
   ends, server name and fingerprints; every match is an `intel` alert, its
   tier from the indicator's confidence);
4. the alerts of all three (flows at or above `min_flow_tier`, host-level
   findings at or above `min_tier`, every intel match) through the grouping and
   the hourly budget (ntds.detect.grouping), on the flows' own clock.

A calibrated tier k flags about 1 scored flow in 10**k by construction, so the
per-flow default is tier 4 (about one alert per 10,000 scored flows before
grouping); the host-level detectors, which only fire on behaviour, default to
tier 3.

The result depends only on the flows and their order, so offline scoring of
a capture gives exactly the alerts a replay of it sent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ntds.detect.alerts import COLUMNS, features_map, flow_alert, host_alert
from ntds.detect.baseline import AXIS_INDEX, Baseline, metrics_matrix, scorable_columns, service_keys
from ntds.detect.behind import FlowsBehind
from ntds.detect.grouping import Grouper, GroupingOptions
from ntds.detect.hosts import DETECTORS, Detector, Finding
from ntds.detect.workers import Workers
from ntds.flows.files import records_to_columns
from ntds.flows.traffic import FlowTraffic
from ntds.intel.alerts import intel_alert
from ntds.intel.matching import FIELDS, IntelSet


@dataclass
class Judged:
    """What one batch came to: each flow's tier (None: not scored) and the alerts now due."""

    tiers: list[int | None]
    alerts: list[dict]
    due_ms: list[int] = field(default_factory=list)
    """The data time each alert went out at (its group's wait over, or the escalation seen): time to detect."""
    scored: Scored | None = None
    """The batch's scorable flows as the baseline saw them (what the sensor's statistics are made of)."""


@dataclass
class Scored:
    """Scorable flows of one batch: start time, application, port class, the nine metrics, and the tier
    before the cap."""

    start_ms: np.ndarray
    apps: np.ndarray
    classes: np.ndarray
    metrics: np.ndarray
    raw_tier: np.ndarray


@dataclass
class DetectionStats:
    scored: int = 0
    findings: Counter = field(default_factory=Counter)
    """Host-level findings by kind, before grouping."""
    flow_alerts: int = 0
    """Flows at or above min_flow_tier, before grouping."""


@dataclass
class _Begun:
    """A batch between `Detection.begin` and `Detection.end`."""

    records: Sequence[Any]
    tiers: list[int | None]
    flow_alerts: dict[int, dict]
    scored: Scored | None
    intel: list | None


class _Observed:
    """A flow as detection reads it: traffic always, the 87 columns when the meter recorded them."""

    __slots__ = ("features", "traffic")

    def __init__(self, features: tuple | None, traffic: FlowTraffic) -> None:
        self.features = features
        self.traffic = traffic


def build_detectors(settings: dict[str, dict] | None, local: Callable[[str], bool] | None = None) -> list[Detector]:
    """The enabled detectors with their options (sensor.yaml `detectors:`; every detector is on by default)."""
    settings = settings or {}
    unknown = set(settings) - set(DETECTORS)
    if unknown:
        raise ValueError(f"unknown detector {sorted(unknown)[0]!r} (known: {', '.join(DETECTORS)})")
    out = []
    for kind, cls in DETECTORS.items():
        options = dict(settings.get(kind) or {})
        if options.pop("enabled", True) is False:
            continue
        out.append(cls(local=local, **options))
    return out


class Detection:
    """Flows in, grouped alerts out; see the module docstring."""

    def __init__(
        self,
        baseline: Baseline,
        *,
        min_tier: int = 3,
        min_flow_tier: int = 4,
        detectors: dict[str, dict] | None = None,
        grouping: GroupingOptions | None = None,
        local: Callable[[str], bool] | None = None,
        intel: IntelSet | None = None,
        workers: int = 0,
    ) -> None:
        self.baseline = baseline
        self.intel = intel
        """The indicator set flows are matched against (None: none); swapped in by a push, between batches."""
        self.local = local
        self.min_tier = min_tier
        self.min_flow_tier = min_flow_tier
        self.workers: Workers | None = None
        """With `workers` > 0 the host-level detectors run in that many processes (ntds.detect.workers)."""
        if workers > 0:
            self.workers = Workers(workers, lambda: build_detectors(detectors, local))
            self.detectors = self.workers.kinds
        else:
            self.detectors = build_detectors(detectors, local)
        self.grouper = Grouper(grouping)
        self.behind = FlowsBehind()
        self.stats = DetectionStats()
        self.clock_ms = 0

    @property
    def evicted(self) -> int:
        """Keys the detectors and the grouping stopped tracking because their tables were full."""
        hosts = sum(self.workers.evicted) if self.workers else sum(d.evicted for d in self.detectors)
        return hosts + self.grouper.evicted + self.behind.evicted

    def process(self, records: Sequence[Any]) -> Judged:
        """One batch of finished flows (objects with `.features` (87 columns or None) and `.traffic`)."""
        return self.end(self.begin(records))

    def begin(self, records: Sequence[Any]) -> _Begun:
        """The first half of `process`: the batch goes to the analysis workers, and its rarity is scored here
        meanwhile. A caller with more to do (reading the next batch) does it before `end`; one batch at a time."""
        if self.workers is not None:
            self.workers.send([r.traffic for r in records])
        tiers: list[int | None] = [None] * len(records)
        flow_alerts: dict[int, dict] = {}
        scored = None
        recorded = [i for i, r in enumerate(records) if r.features is not None]
        if recorded:
            cols = records_to_columns([records[i] for i in recorded], COLUMNS)
            mask = scorable_columns(cols)
            if mask.any():
                picked = np.flatnonzero(mask)
                sub = {k: v[mask] for k, v in cols.items()}
                scored = self._score([records[recorded[j]] for j in picked], [recorded[j] for j in picked], sub,
                                     tiers, flow_alerts)  # fmt: skip
        return _Begun(records, tiers, flow_alerts, scored, self._intel(records))

    def end(self, begun: _Begun) -> Judged:
        """The second half of `process`: the host-level findings, in flow order, then grouping."""
        records, tiers, flow_alerts, intel = begun.records, begun.tiers, begun.flow_alerts, begun.intel
        out: list[dict] = []
        due: list[int] = []
        grouper = self.grouper

        def sent(alerts: list[dict]) -> None:
            out.extend(alerts)
            due.extend([self.clock_ms] * len(alerts))

        behind = self.behind
        detectors = self.detectors
        # Detector.findings is learn_one then score_one: called directly (no list a flow) unless a detector
        # overrides it to share work between the two steps.
        steps = [(d, None, d.findings) if type(d).findings is not Detector.findings else (d, d.learn_one, d.score_one)
                 for d in detectors]  # fmt: skip
        found = self.workers.receive() if self.workers is not None else None

        def host(f: Finding, d: Detector) -> None:
            self.stats.findings[f.kind] += 1
            if f.tier >= self.min_tier:
                alert = host_alert(f, self.baseline.id, behind.behind(f, d))
                sent(grouper.add(alert, self.clock_ms))

        for i, r in enumerate(records):
            t = r.traffic
            now = t.end_ms if t.end_ms > t.start_ms else t.start_ms
            if now > self.clock_ms:
                self.clock_ms = now
                sent(grouper.advance(now))
            behind.add(t, tiers[i])
            if found is None:
                for d, learn, judge in steps:
                    if learn is None:
                        for f in judge(t):
                            host(f, d)
                    else:
                        learn(t)
                        f = judge(t)
                        if f is not None:
                            host(f, d)
            else:
                for d_i, f in found.get(i, ()):
                    host(f, detectors[d_i])
            alert = flow_alerts.get(i)
            if alert is not None:
                sent(grouper.add(alert, self.clock_ms))
            for m in intel[i] if intel else ():
                self.stats.findings["intel"] += 1
                seen = _fields(r)[FIELDS.index(m.field)]
                alert = intel_alert(t, self.intel.indicator(m.index), m.field, seen, self.baseline.id, tiers[i],
                                    self.local)  # fmt: skip
                sent(grouper.add(alert, self.clock_ms))
        return Judged(tiers, out, due, begun.scored)

    def _intel(self, records: Sequence[Any]) -> list | None:
        """Each flow's indicator matches (None without a set): one vectorised pass over the batch."""
        if self.intel is None or not len(self.intel):
            return None
        return self.intel.match([_fields(r) for r in records], time.time())

    def _score(self, records, positions, cols, tiers, flow_alerts) -> Scored:
        """Rarity of the scorable flows: their tiers and flow alerts filled in; the batch as the baseline saw it."""
        apps = cols["ProtocolName"].astype(str)
        M = metrics_matrix(cols)
        classes = service_keys(cols["Protocol"], cols["Source.Port"], cols["Destination.Port"])
        scored = self.baseline.score(apps, M, classes)
        self.stats.scored += len(apps)
        start = np.array([r.traffic.start_ms for r in records], dtype=np.int64)
        batch = Scored(start, apps, classes, M, scored.raw_tier)
        for j, pos in enumerate(positions):
            tiers[pos] = int(scored.tier[j])
        axes = M[:, AXIS_INDEX]
        for j in np.flatnonzero(scored.tier >= self.min_flow_tier):
            r, entry = records[j], scored.entry[j]
            tier = int(scored.tier[j])
            self.stats.flow_alerts += 1
            flow_alerts[positions[j]] = flow_alert(
                r.traffic,
                str(cols["Flow.ID"][j]),
                entry,
                float(scored.score[j]),
                tier,
                self.baseline.explain(entry, axes[j], scored.per_axis[j]),
                self.baseline.id,
                features_map(r.features),
                capped_at=tier if scored.capped[j] else None,
                protocol=int(cols["Protocol"][j]),
            )
        return batch

    def advance(self, now_ms: int) -> list[dict]:
        """Groups due by `now_ms` (a live sensor's wall clock when no flow has ended for a while)."""
        if now_ms <= self.clock_ms:
            return []
        self.clock_ms = now_ms
        return self.grouper.advance(now_ms)

    def close(self) -> list[dict]:
        """Every alert still being grouped: the end of the input, or a sensor stopping."""
        return self.grouper.close()

    def set_local(self, local: Callable[[str], bool]) -> None:
        """New local networks (SIGHUP) for the detectors, from the next batch on; with analysis workers, `local`
        must pickle (a bound method of the sensor's traffic classes does)."""
        self.local = local
        if self.workers is not None:
            self.workers.set_local(local)
        else:
            for d in self.detectors:
                d.local = local

    def stop(self) -> None:
        """End the analysis workers, if any (their state goes with them)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def reload(self, baseline: Baseline, min_tier: int, min_flow_tier: int) -> None:
        """SIGHUP: a new baseline and minimum tiers from the next flow on; detector state is kept."""
        self.baseline, self.min_tier, self.min_flow_tier = baseline, min_tier, min_flow_tier


def _fields(r: Any) -> tuple[str, str, str, str, str]:
    """What indicators are matched on (ntds.intel.matching.FIELDS): the meter's extra columns carry the server name
    and fingerprints (single-packet flows and flow files written without --extra have none)."""
    t, extra = r.traffic, getattr(r, "extra", None)
    if not extra:
        return (t.src_ip, t.dst_ip, t.server_name, "", "")
    return (t.src_ip, t.dst_ip, t.server_name or extra[4] or "", extra[5] or "", extra[6] or "")


def observed(features: tuple | None, traffic: FlowTraffic) -> _Observed:
    """Wrap a flow read from a flow file (no meter record) for `Detection.process`."""
    return _Observed(features, traffic)
