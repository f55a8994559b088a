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
