"""The 87 CICFlowMeter features as an NFStream plugin.

NFStream calls `on_init` for a flow's first packet, `on_update` for every later
one and `on_expire` once. All per-flow state is a handful of running integers in
`flow.udps.cic` (sums, sums of squares, minima, maxima): no packet lists, so
memory per flow is constant however long the flow lives. Sums of integers are
exact, so standard deviations computed from them at expiry are exact up to the
final float rounding.

Definitions follow spec/flow-features.md sections 2-4; the profile object
switches between the dataset's bugs and the corrected values.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from ipaddress import ip_address

from nfstream import NFPlugin

from ntds.flows.clock import TIME_PRECISION_US, packet_time_us
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


class _FlowState:
    """Everything the plugin remembers about one flow between packets."""

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
    )


def _window(ip: bytes, ip_size: int, transport_size: int) -> int:
    """Raw TCP window field, read from the captured bytes (-1 when not captured)."""
    off = ip_size - transport_size + 14
    if len(ip) >= off + 2:
        return (ip[off] << 8) | ip[off + 1]
    return -1


class CicFeatures(NFPlugin):
    """NFStream plugin computing the 87 Unicauca/CICFlowMeter columns per flow.

    The finished row (a tuple in `ntds.flows.columns.COLUMNS` order, with the last
    two label columns left for the parent process) is left in `flow.udps.cic`;
    flows of a single packet leave None, as CICFlowMeter never writes them.
    """

    def __init__(self, profile: FeatureProfile, tz: tzinfo = UTC, idle_timeout_ms: int = 120_000) -> None:
        super().__init__()
        self.profile = profile
        self.tz = tz
        self.idle_timeout_ms = idle_timeout_ms
        self._orientation: dict[int, int] = {}
        self._now_ms = 0

    # -- NFStream entry points -------------------------------------------------------

    def on_init(self, packet, flow) -> None:
        try:
            self._init(packet, flow)
        except Exception as e:  # a plugin exception would kill the NFStream meter process
            flow.udps.cic_error = f"{type(e).__name__}: {e}"

    def on_update(self, packet, flow) -> None:
        try:
            self._update(packet, flow)
        except Exception as e:
            flow.udps.cic_error = f"{type(e).__name__}: {e}"

    def on_expire(self, flow) -> None:
        try:
            self._expire(flow)
        except Exception as e:
            flow.udps.cic_error = f"{type(e).__name__}: {e}"
        if getattr(flow.udps, "cic_error", None):
            flow.udps.cic = None

    def _init(self, packet, flow) -> None:
        p = self.profile
        s = _FlowState()
        s.tcp = packet.protocol == TCP
        s.l4 = s.tcp or packet.protocol == UDP
        s.src_ip, s.src_port, s.dst_ip, s.dst_port = packet.src_ip, packet.src_port, packet.dst_ip, packet.dst_port
        # Forward is decided on the source IP only (spec 2): a flow between two sockets
        # of one host is all forward. fwd_code is the NFStream direction that counts as
        # forward, or -1 for "every packet".
        s.fwd_code = -1 if packet.src_ip == packet.dst_ip else 0
        if p.keep_orientation_after_timeout and self._orientation:
            before = self._orientation.pop(_tuple_key(flow), None)
            if before is not None and before != hash((packet.src_ip, packet.src_port)) and s.fwd_code == 0:
                s.fwd_code = 1
                s.src_ip, s.src_port, s.dst_ip, s.dst_port = (
                    packet.dst_ip,
                    packet.dst_port,
                    packet.src_ip,
                    packet.src_port,
                )
        t = packet_time_us(packet)
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
        s.first_flags = (
            packet.fin,
            packet.syn,
            packet.rst,
            packet.psh,
            packet.ack,
            packet.urg,
            packet.cwr,
            packet.ece,
        )
        s.first_fwd = s.fwd_code != 1
        if packet.fin:
            self._fin(s, s.first_fwd)
        flow.udps.cic = s
        # Does this flow start a conversation (for "unanswered" in the summaries)? A TCP
        # flow only if it begins with a bare SYN: FIN/ACK leftovers of a split flow do not.
        flow.udps.cic_opens = not s.tcp or (packet.syn and not packet.ack)
        length = self._add(s, packet, t, s.first_fwd, True)
        s.first_len = length
        self._now_ms = packet.time

    def _update(self, packet, flow) -> None:
        s = flow.udps.cic
        t = packet_time_us(packet)
        self._now_ms = packet.time
        code = s.fwd_code
        fwd = code < 0 or packet.direction == code
        p = self.profile
        if p.close_on_first_fin:
            if packet.fin:
                # Java-2017: the FIN packet is added, then the flow is written (no
                # Active/Idle update for it); the next packet opens an appendix flow.
                self._add(s, packet, t, fwd, False)
                s.end = END_FIN
                flow.expiration_id = -1
                return
        else:
            # RST ends the flow; so does the ACK that answers the last FIN once both sides sent one.
            closing = packet.rst or (s.fin_f and s.fin_b and packet.ack and fwd != s.last_fin_fwd)
            if packet.fin:
                self._fin(s, fwd)
            if closing:
                self._activity(s, t)
                self._add(s, packet, t, fwd, False)
                s.end = END_RST if packet.rst else END_CLOSED
                flow.expiration_id = -1
                return
        self._activity(s, t)
        self._add(s, packet, t, fwd, False)

    def _expire(self, flow) -> None:
        s: _FlowState = flow.udps.cic
        if not s.end:
            if getattr(flow.udps, "evicted", False):
                s.end = END_EVICTED
            elif flow.expiration_id == 1:
                s.end = END_ACTIVE
            elif self._now_ms - flow.bidirectional_last_seen_ms >= self.idle_timeout_ms:
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
        if s.n < 2:
            flow.udps.cic = None
            return
        flow.udps.cic = finalize(s, self.profile, flow.protocol, self.tz)
        flow.udps.cic_end = s.end

    # -- per-packet work (the hot path) ----------------------------------------------

    @staticmethod
    def _fin(s: _FlowState, fwd: bool) -> None:
        if fwd:
            s.fin_f = True
        else:
            s.fin_b = True
        s.last_fin_fwd = fwd

    @staticmethod
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

    def _add(self, s: _FlowState, packet, t: int, fwd: bool, first: bool) -> int:
        """Add one packet to the running statistics; returns its length L."""
        p = self.profile
        transport = packet.transport_size
        if s.l4 and transport:  # 0: header not parseable (too short), NFStream gives no ports or flags
            payload = packet.payload_size
            header = transport - payload
            length = payload
            if p.count_ethernet_padding:
                ip = packet.ip_packet
                trailer = len(ip) - packet.ip_size
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
        if d.n:
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
        d.n += 1
        d.bytes += length
        d.sq += length * length
        if length < d.min:
            d.min = length
        if length > d.max:
            d.max = length
        d.hdr += header
        if header < d.min_hdr:
            d.min_hdr = header
        if s.tcp:
            win = _window(packet.ip_packet, packet.ip_size, transport) if transport else -1
            if p.last_backward_window and not fwd:
                d.win_last = win
            elif d.n == 1:
                d.win_first = win
            if not p.first_packet_flags_only:
                flags = s.flags
                flags[0] += packet.fin
                flags[1] += packet.syn
                flags[2] += packet.rst
                flags[3] += packet.psh
                flags[4] += packet.ack
                flags[5] += packet.urg
                flags[6] += packet.cwr
                flags[7] += packet.ece
                d.psh += packet.psh
                d.urg += packet.urg
            elif first:
                d.psh = packet.psh
                d.urg = packet.urg
        if p.bulk_and_subflows and length:
            _bulk(d, s.b if fwd else s.f, t, length)
        return length


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


__all__ = ["CicFeatures", "finalize", "flow_id", "format_timestamp", "TIME_PRECISION_US"]
