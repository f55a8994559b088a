"""Packets in capture files: read (pcap, pcapng), matched against a pcap job, written (pcap with nanoseconds).

What a pcap job hands over must be the packets as they were captured: the same
bytes, the same original length, the same timestamp. Records are therefore
copied, never re-encoded: the reader yields each record's raw bytes with its
timestamp as integer nanoseconds (exact for microsecond and nanosecond pcap
and for pcapng's decimal resolutions), and the writer puts them into a
classic pcap file with nanosecond timestamps, which Wireshark, tshark and
tcpdump open as they are. A record cut short (a file still being written, a
crash) ends the file's reading quietly: everything before it is served.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PCAP_US, PCAP_NS = 0xA1B2C3D4, 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
SNAPLEN = 262144
ETHERNET, RAW, LINUX_SLL, LINUX_SLL2, IPV4, IPV6 = 1, 101, 113, 276, 228, 229
_VLAN = (0x8100, 0x88A8, 0x9100)
_FABRICPATH = 0x8903
_PORTED = (6, 17, 132)
_IPV6_EXTENSIONS = (0, 43, 60)


class CaptureProblem(ValueError):
    """A file that is not a capture ntds can read evidence from (one line)."""


@dataclass(frozen=True, slots=True)
class Record:
    ts_ns: int
    orig_len: int
    data: bytes
    linktype: int


def read(path: Path | str, max_records: int | None = None) -> Iterator[Record]:
    """Every record of a pcap or pcapng file, in file order, up to `max_records` (a damaged file's intact part)."""
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4:
            return
        (le,) = struct.unpack("<I", head)
        (be,) = struct.unpack(">I", head)
        if le == PCAPNG_SHB:
            records = _pcapng(f)
        elif PCAP_US in (le, be) or PCAP_NS in (le, be):
            records = _pcap(f, head)
        else:
            raise CaptureProblem(f"{path}: not a pcap or pcapng file")
        for n, r in enumerate(records):
            if max_records is not None and n >= max_records:
                return
            yield r


def _pcap(f: BinaryIO, head: bytes, start: int = 0) -> Iterator[Record]:
    endian = "<" if struct.unpack("<I", head)[0] in (PCAP_US, PCAP_NS) else ">"
    nano = struct.unpack(endian + "I", head)[0] == PCAP_NS
    rest = f.read(20)
    if len(rest) < 20:
        return
    linktype = struct.unpack(endian + "I", rest[16:20])[0] & 0x0FFFFFFF
    frac = 1 if nano else 1000
    rec = struct.Struct(endian + "IIII")
    if start:
        f.seek(start)
    while True:
        h = f.read(16)
        if len(h) < 16:
            return
        sec, sub, incl, orig = rec.unpack(h)
        if incl > SNAPLEN * 4:
            return  # not a record header: damage
        data = f.read(incl)
        if len(data) < incl:
            return
        yield Record(sec * 1_000_000_000 + sub * frac, orig, data, linktype)


BLOCK = 4096
"""Records per entry of a capture's index by time."""


def index(path: Path | str, max_records: int | None = None) -> list[tuple[int, int, int, int]] | None:
    """A classic pcap file's index by time: (byte offset, records, first and last packet time in ms) per block of
    BLOCK records, up to `max_records`; None for pcapng (read whole). Times within a block need not be in order:
    the block's least and greatest are kept."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return []
        magic = struct.unpack("<I", head[:4])[0]
        if magic not in (PCAP_US, PCAP_NS) and struct.unpack(">I", head[:4])[0] not in (PCAP_US, PCAP_NS):
            return None
        endian = "<" if magic in (PCAP_US, PCAP_NS) else ">"
        rec = struct.Struct(endian + "IIII")
        out: list[tuple[int, int, int, int]] = []
        offset, n, lo, hi, count = 24, 0, 0, 0, 0
        block_start = 24
        while max_records is None or count < max_records:
            h = f.read(16)
            if len(h) < 16:
                break
            sec, _, incl, _ = rec.unpack(h)
            if incl > SNAPLEN * 4 or len(f.read(incl)) < incl:
                break
            ms = sec * 1000  # a second's resolution is enough to choose blocks; matching is exact
            lo, hi = (ms, ms + 999) if n == 0 else (min(lo, ms), max(hi, ms + 999))
            n += 1
            count += 1
            offset += 16 + incl
            if n == BLOCK:
                out.append((block_start, n, lo, hi))
                block_start, n = offset, 0
        if n:
            out.append((block_start, n, lo, hi))
        return out


def read_block(path: Path | str, offset: int, records: int) -> Iterator[Record]:
    """`records` records of a classic pcap file from byte `offset` (an `index` entry's)."""
    with open(path, "rb") as f:
        head = f.read(4)
        for k, r in enumerate(_pcap(f, head, offset)):
            if k >= records:
                return
            yield r


def _pcapng(f: BinaryIO) -> Iterator[Record]:
    f.seek(0)
    endian = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, multiplier, divisor) per interface of the section
    while True:
        h = f.read(8)
        if len(h) < 8:
            return
        btype = struct.unpack(endian + "I", h[:4])[0]
        if btype == PCAPNG_SHB:
            bom = f.read(4)
            if len(bom) < 4:
                return
            endian = "<" if struct.unpack("<I", bom)[0] == 0x1A2B3C4D else ">"
            length = struct.unpack(endian + "I", h[4:8])[0]
            body = bom + f.read(length - 12)
            interfaces = []
        else:
            length = struct.unpack(endian + "I", h[4:8])[0]
            if length < 12 or length > 64 * SNAPLEN:
                return
            body = f.read(length - 8)
        if len(body) < length - 8:
            return
        if btype == 1:  # interface description
            linktype = struct.unpack(endian + "H", body[:2])[0]
            interfaces.append((linktype, *_tsresol(body[8 : length - 12], endian)))
        elif btype == 6 and len(body) >= 20:  # enhanced packet
            iface, hi, lo, incl, orig = struct.unpack(endian + "IIIII", body[:20])
            if iface >= len(interfaces):
                continue
            linktype, mul, div = interfaces[iface]
            ts = (hi << 32) | lo
            yield Record(ts * mul // div, orig, body[20 : 20 + incl], linktype)


def _tsresol(options: bytes, endian: str) -> tuple[int, int]:
    """(multiplier, divisor) turning an interface's timestamp units into nanoseconds (default microseconds)."""
    i = 0
    while i + 4 <= len(options):
        code, size = struct.unpack(endian + "HH", options[i : i + 4])
        if code == 0:
            break
        if code == 9 and size >= 1:
            v = options[i + 4]
            if v & 0x80:
                return 1_000_000_000, 1 << (v & 0x7F)
            return (10 ** (9 - v), 1) if v <= 9 else (1, 10 ** (v - 9))
        i += 4 + size + (-size % 4)
    return 1000, 1


@dataclass(frozen=True)
class Match:
    """Which packets a pcap job wants: between `host` and (optionally) `peer`, with the ports and protocol given
    (0: any), whose time in whole milliseconds (the meter's own resolution, as flow times are written) lies in
    [since_ms, until_ms]."""

    host: str
    since_ms: int
    until_ms: int
    peer: str = ""
    host_port: int = 0
    peer_port: int = 0
    protocol: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_host", _packed(self.host))
        object.__setattr__(self, "_peer", _packed(self.peer) if self.peer else None)

    def in_time(self, ts_ns: int) -> bool:
        return self.since_ms <= ts_ns // 1_000_000 <= self.until_ms

    def wants(self, r: Record) -> bool:
        if not self.in_time(r.ts_ns):
            return False
        ends = endpoints(r.data, r.linktype)
        if ends is None:
            return False
        src, dst, proto, sport, dport = ends
        if self.protocol and proto != self.protocol:
            return False
        host, peer = self._host, self._peer
        if src == host and (peer is None or dst == peer):
            mine, theirs = sport, dport
        elif dst == host and (peer is None or src == peer):
            mine, theirs = dport, sport
        else:
            return False
        return (not self.host_port or mine == self.host_port) and (not self.peer_port or theirs == self.peer_port)


def _packed(ip: str) -> bytes:
    try:
        return ipaddress.ip_address(ip).packed
    except ValueError:
        raise CaptureProblem(f"{ip!r} is not an IP address") from None


def endpoints(frame: bytes, linktype: int) -> tuple[bytes, bytes, int, int, int] | None:
    """(source address, destination address, IP protocol, source port, destination port) of a frame's outer IP
    packet (ports 0 where there are none), or None for a frame that carries no IP."""
    if linktype == ETHERNET:
        off, etype = 14, _u16(frame, 12)
        while etype in _VLAN or etype == _FABRICPATH:
            if etype == _FABRICPATH:  # Cisco FabricPath: the outer header, then the inner Ethernet frame
                off += 16 - 2
            else:
                off += 4
            etype = _u16(frame, off - 2)
    elif linktype == LINUX_SLL:
        off, etype = 16, _u16(frame, 14)
    elif linktype == LINUX_SLL2:
        off, etype = 20, _u16(frame, 0)
    elif linktype in (RAW, IPV4, IPV6):
        off = 0
        etype = 0x0800 if frame[:1] and frame[0] >> 4 == 4 else 0x86DD
    else:
        return None
    if etype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        src, dst = frame[off + 12 : off + 16], frame[off + 16 : off + 20]
        first_fragment = (_u16(frame, off + 6) & 0x1FFF) == 0
        l4 = off + ihl
    elif etype == 0x86DD and len(frame) >= off + 40:
        proto = frame[off + 6]
        src, dst = frame[off + 8 : off + 24], frame[off + 24 : off + 40]
        l4, first_fragment = off + 40, True
        while proto in _IPV6_EXTENSIONS and len(frame) >= l4 + 8:
            proto, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
        if proto == 44 and len(frame) >= l4 + 8:  # fragment header
            first_fragment = (_u16(frame, l4 + 2) & 0xFFF8) == 0
            proto, l4 = frame[l4], l4 + 8
    else:
        return None
    if proto in _PORTED and first_fragment and len(frame) >= l4 + 4:
        return src, dst, proto, _u16(frame, l4), _u16(frame, l4 + 2)
    return src, dst, proto, 0, 0


def _u16(b: bytes, i: int) -> int:
    return (b[i] << 8) | b[i + 1] if len(b) >= i + 2 else 0


class PcapWriter:
    """A classic pcap file with nanosecond timestamps, one link type (the first record's)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.linktype: int | None = None
        self.packets = 0
        self.bytes = 0
        self.other_links = 0
        """Records skipped because their link type differs from the file's (several capture sources)."""

    def add(self, r: Record) -> bool:
        if self.linktype is None:
            self.linktype = r.linktype
            self.f.write(struct.pack("<IHHiIII", PCAP_NS, 2, 4, 0, 0, SNAPLEN, r.linktype))
            self.bytes += 24
        elif r.linktype != self.linktype:
            self.other_links += 1
            return False
        sec, ns = divmod(r.ts_ns, 1_000_000_000)
        self.f.write(struct.pack("<IIII", sec, ns, len(r.data), r.orig_len))
        self.f.write(r.data)
        self.packets += 1
        self.bytes += 16 + len(r.data)
        return True

    def finish(self) -> None:
        if self.linktype is None:  # no packet: still a valid, empty capture
            self.f.write(struct.pack("<IHHiIII", PCAP_NS, 2, 4, 0, 0, SNAPLEN, ETHERNET))
            self.bytes += 24
