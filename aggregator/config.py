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
}


@dataclass(frozen=True)
class AggregatorConfig:
    endpoint: str
    server_key: Path
    allow_list: Path
    store: Path


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
            raise InputError(f"{p}: unknown setting {key!r} (known: {', '.join(KEYS)})")
        kind, _ = KEYS[key]
        if not isinstance(value, kind) or (kind is str and not value):
            raise InputError(f"{p}: setting {key!r} must be a {'non-empty string' if kind is str else kind.__name__}")
        values[key] = value
    merged = {k: values.get(k, default) for k, (_, default) in KEYS.items()}
    base = p.resolve().parent
    resolve = lambda v: (base / v) if not Path(v).is_absolute() else Path(v)  # noqa: E731
    cfg = AggregatorConfig(
        merged["endpoint"], resolve(merged["server_key"]), resolve(merged["allow_list"]), resolve(merged["store"])
    )  # fmt: skip
    if not insecure:
        if not cfg.server_key.exists():
            raise InputError(f"{p}: server_key {cfg.server_key} does not exist (ntds-aggregator keygen writes one)")
        if not cfg.allow_list.is_dir():
            raise InputError(f"{p}: allow_list {cfg.allow_list} is not a folder")
    return cfg
