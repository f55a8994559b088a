"""The 87 CICFlowMeter features, accumulated per packet inside NFStream's meter processes.

`ntds.flows.engine` calls `start` for a flow's first packet, `add` for every
later one and `finish` once, with NFStream's own engine packet structure (a
cffi struct): no plugin, so NFStream never copies its flow structure into
Python or builds a packet tuple per packet, and the engine keeps doing its own
per-flow statistics in C. All per-flow state here is a handful of running
integers (sums, sums of squares, minima, maxima): no packet lists, so memory
per flow is constant however long the flow lives. Sums of integers are exact,
so standard deviations computed from them at expiry are exact up to the final
float rounding.

Definitions follow spec/flow-features.md sections 2-4; the profile object
switches between the dataset's bugs and the corrected values.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from ipaddress import ip_address
from operator import attrgetter

from ntds.flows.clock import TIME_PRECISION_US, engine_ms
from ntds.flows.profiles import (
    ACTIVITY_TIMEOUT_US,
    BULK_GAP_US,
    BULK_MIN_PACKETS,
    SUBFLOW_GAP_US,
    FeatureProfile,
)

TCP, UDP = 6, 17
_BIG = 1 << 62

# Reasons a flow ended, for the `flow_end_reason` extra field.
END_FIN = "fin"
END_RST = "rst"
END_CLOSED = "closed"
END_ACTIVE = "active-timeout"
END_IDLE = "idle-timeout"
END_CAPTURE = "end-of-capture"
END_EVICTED = "evicted"

ORIENTATION_MEMORY = 65536
"""How many 5-tuples whose flow ended by timeout each meter remembers, so that a
flow continuing after the timeout keeps its orientation (unicauca profile). The
oldest entry is forgotten first; a flow beyond this horizon starts in its own
packet's direction."""


class _Direction:
    """Running statistics of one direction of a flow."""

    __slots__ = (
        "n",
        "bytes",
        "sq",
        "min",
        "max",
        "hdr",
        "min_hdr",
        "first_t",
        "last_t",
        "iat_sq",
        "iat_min",
        "iat_max",
        "data_pkts",
        "psh",
        "urg",
        "win_first",
        "win_last",
        # bulk candidate and totals (corrected profile)
        "cand_n",
        "cand_bytes",
        "cand_start",
        "cand_last",
        "bulk_n",
        "bulk_pkts",
        "bulk_bytes",
        "bulk_dur",
    )

    def __init__(self) -> None:
        self.n = self.bytes = self.sq = self.max = self.hdr = 0
        self.min = self.min_hdr = _BIG
        self.first_t = self.last_t = 0
        self.iat_sq = self.iat_max = 0
        self.iat_min = _BIG
        self.data_pkts = self.psh = self.urg = 0
        self.win_first = self.win_last = -1
        self.cand_n = self.cand_bytes = self.cand_start = self.cand_last = 0
        self.bulk_n = self.bulk_pkts = self.bulk_bytes = self.bulk_dur = 0

    def __reduce__(self):
        # A finished flow's state travels from its meter to the sensor: a flat tuple pickles fast.
        return _rebuild, (_Direction, _DIRECTION_VALUES(self))


def _rebuild(cls, values: tuple):
    obj = cls.__new__(cls)
    for k, v in zip(cls.__slots__, values):
        setattr(obj, k, v)
    return obj


class _FlowState:
    """Everything the meter remembers about one flow between packets."""

    def __reduce__(self):
        return _rebuild, (_FlowState, _STATE_VALUES(self))

    __slots__ = (
        "fwd_code",
        "tcp",
        "l4",
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        "first_t",
        "last_t",
        "n",
        "iat_sq",
        "iat_min",
        "iat_max",
        "first_len",
        "first_flags",
        "first_fwd",
        "start_active",
        "end_active",
        "active",
        "idle",
        "f",
        "b",
        "flags",
        "subflows",
        "fin_f",
        "fin_b",
        "last_fin_fwd",
        "end",
        "opens",
        "evicted",
        "payload",
        "rst",
    )


_DIRECTION_VALUES = attrgetter(*_Direction.__slots__)
_STATE_VALUES = attrgetter(*_FlowState.__slots__)


def _window(packet, transport_size: int) -> int:
    """Raw TCP window field, read from the captured IP bytes (-1 when not captured)."""
    off = packet.ip_size - transport_size + 14
    if packet.ip_content_len >= off + 2:
        content = packet.ip_content
        return (content[off] << 8) | content[off + 1]
    return -1


FlowResult = tuple
"""What a finished flow carries back to the sensor on NFStream's `udps` slot: (state or None, end reason,
opens, error, payload bytes, reset seen). The state (None for a single-packet flow) becomes the 85 columns
in the sensor's process (`finalize`), so the meter spends its time on packets, not on arithmetic a second
core can do; payload and reset are what the host-level detectors need of every flow."""


def failed(error: Exception, end: str = "", opens: bool = True) -> FlowResult:
    return (None, end, opens, f"{type(error).__name__}: {error}", 0, False)


class CicFeatures:
    """Accumulates the 87 Unicauca/CICFlowMeter columns per flow from the engine's packets.

    `finish` returns the state `finalize` turns into the row (a tuple in
    `ntds.flows.columns.COLUMNS` order, with the last two label columns left for the
    caller); flows of a single packet get no row, as CICFlowMeter never writes them.
    """

    def __init__(self, profile: FeatureProfile, tz: tzinfo = UTC, idle_timeout_ms: int = 120_000) -> None:
        self.profile = profile
        self.tz = tz
        self.idle_timeout_ms = idle_timeout_ms
        self._orientation: dict[int, int] = {}
        self._now_ms = 0
        self._add = _adder(profile)
        self.add = _stepper(self, profile)
        """add(state, packet) -> bool: a later packet (the engine has set its direction); True when the flow
        ends with it (the FIN rule)."""

    def start(self, packet, flow) -> _FlowState:
        """The flow's first packet (flow: the NFlow the engine just made from it)."""
        p = self.profile
        s = _FlowState()
        protocol = flow.protocol
        s.tcp = protocol == TCP
        s.l4 = s.tcp or protocol == UDP
        s.src_ip, s.src_port, s.dst_ip, s.dst_port = flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port
        # Forward is decided on the source IP only (spec 2): a flow between two sockets
        # of one host is all forward. fwd_code is the NFStream direction that counts as
        # forward, or -1 for "every packet".
        s.fwd_code = -1 if s.src_ip == s.dst_ip else 0
        if p.keep_orientation_after_timeout and self._orientation:
            before = self._orientation.pop(_tuple_key(flow), None)
            if before is not None and before != hash((s.src_ip, s.src_port)) and s.fwd_code == 0:
                s.fwd_code = 1
                s.src_ip, s.src_port, s.dst_ip, s.dst_port = s.dst_ip, s.dst_port, s.src_ip, s.src_port
        ms = engine_ms(packet.time)
        t = ms * 1000
        s.first_t = s.last_t = s.start_active = s.end_active = t
        s.n = 0
        s.iat_sq = s.iat_max = 0
        s.iat_min = _BIG
        s.active = [0, 0, 0, _BIG, 0]  # count, sum, sum of squares, min, max
        s.idle = [0, 0, 0, _BIG, 0]
        s.f = _Direction()
        s.b = _Direction()
        s.flags = [0] * 8  # FIN, SYN, RST, PSH, ACK, URG, CWR, ECE packet counts
        s.subflows = 1
        s.fin_f = s.fin_b = s.last_fin_fwd = False
        s.end = ""
        s.evicted = False
        s.payload = 0
        s.rst = False
        syn, ack = packet.syn, packet.ack
        s.first_flags = (packet.fin, syn, packet.rst, packet.psh, ack, packet.urg, packet.cwr, packet.ece)
        s.first_fwd = s.fwd_code != 1
        if packet.fin:
            _fin(s, s.first_fwd)
        # Does this flow start a conversation (for "unanswered" in the summaries)? A TCP
        # flow only if it begins with a bare SYN: FIN/ACK leftovers of a split flow do not.
        s.opens = not s.tcp or (bool(syn) and not ack)
        s.first_len = self._add(s, packet, t, s.first_fwd, True)
        self._now_ms = ms
        return s

    def finish(self, s: _FlowState, flow) -> FlowResult:
        """The flow has ended (the engine synced its final values into `flow`)."""
        if not s.end:
            if s.evicted:
                s.end = END_EVICTED
            elif flow.expiration_id == 1:
                s.end = END_ACTIVE
            elif self._now_ms - engine_ms(flow.bidirectional_last_seen_ms) >= self.idle_timeout_ms:
                s.end = END_IDLE
            else:
                s.end = END_CAPTURE
        if self.profile.keep_orientation_after_timeout:
            key = _tuple_key(flow)
            if s.end in (END_FIN, END_RST, END_CLOSED):
                self._orientation.pop(key, None)
            else:
                memory = self._orientation
                memory.pop(key, None)
                memory[key] = hash((s.src_ip, s.src_port))
                if len(memory) > ORIENTATION_MEMORY:
                    del memory[next(iter(memory))]
        return (s if s.n >= 2 else None, s.end, s.opens, "", s.payload, s.rst)


def _stepper(features: CicFeatures, p: FeatureProfile):
    """The per-packet step for one profile (the FIN rule, Active/Idle, then the accumulator), as one closure:
    the meter calls it for every packet after the first."""
    close_on_first_fin = p.close_on_first_fin
    accumulate = features._add

    def add(s: _FlowState, packet) -> bool:
        ms = packet.time
        if ms >= _WRAPPED:
            ms = engine_ms(ms)
        features._now_ms = ms
        t = ms * 1000
        code = s.fwd_code
        fwd = code < 0 or packet.direction == code
        if close_on_first_fin:
            if packet.fin:
                # Java-2017: the FIN packet is added, then the flow is written (no
                # Active/Idle update for it); the next packet opens an appendix flow.
                accumulate(s, packet, t, fwd, False)
                s.end = END_FIN
                return True
        else:
            # RST ends the flow; so does the ACK that answers the last FIN once both sides sent one.
            rst = packet.rst
            closing = rst or (s.fin_f and s.fin_b and packet.ack and fwd != s.last_fin_fwd)
            if packet.fin:
                _fin(s, fwd)
            if closing:
                _activity(s, t)
                accumulate(s, packet, t, fwd, False)
                s.end = END_RST if rst else END_CLOSED
                return True
        # Active/Idle bookkeeping of spec 3.3 (inline: the hot path)
        if t - s.end_active > ACTIVITY_TIMEOUT_US:
            _activity(s, t)
        else:
            s.end_active = t
        accumulate(s, packet, t, fwd, False)
        return False

    return add


def _adder(p: FeatureProfile):
    """The per-packet accumulator for one profile: its switches are constants of the closure, so the hot
    path reads no profile attribute per packet."""
    padding = p.count_ethernet_padding
    last_bwd_window = p.last_backward_window
    first_flags_only = p.first_packet_flags_only
    bulk = p.bulk_and_subflows

    def add(s: _FlowState, packet, t: int, fwd: bool, first: bool) -> int:
        """Add one packet to the running statistics; returns its length L."""
        transport = packet.transport_size
        if transport and s.l4:  # 0: header not parseable (too short), NFStream gives no ports or flags
            length = packet.payload_size
            s.payload += length
            header = transport - length
            if padding:
                trailer = packet.ip_content_len - packet.ip_size
                if trailer > 0:
                    length += trailer
        else:
            header = length = 0
        d = s.f if fwd else s.b
        if not first:
            gap = t - s.last_t
            s.iat_sq += gap * gap
            if gap < s.iat_min:
                s.iat_min = gap
            if gap > s.iat_max:
                s.iat_max = gap
            if gap > SUBFLOW_GAP_US:
                s.subflows += 1
        s.last_t = t
        s.n += 1
        dn = d.n
        if dn:
            gap = t - d.last_t
            d.iat_sq += gap * gap
            if gap < d.iat_min:
                d.iat_min = gap
            if gap > d.iat_max:
                d.iat_max = gap
            if length and not first:
                d.data_pkts += 1
        else:
            d.first_t = t
            if length and not first and fwd:
                d.data_pkts += 1
        d.last_t = t
        d.n = dn + 1
        if length:
            d.bytes += length
            d.sq += length * length
            if length > d.max:
                d.max = length
        if length < d.min:
            d.min = length
        d.hdr += header
        if header < d.min_hdr:
            d.min_hdr = header
        if s.tcp:
            if packet.rst:
                s.rst = True
            if first:  # spec 3, column 73: W_1, the flow's first packet, whatever its direction
                s.f.win_first = _window(packet, transport) if transport else -1
            if last_bwd_window and not fwd:
                d.win_last = _window(packet, transport) if transport else -1
            elif not dn and not fwd:
                d.win_first = _window(packet, transport) if transport else -1
            if not first_flags_only:
                flags = s.flags
                fin, syn, rst, psh = packet.fin, packet.syn, packet.rst, packet.psh
                ack, urg, cwr, ece = packet.ack, packet.urg, packet.cwr, packet.ece
                flags[0] += fin
                flags[1] += syn
                flags[2] += rst
                flags[3] += psh
                flags[4] += ack
                flags[5] += urg
                flags[6] += cwr
                flags[7] += ece
                d.psh += psh
                d.urg += urg
            elif first:  # spec 3, columns 37-40: the first packet's PSH/URG, counted forward; Bwd stays 0
                s.f.psh = packet.psh
                s.f.urg = packet.urg
        if bulk and length:
            _bulk(d, s.b if fwd else s.f, t, length)
        return length

    return add


def _fin(s: _FlowState, fwd: bool) -> None:
    if fwd:
        s.fin_f = True
    else:
        s.fin_b = True
    s.last_fin_fwd = fwd


def _activity(s: _FlowState, t: int) -> None:
    """Active/Idle bookkeeping of spec 3.3 (not for the packet that closes a flow)."""
    if t - s.end_active > ACTIVITY_TIMEOUT_US:
        span = s.end_active - s.start_active
        if span > 0:
            _accumulate(s.active, span)
        _accumulate(s.idle, t - s.end_active)
        s.start_active = s.end_active = t
    else:
        s.end_active = t


_WRAPPED = 1 << 63


def _accumulate(acc: list, value: int) -> None:
    """Add a value to an accumulator [count, sum, sum of squares, min, max]."""
    acc[0] += 1
    acc[1] += value
    acc[2] += value * value
    if value < acc[3]:
        acc[3] = value
    if value > acc[4]:
        acc[4] = value


def _bulk(d: _Direction, other: _Direction, t: int, length: int) -> None:
    """Bulk state machine of spec 3.1 for one payload packet of direction d."""
    other.cand_n = 0
    if d.cand_n == 0 or t - d.cand_last > BULK_GAP_US:
        d.cand_n = 1
        d.cand_bytes = length
        d.cand_start = d.cand_last = t
        return
    d.cand_n += 1
    d.cand_bytes += length
    if d.cand_n == BULK_MIN_PACKETS:
        d.bulk_n += 1
        d.bulk_pkts += BULK_MIN_PACKETS
        d.bulk_bytes += d.cand_bytes
        d.bulk_dur += t - d.cand_start
    elif d.cand_n > BULK_MIN_PACKETS:
        d.bulk_pkts += 1
        d.bulk_bytes += length
        d.bulk_dur += t - d.cand_last
    d.cand_last = t


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
    """Mean, std, max, min of an accumulator [count, sum, sumsq, min, max]; zeros if empty."""
    n, total, sq, lo, hi = acc
    if not n:
        return 0.0, 0.0, 0.0, 0.0
    return total / n, _std(n, total, sq), float(hi), float(lo)


def _iat(d: _Direction) -> tuple[float, float, float, float, float]:
    """Total, mean, std, max, min of the gaps between packets of one direction."""
    gaps = d.n - 1
    if gaps < 1:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    total = d.last_t - d.first_t
    return float(total), total / gaps, _std(gaps, total, d.iat_sq), float(d.iat_max), float(d.iat_min)


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


def finalize(s: _FlowState, p: FeatureProfile, nfs_protocol: int, tz: tzinfo) -> tuple:
    """The 85 feature columns (Flow.ID .. Label) of a finished flow."""
    f, b = s.f, s.b
    protocol = nfs_protocol
    if p.other_protocols_as_zero and protocol not in (TCP, UDP):
        protocol = 0
    n = s.n
    duration = s.last_t - s.first_t
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
    flow_iat = (iat_total / gaps, _std(gaps, iat_total, s.iat_sq), float(s.iat_max), s.iat_min)

    if p.first_packet_flags_only:
        fin, syn, rst, psh, ack, urg, cwr, ece = s.first_flags if s.tcp else (0,) * 8
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

    ts = format_timestamp(s.first_t, tz)
    return (
        flow_id(s.src_ip, s.src_port, s.dst_ip, s.dst_port, protocol),
        s.src_ip,
        s.src_port,
        s.dst_ip,
        s.dst_port,
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


def _bulk_cols(d: _Direction) -> tuple[int, int, int]:
    if not d.bulk_n:
        return 0, 0, 0
    rate = int(d.bulk_bytes / (d.bulk_dur / 1e6)) if d.bulk_dur else 0
    return d.bulk_bytes // d.bulk_n, d.bulk_pkts // d.bulk_n, rate


__all__ = ["CicFeatures", "FlowResult", "failed", "finalize", "flow_id", "format_timestamp", "TIME_PRECISION_US"]
