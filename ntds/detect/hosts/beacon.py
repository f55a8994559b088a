"""Beaconing: a client that calls the same outside destination at regular intervals, within minutes or for hours.

Two judgements of one series per (client, destination, port, protocol): the
connections the client opened (TCP, UDP and QUIC alike), their start times and
the bytes the client sent. An implant that keeps one connection open and polls
inside it (Merlin over QUIC, Sliver over mTLS) is seen by the meter: each
request of the client carrying more than a keepalive (128 B or more) after a
quiet second is a check-in of the series (`FlowTraffic.checkins`).

**Polling, within minutes** (ntds.detect.hosts.evidence, `regularity`): an
implant sleeps for its period, with the random jitter C2 frameworks add (0-50%
of it), then checks in. Once a series has `checkins` check-ins, it is a beacon
when at least `regular_share` of the gaps lie within +-`jitter` of the typical
gap (independent arrivals put 35% there, bursty ones fewer) and the chance of
that many from independent arrivals (a binomial tail, at lags 1-3 for check-ins
of two or three connections, and in bands of +-10% and 25% too, for timers
with little jitter) is at most `chance`. The tier says how sure: chance 1e-6:
3, 1e-20: 4, 1e-40: 5 (a timer with +-20% jitter gets there in about 20, 40
and 80 check-ins, one with +-50% in about 45, 60 and 110). A check-in period under
`min_period_s` is a transfer, not a timer.

**Regular for hours** (RITA's published beacon analysis): over the gaps
between connections and the bytes the client sent, each series is scored for
symmetry (1 - |Bowley skewness|, from the quartiles) and for dispersion (1 -
median absolute deviation / median); sizes also for smallness (1 - modal size /
65,535). The time score is the mean of its two, the size score the mean of its
three, the beacon score their mean: 1.0 is a metronome. A pair is judged once
it has `connections` connections over at least `min_span_s`, and again at most
every `every_s` of data time; a typical interval under `min_interval_s` is a
burst of one activity (a page's parallel connections, day after day), not a
beacon.

What is regular by principle stays out of both. Protocols that are periodic
by design (NTP, DNS and DNS over HTTPS/TLS, discovery, messaging and push
services that nDPI names by their servers) are left out by application;
popular destinations (more than `max_clients` local clients call them: update,
telemetry and push servers every host polls) by prevalence, as C2 is rare by
nature (RITA's prevalence); and destinations inside the site (local
networks), since a command server is on the Internet (RITA analyses internal
to external connections only): a monitoring station polling the site's servers
is not a beacon. Short, similar check-ins to a service that authenticates
(SSH, FTP, RDP, ...) are login attempts: the brute-force detector's story, so
this one stays quiet on them (`deferred`); a beacon's alert says when its
check-ins also look like brute force's attempts, and why they are not.

State is bounded: at most `pairs` pairs, each keeping its latest `keep`
connections. This runs on the sensor (it sees every connection start as it
happens, and one schema carries the alert); the aggregator would need
per-connection rows the summaries deliberately do not keep.
"""

from __future__ import annotations

import statistics
from collections import Counter

from ntds.detect.explain import duration, size
from ntds.detect.hosts.base import Detector, Finding, Option, is_group, register, tiered
from ntds.detect.hosts.evidence import (
    CHANCE,
    JITTER,
    REGULAR_SHARE,
    authentication_service,
    chance_in_band,
    regularity,
)
from ntds.flows.traffic import FlowTraffic

REGULAR_BY_DESIGN = ["NTP", "DNS", "DOH_DOT", "DNSCRYPT", "MDNS", "SSDP", "LLMNR", "NETBIOS", "DHCP", "DHCPV6", "IGMP",
                     "ICMP", "IP_ICMP", "IP_ICMPV6", "STUN", "SNMP", "SYSLOG",
                     # messaging and push services keep a heartbeat by design (nDPI names them by their servers)
                     "WHATSAPP", "SIGNAL", "TELEGRAM", "MESSENGER", "APPLEPUSH", "TEAMS", "SKYPE_TEAMS",
                     "SLACK"]  # fmt: skip
REGULAR_PORTS = [53, 67, 68, 123, 137, 138, 161, 162, 514, 546, 547, 853, 1900, 3478, 5223, 5228, 5353, 5355]
"""The same protocols by their well-known ports (DNS, DHCP, NTP, NetBIOS, SNMP, syslog, DNS over TLS/QUIC, SSDP,
STUN, Apple and Google push, mDNS, LLMNR): nDPI may name a lookup by its resolver's owner instead of DNS."""
CHANCE_TIERS = (1e-6, 1e-20, 1e-40)
"""Polling: the chance that makes tier 3, 4 and 5."""
SHORT_S = 60
"""A check-in that ended within this many seconds, answered and carrying data, is shaped like a login attempt."""


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
    __slots__ = ("times", "sizes", "brief", "judged_ms", "reported_tier", "seen", "polled", "ever")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.sizes: list[int] = []
        self.brief: list[bool] = []
        """Per check-in: short, answered and carrying data (shaped like a login attempt)."""
        self.judged_ms = 0
        self.reported_tier = 0
        self.seen = 0
        """Check-ins seen in all (the lists keep the latest `keep`)."""
        self.polled = 0
        """`seen` when the polling judgement last ran."""
        self.ever = (2**63, -(2**63))
        """Earliest and latest check-in ever: a bound on the span of the kept ones, known without reading them."""


@register
class Beacon(Detector):
    kind = "beacon"
    OPTIONS = {
        "checkins": Option(20, "check-ins before a series is judged for polling (within minutes)", 4),
        "regular_share": Option(REGULAR_SHARE, "share of gaps within the jitter band that makes polling", 0),
        "jitter": Option(JITTER, "half-width of that band, as a share of the typical gap (C2 jitter: 0-50%)", 0),
        "chance": Option(CHANCE, "largest chance of so many regular gaps from independent arrivals", 0),
        "min_period_s": Option(1.0, "shortest check-in period of polling, seconds (shorter: a transfer)", 0),
        "connections": Option(12, "connections a pair needs before it is judged over hours (RITA's score)", 4),
        "min_span_s": Option(3600, "and the time they must span, seconds", 1),
        "score": Option(0.85, "beacon score (0..1) that makes an alert (RITA's scale)", 0),
        "min_interval_s": Option(10, "shortest typical interval of a beacon over hours, seconds (shorter: a burst)", 0),
        "keep": Option(256, "latest connections kept per pair", 8),
        "every_s": Option(600, "a pair is judged over hours again at most this often, seconds of data time", 1),
        "ignore_applications": Option(REGULAR_BY_DESIGN, "applications regular by design, never judged"),
        "ignore_ports": Option(REGULAR_PORTS, "ports of protocols regular by design, never judged"),
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
        self._ignore_ports = frozenset(int(p) for p in self.ignore_ports)
        self.deferred = 0
        """Series left to the brute-force detector: short, similar check-ins to a service that authenticates."""

    def _counted(self, flow: FlowTraffic) -> bool:
        return (
            (flow.opens or bool(flow.checkins))
            and flow.dst_port not in self._ignore_ports
            and flow.application.upper() not in self._ignore
            and not is_group(flow.dst_ip)
        )

    def route(self, flow: FlowTraffic) -> str:
        """The destination: a series is one caller's, but whether a destination has too many callers to be a
        command server is counted over all of them."""
        return flow.dst_ip

    def learn_one(self, flow: FlowTraffic) -> None:
        if not self._counted(flow):
            return
        callers = self.callers.get((flow.dst_ip, flow.dst_port, flow.protocol), set)
        if len(callers) <= self.max_clients:
            callers.add(flow.src_ip)
        s = self.series.get((flow.src_ip, flow.dst_ip, flow.dst_port, flow.protocol), _Series)
        ever = s.ever
        first, last = (min(flow.checkins), max(flow.checkins)) if flow.checkins else (flow.start_ms, flow.start_ms)
        s.ever = (min(ever[0], first), max(ever[1], last))
        if flow.checkins:  # polls inside one long connection: each is a check-in (their sizes: the flow's share)
            share = flow.bytes_fwd // len(flow.checkins)
            s.times += flow.checkins
            s.sizes += [share] * len(flow.checkins)
            s.brief += [False] * len(flow.checkins)
            s.seen += len(flow.checkins)
        else:
            s.times.append(flow.start_ms)
            s.sizes.append(flow.bytes_fwd)
            s.brief.append(flow.answered and flow.payload > 0 and flow.end_ms - flow.start_ms <= SHORT_S * 1000)
            s.seen += 1
        if len(s.times) > self.keep:
            del s.times[: -self.keep]
            del s.sizes[: -self.keep]
            del s.brief[: -self.keep]

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if not self._counted(flow):
            return None
        s = self.series.rows.get((flow.src_ip, flow.dst_ip, flow.dst_port, flow.protocol))
        if s is None or s.reported_tier >= 5 or len(s.times) < min(self.checkins, self.connections):
            return None
        n = len(s.times)
        # polling: judged at each new check-in while the series is short, then as it grows by an eighth
        poll = n >= self.checkins and s.seen - s.polled >= max(1, n // 8)
        # the span last: it reads the whole series, and most flows of a busy pair were judged minutes ago
        hours = n >= self.connections and flow.start_ms - s.judged_ms >= self.every_s * 1000
        span = self.min_span_s * 1000
        hours = hours and s.ever[1] - s.ever[0] >= span and max(s.times) - min(s.times) >= span
        if not (poll or hours):
            return None
        if poll:
            s.polled = s.seen
        if hours:
            s.judged_ms = flow.start_ms
        if self.local(flow.dst_ip):
            return None  # a server of the site: a command server is outside
        if len(self.callers.rows.get((flow.dst_ip, flow.dst_port, flow.protocol), ())) > self.max_clients:
            return None
        order = sorted(range(n), key=s.times.__getitem__)
        times = [s.times[i] for i in order]
        sizes = [s.sizes[i] for i in order]
        tier, regular = 0, None
        if poll:
            regular = regularity(times, self.jitter, min_period_ms=self.min_period_s * 1000)
            if regular.regular(self.regular_share, self.chance):
                tier = 2 + sum(regular.chance <= level for level in CHANCE_TIERS)
        score, parts = beacon_score(times, sizes)
        if hours and parts["gap"] >= self.min_interval_s * 1000 and score >= self.score:
            tier = max(tier, tiered(score, self.TIERS))
        if tier <= s.reported_tier:
            return None
        # short, similar check-ins to a service that authenticates: login attempts, brute force's story
        service = authentication_service(flow.dst_port, flow.application)
        brief = sum(s.brief)
        similar = parts["size"] > 0 and parts["size_madm"] <= 0.35 * parts["size"]
        attempts = brief * 2 >= n and similar
        if service and attempts:
            s.reported_tier = tier
            self.deferred += 1
            return None
        s.reported_tier = tier
        if regular is None:
            regular = regularity(times, self.jitter, min_period_ms=self.min_period_s * 1000)
        return self._finding(flow, times, parts, score, tier, regular, brief if attempts else 0)

    def _finding(self, flow, times, parts, score, tier, regular, attempts) -> Finding:
        n = len(times)
        span_ms = times[-1] - times[0]
        polling = regular.regular(self.regular_share, self.chance)
        period_ms = regular.period_ms if polling else parts["gap"]
        facts = []
        if polling:
            facts.append({
                "what": "regularity",
                "value": regular.share,
                "typical": chance_in_band(regular.lag, self.jitter),
                "score": regular.share,
                "text": f"{n} connections in {duration(span_ms * 1000)}, {regular.text()}",
            })  # fmt: skip
        facts += [
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
                f"beacon score {score:.2f} of 1 (RITA's scale)",
            },
        ]
        if attempts:
            facts.append({
                "what": "brute force",
                "value": attempts,
                "typical": n,
                "score": attempts / n,
                "text": f"{attempts} of the {n} were short, similar exchanges, brute force's pattern, but to a service "
                f"that authenticates no one (port {flow.dst_port}): regular check-ins, not login attempts",
            })  # fmt: skip
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
            score=regular.share if polling else score,
            signature=f"Beacon to {flow.dst_ip}:{flow.dst_port}: every {duration(period_ms * 1000)} "
            f"for {duration(span_ms * 1000)}",
            facts=facts,
            pattern=f"{flow.dst_ip}:{flow.dst_port}",
        )
