"""Brute force and repeated access: many short, similar connections from one source to one service.

A password guesser opens connection after connection to the same service,
each exchanging a little data of nearly the same size and lasting seconds.
Per (source, server, port) the detector keeps the recent completed connections
of a sliding window; it fires when there are enough of them and their client
byte counts are alike (median absolute deviation small against the median). A
busy but ordinary client (a browser fetching many objects from one server)
sends requests of very different sizes and stays quiet. Authentication
services (SSH, FTP, telnet, SMTP, POP, IMAP, SMB, RDP, VNC, SIP, databases)
need fewer attempts than other ports.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left, bisect_right

from ntds.detect.explain import duration, size
from ntds.detect.hosts.base import TCP, Detector, Finding, Option, is_group, register, tiered
from ntds.flows.traffic import FlowTraffic

AUTH_PORTS = (21, 22, 23, 25, 110, 139, 143, 445, 465, 587, 993, 995, 1433, 1521, 3306, 3389, 5060, 5061, 5432, 5900)
SERVICE_NAMES = {21: "FTP", 22: "SSH", 23: "telnet", 25: "SMTP", 139: "SMB", 445: "SMB", 3389: "RDP", 5060: "SIP",
                 5061: "SIP", 5900: "VNC", 80: "HTTP", 443: "HTTPS", 8080: "HTTP", 3306: "MySQL", 5432: "PostgreSQL",
                 1433: "SQL Server"}  # fmt: skip


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
        "attempts_other": Option(40, "the same for any other service (web logins, APIs)", 2),
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
        threshold = self.attempts if flow.dst_port in self._auth else self.attempts_other
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
        service = SERVICE_NAMES.get(flow.dst_port, f"port {flow.dst_port}")
        span = (a.times[-1] - a.first_ms) / 1000
        proto = "TCP" if flow.protocol == TCP else "UDP"
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
            ],
            pattern=f"{flow.dst_ip}:{flow.dst_port}",
        )
