"""DNS tunnelling: data smuggled in query names under one domain, or DNS volume far beyond lookups.

A tunnel (iodine, dnscat2, DNS exfiltration kits, DNS C2 channels) encodes
data in the labels of names under a domain its operator controls, and reads
its answers from record types that carry data (TXT, NULL, CNAME, MX). Per
(client, registered domain) over a sliding window, any of these raises an
alert:
- **encoded names**: `encoded_names` unique names or more with 24 or more
  characters below the registered domain (more than a host name holds: data),
  half as many when most questions ask for data-carrying record types. Names
  a tunnel asks in turn on one socket count too: the meter counts names that
  change from query to query inside a flow (ntds/flows/accumulator.c).
  Lookups of such names by `shared_clients` or more local clients are a
  service the site uses (antivirus reputation, block lists: prevalence, as
  RITA and Paxson et al. judge it), not one host's tunnel;
- **unique names**: `unique_names` unique names under one domain, whatever
  their length;
- **volume**: one long DNS conversation carrying far more packets or bytes
  than name lookups do (iodine's NULL downloads).

The entropy of the encoded part, the record types and the largest answer
are told in the alert. The registered domain comes from the public suffix
list bundled with the `publicsuffixlist` package (no download at run time):
names under co.uk count under example.co.uk, not co.uk. Reverse lookups
(in-addr.arpa, ip6.arpa) and local names are left out. DNS over HTTPS and TLS
carry no names a sensor can read; they are DNS all the same, never beacons
(beacon.py).
"""

from __future__ import annotations

import math
from collections import Counter
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


ENCODED_CHARS = 24
"""Characters below the registered domain that make a name encoded: more than host names hold (the meter's
ENCODED_CHARS)."""
DATA_TYPES = {16: "TXT", 10: "NULL", 5: "CNAME", 15: "MX", 255: "ANY"}
"""Record types whose answers carry data (and private types, 65280 and up): how tunnels download."""


def below(name: str, domain: str) -> str:
    """The labels of `name` below its registered domain, without dots: where a tunnel puts its data."""
    return name[: -len(domain)].replace(".", "") if domain and name.endswith(domain) else ""


def entropy(text: str) -> float:
    """Shannon entropy of the characters of `text`, bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


class _Domain:
    __slots__ = ("names", "packets", "bytes", "first_ms", "last_ms", "reported_tier", "name_len", "more_names",
                 "more_encoded", "queries", "data_types", "reply_max", "qtypes", "encoded_text",
                 "encoded_kept")  # fmt: skip

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.packets = self.bytes = self.name_len = 0
        self.more_names = self.more_encoded = self.queries = self.data_types = self.reply_max = 0
        self.encoded_kept = 0
        """Names in `names` that are encoded (kept with it: counting them per flow would cost a pass)."""
        self.first_ms = self.last_ms = 0
        self.reported_tier = 0
        self.qtypes: Counter = Counter()
        self.encoded_text = ""
        """Some encoded text of the names (up to 4 kB), for its entropy."""

    def encoded(self) -> int:
        return self.more_encoded + self.encoded_kept


class _Clients:
    __slots__ = ("clients",)

    def __init__(self) -> None:
        self.clients: dict[str, int] = {}


@register
class DnsTunnel(Detector):
    kind = "dns-tunnel"
    OPTIONS = {
        "unique_names": Option(60, "unique names under one registered domain from one client that make a tunnel", 2),
        "packets": Option(300, "or DNS packets to that domain (a tunnel reuses one conversation)", 2),
        "bytes": Option(250_000, "or DNS bytes (IP bytes, both directions): a download through TXT answers", 1),
        "window_s": Option(600, "sliding window, seconds", 1),
        "encoded_names": Option(20, "unique encoded names (24+ characters below the domain) that make a tunnel", 2),
        "shared_clients": Option(3, "local clients asking encoded names under one domain that make it a service", 2),
        "names_kept": Option(4000, "unique names remembered per (client, domain)", 10),
        "sources": Option(50_000, "(client, domain) keys tracked at once", 100),
    }
    TIERS = (1, 5, 25)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.keys = self.table(self.sources)
        self.domains = self.table(self.sources)
        """Registered domain -> the local clients that asked encoded names under it, with their last time."""

    def _clients(self, domain: str, now_ms: int) -> int:
        """Local clients that asked encoded names under `domain` within the window."""
        c = self.domains.rows.get(domain)
        horizon = now_ms - self.window_s * 1000
        return sum(1 for t in c.clients.values() if t >= horizon) if c else 0

    @staticmethod
    def _dns(flow: FlowTraffic) -> bool:
        return bool(flow.server_name) and flow.dst_port in DNS_PORTS

    def _key(self, flow: FlowTraffic) -> tuple[str, str] | None:
        if not self._dns(flow):
            return None
        domain = registered_domain(flow.server_name)
        return (flow.src_ip, domain) if domain else None

    def route(self, flow: FlowTraffic) -> str:
        """The registered domain: a client's names are kept per domain, and a domain many clients ask encoded
        names of is counted over all of them."""
        key = self._key(flow)
        return key[1] if key else ""

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
        first_new = name not in d.names
        if first_new and len(d.names) < self.names_kept:
            d.name_len += len(name)
        d.names[name] = flow.start_ms
        part = below(name, key[1])
        encoded = len(part) >= ENCODED_CHARS
        if first_new and encoded:
            d.encoded_kept += 1
        seen = flow.dns
        if seen is not None:  # the names asked in turn after the first, on the same socket
            d.more_names += max(seen.names - 1, 0)
            d.more_encoded += max(seen.encoded - (1 if encoded else 0), 0)
            d.queries += seen.queries
            d.data_types += seen.data_types
            d.reply_max = max(d.reply_max, seen.reply_max)
            if seen.qtype in d.qtypes or len(d.qtypes) < 16:  # bounded: a flood of odd types adds nothing
                d.qtypes[seen.qtype] += 1
            encoded = encoded or seen.encoded > 0
        if encoded:
            if first_new and len(d.encoded_text) < 4096:
                d.encoded_text += part
            c = self.domains.get(key[1], _Clients)
            c.clients[key[0]] = flow.start_ms
            if len(c.clients) > 4 * self.shared_clients:
                c.clients = dict(sorted(c.clients.items(), key=lambda kv: kv[1])[-2 * self.shared_clients :])
        if len(d.names) > self.names_kept:
            horizon = flow.start_ms - window_ms
            d.names = {k: v for k, v in d.names.items() if v >= horizon}
            if len(d.names) > self.names_kept:
                d.names = dict(list(d.names.items())[-self.names_kept :])
            d.encoded_kept = sum(1 for n in d.names if len(below(n, key[1])) >= ENCODED_CHARS)

    def score_one(self, flow: FlowTraffic) -> Finding | None:
        key = self._key(flow)
        if key is None:
            return None
        d = self.keys.rows.get(key)
        if d is None:
            return None
        domain = key[1]
        encoded = d.encoded()
        data_share = d.data_types / d.queries if d.queries else 0.0
        needed = self.encoded_names / 2 if data_share > 0.5 else self.encoded_names
        clients = self._clients(domain, flow.start_ms)
        shared = clients >= self.shared_clients
        unique = len(d.names) + d.more_names
        ratios = (unique / self.unique_names, d.packets / self.packets, d.bytes / self.bytes,
                  0.0 if shared else encoded / needed)  # fmt: skip
        strongest = max(ratios)
        tier = tiered(strongest, self.TIERS)
        if tier <= d.reported_tier:
            return None
        d.reported_tier = tier
        span = (d.last_ms - d.first_ms) / 1000
        avg_name = d.name_len / max(len(d.names), 1)
        types = ", ".join(f"{DATA_TYPES.get(q, 'private' if q >= 65280 else f'type {q}')} {n}"
                          for q, n in d.qtypes.most_common(4) if q)  # fmt: skip
        window = duration(self.window_s * 1e6)
        facts = [
            {"what": "encoded names", "value": encoded, "typical": needed, "score": ratios[3],
             "text": f"{plural(encoded, 'unique name')} with {ENCODED_CHARS}+ characters below {domain} (threshold "
                     f"{needed:g} in {window}); entropy {entropy(d.encoded_text):.1f} bits a character"
                     + (f"; asked by {clients} local clients: a service the site uses" if shared else "")},
            {"what": "unique names", "value": unique, "typical": self.unique_names, "score": ratios[0],
             "text": f"{unique} unique names under {domain} (threshold {self.unique_names} in {window}), "
                     f"{avg_name:.0f} characters on average"},
            {"what": "DNS volume", "value": d.bytes, "typical": self.bytes, "score": max(ratios[1], ratios[2]),
             "text": f"{d.packets} DNS packets, {size(d.bytes)} (thresholds {self.packets} packets or "
                     f"{size(self.bytes)})"},
        ]  # fmt: skip
        if d.queries:
            facts.append({"what": "record types", "value": data_share, "typical": 0.5, "score": data_share,
                          "text": f"{data_share:.0%} of {plural(d.queries, 'question')} for record types that carry "
                                  f"data ({types or 'none'}); largest answer {size(d.reply_max)}"})  # fmt: skip
        facts.sort(key=lambda f: -f["score"])
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
            count=unique,
            window_s=self.window_s,
            tier=tier,
            score=strongest,
            signature=f"DNS tunnel under {domain}: {plural(unique, 'unique name')} ({encoded} encoded), "
            f"{d.packets} packets, {size(d.bytes)} in {duration(max(span, 1) * 1e6)}",
            facts=facts,
            pattern=domain,
        )
