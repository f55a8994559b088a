"""ICMP tunnels: echo packets that carry data instead of a ping's fill, or far more payload than pings do.

Ping sends one size, 32 (Windows) to 56 (Unix) bytes, filled with bytes that
count up or a short unit repeated, after at most a timestamp. A tunnel or a
backdoor puts its own protocol there: text commands padded with zeros
(Pingback), another protocol's packets (ptunnel carrying SSH, icmptunnel,
hans), in sizes that vary as the carried protocol's do. The meter judges
every ICMP payload (ntds/flows/accumulator.c, `ping_fill`) and counts those
that are no fill ("carried"), echo replies nobody asked for, and
informational ICMP types carrying data. Per (source, destination) over a
sliding window, any of these raises an alert:
- `carried` packets or more whose payload is data, not fill;
- `carried` echo replies or more beyond the other side's requests;
- `bytes` of ICMP in all;
- for flows whose payloads the meter did not see (flows read from flow
  files), `packets` ICMP packets averaging more than `payload` bytes of
  payload. Where payloads are seen, large pings of a fill (an MTU test) are
  no tunnel.
"""

from __future__ import annotations

from ntds.detect.explain import duration, plural, size
from ntds.detect.hosts.base import ICMP, ICMP6, Detector, Finding, Option, register, tiered
from ntds.flows.traffic import FlowTraffic

HEADERS = {ICMP: 28, ICMP6: 48}  # IP + ICMP echo headers: what a packet carries besides its payload
PING_SIZES = "32-56 B"


class _Pair:
    __slots__ = ("packets", "bytes", "first_ms", "last_ms", "reported_tier", "carried", "carried_bytes",
                 "unmatched", "smallest", "largest", "unseen", "unseen_bytes")  # fmt: skip

    def __init__(self) -> None:
        self.packets = self.bytes = self.first_ms = self.last_ms = self.reported_tier = 0
        self.carried = self.carried_bytes = self.unmatched = self.largest = 0
        self.smallest = -1
        self.unseen = self.unseen_bytes = 0
        """Packets and bytes of flows whose payloads the meter did not see."""


@register
class IcmpTunnel(Detector):
    kind = "icmp-tunnel"
    OPTIONS = {
        "carried": Option(6, "ICMP packets carrying data (no ping fill), or echo replies to nothing asked", 1),
        "packets": Option(40, "ICMP packets between two hosts before their average payload is judged", 1),
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
        seen = flow.icmp
        if seen is None:
            p.unseen += flow.packets_fwd + flow.packets_bwd
            p.unseen_bytes += flow.bytes_fwd + flow.bytes_bwd
        else:
            p.carried += seen.carried
            p.carried_bytes += seen.carried_bytes
            p.unmatched += seen.unmatched
            if seen.requests + seen.replies:
                p.smallest = seen.payload_min if p.smallest < 0 else min(p.smallest, seen.payload_min)
                p.largest = max(p.largest, seen.payload_max)

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if flow.protocol not in HEADERS:
            return None
        p = self.table_.rows.get((flow.src_ip, flow.dst_ip))
        if p is None:
            return None
        payload = max(0.0, p.bytes / p.packets - HEADERS[flow.protocol]) if p.packets else 0.0
        unseen = max(0.0, p.unseen_bytes / p.unseen - HEADERS[flow.protocol]) if p.unseen else 0.0
        ratios = {
            "carried data": p.carried / self.carried,
            "unmatched replies": p.unmatched / self.carried,
            "payload per packet": unseen / self.payload if p.unseen >= self.packets else 0.0,
            "ICMP volume": p.bytes / self.bytes,
        }
        strength = max(ratios.values())
        tier = tiered(strength, self.TIERS)
        if tier <= p.reported_tier:
            return None
        p.reported_tier = tier
        span = (p.last_ms - p.first_ms) / 1000
        sizes = f"{size(p.smallest)}" if p.smallest == p.largest else f"{size(p.smallest)} to {size(p.largest)}"
        facts = [
            {"what": "carried data", "value": p.carried, "typical": self.carried, "score": ratios["carried data"],
             "text": f"{plural(p.carried, 'ICMP packet')} ({size(p.carried_bytes)}) carried data, not a ping's fill "
                     f"(bytes counting up or a short unit repeated); threshold {self.carried}"},
            {"what": "payload per packet", "value": payload, "typical": self.payload,
             "score": ratios["payload per packet"],
             "text": f"{size(payload)} of payload per ICMP packet on average"
                     + (f", echo payloads of {sizes}" if p.smallest >= 0 else "")
                     + f" (ping sends one size, {PING_SIZES})"},
            {"what": "ICMP volume", "value": p.bytes, "typical": self.bytes, "score": ratios["ICMP volume"],
             "text": f"{p.packets} packets, {size(p.bytes)} in {duration(max(span, 1) * 1e6)}"},
        ]  # fmt: skip
        if p.unmatched:
            facts.append({"what": "unmatched replies", "value": p.unmatched, "typical": self.carried,
                          "score": ratios["unmatched replies"],
                          "text": f"echo replies to no request: {p.unmatched}"})  # fmt: skip
        facts.sort(key=lambda f: -f["score"])
        lead = max(ratios, key=ratios.get)
        what = {
            "carried data": f"{plural(p.carried, 'packet')} carrying data",
            "unmatched replies": f"{p.unmatched} echo replies to no request",
        }.get(lead, f"{p.packets} packets averaging {size(payload)} of payload")
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
            signature=f"ICMP tunnel to {flow.dst_ip}: {what}",
            facts=facts,
            pattern=flow.dst_ip,
        )
