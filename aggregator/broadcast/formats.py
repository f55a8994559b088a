"""The field sets SOC tools expect, one record per alert: Suricata EVE, Elastic Common Schema, OCSF.

- `eve`: an EVE `event_type: alert` line that validates against Suricata's own JSON schema
  (etc/schema.json, suricata-8.0.6): Suricata's timestamp (`2026-11-19T14:00:00.000000+0000`), the
  alert's `signature_id`, `gid` and `rev` (see `SIDS`), an integer `flow_id` where a flow is behind the
  alert, `community_id` only where there is a 5-tuple, ports and protocol only where they apply (omitted,
  never empty or 0), the sensor as `host`, and ntds's own fields in `alert.metadata` as Suricata writes rule
  metadata (`ntds_kind: ["port-scan"]`: every value a list of strings), the one place the closed schema
  leaves open.
- `ecs`: an Elastic Common Schema 9.4 document (`event.kind: alert`, `source.*`, `destination.*`,
  `network.community_id`, `rule.*`, `threat.*` with MITRE ATT&CK where a detector maps to a technique),
  ntds's own fields under the custom `ntds` object.
- `ocsf`: an OCSF 1.5.0 Detection Finding (class 2004, Create), the two ends in `evidences`, ntds's own
  fields under `unmapped`.

Every record carries the delivery's idempotency key (`delivery_key` reads it back), so a file receiver
recognises a delivery it already holds. Strings from the network stay what they were: each format is
JSON, and the encoder escapes them. Fields an alert has beyond these (newer sensors) are tolerated: EVE's
metadata carries every scalar or list of scalars, the other formats ignore what they do not map.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from ntds.detect.scoring import AXES
from ntds.networks import protocol_name

FORMATS = ("eve", "ecs", "ocsf")
ECS_VERSION = "9.4.0"
OCSF_VERSION = "1.5.0"
PRODUCT = "ntds"

GID = 1
"""Suricata's generator id for signature (rule) alerts."""
REV = 1
"""Revision of every ntds signature: raised when a detector's meaning changes."""
SID_BASE = 1_900_000
"""ntds's signature ids: 1,900,000-1,900,999, inside the 1,000,000-1,999,999 range rule sets leave for local
rules, so they never collide with Emerging Threats' or Snort's."""
KIND_SIDS = {
    "flow": 1_900_100,
    "port-scan": 1_900_200,
    "host-sweep": 1_900_300,
    "brute-force": 1_900_400,
    "beacon": 1_900_500,
    "long-connection": 1_900_600,
    "dns-tunnel": 1_900_700,
    "exfiltration": 1_900_800,
    "icmp-tunnel": 1_900_900,
    "intel": 1_900_020,
    "overflow": 1_900_010,
}
"""First signature id of each kind's block of 100 (one detector's alert is its block's first id)."""
UNKNOWN_SID = 1_900_001
"""A kind this aggregator does not know yet (a newer sensor's detector)."""

CATEGORY = {
    "flow": "Unknown Traffic",
    "port-scan": "Detection of a Network Scan",
    "host-sweep": "Detection of a Network Scan",
    "brute-force": "Attempted User Privilege Gain",
    "beacon": "Potentially Bad Traffic",
    "long-connection": "Potentially Bad Traffic",
    "dns-tunnel": "Potentially Bad Traffic",
    "exfiltration": "Large Scale Information Leak",
    "icmp-tunnel": "Detection of a non-standard protocol or event",
    "intel": "Potentially Bad Traffic",
    "overflow": "Misc activity",
}
"""Kind -> Suricata's classification (etc/classification.config descriptions), EVE's alert.category."""
EVE_SEVERITY = {5: 1, 4: 1, 3: 2}
"""Alert tier -> EVE alert.severity (1 highest, 3 lowest)."""

ATTACK = {
    "port-scan": (("TA0007", "Discovery"), ("T1046", "Network Service Discovery"), None),
    "host-sweep": (("TA0007", "Discovery"), ("T1046", "Network Service Discovery"), None),
    "brute-force": (("TA0006", "Credential Access"), ("T1110", "Brute Force"), None),
    "beacon": (("TA0011", "Command and Control"), ("T1071", "Application Layer Protocol"), None),
    "long-connection": (("TA0011", "Command and Control"), None, None),
    "dns-tunnel": (("TA0011", "Command and Control"), ("T1071", "Application Layer Protocol"), ("T1071.004", "DNS")),
    "exfiltration": (("TA0010", "Exfiltration"), None, None),
    "icmp-tunnel": (("TA0011", "Command and Control"), ("T1095", "Non-Application Layer Protocol"), None),
}
"""Kind -> MITRE ATT&CK (tactic, technique, sub-technique); rare flows and overflow map to none."""
ATTACK_VERSION = "17"

PORTED = (6, 17, 132)
OCSF_SEVERITY = {0: (1, "Informational"), 1: (1, "Informational"), 2: (2, "Low"), 3: (3, "Medium"),
                 4: (4, "High"), 5: (5, "Critical")}  # fmt: skip
"""Alert tier -> OCSF severity_id and its caption."""


def signature_id(alert: dict) -> int:
    """The stable signature id of an alert's detector and pattern: a host-level detector's block's first id;
    a rare flow by the axis that made it rare and its direction (axis i high: +1 + 2i, low: +2 + 2i; no
    axis: the block's first id)."""
    kind = str(alert.get("kind", ""))
    base = KIND_SIDS.get(kind)
    if base is None:
        return UNKNOWN_SID
    if kind != "flow":
        return base
    top = next(iter(alert.get("explanation") or []), None)
    if not isinstance(top, dict) or top.get("axis") not in AXES:
        return base
    i = AXES.index(top["axis"])
    try:
        low = float(top.get("value", 0)) < float(top.get("typical", 0))
    except (TypeError, ValueError):
        low = False
    return base + 1 + 2 * i + int(low)


def rule_name(sid: int) -> str:
    """A signature id in words (constant per id, like a rule's msg)."""
    for kind, base in KIND_SIDS.items():
        if base <= sid < base + 100:
            if kind != "flow" or sid == base:
                return f"NTDS {kind}" + (" (rare flow)" if kind == "flow" else "")
            i, low = divmod(sid - base - 1, 2)
            return f"NTDS rare flow: {AXES[i]} {'low' if low else 'high'}"
    return "NTDS alert"


def _time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def suricata_time(text: str) -> str:
    """ISO-8601 UTC as Suricata writes it: microseconds and a +0000 offset."""
    return _time(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def _ms(text: str) -> int:
    return int(_time(text).timestamp() * 1000)


def flow_number(alert: dict) -> int | None:
    """EVE's integer flow_id for an alert with a flow behind it: stable across deliveries (a hash of the
    sensor, the CICFlowMeter Flow.ID and the flow's start), below 2**53 as Suricata keeps it."""
    flow = alert.get("flow_id")
    if not flow:
        return None
    digest = hashlib.sha256(f"{alert.get('sensor', '')}|{flow}|{alert.get('first_seen', '')}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**51 - 1) or 1


def _proto(alert: dict) -> tuple[int, str]:
    number = alert.get("protocol") or 0
    if not isinstance(number, int) or number <= 0:
        return 0, ""
    return number, "IPv6-ICMP" if number == 58 else protocol_name(number)  # Suricata's name for ICMPv6


def _ported(alert: dict) -> bool:
    return _proto(alert)[0] in PORTED


def community(alert: dict) -> str:
    """The Community ID where the alert has a 5-tuple (TCP, UDP, SCTP with both ports); "" otherwise."""
    cid = alert.get("community_id") or ""
    if cid and _ported(alert) and alert.get("src_port") and alert.get("dst_port"):
        return str(cid)
    return ""


def app_proto(application: str) -> str:
    """nDPI's label as Suricata's app_proto vocabulary: the master protocol, lower case ("TLS.Google": tls)."""
    return str(application).split(".", 1)[0].lower()


def _strings(value) -> list[str] | None:
    if isinstance(value, bool | int | float | str):
        return [str(value)] if str(value) != "" else None
    if isinstance(value, list) and value and all(isinstance(v, bool | int | float | str) for v in value):
        return [str(v) for v in value]
    return None


def _texts(alert: dict) -> list[str]:
    return [str(e.get("text", "")) for e in alert.get("explanation") or [] if isinstance(e, dict)]


METADATA_SKIP = frozenset({"features", "explanation", "signature", "first_seen", "src_ip", "dst_ip", "src_port",
                           "dst_port", "community_id"})  # fmt: skip
"""Alert fields EVE carries elsewhere (or not at all: features, the flow's 87 numbers)."""


def eve_record(alert: dict, key: str) -> dict:
    """One alert as a Suricata EVE alert event (validates against Suricata's schema)."""
    number, proto = _proto(alert)
    sid = signature_id(alert)
    metadata = {"ntds_delivery": [key]}
    for name, value in alert.items():
        if name in METADATA_SKIP:
            continue
        strings = _strings(value)
        if strings:
            metadata[f"ntds_{name}"] = strings
    texts = _texts(alert)
    if texts:
        metadata["ntds_explanation"] = texts
    for i in _intel(alert):  # an indicator match: what, whose, how sure (EVE metadata holds lists of strings)
        metadata |= {"ntds_intel_indicator": [f"{i.get('type')} {i.get('value')}"],
                     "ntds_intel_source": [str(i.get("source", ""))],
                     "ntds_intel_confidence": [str(i.get("confidence", ""))],
                     "ntds_intel_found_later": [str(bool(i.get("found_later"))).lower()]}  # fmt: skip
    record: dict = {"timestamp": suricata_time(alert.get("first_seen", "")), "event_type": "alert"}
    flow = flow_number(alert)
    if flow is not None:
        record["flow_id"] = flow
    if alert.get("sensor"):
        record["host"] = str(alert["sensor"])
    if alert.get("src_ip"):
        record["src_ip"] = alert["src_ip"]
    if alert.get("src_port") and number in PORTED:
        record["src_port"] = alert["src_port"]
    if alert.get("dst_ip"):
        record["dest_ip"] = alert["dst_ip"]
    if alert.get("dst_port") and number in PORTED:
        record["dest_port"] = alert["dst_port"]
    if proto:
        record["proto"] = proto
    if alert.get("application"):
        record["app_proto"] = app_proto(alert["application"])
    cid = community(alert)
    if cid:
        record["community_id"] = cid
    record["alert"] = {
        "action": "allowed",
        "gid": GID,
        "signature_id": sid,
        "rev": REV,
        "signature": str(alert.get("signature", "")),
        "category": CATEGORY.get(str(alert.get("kind", "")), "Misc activity"),
        "severity": EVE_SEVERITY.get(alert.get("tier", 0), 3),
        "metadata": metadata,
    }
    return record


def _intel(alert: dict) -> list[dict]:
    return [i for i in alert.get("intel") or [] if isinstance(i, dict)]


ECS_INDICATOR = {"ip": ("ip", "destination.ip"), "net": ("ip", "destination.ip"),
                 "domain": ("url.domain", "dns.question.name"), "ja3": ("name", "tls.client.ja3"),
                 "ja3s": ("name", "tls.server.ja3s"), "ja4": ("name", "tls.client.ja4"),
                 "hassh": ("name", "ssh.client.hassh"), "hassh_server": ("name", "ssh.server.hassh")}  # fmt: skip
"""Indicator type -> where ECS puts its value in threat.enrichments.indicator, and the event field it matched."""


def _ecs_enrichments(alert: dict) -> list[dict]:
    """An intel alert's indicator as ECS threat.enrichments (what SIEM indicator-match rules write)."""
    out = []
    for i in _intel(alert):
        kind, value = str(i.get("type", "")), str(i.get("value", ""))
        where, field = ECS_INDICATOR.get(kind, ("name", ""))
        if i.get("matched") == "src_ip":
            field = "source.ip"
        if i.get("matched") == "server_name" and alert.get("application", "").startswith(("TLS", "QUIC", "HTTP")):
            field = "tls.client.server_name"
        c = int(i.get("confidence", 0) or 0)
        level = "High" if c >= 70 else "Medium" if c >= 40 else "Low" if c else "None"  # ECS's confidence words
        indicator: dict = {
            "provider": str(i.get("source", "")),
            "description": f"{kind} indicator",
            "confidence": level,
        }
        if kind in ("ip", "net"):
            ip = alert.get("dst_ip") if i.get("matched") == "dst_ip" else alert.get("src_ip")
            indicator["type"] = "ipv6-addr" if ":" in value else "ipv4-addr"
            if kind == "ip":
                indicator["ip"] = value
            else:
                indicator["name"] = value
            atomic = str(ip or value)
        else:
            if kind == "domain":
                indicator["type"] = "domain-name"
            indicator[where.split(".")[0]] = {"domain": value} if where == "url.domain" else value
            atomic = str(alert.get("domain") or value) if kind == "domain" else value
        if i.get("added"):
            indicator["first_seen"] = datetime.fromtimestamp(int(i["added"]), UTC).isoformat().replace("+00:00", "Z")
        out.append({"indicator": indicator, "matched": {"atomic": atomic, "field": field or "destination.ip",
                                                       "type": "indicator_match_rule"}})  # fmt: skip
    return out


def _extras(alert: dict, key: str) -> dict:
    """ntds's own fields, for the formats' extension places (ECS `ntds`, OCSF `unmapped.ntds`)."""
    out = {"delivery": key, "alert_id": alert.get("id"), "sensor": alert.get("sensor"), "kind": alert.get("kind"),
           "tier": alert.get("tier"), "tier_label": alert.get("tier_label"), "count": alert.get("count"),
           "window_s": alert.get("window_s"), "score": alert.get("score"), "baseline": alert.get("baseline"),
           "baseline_id": alert.get("baseline_id"), "pattern": alert.get("pattern"),
           "flow_id": alert.get("flow_id"), "application": alert.get("application"),
           "explanation": _texts(alert), "intel": _intel(alert)}  # fmt: skip
    return {k: v for k, v in out.items() if v not in (None, "", [])}


def _attack_ref(uid: str) -> str:
    if uid.startswith("TA"):
        return f"https://attack.mitre.org/tactics/{uid}/"
    return f"https://attack.mitre.org/techniques/{uid.replace('.', '/')}/"


def ecs_document(alert: dict, key: str) -> dict:
    """One alert as an Elastic Common Schema document (event.kind: alert)."""
    number, _ = _proto(alert)
    kind = str(alert.get("kind", ""))
    sid = signature_id(alert)
    event = {"kind": "alert", "category": ["network", "intrusion_detection"], "type": ["info"],
             "module": PRODUCT, "dataset": f"{PRODUCT}.alert", "severity": int(alert.get("tier", 0)),
             "start": alert.get("first_seen"), "end": alert.get("last_seen"),
             "id": f"{alert.get('sensor', '')}-{alert.get('id', '')}"}  # fmt: skip
    doc: dict = {"@timestamp": alert.get("first_seen"), "ecs": {"version": ECS_VERSION},
                 "message": str(alert.get("signature", "")), "event": event,
                 "observer": {"vendor": PRODUCT, "product": PRODUCT, "type": "ids"}}  # fmt: skip
    if alert.get("sensor"):
        doc["observer"]["name"] = str(alert["sensor"])
    related = []
    for side, ip, port in (("source", "src_ip", "src_port"), ("destination", "dst_ip", "dst_port")):
        if alert.get(ip):
            doc[side] = {"ip": alert[ip]}
            related.append(alert[ip])
            if alert.get(port) and number in PORTED:
                doc[side]["port"] = alert[port]
    network = {}
    if number:
        network["iana_number"] = str(number)
        name = protocol_name(number).lower()
        network["transport"] = "ipv6-icmp" if number == 58 else name
    if alert.get("application"):
        network["protocol"] = app_proto(alert["application"])
    cid = community(alert)
    if cid:
        network["community_id"] = cid
    if network:
        doc["network"] = network
    if related:
        doc["related"] = {"ip": list(dict.fromkeys(related))}
    if alert.get("domain"):
        doc["dns"] = {"question": {"registered_domain": str(alert["domain"])}}
    doc["rule"] = {"id": str(sid), "name": rule_name(sid), "category": CATEGORY.get(kind, "Misc activity"),
                   "ruleset": PRODUCT, "version": str(REV), "description": str(alert.get("signature", ""))}  # fmt: skip
    attack = ATTACK.get(kind)
    if attack:
        (tactic_id, tactic), technique, sub = attack
        tactics = {"id": [tactic_id], "name": [tactic], "reference": [_attack_ref(tactic_id)]}
        threat: dict = {"framework": "MITRE ATT&CK", "tactic": tactics}
        if technique:
            threat["technique"] = {"id": [technique[0]], "name": [technique[1]],
                                   "reference": [_attack_ref(technique[0])]}  # fmt: skip
            if sub:
                threat["technique"]["subtechnique"] = {"id": [sub[0]], "name": [sub[1]],
                                                       "reference": [_attack_ref(sub[0])]}  # fmt: skip
        doc["threat"] = threat
    enrichments = _ecs_enrichments(alert)
    if enrichments:
        doc.setdefault("threat", {})["enrichments"] = enrichments
    doc[PRODUCT] = _extras(alert, key)
    return doc


def ocsf_finding(alert: dict, key: str) -> dict:
    """One alert as an OCSF Detection Finding (class 2004, activity Create)."""
    number, proto = _proto(alert)
    kind = str(alert.get("kind", ""))
    sid = signature_id(alert)
    severity_id, severity = OCSF_SEVERITY.get(alert.get("tier", 0), (1, "Informational"))
    first, last = _ms(alert.get("first_seen", "")), _ms(alert.get("last_seen", alert.get("first_seen", "")))
    texts = _texts(alert)
    statistical = kind == "flow"
    info: dict = {"uid": f"{alert.get('sensor', '')}-{alert.get('id', '')}", "title": str(alert.get("signature", "")),
                  "types": [kind or "alert"], "first_seen_time": first, "last_seen_time": last,
                  "analytic": {"uid": str(sid), "name": rule_name(sid), "type_id": 3 if statistical else 2,
                               "type": "Statistical" if statistical else "Behavioral"},
                  "product": {"name": PRODUCT, "vendor_name": PRODUCT}}  # fmt: skip
    if texts:
        info["desc"] = "; ".join(texts)
    attack = ATTACK.get(kind)
    if attack:
        (tactic_id, tactic), technique, sub = attack
        entry: dict = {"version": ATTACK_VERSION, "tactic": {"uid": tactic_id, "name": tactic}}
        if technique:
            entry["technique"] = {"uid": technique[0], "name": technique[1]}
        if sub:
            entry["sub_technique"] = {"uid": sub[0], "name": sub[1]}
        info["attacks"] = [entry]
    finding: dict = {
        "class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2, "category_name": "Findings",
        "activity_id": 1, "activity_name": "Create", "type_uid": 200401, "type_name": "Detection Finding: Create",
        "severity_id": severity_id, "severity": severity, "status_id": 1, "status": "New", "is_alert": True,
        "time": first, "start_time": first, "end_time": last, "timezone_offset": 0,
        "count": int(alert.get("count", 1) or 1), "message": str(alert.get("signature", "")),
        "metadata": {"version": OCSF_VERSION, "product": {"name": PRODUCT, "vendor_name": PRODUCT},
                     "uid": f"{key}-{alert.get('id', '')}", "correlation_uid": key},
        "finding_info": info,
    }  # fmt: skip
    evidence: dict = {}
    observables = []
    for side, ip, port in (("src_endpoint", "src_ip", "src_port"), ("dst_endpoint", "dst_ip", "dst_port")):
        if alert.get(ip):
            evidence[side] = {"ip": alert[ip]}
            observables.append({"name": f"evidences.{side}.ip", "type_id": 2, "type": "IP Address",
                                "value": alert[ip]})  # fmt: skip
            if alert.get(port) and number in PORTED:
                evidence[side]["port"] = alert[port]
    if alert.get("domain"):
        evidence.setdefault("dst_endpoint", {})["domain"] = str(alert["domain"])
    if evidence and number:
        connection = {"direction_id": 0, "direction": "Unknown", "protocol_num": number, "protocol_name": proto.lower()}
        cid = community(alert)
        if cid:
            connection["community_uid"] = cid
        if alert.get("flow_id"):
            connection["uid"] = str(alert["flow_id"])
        evidence["connection_info"] = connection
    if evidence:
        finding["evidences"] = [evidence]
    if observables:
        finding["observables"] = observables
    finding["unmapped"] = {PRODUCT: _extras(alert, key)}
    return finding


RECORDS = {"eve": eve_record, "ecs": ecs_document, "ocsf": ocsf_finding}


def record(fmt: str, alert: dict, key: str) -> dict:
    return RECORDS[fmt](alert, key)


def delivery_key(record_: dict) -> str | None:
    """The idempotency key a record of any of the formats (or an older EVE line) carries."""
    try:
        if "alert" in record_ and "metadata" in record_["alert"]:
            return record_["alert"]["metadata"]["ntds_delivery"][0]
        if "class_uid" in record_:
            return record_["unmapped"][PRODUCT]["delivery"]
        return record_[PRODUCT]["delivery"]  # ECS, and EVE lines of older versions
    except (KeyError, IndexError, TypeError):
        return None
