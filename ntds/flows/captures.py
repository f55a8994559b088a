"""Capture files checked before NFStream sees them.

libpcap (inside NFStream) reads a damaged file up to the damage and then either
stops silently or reads garbage; a link type NFStream cannot parse gives zero
flows and no error. So every input is walked once here, record header by record
header (no packet data is touched), to name the file and the problem in one line,
and to find where a truncated or damaged capture stops being readable. The walk
reads only headers and runs at disk speed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ntds.errors import InputError
from ntds.flows import _compiled

# Link types (as written in capture files) whose frames NFStream 6.6.0 decodes.
LINK_TYPES: dict[int, str] = {
    0: "NULL (BSD loopback)",
    1: "Ethernet",
    9: "PPP",
    12: "raw IP",
    50: "PPP in HDLC framing",
    101: "raw IP",
    104: "Cisco HDLC",
    113: "Linux cooked (SLL)",
    127: "802.11 radiotap",
    228: "raw IPv4",
    229: "raw IPv6",
}
MAX_RECORD = 262144
"""Largest record libpcap accepts (its MAXIMUM_SNAPLEN)."""

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond
    b"\xa1\xb2\x3c\x4d": ">",
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


@dataclass(frozen=True)
class CaptureInfo:
    """What the header walk found in one capture file."""

    path: Path
    format: str
    link_type: int
    packets: int
    readable_bytes: int
    """Bytes from the start of the file up to the end of the last intact record."""
    damage: str | None = None
    """Why reading stops before the end of the file, or None for an intact file."""

    @property
    def damaged(self) -> bool:
        return self.damage is not None


def inspect_capture(path: str | os.PathLike) -> CaptureInfo:
    """Check one input file; raise InputError with a one-line reason if it cannot be metered."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot access: {e.strerror}") from None
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a capture file")
    if st.st_size == 0:
        raise InputError(f"{p}: empty file, not a capture")
    try:
        with open(p, "rb", buffering=0) as fh:
            window = _Window(fh, st.st_size)
            head = window.get(0, 4)
            if head in PCAP_MAGICS:
                info = _walk_pcap(p, window, PCAP_MAGICS[head])
            elif head == PCAPNG_SHB:
                info = _walk_pcapng(p, window)
            else:
                raise InputError(f"{p}: not a pcap or pcapng capture (starts with bytes {head.hex()})")
    except PermissionError:
        raise InputError(f"{p}: cannot read: permission denied") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None
    if info.link_type not in LINK_TYPES:
        raise InputError(
            f"{p}: unsupported link type {info.link_type} "
            f"(supported: {', '.join(f'{k} {v}' for k, v in sorted(LINK_TYPES.items()))})"
        )
    return info


class _Window:
    """Reads a file in 1 MiB chunks: the walk's memory stays small whatever the capture size
    (a memory map would make every page of the file count in the process's RSS)."""

    CHUNK = 1 << 20

    def __init__(self, fh, size: int) -> None:
        self.fh, self.size = fh, size
        self.buf, self.start = b"", 0

    def span(self, off: int, n: int) -> tuple[bytes, int]:
        """(buffer, index) such that buffer[index:index + n] are the file's bytes at off."""
        rel = off - self.start
        if rel < 0 or rel + n > len(self.buf):
            self.fh.seek(off)
            self.buf = self.fh.read(max(n, self.CHUNK))
            self.start, rel = off, 0
        return self.buf, rel

    def get(self, off: int, n: int) -> bytes:
        buf, rel = self.span(off, n)
        return buf[rel : rel + n]


def _walk_pcap(p: Path, w: _Window, endian: str) -> CaptureInfo:
    """Every record header of a classic pcap, walked by `ntds_pcap_walk` (C) a chunk at a time."""
    size = w.size
    if size < 24:
        raise InputError(f"{p}: truncated pcap header ({size} of 24 bytes)")
    link_type = struct.unpack(endian + "I", w.get(20, 4))[0] & 0x0FFFFFFF
    walk = _compiled.ffi.new("struct ntds_walk_state *")
    walk.off = 24
    lib = _compiled.lib
    while True:  # each call walks the headers in the chunk that holds the next one
        buf, _ = w.span(walk.off, 16)
        result = lib.ntds_pcap_walk(buf, w.start, len(buf), size, endian == ">", MAX_RECORD, walk)
        if result != lib.NTDS_WALK_MORE:
            break
    off, n, caplen = walk.off, walk.n, walk.caplen
    damage = {
        lib.NTDS_WALK_END: None,
        lib.NTDS_WALK_HEADER_CUT: f"record header cut short at byte {off}",
        lib.NTDS_WALK_TOO_LONG: f"corrupt record at byte {off} (captured length {caplen})",
        lib.NTDS_WALK_ZERO: f"zero-length record at byte {off}",
        lib.NTDS_WALK_PACKET_CUT: f"packet {n + 1} cut short at byte {off} ({size - off - 16} of {caplen} bytes)",
    }[result]
    return CaptureInfo(p, "pcap", link_type, n, off, damage)


def _walk_pcapng(p: Path, w: _Window) -> CaptureInfo:
    size = w.size
    off, n = 0, 0
    endian = "<"
    link_type = None
    interfaces = 0
    damage = None
    while off < size:
        if off + 12 > size:
            damage = f"block header cut short at byte {off}"
            break
        head = w.get(off, 12)
        if head[:4] == PCAPNG_SHB:
            bom = head[8:12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                damage = f"corrupt section header at byte {off}"
                break
        btype_n, blen = struct.unpack_from(endian + "II", head)
        if blen < 12 or blen % 4:
            damage = f"corrupt block at byte {off} (length {blen})"
            break
        if off + blen > size:
            damage = f"block cut short at byte {off} ({size - off} of {blen} bytes)"
            break
        if struct.unpack(endian + "I", w.get(off + blen - 4, 4))[0] != blen:
            damage = f"corrupt block at byte {off} (trailing length mismatch)"
            break
        if head[:4] == PCAPNG_SHB:
            interfaces = 0  # interface ids count from 0 again in each section
        if btype_n == 1:  # interface description
            lt = struct.unpack_from(endian + "H", head, 8)[0]
            if link_type is None:
                link_type = lt
            elif lt != link_type:
                raise InputError(f"{p}: interfaces with different link types ({link_type} and {lt}) in one file")
            interfaces += 1
        elif btype_n in (2, 3, 6):  # packet, simple packet, enhanced packet
            if link_type is None:
                damage = f"packet block before any interface description at byte {off}"
                break
            if btype_n in (2, 6) and blen >= 28:
                iface = struct.unpack(
                    endian + ("H" if btype_n == 2 else "I"), w.get(off + 8, 2 if btype_n == 2 else 4)
                )[0]
                caplen = struct.unpack(endian + "I", w.get(off + 20, 4))[0]
                if iface >= interfaces:
                    damage = f"packet block at byte {off} names interface {iface}, which the file never described"
                    break
                if caplen == 0:
                    damage = f"zero-length packet at byte {off}"
                    break
            n += 1
        off += blen
    return CaptureInfo(p, "pcapng", 1 if link_type is None else link_type, n, off, damage)
