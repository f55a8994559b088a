"""Which side of a flow is local, which is a local server, and so which traffic class it is.

The weekly report splits bytes the way a campus operator thinks about them
(seed: local_traffic.py): traffic leaving the site, traffic to the site's own
servers, and traffic between ordinary local hosts. Rules, in order:

- either end multicast, broadcast or unspecified (0.0.0.0, ::) -> other
  (SSDP/mDNS chatter is nobody's peer);
- both ends local: local_service if either is a local server (the client is
  the other end; src if both are servers), else peer_to_peer (client = src);
- exactly one end local: external (the client is the local end);
- no local end (transit, or a tap outside the site): other (client = src).

Local servers count as local even outside local_networks. "Up" in every class
is from the client end.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from ntds.networks import DEFAULT_LOCAL_NETWORKS, parse_networks

EXTERNAL, LOCAL_SERVICE, PEER_TO_PEER, OTHER = "external", "local_service", "peer_to_peer", "other"
_LOCAL, _SERVER, _GROUP, _REMOTE = 1, 2, 4, 0
_CACHE_LIMIT = 200_000


class TrafficClasses:
    """Classifies flow ends; a bounded cache keeps the per-flow cost to two dict lookups."""

    def __init__(
        self, local_networks: Iterable[str] = DEFAULT_LOCAL_NETWORKS, local_servers: Iterable[str] = ()
    ) -> None:
        self.local_networks = parse_networks(local_networks, "local_networks")
        self.local_servers = parse_networks(local_servers, "local_servers")
        self._cache: dict[str, int] = {}
        self._ranges = {
            v4: tuple([(int(n.network_address), int(n.netmask)) for n in nets if (n.version == 4) == v4]
                      for nets in (self.local_servers, self.local_networks))
            for v4 in (True, False)
        }  # fmt: skip
        """For IPv4 (True) and IPv6: (network, mask) of the local servers, then of the local networks."""

    def kind(self, ip: str) -> int:
        k = self._cache.get(ip)
        if k is None:
            k = self._kind(ip)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[ip] = k
        return k

    def _kind(self, ip: str) -> int:
        # On integers, not ipaddress objects: a busy tap (a scan, a CDN) shows tens of thousands of new
        # addresses a minute, and ipaddress took about 10 µs for each.
        try:
            a = ipaddress.ip_address(ip) if "%" in ip else None  # a scoped IPv6 address: inet_pton refuses it
            packed = a.packed if a else socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
        except (OSError, ValueError):
            return _REMOTE
        n, v4 = int.from_bytes(packed, "big"), len(packed) == 4
        if (n >> 28 == 0xE or n in (0, 0xFFFFFFFF)) if v4 else (n >> 120 == 0xFF or n == 0):
            return _GROUP  # multicast, unspecified, limited broadcast
        if any(n & mask == net for net, mask in self._ranges[v4][0]):
            return _SERVER | _LOCAL
        if any(n & mask == net for net, mask in self._ranges[v4][1]):
            return _LOCAL
        return _REMOTE

    def is_local(self, ip: str) -> bool:
        k = self._cache.get(ip)  # the cache first, inline: the detectors ask this of every flow's ends
        return bool((self.kind(ip) if k is None else k) & _LOCAL)

    def classify(self, src: str, dst: str) -> tuple[str, bool]:
        """(traffic class, whether src is the client end)."""
        ks, kd = self.kind(src), self.kind(dst)
        if (ks | kd) & _GROUP:
            return OTHER, True
        if ks & kd & _LOCAL:
            if ks & _SERVER and not kd & _SERVER:
                return LOCAL_SERVICE, False
            if kd & _SERVER:
                return LOCAL_SERVICE, True
            return PEER_TO_PEER, True
        if ks & _LOCAL:
            return EXTERNAL, True
        if kd & _LOCAL:
            return EXTERNAL, False
        return OTHER, True
