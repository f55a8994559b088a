"""Brute force: many short, similar login attempts from one source to one service.

A password guesser opens connection after connection to the same service,
each exchanging a little data of nearly the same size and lasting seconds.
Per (source, server, port) the detector keeps the recent completed connections
of a sliding window; it fires when there are enough of them and their client
byte counts are alike (median absolute deviation small against the median). A
busy but ordinary client (a browser fetching many objects from one server)
sends requests of very different sizes and stays quiet.

Brute force needs evidence of authentication (ntds.detect.hosts.evidence):
a service that logs people in, by nDPI's application or its port (SSH, FTP,
telnet, SMTP, POP, IMAP, SMB, RDP, VNC, SIP, LDAP, Kerberos, RADIUS,
databases), needs `attempts`. Any other service needs `attempts_other` and a
login-shaped exchange with one of the site's own servers (a web login form, an
API): a TCP session (a UDP query and its answer, or a DNS lookup over TCP or
HTTPS, is a lookup, as 200 identical DNS queries to a resolver are, not a
login) to a destination in the local networks. Many short, similar exchanges
with an outside server that authenticates no one are an implant's check-ins or
an application's API calls: the beacon detector judges them by their
regularity. A guesser that is also regular (a fixed delay between attempts) is
still brute force; its alert says it is regular too, and why it is not a
beacon.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left, bisect_right

from ntds.detect.explain import duration, size
from ntds.detect.hosts.base import TCP, Detector, Finding, Option, is_group, register, tiered
from ntds.detect.hosts.evidence import (
    AUTH_PORTS,
    SERVICE_NAMES,
    authentication_service,
    chance_in_band,
    regularity,
)
from ntds.flows.traffic import FlowTraffic

LOOKUP_PORTS = (53, 853)
LOOKUPS = ("DNS", "DoH_DoT", "DOH_DOT")
"""Name lookups over TCP (DNS, DNS over TLS or HTTPS): many similar exchanges by design, never logins."""

MAX_ATTEMPTS = 4096
"""Attempts kept per key: the newest, within the window."""


class _Attempts:
    __slots__ = ("times", "sizes", "reported_tier", "first_ms")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.sizes: list[int] = []
        self.reported_tier = 0
        self.first_ms = 0


@register
class BruteForce(Detector):
    kind = "brute-force"
    OPTIONS = {
        "attempts": Option(12, "short similar connections to an authentication service that make brute force", 2),
        "attempts_other": Option(40, "the same for any other service over TCP (web logins, APIs)", 2),
        "window_s": Option(600, "sliding window, seconds", 1),
        "max_duration_s": Option(60, "a connection longer than this is a session, not an attempt", 1),
        "similarity": Option(0.35, "largest median absolute deviation of client bytes, as a share of the median", 0),
        "auth_ports": Option(list(AUTH_PORTS), "ports counted as authentication services"),
        "sources": Option(50_000, "(source, server, port) keys tracked at once", 100),
    }
    TIERS = (1, 5, 25)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.keys = self.table(self.sources)
        self._auth = frozenset(int(p) for p in self.auth_ports)

    def _attempt(self, flow: FlowTraffic) -> bool:
        """A completed, short exchange that opened a conversation: what a login attempt looks like."""
        return (
            flow.opens
            and flow.answered
            and flow.payload > 0
            and flow.end_ms - flow.start_ms <= self.max_duration_s * 1000
            and flow.dst_port > 0
            and not is_group(flow.dst_ip)
        )

    def counted(self, flow: FlowTraffic, finding: Finding) -> bool:
        return flow.src_ip == finding.src_ip and self._attempt(flow) and super().counted(flow, finding)

    def learn_one(self, flow: FlowTraffic) -> None:
        if not self._attempt(flow):
            return
        a = self.keys.get((flow.src_ip, flow.dst_ip, flow.dst_port, flow.protocol), _Attempts)
        horizon = flow.start_ms - self.window_s * 1000
        times, sizes = a.times, a.sizes
        if times and times[-1] < horizon:
            times.clear()
            sizes.clear()
            a.reported_tier = 0
        # Kept in time order (flows end, and arrive, a little out of their start order), so the window's
        # edge is one bisection and a slice: constant work per flow however many attempts the window holds.
        at = bisect_right(times, flow.start_ms)
        times.insert(at, flow.start_ms)
        sizes.insert(at, flow.bytes_fwd)
        cut = max(bisect_left(times, horizon), len(times) - MAX_ATTEMPTS)
        if cut > 0:
            del times[:cut]
            del sizes[:cut]
        a.first_ms = times[0]

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if not self._attempt(flow):
            return None
        a = self.keys.rows.get((flow.src_ip, flow.dst_ip, flow.dst_port, flow.protocol))
        auth = authentication_service(flow.dst_port, flow.application, self._auth)
        if not auth and (flow.protocol != TCP or flow.dst_port in LOOKUP_PORTS or flow.application in LOOKUPS):
            return None  # a query and its answer: a lookup, not a login
        if not auth and not self.local(flow.dst_ip):
            return None  # an outside server that logs no one in: check-ins or API calls, not guesses
        threshold = self.attempts if auth else self.attempts_other
        if a is None or len(a.times) < threshold:
            return None
        n = len(a.times)
        tier = tiered(n / threshold, self.TIERS)
        if tier <= a.reported_tier:
            return None
        median = statistics.median(a.sizes)
        mad = statistics.median(abs(s - median) for s in a.sizes)
        spread = mad / median if median else 1.0
        if spread > self.similarity:
            return None
        a.reported_tier = tier
        regular = regularity(a.times)
        service = SERVICE_NAMES.get(flow.dst_port) or auth or f"port {flow.dst_port}"
        span = (a.times[-1] - a.first_ms) / 1000
        proto = "TCP" if flow.protocol == TCP else "UDP"
        also = []
        if regular.regular():
            why = f"{service} authenticates" if auth else "the server is inside the site (command servers are not)"
            also.append({
                "what": "regularity",
                "value": regular.share,
                "typical": chance_in_band(regular.lag),
                "score": regular.share,
                "text": f"also regular like a beacon ({regular.text()}), but {why}: repeated logins, not check-ins",
            })  # fmt: skip
        return Finding(
            kind=self.kind,
            src_ip=flow.src_ip,
            dst_ip=flow.dst_ip,
            dst_port=flow.dst_port,
            protocol=flow.protocol,
            application=flow.application,
            first_ms=a.first_ms,
            last_ms=a.times[-1],
            count=n,
            window_s=self.window_s,
            tier=tier,
            score=n / threshold,
            signature=f"Brute force against {service} on {flow.dst_ip}: {n} short connections of ~{size(median)}",
            facts=[
                {
                    "what": "attempts",
                    "value": n,
                    "typical": threshold,
                    "score": n / threshold,
                    "text": f"{n} short {proto} connections to {service} in {duration(max(span, 1) * 1e6)} "
                    f"(threshold {threshold} in {duration(self.window_s * 1e6)})",
                },
                {
                    "what": "client bytes",
                    "value": median,
                    "typical": mad,
                    "score": spread,
                    "text": f"each sent about {size(median)} (spread {size(mad)}): the same exchange repeated",
                },
                *also,
            ],
            pattern=f"{flow.dst_ip}:{flow.dst_port}",
        )
