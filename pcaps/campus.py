"""A small campus week, generated with scapy: the traffic `make demo` replays.

Sunday 2026-11-15 to Monday 2026-11-23 (UTC), so ISO week 2026-W47 is covered
with a day on each side; Wednesday 2026-11-18 has no traffic at all (a sensor
outage), so an empty day shows in the report. Twelve local hosts and three
local servers (DNS, files, NTP) in 10.20.0.0/16:

- DNS lookups to the site's resolver, which asks the Internet in turn;
- web over TLS, plain HTTP and QUIC, and video streaming (long TLS downloads);
- SSH to a local server and to an outside host, NTP to the site's clock;
- SSDP searches and mDNS queries nobody answers, day and night;
- peer-to-peer: file copies between two hosts (two-way), and one host
  knocking on its neighbours' SMB port with nobody answering (one-way);
- three planted anomalies (`PLANTED`): a bulk upload (scp) to an unusual
  destination abroad, DNS tunnelling through the resolver, and a SYN scan of
  a neighbour whose firewall drops the probes.

Seeded: the same bytes every time. `python -m pcaps.campus OUT.pcap [--days N]`
writes it (N < 9 gives a shorter week for tests); `manifest()` describes what
was planted, independently of any ntds code.
"""

from __future__ import annotations

import random
import sys
from decimal import Decimal
from pathlib import Path

from scapy.all import DNS, DNSQR, DNSRR, NTP, Raw, wrpcap

from pcaps.generate import Conversation, _client_hello, _server_hello

DAY_US = 86_400_000_000
START = Decimal(1794700800)  # 2026-11-15 00:00:00 UTC, a Sunday
DAYS = 9
EMPTY_DAY = 3  # Wednesday 2026-11-18
LOCAL_NET = "10.20.0.0/16"
RESOLVER, FILES, CLOCK = "10.20.0.53", "10.20.0.20", "10.20.0.123"
SERVERS = [RESOLVER, FILES, CLOCK]
HOSTS = [f"10.20.1.{10 + i}" for i in range(12)]
UPSTREAM_DNS = "9.9.9.9"
WEB = ["142.250.184.14", "151.101.1.140", "91.198.174.192", "185.15.59.224", "140.82.121.4", "13.107.42.14"]
VIDEO = ["208.65.153.238", "45.57.40.1"]
SSH_OUT = "193.0.6.139"
SITE_COUNTRY = "CO"

UPLOAD_SRC, UPLOAD_DST = "10.20.1.17", "103.79.78.9"
TUNNEL_SRC, TUNNEL_DOMAIN = "10.20.1.14", "t.exfil-relay.example"
SCAN_SRC, SCAN_DST = "10.20.1.19", "10.20.1.13"
PLANTED = {
    "bulk upload": {"src": UPLOAD_SRC, "dst": UPLOAD_DST, "dst_port": 22, "day": 4},
    "dns tunnelling": {"src": TUNNEL_SRC, "dst": RESOLVER, "dst_port": 53, "day": 5},
    "port scan": {"src": SCAN_SRC, "dst": SCAN_DST, "dst_port": None, "day": 6},
}
"""Each anomaly: who, to whom, which port (None: many), and the day (0 = Sunday 15 November)."""


class _Clock:
    """Absolute times in µs from START, handed to Conversation (which counts from its own BASE)."""

    OFFSET = int((Decimal(1794816000) - START) * 1_000_000)  # pcaps.generate.BASE is 2026-11-16 08:00

    @classmethod
    def us(cls, day: int, seconds: float) -> int:
        return day * DAY_US + int(seconds * 1_000_000) - cls.OFFSET


def _dns(rng, day, t, host, name, sport) -> list:
    c = Conversation(host, RESOLVER, sport, 53)
    q = DNS(id=sport, rd=1, qd=DNSQR(qname=name))
    c.udp(_Clock.us(day, t), True, q)
    c.udp(_Clock.us(day, t) + rng.randint(300, 2000), False, DNS(id=sport, qr=1, qd=q.qd, an=DNSRR(rrname=name)))
    up = Conversation(RESOLVER, UPSTREAM_DNS, 30000 + sport % 30000, 53)
    up.udp(_Clock.us(day, t) + 100, True, q)
    up.udp(_Clock.us(day, t) + 20_000, False, DNS(id=sport, qr=1, qd=q.qd, an=DNSRR(rrname=name)))
    return c.packets + up.packets


def _tls(rng, day, t, host, server, sport, name, down_packets, up_every=4, gap=(2_000, 60_000)) -> list:
    c = Conversation(host, server, sport, 443)
    rtt = rng.randint(8_000, 80_000)
    u = _Clock.us(day, t)
    c.handshake(u, rtt)
    c.tcp(u + 3 * rtt, True, "PA", _client_hello(name))
    c.tcp(u + 4 * rtt, False, "PA", _server_hello() + b"\x17\x03\x03\x00\x10" + b"e" * 16)
    u += 5 * rtt
    for k in range(down_packets):
        u += rng.randint(*gap)
        c.tcp(u, False, "PA", b"\x17\x03\x03\x05\x00" + b"v" * rng.randint(900, 1400))
        if k % up_every == 0:
            c.tcp(u + 300, True, "A")
    c.close(u + rng.randint(5_000, 500_000), rtt)
    return c.packets


def _http(rng, day, t, host, server, sport) -> list:
    """Plain web: one page, keep-alive for a couple of its objects."""
    c = Conversation(host, server, sport, 80)
    rtt = rng.randint(8_000, 60_000)
    u = _Clock.us(day, t)
    c.handshake(u, rtt)
    for k in range(rng.randint(1, 3)):
        u += 3 * rtt
        c.tcp(u, True, "PA", f"GET /page{k}.html HTTP/1.1\r\nHost: www.example.org\r\n\r\n".encode())
        body = b"<p>" * rng.randint(100, 900)
        c.tcp(u + rtt, False, "PA", b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + body[:1400])
    c.close(u + 2 * rtt, rtt)
    return c.packets


def _quic(rng, day, t, host, server, sport) -> list:
    c = Conversation(host, server, sport, 443)
    u = _Clock.us(day, t)
    dcid = bytes(rng.randrange(256) for _ in range(8))
    initial = b"\xc3\x00\x00\x00\x01\x08" + dcid + b"\x00\x00\x44\xd0" + bytes(rng.randrange(256) for _ in range(1180))
    c.udp(u, True, Raw(initial))
    for k in range(rng.randint(4, 20)):
        u += rng.randint(1_000, 40_000)
        c.udp(u, False, Raw(b"\x40" + dcid + bytes(rng.randrange(256) for _ in range(rng.randint(600, 1200)))))
        if k % 3 == 0:
            c.udp(u + 200, True, Raw(b"\x40" + dcid + b"\0" * 40))
    return c.packets


def _ssh(rng, day, t, host, server, sport) -> list:
    c = Conversation(host, server, sport, 22)
    u = _Clock.us(day, t)
    c.handshake(u, 5_000)
    c.tcp(u + 20_000, False, "PA", b"SSH-2.0-OpenSSH_9.6\r\n")
    c.tcp(u + 30_000, True, "PA", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    u += 40_000
    for k in range(rng.randint(6, 30)):
        u += rng.randint(50_000, 3_000_000)
        c.tcp(u, k % 2 == 0, "PA", b"\0\0\0\x2c" + bytes(rng.choice((36, 44, 52, 108))))
    c.close(u + 100_000, 5_000)
    return c.packets


def _ntp(rng, day, t, host) -> list:
    stamps = {"ref": 3972412800, "orig": 3972412800, "recv": 3972412800, "sent": 3972412800}
    c = Conversation(host, CLOCK, 123, 123)
    c.udp(_Clock.us(day, t), True, NTP(version=4, mode=3, **stamps))
    c.udp(_Clock.us(day, t) + rng.randint(300, 3000), False, NTP(version=4, mode=4, stratum=2, **stamps))
    return c.packets


def _chatter(rng, day, t, host, sport) -> list:
    """SSDP search and mDNS query to their multicast groups: nobody answers."""
    ssdp = Conversation(host, "239.255.255.250", sport, 1900)
    search = (
        b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n'
    )
    ssdp.udp(_Clock.us(day, t), True, Raw(search))
    mdns = Conversation(host, "224.0.0.251", 5353, 5353)
    mdns.udp(_Clock.us(day, t) + 5_000, True, DNS(qd=DNSQR(qname="_googlecast._tcp.local", qtype="PTR")))
    return ssdp.packets + mdns.packets


def _peer_copy(rng, day, t, a, b, sport, chunks) -> list:
    """A file copy between two ordinary hosts (SMB port), both ways busy."""
    c = Conversation(a, b, sport, 445)
    u = _Clock.us(day, t)
    c.handshake(u, 400)
    u += 2_000
    for _ in range(chunks):
        u += rng.randint(500, 5_000)
        c.tcp(u, True, "PA", b"\xfeSMB" + b"w" * rng.randint(800, 1400))
        c.tcp(u + 200, False, "PA", b"\xfeSMB" + b"k" * 60)
    c.close(u + 5_000, 400)
    return c.packets


def _knock(day, t, a, b, sport) -> list:
    """A SYN to a neighbour's SMB port that nobody answers, tried twice (one-way peer-to-peer)."""
    c = Conversation(a, b, sport, 445)
    c.tcp(_Clock.us(day, t), True, "S")
    c.seq[True] -= 1
    c.tcp(_Clock.us(day, t) + 1_000_000, True, "S")
    return c.packets


def _bulk_upload(rng, day, t) -> list:
    """Planted: 3 MB copied up over SSH (scp) to a host no one else talks to, little coming back."""
    c = Conversation(UPLOAD_SRC, UPLOAD_DST, 51515, 22)
    u = _Clock.us(day, t)
    c.handshake(u, 150_000)
    c.tcp(u + 400_000, False, "PA", b"SSH-2.0-OpenSSH_8.4\r\n")
    c.tcp(u + 450_000, True, "PA", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    u += 700_000
    for k in range(2200):
        u += rng.randint(2_000, 12_000)
        c.tcp(u, True, "PA", b"\0\0\x05\x6c" + b"u" * 1388)
        if k % 40 == 0:
            c.tcp(u + 150_000, False, "A")
    c.close(u + 200_000, 150_000)
    return c.packets


def _dns_tunnel(rng, day, t) -> list:
    """Planted: data smuggled in long query names, all from one socket, answered in TXT records."""
    c = Conversation(TUNNEL_SRC, RESOLVER, 41414, 53)
    u = _Clock.us(day, t)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for k in range(240):
        u += rng.randint(200_000, 900_000)
        label = "".join(rng.choice(alphabet) for _ in range(60))
        name = f"{label}.{''.join(rng.choice(alphabet) for _ in range(50))}.{k}.{TUNNEL_DOMAIN}"
        q = DNS(id=k, rd=1, qd=DNSQR(qname=name, qtype="TXT"))
        c.udp(u, True, q)
        txt = "".join(rng.choice(alphabet) for _ in range(180))
        c.udp(u + 30_000, False, DNS(id=k, qr=1, qd=q.qd, an=DNSRR(rrname=name, type="TXT", rdata=txt)))
    return c.packets


def _port_scan(rng, day, t) -> list:
    """Planted: a SYN scan of 200 ports of a neighbour whose firewall drops the probes; like nmap, the
    scanner tries each port twice."""
    pkts = []
    u = _Clock.us(day, t)
    for k, port in enumerate(rng.sample(range(1, 10_000), 200)):
        c = Conversation(SCAN_SRC, SCAN_DST, 60000, port)
        c.tcp(u + k * 20_000, True, "S")
        c.seq[True] -= 1
        c.tcp(u + k * 20_000 + 1_000_000, True, "S")
        pkts += c.packets
    return pkts


def week(days: int = DAYS, seed: int = 47, planted: bool = True) -> list:
    """The packets, time-ordered; planted=False and another seed give clean training traffic."""
    rng = random.Random(seed)
    pkts: list = []
    sport = 20000
    for day in range(days):
        if day == EMPTY_DAY:
            continue
        weekend = day in (0, 6, 7)
        for h in HOSTS:
            # background chatter round the clock, a little NTP
            for t in sorted(rng.uniform(0, 86_000) for _ in range(3)):
                sport += 1
                pkts += _chatter(rng, day, t, h, 30000 + sport % 30000)
            pkts += _ntp(rng, day, rng.uniform(0, 86_000), h)
            sessions = rng.randint(2, 5) if weekend else rng.randint(8, 16)
            for _ in range(sessions):
                sport += 1
                t = rng.uniform(8 * 3600, 20 * 3600)
                kind = rng.choices(("web", "http", "quic", "video", "ssh", "ssh_out"), weights=(44, 10, 20, 6, 6, 2))[0]
                pkts += _dns(rng, day, t - 0.05, h, f"site{rng.randrange(40)}.example.org", sport)
                if kind == "web":
                    pkts += _tls(rng, day, t, h, rng.choice(WEB), sport, "www.example.org", rng.randint(2, 12))
                elif kind == "http":
                    pkts += _http(rng, day, t, h, rng.choice(WEB[2:]), sport)
                elif kind == "quic":
                    pkts += _quic(rng, day, t, h, rng.choice(WEB[:2]), sport)
                elif kind == "video":
                    pkts += _tls(rng, day, t, h, rng.choice(VIDEO), sport, "video.example.net", rng.randint(80, 160),
                                 up_every=8, gap=(20_000, 400_000))  # fmt: skip
                elif kind == "ssh":
                    pkts += _ssh(rng, day, t, h, FILES, sport)
                else:
                    pkts += _ssh(rng, day, t, h, SSH_OUT, sport)
        if not weekend:
            for _ in range(3):
                a, b = rng.sample(HOSTS[:6], 2)
                sport += 1
                pkts += _peer_copy(rng, day, rng.uniform(9 * 3600, 18 * 3600), a, b, sport, rng.randint(20, 60))
            knocker = HOSTS[8]
            for b in HOSTS[9:]:
                sport += 1
                pkts += _knock(day, rng.uniform(0, 86_000), knocker, b, 30000 + sport % 30000)
    for name, what in PLANTED.items() if planted else ():
        if what["day"] < days and what["day"] != EMPTY_DAY:
            t = 14 * 3600 + 600 * list(PLANTED).index(name)
            plant = {"bulk upload": _bulk_upload, "dns tunnelling": _dns_tunnel, "port scan": _port_scan}[name]
            pkts += plant(rng, what["day"], t)
    return sorted(pkts, key=lambda p: p.time)


def manifest(days: int = DAYS) -> dict:
    """What the capture holds, for tests and the demo's summary: no ntds code involved."""
    return {
        "first_day": "2026-11-15",
        "days": days,
        "empty_day": "2026-11-18",
        "local_networks": [LOCAL_NET],
        "local_servers": SERVERS,
        "site_country": SITE_COUNTRY,
        "planted": {k: v for k, v in PLANTED.items() if v["day"] < days},
    }


def write(path: Path, days: int = DAYS, training: bool = False) -> Path:
    """Write the week (or, with training, anomaly-free traffic of another seed for a site baseline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    wrpcap(str(tmp), week(days, seed=7, planted=False) if training else week(days))
    tmp.replace(path)
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the campus week capture")
    ap.add_argument("output", type=Path)
    ap.add_argument("--days", type=int, default=DAYS)
    ap.add_argument("--training", action="store_true", help="anomaly-free traffic of another seed, for a baseline")
    a = ap.parse_args()
    print(write(a.output, a.days, a.training), file=sys.stderr)
