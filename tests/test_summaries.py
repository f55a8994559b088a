"""Sensor summaries: real NFStream on a scapy capture whose every conversation is known.

Expected numbers come from the packets the test builds (their IP lengths and who
sent them) and from what each conversation is by construction, not from the
summariser's rules.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, Raw, wrpcap

from ntds.flows.meter import FlowMeter
from ntds.flows.traffic import FlowTraffic
from ntds.wire import schema as wire
from pcaps.generate import Conversation
from sensor.geo import GeoIP
from sensor.summaries import GRACE_MS, MAX_PAIRS, Summariser
from sensor.traffic_classes import EXTERNAL, LOCAL_SERVICE, OTHER, PEER_TO_PEER, TrafficClasses

LOCAL, SERVER = "10.0.0.0/8", "10.0.0.5"
MIN = 60_000_000  # µs


def conversations() -> list[dict]:
    """Each entry: its packets, its traffic class, its client, how many flows NFStream makes of it."""
    out = []

    def add(conv, cls, client, flows=1, kind=None, country=None, app=None):
        out.append(
            {"packets": conv.packets, "class": cls, "client": client, "flows": flows, "kind": kind, "cc": country}
        )

    ssdp = Conversation("10.0.0.20", "239.255.255.250", 50000, 1900).udp(0, True, Raw(b"M-SEARCH * HTTP/1.1\r\n\r\n"))
    add(ssdp, "other", "10.0.0.20", kind="ssdp_no_answer")
    ssdp_peer = Conversation("10.0.0.20", "10.0.0.21", 50001, 1900).udp(1000, True, Raw(b"M-SEARCH * HTTP/1.1\r\n\r\n"))
    add(ssdp_peer, "peer_to_peer", "10.0.0.20", kind="ssdp_no_answer")
    for port in range(20, 25):  # a SYN scan of a peer: five one-way flows
        add(
            Conversation("10.0.0.30", "10.0.0.31", 41000, port).tcp(2000 + port, True, "S"),
            "peer_to_peer",
            "10.0.0.30",
            kind="p2p_one_way",
        )
    add(
        Conversation("10.0.0.20", "93.184.216.34", 42000, 443).tcp(3000, True, "S"),
        "external",
        "10.0.0.20",
        kind="unanswered",
        country="US",
    )
    smb = Conversation("10.0.0.41", "10.0.0.40", 43000, 445).handshake(4000)
    smb.tcp(8000, True, "PA", b"x" * 700).tcp(9000, False, "PA", b"y" * 300).close(10_000)
    add(smb, "peer_to_peer", "10.0.0.41", flows=2)  # unicauca: the first FIN ends a flow, the rest is a second
    dns = Conversation("10.0.0.20", "8.8.8.8", 53000, 53).udp(20_000, True, Raw(b"q" * 30))
    dns.udp(25_000, False, Raw(b"r" * 90))
    add(dns, "external", "10.0.0.20", country="US")
    web = (
        Conversation("10.0.0.20", SERVER, 44000, 80)
        .handshake(30_000)
        .tcp(34_000, True, "PA", b"GET / HTTP/1.1\r\n\r\n")
    )
    web.tcp(35_000, False, "PA", b"z" * 1200)
    add(web, "local_service", "10.0.0.20")
    served = (
        Conversation(SERVER, "10.0.0.22", 2049, 700).udp(40_000, True, Raw(b"n" * 100)).udp(41_000, False, Raw(b"m"))
    )
    add(served, "local_service", "10.0.0.22")  # the server sent first: the client is still the other end
    inbound = Conversation("1.0.16.1", "10.0.0.20", 5000, 5000).udp(50_000, True, Raw(b"p" * 40))
    add(inbound, "external", "10.0.0.20", kind="unanswered", country="JP")
    later = Conversation("10.0.0.20", "8.8.4.4", 45000, 443).handshake(MIN + 10 * 1_000_000)
    add(later, "external", "10.0.0.20", country="US")
    return out


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    convs = conversations()
    packets = sorted((p for c in convs for p in c["packets"]), key=lambda p: p.time)
    path = tmp_path_factory.mktemp("summaries") / "site.pcap"
    wrpcap(str(path), packets)
    return path, convs


def summarise(path, tier_of=lambda t: 0) -> list[dict]:
    s = Summariser(TrafficClasses([LOCAL], [SERVER]), GeoIP(), interval_s=60)
    for r in FlowMeter(single_packet_flows=True).read([path]):
        s.add(r.traffic, None if r.features is None else tier_of(r.traffic))
    return s.close()


def expected(convs) -> dict:
    """Per interval start minute: the numbers the summaries must show, from the packets."""
    exp: dict = {}
    for c in convs:
        minute = int(min(p.time for p in c["packets"])) // 60 * 60
        e = exp.setdefault(
            minute,
            {
                "flows": 0,
                "packets": 0,
                "bytes": 0,
                "traffic": {},
                "kinds": Counter(),
                "kind_bytes": Counter(),
                "pairs": {},
                "cc": {},
            },
        )
        sizes_up = [len(p[IP]) for p in c["packets"] if p[IP].src == c["client"]]
        sizes_down = [len(p[IP]) for p in c["packets"] if p[IP].src != c["client"]]
        e["flows"] += c["flows"]
        e["packets"] += len(c["packets"])
        e["bytes"] += sum(sizes_up) + sum(sizes_down)
        t = e["traffic"].setdefault(c["class"], [0, 0, 0, 0, 0])
        for i, v in enumerate((c["flows"], len(sizes_up), len(sizes_down), sum(sizes_up), sum(sizes_down))):
            t[i] += v
        if c["kind"]:
            e["kinds"][c["kind"]] += 1
            e["kind_bytes"][c["kind"]] += sum(sizes_up) + sum(sizes_down)
        if c["class"] == "peer_to_peer":
            hosts = sorted(
                {c["packets"][0][IP].src, c["packets"][0][IP].dst}, key=lambda h: tuple(map(int, h.split(".")))
            )
            pair = e["pairs"].setdefault(tuple(hosts), [0, 0])
            for p in c["packets"]:
                pair[0 if p[IP].src == hosts[0] else 1] += len(p[IP])
        if c["cc"]:
            cc = e["cc"].setdefault(c["cc"], [0, 0, 0])
            cc[0] += c["flows"]
            cc[1] += sum(sizes_down)
            cc[2] += sum(sizes_up)
    return exp


def test_summaries_match_the_packets(capture):
    path, convs = capture
    bodies = summarise(path)
    exp = expected(convs)
    assert [b["interval_start"] for b in bodies] == ["2026-11-16T08:00:00Z", "2026-11-16T08:01:00Z"]
    for body, minute in zip(bodies, sorted(exp)):
        e = exp[minute]
        wire.encode(wire.Message("summary", "tap-01", 1, wire.now_iso(), body))  # a valid wire body
        assert (body["flows"], body["packets"], body["bytes"]) == (e["flows"], e["packets"], e["bytes"])
        for cls in wire.TRAFFIC_CLASSES:
            t = e["traffic"].get(cls, [0] * 5)
            got = body["traffic"][cls]
            if cls == "peer_to_peer":  # up is from the flow's first sender, which FIN splitting can swap
                assert (got["flows"], got["bytes_up"] + got["bytes_down"]) == (t[0], t[3] + t[4]), cls
            else:
                assert [got[k] for k in ("flows", "packets_up", "packets_down", "bytes_up", "bytes_down")] == t, cls
        for kind in wire.UNANSWERED_KINDS:
            assert body["unanswered"][kind] == {"flows": e["kinds"][kind], "bytes": e["kind_bytes"][kind]}, kind
        assert {(p["a"], p["b"]): [p["bytes_ab"], p["bytes_ba"]] for p in body["peer_pairs"]} == e["pairs"]
        assert {c["country"]: [c["flows"], c["bytes_in"], c["bytes_out"]] for c in body["countries"]} == e["cc"]
        assert sum(a["flows"] for a in body["applications"]) == e["flows"]


def test_scan_pair_is_one_way_and_file_share_pair_two_way(capture):
    body = summarise(capture[0])[0]
    pairs = {(p["a"], p["b"]): p for p in body["peer_pairs"]}
    scan = pairs[("10.0.0.30", "10.0.0.31")]
    assert (scan["flows"], scan["one_way"], scan["two_way"], scan["bytes_ba"]) == (5, 5, 0, 0)
    smb = pairs[("10.0.0.40", "10.0.0.41")]
    assert smb["two_way"] == 2 and smb["one_way"] == 0


def test_tiers_reach_applications_and_countries(capture):
    # only flows with a record are scored: give every scored DNS flow tier 4
    body = summarise(capture[0], tier_of=lambda t: 4 if t.dst_port == 53 else 0)[0]
    dns = next(a for a in body["applications"] if a["application"] == "DNS")
    assert dns["tiers"] == [0, 0, 0, 0, 1, 0]
    us = next(c for c in body["countries"] if c["country"] == "US")
    jp = next(c for c in body["countries"] if c["country"] == "JP")
    assert (us["max_tier"], jp["max_tier"]) == (4, 0)
    scored = sum(sum(a["tiers"]) for a in body["applications"])
    assert scored == body["flows"] - 9  # ssdp x2, scan x5, the lone SYN and the inbound probe have no record


def t(start_ms: int, src="10.0.0.1", dst="10.0.0.2", bf=100, bb=50, app="X") -> FlowTraffic:
    return FlowTraffic(start_ms, src, dst, 1000, 2000, 6, 1, bf, 1 if bb else 0, bb, app)


def test_intervals_close_after_the_grace_and_late_flows_are_not_lost():
    s = Summariser(TrafficClasses([LOCAL]), GeoIP(), interval_s=60)
    s.add(t(10_000))
    assert s.close(60_000 + GRACE_MS - 1) == []
    first = s.close(60_000 + GRACE_MS)
    assert [b["flows"] for b in first] == [1]
    s.add(t(20_000))  # a flow of the already closed interval arrives late
    late = s.close()
    assert [(b["interval_start"], b["flows"]) for b in late] == [("1970-01-01T00:00:00Z", 1)]


def test_capture_counters_are_reported_as_changes():
    s = Summariser(TrafficClasses([LOCAL]), GeoIP(), interval_s=60)
    s.add(t(0))
    s.capture(1000, 10, 7)
    assert s.close()[0]["capture"] == {"packets_seen": 1000, "packets_dropped": 10, "flows_active": 7}
    s.add(t(120_000))
    s.add(t(180_000))
    s.capture(1500, 12, 2)
    a, b = s.close()
    assert a["capture"] == {"packets_seen": 500, "packets_dropped": 2, "flows_active": 2}
    assert b["capture"]["packets_seen"] == 0


def test_a_busy_interval_still_fits_one_frame():
    s = Summariser(TrafficClasses(["10.0.0.0/8", "fd00::/8"]), GeoIP(), interval_s=60)
    for i in range(3000):
        s.add(t(0, f"fd00::{i:x}:ffff:ffff", f"fd00::{i + 1:x}:eeee:eeee", app=f"APPLICATION_NAME_{i % 500:03d}"))
        s.add(t(0, "10.0.0.1", f"{11 + i % 89}.{i % 250}.1.1", app="SSL"))
    body = s.close()[0]
    frame = wire.encode(wire.Message("summary", "tap-with-a-long-sensor-name", 2**40, wire.now_iso(), body))
    assert len(frame) <= wire.MAX_FRAME
    assert len(body["peer_pairs"]) == MAX_PAIRS and body["peer_pairs_omitted"]["pairs"] == 3000 - MAX_PAIRS
    assert sum(a["flows"] for a in body["applications"]) == 6000  # folded, not lost
    assert any(a["application"] == "(other)" for a in body["applications"])
    assert sum(c["flows"] for c in body["countries"]) == 3000
    assert json.loads(frame)["body"]["flows"] == 6000


def test_local_servers_and_group_addresses():
    c = TrafficClasses(["10.0.0.0/8"], ["192.0.2.10"])
    assert c.classify("10.0.0.1", "192.0.2.10") == ("local_service", True)  # a server outside local_networks
    assert c.classify("192.0.2.10", "10.0.0.1") == ("local_service", False)
    assert c.classify("10.0.0.1", "255.255.255.255")[0] == "other"
    assert c.classify("fe80::1", "ff02::fb")[0] == "other"
    assert c.classify("8.8.8.8", "1.1.1.1")[0] == "other"
    with pytest.raises(ValueError, match="local_servers"):
        TrafficClasses(["10.0.0.0/8"], ["not-an-address"])


addresses = (
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
    | st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
    | st.sampled_from(["224.0.0.251", "255.255.255.255", "0.0.0.0", "::", "ff02::fb", "fe80::1%eth0", "10.9.8.7",
                       "192.0.2.10", "2001:db8:1::9", "::ffff:10.0.0.1", "not-an-ip", "", "10.0.0", "010.1.1.1"])
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(addresses)
def test_address_kinds_agree_with_the_ipaddress_module(ip):
    # The classifier works on integers for speed; the reference asks ipaddress the same questions.
    c = TrafficClasses(["10.0.0.0/8", "172.16.0.0/12", "fd00::/8", "2001:db8::/32"], ["192.0.2.10", "2001:db8:1::/48"])
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        assert c.classify(ip, "8.8.8.8") == (OTHER, True)
        return
    group = a.is_multicast or a.is_unspecified or str(a) == "255.255.255.255"
    server = any(a in n for n in c.local_servers if n.version == a.version)
    local = server or any(a in n for n in c.local_networks if n.version == a.version)
    assert c.is_local(ip) == (local and not group)
    outside = "8.8.8.8" if a.version == 4 else "2606:4700::1111"
    expected = (OTHER, True) if group else (EXTERNAL, True) if local else (OTHER, True)
    assert c.classify(ip, outside) == expected
    if local and not group:
        peer = "10.1.1.1" if a.version == 4 else "fd00::1"
        assert c.classify(ip, peer) == ((LOCAL_SERVICE, False) if server else (PEER_TO_PEER, True))


def test_geoip_csv_database(tmp_path):
    db = tmp_path / "geo.csv"
    db.write_text(
        "# first,last,country\n192.0.2.0,192.0.2.255,FR\n2001:db8::,2001:db8::ffff,DE\n198.51.100.0,198.51.100.9,it\n"
    )
    g = GeoIP(db)
    assert [g.country(a) for a in ("192.0.2.7", "2001:db8::5", "198.51.100.9", "198.51.100.10")] == [
        "FR",
        "DE",
        "IT",
        "ZZ",
    ]
    db.write_text("192.0.2.0,192.0.2.255,FR\n192.0.2.100,192.0.3.0,DE\n")
    with pytest.raises(ValueError, match="overlapping"):
        GeoIP(db)
    db.write_text("192.0.2.0,FR\n")
    with pytest.raises(ValueError, match=r"geo.csv:1: expected"):
        GeoIP(db)


def test_builtin_geoip_knows_registry_facts():
    g = GeoIP()
    # 1.0.16.0/20 is APNIC's, delegated to Japan; 10/8 is private and belongs to no country
    assert (g.country("1.0.16.1"), g.country("10.1.2.3")) == ("JP", "ZZ")
