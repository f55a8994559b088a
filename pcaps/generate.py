"""Deterministic scapy generator of the project's own captures.

`fixtures/`: one small capture per rule of spec/flow-features.md section 7.3, with
fixed timestamps, so that tests can state the expected rows from first principles.
`sample.pcap`: a little mixed traffic (DNS, HTTP, TLS, SSH, NTP, ICMP) that nDPI
recognises, for `make demo`. `--site-traffic FILE`: a larger seeded capture of the
same applications, the input of the starter baseline in config/.

Run `python -m pcaps.generate [OUTDIR]` or `python -m pcaps.generate --site-traffic FILE`;
the same bytes come out every time.
"""

from __future__ import annotations

import struct
import sys
from decimal import Decimal
from pathlib import Path

from scapy.all import (  # noqa: F401 - scapy layers register themselves on import
    DNS,
    DNSQR,
    DNSRR,
    ICMP,
    IP,
    NTP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    IPv6,
    Padding,
    Raw,
    wrpcap,
)

BASE = Decimal(1794816000)  # 2026-11-16 08:00:00 UTC, a Monday
CLIENT, SERVER = "10.1.0.10", "93.184.216.34"
CMAC, SMAC = "02:00:00:00:00:0a", "02:00:00:00:00:01"
HERE = Path(__file__).resolve().parent


def at(us: int) -> Decimal:
    """Absolute capture time of an offset in microseconds from BASE."""
    return BASE + Decimal(us) / Decimal(1_000_000)


class Conversation:
    """A TCP or UDP exchange between two hosts, with sequence numbers kept right."""

    def __init__(self, src=CLIENT, dst=SERVER, sport=40000, dport=443, v6=False) -> None:
        self.src, self.dst, self.sport, self.dport, self.v6 = src, dst, sport, dport, v6
        self.seq = {True: 1000, False: 5000}
        self.packets = []

    def _ip(self, fwd: bool):
        s, d = (self.src, self.dst) if fwd else (self.dst, self.src)
        mac = Ether(src=CMAC, dst=SMAC) if fwd else Ether(src=SMAC, dst=CMAC)
        return mac / (IPv6(src=s, dst=d) if self.v6 else IP(src=s, dst=d, id=1))

    def tcp(self, us: int, fwd: bool, flags: str, payload: bytes = b"", options=None, pad: int = 0, window=8192):
        sp, dp = (self.sport, self.dport) if fwd else (self.dport, self.sport)
        seg = TCP(sport=sp, dport=dp, flags=flags, seq=self.seq[fwd], ack=self.seq[not fwd], window=window)
        if options:
            seg.options = options
        pkt = self._ip(fwd) / seg
        if payload:
            pkt = pkt / Raw(payload)
        if pad:
            pkt = pkt / Padding(load=b"\0" * pad)
        self.seq[fwd] += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
        pkt.time = at(us)
        self.packets.append(pkt)
        return self

    def udp(self, us: int, fwd: bool, payload):
        sp, dp = (self.sport, self.dport) if fwd else (self.dport, self.sport)
        pkt = self._ip(fwd) / UDP(sport=sp, dport=dp) / payload
        pkt.time = at(us)
        self.packets.append(pkt)
        return self

    def handshake(self, us: int, step: int = 1000):
        return self.tcp(us, True, "S").tcp(us + step, False, "SA").tcp(us + 2 * step, True, "A")

    def close(self, us: int, step: int = 1000):
        """Client FIN, server FIN, client's last ACK."""
        return self.tcp(us, True, "FA").tcp(us + step, False, "FA").tcp(us + 2 * step, True, "A")


def fixtures() -> dict[str, list]:
    """Name -> packets; one capture per rule of spec 7.3."""
    out: dict[str, list] = {}
    ts_opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    ts_only = [("NOP", None), ("NOP", None), ("Timestamp", (2, 1))]
    c = Conversation(sport=40001)
    c.tcp(0, True, "S", options=ts_opts, window=64240)  # H = 20 + 20 option bytes = 40
    c.tcp(1000, False, "SA", options=ts_opts, window=65160)
    c.tcp(2000, True, "A", options=ts_only, window=502)  # H = 32
    c.tcp(3000, True, "PA", b"x" * 100, options=ts_only, window=502)
    c.tcp(4000, False, "A", options=ts_only, window=509)
    out["handshake_options"] = c.packets

    c = Conversation(sport=40002)
    c.handshake(0)
    c.tcp(3000, True, "PA", b"GET / HTTP/1.1\r\n\r\n")
    c.tcp(4000, False, "A", pad=6)  # 54-byte frame padded to 60: L = 6 in unicauca
    c.tcp(5000, True, "A")  # unpadded pure ACK: L = 0
    out["padding"] = c.packets

    c = Conversation(sport=40003)
    c.handshake(0)
    c.tcp(3000, True, "PA", b"a" * 300).tcp(4000, False, "PA", b"b" * 1200).tcp(5000, True, "PA", b"c" * 50)
    out["psh_both"] = c.packets

    c = Conversation(sport=40004)
    c.handshake(0)
    c.tcp(10_000, True, "PA", b"a" * 10)
    c.tcp(7_010_000, False, "PA", b"b" * 20)  # 7 s after the last packet: Idle = 7 s, Active = 10 ms
    c.tcp(7_020_000, True, "A")
    out["idle_pause"] = c.packets

    c = Conversation(sport=40005)
    c.handshake(0)
    for i, us in enumerate((10_000, 1_510_000, 3_010_000)):  # gaps of 1.5 s: three subflows
        c.tcp(us, True, "PA", b"s" * (100 + i))
        c.tcp(us + 1000, False, "A")
    out["subflows"] = c.packets

    c = Conversation(sport=40006)
    c.handshake(0)
    for i in range(6):  # six back-to-back payload packets: one bulk
        c.tcp(10_000 + 2000 * i, False, "PA", b"d" * 1000)
    c.tcp(30_000, True, "A")
    out["bulk"] = c.packets

    c = Conversation(sport=40007)
    c.handshake(0)
    c.tcp(3000, True, "PA", b"q" * 40).tcp(4000, False, "PA", b"r" * 400)
    c.close(5000)
    out["fin_appendix"] = c.packets

    c = Conversation(sport=40008, dport=5001)
    c.handshake(0)
    for s in range(10, 111, 10):  # data every 10 s, then a pause across the 120 s limit
        c.tcp(s * 1_000_000, True, "PA", b"k" * 10)
    c.tcp(125_000_000, False, "PA", b"z" * 30)  # after the 120 s split, the server speaks first
    c.tcp(126_000_000, True, "A")
    out["long_flow"] = c.packets

    c = Conversation(sport=40009)
    c.tcp(0, True, "S")
    out["single_packet"] = c.packets

    c = Conversation(sport=53000, dst="10.1.0.1", dport=53)
    c.udp(0, True, DNS(id=7, rd=1, qd=DNSQR(qname="example.com")))
    c.udp(2500, False, DNS(id=7, qr=1, qd=DNSQR(qname="example.com"), an=DNSRR(rrname="example.com", rdata=SERVER)))
    out["udp_request_response"] = c.packets

    icmp = []
    for i, (us, fwd) in enumerate(((0, True), (1500, False), (1_000_000, True), (1_001_700, False))):
        s, d = (CLIENT, SERVER) if fwd else (SERVER, CLIENT)
        p = (
            Ether(src=CMAC, dst=SMAC)
            / IP(src=s, dst=d, id=1)
            / ICMP(type=8 if fwd else 0, id=1, seq=i // 2)
            / Raw(b"p" * 56)
        )
        p.time = at(us)
        icmp.append(p)
    out["icmp"] = icmp

    c = Conversation(src="2001:db8::10", dst="2001:db8:1::80", sport=40010, dport=80, v6=True)
    c.handshake(0)
    c.tcp(3000, True, "PA", b"GET / HTTP/1.1\r\nHost: v6.example\r\n\r\n").tcp(4000, False, "PA", b"h" * 500)
    out["ipv6_tcp"] = c.packets

    c = Conversation(sport=40011)
    c.tcp(0, True, "S").tcp(217, False, "SA").tcp(431, True, "A")  # whole flow in 431 µs
    out["submillisecond"] = c.packets

    c = Conversation(sport=40012, dport=5002)
    c.handshake(0)
    c.tcp(10_000_000, True, "PA", b"k" * 10, window=501)
    c.tcp(125_000_000, False, "PA", b"z" * 30, window=333)  # after the 120 s split the server speaks first
    c.tcp(126_000_000, True, "A", window=777)
    out["continuation_flags"] = c.packets

    c = Conversation(src=CLIENT, dst="198.51.100.7", sport=7000, dport=7001)
    for us, fwd in ((0, True), (1000, False), (1_000_000, True), (1_001_000, False)):
        c.udp(us, fwd, Raw(b"u" * 40))
    for us, fwd in ((201_000_000, True), (201_001_000, False), (202_000_000, True)):  # resumes after 200 s
        c.udp(us, fwd, Raw(b"v" * 60))
    out["udp_resume"] = c.packets

    tunnel = []
    inner = Conversation(src="2001:db8::1", dst="2001:db8::2", sport=40014, dport=80, v6=True)
    inner.handshake(0).tcp(3000, True, "PA", b"GET / HTTP/1.1\r\n\r\n").tcp(4000, False, "PA", b"o" * 300)
    for p in inner.packets:  # the same IPv6 packets inside IPv4 (protocol 41) between two routers
        fwd = p[IPv6].src == "2001:db8::1"
        outer = IP(src=CLIENT if fwd else "198.51.100.9", dst="198.51.100.9" if fwd else CLIENT, id=1, proto=41)
        q = Ether(src=CMAC, dst=SMAC) / outer / p[IPv6]
        q.time = p.time
        tunnel.append(q)
    out["six_in_four"] = tunnel

    garbage = []
    for k, (etype, body) in enumerate(
        (
            (0x0800, b"\x00" * 40),  # IPv4 ethertype, version 0
            (0x0800, bytes([0x42]) + b"\x00" * 39),  # version 4, header length 8 bytes
            (0x86DD, b"\x60" + b"\x00" * 9),  # IPv6 ethertype, 10 bytes
            (0x0806, b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20),  # ARP
        )
    ):
        p = Ether(src=CMAC, dst=SMAC, type=etype) / Raw(body)
        p.time = at(k * 1000)
        garbage.append(p)
    c = Conversation(src=CLIENT, dst="10.1.0.1", sport=7100, dport=7101)
    c.udp(10_000, True, Raw(b"g" * 20)).udp(11_000, False, Raw(b"h" * 20))
    out["garbage_frames"] = garbage + c.packets
    out.update(frame_fixups())
    return out


FABRICPATH_TAG = b"\x45\x3f"  # FTag 0x114, TTL 63: the outer bytes then read as an IPv4 header, as in the wild
SWITCH_A, SWITCH_B = "02:00:00:00:f0:01", "02:00:00:00:f0:02"  # FabricPath switch ids (outer MACs)


def frame_fixups() -> dict[str, list]:
    """Frames NFStream's parser drops or misreads, which the meter fixes up before it parses them
    (ntds/flows/packet_tap.c), and a capture whose clock goes backwards."""
    out: dict[str, list] = {}
    # Segmentation offload on a Windows host: the capture holds 1.5-5.5 kB frames whose IPv4 total length
    # is 0 (the NIC fills it in later). One flow on plain Ethernet, one on 802.1Q VLAN 7.
    frames = []
    for sport, vlan in ((40016, None), (40017, 7)):
        c = Conversation(sport=sport)
        c.handshake(0)
        for k, size in enumerate((1460, 2920, 4380, 5440)):
            c.tcp(3000 + 2000 * k, True, "PA", bytes([65 + k]) * size)
            c.tcp(4000 + 2000 * k, False, "A")
        c.close(12_000)
        for p in c.packets:
            if len(p[TCP].payload) > 1460:
                p[IP].len = 0
            if vlan is not None:
                q = Ether(src=p[Ether].src, dst=p[Ether].dst) / Dot1Q(vlan=vlan) / p[IP]
                q.time = p.time
                p = q
            frames.append(p)
    out["ip_length_zero"] = sorted(frames, key=lambda p: p.time)
    # Cisco FabricPath (EtherType 0x8903): outer MACs, 0x8903, FTag/TTL, then the inner Ethernet frame with
    # an 802.1Q tag (VLAN 7) and IPv4. Every other frame of one TCP flow crosses the FabricPath core; the
    # last frame is a FabricPath frame inside FabricPath, which cannot be read and is skipped.
    c = Conversation(sport=40018, dport=8443)
    c.handshake(0).tcp(3000, True, "PA", b"q" * 300).tcp(4000, False, "PA", b"r" * 900).tcp(5000, True, "A")
    c.close(6000)
    frames = []
    for k, p in enumerate(c.packets):
        inner = Ether(src=p[Ether].src, dst=p[Ether].dst) / Dot1Q(vlan=7) / p[IP]
        if k % 2:
            q = Ether(src=SWITCH_A, dst=SWITCH_B, type=0x8903) / Raw(FABRICPATH_TAG + bytes(inner))
        else:
            q = inner
        q.time = p.time
        frames.append(q)
    nested = Ether(src=SWITCH_A, dst=SWITCH_B, type=0x8903) / Raw(
        FABRICPATH_TAG + bytes(Ether(src="02:00:00:00:f0:03", dst="02:00:00:00:f0:04", type=0x8903)) + bytes(40)
    )
    nested.time = at(10_000)
    out["fabricpath"] = frames + [nested]
    # A capture merged from two clocks: a UDP exchange at 3.000-3.121 s is written before one at 0.062-0.182 s
    # and a TCP flow of 15 packets over 51 ms (0.200-0.251 s); within one flow a packet 10 ms behind the one
    # before it (written after it).
    late = Conversation(src=CLIENT, dst="198.51.100.8", sport=7200, dport=443)
    late.udp(3_000_000, True, Raw(b"a" * 33)).udp(3_121_000, False, Raw(b"b" * 170))
    early = Conversation(src=CLIENT, dst="198.51.100.8", sport=7201, dport=443)
    early.udp(62_000, True, Raw(b"c" * 33)).udp(182_000, False, Raw(b"d" * 170))
    node = Conversation(sport=40019, dport=8333)
    node.handshake(200_000, 3000)
    for k in range(12):
        node.tcp(209_000 + 3000 * k + (9000 if k == 11 else 0), k % 2 == 0, "PA", b"v" * (24 + k))  # last at 251 ms
    back = Conversation(src=CLIENT, dst="198.51.100.9", sport=7300, dport=5353)
    back.udp(300_000, True, Raw(b"e" * 10)).udp(330_000, False, Raw(b"f" * 20)).udp(320_000, True, Raw(b"g" * 30))
    back.udp(340_000, False, Raw(b"h" * 40))
    out["clock_backwards"] = late.packets + early.packets + node.packets + back.packets
    return out


def raw_fixtures() -> dict[str, tuple[int, int, list[tuple[int, bytes, int]]]]:
    """Captures scapy cannot write as needed: name -> (link type, snap length, [(µs, captured bytes, length)])."""
    out = {}
    c = Conversation(sport=40013, dport=5003)
    c.handshake(0)
    c.tcp(3000, True, "PA", b"a" * 20_000)  # segmentation offload: one 20 kB IP packet
    c.tcp(4000, False, "A")
    c.tcp(5000, True, "PA", b"b" * 63_000)  # and a 63 kB one
    c.tcp(6000, False, "A")
    frames = [(int((p.time - BASE) * 1_000_000), bytes(p)) for p in c.packets]
    out["offload_full"] = (1, 262144, [(us, f, len(f)) for us, f in frames])
    out["offload_cut"] = (1, 1514, [(us, f[:1514], len(f)) for us, f in frames])  # snap length 1514
    hdlc = []
    c = Conversation(sport=40015, dport=22)
    c.handshake(0).tcp(3000, True, "PA", b"SSH-2.0-x\r\n").tcp(4000, False, "PA", b"SSH-2.0-y\r\n")
    for p in c.packets:  # Cisco HDLC: address, control, then the EtherType
        frame = b"\x0f\x00\x08\x00" + bytes(p[IP])
        hdlc.append((int((p.time - BASE) * 1_000_000), frame, len(frame)))
    out["cisco_hdlc"] = (104, 65535, hdlc)
    return out


def write_raw(path: Path, link_type: int, snaplen: int, records: list[tuple[int, bytes, int]]) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, link_type))
        for us, data, length in records:
            t = int(BASE) * 1_000_000 + us
            fh.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(data), length) + data)


def _tls_record(handshake_type: int, body: bytes) -> bytes:
    hs = bytes([handshake_type]) + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _client_hello(sni: str) -> bytes:
    """A minimal TLS 1.3 ClientHello with SNI, laid out byte by byte (RFC 8446 4.1.2)."""
    name = sni.encode()
    server_name = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    extensions = (
        struct.pack("!HH", 0, len(server_name))
        + server_name
        + struct.pack("!HHB", 43, 5, 4)
        + b"\x03\x04\x03\x03"  # supported_versions
        + struct.pack("!HHH", 10, 4, 2)
        + b"\x00\x1d"  # supported_groups: x25519
        + struct.pack("!HHH", 13, 4, 2)
        + b"\x04\x03"  # signature_algorithms
    )
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x20"
        + bytes(range(32, 64))
        + struct.pack("!H", 6)
        + b"\x13\x01\x13\x02\x13\x03"
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    return _tls_record(1, body)


def _server_hello() -> bytes:
    body = b"\x03\x03" + bytes(range(64, 96)) + b"\x20" + bytes(range(32, 64)) + b"\x13\x01\x00"
    ext = struct.pack("!HHH", 43, 2, 0x0304)
    return _tls_record(2, body + struct.pack("!H", len(ext)) + ext)


def sample() -> list:
    """A few flows of each common application, a second apart, for the demo."""
    pkts: list = []
    t = 0
    for i, name in enumerate(("www.google.com", "www.youtube.com", "www.wikipedia.org", "github.com")):
        c = Conversation(sport=41000 + i, dst="10.1.0.1", dport=53)
        c.udp(t, True, DNS(id=i, rd=1, qd=DNSQR(qname=name)))
        c.udp(t + 3000, False, DNS(id=i, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata=SERVER)))
        pkts += c.packets
        t += 100_000
        c = Conversation(sport=42000 + i, dport=443)
        c.handshake(t, 20_000)
        c.tcp(t + 60_000, True, "PA", _client_hello(name))
        c.tcp(t + 80_000, False, "PA", _server_hello() + b"\x17\x03\x03\x00\x10" + b"e" * 16)
        for k in range(5):
            c.tcp(t + 100_000 + k * 5000, False, "PA", b"\x17\x03\x03\x05\x00" + b"v" * 1280)
            c.tcp(t + 101_000 + k * 5000, True, "A")
        c.close(t + 200_000, 10_000)
        pkts += c.packets
        t += 1_000_000
    c = Conversation(sport=43000, dport=80)
    c.handshake(t, 10_000)
    c.tcp(t + 30_000, True, "PA", b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\n\r\n")
    c.tcp(
        t + 50_000,
        False,
        "PA",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 600\r\n\r\n" + b"<p>" * 200,
    )
    c.close(t + 60_000, 10_000)
    pkts += c.packets
    t += 1_000_000
    c = Conversation(sport=44000, dport=22)
    c.handshake(t, 10_000)
    c.tcp(t + 30_000, False, "PA", b"SSH-2.0-OpenSSH_9.6\r\n")
    c.tcp(t + 40_000, True, "PA", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    for k in range(6):
        c.tcp(t + 60_000 + k * 20_000, k % 2 == 0, "PA", b"\0\0\0\x2c" + bytes(44))
    pkts += c.packets
    t += 1_000_000
    c = Conversation(sport=123, dst="10.1.0.2", dport=123)
    stamps = {"ref": 3972412800, "orig": 3972412800, "recv": 3972412800, "sent": 3972412800}
    c.udp(t, True, NTP(version=4, mode=3, **stamps)).udp(t + 2000, False, NTP(version=4, mode=4, stratum=2, **stamps))
    pkts += c.packets
    t += 1_000_000
    for k in range(3):
        for fwd, us in ((True, 0), (False, 900)):
            s, d = (CLIENT, SERVER) if fwd else (SERVER, CLIENT)
            mac = Ether(src=CMAC, dst=SMAC) if fwd else Ether(src=SMAC, dst=CMAC)
            p = mac / IP(src=s, dst=d, id=1) / ICMP(type=8 if fwd else 0, id=9, seq=k) / Raw(b"i" * 48)
            p.time = at(t + k * 1_000_000 + us)
            pkts.append(p)
    return sorted(pkts, key=lambda p: p.time)


def site_traffic(sessions: int = 2400, seed: int = 7) -> list:
    """A few hours of varied, ordinary traffic from 20 hosts, for the starter baseline.

    Seeded, so the same packets come out every time: DNS lookups, TLS sessions to
    well-known names, plain HTTP, SSH, NTP and pings, with sizes and timings drawn
    per session."""
    import random

    rng = random.Random(seed)
    names = ("www.google.com", "www.youtube.com", "www.wikipedia.org", "github.com")
    pkts: list = []
    t = 0
    for i in range(sessions):
        host = f"10.1.{1 + i % 4}.{10 + i % 20}"
        kind = rng.choices(("dns", "tls", "http", "ssh", "ntp", "icmp"), weights=(40, 35, 10, 5, 5, 5))[0]
        sport = 20000 + i
        if kind == "dns":
            name = rng.choice(names)
            c = Conversation(src=host, dst="10.1.0.1", sport=sport, dport=53)
            c.udp(t, True, DNS(id=i % 65536, rd=1, qd=DNSQR(qname=name)))
            answers = DNSRR(rrname=name, rdata=SERVER) / DNSRR(rrname=name, rdata="93.184.216.35")
            c.udp(t + rng.randint(800, 30_000), False, DNS(id=i % 65536, qr=1, qd=DNSQR(qname=name), an=answers))
        elif kind == "tls":
            c = Conversation(src=host, sport=sport, dport=443)
            rtt = rng.randint(5_000, 60_000)
            c.handshake(t, rtt)
            c.tcp(t + 3 * rtt, True, "PA", _client_hello(rng.choice(names)))
            c.tcp(t + 4 * rtt, False, "PA", _server_hello() + b"\x17\x03\x03\x00\x10" + b"e" * 16)
            u = t + 5 * rtt
            for _ in range(rng.randint(2, 14)):
                u += rng.randint(1_000, 400_000)
                c.tcp(u, False, "PA", b"\x17\x03\x03\x05\x00" + b"v" * rng.randint(200, 1400))
                c.tcp(u + 500, True, "A")
            c.close(u + rng.randint(10_000, 2_000_000), rtt)
        elif kind == "http":
            c = Conversation(src=host, sport=sport, dport=80)
            rtt = rng.randint(5_000, 40_000)
            c.handshake(t, rtt)
            c.tcp(t + 3 * rtt, True, "PA", b"GET /a HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\n\r\n")
            body = b"<p>" * rng.randint(50, 400)
            c.tcp(t + 4 * rtt, False, "PA", b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + body)
            c.close(t + 5 * rtt, rtt)
        elif kind == "ssh":
            c = Conversation(src=host, sport=sport, dport=22)
            c.handshake(t, 10_000)
            c.tcp(t + 30_000, False, "PA", b"SSH-2.0-OpenSSH_9.6\r\n")
            c.tcp(t + 40_000, True, "PA", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
            u = t + 60_000
            for k in range(rng.randint(4, 30)):
                u += rng.randint(20_000, 900_000)
                c.tcp(u, k % 2 == 0, "PA", b"\0\0\0\x2c" + bytes(rng.choice((36, 44, 52, 108))))
        elif kind == "ntp":
            stamps = {"ref": 3972412800, "orig": 3972412800, "recv": 3972412800, "sent": 3972412800}
            c = Conversation(src=host, sport=123, dst="10.1.0.2", dport=123)
            c.udp(t, True, NTP(version=4, mode=3, **stamps))
            c.udp(t + rng.randint(300, 3000), False, NTP(version=4, mode=4, stratum=2, **stamps))
        else:
            c = Conversation(src=host, sport=0, dport=0)
            for k in range(rng.randint(2, 6)):
                for fwd, us in ((True, 0), (False, rng.randint(500, 40_000))):
                    s, d = (host, SERVER) if fwd else (SERVER, host)
                    mac = Ether(src=CMAC, dst=SMAC) if fwd else Ether(src=SMAC, dst=CMAC)
                    p = mac / IP(src=s, dst=d, id=1) / ICMP(type=8 if fwd else 0, id=i % 65536, seq=k) / Raw(b"i" * 48)
                    p.time = at(t + k * 1_000_000 + us)
                    c.packets.append(p)
        pkts += c.packets
        t += rng.randint(100_000, 3_000_000)
    return sorted(pkts, key=lambda p: p.time)


def write_all(outdir: Path = HERE) -> list[Path]:
    written = []
    fixture_dir = outdir / "fixtures"
    fixture_dir.mkdir(parents=True, exist_ok=True)
    for name, packets in fixtures().items():
        path = fixture_dir / f"{name}.pcap"
        wrpcap(str(path), packets)
        written.append(path)
    for name, (link_type, snaplen, records) in raw_fixtures().items():
        path = fixture_dir / f"{name}.pcap"
        write_raw(path, link_type, snaplen, records)
        written.append(path)
    path = outdir / "sample.pcap"
    wrpcap(str(path), sample())
    written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--site-traffic":
        # the larger capture the starter baseline is built from (not committed)
        target = Path(sys.argv[2])
        target.parent.mkdir(parents=True, exist_ok=True)
        wrpcap(str(target), site_traffic())
        print(target)
    else:
        for p in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
            print(p)
