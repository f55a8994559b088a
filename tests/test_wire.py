"""The wire schema: every type round-trips, bad frames are refused, and nothing crashes the decoder."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntds.wire import schema as wire
from ntds.wire.docs import markdown
from ntds.wire.schema import EXAMPLES, Message, WireError, decode, encode


@pytest.mark.parametrize("kind", wire.TYPES)
def test_every_type_round_trips(kind):
    m = Message(kind, "tap-01", 7, wire.now_iso(), EXAMPLES[kind])
    assert decode(encode(m)) == m


SUMMARY = EXAMPLES["summary"]
APP = SUMMARY["applications"][0]


def frame(**changes) -> bytes:
    obj = {
        "v": 3,
        "type": "summary",
        "sensor": "tap-01",
        "spool": "0123456789abcdef",
        "seq": 1,
        "created": "2026-11-16T08:00:00Z",
        "body": EXAMPLES["summary"],
    }
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "not a JSON message"),
        (b"[1, 2]", "not a JSON object"),
        (frame(v=wire.VERSION + 1), f"schema version {wire.VERSION + 1}"),
        (frame(v=True), "schema version True"),
        (frame(type="exploit"), "unknown message type"),
        (frame(seq="1"), "wrong type"),
        (frame(seq=-1), "envelope.seq: wrong type or value"),
        (frame(seq=2**63), "envelope.seq: wrong type or value"),
        (frame(created="yesterday"), "envelope.created"),
        (frame(created="2026-11-16T08:00:00"), "envelope.created"),  # no zone
        (frame(sensor=""), "sensor must be non-empty"),
        (frame(body={**SUMMARY, "interval_start": "x"}), "summary.interval_start"),
        (frame(body={**SUMMARY, "applications": [{**APP, "tiers": [1, 2]}]}), r"applications\[0\]\.tiers"),
        (frame(body={**SUMMARY, "applications": [{**APP, "flows": -1}]}), r"applications\[0\]\.flows"),
        (frame(body={**SUMMARY, "applications": [{**APP, "x": 1}]}), "unknown field 'x'"),
        (frame(body={**SUMMARY, "applications": [APP] * 66}), "summary.applications"),
        (frame(body={**SUMMARY, "applications": [1]}), "not an object"),
        (frame(body={**SUMMARY, "traffic": {**SUMMARY["traffic"], "other": {}}}), "missing field 'flows'"),
        (frame(type="alert", body={**EXAMPLES["alert"], "tier": 6}), "alert.tier"),
        (frame(type="alert", body={**EXAMPLES["alert"], "explanation": [{"axis": 1}]}), "explanation"),
        (frame(type="ack", body={"seqs": [1, "2"]}), "ack.seqs"),
        (frame(body={**EXAMPLES["summary"], "extra": 1}), "unknown field"),
        (frame(body={"flows": 1}), "missing field"),
        (frame(extra=1), "unknown field"),
        (b'{"v": 1, "n": NaN}', "non-finite"),
        (frame(type="alert", body={**EXAMPLES["alert"], "score": 1e999}).replace(b"Infinity", b"1e999"), "non-finite"),
        (frame(seq=10**400), "integer out of range"),
        (frame(seq=2**53), "envelope.seq"),
        (frame(body={**SUMMARY, "flows": 2**40 + 1}), "summary.flows"),
        (frame(type="alert", body={**EXAMPLES["alert"], "src_port": 65536}), "alert.src_port"),
        (frame(created="0001-01-01T00:00:00+01:00"), "envelope.created"),  # overflows when made UTC
        (frame(created="1969-12-31T23:59:59Z"), "envelope.created"),
        (frame(created="2106-02-07T06:28:16Z"), "envelope.created"),
        (frame(body={**SUMMARY, "interval_start": "9999-12-31T23:59:59Z"}), "summary.interval_start"),
        (frame(sensor="x" * 65), "envelope.sensor"),
        (frame(type="health", body={**EXAMPLES["health"], "state": "dancing"}), "health.state"),
        (frame(spool=None), "envelope.spool"),
        (b" " * (wire.MAX_FRAME + 1), "exceeds"),
        (b"[" * 60000, "not a JSON message"),  # nesting deeper than the parser allows
    ],
)
def test_bad_frames_are_refused(data, why):
    with pytest.raises(WireError, match=why):
        decode(data)


def test_encode_refuses_what_the_receiver_would_refuse():
    with pytest.raises(WireError):
        encode(Message("alert", "tap-01", 1, wire.now_iso(), {"tier": 3}))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    with contextlib.suppress(WireError):
        decode(data)


wire_times = st.datetimes(timezones=st.timezones() | st.just(None)).map(lambda t: t.isoformat()) | st.from_regex(
    r"\A-?\d{4,5}-\d\d-\d\dT\d\d:\d\d:\d\d([+-]\d\d:\d\d|Z)?\Z"
)
"""Times anywhere in datetime's range and zone offsets, and strings that look like times but are not."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "v": st.sampled_from([1, 2, 2, 3, "1", True]),
            "type": st.sampled_from([*wire.TYPES, "x"]),
            "sensor": st.text(max_size=8),
            "spool": st.text(max_size=8),
            "seq": st.integers(-2, 2**70),
            "created": st.text(max_size=8) | wire_times,
            "body": json_values,
        },
    )
)
def test_arbitrary_envelopes_are_messages_or_wire_errors(obj):
    try:
        m = decode(json.dumps(obj).encode())
    except WireError:
        return
    assert m.type in wire.TYPES and m.seq >= 0


def test_every_example_in_the_wire_doc_decodes():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "wire.md").read_text()
    blocks = re.findall(r"```json\n(.*?)\n```", text, re.S)
    kinds = [decode(json.dumps(json.loads(b)).encode()).type for b in blocks]
    assert sorted(kinds) == sorted(wire.TYPES)


def test_the_wire_doc_is_generated_from_the_schema():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "wire.md").read_text()
    assert text == markdown(), "run: python -m ntds.wire.docs > docs/wire.md"
    for kind, fields in wire.SCHEMA.items():
        for name in fields:
            assert f"`{name}`" in text, (kind, name)


@pytest.mark.parametrize("kind", wire.TYPES)
def test_every_type_is_archived_or_deliberately_skipped(kind):
    """A new message type must say where it lands: archive rows of known tables, or why not."""
    from aggregator.archive import TABLES

    t = wire.MESSAGE_TYPES[kind]
    if t.archive is None:
        assert t.not_archived, f"{kind}: neither archived nor deliberately skipped"
        return
    rows = list(t.archive(Message(kind, "tap-01", 7, "2026-11-16T08:00:00Z", EXAMPLES[kind])))
    assert rows, f"{kind}: the example gives no archive row"
    for table, when, row in rows:
        assert table in TABLES
        assert set(row) == set(TABLES[table].names), (table, set(row) ^ set(TABLES[table].names))
        assert when.tzinfo is not None


def test_drop_order_and_health_counters_come_from_the_declarations():
    spooled = [t for t in wire.MESSAGE_TYPES.values() if t.drop_rank is not None]
    assert list(wire.DROP_ORDER) == [t.name for t in sorted(spooled, key=lambda t: t.drop_rank)]
    assert list(wire.SCHEMA["health"]["spool_dropped"].fields) == list(wire.DROP_ORDER)
    assert "ack" not in wire.DROP_ORDER


@settings(max_examples=300, deadline=None)
@given(wire_times)
def test_fuzzed_times_are_valid_in_range_or_wire_errors(created):
    """Every time field: a valid time inside TIME_MIN..TIME_MAX, or a counted rejection, never another error."""
    obj = json.loads(frame())
    obj["created"] = created
    obj["body"]["interval_start"] = created
    try:
        m = decode(json.dumps(obj).encode())
    except WireError:
        return
    assert wire.TIME_MIN <= wire.wire_time(m.created) <= wire.TIME_MAX


def test_version_1_frames_are_upgraded():
    """A sensor not yet upgraded (schema v1: no spool id, older health) is still heard."""
    health = {k: v for k, v in EXAMPLES["health"].items()
              if k not in ("flows_evicted", "flows_skipped", "state", "detector_keys_evicted")}  # fmt: skip
    obj = {"v": 1, "type": "health", "sensor": "tap-01", "seq": 5, "created": "2026-11-16T08:00:00Z", "body": health}
    m = decode(json.dumps(obj).encode())
    assert m.spool == "" and m.body["state"] == "running" and m.body["flows_evicted"] == 0
    ack = wire.ack("tap-01", "", [5])
    v1 = json.loads(encode(ack, version=1))
    assert v1["v"] == 1 and "spool" not in v1 and v1["body"] == {"seqs": [5]}


def test_version_2_alerts_are_upgraded_to_flow_alerts():
    """A version 2 sensor's alert (one rare flow, no kind) arrives as a flow alert of count 1, its explanation in
    words; the sensor is acknowledged in version 2."""
    v2 = {k: v for k, v in EXAMPLES["alert"].items() if k not in (
        "kind", "signature", "first_seen", "last_seen", "count", "window_s", "domain", "pattern", "community_id",
        "baseline_id", "features")}  # fmt: skip
    v2["time"] = "2026-11-16T08:00:00.100000Z"
    v2["explanation"] = [{k: v for k, v in e.items() if k != "text"} for e in v2["explanation"]]
    obj = {"v": 2, "type": "alert", "sensor": "tap-01", "spool": "0123456789abcdef", "seq": 7,
           "created": "2026-11-16T08:00:01Z", "body": v2}  # fmt: skip
    m = decode(json.dumps(obj).encode())
    assert m.version == 2 and m.body["kind"] == "flow" and m.body["count"] == 1
    assert m.body["first_seen"] == m.body["last_seen"] == v2["time"] and "time" not in m.body
    assert m.body["explanation"][0]["text"] == "payload volume 99 MB, typically 6 kB"
    assert wire.upgrade_body("alert", m.body) == m.body  # idempotent: stored bodies are upgraded again on reading
    assert json.loads(encode(wire.ack("tap-01", "0123456789abcdef", [7]), version=2))["v"] == 2


def test_version_5_frames_are_upgraded_to_version_6():
    """A version 5 sensor (before threat intelligence) is still heard: its hello names no indicator set, its health
    counts none, its alerts match none; it is acknowledged in version 5."""
    for kind, missing in (("hello", ("intel_serial",)), ("alert", ("intel",)),
                          ("health", ("intel_serial", "intel_indicators", "intel_refused"))):  # fmt: skip
        body = {k: v for k, v in EXAMPLES[kind].items() if k not in missing}
        frame = json.dumps({"v": 5, "type": kind, "sensor": "tap-01", "spool": "0123456789abcdef", "seq": 1,
                            "created": "2026-11-23T08:00:00Z", "body": body}).encode()  # fmt: skip
        m = decode(frame)
        assert m.version == 5 and {k: m.body[k] for k in missing} == {k: 0 if k != "intel" else [] for k in missing}
        with pytest.raises(WireError, match="intel"):  # a sender of the current version must send them
            decode(frame.replace(b'"v": 5', f'"v": {wire.VERSION}'.encode()))


def test_version_6_frames_are_upgraded():
    """A version 6 sensor (before context messages) is still heard: its health counts no context messages dropped
    at its spool's limit; a current health must count them."""
    body = EXAMPLES["health"] | {"spool_dropped": {k: 0 for k in wire.DROP_ORDER if k != "context"}}
    frame = json.dumps({"v": 6, "type": "health", "sensor": "tap-01", "spool": "0123456789abcdef", "seq": 1,
                        "created": "2026-11-23T08:00:00Z", "body": body}).encode()  # fmt: skip
    m = decode(frame)
    assert m.version == 6 and m.body["spool_dropped"]["context"] == 0
    with pytest.raises(WireError, match="context"):
        decode(frame.replace(b'"v": 6', f'"v": {wire.VERSION}'.encode()))


def test_version_7_sensors_are_acknowledged_without_busy():
    """Acknowledgements say busy from version 8 on: a version 7 sensor gets exactly the ack it knows (its decoder
    refuses unknown fields), and a version 8 decoder reads a version 7 ack as never busy."""
    frame = encode(wire.ack("tap-01", "0123456789abcdef", [4, 5], busy_s=30), version=7)
    obj = json.loads(frame)
    assert obj["v"] == 7 and obj["body"] == {"seqs": [4, 5]}
    assert decode(frame).body == {"seqs": [4, 5], "busy_s": 0}
    now = decode(encode(wire.ack("tap-01", "0123456789abcdef", [4, 5], busy_s=30)))
    assert now.version == wire.VERSION == 8 and now.body["busy_s"] == 30
    with pytest.raises(WireError, match="busy_s"):  # a version 8 ack must say it
        decode(frame.replace(b'"v":7', b'"v":8'))


def test_context_sketches_are_checked():
    """A context message's sketches are DataSketches bytes: anything else is refused as malformed."""
    good = {"v": wire.VERSION, "type": "context", "sensor": "tap-01", "spool": "0123456789abcdef", "seq": 1,
            "created": "2026-11-23T08:00:00Z", "body": EXAMPLES["context"]}  # fmt: skip
    assert wire.unpack(decode(json.dumps(good).encode()).body["packed"])["destinations"][0]["kind"] == "address"
    for bad in ("AAAAAAAAAAAAAAAA", "not base64!", ""):
        d = wire.CONTEXT_EXAMPLE["destinations"][0] | {"sketch": bad}
        packed = wire.pack(wire.CONTEXT_EXAMPLE | {"destinations": [d]})
        frame = json.dumps(good | {"body": EXAMPLES["context"] | {"packed": packed}}).encode()
        with pytest.raises(WireError, match="sketch"):
            decode(frame)
    import base64
    import zlib

    bomb = base64.b64encode(zlib.compress(b'{"destinations": [' + b" " * (4 * 2**20) + b"]}", 9)).decode()
    for bad, why in ((bomb, "at most"), ("eJzLSM3JyQcABiwCFQ==", "not a packed object"),
                     (wire.pack({"destinations": [], "hosts": [], "x": 1}), "unknown field")):  # fmt: skip
        frame = json.dumps(good | {"body": EXAMPLES["context"] | {"packed": bad}}).encode()
        with pytest.raises(WireError, match=why):
            decode(frame)


# -- the fast path: encode checks the object it is about to send, decode skips the per-number hooks when the
# text cannot hold a number they refuse. Both must answer exactly as the slow path did. The references below
# are that slow path, written out again: parse with the hooks, then the field-by-field check.


def reference_decode(frame: bytes) -> Message:
    obj = json.loads(frame.decode("utf-8"), parse_constant=wire._no_constants, parse_float=wire._finite,
                     parse_int=wire._bounded_int)  # fmt: skip
    wire._check(wire.ENVELOPE, obj, "envelope")
    if obj["type"] not in wire.SCHEMA or not obj["sensor"]:
        raise WireError("envelope")
    wire._check(wire.SCHEMA[obj["type"]], obj["body"], obj["type"])
    check = wire.MESSAGE_TYPES[obj["type"]].check
    if check is not None:
        try:
            check(obj["body"])
        except ValueError as e:
            raise WireError(str(e)) from None
    return Message(obj["type"], obj["sensor"], obj["seq"], obj["created"], obj["body"], obj["spool"])


def reference_encode(m: Message) -> bytes:
    obj = {"v": wire.VERSION, "type": m.type, "sensor": m.sensor, "spool": m.spool, "seq": m.seq,
           "created": m.created, "body": m.body}  # fmt: skip
    frame = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(frame) > wire.MAX_FRAME:
        raise WireError("oversized")
    reference_decode(frame)
    return frame


def outcome(f, *args):
    try:
        return "ok", f(*args)
    except (WireError, ValueError, TypeError) as e:
        return "refused", type(e) if not isinstance(e, WireError) else WireError


def paths(obj, at=()):
    """Every place in an object: its keys and list items, at any depth."""
    yield at
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*at, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*at, i))


def replaced(obj, at, value):
    if not at:
        return value
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[at[0]] = replaced(obj[at[0]], at[1:], value)
    return copy


class Odd(int):
    pass


class Loose(dict):
    pass


ODD_VALUES = [True, False, None, 0, -1, 7, 2**53, -(2**53), 2**64, 10**25, 1.5, -0.0, 1e300, float("inf"), "x",
              "2026-11-16T08:00:00Z", "y" * 5000, [], [1, 2], (1, 2), (), {}, {"a": 1}, {1: 2}, Odd(3),
              Loose(a=1)]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(wire.TYPES), st.data())
def test_the_fast_check_answers_as_the_field_by_field_check(kind, data):
    body = EXAMPLES[kind]
    at = data.draw(st.sampled_from(list(paths(body))))
    mutated = replaced(body, at, data.draw(st.sampled_from(ODD_VALUES)))
    if data.draw(st.booleans()) and isinstance(mutated, dict) and mutated:  # also: a field dropped or added
        mutated = dict(mutated)
        mutated.pop(data.draw(st.sampled_from(sorted(mutated))))
    fits = wire._fits(wire.SCHEMA[kind])(mutated)
    exact = outcome(wire._check, wire.SCHEMA[kind], mutated, kind)[0] == "ok"
    assert exact or not fits  # a yes from the predicate is always right
    m = Message(kind, "tap-01", 7, "2026-11-16T08:00:00Z", mutated, "0123456789abcdef")
    assert outcome(encode, m) == outcome(reference_encode, m)


numbers = st.integers(-(10**30), 10**30) | st.floats() | st.decimals(allow_nan=False, allow_infinity=False).map(str)


@settings(max_examples=1500, deadline=None)
@given(st.lists(numbers | st.text(alphabet="0123456789eE+-.", max_size=30), max_size=8))
def test_decoding_without_the_number_hooks_refuses_the_same_numbers(items):
    # Numbers of every size and notation, as numbers and inside strings (which must not be refused)
    raw = "[" + ",".join(json.dumps(x) if not isinstance(x, str) or x[:1] == '"' else x for x in items) + "]"
    raw_b = raw.replace("NaN", "1e999").replace("Infinity", "1e999").encode()

    def hooked(b):
        return json.loads(b.decode(), parse_constant=wire._no_constants, parse_float=wire._finite,
                          parse_int=wire._bounded_int)  # fmt: skip

    for b in (raw_b, json.dumps(items).encode()):
        expected = outcome(hooked, b)
        got = outcome(wire._loads, b)
        assert got[0] == expected[0]
        if got[0] == "ok":
            assert json.dumps(got[1]) == json.dumps(expected[1])


def test_every_type_round_trips_through_the_fast_path_as_through_the_slow_one():
    for kind in wire.TYPES:
        m = Message(kind, "tap-01", 7, wire.now_iso(), EXAMPLES[kind], "0123456789abcdef")
        frame = encode(m)
        assert frame == reference_encode(m)
        assert decode(frame) == reference_decode(frame)
