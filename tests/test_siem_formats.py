"""The SOC's field sets, checked with the ecosystem's own references (tests/schemas/README.md): every alert kind
through a real `ntds-aggregator serve` to file, webhook and syslog receivers in EVE, ECS and OCSF; EVE
validated by Suricata's JSON schema (8.0.6), ECS against ECS 9.4.0's field definitions, OCSF against the
OCSF 1.5.0 Detection Finding schema (ocsf-json-schema, from OCSF's published schema); syslog read by an
independent RFC 5424 parser over UDP and TCP."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from datetime import datetime
from functools import cache
from pathlib import Path

import jsonschema
import pytest

from aggregator.broadcast import formats
from aggregator.broadcast.routes import ReceiverConfig
from aggregator.broadcast.senders import Eve
from ntds.detect.alerts import flow_alert, host_alert
from ntds.detect.grouping import Grouper, GroupingOptions
from ntds.detect.hosts.base import Finding
from ntds.flows.traffic import FlowTraffic
from tests.receivers import SyslogListener, WebhookServer
from tests.test_broadcast import HOSTILE, Aggregator
from tests.test_transport import wait

SCHEMAS = Path(__file__).parent / "schemas"
T0 = 1794816000000  # 2026-11-16T08:00:00Z
SUFFIX = re.compile(r"\.\d{6}\+0000$")


@cache
def suricata() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / "suricata-8.0.6-eve.schema.json").read_text()))


@cache
def ocsf() -> jsonschema.Draft202012Validator:
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=formats.OCSF_VERSION))
    return jsonschema.Draft202012Validator(schema.get_class_schema("detection_finding", []))


@cache
def ecs_fields() -> dict:
    data = json.loads((SCHEMAS / f"ecs-{formats.ECS_VERSION}-fields.json").read_text())
    assert data["ecs_version"] == formats.ECS_VERSION
    return data["fields"]


def eve_errors(record: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in suricata().iter_errors(record)]


def ocsf_errors(record: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in ocsf().iter_errors(record)]


def _leaves(doc: dict, prefix: str = ""):
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaves(v, name + ".")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):  # a nested field (threat.enrichments)
            yield name, v
            for x in v:
                yield from _leaves(x, name + ".")
        else:
            yield name, v


ECS_TYPES = {
    "keyword": str, "constant_keyword": str, "wildcard": str, "text": str, "match_only_text": str,
    "long": int, "integer": int, "short": int, "byte": int, "unsigned_long": int,
    "float": (int, float), "double": (int, float), "scaled_float": (int, float), "half_float": (int, float),
    "boolean": bool, "date": str, "ip": str, "object": dict, "flattened": dict, "nested": dict,
}  # fmt: skip


def ecs_errors(doc: dict, custom: str = formats.PRODUCT) -> list[str]:
    """What in `doc` breaks ECS: a field ECS does not define (outside the custom `ntds` object, which must not
    be an ECS field set), a value of the wrong type, an array field given as a scalar, a value outside the
    allowed ones, an event.type that no event.category expects."""
    fields = ecs_fields()
    errors = []
    if any(name.split(".")[0] == custom for name in fields):
        errors.append(f"{custom} is an ECS field set: custom fields would collide")
    for name, value in _leaves(doc):
        if name.split(".")[0] == custom:
            continue
        f = fields.get(name)
        if f is None:
            errors.append(f"{name}: not an ECS field")
            continue
        if "array" in f.get("normalize", []) and not isinstance(value, list):
            errors.append(f"{name}: ECS normalises it to an array")
        for v in value if isinstance(value, list) else [value]:
            want = ECS_TYPES.get(f["type"])
            if want is None:
                errors.append(f"{name}: type {f['type']} not checked here")
            elif not isinstance(v, want) or (want is int and isinstance(v, bool)):
                errors.append(f"{name}: {v!r} is not {f['type']}")
            elif f["type"] == "ip":
                try:
                    ipaddress.ip_address(v)
                except ValueError:
                    errors.append(f"{name}: {v!r} is not an IP address")
            elif f["type"] == "date":
                try:
                    datetime.fromisoformat(v)
                except ValueError:
                    errors.append(f"{name}: {v!r} is not an ISO-8601 date")
            if "allowed_values" in f and v not in f["allowed_values"]:
                errors.append(f"{name}: {v!r} is not one of ECS's allowed values")
    event = doc.get("event", {})
    expected = {t for c in event.get("category", []) for t in fields["event.category"]["allowed_values"].get(c, [])}
    errors += [f"event.type {t} is expected by none of the categories" for t in event.get("type", [])
               if t not in expected]  # fmt: skip
    return errors


def flow(src: str, dst: str, sport: int, dport: int, protocol: int, app: str, axis: str = "volume") -> dict:
    t = FlowTraffic(T0, src, dst, sport, dport, protocol, 900, 99_000_000, 10, 600, app, end_ms=T0 + 100_000)
    explanation = [{"axis": axis, "value": 9.9e7, "typical": 6000.0, "score": 8.1, "text": HOSTILE}]
    return flow_alert(t, f"{src}-{dst}-{sport}-{dport}-{protocol}", "application", 3.25, 4, explanation,
                      "2026-11-23T02:00:00Z robust", {"Flow.Duration": 1e8})  # fmt: skip


def detector(kind: str, protocol: int, dst_port: int = 0, domain: str = "", k: int = 0) -> dict:
    f = Finding(kind=kind, src_ip=f"10.9.0.{k + 1}", first_ms=T0 + k * 1000, last_ms=T0 + k * 1000 + 500,
                count=20, window_s=300, tier=3 + k % 3, score=1.5, signature=f"{kind} from 10.9.0.{k + 1}",
                dst_ip="192.0.2.7", dst_port=dst_port, protocol=protocol, domain=domain, application="",
                facts=[{"what": "x", "value": 20.0, "typical": 15.0, "score": 1.3, "text": "20 of something"}],
                pattern="192.0.2.7")  # fmt: skip
    return host_alert(f, "test baseline")


def overflow() -> dict:
    grouper = Grouper(GroupingOptions(group_wait_s=0, budget_per_hour=1))
    out = []
    for k in range(4):
        out += grouper.add(detector("port-scan", 6, k=k), T0 + k * 1000)
    out += grouper.close()
    (alert,) = [a for a in out if a["kind"] == "overflow"]
    return alert


def every_kind() -> list[dict]:
    """One alert of every kind the sensor sends (and rare flows over TCP, UDP over IPv6, and ICMP)."""
    return [
        flow("10.1.0.10", "93.184.216.34", 42000, 443, 6, "TLS.Google"),
        flow("2001:db8::10", "2001:db8::53", 5353, 53, 17, "DNS", axis="duration"),
        flow("10.1.0.11", "10.1.0.1", 0, 0, 1, "ICMP", axis="avpktsz"),
        detector("port-scan", 6, k=1),
        detector("host-sweep", 6, dst_port=22, k=2),
        detector("brute-force", 6, dst_port=22, k=3),
        detector("beacon", 6, dst_port=443, k=4),
        detector("long-connection", 6, dst_port=22, k=5),
        detector("dns-tunnel", 17, dst_port=53, domain="tunnel.example", k=6),
        detector("exfiltration", 6, dst_port=443, k=7),
        detector("icmp-tunnel", 1, k=8),
        overflow(),
    ]


def test_every_kind_in_every_format_validates_against_the_standards_schemas():
    alerts = [{"id": i + 1, "sensor": "tap-01", **a} for i, a in enumerate(every_kind())]
    kinds = {a["kind"] for a in alerts}
    assert kinds == {"flow", "overflow", *formats.ATTACK}
    for a in alerts:
        eve, ecs = formats.eve_record(a, "k-1-1"), formats.ecs_document(a, "k-1-1")
        finding = formats.ocsf_finding(a, "k-1-1")
        assert eve_errors(eve) == [], (a["kind"], eve_errors(eve))
        assert ecs_errors(ecs) == [], (a["kind"], ecs_errors(ecs))
        assert ocsf_errors(finding) == [], (a["kind"], ocsf_errors(finding))
    # the validators are live: the shapes the issue found fail them
    eve = formats.eve_record(alerts[0], "k-1-1")
    assert eve_errors({**eve, "timestamp": "2026-11-16T08:00:00.000000Z"})
    assert eve_errors({**eve, "ntds": {"delivery": "k-1-1"}})
    assert eve_errors({**eve, "alert": {**eve["alert"], "ntds_kind": "flow"}})
    doc = formats.ecs_document(alerts[3], "k-1-1")
    assert ecs_errors({**doc, "source": {"address_ip": "10.9.0.2"}})
    assert ecs_errors({**doc, "event": {**doc["event"], "kind": "finding"}})
    assert ecs_errors({**doc, "event": {**doc["event"], "type": ["user"]}})
    finding = formats.ocsf_finding(alerts[3], "k-1-1")
    assert ocsf_errors({**finding, "class_uid": 2001})
    assert ocsf_errors({k: v for k, v in finding.items() if k != "time"})


def test_eve_has_suricatas_fields_where_they_apply_and_only_there():
    tcp, udp6, icmp, scan, *_ = alerts = [{"id": i + 1, "sensor": "tap-01", **a} for i, a in enumerate(every_kind())]
    eve = {a["kind"] + a.get("application", ""): formats.eve_record(a, "k-1-1") for a in alerts}
    t = eve["flowTLS.Google"]
    assert t["timestamp"] == "2026-11-16T08:00:00.000000+0000" and SUFFIX.search(t["timestamp"])
    assert t["community_id"] == tcp["community_id"] and t["community_id"].startswith("1:")
    assert isinstance(t["flow_id"], int) and 0 < t["flow_id"] < 2**53
    assert t["flow_id"] == formats.eve_record(tcp, "another-key")["flow_id"]  # stable across deliveries
    assert (t["src_port"], t["dest_port"], t["proto"], t["app_proto"]) == (42000, 443, "TCP", "tls")
    assert t["host"] == "tap-01"
    assert t["alert"]["metadata"]["ntds_kind"] == ["flow"] and t["alert"]["metadata"]["ntds_delivery"] == ["k-1-1"]
    assert t["alert"]["metadata"]["ntds_explanation"] == [HOSTILE] and t["alert"]["signature"] == tcp["signature"]
    assert eve["flowDNS"]["proto"] == "UDP" and eve["flowDNS"]["community_id"] == udp6["community_id"] != ""
    # no 5-tuple: no community_id, no ports (omitted, never empty); no flow: no flow_id
    for key in ("flowICMP", "port-scan", "beacon", "dns-tunnel", "icmp-tunnel", "overflow"):
        assert "community_id" not in eve[key] and "src_port" not in eve[key], key
    assert all("flow_id" not in eve[k] for k in eve if not k.startswith("flow"))
    assert "dest_port" not in eve["port-scan"] and eve["beacon"]["dest_port"] == 443
    assert "src_ip" not in eve["overflow"] and "proto" not in eve["overflow"]
    assert eve["icmp-tunnel"]["proto"] == "ICMP"
    assert eve["port-scan"]["alert"]["category"] == "Detection of a Network Scan"
    assert scan["community_id"] == "" and icmp["community_id"] == ""


def test_signature_ids_are_stable_per_detector_and_pattern_in_the_documented_ranges():
    alerts = every_kind()
    sids = {a["kind"] + a.get("application", ""): formats.signature_id(a) for a in alerts}
    assert sids["port-scan"] == 1_900_200 and sids["icmp-tunnel"] == 1_900_900 and sids["overflow"] == 1_900_010
    assert sids["flowTLS.Google"] == 1_900_103  # volume (axis 1) high
    assert sids["flowDNS"] == 1_900_101 and sids["flowICMP"] == 1_900_105  # duration high, avpktsz high
    low = flow("10.1.0.10", "93.184.216.34", 42000, 443, 6, "TLS", axis="volume")
    low["explanation"][0]["value"] = 10.0
    assert formats.signature_id(low) == 1_900_104
    assert len(set(sids.values())) == len(sids)  # every detector and flow pattern its own id
    assert all(1_900_000 <= s <= 1_900_999 for s in sids.values())
    assert formats.signature_id({"kind": "a-new-detector"}) == formats.UNKNOWN_SID
    # the README documents every id
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for kind, sid in formats.KIND_SIDS.items():
        assert f"`{sid:,}`" in readme or f"`{sid}`" in readme, kind


def test_formats_tolerate_fields_a_newer_sensor_adds():
    a = {"id": 9, "sensor": "tap-01", **detector("beacon", 6, dst_port=443),
         "flows": ["10.9.0.1-192.0.2.7-40000-443-6"], "something_new": {"nested": 1}}  # fmt: skip
    eve = formats.eve_record(a, "k")
    assert eve_errors(eve) == [] and eve["alert"]["metadata"]["ntds_flows"] == a["flows"]
    assert ecs_errors(formats.ecs_document(a, "k")) == [] and ocsf_errors(formats.ocsf_finding(a, "k")) == []


def test_the_file_receiver_knows_its_deliveries_in_every_format(tmp_path):
    alerts = [{"id": 1, "sensor": "tap-01", **a} for a in every_kind()[:2]]
    for fmt in formats.FORMATS:
        path = tmp_path / f"{fmt}.json"
        cfg = ReceiverConfig("f", "file", 60, {"path": str(path), "rotate_mb": 100, "keep": 2, "format": fmt})
        note = {"idempotency_key": f"f-1-{fmt}", "alerts": alerts}
        Eve(cfg).send(note)
        Eve(cfg).send(note)  # a new process (the sender reads the file back): the delivery is there already
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert len(lines) == 2 and {formats.delivery_key(x) for x in lines} == {f"f-1-{fmt}"}, fmt


def test_every_receiver_sends_every_format_end_to_end(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-for-the-hmac\n")
    hooks = {fmt: WebhookServer(b"s3cret-for-the-hmac").start() for fmt in formats.FORMATS}
    udp, tcp, tcp_json = SyslogListener("udp"), SyslogListener("tcp"), SyslogListener("tcp")
    receivers = [{"name": f"file-{fmt}", "type": "file", "format": fmt, "path": str(tmp_path / f"{fmt}.json")}
                 for fmt in formats.FORMATS]  # fmt: skip
    receivers += [{"name": f"hook-{fmt}", "type": "webhook", "format": fmt, "url": hooks[fmt].url,
                   "secret_file": str(secret)} for fmt in formats.FORMATS]  # fmt: skip
    receivers += [{"name": "udp", "type": "syslog", "host": "127.0.0.1", "port": udp.port, "format": "eve"},
                  {"name": "tcp", "type": "syslog", "host": "127.0.0.1", "port": tcp.port, "protocol": "tcp"},
                  {"name": "tcp-ocsf", "type": "syslog", "host": "127.0.0.1", "port": tcp_json.port,
                   "protocol": "tcp", "format": "ocsf"}]  # fmt: skip
    names = [r["name"] for r in receivers]
    agg = Aggregator(tmp_path, receivers, [{"receivers": names, "group_wait_s": 0, "group_by": ["kind"]}]).start()
    alerts = every_kind()
    try:
        agg.send(alerts)
        n = len({a["kind"] for a in alerts})
        wait(lambda: agg.outbox("SELECT COUNT(*) FROM outbox WHERE status = 'delivered'") >= n * len(names), 40,
             "every delivery")  # fmt: skip
        wait(lambda: len(udp.messages) == len(tcp.messages) == len(tcp_json.messages) == len(alerts), 10, "syslog")
        files = {fmt: [json.loads(x) for x in (tmp_path / f"{fmt}.json").read_text().splitlines()]
                 for fmt in formats.FORMATS}  # fmt: skip
        posted = {fmt: [r for note in hooks[fmt].received for r in note["records"]] for fmt in formats.FORMATS}
        for fmt, check in (("eve", eve_errors), ("ecs", ecs_errors), ("ocsf", ocsf_errors)):
            for records in (files[fmt], posted[fmt]):
                assert len(records) == len(alerts), fmt
                assert [e for r in records for e in check(r)] == [], fmt
        assert {r["alert"]["metadata"]["ntds_kind"][0] for r in files["eve"]} == {a["kind"] for a in alerts}
        assert all(r["host"] == "tap-01" for r in files["eve"])
        assert {r["event"]["kind"] for r in files["ecs"]} == {"alert"}
        assert {r["class_uid"] for r in files["ocsf"]} == {2004}
        # syslog: read by the independent parser; HOSTNAME the FQDN where the host has one
        name = socket.gethostname()
        full = socket.getfqdn(name)
        want_host = full if "." in full and not full.startswith("localhost") else name
        for listener in (udp, tcp, tcp_json):
            assert {m["hostname"] for m in listener.messages} == {want_host}
            assert {m["sd_id"] for m in listener.messages} == {"ntds@32473"}
            assert all(m["params"]["key"] for m in listener.messages)
        assert [e for m in udp.messages for e in eve_errors(json.loads(m["msg"]))] == []
        assert [e for m in tcp_json.messages for e in ocsf_errors(json.loads(m["msg"]))] == []
        assert {m["params"]["format"] for m in udp.messages} == {"eve"}
        assert {m["params"]["kind"] for m in tcp.messages} == {a["kind"] for a in alerts}  # the ntds fields as SD
        assert all("\n" not in m["msg"] and "\x1b" not in m["msg"] for m in udp.messages + tcp.messages)
    finally:
        agg.stop()
        for hook in hooks.values():
            hook.stop()
        for listener in (udp, tcp, tcp_json):
            listener.stop()


@pytest.mark.parametrize("fmt", ["ntds", "csv"])
def test_a_file_receiver_refuses_formats_it_cannot_write(tmp_path, fmt):
    import subprocess

    from tests.test_broadcast import BIN

    cfg = tmp_path / "agg.yaml"
    receivers = [{"name": "x", "type": "file", "path": "e.json", "format": fmt}]
    cfg.write_text(f"store: {tmp_path / 's.db'}\nreceivers: {json.dumps(receivers)}\nroutes: []\n")
    p = subprocess.run([str(BIN / "ntds-aggregator"), "deliveries", "--config", str(cfg)], capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == 2 and "format must be one of eve, ecs, ocsf" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
