"""DNS tunnelling: data smuggled in query names under one domain, or DNS volume far beyond lookups.

A tunnel (iodine, dnscat2, DNS exfiltration kits) encodes data in the labels
of names under a domain its operator controls: many unique, long names under
one registered domain from one client, or one long DNS conversation carrying
far more packets and bytes than name lookups do. The registered domain comes
from the public suffix list bundled with the `publicsuffixlist` package (no
download at run time): names under co.uk count under example.co.uk, not co.uk.
Reverse lookups (in-addr.arpa, ip6.arpa) and local names are left out.
"""

from __future__ import annotations

from functools import lru_cache

from ntds.detect.explain import duration, plural, size
from ntds.detect.hosts.base import Detector, Finding, Option, register, tiered
from ntds.flows.traffic import FlowTraffic

DNS_PORTS = (53, 5353)
"""Plain DNS, where the requested server name is the query name. DNS over TLS (853) and HTTPS carry the
resolver's name instead, and many lookups per connection: neither signal applies."""


@lru_cache(maxsize=1)
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=1 << 16)
def registered_domain(name: str) -> str:
    """The registered domain of a query name ("" for names that have none: local, reverse, bare suffixes)."""
    name = name.strip(".").lower()
    if not name or name.endswith((".arpa", ".local", ".localdomain", ".lan", ".home", ".internal")):
        return ""
    return _psl().privatesuffix(name) or ""


class _Domain:
    __slots__ = ("names", "packets", "bytes", "first_ms", "last_ms", "reported_tier", "name_len")

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.packets = self.bytes = self.name_len = 0
        self.first_ms = self.last_ms = 0
        self.reported_tier = 0


@register
class DnsTunnel(Detector):
    kind = "dns-tunnel"
    OPTIONS = {
        "unique_names": Option(60, "unique names under one registered domain from one client that make a tunnel", 2),
        "packets": Option(300, "or DNS packets to that domain (a tunnel reuses one conversation)", 2),
        "bytes": Option(250_000, "or DNS bytes (IP bytes, both directions): a download through TXT answers", 1),
        "window_s": Option(600, "sliding window, seconds", 1),
        "names_kept": Option(4000, "unique names remembered per (client, domain)", 10),
        "sources": Option(50_000, "(client, domain) keys tracked at once", 100),
    }
    TIERS = (1, 5, 25)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.keys = self.table(self.sources)

    @staticmethod
    def _dns(flow: FlowTraffic) -> bool:
        return bool(flow.server_name) and flow.dst_port in DNS_PORTS

    def _key(self, flow: FlowTraffic) -> tuple[str, str] | None:
        if not self._dns(flow):
            return None
        domain = registered_domain(flow.server_name)
        return (flow.src_ip, domain) if domain else None

    def learn_one(self, flow: FlowTraffic) -> None:
        key = self._key(flow)
        if key is None:
            return
        d = self.keys.get(key, _Domain)
        window_ms = self.window_s * 1000
        if d.last_ms and flow.start_ms - d.last_ms > window_ms:
            self.keys.rows[key] = d = _Domain()
        if not d.first_ms:
            d.first_ms = flow.start_ms
        d.last_ms = max(d.last_ms, flow.end_ms)
        d.packets += flow.packets_fwd + flow.packets_bwd
        d.bytes += flow.bytes_fwd + flow.bytes_bwd
        name = flow.server_name.lower()
        if name not in d.names and len(d.names) < self.names_kept:
            d.name_len += len(name)
        d.names[name] = flow.start_ms
        if len(d.names) > self.names_kept:
            horizon = flow.start_ms - window_ms
            d.names = {k: v for k, v in d.names.items() if v >= horizon}
            if len(d.names) > self.names_kept:
                d.names = dict(list(d.names.items())[-self.names_kept :])

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        key = self._key(flow)
        if key is None:
            return None
        d = self.keys.rows.get(key)
        if d is None:
            return None
        ratios = (len(d.names) / self.unique_names, d.packets / self.packets, d.bytes / self.bytes)
        strongest = max(ratios)
        tier = tiered(strongest, self.TIERS)
        if tier <= d.reported_tier:
            return None
        d.reported_tier = tier
        domain = key[1]
        span = (d.last_ms - d.first_ms) / 1000
        avg_name = d.name_len / max(len(d.names), 1)
        return Finding(
            kind=self.kind,
            src_ip=flow.src_ip,
            dst_ip=flow.dst_ip,
            dst_port=flow.dst_port,
            protocol=flow.protocol,
            application=flow.application,
            domain=domain,
            first_ms=d.first_ms,
            last_ms=d.last_ms,
            count=len(d.names),
            window_s=self.window_s,
            tier=tier,
            score=strongest,
            signature=f"DNS tunnel under {domain}: {plural(len(d.names), 'unique name')}, {d.packets} packets, "
            f"{size(d.bytes)} in {duration(max(span, 1) * 1e6)}",
            facts=[
                {
                    "what": "unique names",
                    "value": len(d.names),
                    "typical": self.unique_names,
                    "score": ratios[0],
                    "text": f"{len(d.names)} unique names under {domain} (threshold {self.unique_names} in "
                    f"{duration(self.window_s * 1e6)}), {avg_name:.0f} characters on average",
                },
                {
                    "what": "DNS volume",
                    "value": d.bytes,
                    "typical": self.bytes,
                    "score": max(ratios[1], ratios[2]),
                    "text": f"{d.packets} DNS packets, {size(d.bytes)} (thresholds {self.packets} packets or "
                    f"{size(self.bytes)})",
                },
            ],
            pattern=domain,
        )
