"""A slow, literal reference implementation of spec/flow-features.md, for tests only.

It shares nothing with `sensor/` but the column list and never imports NFStream:
its own capture readers (integer microsecond timestamps straight from the record
headers), dpkt for protocol headers, whole packet lists per flow, and each
column computed from its definition in the spec, one at a time.

Which packets are metered follows the acceptance rules written down in
docs/features.md (they are NFStream's: what reaches the meter at all), so that
both sides look at the same packets.
"""

from __future__ import annotations

import socket
import statistics
import struct
import time
from dataclasses import dataclass, field

import dpkt

from ntds.flows.columns import COLUMNS

FLOW_TIMEOUT = 120_000_000
ACTIVITY_TIMEOUT = 5_000_000


# ---------------------------------------------------------------------------------------
# Capture readers: (timestamp in µs, captured bytes, link type)


def read_capture(path):
    with open(path, "rb") as fh:
        data = fh.read()
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        yield from _read_pcapng(data)
    else:
        yield from _read_pcap(data)


def _read_pcap(data: bytes):
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    link = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        if caplen > 262144 or off + 16 + caplen > len(data):
            return
        usec = frac // 1000 if nano else frac
        yield sec * 1_000_000 + usec, data[off + 16 : off + 16 + caplen], link
        off += 16 + caplen


def _read_pcapng(data: bytes):
    off = 0
    endian = "<"
    links: list[tuple[int, int]] = []  # (link type, ticks per second)
    while off + 12 <= len(data):
        if data[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            endian = "<" if data[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            links = []
        btype, blen = struct.unpack(endian + "II", data[off : off + 8])
        if blen < 12 or off + blen > len(data):
            return
        body = data[off + 8 : off + blen - 4]
        if btype == 1:
            link = struct.unpack(endian + "H", body[:2])[0]
            resolution = 1_000_000
            opt = 8
            while opt + 4 <= len(body):
                code, olen = struct.unpack(endian + "HH", body[opt : opt + 4])
                if code == 0:
                    break
                if code == 9 and olen >= 1:
                    r = body[opt + 4]
                    resolution = 2 ** (r & 0x7F) if r & 0x80 else 10 ** (r & 0x7F)
                opt += 4 + ((olen + 3) // 4) * 4
            links.append((link, resolution))
        elif btype == 6:
            iface, hi, lo, caplen = struct.unpack(endian + "IIII", body[:16])
            link, resolution = links[iface]
            ticks = (hi << 32) | lo
            t_us = ticks * 1_000_000 // resolution
            yield t_us, body[20 : 20 + caplen], link
        elif btype == 3:
            link, _ = links[0]
            (orig,) = struct.unpack(endian + "I", body[:4])
            # simple packet blocks carry no timestamp; libpcap reports 0
            yield 0, body[4 : 4 + min(orig, len(body) - 4)], link
        off += blen


# ---------------------------------------------------------------------------------------
# Packet acceptance and decoding


@dataclass
class Pkt:
    t: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int
    vlan: int
    length_padded: int  # L with Ethernet trailer bytes
    length: int  # L without them
    header: int  # H
    flags: dict
    window: int
    clock: int = 0  # the meter's clock: t, or the latest time seen before it if t goes backwards


def _ip_offset(frame: bytes, link: int):
    """(offset of the IP header, ethertype, vlan) or None when the frame is not metered.

    As documented in docs/features.md, the ethertype does not decide whether a frame
    is IP (the version nibble does); it only decides whether IPv4 fragment offsets
    are looked at (ethertype 0x0800)."""
    vlan = 0
    if link == 1:
        etype = struct.unpack("!H", frame[12:14])[0]
        off = 14
        if 0 < etype <= 1500:
            dsap, ssap = frame[14], frame[15]
            if dsap == 0xAA or ssap == 0xAA:
                etype = struct.unpack("<H", frame[20:22])[0]  # read unswapped, as the engine does
                off += 8
            elif dsap == 0x42 or ssap == 0x42:
                return None  # spanning tree
        while True:
            if etype == 0x8100:
                if off + 4 >= len(frame):
                    return None
                vlan = struct.unpack("!H", frame[off : off + 2])[0] & 0xFFF
                etype = struct.unpack("!H", frame[off + 2 : off + 4])[0]
                off += 4
            elif etype in (0x8847, 0x8848):
                if off + 4 >= len(frame):
                    return None
                label = struct.unpack("!I", frame[off : off + 4])[0]
                off += 4
                while not label & 0x100 and off + 4 < len(frame):
                    label = struct.unpack("!I", frame[off : off + 4])[0]
                    off += 4
                etype = 0x0800
            elif etype == 0x8864:
                off += 8
                etype = 0x0800
            else:
                break
        return off, etype, vlan
    if link == 113:
        return 16, struct.unpack("!H", frame[14:16])[0], 0
    if link in (12, 101):
        version = frame[0] >> 4
        return 0, {4: 0x0800, 6: 0x86DD}.get(version, 0), 0
    if link == 228:
        return 0, 0x0800, 0
    if link == 229:
        return 0, 0x86DD, 0
    if link == 0:
        return 4, 0x0800 if struct.unpack("!I", frame[0:4])[0] == 2 else 0x86DD, 0
    if link == 50:
        return 4, struct.unpack("!H", frame[2:4])[0], 0
    if link in (9, 104):
        if frame[0] in (0x0F, 0x8F):
            return 4, struct.unpack("!H", frame[2:4])[0], 0
        return 2, struct.unpack("!H", frame[0:2])[0], 0
    return None


FABRICPATH = b"\x89\x03"


def _length_fill_offset(frame: bytes, link: int) -> int | None:
    """Where an IPv4 total length of 0 is taken from the frame (docs/features.md): the offset of an IPv4
    header right after the link header, or None. Ethernet: after any 802.1Q/802.1ad tags, EtherType 0x0800;
    Linux cooked: protocol 0x0800; raw IP: at 0; NULL: family 2 (read big-endian, as NFStream reads it);
    PPP and Cisco HDLC: protocol 0x0800 or 0x0021."""
    if link == 1:
        etype, off = struct.unpack("!H", frame[12:14])[0], 14
        while etype in (0x8100, 0x88A8) and off + 4 <= len(frame):
            etype = struct.unpack("!H", frame[off + 2 : off + 4])[0]
            off += 4
        return off if etype == 0x0800 else None
    if link == 113:
        return 16 if frame[14:16] == b"\x08\x00" else None
    if link in (12, 101, 228):
        return 0
    if link == 0:
        return 4 if frame[:4] == b"\x00\x00\x00\x02" else None
    if link in (9, 50, 104):
        if link == 50 or frame[0] in (0x0F, 0x8F):
            off, etype = 4, struct.unpack("!H", frame[2:4])[0]
        else:
            off, etype = 2, struct.unpack("!H", frame[0:2])[0]
        return off if etype in (0x0800, 0x0021) else None
    return None


def decode(t: int, frame: bytes, link: int) -> Pkt | None:
    if link == 1 and frame[12:14] == FABRICPATH:
        # Cisco FabricPath (docs/features.md): 6 + 6 bytes of outer MAC, 0x8903, 2 bytes of FTag/TTL, then
        # the inner Ethernet frame, which is what is metered; none (or another FabricPath one): skipped.
        frame = frame[16:]
        if len(frame) < 14 or frame[12:14] == FABRICPATH:
            return None
    if len(frame) < 28:
        return None
    located = _ip_offset(frame, link)
    if located is None:
        return None
    off, etype, vlan = located
    fill_at = _length_fill_offset(frame, link)
    while True:
        if len(frame) < off + 20:
            return None
        version = frame[off] >> 4
        if version == 4:
            ihl = (frame[off] & 0x0F) * 4
            proto = frame[off + 9]
            if proto in (4, 41):
                if ihl == 0:
                    return None
                off += ihl
                fill_at = None  # only the outermost header's length is ever filled in
                continue
            if etype == 0x0800 and struct.unpack("!H", frame[off + 6 : off + 8])[0] & 0x1FFF:
                return None  # non-first fragment
            ipsize = len(frame) - off
            if ihl > ipsize:
                return None
            total = struct.unpack("!H", frame[off + 2 : off + 4])[0]
            if total == 0 and off == fill_at and ihl >= 20:
                total = min(ipsize, 65535)  # segmentation offload: counted by the captured length
            if total < ihl:
                return None
            src, dst = frame[off + 12 : off + 16], frame[off + 16 : off + 20]
            l4_off, l4_len = ihl, total - ihl
            break
        if version == 6:
            if len(frame) < off + 40:
                return None
            plen = struct.unpack("!H", frame[off + 4 : off + 6])[0]
            if len(frame) < off + 40 + plen:
                return None
            nxt = frame[off + 6]
            pos = off + 40
            remaining = plen
            while nxt in (0, 43, 60, 44, 59):
                if nxt == 59 or remaining < 8:
                    return None
                if nxt == 44:
                    if struct.unpack("!H", frame[pos + 2 : pos + 4])[0] >> 3:
                        return None
                    hlen = 8
                else:
                    hlen = (frame[pos + 1] + 1) * 8
                if hlen > remaining:
                    return None
                nxt = frame[pos]
                pos += hlen
                remaining -= hlen
            if nxt in (4, 41):
                off = pos
                fill_at = None
                continue
            proto = nxt
            src, dst = frame[off + 8 : off + 24], frame[off + 24 : off + 40]
            total = 40 + plen
            l4_off, l4_len = pos - off, remaining
            break
        return None
    ipbytes = frame[off:]
    trailer = max(0, len(ipbytes) - total)
    l4 = ipbytes[l4_off:]
    sport = dport = 0
    header = payload = 0
    flags = dict.fromkeys(("fin", "syn", "rst", "psh", "ack", "urg", "cwr", "ece"), 0)
    window = -1
    if proto == 6 and l4_len >= 20:
        tcp = dpkt.tcp.TCP(bytes(l4[:20]) + b"\0" * max(0, 20 - len(l4)))
        sport, dport = tcp.sport, tcp.dport
        header = min(tcp.off * 4, l4_len)
        payload = max(0, l4_len - tcp.off * 4)
        f = tcp.flags
        flags = {
            "fin": int(bool(f & dpkt.tcp.TH_FIN)),
            "syn": int(bool(f & dpkt.tcp.TH_SYN)),
            "rst": int(bool(f & dpkt.tcp.TH_RST)),
            "psh": int(bool(f & dpkt.tcp.TH_PUSH)),
            "ack": int(bool(f & dpkt.tcp.TH_ACK)),
            "urg": int(bool(f & dpkt.tcp.TH_URG)),
            "cwr": int(bool(f & dpkt.tcp.TH_CWR)),
            "ece": int(bool(f & dpkt.tcp.TH_ECE)),
        }
        window = tcp.win if len(l4) >= 16 else -1
    elif proto == 17 and l4_len >= 8:
        udp = dpkt.udp.UDP(bytes(l4[:8]) + b"\0" * max(0, 8 - len(l4)))
        sport, dport = udp.sport, udp.dport
        header, payload = 8, l4_len - 8
    l4_known = (proto == 6 and l4_len >= 20) or (proto == 17 and l4_len >= 8)
    if not l4_known:
        header = payload = 0
    return Pkt(
        t=t,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        proto=proto,
        vlan=vlan,
        length_padded=payload + trailer if l4_known else 0,
        length=payload,
        header=header,
        flags=flags,
        window=window,
    )


# ---------------------------------------------------------------------------------------
# Flows


def ip_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def java_order_first(a: bytes, b: bytes) -> bool:
    """True when a sorts before (or equals) b comparing octets as signed Java bytes."""
    for x, y in zip(a, b):
        sx = x - 256 if x > 127 else x
        sy = y - 256 if y > 127 else y
        if sx != sy:
            return sx < sy
    return True


@dataclass
class Flow:
    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int  # as written in the row
    packets: list = field(default_factory=list)
    forward: list = field(default_factory=list)  # bool per packet
    activity: list = field(default_factory=list)  # packets that went through Active/Idle
    closed_by: str = ""
    boundary: bool = False  # a packet came exactly FLOW_TIMEOUT after the start

    def known_deviation(self) -> str:
        """Why NFStream cannot agree with the spec on this flow by construction, or ''."""
        if len({q.vlan for q in self.packets}) > 1:
            return "packets on several VLANs: NFStream keeps the VLAN id in its flow key"
        if len({q.proto for q in self.packets}) > 1:
            return "several IP protocols written as Protocol 0 share one CICFlowMeter flow"
        if self.boundary:
            return "a packet exactly 120 s after the start: NFStream splits at >=, CICFlowMeter at >"
        return ""


def flow_key(p: Pkt, proto: int) -> tuple:
    """CICFlowMeter finds a packet's flow under its forward or its backward id, so the key
    is the unordered pair of ends (which also joins the two directions of a same-host flow)."""
    a, b = (p.src, p.sport), (p.dst, p.dport)
    return (min(a, b), max(a, b), proto)


class ReferenceMeter:
    def __init__(self, profile: str = "unicauca", ms_clock: bool = True) -> None:
        self.unicauca = profile == "unicauca"
        self.ms_clock = ms_clock

    def proto_of(self, p: Pkt) -> int:
        if self.unicauca and p.proto not in (6, 17):
            return 0
        return p.proto

    def packets(self, paths):
        """Accepted packets in order, each with its own time and the meter's clock, which never goes
        backwards: a packet whose time goes backwards is on the clock at the latest time seen (docs/features.md)."""
        latest = 0
        for path in paths:
            for t, frame, link in read_capture(path):
                p = decode(t, frame, link)
                if p is None:
                    continue
                if self.ms_clock:
                    p.t = (p.t // 1000) * 1000
                p.clock = max(p.t, latest)
                latest = p.clock
                yield p

    def flows(self, paths) -> list[Flow]:
        done: list[Flow] = []
        table: dict[str, Flow] = {}
        for p in self.packets(paths):
            proto = self.proto_of(p)
            key = flow_key(p, proto)
            fl = table.get(key)
            if fl is None:
                table[key] = self._new(p, proto, None)
                continue
            # The flow timeout is on the meter's clock; the columns take each packet's own time.
            if p.clock - fl.packets[0].clock == FLOW_TIMEOUT or (
                len(fl.packets) == 1 and p.clock - fl.packets[0].clock >= FLOW_TIMEOUT
            ):
                fl.boundary = True
            if p.clock - fl.packets[0].clock > FLOW_TIMEOUT:
                done.append(fl)
                table[key] = self._new(p, proto, fl if self.unicauca else None)
                continue
            fwd = p.src == fl.src
            if self.unicauca:
                if p.flags["fin"]:
                    self._add(fl, p, fwd, activity=False)
                    fl.closed_by = "fin"
                    done.append(table.pop(key))
                    continue
            else:
                fins = [fwd_ for q, fwd_ in zip(fl.packets, fl.forward) if q.flags["fin"]]
                answers_last_fin = set(fins) == {True, False} and p.flags["ack"] and fwd != fins[-1]
                if p.flags["rst"] or answers_last_fin:
                    self._add(fl, p, fwd, activity=True)
                    done.append(table.pop(key))
                    continue
            self._add(fl, p, fwd, activity=True)
        done.extend(table.values())
        return [f for f in done if len(f.packets) > 1]

    def _new(self, p: Pkt, proto: int, old: Flow | None) -> Flow:
        if old is not None:
            fl = Flow(old.src, old.dst, old.sport, old.dport, proto)
        else:
            fl = Flow(p.src, p.dst, p.sport, p.dport, proto)
        fl.packets.append(p)
        fl.forward.append(p.src == fl.src)
        return fl

    @staticmethod
    def _add(fl: Flow, p: Pkt, fwd: bool, activity: bool) -> None:
        p.t = max(p.t, fl.packets[-1].t)  # a flow's times never go backwards (docs/features.md)
        fl.packets.append(p)
        fl.forward.append(fwd)
        fl.activity.append(activity)

    # -- the 85 feature columns, one definition at a time ------------------------------

    def row(self, fl: Flow) -> dict:
        uni = self.unicauca
        P = fl.packets
        N = len(P)
        L = [(q.length_padded if uni else q.length) for q in P]
        F = [i for i in range(N) if fl.forward[i]]
        B = [i for i in range(N) if not fl.forward[i]]
        LF = [L[i] for i in F]
        LB = [L[i] for i in B]
        T = [q.t for q in P]
        D = T[-1] - T[0]
        r: dict = {}
        src, dst = ip_text(fl.src), ip_text(fl.dst)
        if java_order_first(fl.src, fl.dst):
            r["Flow.ID"] = f"{src}-{dst}-{fl.sport}-{fl.dport}-{fl.proto}"
        else:
            r["Flow.ID"] = f"{dst}-{src}-{fl.dport}-{fl.sport}-{fl.proto}"
        r["Source.IP"], r["Source.Port"] = src, fl.sport
        r["Destination.IP"], r["Destination.Port"] = dst, fl.dport
        r["Protocol"] = fl.proto
        tm = time.gmtime(T[0] // 1_000_000)
        hour = tm.tm_hour % 12 or 12
        r["Timestamp"] = f"{tm.tm_mday:02d}/{tm.tm_mon:02d}/{tm.tm_year}{hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
        r["Flow.Duration"] = D
        r["Total.Fwd.Packets"], r["Total.Backward.Packets"] = len(F), len(B)
        r["Total.Length.of.Fwd.Packets"], r["Total.Length.of.Bwd.Packets"] = sum(LF), float(sum(LB))
        for prefix, vals in (("Fwd", LF), ("Bwd", LB)):
            r[f"{prefix}.Packet.Length.Max"] = max(vals) if vals else 0
            r[f"{prefix}.Packet.Length.Min"] = min(vals) if vals else 0
            r[f"{prefix}.Packet.Length.Mean"] = sum(vals) / len(vals) if vals else 0.0
            r[f"{prefix}.Packet.Length.Std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        total = sum(L)
        secs = D / 1e6
        r["Flow.Bytes.s"] = total / secs if D else (float("inf") if total else float("nan"))
        r["Flow.Packets.s"] = N / secs if D else float("inf")
        gaps = [T[i] - T[i - 1] for i in range(1, N)]
        r["Flow.IAT.Mean"] = sum(gaps) / len(gaps)
        r["Flow.IAT.Std"] = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
        r["Flow.IAT.Max"], r["Flow.IAT.Min"] = float(max(gaps)), min(gaps)
        for prefix, idx in (("Fwd", F), ("Bwd", B)):
            g = [T[idx[i]] - T[idx[i - 1]] for i in range(1, len(idx))]
            r[f"{prefix}.IAT.Total"] = float(sum(g))
            r[f"{prefix}.IAT.Mean"] = sum(g) / len(g) if g else 0.0
            r[f"{prefix}.IAT.Std"] = statistics.stdev(g) if len(g) > 1 else 0.0
            r[f"{prefix}.IAT.Max"] = float(max(g)) if g else 0.0
            r[f"{prefix}.IAT.Min"] = float(min(g)) if g else 0.0
        tcp = P[0].proto == 6
        first = P[0]
        if uni:
            # Spec 3, columns 37-40: only the first packet's PSH/URG are counted, as forward (Java-2017's
            # firstPacket runs before a continuation flow's kept orientation is set); Bwd is always 0.
            r["Fwd.PSH.Flags"] = first.flags["psh"]
            r["Bwd.PSH.Flags"] = 0
            r["Fwd.URG.Flags"] = first.flags["urg"]
            r["Bwd.URG.Flags"] = 0
        else:
            r["Fwd.PSH.Flags"] = sum(P[i].flags["psh"] for i in F)
            r["Bwd.PSH.Flags"] = sum(P[i].flags["psh"] for i in B)
            r["Fwd.URG.Flags"] = sum(P[i].flags["urg"] for i in F)
            r["Bwd.URG.Flags"] = sum(P[i].flags["urg"] for i in B)
        r["Fwd.Header.Length"] = sum(P[i].header for i in F)
        r["Bwd.Header.Length"] = sum(P[i].header for i in B)
        r["Fwd.Packets.s"] = len(F) / secs if D else 0.0
        r["Bwd.Packets.s"] = len(B) / secs if D else 0.0
        all_lengths = [L[0]] + L if uni else L
        r["Min.Packet.Length"], r["Max.Packet.Length"] = min(all_lengths), max(all_lengths)
        r["Packet.Length.Mean"] = sum(all_lengths) / len(all_lengths)
        r["Packet.Length.Std"] = statistics.stdev(all_lengths)
        r["Packet.Length.Variance"] = statistics.variance(all_lengths)
        names = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "CWE", "ECE")
        bits = ("fin", "syn", "rst", "psh", "ack", "urg", "cwr", "ece")
        if uni:
            held = ("rst", "psh", "ece", "syn", "ack", "fin", "urg", "cwr")  # spec 4.2
            for name, bit in zip(names, held):
                r[f"{name}.Flag.Count"] = first.flags[bit]
        else:
            for name, bit in zip(names, bits):
                r[f"{name}.Flag.Count"] = sum(q.flags[bit] for q in P)
        r["Down.Up.Ratio"] = len(B) // len(F) if F else 0
        r["Average.Packet.Size"] = (sum(L) + L[0]) / N if uni else sum(L) / N
        r["Avg.Fwd.Segment.Size"] = sum(LF) / len(LF) if LF else 0.0
        r["Avg.Bwd.Segment.Size"] = sum(LB) / len(LB) if LB else 0.0
        r["Fwd.Header.Length.1"] = r["Fwd.Header.Length"]
        if uni:
            for prefix in ("Fwd", "Bwd"):
                r[f"{prefix}.Avg.Bytes.Bulk"] = r[f"{prefix}.Avg.Packets.Bulk"] = r[f"{prefix}.Avg.Bulk.Rate"] = 0
            r["Subflow.Fwd.Packets"], r["Subflow.Fwd.Bytes"] = len(F), sum(LF)
            r["Subflow.Bwd.Packets"], r["Subflow.Bwd.Bytes"] = len(B), sum(LB)
        else:
            self._bulk(r, P, fl.forward, L)
            subflows = 1 + sum(1 for g in gaps if g > 1_000_000)
            r["Subflow.Fwd.Packets"], r["Subflow.Fwd.Bytes"] = len(F) // subflows, sum(LF) // subflows
            r["Subflow.Bwd.Packets"], r["Subflow.Bwd.Bytes"] = len(B) // subflows, sum(LB) // subflows
        if tcp:
            r["Init_Win_bytes_forward"] = P[0].window  # spec 3, column 73: W_1, the flow's first packet
            if B:
                r["Init_Win_bytes_backward"] = P[B[-1]].window if uni else P[B[0]].window
            else:
                r["Init_Win_bytes_backward"] = -1
        else:
            r["Init_Win_bytes_forward"] = r["Init_Win_bytes_backward"] = -1
        r["act_data_pkt_fwd"] = sum(1 for i in F if i > 0 and L[i] >= 1)
        r["min_seg_size_forward"] = min(P[i].header for i in F) if F else 0
        active, idle = self._active_idle(fl)
        for prefix, vals in (("Active", active), ("Idle", idle)):
            r[f"{prefix}.Mean"] = sum(vals) / len(vals) if vals else 0.0
            r[f"{prefix}.Std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            r[f"{prefix}.Max"] = float(max(vals)) if vals else 0.0
            r[f"{prefix}.Min"] = float(min(vals)) if vals else 0.0
        r["Label"] = "BENIGN"
        r["_start_ms"] = T[0] // 1000
        r["_known"] = fl.known_deviation()
        return r

    @staticmethod
    def _active_idle(fl: Flow) -> tuple[list[int], list[int]]:
        """Spec 3.3: walk the packets after the first that went through the Active/Idle step."""
        start = end = fl.packets[0].t
        active: list[int] = []
        idle: list[int] = []
        for q, counted in zip(fl.packets[1:], fl.activity):
            if not counted:
                continue
            if q.t - end > ACTIVITY_TIMEOUT:
                if end - start > 0:
                    active.append(end - start)
                idle.append(q.t - end)
                start = end = q.t
            else:
                end = q.t
        return active, idle

    @staticmethod
    def _bulk(r: dict, P: list, forward: list, L: list) -> None:
        """Spec 3.1, written out from its text."""
        state = {d: {"cand": [], "count": 0, "pkts": 0, "bytes": 0, "dur": 0} for d in (True, False)}
        for q, fwd, length in zip(P, forward, L):
            if length <= 0:
                continue
            mine, other = state[fwd], state[not fwd]
            other["cand"] = []
            cand = mine["cand"]
            if cand and q.t - cand[-1][0] <= 1_000_000:
                cand.append((q.t, length))
                if len(cand) == 4:
                    mine["count"] += 1
                    mine["pkts"] += 4
                    mine["bytes"] += sum(x[1] for x in cand)
                    mine["dur"] += q.t - cand[0][0]
                elif len(cand) > 4:
                    mine["pkts"] += 1
                    mine["bytes"] += length
                    mine["dur"] += q.t - cand[-2][0]
            else:
                mine["cand"] = [(q.t, length)]
        for prefix, fwd in (("Fwd", True), ("Bwd", False)):
            s = state[fwd]
            if s["count"]:
                r[f"{prefix}.Avg.Bytes.Bulk"] = s["bytes"] // s["count"]
                r[f"{prefix}.Avg.Packets.Bulk"] = s["pkts"] // s["count"]
                r[f"{prefix}.Avg.Bulk.Rate"] = int(s["bytes"] / (s["dur"] / 1e6)) if s["dur"] else 0
            else:
                r[f"{prefix}.Avg.Bytes.Bulk"] = r[f"{prefix}.Avg.Packets.Bulk"] = r[f"{prefix}.Avg.Bulk.Rate"] = 0

    def rows(self, paths) -> list[dict]:
        return [self.row(f) for f in self.flows(paths)]


FEATURE_COLUMNS = COLUMNS[:85]
