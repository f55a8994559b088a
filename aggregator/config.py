"""`config/aggregator.yaml`: read once, validated once, one clear line per mistake."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sensor import settings
from sensor.settings import Setting


def _country(value: str) -> str | None:
    return None if len(value) == 2 and value.isalpha() and value.isupper() else "must be an ISO 3166 alpha-2 code"


SETTINGS: dict[str, Setting] = {
    "endpoint": Setting("str", "tcp://127.0.0.1:5555", "where sensors connect"),
    "server_key": Setting(
        "path", "/etc/ntds/keys/server.key_secret", "the aggregator's CURVE secret key", must_exist=True
    ),
    "allow_list": Setting("path", "/etc/ntds/sensors", "folder of admitted sensors' public keys", must_exist=True),
    "store": Setting("path", "/var/lib/ntds-aggregator/store.db", "the durable message store (SQLite)"),
    "archive": Setting("path", "/var/lib/ntds-aggregator/archive", "the Parquet archive reports read"),
    "retention_days": Setting("int", 400, "days of data kept (0: everything)", 0),
    "archive_interval_s": Setting("int", 30, "seconds between archive exports while serving", 1),
    "site_country": Setting("str", "", "ISO code of the site's country: the world map's origin", check=_country),
}
KEY_SETTINGS = frozenset({"server_key", "allow_list"})


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
    values = settings.load(path, SETTINGS, skip_exists=KEY_SETTINGS if insecure else frozenset())
    return AggregatorConfig(**values)
