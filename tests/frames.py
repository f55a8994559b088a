"""Frames the tests write with scapy: an Ethernet header with its addresses set.

Left unset, scapy fills the destination by asking the network (ARP, or IPv6 neighbour discovery, with a timeout):
a test must never send traffic beyond loopback, and it cost one test ten seconds of waiting.
"""

from __future__ import annotations

from scapy.layers.l2 import Ether

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def ether(**fields) -> Ether:
    """An Ethernet header with both addresses set (locally administered), so scapy resolves nothing."""
    return Ether(src=fields.pop("src", CLIENT_MAC), dst=fields.pop("dst", SERVER_MAC), **fields)
