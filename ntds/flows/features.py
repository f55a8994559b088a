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
import struct
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
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


def _stats4(n: int, total: int, sq_lo: int, lo: int, hi: int, sq_hi: int) -> tuple[float, float, float, float]:
    """Mean, std, max, min of an accumulator (count, sum, sumsq low 64 bits, min, max, sumsq high 64 bits); zeros
    if empty. The squares are 128-bit: in a capture whose clock goes backwards a flow can be idle for hours."""
    if not n:
        return 0.0, 0.0, 0.0, 0.0
    sq = (sq_hi % 2**64) << 64 | (sq_lo % 2**64)
    return total / n, _std(n, total, sq), float(hi), float(lo)


def _iat(n: int, first_t: int, last_t: int, sq_lo: int, sq_hi: int, top: int, least: int) -> tuple[float, ...]:
    """Total, mean, std, max, min of the gaps between packets of one direction (a `struct ntds_direction`)."""
    gaps = n - 1
    if gaps < 1:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    total = last_t - first_t
    return float(total), total / gaps, _std(gaps, total, sq_hi << 64 | sq_lo), float(top), float(least)


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


_FORMATS = {"int64_t": "q", "uint64_t": "Q", "int32_t": "i", "uint32_t": "I", "int8_t": "b", "uint8_t": "B"}


def _flat(ctype, prefix: str = "", base: int = 0) -> Iterator[tuple[str, int, str]]:
    """(name, byte offset, struct format) of every number in a cffi struct type: nested structs as
    `f_n`, arrays as `active_0` ..."""
    for name, field in ctype.fields:
        t, at = field.type, base + field.offset
        if t.kind == "struct":
            yield from _flat(t, f"{prefix}{name}_", at)
        elif t.kind == "array":
            for i in range(t.length):
                yield f"{prefix}{name}_{i}", at + i * _ffi.sizeof(t.item), _FORMATS[t.item.cname]
        else:
            yield prefix + name, at, _FORMATS[t.cname]


def _layout(ctype) -> tuple[struct.Struct, type]:
    """One struct.Struct that unpacks a whole `struct ntds_flow`, and the named tuple its numbers fill: one C
    call and attribute reads on a tuple, where cffi made an object for each nested struct and each field read
    (`finalize` read about a hundred; it took 8 µs a flow)."""
    fmt, names, at = "=", [], 0
    for name, offset, code in _flat(ctype):
        fmt += "x" * (offset - at) + code
        names.append(name)
        at = offset + struct.calcsize("=" + code)
    fmt += "x" * (_ffi.sizeof(ctype) - at)
    return struct.Struct(fmt), namedtuple("FlowNumbers", names)


_STATE, _Numbers = _layout(_ffi.typeof("struct ntds_flow"))


def _run(name: str, length: int) -> slice:
    """Where an array of the struct lies among the named tuple's numbers."""
    first = _Numbers._fields.index(f"{name}_0")
    assert _Numbers._fields[first + length - 1] == f"{name}_{length - 1}"
    return slice(first, first + length)


_FLAGS, _FIRST_FLAGS, _ACTIVE, _IDLE = _run("flags", 8), _run("first_flags", 8), _run("active", 6), _run("idle", 6)


_KINDS = _ffi.string(_lib.ntds_column_kinds).decode()
_ROW = struct.Struct("=" + _KINDS.replace("i", "q").replace("f", "d"))
"""The C code's row of numeric columns: eight bytes each, an int64 or a double as `_KINDS` says."""
_buffers = threading.local()
_profiles: dict[int, tuple[FeatureProfile, object]] = {}
"""Each profile seen, with its switches for the C code."""


def finalize(state: bytes, flow, p: FeatureProfile, tz: tzinfo) -> tuple:
    """The 85 feature columns (Flow.ID .. Label) of a finished flow: its state as `finish` shipped it, and the
    NFStream flow it came with (addresses, ports, protocol).

    The numbers come from C (columns_c.c; the row in 3 µs a flow where Python took 8), which declines any flow whose
    arithmetic it cannot do exactly as Python does; `finalize_exact` does those, and is the reference the
    tests hold the C code to."""
    bufs = getattr(_buffers, "bufs", None)
    if bufs is None:  # per thread: the C call releases the GIL, and each interface has a capture thread
        row = _ffi.new("union ntds_value[]", len(_KINDS))
        bufs = _buffers.bufs = (row, _ffi.buffer(row))
    known = _profiles.get(id(p))
    if known is None:  # by id (hashing a frozen dataclass hashes all its fields), the profile kept alive beside
        known = _profiles[id(p)] = p, _ffi.new("struct ntds_columns_profile *", {
            "duplicate_first_length": p.duplicate_first_length, "first_packet_flags_only": p.first_packet_flags_only,
            "permuted_flag_columns": p.permuted_flag_columns, "bulk_and_subflows": p.bulk_and_subflows,
            "last_backward_window": p.last_backward_window,
        })  # fmt: skip
    switches = known[1]
    s = _ffi.from_buffer("struct ntds_flow *", state)
    row, raw = bufs
    if _lib.ntds_columns(s, switches, row):
        return finalize_exact(state, flow, p, tz)
    return (*_head(s.fwd_code, s.first_ms, flow, p, tz), *_ROW.unpack(raw), "BENIGN")


def _head(fwd_code: int, first_ms: int, flow, p: FeatureProfile, tz: tzinfo) -> tuple:
    """Flow.ID, the two ends, the protocol and the timestamp: the columns before the numbers."""
    protocol = flow.protocol
    if p.other_protocols_as_zero and protocol not in (TCP, UDP):
        protocol = 0
    if fwd_code == 1:  # the flow keeps the orientation of the flow it continues (after a timeout)
        src_ip, src_port, dst_ip, dst_port = flow.dst_ip, flow.dst_port, flow.src_ip, flow.src_port
    else:
        src_ip, src_port, dst_ip, dst_port = flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port
    return (flow_id(src_ip, src_port, dst_ip, dst_port, protocol), src_ip, src_port, dst_ip, dst_port, protocol,
            format_timestamp(first_ms * 1000, tz))  # fmt: skip


def finalize_exact(state: bytes, flow, p: FeatureProfile, tz: tzinfo) -> tuple:
    """`finalize` in Python, on exact integers: the definition of every column (as CICFlowMeter computes it),
    for the flows the C code declines."""
    s = _Numbers._make(_STATE.unpack(state))
    n = s.n
    f_n, f_bytes, b_n, b_bytes = s.f_n, s.f_bytes, s.b_n, s.b_bytes
    duration = s.last_t  # times are from the first packet's
    total_bytes = f_bytes + b_bytes
    total_sq = s.f_sq + s.b_sq
    if p.duplicate_first_length:
        n_len = n + 1
        len_sum = total_bytes + s.first_len
        len_sq = total_sq + s.first_len * s.first_len
        avg_size = len_sum / n
    else:
        n_len, len_sum, len_sq = n, total_bytes, total_sq
        avg_size = total_bytes / n
    len_min = min(s.f_min, s.b_min)
    len_max = max(s.f_max, s.b_max)
    len_var = _sample_var(n_len, len_sum, len_sq)

    gaps = n - 1
    iat_total = duration
    flow_iat = (iat_total / gaps, _std(gaps, iat_total, s.iat_sq_hi << 64 | s.iat_sq_lo), float(s.iat_max), s.iat_min)

    if p.first_packet_flags_only:
        fin, syn, rst, psh, ack, urg, cwr, ece = s[_FIRST_FLAGS] if s.tcp else (0,) * 8
    else:
        fin, syn, rst, psh, ack, urg, cwr, ece = s[_FLAGS]
    if p.permuted_flag_columns:
        flag_cols = (rst, psh, ece, syn, ack, fin, urg, cwr)
    else:
        flag_cols = (fin, syn, rst, psh, ack, urg, cwr, ece)

    if p.bulk_and_subflows:
        bulk = (*_bulk_cols(s.f_bulk_n, s.f_bulk_pkts, s.f_bulk_bytes, s.f_bulk_dur),
                *_bulk_cols(s.b_bulk_n, s.b_bulk_pkts, s.b_bulk_bytes, s.b_bulk_dur))  # fmt: skip
        k = s.subflows
        subflow = (f_n // k, f_bytes // k, b_n // k, b_bytes // k)
    else:
        bulk = (0, 0, 0, 0, 0, 0)
        subflow = (f_n, f_bytes, b_n, b_bytes)

    if s.tcp:
        win_f = s.f_win_first
        win_b = s.b_win_last if p.last_backward_window else s.b_win_first
    else:
        win_f = win_b = -1

    return (
        *_head(s.fwd_code, s.first_ms, flow, p, tz),
        duration,
        f_n,
        b_n,
        f_bytes,
        float(b_bytes),
        s.f_max if f_n else 0,
        s.f_min if f_n else 0,
        _mean(f_bytes, f_n),
        _std(f_n, f_bytes, s.f_sq),
        s.b_max if b_n else 0,
        s.b_min if b_n else 0,
        _mean(b_bytes, b_n),
        _std(b_n, b_bytes, s.b_sq),
        _rate(total_bytes, duration),
        _rate(n, duration),
        *flow_iat,
        *_iat(f_n, s.f_first_t, s.f_last_t, s.f_iat_sq_lo, s.f_iat_sq_hi, s.f_iat_max, s.f_iat_min),
        *_iat(b_n, s.b_first_t, s.b_last_t, s.b_iat_sq_lo, s.b_iat_sq_hi, s.b_iat_max, s.b_iat_min),
        s.f_psh,
        s.b_psh,
        s.f_urg,
        s.b_urg,
        s.f_hdr,
        s.b_hdr,
        f_n / (duration / 1e6) if duration else 0.0,
        b_n / (duration / 1e6) if duration else 0.0,
        len_min,
        len_max,
        len_sum / n_len,
        math.sqrt(len_var),
        len_var,
        *flag_cols,
        b_n // f_n if f_n else 0,
        avg_size,
        _mean(f_bytes, f_n),
        _mean(b_bytes, b_n),
        s.f_hdr,
        *bulk,
        *subflow,
        win_f,
        win_b,
        s.f_data_pkts,
        s.f_min_hdr if f_n else 0,
        *_stats4(*s[_ACTIVE]),
        *_stats4(*s[_IDLE]),
        "BENIGN",
    )


def _bulk_cols(n: int, pkts: int, size: int, duration: int) -> tuple[int, int, int]:
    if not n:
        return 0, 0, 0
    rate = int(size / (duration / 1e6)) if duration else 0
    return size // n, pkts // n, rate


__all__ = [
    "CicFeatures", "FlowResult", "FlowState", "failed", "finalize", "finalize_exact", "flow_id", "format_timestamp",
    "is_state", "TIME_PRECISION_US",
]  # fmt: skip
