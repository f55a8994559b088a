"""Feature profiles: every place where the dataset-era CICFlowMeter differs from
what a column's name promises is one switch here (spec section 4.1).

`unicauca` reproduces the 2017 tool bug for bug, so that baselines and models
built on the public data set see the same distributions; `corrected` gives the
values the names promise. One implementation reads these switches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureProfile:
    name: str
    duplicate_first_length: bool
    """First packet's length entered twice in columns 45-49 and in the numerator of 59."""
    first_packet_flags_only: bool
    """Flag counts (50-57) and Fwd/Bwd PSH/URG (37-40) come from the first packet only."""
    permuted_flag_columns: bool
    """The 8 flag-count columns hold Java HashMap order RST,PSH,ECE,SYN,ACK,FIN,URG,CWR (4.2)."""
    bulk_and_subflows: bool
    """Compute bulk (3.1) and subflow (3.2) columns; otherwise bulk = 0 and subflows = totals."""
    last_backward_window: bool
    """Init_Win_bytes_backward is the window of the last backward packet, not the first."""
    count_ethernet_padding: bool
    """Payload length includes Ethernet trailer bytes captured after the IP packet."""
    close_on_first_fin: bool
    """A flow ends on the first FIN; otherwise on RST or once both FINs and the closing ACK were seen."""
    keep_orientation_after_timeout: bool
    """A flow that continues after a timeout keeps the old flow's source and destination."""
    other_protocols_as_zero: bool
    """Protocols other than TCP and UDP are written as Protocol 0."""


UNICAUCA = FeatureProfile(
    name="unicauca",
    duplicate_first_length=True,
    first_packet_flags_only=True,
    permuted_flag_columns=True,
    bulk_and_subflows=False,
    last_backward_window=True,
    count_ethernet_padding=True,
    close_on_first_fin=True,
    keep_orientation_after_timeout=True,
    other_protocols_as_zero=True,
)

CORRECTED = FeatureProfile(
    name="corrected",
    duplicate_first_length=False,
    first_packet_flags_only=False,
    permuted_flag_columns=False,
    bulk_and_subflows=True,
    last_backward_window=False,
    count_ethernet_padding=False,
    close_on_first_fin=False,
    keep_orientation_after_timeout=False,
    other_protocols_as_zero=False,
)

PROFILES: dict[str, FeatureProfile] = {p.name: p for p in (UNICAUCA, CORRECTED)}

FLOW_TIMEOUT_US = 120_000_000
"""CICFlowMeter flow timeout, measured from the flow's first packet."""
ACTIVITY_TIMEOUT_US = 5_000_000
"""Gap that separates an active period from an idle one (columns 77-84)."""
SUBFLOW_GAP_US = 1_000_000
BULK_GAP_US = 1_000_000
BULK_MIN_PACKETS = 4


def get_profile(name: str) -> FeatureProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown feature profile {name!r} (choose from {', '.join(PROFILES)})") from None
