"""Threat intelligence: indicators read from every format (STIX and MISP files made with their own libraries), the
set file, expiry, and matching on real captures against a direct search of their packets with dpkt.

The captures are third-party (../shared/pcaps, skipped when absent). The indicator lists are made here from what
dpkt reads in the packets (addresses, DNS query names, TLS server names, JA3S of server hellos, HASSH of SSH key
exchanges), half of what is there plus values that are not, and the expected hits are a direct search of every
packet for them: nothing of ntds's meter or matcher is used to say what should match.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import struct
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import dpkt
import pytest
from conftest import ROOT, SHARED

from ntds.detect.baseline import Baseline
from ntds.detect.detection import Detection
from ntds.detect.grouping import GroupingOptions
from ntds.errors import InputError
from ntds.flows.meter import EXTRA_COLUMNS, FlowMeter
from ntds.intel.formats import Defaults, load
from ntds.intel.indicators import Indicator, infer, normalise, tier_of
from ntds.intel.matching import IntelSet, read_set, write_set
from ntds.wire import schema as wire

UNGROUPED = GroupingOptions(group_wait_s=0, group_interval_s=0, budget_per_hour=2**62)
NOW = time.time()


# -- the indicator model ---------------------------------------------------------------------


def test_values_are_normalised_and_types_inferred():
    assert infer("10.0.0.1") == ("ip", "10.0.0.1")
    assert infer("2001:DB8::0:1") == ("ip", "2001:db8::1")
    assert infer("10.1.2.3/16") == ("net", "10.1.0.0/16")
    assert infer("10.1.2.3/32") == ("ip", "10.1.2.3")
    assert infer("Evil.Example.") == ("domain", "evil.example")
    assert infer("*.evil.example") == ("domain", "evil.example")
    assert infer("t13d1516h2_8daaf6152771_b186095e22b6") == ("ja4", "t13d1516h2_8daaf6152771_b186095e22b6")
    assert infer("ja3s:AE53107A2E47EA20C72AC44821A728BF") == ("ja3s", "ae53107a2e47ea20c72ac44821a728bf")
    with pytest.raises(ValueError, match="could be a JA3, JA3S or HASSH"):
        infer("ae53107a2e47ea20c72ac44821a728bf")
    with pytest.raises(ValueError, match="unknown indicator type 'url'"):
        infer("url:http://x")
    for kind, bad in (("ip", "10.0.0.256"), ("domain", "a..b"), ("ja3s", "abc"), ("ja4", "t13"), ("x", "1")):
        with pytest.raises(ValueError):
            normalise(kind, bad)


def test_tier_follows_confidence():
    assert [tier_of(c) for c in (0, 19, 20, 50, 79, 80, 100)] == [1, 1, 2, 3, 4, 5, 5]


def test_fingerprint_columns_are_where_detection_reads_them():
    """Detection reads the fingerprints by position in the meter's extra columns."""
    assert EXTRA_COLUMNS[5] == "client_fingerprint" and EXTRA_COLUMNS[6] == "server_fingerprint"


# -- formats ---------------------------------------------------------------------------------


def test_plain_list_counts_bad_rows_and_loads_the_rest(tmp_path):
    f = tmp_path / "feed.txt"
    f.write_text("# a feed\n203.0.113.9  # C2\n\nevil.example\nja4:t13d1516h2_8daaf6152771_b186095e22b6\n"
                 "ae53107a2e47ea20c72ac44821a728bf\nurl:http://x\n198.51.100.0/24\n")  # fmt: skip
    got = load(f)
    assert [(i.type, i.value) for i in got.indicators] == [
        ("ip", "203.0.113.9"), ("domain", "evil.example"), ("ja4", "t13d1516h2_8daaf6152771_b186095e22b6"),
        ("net", "198.51.100.0/24"),
    ]  # fmt: skip
    assert got.bad_rows == 2 and got.unknown_types == {"url": 1}
    assert any(":6:" in p and "JA3" in p for p in got.problems)
    assert {i.source for i in got.indicators} == {"feed.txt"}


def test_csv_with_sources_confidence_and_expiry(tmp_path):
    f = tmp_path / "feed.csv"
    f.write_text("indicator,type,source,confidence,expires\n203.0.113.9,ip,abuse.ch,90,2099-01-01\n"
                 "evil.example,,team,,\nnot-an-ip,ip,x,1,\n1.2.3.4,ip,x,101,\n5.6.7.8,url,x,1,\n")  # fmt: skip
    got = load(f)
    assert [(i.value, i.source, i.confidence) for i in got.indicators] == [
        ("203.0.113.9", "abuse.ch", 90), ("evil.example", "team", 50)]  # fmt: skip
    assert got.indicators[0].expires == pytest.approx(4070908800.0)
    assert got.bad_rows == 3 and got.unknown_types == {"url": 1}
    over = load(f, defaults=Defaults(source="mine", confidence=70, fixed_source=True, fixed_confidence=True))
    assert {(i.source, i.confidence) for i in over.indicators} == {("mine", 70)}


def test_zeek_intel_file(tmp_path):
    f = tmp_path / "intel.dat"
    f.write_text("#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\n"
                 "203.0.113.9\tIntel::ADDR\tfeodo\tC2\n198.51.100.0/24\tIntel::SUBNET\t-\t-\n"
                 "evil.example\tIntel::DOMAIN\tphish\t-\nhttp://x/\tIntel::URL\tx\t-\nshort\trow\n")  # fmt: skip
    got = load(f)
    assert [(i.type, i.value, i.source) for i in got.indicators] == [
        ("ip", "203.0.113.9", "feodo"),
        ("net", "198.51.100.0/24", "intel.dat"),
        ("domain", "evil.example", "phish"),
    ]
    assert got.unknown_types == {"Intel::URL": 1} and got.bad_rows == 2


def test_stix_bundle_made_with_stix2(tmp_path):
    stix2 = pytest.importorskip("stix2")
    ident = stix2.Identity(name="Example CERT", identity_class="organization")
    ok = stix2.Indicator(pattern="[ipv4-addr:value = '198.51.100.7']", pattern_type="stix", confidence=85,
                         valid_until="2099-01-01T00:00:00Z", created_by_ref=ident.id)  # fmt: skip
    either = stix2.Indicator(pattern="[domain-name:value = 'Evil.Example'] OR [ipv6-addr:value = '2001:db8::/32']",
                             pattern_type="stix")  # fmt: skip
    hashes = stix2.Indicator(pattern="[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']", pattern_type="stix")
    both = stix2.Indicator(pattern="[ipv4-addr:value = '198.51.100.8' AND ipv4-addr:value = '198.51.100.9']",
                           pattern_type="stix")  # fmt: skip
    f = tmp_path / "bundle.json"
    f.write_text(stix2.Bundle(ident, ok, either, hashes, both).serialize())
    got = load(f)
    assert [(i.type, i.value, i.source, i.confidence) for i in got.indicators] == [
        ("ip", "198.51.100.7", "Example CERT", 85), ("domain", "evil.example", "bundle.json", 50),
        ("net", "2001:db8::/32", "bundle.json", 50)]  # fmt: skip
    assert got.indicators[0].expires == pytest.approx(4070908800.0)
    assert got.indicators[0].added == pytest.approx(ok.created.timestamp())
    assert got.bad_rows == 2 and sum(got.unknown_types.values()) == 1


def test_misp_export_made_with_pymisp(tmp_path):
    pymisp = pytest.importorskip("pymisp")
    ev = pymisp.MISPEvent()
    ev.info, ev.threat_level_id = "C2 campaign", 2
    org = pymisp.MISPOrganisation()
    org.name = "CIRCL"
    ev.Orgc = org
    ev.add_attribute("ip-dst", "203.0.113.9", to_ids=True)
    ev.add_attribute("ip-dst|port", "203.0.113.10|8443", to_ids=True)
    ev.add_attribute("hassh-md5", "21B457A327CE7A2D4FCE5EF2C42400BD", to_ids=True)
    ev.add_attribute("ip-dst", "203.0.113.11", to_ids=False)
    ev.add_attribute("url", "http://x/", to_ids=True)
    obj = ev.add_object(name="domain-ip")
    obj.add_attribute("domain", value="bad.example", to_ids=True)
    f = tmp_path / "event.json"
    f.write_text(ev.to_json())
    got = load(f)
    assert sorted((i.type, i.value) for i in got.indicators) == [
        ("domain", "bad.example"), ("hassh", "21b457a327ce7a2d4fce5ef2c42400bd"), ("ip", "203.0.113.10"),
        ("ip", "203.0.113.9")]  # fmt: skip
    assert {(i.source, i.confidence) for i in got.indicators} == {("MISP CIRCL", 70)}
    assert got.unknown_types == {"url": 1} and sum(got.skipped.values()) == 1
    # the same event wrapped as MISP's REST API answers it
    g = tmp_path / "response.json"
    g.write_text(json.dumps({"response": [{"Event": json.loads(ev.to_json())}]}))
    assert len(load(g).indicators) == 4


@pytest.mark.parametrize(
    ("name", "content", "fmt", "says"),
    [
        ("empty.txt", "# nothing\n", "auto", "no indicators"),
        ("bin.txt", b"\xff\xfe\x00", "auto", "not a text file"),
        ("b.json", '{"type": "bundle", "objects": 3}', "stix", "not a list"),
        ("m.json", "[1, 2]", "misp", "not a MISP event"),
        ("x.json", "{nope", "misp", "not JSON"),
        ("z.dat", "1.2.3.4\tIntel::ADDR\n", "zeek", "#fields"),
        ("c.csv", "a,b\n1,2\n", "csv", "no indicator column"),
        ("s.txt", "ip\t1.2.3.4\t0\t50\t0\t0\n", "ntds", "not an ntds indicator set"),
    ],
)
def test_a_bad_file_is_one_line(tmp_path, name, content, fmt, says):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=says) as e:
        load(f, fmt)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="cannot read"):
        load(tmp_path / "missing.txt")


# -- the set file and expiry ----------------------------------------------------------------


def test_set_file_round_trip_and_a_tampered_line_is_refused():
    inds = [Indicator("ip", "203.0.113.9", "a", 90, 1.0, 0.0), Indicator("net", "10.0.0.0/8", "b", 10, 2.0, 3e9),
            Indicator("domain", "evil.example", "a", 50, 3.0, 0.0)]  # fmt: skip
    text = write_set(inds).decode()
    assert list(read_set(text)) == inds
    assert list(IntelSet(read_set(text), now=0)) == inds
    with pytest.raises(ValueError, match="line 4"):
        list(read_set(text.replace("10.0.0.0/8", "10.0.0.1/8")))


def test_expired_indicators_stop_matching_by_themselves():
    inds = [Indicator("ip", "203.0.113.9", "a", 90, 0, expires=1000.0), Indicator("domain", "evil.example", "a", 50)]
    flow = ("10.0.0.1", "203.0.113.9", "www.evil.example", "", "")
    s = IntelSet(inds, now=500.0)
    assert [m.field for m in s.match([flow], now=999.0)[0]] == ["dst_ip", "server_name"]
    assert [m.field for m in s.match([flow], now=1000.0)[0]] == ["server_name"]
    assert len(IntelSet(inds, now=2000.0)) == 1  # built after the expiry: not even loaded
    # an expired address leaves the flow to the network around it, and an expired name to its parent domain
    layered = IntelSet([Indicator("ip", "203.0.113.9", "a", 90, 0, expires=1000.0),
                        Indicator("net", "203.0.113.0/24", "b", 40),
                        Indicator("domain", "www.evil.example", "c", 90, 0, expires=1000.0),
                        Indicator("domain", "evil.example", "d", 40)], now=0)  # fmt: skip
    for now, want in ((999.0, ["a", "c"]), (1000.0, ["b", "d"])):
        assert [layered.indicator(m.index).source for m in layered.match([flow], now=now)[0]] == want


def test_most_specific_match_and_highest_confidence_win():
    inds = [Indicator("net", "10.0.0.0/8", "wide", 10), Indicator("net", "10.1.0.0/16", "narrow", 20),
            Indicator("ip", "10.1.2.3", "low", 30), Indicator("ip", "10.1.2.3", "high", 95),
            Indicator("domain", "example", "tld", 10), Indicator("domain", "evil.example", "d", 60)]  # fmt: skip
    s = IntelSet(inds, now=0)
    hits = s.match([("10.1.2.3", "10.1.9.9", "A.Evil.Example.", "", ""), ("10.2.0.1", "8.8.8.8", "ok.test", "", "")],
                   now=0)  # fmt: skip
    assert [(m.field, s.indicator(m.index).source) for m in hits[0]] == [
        ("src_ip", "high"), ("dst_ip", "narrow"), ("server_name", "d")]  # fmt: skip
    assert [(m.field, s.indicator(m.index).source) for m in hits[1]] == [("src_ip", "wide")]


# -- matching on real captures, against a direct search with dpkt ------------------------------

CAPTURES = ["443-curl.pcap", "443-safari.pcap", "tls-rdn-extract.pcap", "googledns_android10.pcap",
            "bad-dns-traffic.pcap", "ssh.pcap", "http_ipv6.pcap"]  # fmt: skip


def _packets(path: Path):
    with open(path, "rb") as fh:
        try:
            reader = dpkt.pcap.Reader(fh)
        except ValueError:
            fh.seek(0)
            reader = dpkt.pcapng.Reader(fh)
        link = reader.datalink()
        for _, buf in reader:
            try:
                if link == dpkt.pcap.DLT_EN10MB:
                    ip = dpkt.ethernet.Ethernet(buf).data
                elif link == dpkt.pcap.DLT_LINUX_SLL:
                    ip = dpkt.sll.SLL(buf).data
                else:
                    continue
            except (dpkt.UnpackError, IndexError):
                continue
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                yield ip


def _ends(ip) -> tuple[str, int, str, int, int]:
    fam = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
    l4 = ip.data
    ports = (l4.sport, l4.dport) if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP) else (0, 0)
    proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
    return socket.inet_ntop(fam, ip.src), ports[0], socket.inet_ntop(fam, ip.dst), ports[1], proto


def _kexinit_lists(payload: bytes) -> list[str] | None:
    """The name-lists of an SSH_MSG_KEXINIT binary packet, if `payload` holds one."""
    if len(payload) < 6 or payload[5] != 20:
        return None
    pos, lists = 6 + 16, []
    for _ in range(10):
        (n,) = struct.unpack(">I", payload[pos : pos + 4])
        lists.append(payload[pos + 4 : pos + 4 + n].decode())
        pos += 4 + n
    return lists


def direct_search(path: Path) -> tuple[dict, set]:
    """What dpkt finds in the packets: per conversation (the two (address, port) ends and the protocol), the
    addresses, DNS query and TLS server names, JA3S and HASSH values seen in it."""
    seen: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    streams: dict[tuple, bytes] = defaultdict(bytes)
    for ip in _packets(path):
        s, sp, d, dp, proto = _ends(ip)
        conv = (frozenset({(s, sp), (d, dp)}), proto)
        seen[conv]["ip"].update((s, d))
        l4 = ip.data
        if isinstance(l4, dpkt.udp.UDP) and 53 in (sp, dp):
            try:
                dns = dpkt.dns.DNS(l4.data)
            except (dpkt.UnpackError, IndexError):
                continue
            if dns.qr == dpkt.dns.DNS_Q:
                seen[conv]["domain"].update(q.name.lower() for q in dns.qd)
        if not isinstance(l4, dpkt.tcp.TCP) or not l4.data:
            continue
        streams[(s, sp, d, dp)] += l4.data
        if l4.data[0] == 22:
            try:
                records, _ = dpkt.ssl.tls_multi_factory(l4.data)
            except (dpkt.UnpackError, dpkt.ssl.SSL3Exception, IndexError):
                continue
            for rec in records:
                if rec.type != 22:
                    continue
                try:
                    hs = dpkt.ssl.TLSHandshake(rec.data)
                except (dpkt.UnpackError, dpkt.ssl.SSL3Exception, IndexError):
                    continue
                if isinstance(hs.data, dpkt.ssl.TLSClientHello):
                    seen[conv]["domain"].update(data[5:].decode().lower() for t, data in hs.data.extensions if t == 0)
                elif isinstance(hs.data, dpkt.ssl.TLSServerHello):
                    sh = hs.data
                    extensions = "-".join(str(t) for t, _ in getattr(sh, "extensions", []))
                    ja3s = f"{sh.version},{sh.ciphersuite.code},{extensions}"
                    seen[conv]["ja3s"].add(hashlib.md5(ja3s.encode()).hexdigest())
    for (s, sp, d, dp), data in streams.items():  # SSH: the KEXINIT after each side's banner
        if not data.startswith(b"SSH-"):
            continue
        lists = _kexinit_lists(data[data.index(b"\n") + 1 :])
        if lists is None:
            continue
        client = dp == 22
        kex, enc, mac, comp = lists[0], lists[2 if client else 3], lists[4 if client else 5], lists[6 if client else 7]
        value = hashlib.md5(f"{kex};{enc};{mac};{comp}".encode()).hexdigest()
        seen[(frozenset({(s, sp), (d, dp)}), 6)]["hassh" if client else "hassh_server"].add(value)
    return seen


def _indicators(seen: dict) -> list[Indicator]:
    """Half of each kind of value dpkt saw (every other, in sorted order), plus values not there at all; networks
    only around addresses that are not indicators themselves, so no flow matches an address and its network."""
    values: dict[str, set] = defaultdict(set)
    for kinds in seen.values():
        for kind, vs in kinds.items():
            values[kind] |= vs
    out = []
    ips = sorted(values.pop("ip", set()))
    picked = ips[::2]
    rest = [a for a in ips[1::2] if ipaddress.ip_address(a).version == 4]
    for a in picked:
        out.append(Indicator("ip", str(ipaddress.ip_address(a)), "test", 70))
    for a in rest[:2]:
        net = ipaddress.ip_network(f"{a}/30", strict=False)
        if not any(ipaddress.ip_address(p) in net for p in picked):
            out.append(Indicator("net", str(net), "test", 40))
    names = sorted(values.pop("domain", set()))
    for name in names[::2]:
        parent = ".".join(name.split(".")[-2:])  # a parent domain: every name under it matches
        out.append(Indicator("domain", parent, "test", 60))
    for kind, vs in values.items():
        out += [Indicator(kind, v, "test", 90) for v in sorted(vs)[::2]]
    out += [Indicator("ip", "192.0.2.77", "absent", 99), Indicator("domain", "absent.invalid", "absent", 99),
            Indicator("ja3s", "0" * 32, "absent", 99)]  # fmt: skip
    return out


def expected_hits(seen: dict, inds: list[Indicator]) -> set:
    """(type, value, conversation) for every conversation whose packets hold an indicator's value."""
    out = set()
    for conv, kinds in seen.items():
        for ind in inds:
            if ind.type in ("ip", "net"):
                net = ipaddress.ip_network(ind.value)
                hit = any(ipaddress.ip_address(a) in net for a in kinds["ip"])
            elif ind.type == "domain":
                hit = any(n == ind.value or n.endswith("." + ind.value) for n in kinds["domain"])
            else:
                hit = ind.value in kinds[ind.type]
            if hit:
                out.add((ind.type, ind.value, conv))
    return out


def sensor_hits(path: Path, inds: list[Indicator]) -> set:
    baseline = Baseline.load(ROOT / "config" / "baseline.json")
    detection = Detection(baseline, grouping=UNGROUPED, intel=IntelSet(inds))
    alerts = []
    batch = []
    for r in FlowMeter("unicauca", single_packet_flows=True).read([path]):
        batch.append(r)
    alerts += detection.process(batch).alerts + detection.close()
    out = set()
    for a in alerts:
        if a["kind"] != "intel":
            continue
        wire.encode(wire.Message("alert", "t", 1, wire.now_iso(), a, "s"))  # every intel alert is a valid message
        for f in a["flows"]:
            conv = (frozenset({(f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])}), f["protocol"])
            out.add((a["intel"][0]["type"], a["intel"][0]["value"], conv))
    return out


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared captures not present (../shared/pcaps)")
@pytest.mark.parametrize("name", CAPTURES)
def test_hits_equal_a_direct_search_of_the_packets(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{name} not in ../shared/pcaps")
    seen = direct_search(path)
    inds = _indicators(seen)
    expected = expected_hits(seen, inds)
    assert expected, "the test found nothing to look for"
    got = sensor_hits(path, inds)
    assert got == expected
    assert not any(v in ("192.0.2.77", "absent.invalid", "0" * 32) for _, v, _ in got)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared captures not present (../shared/pcaps)")
def test_every_kind_of_indicator_is_exercised_on_the_captures():
    """The captures above carry every type NFStream reports: addresses, names, JA3S, HASSH and HASSH-server."""
    kinds = set()
    for name in CAPTURES:
        if (SHARED / name).exists():
            kinds |= {k for conv in direct_search(SHARED / name).values() for k, v in conv.items() if v}
    assert {"ip", "domain", "ja3s", "hassh", "hassh_server"} <= kinds


def test_score_with_intel_from_the_command_line(tmp_path, site_pcap):
    """`ntds-sensor score --intel` matches offline; a bad row is one line on stderr, the rest is used; a bad file
    is one line and a non-zero exit."""
    seen = direct_search(site_pcap)
    inds = _indicators(seen)
    feed = tmp_path / "feed.csv"
    feed.write_text("indicator,type,source,confidence\n" + "".join(
        f"{i.value},{i.type},{i.source},{i.confidence}\n" for i in inds) + "nonsense,ip,x,1\n")  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "sensor.cli", "score", str(site_pcap), "--baseline",
                          str(ROOT / "config" / "baseline.json"), "--intel", str(feed), "--all"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"{len(inds)} indicators; 1 bad rows left out" in run.stderr and "Traceback" not in run.stderr
    alerts = [json.loads(line) for line in run.stdout.splitlines()]
    got = set()
    for a in alerts:
        if a["kind"] == "intel":
            assert a["tier"] == tier_of(a["intel"][0]["confidence"])
            for f in a["flows"]:
                conv = (frozenset({(f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])}), f["protocol"])
                got.add((a["intel"][0]["type"], a["intel"][0]["value"], conv))
    assert got == expected_hits(seen, inds) and got
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    run = subprocess.run([sys.executable, "-m", "sensor.cli", "score", str(site_pcap), "--baseline",
                          str(ROOT / "config" / "baseline.json"), "--intel", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1 and "not JSON" in run.stderr


def test_intel_alerts_in_every_broadcast_format():
    """EVE, ECS and OCSF each carry the indicator, its source and confidence, and validate against the standards'
    schemas (ECS as an indicator match: threat.enrichments)."""
    from aggregator.broadcast import formats
    from ntds.flows.traffic import FlowTraffic
    from ntds.intel.alerts import intel_alert
    from tests.test_siem_formats import ecs_errors, eve_errors, ocsf_errors

    t = FlowTraffic(1794816000000, "10.1.0.10", "203.0.113.9", 42000, 443, 6, 5, 500, 5, 900, "TLS",
                    end_ms=1794816001000, server_name="www.evil.example")  # fmt: skip
    alerts = [intel_alert(t, Indicator("ip", "203.0.113.9", "abuse.ch", 90, 1794800000.0), "dst_ip", t.dst_ip, "b"),
              intel_alert(t, Indicator("domain", "evil.example", "phish", 45), "server_name", t.server_name, "b",
                          found_later=1794900000.0),
              intel_alert(t, Indicator("ja3s", "ae53107a2e47ea20c72ac44821a728bf", "x", 10), "server_fingerprint",
                          "ae53107a2e47ea20c72ac44821a728bf", "b")]  # fmt: skip
    for n, a in enumerate(alerts):
        a = {"id": n + 1, "sensor": "tap-01", **a}
        eve, ecs, ocsf = formats.eve_record(a, "k"), formats.ecs_document(a, "k"), formats.ocsf_finding(a, "k")
        assert eve_errors(eve) == [] and ecs_errors(ecs) == [] and ocsf_errors(ocsf) == [], a["intel"]
        i = a["intel"][0]
        assert eve["alert"]["signature_id"] == 1_900_020 and eve["alert"]["category"] == "Potentially Bad Traffic"
        assert eve["alert"]["metadata"]["ntds_intel_indicator"] == [f"{i['type']} {i['value']}"]
        assert eve["alert"]["metadata"]["ntds_intel_source"] == [i["source"]]
        (e,) = ecs["threat"]["enrichments"]
        assert e["indicator"]["provider"] == i["source"] and e["matched"]["type"] == "indicator_match_rule"
        assert ocsf["unmapped"]["ntds"]["intel"] == a["intel"]
    ecs = [formats.ecs_document(a, "k")["threat"]["enrichments"][0] for a in alerts]
    assert [e["indicator"]["confidence"] for e in ecs] == ["High", "Medium", "Low"]
    assert ecs[0]["indicator"]["ip"] == "203.0.113.9" and ecs[0]["matched"]["field"] == "destination.ip"
    assert ecs[1]["indicator"]["url"]["domain"] == "evil.example" and ecs[1]["matched"]["atomic"] == "www.evil.example"
    assert ecs[2]["matched"]["field"] == "tls.server.ja3s"


@pytest.mark.parametrize("fmt", ["auto", "plain", "csv", "zeek", "stix", "misp", "ntds"])
def test_arbitrary_bytes_are_read_or_refused_in_one_line_never_a_crash(tmp_path, fmt):
    """Whatever a file holds, a reader returns indicators or raises InputError (the command's one line)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    heads = [b"", b"#fields\tindicator\tindicator_type\n", b"#separator \\x", b"indicator,type\n",
             b'{"type": "bundle", "objects": [', b'{"Event": {"Attribute": [', b"# ntds-intel 1\n{}\n"]  # fmt: skip

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(heads), st.binary(max_size=200))
    def check(head, tail):
        f = tmp_path / "f.csv"
        f.write_bytes(head + tail)
        try:
            load(f, fmt)
        except InputError as e:
            assert "\n" not in str(e)

    check()


def _cli_hits(*args) -> set:
    run = subprocess.run([sys.executable, "-m", "sensor.cli", "score", *map(str, args), "--baseline",
                          str(ROOT / "config" / "baseline.json"), "--all"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = set()
    for a in map(json.loads, run.stdout.splitlines()):
        if a["kind"] == "intel":
            for f in a["flows"]:
                conv = (frozenset({(f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])}), f["protocol"])
                out.add((a["intel"][0]["type"], a["intel"][0]["value"], conv))
    return out


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared captures not present (../shared/pcaps)")
@pytest.mark.parametrize("name", ["443-curl.pcap", "ssh.pcap"])
def test_a_flow_file_with_its_extra_columns_matches_as_its_capture(tmp_path, name):
    """`features --extra` keeps the server name and fingerprints, so `score FLOWS.parquet --intel` finds what
    `score CAPTURE --intel` finds on the same flows (a flow file has no single-packet flows)."""
    import pyarrow.parquet as pq

    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{name} not in ../shared/pcaps")
    seen = direct_search(path)
    feed = tmp_path / "feed.csv"
    feed.write_text("indicator,type\n" + "".join(f"{i.value},{i.type}\n" for i in _indicators(seen)))
    flows = tmp_path / "flows.parquet"
    run = subprocess.run([sys.executable, "-m", "sensor.cli", "features", str(path), "--extra", "-o", str(flows)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    t = pq.read_table(flows).to_pydict()
    convs = {(frozenset({(s, sp), (d, dp)}), p) for s, sp, d, dp, p in zip(
        t["Source.IP"], t["Source.Port"], t["Destination.IP"], t["Destination.Port"], t["Protocol"])}  # fmt: skip
    from_capture = {h for h in _cli_hits(path, "--intel", feed) if h[2] in convs}
    from_flows = _cli_hits(flows, "--intel", feed)
    assert from_flows == from_capture and {k for k, _, _ in from_flows} - {"ip", "net"}  # names or fingerprints too


def test_new_since_is_what_the_older_set_lacks():
    """What a sensor retro-hunts when a set arrives: the indicators the set it ran did not have, whatever dates
    their sources gave them."""
    old = IntelSet([Indicator("ip", "203.0.113.9", "a", 90, added=5.0), Indicator("domain", "evil.example", "a"),
                    Indicator("net", "198.51.100.0/24", "a")], now=0)  # fmt: skip
    new = IntelSet([Indicator("ip", "203.0.113.9", "b", 10), Indicator("domain", "evil.example", "a"),
                    Indicator("net", "198.51.100.0/25", "a"), Indicator("ip", "192.0.2.1", "c", added=1.0),
                    Indicator("ja3s", "ae53107a2e47ea20c72ac44821a728bf", "c")], now=0)  # fmt: skip
    assert sorted(i.value for i in new.new_since(old)) == ["192.0.2.1", "198.51.100.0/25",
                                                           "ae53107a2e47ea20c72ac44821a728bf"]  # fmt: skip
    assert new.new_since(None) is new and len(new.new_since(new)) == 0
