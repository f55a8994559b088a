"""The 87 CICFlowMeter features: a per-packet step in C inside NFStream's meters, the columns in Python.

`ntds.flows.engine` calls `start` for a flow's first packet, the C step
(`ntds/flows/accumulator.c`, through `stepper`) for every later one and `finish`
once, with NFStream's own engine packet structure read in place: no plugin, so
NFStream never copies its flow structure into Python or builds a packet tuple
per packet, and no Python runs per packet beyond NFStream's own meter loop. All
per-flow state is a fixed C structure of running integers (sums, sums of squares,
minima, maxima): no packet lists, so memory per flow is constant however long
the flow lives. Sums of integers are exact, so standard deviations computed from
them in `finalize` are exact up to the final float rounding.

What happens once per flow (orientation, end reasons, the 85 columns) is Python:
`finish` ships the state as its raw bytes, and `finalize` turns them into the
row in the sensor's process. Definitions follow spec/flow-features.md sections
2-4; the profile object switches between the dataset's bugs and the corrected
values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from ipaddress import ip_address

from ntds.flows._compiled import ffi as _ffi
from ntds.flows._compiled import lib as _lib
from ntds.flows.clock import TIME_PRECISION_US, engine_ms
from ntds.flows.profiles import (
    ACTIVITY_TIMEOUT_US,
    BULK_GAP_US,
    BULK_MIN_PACKETS,
    SUBFLOW_GAP_US,
    FeatureProfile,
)

TCP, UDP = 6, 17

# Reasons a flow ended, for the `flow_end_reason` extra field.
END_FIN = "fin"
END_RST = "rst"
END_CLOSED = "closed"
END_ACTIVE = "active-timeout"
END_IDLE = "idle-timeout"
END_CAPTURE = "end-of-capture"
END_EVICTED = "evicted"
_ENDED_BY_PACKET = {1: END_FIN, 2: END_RST, 3: END_CLOSED}
"""The C step's end codes: the packet that ended the flow."""

ORIENTATION_MEMORY = 65536
"""How many 5-tuples whose flow ended by timeout each meter remembers, so that a
flow continuing after the timeout keeps its orientation (unicauca profile). The
oldest entry is forgotten first; a flow beyond this horizon starts in its own
packet's direction."""

PACKET_FIELDS = {
    "direction": "uint8_t", "time": "uint64_t", "transport_size": "uint16_t", "payload_size": "uint16_t",
    "ip_size": "uint16_t", "ip_content_len": "uint16_t", "ip_content": "uint8_t *", "src_ip": "uint64_t[2]",
    "dst_ip": "uint64_t[2]", "src_port": "uint16_t", "dst_port": "uint16_t", "protocol": "uint8_t",
    "vlan_id": "uint16_t", "tunnel_id": "unsigned int",
}  # fmt: skip
PACKET_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "cwr", "ece")
"""What the C code reads of NFStream's packet structure (`struct ntds_layout`): byte offsets of the fields,
read as the C types named here, and for the TCP flags (bits of one 16-bit word) the word's offset under
"flags" and each flag's bit under "<flag>_bit"."""

FlowState = type(_ffi.new("struct ntds_flow *"))
"""The class of a flow's running state in the meter: a `struct ntds_flow` (ntds/flows/accumulator.h) that
cffi owns. The per-packet path tests `x.__class__ is FlowState` inline; elsewhere `is_state` says it."""


def is_state(value: object) -> bool:
    """Is this (a flow's udps slot) a running state, rather than a result or an error?"""
    return value.__class__ is FlowState


FlowResult = tuple
"""What a finished flow carries back to the sensor on NFStream's `udps` slot: (state bytes or None, end reason,
opens, error, payload bytes, reset seen, inside). The state (None for a single-packet flow) becomes the 85
columns in the sensor's process (`finalize`), so the meter spends its time on packets, not on arithmetic a
second core can do; payload, reset and `inside` (the first packet's TCP flags, and what the DNS and ICMP
payloads showed: `ntds.flows.traffic.inside`) are what the host-level detectors need of every flow."""

FLAG_BITS = (1, 2, 4, 8, 16, 32, 128, 64)
"""TCP header bits of `struct ntds_flow`'s first_flags (FIN, SYN, RST, PSH, ACK, URG, CWR, ECE)."""


def failed(error: Exception, end: str = "", opens: bool = True) -> FlowResult:
    return (None, end, opens, f"{type(error).__name__}: {error}", 0, False, ())


def inside(s: FlowState) -> tuple:
    """What the C step saw inside the flow's packets, as plain integers (`ntds.flows.traffic.inside` reads it):
    the first packet's TCP flags (-1 for other protocols; with the times of the check-ins inside the flow
    beside them when there were two or more: (flags, times)), then ("dns", type, code, queries, answers, largest
    reply, names, encoded names, their characters, data-type questions) or ("icmp", echo requests, replies,
    unmatched replies, carried payloads, their bytes, smallest and largest echo payload)."""
    flags = sum(bit for bit, on in zip(FLAG_BITS, s.first_flags) if on) if s.tcp else -1
    if s.checkins >= 2:  # polls inside the flow: their times, for the beacon detector
        flags = (flags, tuple(s.first_ms + s.checkin_ms[i] for i in range(min(s.checkins, 16))))
    p = s.p
    if s.dns:
        return (flags, "dns", p.dns_qtype, p.dns_rcode, p.dns_queries, p.dns_answers, p.dns_reply_max, p.dns_names,
                p.dns_encoded, p.dns_name_chars, p.dns_data_types)  # fmt: skip
    if s.proto in (1, 58):
        e = s.echo_dir
        unmatched = max(0, e[1] - e[2]) + max(0, e[3] - e[0])
        return (flags, "icmp", e[0] + e[2], e[1] + e[3], unmatched, p.carried, p.carried_bytes, p.echo_min,
                p.echo_max)  # fmt: skip
    return (flags,)


class CicFeatures:
    """Accumulates the 87 Unicauca/CICFlowMeter columns per flow from the engine's packets.

    `finish` returns what `finalize` turns into the row (a tuple in `ntds.flows.columns.COLUMNS` order,
    with the last two label columns left for the caller); flows of a single packet get no row, as
    CICFlowMeter never writes them. `packet_layout` says where NFStream keeps the packet fields the C step
    reads (`ntds.flows.engine.packet_layout`: `PACKET_FIELDS`, "flags" and the "<flag>_bit"s).
    """

    def __init__(
        self,
        profile: FeatureProfile,
        packet_layout: Mapping[str, int],
        tz: tzinfo = UTC,
        idle_timeout_ms: int = 120_000,
    ) -> None:
        self.profile = profile
        self.tz = tz
        self.idle_timeout_ms = idle_timeout_ms
        self._orientation: dict[int, int] = {}
        meter = self.meter = _ffi.new("struct ntds_meter *")
        """The C side's view of this meter: where the packet fields are, the profile, the newest packet time."""
        for name in (*PACKET_FIELDS, "flags", *(f"{flag}_bit" for flag in PACKET_FLAGS)):
            setattr(meter.layout, name, packet_layout[name])
        for name in ("count_ethernet_padding", "last_backward_window", "first_packet_flags_only",
                     "bulk_and_subflows", "close_on_first_fin"):  # fmt: skip
            setattr(meter.profile, name, int(getattr(profile, name)))
        meter.profile.activity_timeout_us = ACTIVITY_TIMEOUT_US
        meter.profile.subflow_gap_us = SUBFLOW_GAP_US
        meter.profile.bulk_gap_us = BULK_GAP_US
        meter.profile.bulk_min_packets = BULK_MIN_PACKETS

    def stepper(self) -> tuple[Callable[..., int], FlowState]:
        """The per-packet step and its first argument: step(meter, state, packet) adds a later packet (the
        engine has set its direction) and returns 1 when the flow ends with it (the FIN rule). A C function,
        handed out bare so that the meter calls it with no Python frame of ours around it."""
        return _lib.ntds_add, self.meter

    def start(self, packet, flow) -> FlowState:
        """The flow's first packet (flow: the NFlow the engine just made from it)."""
        # Forward is decided on the source IP only (spec 2): a flow between two sockets of one host is all
        # forward. fwd_code is the NFStream direction that counts as forward, or -1 for "every packet".
        fwd_code = -1 if flow.src_ip == flow.dst_ip else 0
        if fwd_code == 0 and self.profile.keep_orientation_after_timeout and self._orientation:
            before = self._orientation.pop(_tuple_key(flow), None)
            if before is not None and before != hash((flow.src_ip, flow.src_port)):
                fwd_code = 1
        s = _ffi.new("struct ntds_flow *")
        _lib.ntds_start(self.meter, s, packet, flow.protocol, fwd_code)
        return s

    def finish(self, s: FlowState, flow) -> FlowResult:
        """The flow has ended (the engine synced its final values into `flow`)."""
        end = _ENDED_BY_PACKET.get(s.end)
        if end is None:
            if s.evicted:
                end = END_EVICTED
            elif flow.expiration_id == 1:
                end = END_ACTIVE
            elif self.meter.now_ms - engine_ms(flow.bidirectional_last_seen_ms) >= self.idle_timeout_ms:
                end = END_IDLE
            else:
                end = END_CAPTURE
        if self.profile.keep_orientation_after_timeout:
            key = _tuple_key(flow)
            if end in (END_FIN, END_RST, END_CLOSED):
                self._orientation.pop(key, None)
            else:
                memory = self._orientation
                memory.pop(key, None)
                memory[key] = hash((flow.dst_ip, flow.dst_port) if s.fwd_code == 1 else (flow.src_ip, flow.src_port))
                if len(memory) > ORIENTATION_MEMORY:
                    del memory[next(iter(memory))]
        state = bytes(_ffi.buffer(s)) if s.n >= 2 else None
        return (state, end, bool(s.opens), "", s.payload, bool(s.rst), inside(s))


def _tuple_key(flow) -> int:
    """Direction-free key of a flow's 5-tuple (and VLAN), as NFStream keys flows.

    Kept as a 64-bit hash: the orientation memory then costs ~100 bytes an entry,
    and a collision (about 1 in 2**44 at the full 65,536 entries) could only flip
    the orientation of one flow continuing after a timeout."""
    a = (flow.src_ip, flow.src_port)
    b = (flow.dst_ip, flow.dst_port)
    return hash((a, b, flow.protocol, flow.vlan_id) if a <= b else (b, a, flow.protocol, flow.vlan_id))


# -- from running sums to the 87 values (pure arithmetic) -----------------------------


def _mean(total: int, n: int) -> float:
    return total / n if n else 0.0


def _sample_var(n: int, total: int, sq: int) -> float:
    """Sample variance (n-1) from exact integer sums; 0 for fewer than two values."""
    if n < 2:
        return 0.0
    return (n * sq - total * total) / (n * (n - 1))


def _std(n: int, total: int, sq: int) -> float:
    return math.sqrt(_sample_var(n, total, sq))


def _stats4(acc: list) -> tuple[float, float, float, float]:
    """Mean, std, max, min of an accumulator [count, sum, sumsq low 64 bits, min, max, sumsq high 64 bits]; zeros
    if empty. The squares are 128-bit: in a capture whose clock goes backwards a flow can be idle for hours."""
    n, total, sq_lo, lo, hi, sq_hi = acc
    sq = (sq_hi % 2**64) << 64 | (sq_lo % 2**64)
    if not n:
        return 0.0, 0.0, 0.0, 0.0
    return total / n, _std(n, total, sq), float(hi), float(lo)


def _iat(d) -> tuple[float, float, float, float, float]:
    """Total, mean, std, max, min of the gaps between packets of one direction (a `struct ntds_direction`)."""
    gaps = d.n - 1
    if gaps < 1:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    total = d.last_t - d.first_t
    sq = d.iat_sq_hi << 64 | d.iat_sq_lo
    return float(total), total / gaps, _std(gaps, total, sq), float(d.iat_max), float(d.iat_min)


def _rate(count: int, duration_us: int) -> float:
    """Per-second rate with Java double semantics: x/0 is Infinity, 0/0 is NaN."""
    if duration_us == 0:
        return math.inf if count else math.nan
    return count / (duration_us / 1e6)


@lru_cache(maxsize=65536)
def _signed(address: str) -> tuple[int, ...]:
    """An address's octets as Java's signed bytes (cached: addresses repeat across flows)."""
    return tuple(o - 256 if o >= 128 else o for o in ip_address(address).packed)


def flow_id(src_ip: str, src_port: int, dst_ip: str, dst_port: int, protocol: int) -> str:
    """CICFlowMeter's Flow.ID: the two ends ordered by their addresses read as signed bytes."""
    if _signed(src_ip) <= _signed(dst_ip):
        return f"{src_ip}-{dst_ip}-{src_port}-{dst_port}-{protocol}"
    return f"{dst_ip}-{src_ip}-{dst_port}-{src_port}-{protocol}"


def format_timestamp(t_us: int, tz: tzinfo) -> str:
    return _format_second(t_us // 1_000_000, tz)


@lru_cache(maxsize=4096)
def _format_second(second: int, tz: tzinfo) -> str:
    """Java `dd/MM/yyyy hh:mm:ss` (12-hour clock, no AM/PM) without the space, as in the file.

    Captures with absurd clocks (year > 9999, seen in fuzzed files) are written in UTC
    from the calendar fields, since datetime cannot hold them."""
    try:
        return datetime.fromtimestamp(second, tz).strftime("%d/%m/%Y%I:%M:%S")
    except (ValueError, OverflowError, OSError):
        tm = time.gmtime(second)
        hour = tm.tm_hour % 12 or 12
        return f"{tm.tm_mday:02d}/{tm.tm_mon:02d}/{tm.tm_year}{hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"


def finalize(state: bytes, flow, p: FeatureProfile, tz: tzinfo) -> tuple:
    """The 85 feature columns (Flow.ID .. Label) of a finished flow: its state as `finish` shipped it, and the
    NFStream flow it came with (addresses, ports, protocol)."""
    s = _ffi.from_buffer("struct ntds_flow *", state)
    f, b = s.f, s.b
    protocol = flow.protocol
    if p.other_protocols_as_zero and protocol not in (TCP, UDP):
        protocol = 0
    if s.fwd_code == 1:  # the flow keeps the orientation of the flow it continues (after a timeout)
        src_ip, src_port, dst_ip, dst_port = flow.dst_ip, flow.dst_port, flow.src_ip, flow.src_port
    else:
        src_ip, src_port, dst_ip, dst_port = flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port
    n = s.n
    duration = s.last_t  # times are from the first packet's
    total_bytes = f.bytes + b.bytes
    total_sq = f.sq + b.sq
    if p.duplicate_first_length:
        n_len = n + 1
        len_sum = total_bytes + s.first_len
        len_sq = total_sq + s.first_len * s.first_len
        avg_size = len_sum / n
    else:
        n_len, len_sum, len_sq = n, total_bytes, total_sq
        avg_size = total_bytes / n
    len_min = min(f.min, b.min)
    len_max = max(f.max, b.max)
    len_var = _sample_var(n_len, len_sum, len_sq)

    gaps = n - 1
    iat_total = duration
    flow_iat = (iat_total / gaps, _std(gaps, iat_total, s.iat_sq_hi << 64 | s.iat_sq_lo), float(s.iat_max), s.iat_min)

    if p.first_packet_flags_only:
        fin, syn, rst, psh, ack, urg, cwr, ece = list(s.first_flags) if s.tcp else (0,) * 8
    else:
        fin, syn, rst, psh, ack, urg, cwr, ece = s.flags
    if p.permuted_flag_columns:
        flag_cols = (rst, psh, ece, syn, ack, fin, urg, cwr)
    else:
        flag_cols = (fin, syn, rst, psh, ack, urg, cwr, ece)

    if p.bulk_and_subflows:
        bulk = (*_bulk_cols(f), *_bulk_cols(b))
        k = s.subflows
        subflow = (f.n // k, f.bytes // k, b.n // k, b.bytes // k)
    else:
        bulk = (0, 0, 0, 0, 0, 0)
        subflow = (f.n, f.bytes, b.n, b.bytes)

    if s.tcp:
        win_f = f.win_first
        win_b = b.win_last if p.last_backward_window else b.win_first
    else:
        win_f = win_b = -1

    ts = format_timestamp(s.first_ms * 1000, tz)
    return (
        flow_id(src_ip, src_port, dst_ip, dst_port, protocol),
        src_ip,
        src_port,
        dst_ip,
        dst_port,
        protocol,
        ts,
        duration,
        f.n,
        b.n,
        f.bytes,
        float(b.bytes),
        f.max if f.n else 0,
        f.min if f.n else 0,
        _mean(f.bytes, f.n),
        _std(f.n, f.bytes, f.sq),
        b.max if b.n else 0,
        b.min if b.n else 0,
        _mean(b.bytes, b.n),
        _std(b.n, b.bytes, b.sq),
        _rate(total_bytes, duration),
        _rate(n, duration),
        *flow_iat,
        *_iat(f),
        *_iat(b),
        f.psh,
        b.psh,
        f.urg,
        b.urg,
        f.hdr,
        b.hdr,
        f.n / (duration / 1e6) if duration else 0.0,
        b.n / (duration / 1e6) if duration else 0.0,
        len_min,
        len_max,
        len_sum / n_len,
        math.sqrt(len_var),
        len_var,
        *flag_cols,
        b.n // f.n if f.n else 0,
        avg_size,
        _mean(f.bytes, f.n),
        _mean(b.bytes, b.n),
        f.hdr,
        *bulk,
        *subflow,
        win_f,
        win_b,
        f.data_pkts,
        f.min_hdr if f.n else 0,
        *_stats4(s.active),
        *_stats4(s.idle),
        "BENIGN",
    )


def _bulk_cols(d) -> tuple[int, int, int]:
    if not d.bulk_n:
        return 0, 0, 0
    rate = int(d.bulk_bytes / (d.bulk_dur / 1e6)) if d.bulk_dur else 0
    return d.bulk_bytes // d.bulk_n, d.bulk_pkts // d.bulk_n, rate


__all__ = [
    "CicFeatures", "FlowResult", "FlowState", "failed", "finalize", "flow_id", "format_timestamp", "is_state",
    "TIME_PRECISION_US",
]  # fmt: skip
