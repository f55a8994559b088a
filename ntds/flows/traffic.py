"""What the summaries need of every flow, single-packet flows included."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class DnsSeen:
    """The DNS messages of one flow on UDP port 53: what a tunnel changes besides its names."""

    qtype: int
    """The question's record type (1 A, 5 CNAME, 10 NULL, 15 MX, 16 TXT, 28 AAAA...); 0: none seen."""
    rcode: int
    """The last response's code (0 no error, 3 no such name); -1: no response."""
    queries: int
    answers: int
    """Answer records in the responses."""
    reply_max: int
    """The largest response, bytes of DNS message."""
    names: int = 0
    """Names asked in turn (each differing from the one before) under the first name's last two labels: a
    tunnel asks a new name every query, on one socket as often as not."""
    encoded: int = 0
    """Of those, names with 24 or more characters below the last two labels: more than a host name holds."""
    name_chars: int = 0
    """Characters below the last two labels, over those names: the data names can carry."""
    data_types: int = 0
    """Questions for record types whose answers carry data (TXT, NULL, CNAME, MX, ANY, private types)."""


@dataclass(slots=True, frozen=True)
class IcmpSeen:
    """The ICMP packets of one flow: what echo normally carries, and what it carried here."""

    requests: int
    replies: int
    unmatched: int
    """Echo replies beyond the other side's requests: answers to nothing asked."""
    carried: int
    """Packets whose payload is no ping fill (bytes counting up, a short unit repeated, after at most a 16-byte
    timestamp): data, as a tunnel or a backdoor sends it (ntds/flows/accumulator.c, ping_fill)."""
    carried_bytes: int
    payload_min: int
    """Smallest and largest echo payload, bytes (ping sends one size: 32 B on Windows, 56 B on Unix)."""
    payload_max: int


def inside(seen: tuple) -> tuple[int, tuple[int, ...], DnsSeen | None, IcmpSeen | None]:
    """The meter's `inside` values (ntds.flows.features.inside) as (first_flags, checkins, dns, icmp)."""
    flags = seen[0] if seen else -1
    checkins: tuple[int, ...] = ()
    if isinstance(flags, tuple):
        flags, checkins = flags
    if len(seen) < 2:
        return flags, checkins, None, None
    if seen[1] == "dns":
        return flags, checkins, DnsSeen(*seen[2:11]), None
    return flags, checkins, None, IcmpSeen(*seen[2:9])


@dataclass(slots=True)
class FlowTraffic:
    """A flow as NFStream saw it: NFStream's own orientation (src sent the first
    packet), IP-layer bytes, and the application label of the 87-column records.

    Read-only by convention, not frozen: a frozen dataclass sets each field through `object.__setattr__`, three
    times the cost of making one, and a flow is made once in the sensor's process and once in an analysis
    worker."""

    start_ms: int
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    packets_fwd: int
    bytes_fwd: int
    packets_bwd: int
    bytes_bwd: int
    application: str
    opens: bool = True
    """False for a TCP flow that does not begin with a bare SYN (the rest of a split
    conversation): it cannot be an unanswered attempt."""
    end_ms: int = 0
    """Time of the flow's last packet (the start's if not known)."""
    payload: int = 0
    """Transport payload bytes, both directions (0: a TCP handshake or probe without data)."""
    rst: bool = False
    """A TCP reset was seen (an attempt the other side refused, or a connection torn down)."""
    server_name: str = ""
    """nDPI's requested server name: the TLS SNI, the HTTP Host, the DNS query name."""
    first_flags: int = -1
    """TCP flags of the flow's first packet (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32, ECE 64, CWR 128): a
    flag probe (FIN, NULL, XMAS scans) opens with neither SYN nor ACK. -1: not TCP, or not known (flow files)."""
    dns: DnsSeen | None = None
    """What the flow's DNS messages said (UDP port 53, as the meter parsed them)."""
    icmp: IcmpSeen | None = None
    """What the flow's ICMP packets carried."""
    checkins: tuple[int, ...] = ()
    """Times (ms) of the polls inside the flow, when it held two or more: requests of its opener carrying more
    than a keepalive (128 B or more) after a quiet second (the first 16; ntds/flows/accumulator.c)."""

    @property
    def answered(self) -> bool:
        return self.packets_bwd > 0
