"""Prevalence on the sensor: sketches, what a context message counts, and its bounds.

The counts are checked against an independent, exact count over the packets of
the real captures of ../shared/pcaps (tests/prevalence_reference.py, dpkt), not
against the product's own flows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prevalence_reference import exact

from ntds import prevalence
from ntds.flows.meter import FlowMeter
from ntds.flows.traffic import FlowTraffic
from ntds.networks import DEFAULT_LOCAL_NETWORKS
from ntds.wire.schema import MAX_FRAME, Message, decode, encode, in_time_range, unpack
from sensor.context import ContextCounter
from sensor.traffic_classes import TrafficClasses
from tests.conftest import SHARED

DOMAINS_NOT_COMPARED = {
    "dns_exfiltration.pcap": "names asked in turn on one socket: a flow is counted for nDPI's first name only",
    "dns-tunnel-iodine.pcap": "the same",
    "bad-dns-traffic.pcap": "the same",
    "smtp-starttls.pcap": "nDPI reads the server name from SMTP's greeting, which the reference does not",
    "telegram.pcap": "a QUIC Initial's server name is encrypted; the reference reads TLS over TCP only",
}


def real_captures() -> list[Path]:
    """The shared classic pcap files (dpkt reads pcapng timestamps at other resolutions wrongly)."""
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.glob("*.pcap") if p.stat().st_size < 20 * 2**20)


def counted(paths: list[Path], counter: ContextCounter) -> list[dict]:
    for r in FlowMeter("unicauca", single_packet_flows=True).read([str(p) for p in paths]):
        t = r.traffic
        if in_time_range(t.start_ms) and in_time_range(t.end_ms):  # as the pipeline does
            counter.add(t, (r.extra[5] or "") if r.extra else "")
    return counter.close(None)


def merged(bodies: list[dict]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(kind, key) -> (hosts, first ms, last ms) over every interval, as the aggregator merges them."""
    parts: dict[tuple[str, str], list] = {}
    for b in bodies:
        for d in unpack(b["packed"])["destinations"]:
            p = parts.setdefault((d["kind"], d["key"]), [[], d["first_ms"], d["last_ms"]])
            p[0].append(d["sketch"])
            p[1], p[2] = min(p[1], d["first_ms"]), max(p[2], d["last_ms"])
    return {k: (prevalence.estimate(prevalence.merge(s)), f, la) for k, (s, f, la) in parts.items()}


def test_sketches_are_their_own_bytes_and_merge_each_host_once():
    a = prevalence.sketch_of(f"10.0.0.{i}" for i in range(1, 11))
    b = prevalence.sketch_of(f"10.0.0.{i}" for i in range(6, 16))
    text = prevalence.encode(a)
    assert len(text) < 80 and prevalence.estimate(prevalence.decode(text)) == 10  # exact while small
    assert prevalence.estimate(prevalence.merge([text, b])) == 15  # hosts in both sketches count once
    big = prevalence.sketch_of(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(20_000))
    raw = prevalence.decode(prevalence.encode(big)).serialize_compact()
    assert len(raw) <= prevalence.SKETCH_MAX_BYTES
    est = prevalence.estimate(prevalence.decode(prevalence.encode(big)))
    assert abs(est - 20_000) <= 3 * prevalence.RELATIVE_ERROR * 20_000
    for bad in ("", "////", "AAAAAAAAAAAAAAAAAAAA", b"\x00" * 40):
        with pytest.raises(prevalence.SketchError):
            prevalence.decode(bad)


def flow(src: str, dst: str, start: int, **kw) -> FlowTraffic:
    base = dict(start_ms=start, src_ip=src, dst_ip=dst, src_port=40000, dst_port=443, protocol=6, packets_fwd=3,
                bytes_fwd=300, packets_bwd=3, bytes_bwd=3000, application="TLS", end_ms=start + 50,
                payload=500)  # fmt: skip
    return FlowTraffic(**(base | kw))


def test_context_is_bounded_whatever_the_traffic():
    """A sweep of 100,000 destinations from 3,000 hosts: at most max_destinations sketched and max_hosts described,
    the rest counted as omitted, every message under the frame limit and valid on the wire."""
    c = ContextCounter(TrafficClasses(["10.0.0.0/8"]), 3600, max_destinations=5_000, max_hosts=1_000)
    t0 = 1_794_816_000_000
    for i in range(100_000):
        c.add(flow(f"10.0.{(i % 3000) >> 8}.{i % 256}", f"198.{i >> 16}.{(i >> 8) & 255}.{i & 255}", t0 + i))
    bodies = c.close(None)
    contents = [unpack(b["packed"]) for b in bodies]
    assert sum(len(x["destinations"]) for x in contents) == 5_000
    assert bodies[0]["destinations_omitted"] == 100_000 - 5_000
    assert sum(len(x["hosts"]) for x in contents) == 1_000 and bodies[0]["hosts_omitted"] > 0
    for i, b in enumerate(bodies):
        frame = encode(Message("context", "tap-01", i + 1, "2026-11-16T09:00:00Z", b, "0123456789abcdef"))
        assert len(frame) < MAX_FRAME
        assert decode(frame).body == json.loads(json.dumps(b))


def test_host_activity_counts_services_answered_and_applications_used():
    c = ContextCounter(TrafficClasses(["10.0.0.0/8"]), 3600)
    t0 = 1_794_816_000_000
    c.add(flow("10.0.0.5", "93.184.216.34", t0, server_name="www.Example.COM."))
    c.add(flow("10.0.0.7", "10.0.0.5", t0 + 10, dst_port=22, application="SSH"))  # 10.0.0.5 answers SSH
    c.add(flow("10.0.0.8", "10.0.0.5", t0 + 20, dst_port=23, packets_bwd=1, bytes_bwd=40, rst=True, payload=0))
    c.add(flow("203.0.113.9", "10.0.0.5", t0 + 30, dst_port=3389, packets_bwd=0, bytes_bwd=0))  # unanswered probe
    (body,) = c.close(None)
    body = unpack(body["packed"])
    hosts = {h["host"]: h for h in body["hosts"]}
    five = hosts["10.0.0.5"]
    assert five["applications"] == [{"application": "TLS", "flows": 1}]
    assert five["services"] == [{"protocol": 6, "port": 22, "application": "SSH", "flows": 1}]  # not refused 23
    assert five["flows"] == 4 and five["bytes_up"] == 300 + 3000 + 40 + 0
    dest = {(d["kind"], d["key"]) for d in body["destinations"]}
    assert dest == {("address", "93.184.216.34"), ("domain", "example.com"), ("server_name", "www.example.com"),
                    ("address", "203.0.113.9")}  # fmt: skip


@pytest.mark.skipif(not real_captures(), reason="../shared/pcaps is absent")
def test_prevalence_equals_an_exact_count_over_real_captures():
    """Every shared capture, metered as a sensor does: per external address, the local hosts that reached it and
    its first and last seen equal a packet-by-packet count with dpkt; per registered domain (DNS questions, TLS
    SNI, HTTP Host), its hosts too. All counts here are small, where sketches are exact."""
    paths = real_captures()
    addresses = domains = 0
    for path in paths:
        try:
            ref = exact([path], list(DEFAULT_LOCAL_NETWORKS))
        except ValueError:  # a link type the reference does not read (PPP, BGP's raw frames)
            continue
        got = merged(counted([path], ContextCounter(TrafficClasses(), 3600)))
        for kind in ("address", "domain"):
            if kind == "domain" and (path.name in DOMAINS_NOT_COMPARED or "quic" in path.name):
                continue
            want = {k: v for k, v in ref.items() if k[0] == kind}
            have = {k: v for k, v in got.items() if k[0] == kind}
            assert set(have) == set(want), (path.name, sorted(set(have) ^ set(want))[:5])
            for k, seen in want.items():
                hosts, first, last = have[k]
                assert hosts == len(seen.hosts), (path.name, k)
                if kind == "address":
                    assert abs(first - seen.first_ms) <= 1 and abs(last - seen.last_ms) <= 1, (path.name, k)
            addresses += len(want) if kind == "address" else 0
            domains += len(want) if kind == "domain" else 0
    assert addresses > 50 and domains > 20  # the comparison covered something real
