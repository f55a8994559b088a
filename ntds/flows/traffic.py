"""What the summaries need of every flow, single-packet flows included."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class FlowTraffic:
    """A flow as NFStream saw it: NFStream's own orientation (src sent the first
    packet), IP-layer bytes, and the application label of the 87-column records."""

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

    @property
    def answered(self) -> bool:
        return self.packets_bwd > 0
