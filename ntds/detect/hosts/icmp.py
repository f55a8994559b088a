"""ICMP tunnels: echo traffic carrying far more payload than pings do.

Ping sends 32 (Windows) to 56 (Unix) bytes of payload per packet; ICMP tunnels
(icmptunnel, ptunnel, hans) fill echo packets with up to a kilobyte of data and
send many of them. Per (source, destination) over a sliding window: enough
packets, a large average payload per packet, or simply a large ICMP volume.
"""

from __future__ import annotations

from ntds.detect.explain import duration, size
from ntds.detect.hosts.base import ICMP, ICMP6, Detector, Finding, Option, register, tiered
from ntds.flows.traffic import FlowTraffic

HEADERS = {ICMP: 28, ICMP6: 48}  # IP + ICMP echo headers: what a packet carries besides its payload


class _Pair:
    __slots__ = ("packets", "bytes", "first_ms", "last_ms", "reported_tier")

    def __init__(self) -> None:
        self.packets = self.bytes = self.first_ms = self.last_ms = self.reported_tier = 0


@register
class IcmpTunnel(Detector):
    kind = "icmp-tunnel"
    OPTIONS = {
        "packets": Option(40, "ICMP packets between two hosts before their payload is judged", 1),
        "payload": Option(120, "average ICMP payload per packet, bytes, that ping does not send", 1),
        "bytes": Option(1_000_000, "or ICMP bytes between two hosts in the window, whatever the sizes", 1),
        "window_s": Option(600, "sliding window, seconds", 1),
        "pairs": Option(20_000, "(source, destination) pairs tracked at once", 100),
    }
    TIERS = (1, 4, 16)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.table_ = self.table(self.pairs)

    def learn_one(self, flow: FlowTraffic) -> None:
        if flow.protocol not in HEADERS:
            return
        key = (flow.src_ip, flow.dst_ip)
        p = self.table_.get(key, _Pair)
        if p.last_ms and flow.start_ms - p.last_ms > self.window_s * 1000:
            self.table_.rows[key] = p = _Pair()
        p.first_ms = p.first_ms or flow.start_ms
        p.last_ms = max(p.last_ms, flow.end_ms)
        p.packets += flow.packets_fwd + flow.packets_bwd
        p.bytes += flow.bytes_fwd + flow.bytes_bwd

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if flow.protocol not in HEADERS:
            return None
        p = self.table_.rows.get((flow.src_ip, flow.dst_ip))
        if p is None or p.packets < self.packets:
            return None
        payload = max(0.0, p.bytes / p.packets - HEADERS[flow.protocol])
        strength = max(payload / self.payload, p.bytes / self.bytes)
        tier = tiered(strength, self.TIERS)
        if tier <= p.reported_tier:
            return None
        p.reported_tier = tier
        span = (p.last_ms - p.first_ms) / 1000
        return Finding(
            kind=self.kind,
            src_ip=flow.src_ip,
            dst_ip=flow.dst_ip,
            protocol=flow.protocol,
            application=flow.application,
            first_ms=p.first_ms,
            last_ms=p.last_ms,
            count=p.packets,
            window_s=self.window_s,
            tier=tier,
            score=strength,
            signature=f"ICMP tunnel to {flow.dst_ip}: {p.packets} packets averaging {size(payload)} of payload",
            facts=[
                {
                    "what": "payload per packet",
                    "value": payload,
                    "typical": self.payload,
                    "score": payload / self.payload,
                    "text": f"{size(payload)} of payload per ICMP packet on average (ping sends 32-56 B)",
                },
                {
                    "what": "ICMP volume",
                    "value": p.bytes,
                    "typical": self.bytes,
                    "score": p.bytes / self.bytes,
                    "text": f"{p.packets} packets, {size(p.bytes)} in {duration(max(span, 1) * 1e6)}",
                },
            ],
            pattern=flow.dst_ip,
        )
