"""The sensor's side of context on alerts: per interval, which destinations local hosts reached and what each
local host did.

Each context interval (`context_interval_s`, an hour by default) the sensor
counts, from every flow (single-packet ones too):

- per external destination (ntds.prevalence.KINDS: the remote address, the
  registered domain and the server name a local client asked for, the client
  fingerprint it used): first and last seen, flows, and a HyperLogLog sketch of
  the local hosts involved;
- per local host: first and last seen, flows and bytes both ways, the
  applications it used as a client, the services it answered as a server
  (protocol, port, application), and its top peers by bytes.

The aggregator merges these into fleet prevalence and each host's story
(aggregator.prevalence, aggregator.host_story). Like summaries, a flow belongs
to the interval it started in, and an interval closes once its flows have had
time to expire.

Bounded whatever the traffic: at most `max_destinations` destinations and
`max_hosts` hosts per interval (more are counted as omitted, and the
aggregator says so), each sketch at most ntds.prevalence.SKETCH_MAX_BYTES, and
per host at most 16 applications, 16 services and 8 peers sent (from at most
MAX_PEERS_KEPT tracked); each message stays under the frame limit (an interval
continues in as many messages as it needs).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ntds.detect.hosts.dns import registered_domain
from ntds.flows.traffic import FlowTraffic
from ntds.prevalence import encode, new_sketch
from ntds.wire.schema import MAX_FRAME, pack
from sensor.summaries import GRACE_MS, iso_seconds
from sensor.traffic_classes import EXTERNAL, OTHER, TrafficClasses

MAX_APPS_SENT = 16
MAX_SERVICES_SENT = 16
MAX_PEERS_SENT = 8
MAX_KEPT = 64
"""Applications and services tracked per host and interval (the most used are sent)."""
MAX_PEERS_KEPT = 256
"""Peers tracked per host and interval: a scanner's thousands of peers cost no more than this."""
BUDGET = MAX_FRAME - 4096
"""Largest packed text in one message (the envelope and the other fields stay within the rest)."""
RAW_PART = 200_000
"""Plain JSON packed into one message at most: compressed about 4x, it fits BUDGET (or is halved until it does)."""
TCP = 6
DNS_PORT = 53


@dataclass(slots=True)
class _Destination:
    first_ms: int
    last_ms: int
    flows: int = 0
    sketch: Any = field(default_factory=new_sketch)
    last_host: str = ""
    """The host the sketch was last updated with: the same host's next flow need not hash again."""


@dataclass(slots=True)
class _Host:
    first_ms: int
    last_ms: int
    flows: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    apps: dict[str, int] = field(default_factory=dict)
    services: dict[tuple[int, int, str], int] = field(default_factory=dict)
    peers: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class _Interval:
    destinations: dict[tuple[str, str], _Destination] = field(default_factory=dict)
    hosts: dict[str, _Host] = field(default_factory=dict)
    destinations_omitted: int = 0
    hosts_omitted: int = 0


@lru_cache(maxsize=65536)
def _names(server_name: str) -> tuple[str, str]:
    """(the name as counted, its registered domain); ("", "") for a Host header or SNI that is an address (the
    address kind counts it). Cached: a site asks for the same names all day."""
    name = server_name.strip().rstrip(".").lower()[:256]
    try:
        ipaddress.ip_address(name.strip("[]"))
        return "", ""
    except ValueError:
        return name, registered_domain(name)


def _size(obj: object) -> int:
    return len(json.dumps(obj, separators=(",", ":"))) + 1


def offered(t: FlowTraffic) -> bool:
    """Whether the flow's destination answered as a server: it sent something back, was not a refusal (a reset
    with no data), and the flow began at its start (a TCP flow caught mid-way has no known server)."""
    return t.answered and t.opens and t.dst_port > 0 and not (t.rst and t.payload == 0)


class ContextCounter:
    """`add` flows, `close` finished intervals into `context` message bodies."""

    def __init__(
        self, classes: TrafficClasses, interval_s: int = 3600, max_destinations: int = 20_000, max_hosts: int = 5_000
    ) -> None:
        if interval_s < 1:
            raise ValueError("context interval must be at least 1 s")
        self.classes = classes
        self.interval_ms = interval_s * 1000
        self.max_destinations = max_destinations
        self.max_hosts = max_hosts
        self._intervals: dict[int, _Interval] = {}

    def add(self, t: FlowTraffic, fingerprint: str = "", classified: tuple[str, bool] | None = None) -> None:
        """Count one flow (`classified` as in Summariser.add)."""
        cls, src_is_client = classified or self.classes.classify(t.src_ip, t.dst_ip)
        if cls == OTHER:
            return  # multicast, broadcast, or no local end: nobody of the site reached anything
        start = t.start_ms - t.start_ms % self.interval_ms
        iv = self._intervals.get(start)
        if iv is None:
            iv = self._intervals[start] = _Interval()
        end = max(t.end_ms, t.start_ms)
        client, server = (t.src_ip, t.dst_ip) if src_is_client else (t.dst_ip, t.src_ip)
        local_server = self.classes.is_local(server)
        if cls == EXTERNAL:
            self._reach(iv, "address", server, client, t.start_ms, end)
            if fingerprint:
                self._reach(iv, "client_fingerprint", fingerprint[:256], client, t.start_ms, end)
        name, domain = _names(t.server_name) if t.server_name else ("", "")
        is_dns = t.dst_port == DNS_PORT or t.dns is not None
        if name and (is_dns or not local_server):
            if domain:
                self._reach(iv, "domain", domain, client, t.start_ms, end)
            if not is_dns:
                self._reach(iv, "server_name", name, client, t.start_ms, end)
        for h in (client, server) if local_server else (client,):
            self._host(iv, h, t, end)

    def _reach(self, iv: _Interval, kind: str, key: str, host: str, start: int, end: int) -> None:
        d = iv.destinations.get((kind, key))
        if d is None:
            if len(iv.destinations) >= self.max_destinations:
                iv.destinations_omitted += 1
                return
            d = iv.destinations[(kind, key)] = _Destination(start, end)
        if start < d.first_ms:
            d.first_ms = start
        if end > d.last_ms:
            d.last_ms = end
        d.flows += 1
        if host != d.last_host:
            d.sketch.update(host)
            d.last_host = host

    def _host(self, iv: _Interval, ip: str, t: FlowTraffic, end: int) -> None:
        h = iv.hosts.get(ip)
        if h is None:
            if len(iv.hosts) >= self.max_hosts:
                iv.hosts_omitted += 1
                return
            h = iv.hosts[ip] = _Host(t.start_ms, end)
        if t.start_ms < h.first_ms:
            h.first_ms = t.start_ms
        if end > h.last_ms:
            h.last_ms = end
        h.flows += 1
        is_src = ip == t.src_ip
        sent, received = (t.bytes_fwd, t.bytes_bwd) if is_src else (t.bytes_bwd, t.bytes_fwd)
        h.bytes_up += sent
        h.bytes_down += received
        if is_src:
            if t.application in h.apps or len(h.apps) < MAX_KEPT:
                h.apps[t.application] = h.apps.get(t.application, 0) + 1
        elif offered(t):
            key = (t.protocol, t.dst_port, t.application)
            if key in h.services or len(h.services) < MAX_KEPT:
                h.services[key] = h.services.get(key, 0) + 1
        peer = t.dst_ip if is_src else t.src_ip
        p = h.peers.get(peer)
        if p is None:
            if len(h.peers) >= MAX_PEERS_KEPT:
                return
            p = h.peers[peer] = [0, 0]
        p[0] += 1
        p[1] += t.bytes_fwd + t.bytes_bwd

    def close(self, now_ms: int | None) -> list[dict]:
        """Context bodies of the intervals that ended GRACE_MS before now_ms (all of them if None)."""
        done = sorted(s for s in self._intervals if now_ms is None or s + self.interval_ms + GRACE_MS <= now_ms)
        out: list[dict] = []
        for start in done:
            out.extend(self._bodies(start, self._intervals.pop(start)))
        return out

    def _bodies(self, start: int, iv: _Interval) -> list[dict]:
        items: list[tuple[str, dict]] = []
        for (kind, key), d in sorted(iv.destinations.items()):
            items.append(("destinations", {"kind": kind, "key": key, "first_ms": d.first_ms, "last_ms": d.last_ms,
                                           "flows": d.flows, "sketch": encode(d.sketch)}))  # fmt: skip
        for ip, h in sorted(iv.hosts.items()):
            items.append(("hosts", _host_body(ip, h)))
        if not items and not iv.destinations_omitted and not iv.hosts_omitted:
            return []
        parts: list[list[tuple[str, dict]]] = []
        current: list[tuple[str, dict]] = []
        size = 0
        for item in items:
            n = _size(item[1])
            if current and size + n > RAW_PART:
                parts.append(current)
                current, size = [], 0
            current.append(item)
            size += n
        parts.append(current)
        head = {"interval_start": iso_seconds(start), "interval_s": self.interval_ms // 1000}
        out: list[dict] = []
        for part in parts:
            out.extend(self._packed(head, part))
        out[0] |= {"destinations_omitted": iv.destinations_omitted, "hosts_omitted": iv.hosts_omitted}
        return out

    def _packed(self, head: dict, part: list[tuple[str, dict]]) -> list[dict]:
        """One message for the part, or two halves each as small as it needs (sketches compress less than names)."""
        obj: dict[str, list] = {"destinations": [], "hosts": []}
        for section, item in part:
            obj[section].append(item)
        text = pack(obj)
        if len(text) > BUDGET and len(part) > 1:
            half = len(part) // 2
            return self._packed(head, part[:half]) + self._packed(head, part[half:])
        return [head | {"destinations_omitted": 0, "hosts_omitted": 0, "packed": text}]


def _host_body(ip: str, h: _Host) -> dict:
    apps = sorted(h.apps.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_APPS_SENT]
    services = sorted(h.services.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_SERVICES_SENT]
    peers = sorted(h.peers.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:MAX_PEERS_SENT]
    return {
        "host": ip,
        "first_ms": h.first_ms,
        "last_ms": h.last_ms,
        "flows": h.flows,
        "bytes_up": h.bytes_up,
        "bytes_down": h.bytes_down,
        "applications": [{"application": a[:128], "flows": n} for a, n in apps],
        "services": [
            {"protocol": p, "port": port, "application": a[:128], "flows": n} for (p, port, a), n in services
        ],  # fmt: skip
        "peers": [{"peer": peer, "flows": v[0], "bytes": v[1]} for peer, v in peers],
    }
