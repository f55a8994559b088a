"""The wire schema between sensors and the aggregator: the one place a message field is defined.

Every message is one ZeroMQ frame holding one UTF-8 JSON object, the envelope:

    {"v": 1, "type": "alert", "sensor": "tap-01", "seq": 42,
     "created": "2026-11-23T08:00:00.123456Z", "body": {...}}

`seq` is the sensor's own sequence number: it starts at 1, grows by one per
message and survives restarts (the spool keeps it), so (sensor, seq) names a
message exactly once however often it is resent. The aggregator answers with an
`ack` whose body lists the sequence numbers it has stored. docs/wire.md shows
one example of each type; `SCHEMA` below is the authority.

Decoding is strict: wrong JSON, wrong version, unknown type, missing or
unknown fields, wrong types and oversized frames all raise WireError, and
nothing else (a property test feeds the decoder arbitrary bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

VERSION = 1
MAX_FRAME = 65536
"""Largest accepted frame in bytes; an alert with its explanation is about 1 KB."""


class WireError(ValueError):
    """A frame that is not a valid message of this schema version."""


# field name -> (accepted Python types, required?, meaning). Kept as data so that the
# decoder, the docs and the tests all read the same definition.
Field = tuple[tuple[type, ...], bool, str]
INT = (int,)
NUM = (int, float)
STR = (str,)

ENVELOPE: dict[str, Field] = {
    "v": (INT, True, "schema version (1)"),
    "type": (STR, True, "hello, alert, summary, health or ack"),
    "sensor": (STR, True, "the sensor's id; the aggregator only accepts the id bound to the sender's key"),
    "seq": (INT, True, "the sensor's message sequence number, from 1, never reused"),
    "created": (STR, True, "when the sensor created the message, ISO-8601 UTC"),
    "body": ((dict,), True, "the type's fields below"),
}

SCHEMA: dict[str, dict[str, Field]] = {
    "hello": {
        "software": (STR, True, "ntds version of the sensor"),
        "baseline_id": (STR, True, "identifies the baseline the sensor scores with (its build time and method)"),
        "feature_profile": (STR, True, "unicauca or corrected"),
    },
    "alert": {
        "time": (STR, True, "flow start, ISO-8601 UTC"),
        "flow_id": (STR, True, "CICFlowMeter Flow.ID"),
        "src_ip": (STR, True, "Source.IP"),
        "src_port": (INT, True, "Source.Port"),
        "dst_ip": (STR, True, "Destination.IP"),
        "dst_port": (INT, True, "Destination.Port"),
        "protocol": (INT, True, "Protocol as in the flow record"),
        "application": (STR, True, "ProtocolName"),
        "baseline": (STR, True, "application or all-traffic: which baseline entry judged the flow"),
        "score": (NUM, True, "anomaly score"),
        "tier": (INT, True, "rarity tier 0..5"),
        "tier_label": (STR, True, "common event .. 1 in 100000 event"),
        "explanation": ((list,), True, "axes that contributed most: axis, value, typical, score"),
    },
    "summary": {
        "interval_start": (STR, True, "start of the interval, ISO-8601 UTC"),
        "interval_s": (INT, True, "length of the interval in seconds"),
        "flows": (INT, True, "flows finished in the interval"),
        "packets": (INT, True, "packets of those flows"),
        "bytes": (INT, True, "payload bytes of those flows"),
    },
    "health": {
        "packets_seen": (INT, True, "packets the capture delivered since start"),
        "packets_dropped": (INT, True, "packets the kernel or interface dropped since start"),
        "flows_active": (INT, True, "flows open in the meter now"),
        "spool_messages": (INT, True, "messages waiting in the spool for an acknowledgement"),
        "spool_bytes": (INT, True, "their size"),
        "spool_dropped": ((dict,), True, "messages dropped at the spool's size limit, per type"),
    },
    "ack": {
        "seqs": ((list,), True, "sequence numbers of the sensor's messages now durably stored"),
    },
}
TYPES = tuple(SCHEMA)

# One realistic body per type: docs/wire.md shows them, tests and benchmarks send them.
EXAMPLES = {
    "hello": {"software": "0.1.0", "baseline_id": "2026-11-23T02:00:00Z robust", "feature_profile": "unicauca"},
    "alert": {
        "time": "2026-11-16T08:00:00.100000Z",
        "flow_id": "10.1.0.10-93.184.216.34-42000-443-6",
        "src_ip": "10.1.0.10",
        "src_port": 42000,
        "dst_ip": "93.184.216.34",
        "dst_port": 443,
        "protocol": 6,
        "application": "GOOGLE",
        "baseline": "application",
        "score": 3.25,
        "tier": 3,
        "tier_label": "1 in 1000 event",
        "explanation": [{"axis": "volume", "value": 9.9e7, "typical": 6000.0, "score": 8.1}],
    },
    "summary": {"interval_start": "2026-11-16T08:00:00Z", "interval_s": 60, "flows": 10, "packets": 99, "bytes": 5000},
    "health": {
        "packets_seen": 1,
        "packets_dropped": 0,
        "flows_active": 3,
        "spool_messages": 0,
        "spool_bytes": 0,
        "spool_dropped": {"health": 0, "summary": 0, "hello": 0, "alert": 0},
    },
    "ack": {"seqs": [1, 2, 3]},
}


@dataclass(frozen=True)
class Message:
    type: str
    sensor: str
    seq: int
    created: str
    body: dict


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check(fields: dict[str, Field], obj: dict, where: str) -> None:
    for name, (types, required, _) in fields.items():
        if name not in obj:
            if required:
                raise WireError(f"{where}: missing field {name!r}")
            continue
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise WireError(f"{where}: field {name!r} has the wrong type")
    unknown = set(obj) - set(fields)
    if unknown:
        raise WireError(f"{where}: unknown field {sorted(unknown)[0]!r}")


def encode(message: Message) -> bytes:
    """One frame for a message; validated the same way the receiver will."""
    obj = {
        "v": VERSION,
        "type": message.type,
        "sensor": message.sensor,
        "seq": message.seq,
        "created": message.created,
        "body": message.body,
    }
    frame = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    decode(frame)  # a sensor must never send what the aggregator would refuse
    return frame


def decode(frame: bytes) -> Message:
    """Parse and validate one frame; any problem is a WireError (never another exception)."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise WireError("frame is not bytes")
    if len(frame) > MAX_FRAME:
        raise WireError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    try:
        obj = json.loads(bytes(frame).decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"not a JSON message: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise WireError("message is not a JSON object")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise WireError(f"schema version {obj.get('v')!r}, expected {VERSION}")
    _check(ENVELOPE, obj, "envelope")
    kind = obj["type"]
    if kind not in SCHEMA:
        raise WireError(f"unknown message type {kind!r}")
    if obj["seq"] < 0 or not obj["sensor"]:
        raise WireError("envelope: seq must be >= 0 and sensor non-empty")
    _check(SCHEMA[kind], obj["body"], kind)
    return Message(kind, obj["sensor"], obj["seq"], obj["created"], obj["body"])


def _no_constants(name: str):
    raise WireError(f"non-finite number {name} in message")


def ack(sensor: str, seqs: list[int], seq: int = 0) -> Message:
    """The aggregator's acknowledgement of stored messages (its own seq is 0: acks are not stored)."""
    return Message("ack", sensor, seq, now_iso(), {"seqs": list(seqs)})
