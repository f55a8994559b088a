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
