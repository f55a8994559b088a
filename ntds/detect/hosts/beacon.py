"""Beaconing: a client that calls the same destination at regular intervals with regular sizes, for hours.

The score follows RITA's published beacon analysis. Over the connections a
(client, destination, port) pair opened: the gaps between them and the bytes
the client sent. Each series is scored for symmetry (1 - |Bowley skewness|,
from the quartiles) and for dispersion (1 - median absolute deviation / median);
sizes also for smallness (1 - modal size / 65,535). The time score is the mean
of its two, the size score the mean of its three, the beacon score their mean:
1.0 is a metronome. Jitter added by C2 frameworks keeps the gaps symmetric
around their median, so it lowers the score only a little.

State is bounded: at most `pairs` pairs, each keeping its latest `keep`
connections; a pair is judged once it has `connections` connections over at
least `min_span_s`, and again at most every `every_s` of data time. Protocols
that are regular by design (NTP, DNS, discovery, messaging and push services
that nDPI names by their servers) are left out by application,
and so are popular destinations (more than `max_clients` local clients call
them): an update server every host polls is regular but not a covert channel,
while C2 is rare by nature (RITA's prevalence). A typical interval under
`min_interval_s` is a burst of one activity (a page's parallel connections,
day after day), not a beacon.
This runs on the sensor (it sees every connection start as it happens, and
one schema carries the alert); the aggregator would need per-connection rows
the summaries deliberately do not keep.
"""

from __future__ import annotations

import statistics
from collections import Counter

from ntds.detect.explain import duration, size
from ntds.detect.hosts.base import Detector, Finding, Option, is_group, register, tiered
from ntds.flows.traffic import FlowTraffic

REGULAR_BY_DESIGN = ["NTP", "DNS", "MDNS", "SSDP", "LLMNR", "NETBIOS", "DHCP", "DHCPV6", "IGMP", "ICMP", "IP_ICMP",
                     "IP_ICMPV6", "STUN", "SNMP", "SYSLOG",
                     # messaging and push services keep a heartbeat by design (nDPI names them by their servers)
                     "WHATSAPP", "SIGNAL", "TELEGRAM", "MESSENGER", "APPLEPUSH", "TEAMS", "SKYPE_TEAMS",
                     "SLACK"]  # fmt: skip


def bowley(values: list[float]) -> float:
    """Bowley (quartile) skewness; 0 where the quartiles cannot say (a flat middle)."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    if q3 == q1 or q2 in (q1, q3):
        return 0.0
    return (q3 + q1 - 2 * q2) / (q3 - q1)


def madm(values: list[float]) -> tuple[float, float]:
    """(median, median absolute deviation about it)."""
    mid = statistics.median(values)
    return mid, statistics.median(abs(v - mid) for v in values)


def beacon_score(times_ms: list[int], sizes: list[int]) -> tuple[float, dict]:
    """RITA's score of a series of connection starts and client sizes: (score 0..1, its parts)."""
    gaps = [b - a for a, b in zip(times_ms, times_ms[1:])]
    ts_skew = 1 - min(abs(bowley(gaps)), 1.0)
    gap_mid, gap_madm = madm(gaps)
    ts_madm = max(0.0, 1 - gap_madm / gap_mid) if gap_mid > 0 else 0.0
    ds_skew = 1 - min(abs(bowley(sizes)), 1.0)
    size_mid, size_madm = madm(sizes)
    ds_madm = max(0.0, 1 - size_madm / size_mid) if size_mid > 0 else 0.0
    mode = Counter(sizes).most_common(1)[0][0]
    ds_small = max(0.0, 1 - mode / 65535)
    ts = (ts_skew + ts_madm) / 2
    ds = (ds_skew + ds_madm + ds_small) / 3
    parts = {"gap": gap_mid, "gap_madm": gap_madm, "size": size_mid, "size_madm": size_madm, "ts": ts, "ds": ds}
    return (ts + ds) / 2, parts


class _Series:
    __slots__ = ("times", "sizes", "judged_ms", "reported_tier")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.sizes: list[int] = []
        self.judged_ms = 0
        self.reported_tier = 0


@register
class Beacon(Detector):
    kind = "beacon"
    OPTIONS = {
        "connections": Option(12, "connections a pair needs before it is judged", 4),
        "min_span_s": Option(3600, "and the time they must span, seconds", 1),
        "score": Option(0.85, "beacon score (0..1) that makes an alert (RITA's scale)", 0),
        "min_interval_s": Option(10, "shortest typical interval of a beacon, seconds (shorter gaps: a burst)", 0),
        "keep": Option(256, "latest connections kept per pair", 8),
        "every_s": Option(600, "a pair is judged again at most this often, seconds of data time", 1),
        "ignore_applications": Option(REGULAR_BY_DESIGN, "applications regular by design, never judged"),
        "max_clients": Option(5, "destinations more clients than this call are popular, not beacons", 1),
        "pairs": Option(50_000, "(client, destination, port) pairs tracked at once", 100),
        "destinations": Option(50_000, "destinations whose clients are counted at once", 100),
    }
    TIERS = (0.85, 0.92, 0.97)  # the score itself: 0.85 tier 3, 0.92 tier 4, 0.97 tier 5

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.series = self.table(self.pairs)
        self.callers = self.table(self.destinations)
        self._ignore = frozenset(a.upper() for a in self.ignore_applications)

    def _counted(self, flow: FlowTraffic) -> bool:
        return flow.opens and flow.application.upper() not in self._ignore and not is_group(flow.dst_ip)

    def learn_one(self, flow: FlowTraffic) -> None:
        if not self._counted(flow):
            return
        callers = self.callers.get((flow.dst_ip, flow.dst_port, flow.protocol), set)
        if len(callers) <= self.max_clients:
            callers.add(flow.src_ip)
        s = self.series.get((flow.src_ip, flow.dst_ip, flow.dst_port, flow.protocol), _Series)
        s.times.append(flow.start_ms)
        s.sizes.append(flow.bytes_fwd)
        if len(s.times) > self.keep:
            del s.times[: -self.keep]
            del s.sizes[: -self.keep]

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if not self._counted(flow):
            return None
        s = self.series.rows.get((flow.src_ip, flow.dst_ip, flow.dst_port, flow.protocol))
        if s is None or len(s.times) < self.connections or s.reported_tier >= 5:
            return None
        span_ms = s.times[-1] - s.times[0]
        if span_ms < self.min_span_s * 1000 or flow.start_ms - s.judged_ms < self.every_s * 1000:
            return None
        s.judged_ms = flow.start_ms
        if len(self.callers.rows.get((flow.dst_ip, flow.dst_port, flow.protocol), ())) > self.max_clients:
            return None
        times = sorted(s.times)
        score, parts = beacon_score(times, s.sizes)
        if parts["gap"] < self.min_interval_s * 1000:
            return None
        tier = tiered(score, self.TIERS) if score >= self.score else 0
        if tier <= s.reported_tier:
            return None
        s.reported_tier = tier
        n = len(times)
        return Finding(
            kind=self.kind,
            src_ip=flow.src_ip,
            dst_ip=flow.dst_ip,
            dst_port=flow.dst_port,
            protocol=flow.protocol,
            application=flow.application,
            first_ms=times[0],
            last_ms=times[-1],
            count=n,
            window_s=span_ms // 1000,
            tier=tier,
            score=score,
            signature=f"Beacon to {flow.dst_ip}:{flow.dst_port}: every {duration(parts['gap'] * 1000)} "
            f"for {duration(span_ms * 1000)}",
            facts=[
                {
                    "what": "interval",
                    "value": parts["gap"] / 1000,
                    "typical": parts["gap_madm"] / 1000,
                    "score": parts["ts"],
                    "text": f"{n} connections, one every {duration(parts['gap'] * 1000)} "
                    f"(jitter {duration(parts['gap_madm'] * 1000)}), over {duration(span_ms * 1000)}",
                },
                {
                    "what": "size",
                    "value": parts["size"],
                    "typical": parts["size_madm"],
                    "score": parts["ds"],
                    "text": f"each sent about {size(parts['size'])} (spread {size(parts['size_madm'])}); "
                    f"beacon score {score:.2f} of 1",
                },
            ],
            pattern=f"{flow.dst_ip}:{flow.dst_port}",
        )
