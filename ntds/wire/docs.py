"""docs/wire.md, generated from the message type declarations: `python -m ntds.wire.docs > docs/wire.md`.

A test keeps the page current, so the documentation can never drift from what
the decoder accepts.
"""

from __future__ import annotations

import json
import sys

from ntds.wire.schema import COUNT_MAX, DROP_ORDER, ENVELOPE, MAX_FRAME, MESSAGE_TYPES, TIME_MAX, TIME_MIN, VERSION, F


def _table(fields: dict[str, F], prefix: str = "") -> list[str]:
    rows = []
    for name, f in fields.items():
        kind = {"objs": f"list of objects (at most {f.max_items})", "ints": f"ints[{f.length}]"}.get(f.kind, f.kind)
        if f.kind == "ints" and f.length is None:
            kind = "list of int"
        if f.kind in ("int", "ints") and f.low != 0:
            kind += f" (from {f.low:,})"
        if f.kind in ("int", "ints") and f.top != COUNT_MAX:
            kind += f" (up to {f.top:,})"
        if f.choices:
            kind += f": {' or '.join(f.choices)}"
        rows.append(f"| `{prefix}{name}` | {kind} | {f.meaning} |")
        subs = list(f.fields.values())
        if len(subs) > 1 and all(x.fields and x.fields is subs[0].fields for x in subs):
            # the same fields under every key (traffic classes, unanswered kinds): named once
            rows += _table(subs[0].fields, f"{prefix}{name}.<{'/'.join(f.fields)}>.")
        elif subs:
            rows += _table(f.fields, f"{prefix}{name}[]." if f.kind == "objs" else f"{prefix}{name}.")
    return rows


def markdown() -> str:
    """Every field's table and one example per type, from the declarations."""
    out = [
        f"# Wire format (schema version {VERSION})",
        "",
        "Sensors and the aggregator exchange single-frame ZeroMQ messages, each one UTF-8",
        "JSON object. `ntds/wire/schema.py` declares every message type and is imported by",
        "both programs; this page is generated from it (`python -m ntds.wire.docs >",
        "docs/wire.md`) and the tests check that it is current and that every example decodes.",
        "",
        f"Kinds: `int` is a whole number from 0 to {COUNT_MAX:,} (2^40) unless the field says",
        "otherwise (sequence numbers up to 2^53-1), `num` a finite number, `str` text of at most",
        f"4,096 characters, `time` an ISO-8601 time with a zone between {TIME_MIN:%Y-%m-%d} and",
        f"{TIME_MAX:%Y-%m-%dT%H:%M:%SZ} (the span of a pcap timestamp; sensors write UTC with `Z`),",
        "`obj` an object with exactly the fields listed under it, `ints[n]` a list of n ints,",
        "`packed` the base64 of a zlib-compressed JSON object with exactly the fields listed under it",
        "(at most 1 MiB decompressed; checked as strictly as the rest).",
        "",
        "## Envelope",
        "",
        "| field | kind | meaning |",
        "|---|---|---|",
        *_table(ENVELOPE),
        "",
        f"Rules: the decoder refuses frames over {MAX_FRAME:,} bytes, other schema versions,",
        "unknown types, missing or unknown fields at any depth, fields of the wrong kind,",
        "out-of-range integers and times, and non-finite numbers; each refusal is counted",
        "by reason. `(sensor, spool, seq, created)` names a message once: the aggregator",
        "stores it once and acknowledges it however often it arrives. Acknowledgements",
        "travel back as `ack` messages that are not stored (their own `seq` is 0).",
        "",
        "Version 1 frames (no `spool`, health without `flows_evicted`, `flows_skipped` and",
        '`state`) are still accepted: they are upgraded on decoding (spool `""`, zeros,',
        "`running`) and answered with version 1 acknowledgements. Version 2 alerts (one",
        "rare flow each) become `flow` alerts of count 1; version 3 health gains a zero",
        "`spool_dropped.stats` (version 3 sensors send no `stats`). Each sensor is",
        "acknowledged in its own version.",
        "",
        "Beyond each field's own rules, a `stats` group must agree with itself: the",
        "metrics are the baseline's nine, each at most once, their bins end by the last",
        "bin, min <= max, and the sample holds seven axis values per tier, at most `k`.",
        "",
        f"At the spool's size limit the sensor drops the oldest messages of the least valuable type first: "
        f"{', then '.join(DROP_ORDER)}.",
    ]
    for kind, t in MESSAGE_TYPES.items():
        example = {"v": VERSION, "type": kind, "sensor": "tap-01", "spool": "9f3c61d2a07b44e5"}
        example |= {"seq": 0 if kind == "ack" else 42}
        example |= {"created": "2026-11-23T08:00:00.123456Z", "body": t.example}
        archived = "archived" if t.archive else f"not archived: {t.not_archived}"
        out += ["", f"## `{kind}`", "", f"{t.meaning[0].upper()}{t.meaning[1:]} ({archived}).", ""]
        out += ["| field | kind | meaning |", "|---|---|---|", *_table(t.fields), ""]
        out += ["```json", json.dumps(example, indent=2), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
