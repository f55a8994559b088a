"""Long connections: one conversation that stays open for hours.

The meter cuts flows at the 120 s active timeout, so a long connection reaches
the detector as a chain of flows of one 5-tuple, each starting soon after the
last ended. The chain's length is what counts. Long connections are common
(remote shells, VPNs, messaging keep-alives), so the severity grows with the
duration (documented mapping, see TIERS), and applications long-lived by design
get one tier less: a half-day connection of an unknown protocol to the
Internet is worth a look, a long SSH session less so.
"""

from __future__ import annotations

from ntds.detect.explain import duration, size
from ntds.detect.hosts.base import TCP, UDP, Detector, Finding, Option, is_group, register
from ntds.flows.traffic import FlowTraffic

LONG_LIVED_BY_DESIGN = ["SSH", "OPENVPN", "WIREGUARD", "IPSEC", "RDP", "VNC", "WHATSAPP", "SIGNAL", "TELEGRAM",
                        "XMPP", "MQTT", "IMAPS", "IMAP"]  # fmt: skip


class _Chain:
    __slots__ = ("first_ms", "last_ms", "bytes", "flows", "reported_tier", "client")

    def __init__(self) -> None:
        self.first_ms = self.last_ms = self.bytes = self.flows = self.reported_tier = 0
        self.client = ""


@register
class LongConnection(Detector):
    kind = "long-connection"
    OPTIONS = {
        "hours": Option([1, 4, 12, 48], "hours that make tiers 2, 3, 4 and 5"),
        "gap_s": Option(300, "largest silence between two flows of one conversation, seconds", 1),
        "long_lived_applications": Option(LONG_LIVED_BY_DESIGN, "applications long-lived by design (one tier less)"),
        "connections": Option(100_000, "conversations tracked at once", 100),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.chains = self.table(self.connections)
        self._long_lived = frozenset(a.upper() for a in self.long_lived_applications)
        self._shortest = min(self.hours, default=0)

    @staticmethod
    def _key(flow: FlowTraffic) -> tuple:
        a, b = (flow.src_ip, flow.src_port), (flow.dst_ip, flow.dst_port)
        return (a, b, flow.protocol) if a <= b else (b, a, flow.protocol)

    def route(self, flow: FlowTraffic) -> tuple:
        """The conversation (both ends, either way round): its flows chain into one long connection."""
        return self._key(flow)

    def findings(self, flow: FlowTraffic) -> list[Finding]:
        if flow.protocol not in (TCP, UDP) or is_group(flow.dst_ip):
            return []
        c = self._learn(flow)  # the chain once for both steps
        found = self._score(flow, c)
        return [found] if found is not None else []

    def learn_one(self, flow: FlowTraffic) -> None:
        if flow.protocol in (TCP, UDP) and not is_group(flow.dst_ip):
            self._learn(flow)

    def _learn(self, flow: FlowTraffic) -> _Chain:
        c = self.chains.get(self._key(flow), _Chain)
        if c.last_ms and flow.start_ms - c.last_ms > self.gap_s * 1000:
            c.first_ms, c.bytes, c.flows, c.reported_tier, c.client = 0, 0, 0, 0, ""
        if not c.first_ms:
            c.first_ms = flow.start_ms
            # the client: the side that opened it, else the local side
            c.client = flow.src_ip if flow.opens or self.local(flow.src_ip) else flow.dst_ip
        c.last_ms = max(c.last_ms, flow.end_ms)
        c.bytes += flow.bytes_fwd + flow.bytes_bwd
        c.flows += 1
        return c

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        if flow.protocol not in (TCP, UDP) or is_group(flow.dst_ip):
            return None
        c = self.chains.rows.get(self._key(flow))
        return self._score(flow, c) if c is not None else None

    def _score(self, flow: FlowTraffic, c: _Chain) -> Finding | None:
        hours = (c.last_ms - c.first_ms) / 3_600_000
        if hours < self._shortest:
            return None  # tier 1 at most: most flows stop here
        tier = 1 + sum(1 for h in self.hours if hours >= h)
        if tier < 2:
            return None
        if flow.application.upper() in self._long_lived:
            tier -= 1
        if tier <= max(c.reported_tier, 1):
            return None
        c.reported_tier = tier
        server = flow.dst_ip if c.client == flow.src_ip else flow.src_ip
        port = flow.dst_port if c.client == flow.src_ip else flow.src_port
        lasted = duration((c.last_ms - c.first_ms) * 1000)
        return Finding(
            kind=self.kind,
            src_ip=c.client,
            dst_ip=server,
            dst_port=port,
            protocol=flow.protocol,
            application=flow.application,
            first_ms=c.first_ms,
            last_ms=c.last_ms,
            count=c.flows,
            window_s=(c.last_ms - c.first_ms) // 1000,
            tier=tier,
            score=hours,
            signature=f"Long connection to {server}:{port} ({flow.application}): open {lasted}",
            facts=[
                {
                    "what": "duration",
                    "value": hours * 3600,
                    "typical": self.hours[0] * 3600,
                    "score": hours,
                    "text": f"open for {lasted} ({size(c.bytes)} exchanged)"
                    + (
                        " ; long-lived by design, one tier less" if flow.application.upper() in self._long_lived else ""
                    ),
                }
            ],
            pattern=f"{server}:{port}",
        )
