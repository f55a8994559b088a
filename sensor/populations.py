"""The sensor's side of baselines that learn: per interval, what its scorable flows looked like.

Each stats interval (`stats_interval_s`, an hour by default), every scored flow
is counted into the `Population` of its application and port class
(ntds.detect.population: histograms of the nine metrics, a rarity-weighted
sample of the seven axes), and the finished interval goes to the aggregator as
`stats` messages, which `ntds-aggregator baseline learn` turns into a candidate
baseline. Like summaries, a flow belongs to the interval it started in, and an
interval closes once its flows have had time to expire.

Memory and size are bounded: at most MAX_GROUPS populations per interval (the
rest of an interval's flows are counted in one group that only the all-traffic
entry learns from), a fixed number of bins and sampled flows per population,
and each message under the frame limit (a population too big for one message
continues in the next; its parts add up).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from ntds.detect.baseline import AXIS_INDEX, METRICS, class_name
from ntds.detect.detection import Scored
from ntds.detect.population import K_PER_TIER, Population
from ntds.wire.schema import MAX_FRAME
from sensor.summaries import GRACE_MS, iso_seconds

MAX_GROUPS = 256
"""Populations per interval (each about 90 kB in memory)."""
OVERFLOW = ("(other)", "")
"""The group of an interval's flows beyond MAX_GROUPS: application (other), no port class."""
BUDGET = MAX_FRAME - 4096
"""Bytes of one message's body (the envelope and JSON's separators stay within the rest)."""
MAX_GROUPS_PER_MESSAGE = 64


def _size(obj) -> int:
    return len(json.dumps(obj, separators=(",", ":"))) + 1


class PopulationStats:
    """`add` each batch's scored flows, `close` finished intervals into stats message bodies."""

    def __init__(self, interval_s: int, seed: int = 0) -> None:
        if interval_s < 1:
            raise ValueError("stats interval must be at least 1 s")
        self.interval_ms = interval_s * 1000
        self._buckets: dict[int, dict[tuple[str, str], Population]] = {}
        self.rng = np.random.default_rng(seed)
        """Seeded: the same capture replayed gives the same statistics."""
        self.overflowed = 0

    def add(self, scored: Scored) -> None:
        starts = scored.start_ms - scored.start_ms % self.interval_ms
        where: dict[tuple[int, str, int], list[int]] = defaultdict(list)
        for i, key in enumerate(zip(starts.tolist(), scored.apps.tolist(), scored.classes.tolist())):
            where[key].append(i)
        for (start, app, cls), rows in where.items():
            bucket = self._buckets.setdefault(start, {})
            key = (app, class_name(cls))
            pop = bucket.get(key)
            if pop is None and len(bucket) >= MAX_GROUPS:
                key = OVERFLOW
                self.overflowed += len(rows)
                pop = bucket.get(key)
            if pop is None:
                pop = bucket[key] = Population(tuple(METRICS), AXIS_INDEX)
            idx = np.asarray(rows)
            pop.queue(scored.metrics[idx], scored.raw_tier[idx], self.rng)

    def close(self, now_ms: int | None, baseline_id: str) -> list[dict]:
        """Stats bodies of the intervals that ended GRACE_MS before now_ms (all of them if None)."""
        done = sorted(s for s in self._buckets if now_ms is None or s + self.interval_ms + GRACE_MS <= now_ms)
        out: list[dict] = []
        for start in done:
            groups = sorted(self._buckets.pop(start).items())
            out.extend(self._bodies(iso_seconds(start), baseline_id, groups))
        return out

    def _bodies(self, start: str, baseline_id: str, groups) -> list[dict]:
        head = {"interval_start": start, "interval_s": self.interval_ms // 1000, "baseline_id": baseline_id}
        out: list[dict] = []
        current: list[dict] = []
        size = _size(head) + 16

        def flush() -> None:
            nonlocal current, size
            if current:
                out.append(head | {"groups": current})
            current, size = [], _size(head) + 16

        def record(app: str, port_class: str, flows: int) -> dict:
            nonlocal size
            rec = {"application": app, "port_class": port_class, "flows": flows, "metrics": [],
                   "sample": {"k": K_PER_TIER, "seen": [0] * 6, "tiers": [], "axes": []}}  # fmt: skip
            if size + _size(rec) > BUDGET or len(current) >= MAX_GROUPS_PER_MESSAGE:
                flush()
            current.append(rec)
            size += _size(rec)
            return rec

        for (app, port_class), pop in groups:
            pieces = pop.pieces()  # first: counts what is still queued
            rec = record(app, port_class, pop.flows)
            for kind, piece in pieces:
                n = _size(piece)
                if size + n > BUDGET:
                    flush()
                    rec = record(app, port_class, 0)  # a continuation: its parts add to the first
                if kind == "metric":
                    rec["metrics"].append(piece)
                else:
                    rec["sample"] = piece
                size += n
        flush()
        return out
