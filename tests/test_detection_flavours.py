"""The flavours of issue 24 on captures made here with scapy: what the meter reads inside payloads (checked
against scapy's own parse of the same packets), and each detector's new evidence, with its benign twin quiet.

- ICMP: payloads that are no ping fill (text padded with zeros, bytes with no pattern) make a tunnel; Linux,
  Windows and MTU-test pings of the same count and size do not.
- DNS: a tunnel under the volume thresholds, asking TXT records for encoded names, is found; the same names
  asked by several local clients are a service; 40 long but repeated names are no tunnel.
- Scans: XMAS, NULL and FIN probes of a few ports, a UDP probe of many ports, a slow scan (one port every
  3 minutes) and a small sweep of 12 hosts that all fail are found; the same hosts answering are not.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from frames import ether
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.utils import rdpcap, wrpcap

from ntds.detect.baseline import Baseline
from ntds.detect.detection import Detection
from ntds.flows.meter import FlowMeter

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "config" / "baseline.json"
T0 = 1_794_787_200.0
HOSTS = ("port-scan", "host-sweep", "dns-tunnel", "icmp-tunnel", "beacon", "brute-force")


def write(path: Path, packets: list) -> Path:
    wrpcap(str(path), sorted(packets, key=lambda p: p.time))
    return path


def at(packet, t: float):
    packet.time = T0 + t
    return packet


def meter(path: Path) -> list:
    return [r.traffic for r in FlowMeter("unicauca", single_packet_flows=True).read([path])]


def alerts(path: Path) -> list[dict]:
    detection = Detection(Baseline.load(BASELINE))
    records = list(FlowMeter("unicauca", single_packet_flows=True).read([path]))
    return [a for a in detection.process(records).alerts + detection.close() if a["kind"] in HOSTS]


def told(path: Path) -> set[tuple[str, str]]:
    return {(a["kind"], a["src_ip"]) for a in alerts(path)}


# -- ICMP ---------------------------------------------------------------------------------------------------


def pings(payloads: list[bytes], gap: float = 1.0, src: str = "10.1.2.3", dst: str = "10.9.9.9") -> list:
    out = []
    for k, data in enumerate(payloads):
        out.append(at(ether() / IP(src=src, dst=dst) / ICMP(type=8, id=7, seq=k) / data, k * gap))
        out.append(at(ether() / IP(src=dst, dst=src) / ICMP(type=0, id=7, seq=k) / data, k * gap + 0.001))
    return out


def linux_ping(k: int, size: int = 56) -> bytes:
    stamp = int(T0 + k).to_bytes(8, "little") + (123456 + k).to_bytes(8, "little")
    return stamp + bytes(i & 0xFF for i in range(16, size))


WINDOWS = b"abcdefghijklmnopqrstuvwabcdefghi"


@pytest.mark.parametrize(
    "what,payloads,carried",
    [
        ("linux", [linux_ping(k) for k in range(30)], 0),
        ("windows", [WINDOWS] * 30, 0),
        ("mtu test", [linux_ping(k, 1472) for k in range(30)], 0),
        ("commands", [(c.encode() + bytes(780 - len(c))) for c in ["shell", "upload", "exec", "download"] * 2], 8),
        ("random", [os.urandom(200 + 37 * k) for k in range(7)], 7),
    ],
)
def test_icmp_payloads_are_judged_against_a_ping_fill_and_counted_as_scapy_counts_them(tmp_path, what, payloads,
                                                                                       carried):  # fmt: skip
    path = write(tmp_path / "icmp.pcap", pings(payloads, gap=2.0))
    flows = [t for t in meter(path) if t.icmp]
    requests = sum(t.icmp.requests for t in flows)
    replies = sum(t.icmp.replies for t in flows)
    packets = rdpcap(str(path))
    assert requests == sum(1 for p in packets if p[ICMP].type == 8)
    assert replies == sum(1 for p in packets if p[ICMP].type == 0)
    assert sum(t.icmp.carried for t in flows) == 2 * carried  # each request and its echoed reply
    sizes = [len(bytes(p[ICMP].payload)) for p in packets]
    assert min(t.icmp.payload_min for t in flows) == min(sizes)
    assert max(t.icmp.payload_max for t in flows) == max(sizes)
    kinds = told(path)
    if carried >= 6 // 2:  # 6 packets: three commands and their replies
        assert ("icmp-tunnel", "10.1.2.3") in kinds, kinds
    else:
        assert not kinds, kinds


def test_a_ping_tunnel_alert_says_what_was_carried(tmp_path):
    payloads = [c.encode() + bytes(780 - len(c)) for c in ["whoami", "dir", "get a.txt", "put b"]]
    path = write(tmp_path / "backdoor.pcap", pings(payloads, gap=20.0))
    alert = next(a for a in alerts(path) if a["kind"] == "icmp-tunnel")
    assert alert["src_ip"] == "10.1.2.3" and "carrying data" in alert["signature"]
    assert alert["explanation"][0]["text"].startswith("8 ICMP packets")


def test_echo_replies_to_no_request_are_unmatched(tmp_path):
    src, dst = "10.1.2.3", "10.9.9.9"
    replies = [at(ether() / IP(src=src, dst=dst) / ICMP(type=0, id=9, seq=k) / WINDOWS, k) for k in range(8)]
    path = write(tmp_path / "replies.pcap", replies)
    flows = [t for t in meter(path) if t.icmp]
    assert sum(t.icmp.unmatched for t in flows) == 8
    assert ("icmp-tunnel", src) in told(path)


# -- DNS ----------------------------------------------------------------------------------------------------


def lookups(names: list[str], qtype: str = "TXT", client: str = "10.1.2.3", resolver: str = "10.1.0.53",
            gap: float = 10.0, start: float = 0.0) -> list:  # fmt: skip
    out = []
    for k, name in enumerate(names):
        sport = 30000 + k
        t = start + k * gap
        ask = ether() / IP(src=client, dst=resolver) / UDP(sport=sport, dport=53) / DNS(
            id=k, rd=1, qd=DNSQR(qname=name, qtype=qtype))  # fmt: skip
        answer = (
            ether()
            / IP(src=resolver, dst=client)
            / UDP(sport=53, dport=sport)
            / DNS(id=k, qr=1, qd=DNSQR(qname=name, qtype=qtype), an=DNSRR(rrname=name, type="TXT", rdata="ok" * 60))
        )
        out += [at(ask, t), at(answer, t + 0.02)]
    return out


def encoded(n: int, seed: int = 0) -> list[str]:
    return [base64.b32encode(os.urandom(25)).decode().strip("=").lower() + ".t.evil-example.com" for _ in range(n)]


def test_dns_questions_are_read_as_scapy_reads_them(tmp_path):
    names = encoded(3) + ["www.example.org"]
    path = write(tmp_path / "dns.pcap", lookups(names, qtype="MX"))
    flows = sorted((t for t in meter(path) if t.dns), key=lambda t: t.start_ms)
    assert [t.dns.qtype for t in flows] == [15] * 4  # MX
    assert [t.dns.answers for t in flows] == [1] * 4
    answers = [p for p in rdpcap(str(path)) if p[DNS].qr == 1]
    assert [t.dns.reply_max for t in flows] == [len(bytes(p[DNS])) for p in answers]
    assert [t.dns.encoded for t in flows] == [1, 1, 1, 0] and [t.dns.data_types for t in flows] == [1] * 4


def test_a_txt_tunnel_below_the_volume_thresholds_is_found_by_its_encoded_names(tmp_path):
    """12 TXT questions for encoded names in 2 minutes: far below 60 names or 300 packets. The alert goes out at
    the 10th (20 encoded names, halved: every question asks for TXT)."""
    path = write(tmp_path / "tunnel.pcap", lookups(encoded(12)))
    got = [a for a in alerts(path) if a["kind"] == "dns-tunnel"]
    assert [(a["src_ip"], a["domain"]) for a in got][:1] == [("10.1.2.3", "evil-example.com")]
    texts = " ".join(e["text"] for e in got[0]["explanation"])
    assert (
        "10 unique names with 24+ characters" in texts
        and "(threshold 10 in 10 min)" in texts
        and "TXT" in texts
        and "bits a character" in texts
    )


def test_encoded_names_asked_in_turn_on_one_socket_count_one_by_one(tmp_path):
    """A tunnel on one socket is one flow: nDPI names only its first question; the meter counts the rest."""
    names = encoded(12)
    packets = lookups(names)
    for p in packets:  # one client port for every question
        if p[UDP].dport == 53:
            p[UDP].sport = 31337
        else:
            p[UDP].dport = 31337
    path = write(tmp_path / "socket.pcap", packets)
    flows = [t for t in meter(path) if t.dns]
    assert len(flows) == 1 and flows[0].dns.names == 12 and flows[0].dns.encoded == 12
    assert ("dns-tunnel", "10.1.2.3") in told(path)


def test_encoded_names_many_local_clients_ask_are_a_service_and_repeated_long_names_no_tunnel(tmp_path):
    names = encoded(12)
    shared = []
    for c in range(3):  # an antivirus reputation service: every client asks hashes under one domain
        shared += lookups(names, client=f"10.1.2.{10 + c}", start=c * 0.5)
    path = write(tmp_path / "service.pcap", shared)
    assert not [a for a in alerts(path) if a["kind"] == "dns-tunnel"]
    long_name = "this-is-a-rather-long-host-name-of-a-cdn-edge.example.net"
    path = write(tmp_path / "repeat.pcap", lookups([long_name] * 40, qtype="A", gap=5.0))
    assert not [a for a in alerts(path) if a["kind"] == "dns-tunnel"]


# -- scans --------------------------------------------------------------------------------------------------

SCANNER, TARGET = "10.1.2.66", "10.1.3.7"


def probes(flags: str, ports: list[int], gap: float = 0.05, answer: bool = True, dst: str = TARGET) -> list:
    out = []
    for k, port in enumerate(ports):
        t = k * gap
        out.append(at(ether() / IP(src=SCANNER, dst=dst) / TCP(sport=40000 + k, dport=port, flags=flags), t))
        if answer:  # a closed port answers RST
            out.append(at(ether() / IP(src=dst, dst=SCANNER) / TCP(sport=port, dport=40000 + k, flags="RA"), t + 1e-3))
    return out


@pytest.mark.parametrize("flags,name", [("FPU", "XMAS"), ("", "NULL"), ("F", "FIN")])
def test_flag_probes_of_a_few_ports_are_a_port_scan(tmp_path, flags, name):
    path = write(tmp_path / f"{name}.pcap", probes(flags, [21, 22, 23, 25, 80, 443, 8080]))
    flows = [t for t in meter(path) if t.src_ip == SCANNER]
    bits = sum({"F": 1, "P": 8, "U": 32}[f] for f in flags)
    assert {t.first_flags for t in flows} == {bits}
    got = [a for a in alerts(path) if a["kind"] == "port-scan"]
    assert [a["src_ip"] for a in got][:1] == [SCANNER], got
    assert "FIN, NULL or XMAS" in got[0]["signature"]


def test_seven_syn_connections_are_no_flag_probes(tmp_path):
    """The same seven ports tried with SYN and refused: below the scan threshold of 15, nothing."""
    path = write(tmp_path / "syn.pcap", probes("S", [21, 22, 23, 25, 80, 443, 8080]))
    assert not alerts(path)


def test_udp_probes_of_many_ports_are_a_port_scan(tmp_path):
    packets = [at(ether() / IP(src=SCANNER, dst=TARGET) / UDP(sport=50000, dport=p), k * 0.2)
               for k, p in enumerate(range(100, 140))]  # fmt: skip
    path = write(tmp_path / "udp.pcap", packets)
    assert ("port-scan", SCANNER) in told(path)


def test_a_slow_scan_one_port_every_three_minutes_is_found_in_the_hour(tmp_path):
    path = write(tmp_path / "slow.pcap", probes("S", list(range(1000, 1020)), gap=180.0))
    got = [a for a in alerts(path) if a["kind"] == "port-scan"]
    assert got and got[0]["src_ip"] == SCANNER and got[0]["signature"].startswith("Slow port scan"), got


def test_a_small_sweep_that_all_fails_is_found_and_the_same_hosts_answering_are_not(tmp_path):
    hosts = [f"10.1.4.{i}" for i in range(20, 32)]
    packets = []
    for k, h in enumerate(hosts):
        packets += probes("S", [445], dst=h, answer=False, gap=1)
        for p in packets[-1:]:
            p.time = T0 + k * 30
    path = write(tmp_path / "sweep.pcap", packets)
    got = [a for a in alerts(path) if a["kind"] == "host-sweep"]
    assert got and got[0]["src_ip"] == SCANNER and "10 hosts in 10.1.4.0/24" in got[0]["signature"], got
    assert got[0]["signature"].startswith("Host sweep") and "100% failed" in got[0]["signature"]
    served = []
    for k, h in enumerate(hosts):  # the same sweep, every host answering and serving: use, not a probe
        sport = 41000 + k
        t = k * 30
        served += [
            at(ether() / IP(src=SCANNER, dst=h) / TCP(sport=sport, dport=445, flags="S", seq=1), t),
            at(ether() / IP(src=h, dst=SCANNER) / TCP(sport=445, dport=sport, flags="SA", seq=9, ack=2), t + 0.001),
            at(ether() / IP(src=SCANNER, dst=h) / TCP(sport=sport, dport=445, flags="PA", seq=2, ack=10) / (b"x" * 60),
               t + 0.002),
        ]  # fmt: skip
    path = write(tmp_path / "served.pcap", served)
    assert not alerts(path)


def test_ipv6_echo_and_dns_are_read_inside_too(tmp_path):
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

    src, dst = "fd00::3", "fd00::99"
    packets = []
    for k, c in enumerate(["shell", "upload", "exec", "download"]):
        data = c.encode() + bytes(500)
        packets.append(at(ether() / IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=1, seq=k, data=data), k))
        packets.append(at(ether() / IPv6(src=dst, dst=src) / ICMPv6EchoReply(id=1, seq=k, data=data), k + 0.001))
    question = DNS(qd=DNSQR(qname="a.b.example.com", qtype="NULL"))
    ask = ether() / IPv6(src=src, dst="fd00::53") / UDP(sport=5000, dport=53) / question
    packets.append(at(ask, 9))
    path = write(tmp_path / "v6.pcap", packets)
    flows = meter(path)
    icmp = [t.icmp for t in flows if t.icmp]
    assert sum(i.requests for i in icmp) == 4 and sum(i.replies for i in icmp) == 4
    assert sum(i.carried for i in icmp) == 8
    assert [t.dns.qtype for t in flows if t.dns] == [10]
    assert ("icmp-tunnel", src) in told(path)


# -- polls inside one connection ----------------------------------------------------------------------------


def session(gaps: list[float], size: int, tcp: bool, client: str = "10.1.2.3", server: str = "198.51.100.7") -> list:
    """One long connection to port 443 in which the client sends `size` bytes after each gap, and is answered."""
    out, t = [], 0.0
    if tcp:
        out += [at(ether() / IP(src=client, dst=server) / TCP(sport=50000, dport=443, flags="S"), 0.0),
                at(ether() / IP(src=server, dst=client) / TCP(sport=443, dport=50000, flags="SA"), 0.01),
                at(ether() / IP(src=client, dst=server) / TCP(sport=50000, dport=443, flags="A"), 0.02)]  # fmt: skip
    for gap in gaps:
        t += gap
        if tcp:
            ask = IP(src=client, dst=server) / TCP(sport=50000, dport=443, flags="PA") / (b"q" * size)
            answer = IP(src=server, dst=client) / TCP(sport=443, dport=50000, flags="PA") / (b"a" * 400)
        else:
            ask = IP(src=client, dst=server) / UDP(sport=50000, dport=443) / (b"q" * size)
            answer = IP(src=server, dst=client) / UDP(sport=443, dport=50000) / (b"a" * 400)
        out += [at(ether() / ask, t), at(ether() / answer, t + 0.05)]
    return out


def jittered(n: int, period: float, jitter: float, seed: int) -> list[float]:
    import random

    rng = random.Random(seed)
    return [period * (1 + rng.uniform(-jitter, jitter)) for _ in range(n)]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp-quic", "tcp"])
def test_polls_inside_one_connection_are_a_beacon(tmp_path, tcp):
    """40 polls of 300 B every 6 s (+-20%) in one connection of four minutes: two flows after the meter's 120 s
    split, one check-in series."""
    path = write(tmp_path / "polls.pcap", session(jittered(40, 6.0, 0.2, 1), 300, tcp))
    flows = [t for t in meter(path) if t.checkins]
    asks = [p.time for p in rdpcap(str(path)) if p.haslayer(TCP if tcp else UDP) and p[IP].src == "10.1.2.3"
            and len(bytes((p[TCP] if tcp else p[UDP]).payload)) == 300]  # fmt: skip
    checkins = sorted(c for t in flows for c in t.checkins)
    assert len(flows) == 2 and len(checkins) == 32  # the first 16 of each flow's 20 or so
    assert all(min(abs(c - float(a) * 1000) for a in asks) < 1.0 for c in checkins)
    got = [a for a in alerts(path) if a["kind"] == "beacon"]
    assert [a["src_ip"] for a in got][:1] == ["10.1.2.3"], got
    assert "check-in every" in got[0]["explanation"][0]["text"]


@pytest.mark.parametrize("what", ["keepalives", "irregular"])
def test_keepalives_and_irregular_requests_in_one_connection_are_no_beacon(tmp_path, what):
    import random

    if what == "keepalives":  # 40-byte keepalives every 6 s: a session kept open, nothing polled
        gaps, size = jittered(40, 6.0, 0.0, 2), 40
    else:  # requests at a person's pace: independent arrivals, 6 s apart on average
        rng = random.Random(3)
        gaps, size = [rng.expovariate(1 / 6.0) + 1.1 for _ in range(40)], 300
    path = write(tmp_path / f"{what}.pcap", session(gaps, size, tcp=False))
    assert not [a for a in alerts(path) if a["kind"] == "beacon"]
