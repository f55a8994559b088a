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

    def kind(self, ip: str) -> int:
        k = self._cache.get(ip)
        if k is None:
            k = self._kind(ip)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[ip] = k
        return k

    def _kind(self, ip: str) -> int:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return _REMOTE
        if a.is_multicast or a.is_unspecified or a == ipaddress.IPv4Address("255.255.255.255"):
            return _GROUP
        if any(a in n for n in self.local_servers if n.version == a.version):
            return _SERVER | _LOCAL
        if any(a in n for n in self.local_networks if n.version == a.version):
            return _LOCAL
        return _REMOTE

    def is_local(self, ip: str) -> bool:
        return bool(self.kind(ip) & _LOCAL)

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
