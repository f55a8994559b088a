"""Large synthetic captures written byte by byte (scapy is too slow for tens of thousands of flows).

Each flow is a UDP question and its answer between one client port and a server:
two packets, so every flow has a record and is scored.
"""

from __future__ import annotations

import struct
from pathlib import Path

ETHER = bytes.fromhex("0200000000020200000000010800")


def _ipv4(src: int, dst: int, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0,
                         src.to_bytes(4, "big"), dst.to_bytes(4, "big"))  # fmt: skip
    words = struct.unpack("!10H", header)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:] + payload


def _udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def udp_flows(path: Path, flows: int, *, start_s: int = 1_794_816_000, gap_s: float = 1.0,
              client: str = "10.1.0.10", server: str = "10.1.0.53", port: int = 5353) -> Path:  # fmt: skip
    """`flows` two-packet UDP flows, one every gap_s seconds, each from its own client port."""
    c = int.from_bytes(bytes(int(x) for x in client.split(".")), "big")
    s = int.from_bytes(bytes(int(x) for x in server.split(".")), "big")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(flows):
            sport = 1024 + i % 60000
            t_us = int((start_s + i * gap_s) * 1_000_000)
            for k, frame in enumerate(
                (
                    ETHER + _ipv4(c, s, 17, _udp(sport, port, b"q" * 40)),
                    ETHER + _ipv4(s, c, 17, _udp(port, sport, b"a" * 120)),
                )
            ):
                t = t_us + 1000 * k
                out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
                out.write(frame)
    return path


def open_flows(path: Path, flows: int, *, start_s: int = 1_794_816_000, spread_s: float = 10.0) -> Path:
    """`flows` UDP flows all open at once: every flow's question first, then every answer (spread_s later)."""
    c0 = int.from_bytes(bytes((10, 2, 0, 0)), "big")
    s = int.from_bytes(bytes((10, 1, 0, 53)), "big")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for answer in (False, True):
            for i in range(flows):
                client, sport = c0 + i // 50_000, 1024 + i % 50_000
                t = int((start_s + answer * spread_s) * 1_000_000) + i
                ip = (
                    _ipv4(s, client, 17, _udp(7000, sport, b"a" * 90))
                    if answer
                    else _ipv4(client, s, 17, _udp(sport, 7000, b"q" * 30))
                )
                frame = ETHER + ip
                out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
                out.write(frame)
    return path


def long_flow(path: Path, packets: int, *, gap_s: float = 0.02, start_s: int = 1_794_816_000) -> Path:
    """One UDP conversation of `packets` packets, gap_s apart (a replay at recorded speed takes a while)."""
    c = int.from_bytes(bytes((10, 1, 0, 10)), "big")
    s = int.from_bytes(bytes((10, 1, 0, 53)), "big")
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(packets):
            t = int((start_s + i * gap_s) * 1_000_000)
            ip = (
                _ipv4(c, s, 17, _udp(40000, 7000, b"x" * 100))
                if i % 2 == 0
                else _ipv4(s, c, 17, _udp(7000, 40000, b"y" * 100))
            )
            frame = ETHER + ip
            out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
            out.write(frame)
    return path
