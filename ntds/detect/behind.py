"""The flows behind an alert: what an analyst opens first to confirm or dismiss it.

A flow alert is its own flow. A host-level detector concludes from many flows
(the ports a scanner tried, the logins a guesser attempted, the polls of a
beacon) but keeps only the aggregates it needs, so detection keeps, beside the
detectors, the newest flows of every address (both ends of each flow) in a
bounded table. When a detector finds something, the flows it counted are
picked from the responsible host's recent flows: within the finding's first
and last seen, and those the detector says it counted (`Detector.counted`:
by default the peer, port and protocol the finding names). At most
`MAX_FLOWS_BEHIND` are listed, the newest; the alert's `flows_total` says how
many the detector counted in all.
"""

from __future__ import annotations

from collections import deque

from ntds.detect.hosts.base import BoundedTable, Detector, Finding, is_group
from ntds.flows.traffic import FlowTraffic
from ntds.wire.schema import MAX_FLOWS_BEHIND

PER_HOST = 256
"""Recent flows kept per address: beyond the newest 32 listed, room for a detector's stricter choice."""


def flow_entry(t: FlowTraffic, tier: int | None) -> dict:
    """One flow as an alert lists it (wire schema FLOW_BEHIND)."""
    from ntds.detect.alerts import community_id, iso_ms  # alerts builds its bodies with this: imported late

    return {
        "src_ip": t.src_ip,
        "src_port": int(t.src_port),
        "dst_ip": t.dst_ip,
        "dst_port": int(t.dst_port),
        "protocol": int(t.protocol),
        "application": t.application,
        "first_seen": iso_ms(t.start_ms),
        "last_seen": iso_ms(max(t.end_ms, t.start_ms)),
        "packets": int(t.packets_fwd + t.packets_bwd),
        "bytes": int(t.bytes_fwd + t.bytes_bwd),
        "tier": -1 if tier is None else int(tier),
        "community_id": community_id(t.protocol, t.src_ip, t.dst_ip, t.src_port, t.dst_port),
    }


class FlowsBehind:
    """Recent flows per address, bounded (a flood of sources evicts the least recently seen, counted)."""

    def __init__(self, hosts: int = 20_000, per_host: int = PER_HOST) -> None:
        self.table = BoundedTable(hosts)
        self.per_host = per_host

    @property
    def evicted(self) -> int:
        return self.table.evicted

    def add(self, t: FlowTraffic, tier: int | None) -> None:
        item = (t, tier)
        for ip in (t.src_ip, t.dst_ip) if t.src_ip != t.dst_ip else (t.src_ip,):
            if not is_group(ip):
                self.table.get(ip, self._ring).append(item)

    def _ring(self) -> deque:
        return deque(maxlen=self.per_host)

    def behind(self, finding: Finding, detector: Detector) -> list[dict]:
        """The newest flows (at most MAX_FLOWS_BEHIND, oldest first) the finding counted."""
        ring = self.table.rows.get(finding.src_ip)
        if not ring:
            return []
        picked = []
        for t, tier in reversed(ring):
            if finding.first_ms <= t.start_ms <= finding.last_ms and detector.counted(t, finding):
                picked.append(flow_entry(t, tier))
                if len(picked) == MAX_FLOWS_BEHIND:
                    break
        picked.reverse()
        return picked


def merge_flows(kept: list[dict], more: list[dict]) -> list[dict]:
    """Two lists of flows behind one alert group as one: each flow once, the newest MAX_FLOWS_BEHIND."""
    seen = {}
    for f in (*kept, *more):
        seen[(f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"], f["protocol"], f["first_seen"])] = f
    out = sorted(seen.values(), key=lambda f: f["first_seen"])
    return out[-MAX_FLOWS_BEHIND:]
