"""Indicator files in the formats analysts already have, read into `Indicator`s.

- **plain**: one indicator a line, its type inferred (`ntds.intel.indicators.infer`), `TYPE:VALUE` where a bare
  value is ambiguous, `#` comments;
- **csv**: a header naming at least the value column (`indicator`, `value` or `ioc`), and optionally `type`,
  `source`, `confidence`, `added` (or `first_seen`) and `expires` (or `valid_until`);
- **zeek**: Zeek Intel framework files (`#fields indicator indicator_type meta.source ...`, tab separated);
- **stix**: STIX 2.1 bundles, read with OASIS's `stix2` library (patterns with `stix2-patterns`);
- **misp**: MISP JSON event exports, read with MISP's own `pymisp`;
- **ntds**: the signed set the aggregator pushes (`ntds.intel.matching.write_set`).

A bad file (unreadable, not the format it claims) is an InputError: one line. A bad row is counted and the rest
is loaded; `Loaded.problems` keeps the first lines that say which and why, and unknown types are counted by name.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ntds.errors import InputError
from ntds.intel.indicators import DEFAULT_CONFIDENCE, TYPES, Indicator, infer, normalise
from ntds.times import parse_time

FORMATS = ("plain", "csv", "zeek", "stix", "misp", "ntds")
MAX_FILE_BYTES = 1 << 30
"""Largest indicator file read (1 GiB): ten million indicators in any of the formats."""
KEEP_PROBLEMS = 20

ZEEK_TYPES = {
    "intel::addr": "ip",
    "intel::subnet": "net",
    "intel::domain": "domain",
    "intel::ja3": "ja3",
    "intel::ja3s": "ja3s",
    "intel::ja4": "ja4",
    "intel::hassh": "hassh",
}
"""Zeek's indicator types ntds matches (the JA3 and HASSH ones are the community packages' names)."""
STIX_PATHS = {"ipv4-addr": "ip", "ipv6-addr": "ip", "domain-name": "domain"}
MISP_TYPES = {
    "ip-dst": "ip",
    "ip-src": "ip",
    "ip-dst|port": "ip",
    "ip-src|port": "ip",
    "domain": "domain",
    "hostname": "domain",
    "domain|ip": "domain|ip",
    "ja3-fingerprint-md5": "ja3",
    "hassh-md5": "hassh",
    "hasshserver-md5": "hassh_server",
}
MISP_THREAT_CONFIDENCE = {1: 90, 2: 70, 3: 50, 4: DEFAULT_CONFIDENCE}
"""A MISP attribute has no confidence of its own: its event's threat level (1 high .. 4 undefined) stands in."""


@dataclass
class Loaded:
    """What one file gave: the indicators, and what was left out and why."""

    indicators: list[Indicator] = field(default_factory=list)
    bad_rows: int = 0
    problems: list[str] = field(default_factory=list)
    unknown_types: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    """Rows deliberately left out, by reason (MISP attributes not meant for detection)."""

    def bad(self, where: str, why: str) -> None:
        self.bad_rows += 1
        if len(self.problems) < KEEP_PROBLEMS:
            self.problems.append(f"{where}: {why}")

    def unknown(self, where: str, kind: str) -> None:
        self.unknown_types[kind[:60]] += 1
        self.bad(where, f"unknown indicator type {kind[:60]!r}")


@dataclass
class Defaults:
    """What rows that do not say get: the source (default the file's name), confidence, times."""

    source: str = ""
    confidence: int | None = None
    added: float = 0.0
    expires: float = 0.0
    fixed_source: bool = False
    """The command line's source wins over the file's."""
    fixed_confidence: bool = False
    """The command line's confidence wins over the file's."""


def _time(text) -> float:
    if text in (None, "", "-"):
        return 0.0
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return parse_time(s if "T" in s or len(s) > 10 else s + "T00:00:00Z").timestamp()
    except (ValueError, OverflowError):
        raise ValueError(f"not a time: {s[:40]!r}") from None


def _confidence(text, default: int) -> int:
    if text in (None, "", "-"):
        return default
    try:
        c = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"confidence {str(text)[:20]!r} is not a number 0-100") from None
    if not 0 <= c <= 100:
        raise ValueError(f"confidence {c:g} is not within 0-100")
    return int(round(c))


def _make(kind: str, value: str, d: Defaults, source=None, confidence=None, added=None, expires=None) -> Indicator:
    t, v = normalise(kind, value) if kind else infer(value)
    src = d.source if d.fixed_source or not source else str(source).strip()[:200]
    conf_default = d.confidence if d.confidence is not None else DEFAULT_CONFIDENCE
    conf = conf_default if d.fixed_confidence else _confidence(confidence, conf_default)
    return Indicator(t, v, src or d.source, conf, _time(added) or d.added, _time(expires) or d.expires)


def describe(path: str | Path, loaded: Loaded, fmt: str = "") -> list[str]:
    """What a file gave, for a terminal: one line of counts, then one line per problem kept (the first 20)."""
    extra = []
    if loaded.bad_rows:
        extra.append(f"{loaded.bad_rows} bad rows left out")
    if loaded.unknown_types:
        extra.append("unknown types " + ", ".join(f"{k} ({n})" for k, n in loaded.unknown_types.most_common(5)))
    extra += [f"{n} {why}" for why, n in loaded.skipped.items()]
    head = f"{path}: {len(loaded.indicators)} indicators" + (f" ({fmt})" if fmt else "")
    return [head + ("; " + "; ".join(extra) if extra else "")] + [f"  {p}" for p in loaded.problems]


def detect(path: Path, head: str) -> str:
    """The format of a file from its name and first bytes."""
    name = path.name.lower()
    text = head.lstrip("\ufeff \t\r\n")
    if text.startswith("# ntds-intel"):
        return "ntds"
    if text.startswith("#fields") or text.startswith("#separator"):
        return "zeek"
    if text.startswith("{") or text.startswith("["):
        if '"type"' in head and '"bundle"' in head or '"spec_version"' in head:
            return "stix"
        return "misp"
    if name.endswith(".csv"):
        return "csv"
    return "plain"


def load(path: str | Path, fmt: str = "auto", defaults: Defaults | None = None) -> Loaded:
    """Every indicator in one file; InputError (one line) for a file that cannot be read as `fmt`."""
    p = Path(path)
    d = defaults or Defaults()
    if not d.source:
        d.source = p.name[:200]
    try:
        if p.is_dir():
            raise InputError(f"{p}: is a folder, not an indicator file")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{p}: larger than {MAX_FILE_BYTES >> 20} MB")
        raw = p.read_bytes()
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a text file (byte {e.start} is not UTF-8)") from None
    if fmt == "auto":
        fmt = detect(p, text[:4096])
    if fmt not in FORMATS:
        raise InputError(f"{p}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    reader = {"plain": _plain, "csv": _csv, "zeek": _zeek, "stix": _stix, "misp": _misp, "ntds": _ntds}[fmt]
    out = Loaded()
    reader(text, d, out, str(p))
    if not out.indicators and not out.bad_rows and not out.skipped:
        raise InputError(f"{p}: no indicators in it (read as {fmt})")
    return out


def _plain(text: str, d: Defaults, out: Loaded, name: str) -> None:
    for n, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            out.indicators.append(_make("", value, d))
        except ValueError as e:
            if "unknown indicator type" in str(e):
                out.unknown(f"{name}:{n}", value.partition(":")[0])
            else:
                out.bad(f"{name}:{n}", str(e))


_CSV_NAMES = {
    "value": ("indicator", "value", "ioc", "observable"),
    "type": ("type", "indicator_type", "ioc_type"),
    "source": ("source", "feed"),
    "confidence": ("confidence", "score"),
    "added": ("added", "first_seen", "created"),
    "expires": ("expires", "valid_until", "expiry"),
}


def _csv(text: str, d: Defaults, out: Loaded, name: str) -> None:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    try:
        reader = csv.reader(io.StringIO("\n".join(lines)))
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error as e:
        raise InputError(f"{name}: not CSV: {e}") from None
    cols = {}
    for key, names in _CSV_NAMES.items():
        cols[key] = next((header.index(n) for n in names if n in header), None)
    if cols["value"] is None:
        raise InputError(f"{name}: the CSV header names no indicator column (indicator, value or ioc)")
    try:
        for n, row in enumerate(reader, 2):
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                out.bad(f"{name}:{n}", f"{len(row)} columns, the header has {len(header)}")
                continue
            get = {k: (row[i] if i is not None else None) for k, i in cols.items()}
            kind = (get["type"] or "").strip().lower()
            if kind and kind not in TYPES:
                out.unknown(f"{name}:{n}", kind)
                continue
            try:
                out.indicators.append(_make(kind, get["value"], d, get["source"], get["confidence"], get["added"],
                                            get["expires"]))  # fmt: skip
            except ValueError as e:
                out.bad(f"{name}:{n}", str(e))
    except csv.Error as e:
        raise InputError(f"{name}: not CSV: {e}") from None


def _zeek(text: str, d: Defaults, out: Loaded, name: str) -> None:
    sep = "\t"
    fields: list[str] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#separator"):
            arg = line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else "\\x09"
            try:
                sep = arg.encode().decode("unicode_escape") if arg.startswith("\\x") else arg
            except UnicodeDecodeError:
                raise InputError(f"{name}:{n}: not a separator: {arg[:20]!r}") from None
            if not sep:
                raise InputError(f"{name}:{n}: an empty separator")
            continue
        if line.startswith("#fields"):
            fields = line.split(sep)[1:] if sep in line else line.split()[1:]
            continue
        if not line.strip() or line.startswith("#"):
            continue
        if fields is None:
            raise InputError(f"{name}: a Zeek intel file needs a #fields line before its rows")
        if "indicator" not in fields or "indicator_type" not in fields:
            raise InputError(f"{name}: the #fields line names no indicator and indicator_type")
        row = line.split(sep)
        if len(row) != len(fields):
            out.bad(f"{name}:{n}", f"{len(row)} fields, #fields names {len(fields)}")
            continue
        get = dict(zip(fields, row))
        kind = ZEEK_TYPES.get(get["indicator_type"].strip().lower())
        if kind is None:
            out.unknown(f"{name}:{n}", get["indicator_type"].strip())
            continue
        source = get.get("meta.source")
        confidence = get.get("meta.confidence")
        try:
            out.indicators.append(_make(kind, get["indicator"], d, None if source == "-" else source,
                                        None if confidence == "-" else confidence,
                                        get.get("meta.first_seen"), get.get("meta.expires")))  # fmt: skip
        except ValueError as e:
            out.bad(f"{name}:{n}", str(e))


def _json(text: str, name: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{name}: not JSON: {e}") from None


def _stix(text: str, d: Defaults, out: Loaded, name: str) -> None:
    try:
        import stix2
        from stix2patterns.pattern import Pattern
    except ImportError:
        raise InputError(f"{name}: reading STIX needs the stix2 package (pip install 'ntds[intel]')") from None
    doc = _json(text, name)
    if not isinstance(doc, dict) or doc.get("type") != "bundle":
        raise InputError(f"{name}: not a STIX 2.1 bundle (no top-level object of type bundle)")
    objects = doc.get("objects") or []
    if not isinstance(objects, list):
        raise InputError(f"{name}: the bundle's objects are not a list")
    identities = {o.get("id"): o.get("name") for o in objects if isinstance(o, dict) and o.get("type") == "identity"}
    for n, obj in enumerate(objects):
        if not isinstance(obj, dict) or obj.get("type") != "indicator":
            continue
        where = f"{name}: objects[{n}] {str(obj.get('id', ''))[:60]}"
        try:
            ind = stix2.parse(obj, allow_custom=True, version="2.1")
        except Exception as e:  # noqa: BLE001 - the library raises many kinds for one bad object: one line each
            out.bad(where, f"not a valid STIX 2.1 indicator: {str(e).splitlines()[0][:200]}")
            continue
        if ind.get("pattern_type") != "stix":
            out.unknown(where, f"pattern_type {ind.get('pattern_type')}")
            continue
        pattern = ind["pattern"]
        try:
            comparisons = Pattern(pattern).inspect().comparisons
        except Exception as e:  # noqa: BLE001 - a pattern that does not parse
            out.bad(where, f"pattern does not parse: {str(e).splitlines()[0][:200]}")
            continue
        source = identities.get(ind.get("created_by_ref")) or None
        valid_until = ind.get("valid_until")
        if " and " in pattern.lower().replace("'", "\x00"):
            out.bad(where, "a pattern joining comparisons with AND cannot be matched on one value")
            continue
        for kind, items in comparisons.items():
            for path, op, value in items:
                if kind not in STIX_PATHS or path != ["value"] or op != "=":
                    out.unknown(where, f"{kind}:{'.'.join(map(str, path))} {op}")
                    continue
                try:
                    until = str(valid_until) if valid_until else None
                    out.indicators.append(_make(STIX_PATHS[kind], value.strip("'"), d, source, ind.get("confidence"),
                                                str(ind["created"]), until))  # fmt: skip
                except ValueError as e:
                    out.bad(where, str(e))


def _misp(text: str, d: Defaults, out: Loaded, name: str) -> None:
    try:
        from pymisp import MISPEvent
    except ImportError:
        raise InputError(f"{name}: reading MISP needs the pymisp package (pip install 'ntds[intel]')") from None
    doc = _json(text, name)
    if isinstance(doc, dict) and "response" in doc:
        doc = doc["response"]
    events = doc if isinstance(doc, list) else [doc]
    if not events or not all(isinstance(e, dict) and isinstance(e.get("Event", e), dict) for e in events):
        raise InputError(f"{name}: not a MISP event export (an object with Event, or a list of them)")
    for k, raw in enumerate(events):
        ev = MISPEvent()
        try:
            ev.from_dict(**(raw if "Event" in raw else {"Event": raw}))
        except Exception as e:  # noqa: BLE001 - pymisp raises its own and built-in errors for a bad event
            raise InputError(f"{name}: event {k} is not a MISP event: {str(e).splitlines()[0][:200]}") from None
        org = ev.get("Orgc", {}).get("name") if isinstance(ev.get("Orgc"), dict) else None
        org = org or getattr(getattr(ev, "Orgc", None), "name", None)
        source = f"MISP {org}" if org else None
        threat = int(ev.get("threat_level_id") or 4)
        confidence = MISP_THREAT_CONFIDENCE.get(threat, DEFAULT_CONFIDENCE)
        attributes = list(ev.attributes) + [a for o in ev.objects for a in o.attributes]
        for a in attributes:
            where = f"{name}: event {k} attribute {str(a.get('uuid', ''))[:40]}"
            kind = MISP_TYPES.get(a.type)
            if kind is None:
                out.unknown(where, a.type)
                continue
            if not a.to_ids:
                out.skipped["to_ids false (not for detection)"] += 1
                continue
            added = a.timestamp.timestamp() if getattr(a, "timestamp", None) else None
            values = [(kind, str(a.value))]
            if kind == "domain|ip":
                dom, _, ip = str(a.value).partition("|")
                values = [("domain", dom), ("ip", ip)]
            elif "|port" in a.type:
                values = [(kind, str(a.value).rpartition("|")[0])]
            for t, v in values:
                try:
                    out.indicators.append(_make(t, v, d, source, confidence, added))
                except ValueError as e:
                    out.bad(where, str(e))


def _ntds(text: str, d: Defaults, out: Loaded, name: str) -> None:
    from ntds.intel.matching import read_set

    try:
        out.indicators.extend(read_set(text))
    except ValueError as e:
        raise InputError(f"{name}: {e}") from None


__all__ = ["FORMATS", "Defaults", "Loaded", "describe", "detect", "load"]
