"""`config/aggregator.yaml`: read once, validated once, one clear line per mistake."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sensor.errors import InputError

KEYS = {
    "endpoint": (str, "tcp://127.0.0.1:5555"),
    "server_key": (str, "/etc/ntds/keys/server.key_secret"),
    "allow_list": (str, "/etc/ntds/sensors"),
    "store": (str, "/var/lib/ntds-aggregator/store.db"),
    "archive": (str, "/var/lib/ntds-aggregator/archive"),
    "retention_days": (int, 400),
    "archive_interval_s": (int, 30),
    "site_country": (str, ""),
}
MINIMUM = {"retention_days": 0, "archive_interval_s": 1}


@dataclass(frozen=True)
class AggregatorConfig:
    endpoint: str
    server_key: Path
    allow_list: Path
    store: Path
    archive: Path
    retention_days: int
    """0 keeps everything; otherwise archive days and stored messages older than this are deleted."""
    archive_interval_s: int
    site_country: str
    """ISO code of the site's country: where the world map's arrows start (none if empty)."""


def load(path: str | Path, insecure: bool = False) -> AggregatorConfig:
    """The validated configuration; with insecure (the --insecure flag) no keys are needed."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{p}: cannot read configuration: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{p}:{where} not valid YAML") from None
    if not isinstance(raw, dict):
        raise InputError(f"{p}: expected a mapping of settings")
    values = {}
    for key, value in raw.items():
        if key not in KEYS:
            raise InputError(f"{p}: unknown setting {key!r}{_line(text, key)} (known: {', '.join(KEYS)})")
        kind, default = KEYS[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and default and not value):
            what = "non-empty string" if kind is str else "whole number"
            raise InputError(f"{p}: setting {key!r} must be a {what}{_line(text, key)}")
        if kind is int and value < MINIMUM[key]:
            raise InputError(f"{p}: setting {key!r} must be at least {MINIMUM[key]}{_line(text, key)}")
        values[key] = value
    merged = {k: values.get(k, default) for k, (_, default) in KEYS.items()}
    base = p.resolve().parent
    resolve = lambda v: (base / v) if not Path(v).is_absolute() else Path(v)  # noqa: E731
    country = merged["site_country"].upper()
    if country and not (len(country) == 2 and country.isalpha()):
        raise InputError(f"{p}: setting 'site_country' must be an ISO 3166 alpha-2 code such as CO")
    cfg = AggregatorConfig(
        merged["endpoint"],
        resolve(merged["server_key"]),
        resolve(merged["allow_list"]),
        resolve(merged["store"]),
        resolve(merged["archive"]),
        merged["retention_days"],
        merged["archive_interval_s"],
        country,
    )
    if not insecure:
        if not cfg.server_key.exists():
            raise InputError(f"{p}: server_key {cfg.server_key} does not exist (ntds-aggregator keygen writes one)")
        if not cfg.allow_list.is_dir():
            raise InputError(f"{p}: allow_list {cfg.allow_list} is not a folder")
    return cfg


def _line(text: str, key: str) -> str:
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:"):
            return f" (line {n})"
    return ""
