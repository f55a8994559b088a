"""The detection week: campus traffic with planted attacks, written byte by byte (fast enough for a week of it).

Bigger and busier than the demo's scapy-made week (pcaps/campus.py): a hundred
hosts and sixteen attack scenarios, for the host-level detectors' tests and
bench/bench_detection.py.

`Capture` writes real frames (Ethernet, IPv4, TCP with a handshake and a
proper close, UDP, DNS with real query names, ICMP echo, TLS client hellos
with a server name) that NFStream and nDPI meter like any capture. Packets
over 600 bytes are stored cut to 128 bytes, as a sensor's snap length would
(the IP header keeps their true length), so a week stays small on disk.

`week` is a campus of workstations and servers: browsing (DNS then
TLS), file shares, mail, SSH sessions, NTP, discovery chatter, a monitoring
station pinging every host, software update checks, nightly backups, a busy
client and a peer-to-peer client. `ATTACKS` plants one scenario per attacking
host; the internal attackers are campus workstations going about their
ordinary day too (a compromised machine), the others outside hosts. Both are
used by the detector tests (small pieces) and by bench/bench_detection.py (the
whole week).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pcaps.generate import _client_hello, _server_hello

ETHER = bytes.fromhex("0200000000020200000000010800")
FIN, SYN, RST, PSH, ACK, URG = 1, 2, 4, 8, 16, 32
STORED = 128
"""Bytes kept of packets over 600 bytes (like a sensor's snap length)."""
MSS = 1448
JUMBO = 8948


def ip_int(text: str) -> int:
    return int.from_bytes(bytes(int(x) for x in text.split(".")), "big")


def _ipv4(src: str, dst: str, proto: int, payload_len: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, 64, proto, 0,
                         ip_int(src).to_bytes(4, "big"), ip_int(dst).to_bytes(4, "big"))  # fmt: skip
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]


def dns_message(name: str, ident: int, answer: bool, qtype: int = 1) -> bytes:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    question = qname + struct.pack("!HH", qtype, 1)
    if not answer:
        return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes((93, 184, 216, ident % 250 + 1))
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + rr


class Capture:
    """Frames with their times; `write` sorts them into a classic pcap."""

    def __init__(self, seed: int = 1) -> None:
        self.records: list[tuple[int, bytes, int]] = []
        self.rng = random.Random(seed)
        self._ports: dict[str, int] = {}

    def port(self, host: str) -> int:
        """The host's next ephemeral port (32768..60999, like Linux)."""
        p = self._ports.get(host, 32768 + self.rng.randrange(20000))
        self._ports[host] = 32768 + (p - 32768 + 1) % 28000
        return p

    def _add(self, t: float, src: str, dst: str, proto: int, l4_header: bytes, data: bytes | int) -> None:
        size = data if isinstance(data, int) else len(data)
        frame = ETHER + _ipv4(src, dst, proto, len(l4_header) + size) + l4_header
        if isinstance(data, int):  # bulk payload: only its length matters, stored cut like a snap length
            frame += bytes(min(data, STORED))
        else:
            frame += data
        length = len(ETHER) + 20 + len(l4_header) + size
        if length > 600:
            frame = frame[:STORED]
        self.records.append((int(t * 1_000_000), frame, length))

    # -- TCP -------------------------------------------------------------------------------

    def tcp(self, t: float, src: str, sp: int, dst: str, dp: int, flags: int, data: bytes | int = b"",
            seq: int = 1, ack: int = 1) -> None:  # fmt: skip
        header = struct.pack("!HHIIBBHHH", sp, dp, seq, ack if flags & ACK else 0, 5 << 4, flags, 64240, 0, 0)
        self._add(t, src, dst, 6, header, data)

    def tcp_session(self, t: float, c: str, s: str, sp: int, exchanges: list[tuple[bytes | int, bytes | int]],
                    *, rtt: float = 0.02, think: float = 0.2, cp: int | None = None, mss: int = MSS,
                    close: bool = True) -> float:  # fmt: skip
        """Handshake, then each (request, response) in turn, then FIN both ways; returns the end time."""
        cp = cp or self.port(c)
        self.tcp(t, c, cp, s, sp, SYN)
        self.tcp(t + rtt / 2, s, sp, c, cp, SYN | ACK)
        self.tcp(t + rtt, c, cp, s, sp, ACK)
        t += rtt
        for request, response in exchanges:
            t = self._send(t, c, cp, s, sp, request, mss, rtt)
            t = self._send(t + rtt / 2, s, sp, c, cp, response, mss, rtt)
            self.tcp(t + rtt / 2, c, cp, s, sp, ACK)
            t += think
        if close:
            self.tcp(t, c, cp, s, sp, FIN | ACK)
            self.tcp(t + rtt / 2, s, sp, c, cp, FIN | ACK)
            self.tcp(t + rtt, c, cp, s, sp, ACK)
        return t + rtt

    def _send(self, t: float, a: str, ap: int, b: str, bp: int, data: bytes | int, mss: int, rtt: float) -> float:
        size = data if isinstance(data, int) else len(data)
        if size == 0:
            return t
        if not isinstance(data, int):
            for k in range(0, size, mss):
                self.tcp(t, a, ap, b, bp, PSH | ACK, data[k : k + mss])
                t += 0.0005
            return t
        sent = 0
        while sent < size:
            chunk = min(mss, size - sent)
            self.tcp(t, a, ap, b, bp, PSH | ACK if sent + chunk >= size else ACK, chunk)
            sent += chunk
            t += 0.0002
            if sent % (mss * 16) == 0:
                self.tcp(t + rtt / 2, b, bp, a, ap, ACK)
        return t

    def tcp_refused(self, t: float, c: str, s: str, sp: int, cp: int | None = None) -> None:
        cp = cp or self.port(c)
        self.tcp(t, c, cp, s, sp, SYN)
        self.tcp(t + 0.001, s, sp, c, cp, RST | ACK)

    def tcp_dropped(self, t: float, c: str, s: str, sp: int, cp: int | None = None) -> None:
        self.tcp(t, c, cp or self.port(c), s, sp, SYN)

    def tcp_half_open(self, t: float, c: str, s: str, sp: int, cp: int | None = None) -> None:
        """A SYN scan finding an open port: SYN, SYN/ACK, the scanner's reset."""
        cp = cp or self.port(c)
        self.tcp(t, c, cp, s, sp, SYN)
        self.tcp(t + 0.001, s, sp, c, cp, SYN | ACK)
        self.tcp(t + 0.002, c, cp, s, sp, RST)

    # -- UDP, DNS, ICMP ------------------------------------------------------------------------

    def udp(self, t: float, src: str, sp: int, dst: str, dp: int, data: bytes | int) -> None:
        size = data if isinstance(data, int) else len(data)
        self._add(t, src, dst, 17, struct.pack("!HHHH", sp, dp, 8 + size, 0), data)

    def dns(self, t: float, c: str, resolver: str, name: str, *, answer: bool = True, cp: int | None = None,
            qtype: int = 1) -> None:  # fmt: skip
        cp = cp or self.port(c)
        ident = self.rng.randrange(65536)
        self.udp(t, c, cp, resolver, 53, dns_message(name, ident, False, qtype))
        if answer:
            self.udp(t + 0.004, resolver, 53, c, cp, dns_message(name, ident, True, qtype))

    def icmp_echo(self, t: float, c: str, s: str, payload: int, seq: int, *, reply: bool = True,
                  ident: int = 1, data: bytes | None = None) -> None:  # fmt: skip
        """An echo request (and its reply) of `payload` zero bytes, a ping's fill, or of `data`."""
        data = bytes(payload) if data is None else data
        self._add(t, c, s, 1, struct.pack("!BBHHH", 8, 0, 0, ident, seq), data)
        if reply:
            self._add(t + 0.002, s, c, 1, struct.pack("!BBHHH", 0, 0, 0, ident, seq), data)

    def ntp(self, t: float, c: str, s: str) -> None:
        cp = 123
        self.udp(t, c, cp, s, 123, b"\x23" + bytes(47))
        self.udp(t + 0.01, s, 123, c, cp, b"\x24\x02" + bytes(46))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records.sort(key=lambda r: r[0])
        with open(path, "wb") as out:
            out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for t, frame, length in self.records:
                out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), length))
                out.write(frame)
        return path


# -- the campus -----------------------------------------------------------------------------

START = 1_794_787_200  # Monday 2026-11-16 00:00 UTC
DAY = 86400
RESOLVER, FILES, MAIL, GIT, INTRANET, NTP_SERVER = (
    "10.20.0.53", "10.20.0.10", "10.20.0.25", "10.20.0.22", "10.20.0.80", "10.20.0.123",
)  # fmt: skip
MONITOR = "10.20.0.5"
BACKUP_CLOUD = "52.94.10.20"
UPDATES = "23.45.67.89"
SITES = [
    "google.com", "wikipedia.org", "github.com", "microsoft.com", "office.com", "zoom.us", "slack.com", "amazon.com",
    "cloudflare.com", "apple.com", "bbc.co.uk", "nytimes.com", "stackoverflow.com", "python.org", "debian.org",
    "mozilla.org", "linkedin.com", "dropbox.com", "example.edu", "arxiv.org",
]  # fmt: skip
SUBS = ["www", "cdn", "api", "static", "img", "login", "assets", "media"]


def workstations(n: int) -> list[str]:
    return [f"10.20.{1 + i // 200}.{10 + i % 200}" for i in range(n)]


def _site_address(rng: random.Random, site: int, k: int) -> str:
    firsts = (13, 34, 52, 104, 142, 151, 157, 172, 185, 199)
    return f"{firsts[site % len(firsts)]}.{(site * 7) % 250 + 1}.{(site * 13 + k) % 250 + 1}.{k % 200 + 20}"


def _browse(cap: Capture, t: float, host: str) -> None:
    rng = cap.rng
    site = min(int(rng.paretovariate(1.2)) - 1, len(SITES) - 1)
    name = f"{rng.choice(SUBS)}.{SITES[site]}"
    cap.dns(t, host, RESOLVER, name)
    server = _site_address(rng, site, rng.randrange(4))
    exchanges = [(_client_hello(name), _server_hello())]
    for _ in range(rng.randint(1, 8)):
        exchanges.append((rng.randint(300, 1500), int(rng.lognormvariate(8.5, 1.5)) + 200))
    cap.tcp_session(t + 0.01, host, server, 443, exchanges, rtt=rng.uniform(0.01, 0.08), think=rng.uniform(0.05, 2))


def _smb(cap: Capture, t: float, host: str) -> None:
    rng = cap.rng
    exchanges = [(rng.randint(150, 400), rng.randint(150, 400))]
    exchanges += [(rng.randint(200, 4000), int(rng.lognormvariate(8, 1.8))) for _ in range(rng.randint(1, 12))]
    cap.tcp_session(t, host, FILES, 445, exchanges, rtt=0.001, think=rng.uniform(0.01, 0.5))


def _ssh_session(cap: Capture, t: float, host: str, hours: float) -> None:
    """An interactive SSH session: banner, then keystrokes and screens every half minute or so."""
    rng = cap.rng
    cp = cap.port(host)
    exchanges = [(b"SSH-2.0-OpenSSH_9.6\r\n", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"), (1500, 1200)]
    end = t + hours * 3600
    cap.tcp_session(t, host, GIT, 22, exchanges, cp=cp, close=False)
    now = t + 1
    while now < end:
        cap.tcp(now, host, cp, GIT, 22, PSH | ACK, rng.randint(36, 200))
        cap.tcp(now + 0.02, GIT, 22, host, cp, PSH | ACK, rng.randint(36, 1400))
        now += rng.uniform(5, 60)
    cap.tcp(now, host, cp, GIT, 22, FIN | ACK)
    cap.tcp(now + 0.01, GIT, 22, host, cp, FIN | ACK)


def benign_day(cap: Capture, day: int, hosts: list[str], *, weekend: bool, busy: str, p2p: str,
               developers: list[str], backup_host: str) -> None:  # fmt: skip
    """One day of the campus (times from START + day)."""
    rng = cap.rng
    base = START + day * DAY
    activity = 0.1 if weekend else 1.0
    for host in hosts:
        if rng.random() > activity:
            continue
        arrive = base + rng.uniform(7.5, 9.5) * 3600
        leave = arrive + rng.uniform(7, 9.5) * 3600
        for _ in range(rng.randint(20, 60)):
            _browse(cap, rng.uniform(arrive, leave), host)
        for _ in range(rng.randint(3, 20)):
            _smb(cap, rng.uniform(arrive, leave), host)
        for _ in range(rng.randint(1, 4)):  # mail: a short IMAPS check each time the client polls
            cap.tcp_session(rng.uniform(arrive, leave), host, MAIL, 993,
                            [(_client_hello("mail.campus.example"), _server_hello()), (rng.randint(100, 400),
                              rng.randint(200, 60000))])  # fmt: skip
        t = arrive
        while t < leave:  # NTP every 17 minutes or so
            cap.ntp(t, host, NTP_SERVER)
            t += rng.uniform(900, 1200)
    for host in developers:
        if not weekend and rng.random() < 0.8:
            _ssh_session(cap, base + rng.uniform(9, 11) * 3600, host, rng.uniform(0.5, 3))
    # every host checks for software updates every 6 hours, to the same popular server
    for host in hosts:
        offset = (ip_int(host) % 360) * 60
        for k in range(4):
            t = base + offset + k * 6 * 3600 + rng.uniform(-120, 120)
            cap.tcp_session(t, host, UPDATES, 443, [(_client_hello("update.vendor.example"), _server_hello()),
                                                   (rng.randint(600, 700), rng.randint(500, 90000))])  # fmt: skip
    # the monitoring station pings every host every 5 minutes during the day (a few are off)
    for k, host in enumerate(hosts[::4]):
        up = rng.random() > 0.1
        for m in range(0, 24 * 12, 6):
            cap.icmp_echo(base + m * 300 + k * 0.05, MONITOR, host, 56, m, reply=up)
    # discovery chatter: SSDP, mDNS and NetBIOS name queries to group and broadcast addresses
    for host in hosts[:: max(1, len(hosts) // 20)]:
        for m in range(0, 24 * 60, 15 if not weekend else 60):
            t = base + m * 60 + rng.uniform(0, 30)
            cap.udp(t, host, 1900, "239.255.255.250", 1900, b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
            cap.udp(t + 1, host, 5353, "224.0.0.251", 5353, dns_message("_printer._tcp.local", 0, False))
            cap.udp(t + 2, host, 137, "10.20.255.255", 137, bytes(50))
    if not weekend:
        # a busy but ordinary client: one page of an intranet app with 300 objects, over six connections
        t = base + 11 * 3600
        for c in range(6):
            cap.tcp_session(t + c * 0.05, busy, INTRANET, 80,
                            [(rng.randint(350, 900), int(rng.lognormvariate(8, 1.5))) for _ in range(50)],
                            rtt=0.002, think=0.05)  # fmt: skip
        # a peer-to-peer client fanning out to peers all over the Internet, half of them answering
        t = base + 14 * 3600
        for k in range(300):
            peer = f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            port = rng.randrange(1025, 65535)
            cap.udp(t + k * 0.8, p2p, 51413, peer, port, rng.randint(60, 120))
            if rng.random() < 0.5:
                cap.udp(t + k * 0.8 + 0.1, peer, port, p2p, 51413, rng.randint(100, 300))
    # the nightly backup: a few hundred MB up to the same cloud server
    t = base + 2 * 3600
    for _ in range(6):
        t = cap.tcp_session(t, backup_host, BACKUP_CLOUD, 443,
                            [(_client_hello("backup.cloud.example"), _server_hello()),
                             (rng.randint(45, 55) * 1_000_000, 2000)], mss=JUMBO) + 5  # fmt: skip


# -- planted attacks: one attacking host each -------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    kind: str
    """The alert kind that counts as detecting it."""
    host: str
    """The responsible host the alert must name."""
    plant: Callable[[Capture, float], None]
    """Write the attack starting at a time."""


def scan_resets(cap: Capture, t: float, host: str = "10.20.1.30", target: str = FILES) -> None:
    """A vertical SYN scan of 1,000 ports answered by resets (a few open: SYN/ACK, then the scanner's RST)."""
    for k, port in enumerate(range(1, 1001)):
        if port in (22, 80, 139, 445):
            cap.tcp_half_open(t + k * 0.05, host, target, port)
        else:
            cap.tcp_refused(t + k * 0.05, host, target, port)


def scan_dropped(cap: Capture, t: float, host: str = "198.51.100.7", target: str = MAIL) -> None:
    """A slow vertical scan of 500 ports behind a firewall that drops them: lone SYNs, one a second."""
    ports = list(range(1, 1024))
    cap.rng.shuffle(ports)
    for k, port in enumerate(ports[:500]):
        cap.tcp_dropped(t + k * 1.0, host, target, port)


def sweep(cap: Capture, t: float, host: str = "10.20.1.31", net: str = "10.20.2") -> None:
    """A horizontal sweep of one /24 on port 445: most hosts refuse or never answer, a few are open."""
    for k in range(1, 255):
        target = f"{net}.{k}"
        r = cap.rng.random()
        if r < 0.1:
            cap.tcp_half_open(t + k * 0.2, host, target, 445)
        elif r < 0.5:
            cap.tcp_refused(t + k * 0.2, host, target, 445)
        else:
            cap.tcp_dropped(t + k * 0.2, host, target, 445)


def ssh_brute_force(cap: Capture, t: float, host: str = "203.0.113.50", target: str = GIT) -> None:
    """200 password guesses, one connection each: banners, key exchange, a failed password, disconnect."""
    rng = cap.rng
    for k in range(200):
        cap.tcp_session(t + k * 3.0, host, target, 22,
                        [(b"SSH-2.0-libssh_0.9.6\r\n", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
                         (rng.randint(1400, 1460), rng.randint(1100, 1150)), (rng.randint(300, 330), 52)],
                        rtt=0.03, think=0.1)  # fmt: skip


def http_brute_force(cap: Capture, t: float, host: str = "10.20.1.32", target: str = INTRANET) -> None:
    """150 login attempts on an intranet form, a new connection each, each refused with the same 401 page."""
    rng = cap.rng
    for k in range(150):
        request = (b"POST /login HTTP/1.1\r\nHost: intranet\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                   b"Content-Length: 40\r\n\r\nuser=admin&password=" + bytes(rng.randint(6, 12)))  # fmt: skip
        cap.tcp_session(t + k * 2.0, host, target, 80, [(request, 420)], rtt=0.002)


def beacon(cap: Capture, t: float, host: str = "10.20.1.33", c2: str = "185.100.87.202") -> None:
    """A C2 implant calling home every 5 minutes with 20% jitter for 12 hours; small, similar check-ins."""
    rng = cap.rng
    end = t + 12 * 3600
    while t < end:
        cap.tcp_session(t, host, c2, 443, [(_client_hello("cdn-static-assets.net"), _server_hello()),
                                            (rng.randint(400, 450), rng.randint(200, 3000))])  # fmt: skip
        t += 300 * rng.uniform(0.8, 1.2)


def dns_tunnel(cap: Capture, t: float, host: str = "10.20.1.34", domain: str = "t.exfil-tunnel.net") -> None:
    """2,000 queries of unique, encoded names under one domain in 20 minutes (data in the labels)."""
    rng = cap.rng
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    for k in range(2000):
        label = "".join(rng.choice(alphabet) for _ in range(50))
        cap.dns(t + k * 0.6, host, RESOLVER, f"{label}.{k % 7}.{domain}")


def slow_exfiltration(cap: Capture, t: float, host: str = "10.20.1.35", drop: str = "45.77.10.20") -> None:
    """150 MB uploaded to one server over 10 hours, 60 connections of 2.5 MB."""
    for _ in range(60):
        cap.tcp_session(t, host, drop, 443, [(_client_hello("files.storage-sync.io"), _server_hello()),
                                             (2_500_000, 300)], mss=JUMBO)  # fmt: skip
        t += 600


def icmp_tunnel(cap: Capture, t: float, host: str = "10.20.1.36", peer: str = "45.32.1.2") -> None:
    """2,000 echo requests carrying 600 bytes of tunnelled data each over half an hour, answered in kind."""
    rng = cap.rng
    for k in range(2000):
        cap.icmp_echo(t + k * 0.9, host, peer, 600, k, ident=0x4242, data=rng.randbytes(600))


def long_c2(cap: Capture, t: float, host: str = "10.20.1.37", c2: str = "91.219.236.10") -> None:
    """One TCP connection held open for 20 hours, a small keep-alive each way every minute."""
    rng = cap.rng
    cp = cap.port(host)
    cap.tcp_session(t, host, c2, 8443, [(rng.randint(100, 200), rng.randint(100, 200))], cp=cp, close=False)
    now, end = t + 60, t + 20 * 3600
    while now < end:
        cap.tcp(now, host, cp, c2, 8443, PSH | ACK, rng.randint(30, 60))
        cap.tcp(now + 0.05, c2, 8443, host, cp, PSH | ACK, rng.randint(30, 60))
        now += 60
    cap.tcp(now, host, cp, c2, 8443, FIN | ACK)
    cap.tcp(now + 0.05, c2, 8443, host, cp, FIN | ACK)


def xmas_scan(cap: Capture, t: float, host: str = "10.20.1.38", target: str = FILES) -> None:
    """nmap -sX of ten ports: FIN, PSH and URG probes; closed ports answer with a reset."""
    for k, port in enumerate((21, 22, 23, 25, 80, 110, 139, 443, 445, 3389)):
        cp = cap.port(host)
        cap.tcp(t + k * 0.3, host, cp, target, port, FIN | PSH | URG)
        if port not in (22, 139, 445):
            cap.tcp(t + k * 0.3 + 0.001, target, port, host, cp, RST | ACK)


def slow_scan(cap: Capture, t: float, host: str = "10.20.1.39", target: str = GIT) -> None:
    """nmap -T1 style: 30 ports, one SYN every 150 s (75 minutes), every one refused."""
    for k, port in enumerate(range(8000, 8030)):
        cap.tcp_refused(t + k * 150.0, host, target, port)


def small_sweep(cap: Capture, t: float, host: str = "10.20.1.40", net: str = "10.20.3") -> None:
    """Twelve hosts of one network tried on RDP in ten minutes; none answers."""
    for k in range(12):
        cap.tcp_dropped(t + k * 50.0, host, f"{net}.{10 + k * 7}", 3389)


def txt_tunnel(cap: Capture, t: float, host: str = "10.20.1.41", domain: str = "cdn-sync.example.net") -> None:
    """A DNS C2 channel under the volume thresholds: 30 TXT questions for encoded names in ten minutes."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for k in range(30):
        label = "".join(cap.rng.choice(alphabet) for _ in range(40))
        cap.dns(t + k * 20.0, host, RESOLVER, f"{label}.{domain}", qtype=16)


def icmp_backdoor(cap: Capture, t: float, host: str = "10.20.1.42", peer: str = "45.32.7.9") -> None:
    """Pingback-style: ten commands in echo requests, text padded with zeros to a fixed buffer, a minute apart."""
    for k, command in enumerate(["shell", "whoami", "ipconfig", "dir", "upload", "exec", "download", "ls", "ps",
                                 "exit"]):  # fmt: skip
        cap.icmp_echo(t + k * 60.0, host, peer, 788, k, ident=1, data=command.encode().ljust(788, b"\x00"))


def session_polls(cap: Capture, t: float, host: str = "10.20.1.43", c2: str = "159.65.3.21") -> None:
    """An implant polling inside one TLS connection for half an hour: a 300-byte request every 10 s (+-30%)."""
    rng = cap.rng
    cp = cap.port(host)
    cap.tcp_session(t, host, c2, 443, [(_client_hello("api.telemetry-cdn.net"), _server_hello())], cp=cp,
                    close=False)  # fmt: skip
    now, end = t + 10, t + 1800
    while now < end:
        cap.tcp(now, host, cp, c2, 443, PSH | ACK, rng.randint(280, 320))
        cap.tcp(now + 0.08, c2, 443, host, cp, PSH | ACK, rng.randint(60, 900))
        now += 10 * rng.uniform(0.7, 1.3)
    cap.tcp(now, host, cp, c2, 443, FIN | ACK)
    cap.tcp(now + 0.05, c2, 443, host, cp, FIN | ACK)


ATTACKS = [
    Attack("vertical scan answered by resets", "port-scan", "10.20.1.30", scan_resets),
    Attack("vertical scan of dropped probes", "port-scan", "198.51.100.7", scan_dropped),
    Attack("horizontal sweep", "host-sweep", "10.20.1.31", sweep),
    Attack("SSH brute force", "brute-force", "203.0.113.50", ssh_brute_force),
    Attack("HTTP login brute force", "brute-force", "10.20.1.32", http_brute_force),
    Attack("beacon with jitter over 12 hours", "beacon", "10.20.1.33", beacon),
    Attack("DNS tunnel", "dns-tunnel", "10.20.1.34", dns_tunnel),
    Attack("slow exfiltration", "exfiltration", "10.20.1.35", slow_exfiltration),
    Attack("ICMP tunnel", "icmp-tunnel", "10.20.1.36", icmp_tunnel),
    Attack("long-lived C2", "long-connection", "10.20.1.37", long_c2),
    Attack("XMAS scan of ten ports", "port-scan", "10.20.1.38", xmas_scan),
    Attack("slow scan, one port every 150 s", "port-scan", "10.20.1.39", slow_scan),
    Attack("small sweep of twelve hosts", "host-sweep", "10.20.1.40", small_sweep),
    Attack("DNS TXT channel under the volume thresholds", "dns-tunnel", "10.20.1.41", txt_tunnel),
    Attack("ICMP backdoor commands", "icmp-tunnel", "10.20.1.42", icmp_backdoor),
    Attack("polls inside one TLS connection", "beacon", "10.20.1.43", session_polls),
]


def week(path: Path, *, hosts: int = 100, days: int = 7, seed: int = 1, attacks: bool = True) -> tuple[Path, dict]:
    """A week of the campus (from Monday) with, if asked, every planted attack on its own day and hour.

    Returns the capture and {attack name: start time}."""
    cap = Capture(seed)
    rng = cap.rng
    ws = workstations(hosts)
    busy, p2p, backup_host = ws[0], ws[1], ws[2]
    developers = ws[3:13]
    for day in range(days):
        benign_day(cap, day, ws, weekend=day >= 5, busy=busy, p2p=p2p, developers=developers,
                   backup_host=backup_host)  # fmt: skip
    starts = {}
    if attacks:
        for k, attack in enumerate(ATTACKS):
            day = 2 + k % max(1, min(days, 7) - 2)
            t = START + day * DAY + (8 + (k * 5) % 9) * 3600 + rng.uniform(0, 1800)
            attack.plant(cap, t)
            starts[attack.name] = t
    return cap.write(path), starts
