"""The wire schema between sensors and the aggregator: the one place a message type is declared.

Every message is one ZeroMQ frame holding one UTF-8 JSON object, the envelope:

    {"v": 4, "type": "alert", "sensor": "tap-01", "spool": "9f3c61d2a07b44e5", "seq": 42,
     "created": "2026-11-23T08:00:00.123456Z", "body": {...}}

`seq` is the sensor's own sequence number: it starts at 1, grows by one per
message and survives restarts (the spool keeps it). `spool` is the random id
the spool got when it was created, so a spool that was lost and recreated
(sequence numbers restarting at 1) never collides with what its predecessor
sent: (sensor, spool, seq, created) names a message exactly once however often
it is resent. The aggregator answers with an `ack` naming the spool and the
sequence numbers it has stored.

Older sensors are still accepted: version 1 (no spool id, no health state),
version 2 (alerts for single flows only), version 3 (no statistics) and
version 4 (no flows behind alerts, no evidence), version 5 (no threat intelligence), version 6
(no context messages) and version 7 (acknowledgements never say busy) frames are upgraded to version 8 on
decoding (`upgrade`): a version 2 alert becomes a `flow` alert with a count of 1, first and last seen at the
flow's start. Each sensor is acknowledged in its own version (`downgrade_body` leaves out what it does not
know), so a sensor can be upgraded after the aggregator without
losing what its spool holds. Bodies stored by an older aggregator are
upgraded the same way when read (`upgrade_body`).

Each message type is one `MessageType`: its fields, an example body, its rank
when the spool must drop something, and how it is flattened into archive rows
(or why it is not archived). Everything else is derived from these
declarations: the spool's drop order, the drop counters health messages
carry, the archive's rows, docs/wire.md (`python -m ntds.wire.docs`).

Decoding is strict all the way down: wrong JSON, wrong version, unknown type,
missing or unknown fields at any depth, wrong types, times that do not parse,
integers outside 0..2^63-1 and oversized frames all raise WireError, and
nothing else (a property test feeds the decoder arbitrary bytes). The archive
relies on this: a decoded message always converts to Parquet rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ntds.times import now_iso, parse_time

VERSION = 8
ACCEPTED_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8)
MAX_FRAME = 65536
"""Largest accepted frame in bytes; an alert is about 1 KB, a busy summary about 30 KB."""
INT_MAX = 2**53 - 1
"""Largest integer anywhere on the wire: exact in every JSON reader (and as a float)."""
COUNT_MAX = 2**40
"""Largest counter (flows, packets, bytes) in one message: 1.1e12, more than a 100 Gbit/s link carries in
a minute. Bounding every counter keeps every sum the report makes far from 64-bit overflow."""
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC)
"""Valid times on the wire and in the archive: the span of a classic pcap timestamp (unsigned 32-bit
seconds). Packets outside it cannot come from a real capture; messages dated outside it are refused."""
TIERS = 6
"""Rarity tiers 0 (common event) .. 5 (1 in 100000 event)."""
TRAFFIC_CLASSES = ("external", "local_service", "peer_to_peer", "other")
UNANSWERED_KINDS = ("ssdp_no_answer", "p2p_one_way", "unanswered")


class WireError(ValueError):
    """A frame that is not a valid message of this schema version; `reason` is how the aggregator counts it
    (malformed, oversized, version, time)."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class F:
    """One field: its kind, what it means, and for objects and lists their own fields.

    kinds: int (0..`top`), num (finite), str, time (ISO-8601 with a zone), obj
    (exactly `fields`), objs (a list of such objects, at most `max_items`), ints
    (a list of ints, of `length` items when set), nums (an object of at most
    `max_items` names, each a finite number), packed (text of at most `max_len`:
    base64 of a zlib-compressed JSON object with exactly `fields`, checked as
    strictly as the rest; `unpack` reads it).
    """

    kind: str
    meaning: str
    fields: dict[str, F] = field(default_factory=dict)
    length: int | None = None
    max_items: int = 10_000
    top: int = COUNT_MAX
    low: int = 0
    """Least accepted value (int and ints fields)."""
    choices: tuple[str, ...] = ()
    max_len: int = 4096
    """Longest accepted text (str fields)."""


@dataclass(frozen=True)
class Message:
    type: str
    sensor: str
    seq: int
    created: str
    body: dict
    spool: str = ""
    """The sending spool's id ("" for version 1 sensors)."""
    version: int = VERSION
    """The schema version the sender wrote (acknowledgements go back in it)."""


ArchiveRow = tuple[str, datetime, dict]
"""(archive table, the time that decides the row's day folder, the row's columns)."""


@dataclass(frozen=True)
class MessageType:
    """Everything ntds knows about one kind of message, declared once."""

    name: str
    meaning: str
    fields: dict[str, F]
    example: dict
    drop_rank: int | None
    """At the spool's size limit the lowest rank goes first; None: never spooled (sent by the aggregator)."""
    archive: Callable[[Message], Iterable[ArchiveRow]] | None = None
    """The message as archive rows (each keeps the message's sensor, spool and seq)."""
    not_archived: str = ""
    """Why a type without `archive` is deliberately left out of the archive."""
    check: Callable[[dict], None] | None = None
    """What the fields' own rules cannot say (lengths that must agree, names that must not repeat): ValueError."""


def _counts(*names: str, what: str) -> dict[str, F]:
    return {n: F("int", f"{n.replace('_', ' ')} {what}") for n in names}


def _base(m: Message) -> dict:
    return {"sensor": m.sensor, "spool": m.spool, "seq": m.seq}


DIRECTIONAL = {
    "flows": F("int", "flows started in the interval"),
    "packets_up": F("int", "packets from the local client side (see traffic classes)"),
    "packets_down": F("int", "packets towards the local client side"),
    "bytes_up": F("int", "IP bytes from the local client side"),
    "bytes_down": F("int", "IP bytes towards the local client side"),
}
INTERVAL_START = F("time", "interval start, ISO-8601 UTC; a flow belongs to the interval it started in")
FLOWS_BYTES = {"flows": F("int", "flows of this kind"), "bytes": F("int", "their IP bytes, both directions")}

ENVELOPE: dict[str, F] = {
    "v": F("int", "schema version (8; version 1 to 7 frames are upgraded on decoding)"),
    "type": F(
        "str",
        "hello, alert, summary, stats, context, health, evidence (from sensors); ack, baseline, intel, pcap_job (from "
        "the aggregator)",
        max_len=16,
    ),
    "sensor": F("str", "the sensor's id; the aggregator only accepts the id bound to the sender's key", max_len=64),
    "spool": F(
        "str",
        "the sending spool's random id, fixed when the spool was created (for an ack: the spool acknowledged)",
        max_len=64,
    ),  # fmt: skip
    "seq": F("int", "the sensor's message sequence number in this spool, from 1, never reused", top=INT_MAX),
    "created": F("time", "when the sensor created the message, ISO-8601 UTC"),
    "body": F("obj", "the type's fields below"),
}

# -- hello ------------------------------------------------------------------------------

HELLO = MessageType(
    "hello",
    "sent at start and after every reload: who the sensor is and what it judges with",
    {
        "software": F("str", "ntds version of the sensor"),
        "baseline_id": F("str", "identifies the baseline the sensor scores with (its build time and method)"),
        "feature_profile": F("str", "unicauca or corrected"),
        "intel_serial": F("int", "the grant serial of the indicator set it matches with (0: none)", top=INT_MAX),
    },
    {
        "software": "0.1.0",
        "baseline_id": "2026-11-23T02:00:00Z robust",
        "feature_profile": "unicauca",
        "intel_serial": 0,
    },  # fmt: skip
    drop_rank=4,
    not_archived="the store keeps each sensor's latest hello (`ntds-aggregator sensors`)",
)

# -- alert ------------------------------------------------------------------------------


def _archive_alert(m: Message) -> Iterable[ArchiveRow]:
    b = m.body
    t = parse_time(b["first_seen"])
    row = {k: v for k, v in b.items() if k not in ALERT_NOT_ARCHIVED}
    yield (
        "alerts",
        t,
        _base(m)
        | row
        | {
            "time": t,
            "last_seen": parse_time(b["last_seen"]),
            "explanation": json.dumps(b["explanation"]),
            "features": json.dumps(b["features"]),
        },
    )


ALERT_NOT_ARCHIVED = ("first_seen", "last_seen", "explanation", "features", "flows", "flows_total", "intel")
"""Alert fields the archive's alerts table does not take as they are (times and JSON columns are made of the first
four; the flows behind an alert stay in the store, where the alert manager reads them)."""

ALERT_KINDS_MEANING = (
    "flow (one flow rare for the baseline entry that judged it), a host-level detector's kind (port-scan, "
    "host-sweep, brute-force, beacon, long-connection, dns-tunnel, exfiltration, icmp-tunnel), or overflow "
    "(alerts beyond the sensor's hourly budget, summarised), or intel (a flow matched a known-bad indicator of the "
    "aggregator's signed set; `intel` says which)"
)

MAX_FLOWS_BEHIND = 32
"""Flows an alert lists; `flows_total` says how many there were."""
FLOW_BEHIND: dict[str, F] = {
    "src_ip": F("str", "the flow's source (it sent the first packet)", max_len=64),
    "src_port": F("int", "source port (0 without ports)", top=65535),
    "dst_ip": F("str", "the flow's destination", max_len=64),
    "dst_port": F("int", "destination port (0 without ports)", top=65535),
    "protocol": F("int", "IP protocol number", top=255),
    "application": F("str", "nDPI's application (ProtocolName)", max_len=128),
    "first_seen": F("time", "the flow's first packet"),
    "last_seen": F("time", "its last packet"),
    "packets": F("int", "packets, both directions"),
    "bytes": F("int", "IP bytes, both directions"),
    "tier": F("int", "the flow's rarity tier 0..5, or -1 where it was not scored", top=TIERS - 1, low=-1),
    "community_id": F("str", "Community ID v1 of the flow (TCP, UDP, SCTP; empty otherwise)", max_len=64),
}

INTEL_TYPES = ("ip", "net", "domain", "ja3", "ja3s", "ja4", "hassh", "hassh_server")
INTEL_MATCH: dict[str, F] = {
    "type": F("str", "indicator type: " + ", ".join(INTEL_TYPES), choices=INTEL_TYPES),
    "value": F("str", "the indicator, in its normal form (ntds.intel.indicators)", max_len=256),
    "source": F("str", "where it came from (a feed, a file, a MISP organisation, a STIX identity)", max_len=256),
    "confidence": F("int", "the source's confidence 0-100; the alert's tier follows from it", top=100),
    "added": F("int", "when it was first added, seconds since the epoch (0: unknown)", top=INT_MAX),
    "expires": F("int", "when it stops matching, seconds since the epoch (0: never)", top=INT_MAX),
    "matched": F(
        "str",
        "what of the flow matched: src_ip, dst_ip, server_name, client_fingerprint, server_fingerprint",
        max_len=32,
    ),
    "found_later": F("int", "1: found by a retro-hunt over what was seen before the indicator was added", top=1),
}

ALERT = MessageType(
    "alert",
    "something worth a look: a rare flow, or what a host-level detector concluded about one host; repeats of "
    "one (kind, host, application, pattern) within the sensor's grouping window arrive as one alert with a count",
    {
        "kind": F("str", ALERT_KINDS_MEANING, max_len=32),
        "signature": F("str", "one line in words: what, who, how much (Suricata's alert.signature)", max_len=512),
        "first_seen": F("time", "start of the first flow behind the alert, ISO-8601 UTC"),
        "last_seen": F("time", "end of the last flow behind it"),
        "count": F("int", "occurrences folded into this alert (flows, or the detector's findings)"),
        "window_s": F("int", "the detector's window in seconds (0 for a single flow)", top=INT_MAX),
        "src_ip": F("str", "the responsible host: the flow's source, the scanner, the client", max_len=64),
        "src_port": F("int", "source port of the flow (0 where no single flow applies)", top=65535),
        "dst_ip": F("str", "destination host, where one applies", max_len=64),
        "dst_port": F("int", "destination port, where one applies (0 otherwise)", top=65535),
        "protocol": F(
            "int",
            "IP protocol number; flow alerts: as in the flow record (the unicauca profile writes 0 for "
            "protocols other than TCP and UDP)",
            top=255,
        ),  # fmt: skip
        "application": F("str", "ProtocolName of the flow(s), where one applies", max_len=128),
        "domain": F("str", "registered domain, where one applies (dns-tunnel)", max_len=256),
        "pattern": F(
            "str", "what repeats of this kind and host are grouped on (a port, a destination...)", max_len=256
        ),  # fmt: skip
        "flow_id": F("str", "CICFlowMeter Flow.ID of the flow (flow alerts)", max_len=256),
        "community_id": F("str", "Community ID flow hash v1 of the flow (flow alerts over TCP, UDP, SCTP)", max_len=64),
        "baseline_id": F("str", "the baseline the sensor judged with when it raised the alert", max_len=128),
        "baseline": F(
            "str",
            "flow alerts: the entry that judged the flow (application, port class P/N, all-traffic); host-level "
            "alerts: detector",
            max_len=128,
        ),
        "score": F("num", "the detector's score (flow: anomaly score; host-level: strength against the threshold)"),
        "tier": F(
            "int", "rarity tier 1..5 (1 in 10 .. 1 in 100000); host-level detectors: documented mapping", top=TIERS - 1
        ),  # fmt: skip
        "tier_label": F("str", "common event .. 1 in 100000 event", max_len=32),
        "explanation": F(
            "objs",
            "what made it an alert, strongest first",
            {
                "axis": F("str", "radar axis or fact name", max_len=64),
                "value": F("num", "the observed value"),
                "typical": F("num", "the typical value (flow) or threshold (host-level)"),
                "score": F("num", "how far out it is"),
                "text": F("str", "the same in words, with units", max_len=1024),
            },
            max_items=16,
        ),
        "features": F(
            "nums",
            "flow alerts: the flow's numeric CICFlowMeter columns by their data set names (non-finite values "
            "left out); empty for host-level alerts",
            max_items=100,
        ),
        "flows": F(
            "objs",
            f"the flows behind the alert, newest last: a flow alert's own flow (and the repeats grouped into it), "
            f"the flows a host-level detector counted; at most {MAX_FLOWS_BEHIND}",
            FLOW_BEHIND,
            max_items=MAX_FLOWS_BEHIND,
        ),
        "flows_total": F("int", "how many flows are behind the alert in all (flows lists at most the newest 32)"),
        "intel": F(
            "objs",
            "intel alerts: the indicator the flow matched (empty for other kinds)",
            INTEL_MATCH,
            max_items=1,
        ),
    },
    {
        "kind": "flow",
        "signature": "Rare GOOGLE flow 10.1.0.10 -> 93.184.216.34:443: payload volume 99 MB, typically 6 kB",
        "first_seen": "2026-11-16T08:00:00.100000Z",
        "last_seen": "2026-11-16T08:01:40.100000Z",
        "count": 1,
        "window_s": 0,
        "src_ip": "10.1.0.10",
        "src_port": 42000,
        "dst_ip": "93.184.216.34",
        "dst_port": 443,
        "protocol": 6,
        "application": "GOOGLE",
        "domain": "",
        "pattern": "443 volume high",
        "flow_id": "10.1.0.10-93.184.216.34-42000-443-6",
        "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
        "baseline_id": "2026-11-23T02:00:00Z robust",
        "baseline": "application",
        "score": 3.25,
        "tier": 3,
        "tier_label": "1 in 1000 event",
        "explanation": [
            {
                "axis": "volume",
                "value": 9.9e7,
                "typical": 6000.0,
                "score": 8.1,
                "text": "payload volume 99 MB, typically 6 kB",
            }
        ],  # fmt: skip
        "features": {"Flow.Duration": 100000000.0, "Total.Fwd.Packets": 900.0},
        "flows": [
            {
                "src_ip": "10.1.0.10",
                "src_port": 42000,
                "dst_ip": "93.184.216.34",
                "dst_port": 443,
                "protocol": 6,
                "application": "GOOGLE",
                "first_seen": "2026-11-16T08:00:00.100000Z",
                "last_seen": "2026-11-16T08:01:40.100000Z",
                "packets": 1800,
                "bytes": 99100000,
                "tier": 3,
                "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
            }
        ],
        "flows_total": 1,
        "intel": [],
    },
    drop_rank=5,
    archive=_archive_alert,
)


def downgrade_body(kind: str, body: dict, version: int) -> dict:
    """A version 8 body as a sensor of `version` reads it: only acknowledgements go to older sensors, and before
    version 8 they never said busy."""
    if kind == "ack" and version < 8:
        return {k: v for k, v in body.items() if k != "busy_s"}
    return body


def upgrade_body(kind: str, body: dict) -> dict:
    """A body of an older schema version as version 8 (idempotent: a version 8 body is returned as is).

    Version 2 alerts were single rare flows: first and last seen at the flow's start, a count of 1, the
    explanation's text made from its numbers."""
    if kind == "health" and isinstance(body, dict):
        body = {"flows_evicted": 0, "flows_skipped": 0, "state": "running", "detector_keys_evicted": 0,
                "baseline_id": "", "baselines_refused": 0, "evidence": dict.fromkeys(EVIDENCE_HEALTH, 0),
                "frames": dict.fromkeys(FRAMES_HEALTH, 0), "intel_serial": 0, "intel_indicators": 0,
                "intel_refused": 0} | body  # fmt: skip
        if isinstance(body.get("spool_dropped"), dict):  # version 3 and older spools had no stats to drop
            body["spool_dropped"] = dict.fromkeys(DROP_ORDER, 0) | body["spool_dropped"]
        return body
    if kind == "ack" and isinstance(body, dict):  # version 7 and older aggregators never said busy
        return {"busy_s": 0} | body
    if kind == "baseline" and isinstance(body, dict):  # version 4 aggregators signed the bare file: no grant
        return {"grant": ""} | body
    if kind == "hello" and isinstance(body, dict):  # version 5 and older sensors match no indicators
        return {"intel_serial": 0} | body
    if kind != "alert" or not isinstance(body, dict):
        return body
    if "time" not in body:
        # version 3 and 4 alerts name no flows behind them, version 5 and older no indicator
        return {"flows": [], "flows_total": 0, "intel": []} | body
    from ntds.detect.explain import axis_text

    b = dict(body)
    t = b.pop("time")
    explanation = b.get("explanation")
    if isinstance(explanation, list):
        b["explanation"] = [
            e | {"text": _v2_text(e, axis_text)} if isinstance(e, dict) and "text" not in e else e for e in explanation
        ]
    app, src, dst, port = b.get("application", ""), b.get("src_ip", ""), b.get("dst_ip", ""), b.get("dst_port", 0)
    return {
        "kind": "flow",
        "signature": f"Rare {app} flow {src} -> {dst}:{port}",
        "first_seen": t,
        "last_seen": t,
        "count": 1,
        "window_s": 0,
        "domain": "",
        "pattern": "",
        "community_id": "",
        "baseline_id": "",
        "features": {},
        "flows": [],
        "flows_total": 0,
        "intel": [],
    } | b


def _v2_text(e: dict, axis_text) -> str:
    try:
        return axis_text(str(e["axis"]), float(e["value"]), float(e["typical"]))
    except (KeyError, TypeError, ValueError):
        return ""


# -- summary ----------------------------------------------------------------------------


def _archive_summary(m: Message) -> Iterable[ArchiveRow]:
    body = m.body
    t = parse_time(body["interval_start"])
    base = _base(m) | {"interval_start": t}
    omitted = body["peer_pairs_omitted"]
    yield (
        "summaries",
        t,
        base
        | {k: body[k] for k in ("interval_s", "flows", "packets", "bytes")}
        | body["capture"]
        | {"pairs_omitted_flows": omitted["flows"], "pairs_omitted_bytes": omitted["bytes"]},
    )
    for cls in TRAFFIC_CLASSES:
        yield "traffic", t, base | {"class": cls} | body["traffic"][cls]
    for a in body["applications"]:
        tiers = {f"tier{k}": n for k, n in enumerate(a["tiers"])}
        yield "applications", t, base | {k: a[k] for k in ("application", "flows", "bytes_up", "bytes_down")} | tiers
    for kind in UNANSWERED_KINDS:
        yield "unanswered", t, base | {"kind": kind} | body["unanswered"][kind]
    for p in body["peer_pairs"]:
        yield "peer_pairs", t, base | p
    for c in body["countries"]:
        yield "countries", t, base | c


def _zero_directional() -> dict:
    return dict.fromkeys(DIRECTIONAL, 0)


SUMMARY = MessageType(
    "summary",
    "what one interval's flows added up to: the weekly report is built from these",
    {
        "interval_start": INTERVAL_START,
        "interval_s": F("int", "length of the interval in seconds", top=86400),
        "flows": F("int", "flows started in the interval, single-packet flows included"),
        "packets": F("int", "their packets"),
        "bytes": F("int", "their IP bytes (IP header and payload, both directions)"),
        "traffic": F(
            "obj",
            "per traffic class: external (a local host and a host outside local_networks), local_service "
            "(a local host and a local server), peer_to_peer (two local hosts, neither a server), other "
            "(multicast, broadcast, or no local host); up is from the local client side",
            {c: F("obj", f"{c.replace('_', ' ')} traffic", DIRECTIONAL) for c in TRAFFIC_CLASSES},
        ),
        "applications": F(
            "objs",
            "per application; beyond 64 the smallest are folded into one entry named (other)",
            {
                "application": F("str", "ProtocolName"),
                "flows": F("int", "flows"),
                "bytes_up": F("int", "IP bytes from the local client side"),
                "bytes_down": F("int", "IP bytes towards the local client side"),
                "tiers": F("ints", "scored flows per rarity tier 0..5 (single-packet flows are not scored)", length=6),
            },
            max_items=65,
        ),
        "unanswered": F(
            "obj",
            "flows that got no packet back, by kind (each flow counts once, in the first kind that fits): "
            "ssdp_no_answer (UDP to port 1900), p2p_one_way (peer-to-peer), unanswered (the rest)",
            {k: F("obj", k.replace("_", " "), FLOWS_BYTES) for k in UNANSWERED_KINDS},
        ),
        "peer_pairs": F(
            "objs",
            "peer-to-peer host pairs, largest 128 by bytes",
            {
                "a": F("str", "the lower address of the pair"),
                "b": F("str", "the higher address"),
                "flows": F("int", "flows between them"),
                "two_way": F("int", "of which got packets both ways"),
                "one_way": F("int", "of which got none back"),
                "bytes_ab": F("int", "IP bytes from a to b"),
                "bytes_ba": F("int", "IP bytes from b to a"),
            },
            max_items=128,
        ),
        "peer_pairs_omitted": F(
            "obj", "pairs beyond the 128 listed", _counts("pairs", "flows", "bytes", what="not listed")
        ),
        "countries": F(
            "objs",
            "external traffic by the remote host's country (offline GeoIP; ZZ unknown); beyond 64 folded into (other)",
            {
                "country": F("str", "ISO 3166-1 alpha-2 code"),
                "flows": F("int", "flows"),
                "bytes_in": F("int", "IP bytes from the remote host"),
                "bytes_out": F("int", "IP bytes to the remote host"),
                "max_tier": F("int", "highest rarity tier among the scored flows (0 if none)", top=TIERS - 1),
            },
            max_items=65,
        ),
        "capture": F(
            "obj",
            "capture health since the previous summary (replayed files: the interval's own packets, none dropped)",
            {
                "packets_seen": F("int", "packets the capture delivered"),
                "packets_dropped": F("int", "packets the kernel or interface dropped"),
                "flows_active": F("int", "flows open in the meter when the summary was made"),
            },
        ),
    },
    {
        "interval_start": "2026-11-16T08:00:00Z",
        "interval_s": 60,
        "flows": 12,
        "packets": 104,
        "bytes": 52000,
        "traffic": {
            "external": {"flows": 9, "packets_up": 40, "packets_down": 52, "bytes_up": 6000, "bytes_down": 45000},
            "local_service": _zero_directional(),
            "peer_to_peer": {"flows": 2, "packets_up": 5, "packets_down": 6, "bytes_up": 400, "bytes_down": 440},
            "other": {"flows": 1, "packets_up": 1, "packets_down": 0, "bytes_up": 160, "bytes_down": 0},
        },
        "applications": [
            {"application": "SSL", "flows": 9, "bytes_up": 6000, "bytes_down": 45000, "tiers": [8, 1, 0, 0, 0, 0]},
            {"application": "SSDP", "flows": 1, "bytes_up": 160, "bytes_down": 0, "tiers": [0, 0, 0, 0, 0, 0]},
            {"application": "SMB", "flows": 2, "bytes_up": 400, "bytes_down": 440, "tiers": [1, 0, 0, 0, 0, 0]},
        ],
        "unanswered": {
            "ssdp_no_answer": {"flows": 1, "bytes": 160},
            "p2p_one_way": {"flows": 1, "bytes": 60},
            "unanswered": {"flows": 0, "bytes": 0},
        },
        "peer_pairs": [
            {
                "a": "10.1.0.10",
                "b": "10.1.0.23",
                "flows": 2,
                "two_way": 1,
                "one_way": 1,
                "bytes_ab": 400,
                "bytes_ba": 440,
            }
        ],
        "peer_pairs_omitted": {"pairs": 0, "flows": 0, "bytes": 0},
        "countries": [{"country": "US", "flows": 9, "bytes_in": 45000, "bytes_out": 6000, "max_tier": 1}],
        "capture": {"packets_seen": 104, "packets_dropped": 0, "flows_active": 3},
    },
    drop_rank=3,
    archive=_archive_summary,
)

# -- stats ------------------------------------------------------------------------------


def _archive_stats(m: Message) -> Iterable[ArchiveRow]:
    b = m.body
    t = parse_time(b["interval_start"])
    base = _base(m) | {"interval_start": t, "interval_s": b["interval_s"], "baseline_id": b["baseline_id"]}
    from ntds.detect.population import expand_runs

    for g in b["groups"]:
        s = g["sample"]
        group = {"application": g["application"], "port_class": g["port_class"]}
        yield "population_samples", t, base | group | {
            "flows": g["flows"], "k": s["k"], "seen": s["seen"], "tiers": s["tiers"], "axes": s["axes"]
        }  # fmt: skip
        for h in g["metrics"]:
            numbers = {k: float(h[k]) for k in ("sum", "sum_sq", "min", "max")}
            yield "population_histograms", t, base | group | h | numbers | {"bins": expand_runs(h["bins"])}


def _check_stats(body: dict) -> None:
    from ntds.detect.baseline import METRICS
    from ntds.detect.population import check_wire_group

    for i, g in enumerate(body["groups"]):
        check_wire_group(g, tuple(METRICS), f"stats.groups[{i}]")


def _stats_fields() -> dict[str, F]:
    from ntds.detect.population import AXIS_TOP, K_PER_TIER, N_BINS, SAMPLE_K

    return {
        "interval_start": INTERVAL_START,
        "interval_s": F("int", "length of the interval in seconds (stats_interval_s)", top=86400),
        "baseline_id": F("str", "the baseline whose tiers weighted the samples", max_len=200),
        "groups": F(
            "objs",
            "scorable flows (answered, with payload for TCP) per application and port class. A group too big for "
            "one message continues in the next with flows 0: every part adds up (`baseline learn` sums them)",
            {
                "application": F("str", "ProtocolName", max_len=128),
                "port_class": F("str", "the flows' port class, as a baseline entry names it (*TCP/443*)", max_len=32),
                "flows": F("int", "scorable flows in this group (0 in a continuation)"),
                "metrics": F(
                    "objs",
                    "per baseline metric (flowrate, duration, volume, avpktsz, dnuprat, pktlenvar, fwdpktlen, "
                    f"bwdpktlen, actmean): a histogram of log10(1 + value) in {N_BINS} bins of 1/100 decade",
                    {
                        "metric": F("str", "the metric's name", max_len=16),
                        "first_bin": F("int", "the bin of the first count", top=N_BINS - 1),
                        "bins": F(
                            "ints",
                            "counts from first_bin on, to the last non-empty bin; a run of n > 1 empty bins is "
                            "written -n",
                            max_items=N_BINS,
                            low=-N_BINS,
                        ),  # fmt: skip
                        "non_finite": F("int", "values that were not finite (not in the bins)"),
                        "sum": F("num", "sum of the finite values"),
                        "sum_sq": F("num", "sum of their squares"),
                        "min": F("num", "the least finite value (0 when none)"),
                        "max": F("num", "the greatest (0 when none)"),
                    },
                    max_items=9,
                ),
                "sample": F(
                    "obj",
                    "a sample of the flows' seven axes: per tier under baseline_id (before the cap), a uniform "
                    "sample of at most k flows (ntds.detect.population); each stands for seen / kept of its tier",
                    {
                        "k": F("int", "flows kept per tier at most", top=K_PER_TIER),
                        "seen": F("ints", "flows per tier 0..5 in this group", length=6),
                        "tiers": F("ints", "each kept flow's tier", top=5, max_items=SAMPLE_K),
                        "axes": F(
                            "ints",
                            "each kept flow's seven axes as round(1000 * log1p(value)), flow after flow",
                            top=AXIS_TOP,
                            max_items=7 * SAMPLE_K,
                        ),  # fmt: skip
                    },
                ),
            },
            max_items=64,
        ),
    }


STATS = MessageType(
    "stats",
    "what baselines are learned from: per stats interval, application and port class, mergeable histograms of the "
    "nine metrics and a weighted sample of the seven axes (`ntds-aggregator baseline learn`)",
    _stats_fields(),
    {
        "interval_start": "2026-11-16T08:00:00Z",
        "interval_s": 3600,
        "baseline_id": "2026-11-23T02:00:00Z robust",
        "groups": [
            {
                "application": "DNS",
                "port_class": "*UDP/53*",
                "flows": 2,
                "metrics": [
                    {
                        "metric": "volume",
                        "first_bin": 211,
                        "bins": [1, 1],
                        "non_finite": 0,
                        "sum": 260.0,
                        "sum_sq": 33808.0,
                        "min": 128.0,
                        "max": 132.0,
                    }
                ],  # fmt: skip
                "sample": {
                    "k": 43,
                    "seen": [1, 1, 0, 0, 0, 0],
                    "tiers": [0, 1],
                    "axes": [9, 4860, 4860, 0, 0, 4174, 4174, 11, 4890, 4890, 0, 0, 4190, 4190],
                },  # fmt: skip
            }
        ],
    },
    drop_rank=1,
    archive=_archive_stats,
    check=_check_stats,
)

PACKED_MAX = 2**20
"""Largest packed object, decompressed: a frame's 64 kB never unpack into more than this (no zlib bomb)."""


def pack(obj: dict) -> str:
    """An object as a `packed` field's text: compact JSON, zlib level 9, base64."""
    import base64
    import zlib

    raw = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack(text: str) -> dict:
    """A `packed` field's object; ValueError for anything else (bad base64, not zlib, bigger than PACKED_MAX
    decompressed, not a JSON object, non-finite numbers, oversized integers)."""
    import base64
    import binascii
    import zlib

    try:
        d = zlib.decompressobj()
        raw = d.decompress(base64.b64decode(text, validate=True), PACKED_MAX)
        if d.unconsumed_tail or not d.eof:
            raise ValueError(f"not a complete packed object of at most {PACKED_MAX:,} bytes")
        obj = _loads(raw)
    except (binascii.Error, zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError, TypeError) as e:
        raise ValueError(f"not a packed object ({type(e).__name__})") from None
    except WireError as e:
        raise ValueError(str(e)) from None
    if not isinstance(obj, dict):
        raise ValueError("not a packed object")
    return obj


# -- context ----------------------------------------------------------------------------

CONTEXT_KINDS = ("address", "domain", "server_name", "client_fingerprint")
"""ntds.prevalence.KINDS (repeated here: the schema imports nothing that needs a compiled library)."""


def _check_context(body: dict) -> None:
    from ntds.prevalence import SketchError
    from ntds.prevalence import decode as sketch

    body = unpack(body["packed"])
    for i, d in enumerate(body["destinations"]):
        if d["first_ms"] > d["last_ms"] or not (in_time_range(d["first_ms"]) and in_time_range(d["last_ms"])):
            raise ValueError(f"context.destinations[{i}]: first and last seen out of order or range")
        try:
            sketch(d["sketch"])
        except SketchError as e:
            raise ValueError(f"context.destinations[{i}].sketch: {e}") from None
    for i, h in enumerate(body["hosts"]):
        if h["first_ms"] > h["last_ms"] or not (in_time_range(h["first_ms"]) and in_time_range(h["last_ms"])):
            raise ValueError(f"context.hosts[{i}]: first and last seen out of order or range")


CONTEXT_EXAMPLE = {
    "destinations": [
        {
            "kind": "address",
            "key": "93.184.216.34",
            "first_ms": 1794816000100,
            "last_ms": 1794816100100,
            "flows": 3,
            "sketch": "AgEHCgMIAQBVRfgL",
        }
    ],
    "hosts": [
        {
            "host": "10.1.0.10",
            "first_ms": 1794816000100,
            "last_ms": 1794816100100,
            "flows": 3,
            "bytes_up": 6000,
            "bytes_down": 45000,
            "applications": [{"application": "TLS", "flows": 3}],
            "services": [],
            "peers": [{"peer": "93.184.216.34", "flows": 3, "bytes": 51000}],
        }
    ],
}
"""What the example context message packs."""


CONTEXT = MessageType(
    "context",
    "what context on alerts is built from, per context interval (an hour by default): for every external "
    "destination local hosts reached, a HyperLogLog sketch of those hosts with first and last seen (fleet "
    "prevalence); for every local host, its traffic, the applications it used, the services it answered and its "
    "top peers (the host's story). An interval too big for one message continues in the next",
    {
        "interval_start": INTERVAL_START,
        "interval_s": F("int", "length of the interval in seconds (context_interval_s)", top=86400),
        "destinations_omitted": F("int", "flows to destinations beyond context_max_destinations (not sketched)"),
        "hosts_omitted": F("int", "flows of hosts beyond context_max_hosts (not counted per host)"),
        "packed": F(
            "packed",
            "the interval's destinations and hosts (this message's share of them), compressed: about a quarter of "
            "their size as plain JSON",
            {
                "destinations": F(
                    "objs",
                    "external destinations reached in the interval (at most context_max_destinations in all its "
                    "messages)",
                    {
                        "kind": F(
                            "str",
                            "address, domain (registered), server_name (TLS SNI, QUIC, HTTP Host), "
                            "client_fingerprint (JA4, HASSH)",
                            choices=CONTEXT_KINDS,
                        ),  # fmt: skip
                        "key": F("str", "the destination: an address, a name, a fingerprint", max_len=256),
                        "first_ms": F("int", "start of its first flow, ms since the epoch", top=INT_MAX),
                        "last_ms": F("int", "end of its last flow, ms since the epoch", top=INT_MAX),
                        "flows": F("int", "flows to it"),
                        "sketch": F(
                            "str",
                            "the local hosts that reached it: an Apache DataSketches HLL_4 sketch (lg_k 10) in its "
                            "compact serialisation, base64 (ntds.prevalence)",
                            max_len=1024,
                        ),
                    },
                    max_items=20_000,
                ),
                "hosts": F(
                    "objs",
                    "local hosts active in the interval (at most context_max_hosts in all its messages)",
                    {
                        "host": F("str", "the local host's address", max_len=64),
                        "first_ms": F(
                            "int", "start of its first flow in the interval, ms since the epoch", top=INT_MAX
                        ),
                        "last_ms": F("int", "end of its last flow, ms since the epoch", top=INT_MAX),
                        "flows": F("int", "its flows"),
                        "bytes_up": F("int", "IP bytes it sent"),
                        "bytes_down": F("int", "IP bytes it received"),
                        "applications": F(
                            "objs",
                            "applications it used as a client (the flow's source), most flows first, at most 16",
                            {"application": F("str", "ProtocolName", max_len=128), "flows": F("int", "flows")},
                            max_items=16,
                        ),  # fmt: skip
                        "services": F(
                            "objs",
                            "services it answered as a server (the flow's destination answered, not a refusal), most "
                            "flows first, at most 16",
                            {
                                "protocol": F("int", "IP protocol number", top=255),
                                "port": F("int", "its port", top=65535),
                                "application": F("str", "ProtocolName", max_len=128),
                                "flows": F("int", "flows"),
                            },
                            max_items=16,
                        ),
                        "peers": F(
                            "objs",
                            "the other ends it exchanged most bytes with, at most 8",
                            {
                                "peer": F("str", "address", max_len=64),
                                "flows": F("int", "flows"),
                                "bytes": F("int", "IP bytes, both directions"),
                            },
                            max_items=8,
                        ),
                    },
                    max_items=5_000,
                ),
            },
            max_len=MAX_FRAME,
        ),
    },
    {
        "interval_start": "2026-11-16T08:00:00Z",
        "interval_s": 3600,
        "destinations_omitted": 0,
        "hosts_omitted": 0,
        "packed": pack(CONTEXT_EXAMPLE),
    },
    drop_rank=2,
    not_archived="merged into the store's prevalence and host tables (aggregator.prevalence, aggregator.host_story), "
    "which the alert manager, `ntds-aggregator prevalence` and the weekly report read",
    check=_check_context,
)

# -- health -----------------------------------------------------------------------------


def _archive_health(m: Message) -> Iterable[ArchiveRow]:
    t = parse_time(m.created)
    row = {k: v for k, v in m.body.items() if k not in HEALTH_NOT_ARCHIVED}
    yield "health", t, _base(m) | row | {"created": t, "spool_dropped": sum(m.body["spool_dropped"].values())}


HEALTH_NOT_ARCHIVED = ("baseline_id", "baselines_refused", "evidence", "frames", "intel_serial", "intel_indicators",
                       "intel_refused")  # fmt: skip
"""Health fields the store keeps (the sensors page) but the archive's health table does not: its columns are the
capture and spool counters the report reads."""


EVIDENCE_HEALTH: dict[str, F] = {
    "ring_packets": F("int", "packets written to the packet ring"),
    "ring_bytes": F("int", "bytes written to it (record headers included)"),
    "ring_errors": F("int", "ring writes that failed (a full disk): capture and metering went on"),
    "ring_disk_bytes": F("int", "what the ring holds on disk now"),
    "kept_alerts": F("int", "alerts whose packets were kept beyond the ring's rotation"),
    "jobs_served": F("int", "pcap jobs answered with packets"),
    "jobs_failed": F("int", "pcap jobs answered with the reason they could not be served"),
}

FRAMES_HEALTH: dict[str, F] = {
    "ip_length_filled": F(
        "int", "IPv4 total length 0 (segmentation offload on the capturing host): taken from the captured length"
    ),  # fmt: skip
    "fabricpath_decapsulated": F("int", "Cisco FabricPath frames (EtherType 0x8903) metered as their inner frame"),
    "fabricpath_skipped": F("int", "FabricPath frames with no inner frame to meter: skipped, never read as IP"),
}

HEALTH = MessageType(
    "health",
    "the sensor's capture counters and spool backlog, every health_interval_s",
    {
        "packets_seen": F("int", "packets the capture delivered since start"),
        "packets_dropped": F("int", "packets the kernel or interface dropped since start"),
        "flows_active": F("int", "flows open in the meter now"),
        "flows_evicted": F("int", "flows expired early since start because the flow table was full (max_flows)"),
        "flows_skipped": F("int", "flows not judged since start: dated outside the valid time range"),
        "detector_keys_evicted": F(
            "int",
            "since start: hosts, pairs or groups the host-level detectors and the alert grouping stopped tracking "
            "because their tables were full (a flood of sources; each table's cap is a setting)",
        ),
        "state": F(
            "str", "running, or stopping (the sensor's last message before it exits)", choices=("running", "stopping")
        ),  # fmt: skip
        "baseline_id": F("str", "the baseline the sensor scores with now (as in hello)", max_len=200),
        "baselines_refused": F(
            "int", "since start: pushed baselines refused (bad signature, other profile, corrupt, no baseline_key)"
        ),
        "spool_messages": F("int", "messages waiting in the spool for an acknowledgement (this one not counted)"),
        "spool_bytes": F("int", "their size"),
        "evidence": F("obj", "the packet ring and the evidence kept and served since start", EVIDENCE_HEALTH),
        "frames": F("obj", "frames the meters fixed up or skipped before metering, since start", FRAMES_HEALTH),
        "intel_serial": F(
            "int", "the grant serial of the indicator set the sensor matches with now (0: none)", top=INT_MAX
        ),
        "intel_indicators": F("int", "indicators in that set (those not yet expired when it was loaded)"),
        "intel_refused": F(
            "int", "since start: pushed indicator sets refused (bad signature, replayed, corrupt, no baseline_key)"
        ),
        # "spool_dropped" is derived below from the types' drop ranks
    },
    {
        "packets_seen": 1,
        "packets_dropped": 0,
        "flows_active": 3,
        "flows_evicted": 0,
        "flows_skipped": 0,
        "detector_keys_evicted": 0,
        "state": "running",
        "baseline_id": "2026-11-23T02:00:00Z robust",
        "baselines_refused": 0,
        "spool_messages": 0,
        "spool_bytes": 0,
        "evidence": dict.fromkeys(EVIDENCE_HEALTH, 0),
        "frames": dict.fromkeys(FRAMES_HEALTH, 0),
        "intel_serial": 0,
        "intel_indicators": 0,
        "intel_refused": 0,
    },
    drop_rank=0,
    archive=_archive_health,
)

# -- ack --------------------------------------------------------------------------------

ACK = MessageType(
    "ack",
    "the aggregator's answer: these sequence numbers are durably stored (its own seq is 0)",
    {
        "seqs": F("ints", "sequence numbers of the sensor's messages now durably stored", top=INT_MAX),
        "busy_s": F(
            "int",
            "0, or the aggregator is behind (what it has received fills whole batches): resend nothing for this "
            "many seconds, what was sent is queued and will be acknowledged (version 8; an empty seqs with 0: "
            "caught up, resend what is overdue)",
            top=3600,
        ),
    },
    {"seqs": [1, 2, 3], "busy_s": 0},
    drop_rank=None,
    not_archived="acknowledgements travel back to the sensor and are never stored",
)

# -- baseline ---------------------------------------------------------------------------

BASELINE_CHUNK = 45_000
"""Compressed baseline bytes per part: base64 and the envelope keep each part under MAX_FRAME."""
BASELINE_MAX_PARTS = 256
"""At most 11 MB of compressed baseline: far beyond any real one (the starter baseline compresses to 60 kB)."""

BASELINE = MessageType(
    "baseline",
    "the aggregator's active baseline, pushed to a sensor whose hello or health names another one; in parts "
    "(seq is the signed grant's serial number). The sensor checks the grant's signature against its baseline_key, "
    "that the grant names this file, is newer than the one it runs (an older version only as a signed rollback) "
    "and is for it, and the feature profile; then it swaps it in and sends a hello naming it",
    {
        "baseline_id": F("str", "the baseline's id (its build time and method)", max_len=200),
        "sha256": F("str", "SHA-256 of the whole baseline file (hex)", max_len=64),
        "grant": F(
            "str",
            "the signed grant (JSON text): format, serial (grows with every signature), version, sha256 of "
            "the file, baseline_id, rollback, to (a sensor id or * for every sensor), signed (time); empty from an "
            "aggregator before version signing (refused)",
            max_len=1024,
        ),
        "signature": F("str", "the Ed25519 signature of the grant's exact text (hex)", max_len=128),
        "part": F("int", "this part's number, from 0", top=BASELINE_MAX_PARTS - 1),
        "parts": F("int", "how many parts the zlib-compressed file was cut into", top=BASELINE_MAX_PARTS),
        "data": F("str", "this part of the zlib-compressed file, base64", max_len=4 * BASELINE_CHUNK // 3 + 4),
    },
    {
        "baseline_id": "2026-11-23T02:00:00Z robust",
        "sha256": "9f2c" * 16,
        "grant": '{"baseline_id":"2026-11-23T02:00:00Z robust","format":"ntds-baseline-grant","rollback":false,'
        '"serial":3,"sha256":"' + "9f2c" * 16 + '","signed":"2026-11-23T03:00:00Z","to":"*","version":3}',
        "signature": "ab" * 64,
        "part": 0,
        "parts": 1,
        "data": "eJyrrgUAAXUA+Q==",
    },  # fmt: skip
    drop_rank=None,
    not_archived="sent by the aggregator; every promoted version stays in its store (`baseline versions`)",
)

# -- intel ----------------------------------------------------------------------------------

INTEL_CHUNK = 45_000
"""Compressed indicator-set bytes per part, as for baselines."""
INTEL_MAX_PARTS = 4096
"""At most 184 MB of compressed indicators in one push (bench/bench_intel.py measures a million)."""

INTEL = MessageType(
    "intel",
    "the aggregator's indicator set (ntds.intel), pushed to a sensor whose hello or health names another serial; in "
    "parts (seq is the signed grant's serial). The sensor checks the grant's Ed25519 signature against its "
    "baseline_key, that it names this file, is for it and has a higher serial than the set it runs; then it "
    "matches with it from the next flow on and sends a hello naming the serial",
    {
        "sha256": F("str", "SHA-256 of the whole set file (hex)", max_len=64),
        "grant": F(
            "str",
            "the signed grant (JSON text): format ntds-intel-grant, serial (grows with every signature), sha256 of "
            "the file, indicators, to (a sensor id or * for every sensor), signed (time)",
            max_len=1024,
        ),
        "signature": F("str", "the Ed25519 signature of the grant's exact text (hex)", max_len=128),
        "indicators": F("int", "indicators in the set"),
        "part": F("int", "this part's number, from 0", top=INTEL_MAX_PARTS - 1),
        "parts": F("int", "how many parts the zlib-compressed file was cut into", top=INTEL_MAX_PARTS),
        "data": F("str", "this part of the zlib-compressed file, base64", max_len=4 * INTEL_CHUNK // 3 + 4),
    },
    {
        "sha256": "9f2c" * 16,
        "grant": '{"format":"ntds-intel-grant","indicators":1,"serial":3,"sha256":"'
        + "9f2c" * 16
        + '","signed":"2026-11-23T03:00:00Z","to":"*"}',
        "signature": "ab" * 64,
        "indicators": 1,
        "part": 0,
        "parts": 1,
        "data": "eJyrrgUAAXUA+Q==",
    },  # fmt: skip
    drop_rank=None,
    not_archived="sent by the aggregator; its store keeps the indicators and every signed set (`intel list`)",
)

# -- pcap_job and evidence ----------------------------------------------------------------

EVIDENCE_CHUNK = 45_000
"""Packet-capture bytes per evidence part: base64 and the envelope keep each part under MAX_FRAME."""
EVIDENCE_MAX_PARTS = 4096
"""At most 184 MB in one answer; `pcap_max_mb` (sensor.yaml) caps it lower."""
JOB_RANGE_MAX_S = 7 * 86400
"""The longest time range one pcap job may ask for."""


def packets_behind(alert: dict) -> dict:
    """The packets behind an alert, as a pcap job's selection: the responsible host, the peer and ports the alert
    names (a single flow's own source port), its protocol, from its first to its last seen widened to the flows it
    lists (a detector's last count may come before its flows' last packets). The sensor keeps, and the aggregator
    asks for, exactly these."""
    flows = alert.get("flows") or []
    protocol = alert["protocol"] or (flows[0]["protocol"] if flows else 0)
    times = [alert["first_seen"], alert["last_seen"], *(f["first_seen"] for f in flows),
             *(f["last_seen"] for f in flows)]  # fmt: skip
    return {
        "host": alert["src_ip"],
        "peer": alert["dst_ip"],
        "host_port": alert["src_port"] if alert["kind"] == "flow" and alert["count"] == 1 else 0,
        "peer_port": alert["dst_port"],
        "protocol": protocol,
        "since": min(times, key=wire_time),
        "until": max(times, key=wire_time),
    }


PCAP_JOB = MessageType(
    "pcap_job",
    "the aggregator asks a sensor for the packets behind an alert, or of a host in a time range (seq is the job's "
    "number). The sensor answers with `evidence` parts: from the packets it kept for that alert, its packet ring, or "
    "the capture files it replayed",
    {
        "alert_spool": F("str", "the spool of the alert the packets are for (empty: a search by host)", max_len=64),
        "alert_seq": F("int", "the alert's sequence number in that spool (0: a search by host)", top=INT_MAX),
        "host": F("str", "the responsible host: packets from or to it", max_len=64),
        "peer": F("str", "only packets between host and this address (empty: any)", max_len=64),
        "host_port": F("int", "only packets with this port on the host's side (0: any)", top=65535),
        "peer_port": F("int", "only packets with this port on the peer's side (0: any)", top=65535),
        "protocol": F("int", "only this IP protocol (0: any)", top=255),
        "since": F("time", "first packet time wanted"),
        "until": F("time", "last packet time wanted"),
        "max_bytes": F("int", "answer at most this much capture (the sensor's own cap may be lower)", top=INT_MAX),
    },
    {
        "alert_spool": "9f3c61d2a07b44e5",
        "alert_seq": 42,
        "host": "10.1.0.10",
        "peer": "93.184.216.34",
        "host_port": 42000,
        "peer_port": 443,
        "protocol": 6,
        "since": "2026-11-16T08:00:00.100000Z",
        "until": "2026-11-16T08:01:40.100000Z",
        "max_bytes": 67108864,
    },
    drop_rank=None,
    not_archived="sent by the aggregator; its jobs table keeps every job and its outcome",
)

EVIDENCE = MessageType(
    "evidence",
    "a sensor's answer to a pcap_job: a classic pcap file (nanosecond timestamps, the packets as captured) in parts, "
    "or, with parts 0, the one-line reason it cannot be served",
    {
        "job": F("int", "the job's number (the pcap_job's seq)", top=INT_MAX),
        "part": F("int", "this part's number, from 0", top=EVIDENCE_MAX_PARTS - 1),
        "parts": F("int", "how many parts the file was cut into (0: not served, see error)", top=EVIDENCE_MAX_PARTS),
        "packets": F("int", "packets in the whole file"),
        "packets_total": F("int", "packets that matched before the size cap (more than packets: the file is cut)"),
        "sha256": F("str", "SHA-256 of the whole file (hex)", max_len=64),
        "source": F("str", "where the packets came from: kept, ring, replay", max_len=16),
        "data": F("str", "this part of the file, base64", max_len=4 * EVIDENCE_CHUNK // 3 + 4),
        "error": F("str", "why the job cannot be served (parts 0), else empty", max_len=512),
    },
    {
        "job": 7,
        "part": 0,
        "parts": 1,
        "packets": 1,
        "packets_total": 1,
        "sha256": "9f2c" * 16,
        "source": "ring",
        "data": "1MOyoQIABAAAAAAAAAAAAP//AAABAAAA",
        "error": "",
    },
    drop_rank=-1,
    not_archived="packets are assembled into a file beside the store (the jobs table names it), never archived",
)

MESSAGE_TYPES: dict[str, MessageType] = {
    t.name: t for t in (HELLO, ALERT, SUMMARY, STATS, CONTEXT, HEALTH, EVIDENCE, ACK, BASELINE, INTEL, PCAP_JOB)
}
TYPES = tuple(MESSAGE_TYPES)
SCHEMA: dict[str, dict[str, F]] = {n: t.fields for n, t in MESSAGE_TYPES.items()}
EXAMPLES: dict[str, dict] = {n: t.example for n, t in MESSAGE_TYPES.items()}
DROP_ORDER: tuple[str, ...] = tuple(
    t.name for t in sorted((t for t in MESSAGE_TYPES.values() if t.drop_rank is not None), key=lambda t: t.drop_rank)
)
"""Spooled types, the first to be dropped at the spool's size limit first."""
HEALTH.fields["spool_dropped"] = F(
    "obj",
    "messages dropped at the spool's size limit since the spool was created, per type",
    _counts(*DROP_ORDER, what="messages dropped"),
)
HEALTH.example["spool_dropped"] = dict.fromkeys(DROP_ORDER, 0)


# -- bodies the programs build (alerts: ntds.detect.alerts; summaries: sensor.summaries) ---


def hello(baseline_id: str, feature_profile: str, intel_serial: int = 0) -> dict:
    from ntds import __version__

    return {"software": __version__, "baseline_id": baseline_id, "feature_profile": feature_profile,
            "intel_serial": intel_serial}  # fmt: skip


def health(
    capture: dict, flows_evicted: int, flows_skipped: int, state: str, spool_messages: int, spool_bytes: int,
    dropped: dict, detector_keys_evicted: int = 0, baseline_id: str = "", baselines_refused: int = 0,
    evidence: dict | None = None, frames: dict | None = None, intel: tuple[int, int, int] = (0, 0, 0),
) -> dict:  # fmt: skip
    """capture: packets_seen, packets_dropped, flows_active (since start); intel: the set's serial, its indicators,
    the sets refused."""
    return {
        "packets_seen": capture["packets_seen"],
        "packets_dropped": capture["packets_dropped"],
        "flows_active": capture["flows_active"],
        "flows_evicted": flows_evicted,
        "flows_skipped": flows_skipped,
        "detector_keys_evicted": detector_keys_evicted,
        "state": state,
        "baseline_id": baseline_id,
        "baselines_refused": baselines_refused,
        "spool_messages": spool_messages,
        "spool_bytes": spool_bytes,
        "evidence": {k: int((evidence or {}).get(k, 0)) for k in EVIDENCE_HEALTH},
        "frames": {k: int((frames or {}).get(k, 0)) for k in FRAMES_HEALTH},
        "intel_serial": int(intel[0]),
        "intel_indicators": int(intel[1]),
        "intel_refused": int(intel[2]),
        "spool_dropped": {k: dropped.get(k, 0) for k in DROP_ORDER},
    }


def baseline_parts(
    sensor: str, serial: int, baseline_id: str, content: bytes, grant: str, signature: str
) -> list[Message]:
    """A baseline file as the parts of one push to `sensor` (compressed, cut, each a message of its own), with its
    signed grant (`ntds.wire.signing`) and the grant's signature."""
    import base64
    import hashlib
    import zlib

    packed = zlib.compress(content, 9)
    chunks = [packed[i : i + BASELINE_CHUNK] for i in range(0, len(packed), BASELINE_CHUNK)] or [b""]
    if len(chunks) > BASELINE_MAX_PARTS:
        raise ValueError(f"baseline too large to push ({len(packed):,} bytes compressed)")
    digest = hashlib.sha256(content).hexdigest()
    created = now_iso()
    return [
        Message(
            "baseline",
            sensor,
            serial,
            created,
            {
                "baseline_id": baseline_id,
                "sha256": digest,
                "grant": grant,
                "signature": signature,
                "part": i,
                "parts": len(chunks),
                "data": base64.b64encode(chunk).decode("ascii"),
            },
        )  # fmt: skip
        for i, chunk in enumerate(chunks)
    ]


def intel_parts(sensor: str, serial: int, content: bytes, indicators: int, grant: str, signature: str) -> list[Message]:
    """An indicator set file as the parts of one push to `sensor`, with its signed grant and the grant's signature."""
    import hashlib
    import zlib

    digest = hashlib.sha256(content).hexdigest()
    return packed_intel_parts(sensor, serial, zlib.compress(content, 6), digest, indicators, grant, signature)


def packed_intel_parts(
    sensor: str, serial: int, packed: bytes, digest: str, indicators: int, grant: str, signature: str
) -> list[Message]:
    """The same from the set already compressed (zlib) and its SHA-256: the aggregator keeps sets so, and pushes
    a million indicators without compressing 36 MB again in its receiving thread."""
    import base64

    chunks = [packed[i : i + INTEL_CHUNK] for i in range(0, len(packed), INTEL_CHUNK)] or [b""]
    if len(chunks) > INTEL_MAX_PARTS:
        raise ValueError(f"indicator set too large to push ({len(packed):,} bytes compressed)")
    created = now_iso()
    return [
        Message(
            "intel",
            sensor,
            serial,
            created,
            {
                "sha256": digest,
                "grant": grant,
                "signature": signature,
                "indicators": indicators,
                "part": i,
                "parts": len(chunks),
                "data": base64.b64encode(chunk).decode("ascii"),
            },
        )  # fmt: skip
        for i, chunk in enumerate(chunks)
    ]


def ack(sensor: str, spool: str, seqs: list[int], busy_s: int = 0) -> Message:
    """The aggregator's acknowledgement of stored messages of one spool (its own seq is 0: acks are not stored);
    `busy_s`: it is behind, and the sensor should hold its resends that long."""
    return Message("ack", sensor, 0, now_iso(), {"seqs": list(seqs), "busy_s": busy_s}, spool)


# -- validation -------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def wire_time(text: str) -> datetime:
    """A wire time as an aware UTC datetime inside TIME_MIN..TIME_MAX; ValueError otherwise."""
    try:
        t = parse_time(text)
    except OverflowError:
        raise ValueError("time out of range") from None
    if not TIME_MIN <= t <= TIME_MAX:
        raise ValueError("time out of range")
    return t


_TIME_MIN_MS, _TIME_MAX_MS = TIME_MIN.timestamp() * 1000, TIME_MAX.timestamp() * 1000


def in_time_range(ms: int) -> bool:
    """Whether a millisecond epoch time is one the wire accepts."""
    return _TIME_MIN_MS <= ms <= _TIME_MAX_MS


def _value(f: F, v, at: str, name: str = "") -> None:
    """Check one value; `at` and `name` say where (joined only for an error: most values are fine, and the sensor
    checks every field of every message it spools)."""
    ok = True
    if f.kind == "int":
        ok = _is_int(v) and f.low <= v <= f.top
    elif f.kind == "num":
        ok = (_is_int(v) and abs(v) <= INT_MAX) or (isinstance(v, float) and math.isfinite(v))
    elif f.kind == "str":
        ok = isinstance(v, str) and len(v) <= f.max_len and (not f.choices or v in f.choices)
    elif f.kind == "time":
        try:
            wire_time(v)
        except (TypeError, ValueError):
            raise WireError(
                f"{_at(at, name)}: not a time between {TIME_MIN:%Y-%m-%d} and {TIME_MAX:%Y-%m-%d}", "time"
            ) from None
    elif f.kind == "obj":
        ok = isinstance(v, dict)
        if ok and f.fields:
            _check(f.fields, v, _at(at, name))
    elif f.kind == "objs":
        ok = isinstance(v, list) and len(v) <= f.max_items
        if ok:
            for i, item in enumerate(v):
                if not isinstance(item, dict):
                    raise WireError(f"{_at(at, name)}[{i}]: not an object")
                _check(f.fields, item, f"{_at(at, name)}[{i}]")
    elif f.kind == "nums":
        ok = isinstance(v, dict) and len(v) <= f.max_items
        ok = ok and all(
            isinstance(k, str)
            and len(k) <= 64
            and ((_is_int(x) and abs(x) <= INT_MAX) or (isinstance(x, float) and math.isfinite(x)))
            for k, x in v.items()
        )
    elif f.kind == "packed":
        ok = isinstance(v, str) and len(v) <= f.max_len
        if ok:
            try:
                obj = unpack(v)
            except ValueError as e:
                raise WireError(f"{_at(at, name)}: {e}") from None
            _check(f.fields, obj, _at(at, name))
    elif f.kind == "ints":
        ok = isinstance(v, list) and len(v) <= f.max_items and all(_is_int(x) and f.low <= x <= f.top for x in v)
        ok = ok and (f.length is None or len(v) == f.length)
    if not ok:
        raise WireError(f"{_at(at, name)}: wrong type or value")


def _at(at: str, name: str) -> str:
    return f"{at}.{name}" if name else at


def _check(fields: dict[str, F], obj: dict, where: str) -> None:
    for name, f in fields.items():
        if name not in obj:
            raise WireError(f"{where}: missing field {name!r}")
        _value(f, obj[name], where, name)
    unknown = set(obj) - set(fields)
    if unknown:
        raise WireError(f"{where}: unknown field {sorted(unknown)[0]!r:.40}")


# A fast path for valid objects, which are nearly all of them: a field's predicate is a closure that answers
# only yes or no, with exact types (`type(v) is int`, so never a bool or an int subclass). A yes implies that
# `_check` passes; a no sends the object through `_check`, which names the first problem (or passes an object
# that is valid but not plain, such as a dict subclass). Every message is schema'd all the way down (the
# envelope's body is checked against its type's fields), so a yes also means the object survives a JSON round
# trip unchanged, which lets `encode` check what it is about to send without parsing it back.
Fits = Callable[[object], bool]
_compiled: dict[int, Fits] = {}


def _fits(fields: dict[str, F]) -> Fits:
    """The predicate of an object with exactly these fields (compiled once per fields table)."""
    fits = _compiled.get(id(fields))
    if fits is None:
        # Written out as one function (integers inline, other fields through their predicates): a summary is
        # some 70 fields, and a call and a generator step per field were most of the check's time.
        scope: dict = {"NAMES": frozenset(fields)}
        lines = ["def fits(v):", "    if type(v) is not dict or v.keys() != NAMES:", "        return False"]
        for i, (name, f) in enumerate(fields.items()):
            if f.kind == "int":
                lines.append(f"    x = v[{name!r}]")
                lines.append(f"    if type(x) is not int or not {int(f.low)} <= x <= {int(f.top)}:")
            else:
                scope[f"p{i}"] = _predicate(f)
                lines.append(f"    if not p{i}(v[{name!r}]):")
            lines.append("        return False")
        lines.append("    return True")
        exec("\n".join(lines), scope)  # names and bounds are this module's constants
        fits = _compiled[id(fields)] = scope["fits"]  # the tables are constants too: their ids are never reused
    return fits


def _predicate(f: F) -> Fits:  # noqa: C901 (one branch per kind, as in _value)
    kind, low, top = f.kind, f.low, f.top
    if kind == "int":
        return lambda v: type(v) is int and low <= v <= top
    if kind == "num":
        return lambda v: (type(v) is int and -INT_MAX <= v <= INT_MAX) or (type(v) is float and math.isfinite(v))
    if kind == "str":
        most, choices = f.max_len, frozenset(f.choices)
        if choices:
            return lambda v: type(v) is str and len(v) <= most and v in choices
        return lambda v: type(v) is str and len(v) <= most
    if kind == "time":

        def is_time(v) -> bool:
            try:
                wire_time(v)
            except (TypeError, ValueError):
                return False
            return True

        return is_time
    if kind == "obj":
        return _fits(f.fields) if f.fields else (lambda v: type(v) is dict)
    if kind == "objs":
        most, item = f.max_items, _fits(f.fields)
        return lambda v: type(v) is list and len(v) <= most and all(map(item, v))
    if kind == "nums":
        most = f.max_items
        return lambda v: (
            type(v) is dict
            and len(v) <= most
            and all(type(k) is str and len(k) <= 64 for k in v)
            and all((type(x) is int and -INT_MAX <= x <= INT_MAX) or (type(x) is float and math.isfinite(x))
                    for x in v.values())
        )  # fmt: skip
    if kind == "packed":
        most, inner = f.max_len, _fits(f.fields)

        def packed(v) -> bool:
            if type(v) is not str or len(v) > most:
                return False
            try:
                return inner(unpack(v))
            except ValueError:
                return False

        return packed
    if kind == "ints":
        most, length = f.max_items, f.length
        return lambda v: (
            type(v) is list
            and len(v) <= most
            and (length is None or len(v) == length)
            and all(type(x) is int for x in v)
            and (not v or (min(v) >= low and max(v) <= top))
        )
    return lambda v: True


def _check_fast(fields: dict[str, F], obj: dict, where: str) -> None:
    """`_check`, by the predicate first."""
    if not _fits(fields)(obj):
        _check(fields, obj, where)


def encode(message: Message, version: int = VERSION) -> bytes:
    """One frame for a message; validated the same way the receiver will.

    Older versions are only for acknowledging older sensors (version 1 knows no spool ids)."""
    obj = {"v": version, "type": message.type, "sensor": message.sensor}
    if version >= 2:
        obj["spool"] = message.spool
    body = message.body if version == VERSION else downgrade_body(message.type, message.body, version)
    obj |= {"seq": message.seq, "created": message.created, "body": body}
    frame = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    # A sensor must never send what the aggregator would refuse. For a plain object that passes the compiled
    # check, checking the object itself answers as decoding the frame would: every value is schema'd, every
    # integer field is bounded far below the 20 digits the decoder refuses unparsed, and dumps has refused
    # non-finite floats. Anything else (a tuple for a list, a dict subclass, a mistake) goes through decoding
    # the frame, which answers exactly as the aggregator will.
    kind = obj["type"]
    fast = (version == VERSION and len(frame) <= MAX_FRAME and _fits(ENVELOPE)(obj) and kind in SCHEMA
            and obj["sensor"] and _fits(SCHEMA[kind])(obj["body"]))  # fmt: skip
    if fast:
        _type_check(kind, obj["body"])
    else:
        decode(frame)
    return frame


def upgrade(obj: dict) -> dict:
    """A version 1 or 2 frame's object as version 3: no spool id (v1), bodies of the fields later versions
    added (`upgrade_body`)."""
    version = obj.get("v")
    obj = {**obj, "v": VERSION}
    if version == 1:
        obj["spool"] = ""
    body = obj.get("body")
    if isinstance(body, dict):
        obj["body"] = upgrade_body(str(obj.get("type")), body)
    return obj


def decode(frame: bytes) -> Message:
    """Parse and validate one frame; any problem is a WireError (never another exception)."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise WireError("frame is not bytes")
    if len(frame) > MAX_FRAME:
        raise WireError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}", "oversized")
    try:
        obj = _loads(bytes(frame))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"not a JSON message: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise WireError("message is not a JSON object")
    version = obj.get("v")
    if isinstance(version, bool) or version not in ACCEPTED_VERSIONS:
        raise WireError(f"schema version {version!r:.20}, expected {VERSION}", "version")
    if version != VERSION:
        obj = upgrade(obj)
    _validate(obj)
    return Message(obj["type"], obj["sensor"], obj["seq"], obj["created"], obj["body"], obj["spool"], version)


def _validate(obj: dict) -> None:
    """Check a message's object (envelope, body, the type's own check), as it is or as it was parsed."""
    _check_fast(ENVELOPE, obj, "envelope")
    kind = obj["type"]
    if kind not in SCHEMA:
        raise WireError(f"unknown message type {kind!r:.20}")
    if not obj["sensor"]:
        raise WireError("envelope: sensor must be non-empty")
    _check_fast(SCHEMA[kind], obj["body"], kind)
    _type_check(kind, obj["body"])


def _type_check(kind: str, body: dict) -> None:
    """The message type's own check beyond its fields (statistics' histograms, context's sketches), if any."""
    check = MESSAGE_TYPES[kind].check
    if check is not None:
        try:
            check(body)
        except ValueError as e:
            raise WireError(str(e)) from None


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")


def _loads(raw: bytes):
    """json.loads refusing non-finite numbers and oversized integers; the per-number hooks (a Python call for
    every number) only when the text could hold such a number: a run of 20 digits, or an exponent of 3 digits.
    Without either, every integer has at most 19 digits and every float is finite (below 1e20 × 1e99)."""
    t = raw.translate(_DIGITS_AS_ZERO)
    text = raw.decode("utf-8")
    if b"00000000000000000000" in t or b"e000" in t or b"e+000" in t or b"e-000" in t:
        return json.loads(text, parse_constant=_no_constants, parse_float=_finite, parse_int=_bounded_int)
    return json.loads(text, parse_constant=_no_constants)


def _no_constants(name: str):
    raise WireError(f"non-finite number {name} in message")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WireError(f"non-finite number {text[:20]} in message")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # never parse a 4,000-digit integer just to refuse it
        raise WireError("integer out of range in message")
    return int(text)


__all__ = [
    "DROP_ORDER",
    "EXAMPLES",
    "MESSAGE_TYPES",
    "SCHEMA",
    "TYPES",
    "Message",
    "MessageType",
    "WireError",
    "ack",
    "decode",
    "encode",
    "health",
    "hello",
    "now_iso",
    "pack",
    "parse_time",
    "unpack",
    "wire_time",
]
