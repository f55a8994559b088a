"""Per-interval summaries: what the weekly report is built from, counted on the sensor.

A flow belongs to the interval it started in. Intervals close once the flows
that could still belong to them have had time to expire (an NFStream flow is
reported at most one active timeout plus one idle timeout after it starts);
a flow that arrives later still is counted in a fresh summary for its old
interval, which the aggregator adds to the first. Nothing is dropped.

Counts cover every flow NFStream sees, single-packet ones too (the 87-column
records drop those, but unanswered probes are exactly what the report wants
to show). Only flows with a record are scored, so only they have a tier.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from ntds.flows.profiles import FLOW_TIMEOUT_US
from ntds.flows.traffic import FlowTraffic
from ntds.times import iso_ms
from ntds.wire.schema import TIERS, TRAFFIC_CLASSES, UNANSWERED_KINDS
from sensor.geo import GeoIP
from sensor.traffic_classes import EXTERNAL, PEER_TO_PEER, TrafficClasses

GRACE_MS = 2 * FLOW_TIMEOUT_US // 1000 + 5000
"""How long after its end an interval stays open: active + idle timeout, plus 5 s."""
MAX_APPLICATIONS = 64
MAX_COUNTRIES = 64
MAX_PAIRS = 128
OTHER = "(other)"
UDP = 17
SSDP_PORT = 1900


class _Bucket:
    __slots__ = ("apps", "countries", "flows", "packets", "bytes", "pairs", "traffic", "unanswered")

    def __init__(self) -> None:
        self.flows = self.packets = self.bytes = 0
        self.traffic = {c: [0, 0, 0, 0, 0] for c in TRAFFIC_CLASSES}  # flows, packets up/down, bytes up/down
        self.apps: dict[str, list[int]] = {}  # flows, bytes up, bytes down, tiers...
        self.unanswered = {k: [0, 0] for k in UNANSWERED_KINDS}
        self.pairs: dict[tuple[str, str], list[int]] = {}  # flows, two-way, one-way, bytes a->b, bytes b->a
        self.countries: dict[str, list[int]] = {}  # flows, bytes in, bytes out, max tier


@lru_cache(maxsize=65536)
def _order_key(ip: str) -> tuple[int, int, str]:
    """Addresses in numeric order (cached: the same hosts talk all day)."""
    try:
        a = ipaddress.ip_address(ip)
        return (a.version, int(a), "")
    except ValueError:
        return (9, 0, ip)


def iso_seconds(ms: int) -> str:
    return iso_ms(ms, "seconds")


class Summariser:
    """learn flows with `add`, take finished intervals with `close` (wire summary bodies)."""

    def __init__(self, classes: TrafficClasses, geo: GeoIP | None = None, interval_s: int = 60) -> None:
        if interval_s < 1:
            raise ValueError("summary interval must be at least 1 s")
        self.classes = classes
        self.geo = geo or GeoIP()
        self.interval_ms = interval_s * 1000
        self._buckets: dict[int, _Bucket] = {}
        self._capture = [0, 0, 0]  # packets seen, dropped (totals), flows active
        self._reported = [0, 0]
        self.skipped = 0  # flows whose clock cannot be a date (fuzzed captures)

    def add(self, t: FlowTraffic, tier: int | None = None, classified: tuple[str, bool] | None = None) -> None:
        """Count one flow; `classified` is its (traffic class, src is the client) when the caller already has it
        (the sensor classifies each flow once for the summaries and the context counts)."""
        start = t.start_ms - t.start_ms % self.interval_ms
        b = self._buckets.get(start)
        if b is None:
            try:  # an interval whose start has no calendar date (a fuzzed capture's clock) is not summarised
                iso_seconds(start)
            except (ValueError, OverflowError, OSError):
                self.skipped += 1
                return
            b = self._buckets[start] = _Bucket()
        pf, bf, pb, bb = t.packets_fwd, t.bytes_fwd, t.packets_bwd, t.bytes_bwd
        b.flows += 1
        b.packets += pf + pb
        b.bytes += bf + bb
        cls, src_is_client = classified or self.classes.classify(t.src_ip, t.dst_ip)
        up, down = (bf, bb) if src_is_client else (bb, bf)
        row = b.traffic[cls]
        row[0] += 1
        row[1] += pf if src_is_client else pb
        row[2] += pb if src_is_client else pf
        row[3] += up
        row[4] += down
        app = b.apps.get(t.application)
        if app is None:
            app = b.apps[t.application] = [0] * (3 + TIERS)
        app[0] += 1
        app[1] += up
        app[2] += down
        if tier is not None:
            app[3 + tier] += 1
        if pb == 0 and t.opens:
            kind = (
                "ssdp_no_answer"
                if t.protocol == UDP and t.dst_port == SSDP_PORT
                else "p2p_one_way"
                if cls == PEER_TO_PEER
                else "unanswered"
            )
            b.unanswered[kind][0] += 1
            b.unanswered[kind][1] += bf
        if cls == PEER_TO_PEER:
            flipped = _order_key(t.dst_ip) < _order_key(t.src_ip)
            key = (t.dst_ip, t.src_ip) if flipped else (t.src_ip, t.dst_ip)
            pair = b.pairs.get(key)
            if pair is None:
                pair = b.pairs[key] = [0, 0, 0, 0, 0]
            pair[0] += 1
            pair[1 if pb else 2] += 1
            pair[3] += bb if flipped else bf
            pair[4] += bf if flipped else bb
        elif cls == EXTERNAL:
            remote = t.dst_ip if src_is_client else t.src_ip
            cc = self.geo.country(remote)
            c = self.countries_row(b, cc)
            c[0] += 1
            c[1] += down
            c[2] += up
            if tier is not None and tier > c[3]:
                c[3] = tier

    @staticmethod
    def countries_row(b: _Bucket, cc: str) -> list[int]:
        c = b.countries.get(cc)
        if c is None:
            c = b.countries[cc] = [0, 0, 0, 0]
        return c

    def capture(self, packets_seen: int, packets_dropped: int, flows_active: int) -> None:
        """The capture's running totals; the next summary reports what changed since the last one."""
        self._capture = [packets_seen, packets_dropped, flows_active]

    def close(self, now_ms: int | None = None) -> list[dict]:
        """Summary bodies of the intervals that ended GRACE_MS before now_ms (all of them if None)."""
        done = sorted(s for s in self._buckets if now_ms is None or s + self.interval_ms + GRACE_MS <= now_ms)
        bodies = []
        for start in done:
            bodies.append(self._body(start, self._buckets.pop(start)))
        if bodies:
            seen, dropped, active = self._capture
            bodies[0]["capture"] = {
                "packets_seen": max(0, seen - self._reported[0]),
                "packets_dropped": max(0, dropped - self._reported[1]),
                "flows_active": active,
            }
            self._reported = [seen, dropped]
        return bodies

    def _body(self, start: int, b: _Bucket) -> dict:
        apps = _fold(b.apps, MAX_APPLICATIONS, key=lambda v: (v[1] + v[2], v[0]), merge=_merge_app)
        countries = _fold(b.countries, MAX_COUNTRIES, key=lambda v: (v[1] + v[2], v[0]), merge=_merge_country)
        pairs = sorted(b.pairs.items(), key=lambda kv: (-(kv[1][3] + kv[1][4]), kv[0]))
        rest = pairs[MAX_PAIRS:]
        return {
            "interval_start": iso_seconds(start),
            "interval_s": self.interval_ms // 1000,
            "flows": b.flows,
            "packets": b.packets,
            "bytes": b.bytes,
            "traffic": {
                c: dict(zip(("flows", "packets_up", "packets_down", "bytes_up", "bytes_down"), v))
                for c, v in b.traffic.items()
            },
            "applications": [
                {"application": a, "flows": v[0], "bytes_up": v[1], "bytes_down": v[2], "tiers": v[3:]} for a, v in apps
            ],
            "unanswered": {k: {"flows": v[0], "bytes": v[1]} for k, v in b.unanswered.items()},
            "peer_pairs": [
                {"a": a, "b": z, "flows": v[0], "two_way": v[1], "one_way": v[2], "bytes_ab": v[3], "bytes_ba": v[4]}
                for (a, z), v in pairs[:MAX_PAIRS]
            ],
            "peer_pairs_omitted": {
                "pairs": len(rest),
                "flows": sum(v[0] for _, v in rest),
                "bytes": sum(v[3] + v[4] for _, v in rest),
            },
            "countries": [
                {"country": cc, "flows": v[0], "bytes_in": v[1], "bytes_out": v[2], "max_tier": v[3]}
                for cc, v in countries
            ],
            "capture": {"packets_seen": 0, "packets_dropped": 0, "flows_active": self._capture[2]},
        }


def _merge_app(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b)]


def _merge_country(a: list[int], b: list[int]) -> list[int]:
    return [a[0] + b[0], a[1] + b[1], a[2] + b[2], max(a[3], b[3])]


def _fold(table: dict[str, list[int]], limit: int, key, merge) -> list[tuple[str, list[int]]]:
    """The largest `limit` entries by key, the rest merged into one (other) entry; sorted by name."""
    items = sorted(table.items(), key=lambda kv: (tuple(-x for x in key(kv[1])), kv[0]))
    if len(items) > limit:
        kept, rest = items[:limit], items[limit:]
        folded = rest[0][1]
        for _, v in rest[1:]:
            folded = merge(folded, v)
        kept.append((OTHER, folded))
        items = kept
    return sorted(items)
