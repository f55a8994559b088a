"""Indicators of compromise: what one is, its types, and the one normal form every format is read into.

An indicator is a value an intelligence source calls bad (an address, a
network, a domain, a TLS or SSH fingerprint) with where it came from, how sure
that source is (confidence 0-100), when it was first added and when it stops
counting. Every reader (ntds.intel.formats) hands values to `normalise`, so the
sensor's matcher (ntds.intel.matching) compares one spelling of each value with
one spelling of what the meter saw: addresses in their compressed form, networks
masked, domains lower case without the trailing dot, hashes lower-case hex.

Fingerprints are what NFStream 6.6.0 (nDPI) reports per flow: its
`client_fingerprint` is JA4 for TLS and QUIC clients (`t13d1516h2_8daaf6152771_
b186095e22b6`; FoxIO's JA4 is BSD 3-Clause, unlike the rest of JA4+, so nDPI may
compute it and ntds may match it) and HASSH for SSH clients; its
`server_fingerprint` is JA3S for TLS servers and HASSH-server for SSH servers.
JA3 (the client's MD5) is accepted so feeds load whole, but NFStream 6.6.0 does
not report it: a `ja3` indicator matches only flows from flow files that carry
one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

TYPES: dict[str, str] = {
    "ip": "an IPv4 or IPv6 address (either end of a flow)",
    "net": "an IPv4 or IPv6 network in CIDR notation (either end of a flow)",
    "domain": "a domain name and every name under it (DNS query names, TLS SNI, HTTP Host)",
    "ja3": "JA3 TLS client fingerprint, MD5 hex (not reported by NFStream 6.6.0)",
    "ja3s": "JA3S TLS server fingerprint, MD5 hex (NFStream's server_fingerprint of TLS flows)",
    "ja4": "JA4 TLS/QUIC client fingerprint (NFStream's client_fingerprint of TLS and QUIC flows)",
    "hassh": "HASSH SSH client fingerprint, MD5 hex (NFStream's client_fingerprint of SSH flows)",
    "hassh_server": "HASSH-server SSH server fingerprint, MD5 hex (NFStream's server_fingerprint of SSH flows)",
}
DEFAULT_CONFIDENCE = 50
"""What an indicator without a confidence gets: the middle of the scale (tier 3)."""
MAX_VALUE = 253
"""Longest indicator value: a DNS name's limit, longer than any address or fingerprint."""

_MD5 = re.compile(r"[0-9a-f]{32}")
_JA4 = re.compile(r"[tqd][0-9a-z]{2}[di][0-9]{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


@dataclass(frozen=True, slots=True)
class Indicator:
    """One known-bad value and what vouches for it."""

    type: str
    value: str
    source: str
    confidence: int = DEFAULT_CONFIDENCE
    """0-100: how sure the source is. Sets the alert's tier (`tier_of`)."""
    added: float = 0.0
    """When it was first added (seconds since the epoch)."""
    expires: float = 0.0
    """When it stops matching (seconds since the epoch); 0: never."""

    def active(self, now: float) -> bool:
        return not self.expires or self.expires > now


def tier_of(confidence: int) -> int:
    """The alert tier of a match: confidence 0-19 is tier 1, 20-39 tier 2, 40-59 tier 3, 60-79 tier 4, 80-100 tier 5.
    A feed's own confidence is the only measure of how much a match means, so it is the severity."""
    return 1 + min(4, max(0, int(confidence)) // 20)


def normalise(kind: str, value: str) -> tuple[str, str]:
    """(type, value) in the one spelling the matcher compares; ValueError with one line for anything else."""
    kind = kind.strip().lower()
    v = value.strip()
    if kind not in TYPES:
        raise ValueError(f"unknown indicator type {kind[:40]!r} (known: {', '.join(TYPES)})")
    if not v:
        raise ValueError("empty indicator")
    if len(v) > MAX_VALUE:
        raise ValueError(f"indicator longer than {MAX_VALUE} characters")
    if kind in ("ip", "net"):
        try:
            if "/" not in v:
                return "ip", str(ipaddress.ip_address(v))
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"not an IP {'network' if kind == 'net' else 'address'}: {v[:60]!r}") from None
        if net.num_addresses == 1:
            return "ip", str(net.network_address)
        return "net", str(net)
    if kind == "domain":
        name = v.lower().rstrip(".")
        if name.startswith("*."):
            name = name[2:]  # a wildcard means the same as the domain: its subdomains match
        try:
            name = name.encode("idna").decode("ascii") if not name.isascii() else name
        except UnicodeError:
            raise ValueError(f"not a domain name: {v[:60]!r}") from None
        labels = name.split(".")
        if len(name) > MAX_VALUE or not all(_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"not a domain name: {v[:60]!r}")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return "domain", name
        return "ip", name
    h = v.lower()
    if kind == "ja4":
        if not _JA4.fullmatch(h):
            raise ValueError(f"not a JA4 fingerprint: {v[:60]!r}")
        return kind, h
    if not _MD5.fullmatch(h):
        raise ValueError(f"not an MD5 {kind} fingerprint (32 hex digits): {v[:60]!r}")
    return kind, h


def _looks_v6(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        return False
    return True


def infer(value: str) -> tuple[str, str]:
    """The type of a bare value (plain lists): an address, a network, a JA4 fingerprint or a domain. A bare MD5
    could be JA3, JA3S or HASSH, so it needs its type written (`ja3s:...`)."""
    v = value.strip()
    head, sep, rest = v.partition(":")
    if sep and head.lower() in TYPES:
        return normalise(head, rest)
    if sep and "." not in head and not _looks_v6(v):
        raise ValueError(f"unknown indicator type {head[:40]!r} (known: {', '.join(TYPES)})")
    if _MD5.fullmatch(v.lower()):
        raise ValueError(f"{v[:40]!r} could be a JA3, JA3S or HASSH fingerprint: write it as TYPE:VALUE (ja3s:...)")
    if _JA4.fullmatch(v.lower()):
        return normalise("ja4", v)
    try:
        return normalise("ip", v)
    except ValueError:
        pass
    return normalise("domain", v)
