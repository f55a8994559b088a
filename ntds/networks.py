"""The site's own address space: one definition of "local" for every part of ntds.

The sensor's traffic classes, the baseline builder's `--offsite-only` and
`--local-net`, and the host-level detectors all ask the same question (is this
address the site's?), so they share one default and one matcher.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import lru_cache

DEFAULT_LOCAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10")
"""RFC 1918, IPv4 link-local, IPv6 unique-local and link-local."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOL_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
"""IANA names of the IP protocols people read about; others are shown as "IP-<number>"."""


def protocol_name(number: int) -> str:
    """ "TCP" for 6: signatures, entry names and pages show names, not numbers."""
    return PROTOCOL_NAMES.get(number, f"IP-{number}")


def parse_networks(items: Iterable[str], what: str = "local_networks") -> list[Network]:
    """Addresses or CIDR networks; ValueError naming `what` and the bad item."""
    nets = []
    for text in items:
        try:
            nets.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{what}: {text!r} is not an address or network") from None
    return nets


def invalid_network(values: list[str]) -> str | None:
    """For settings checks: a description of the first item that is not a network, or None."""
    try:
        parse_networks(values)
    except ValueError:
        bad = next(v for v in values if not _parses(v))
        return f"has {bad!r}, which is not an address or network"
    return None


def _parses(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
        return True
    except ValueError:
        return False


def contains(networks: list[Network], address: str) -> bool:
    """Whether the address (text) lies in any of the networks; False for text that is no address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks if n.version == ip.version)


def matcher(networks: Iterable[str] = DEFAULT_LOCAL_NETWORKS) -> Callable[[str], bool]:
    """`contains` for one fixed list, cached per address (the detectors ask for every flow)."""
    nets = parse_networks(networks)
    return lru_cache(maxsize=1 << 16)(lambda address: contains(nets, address))
