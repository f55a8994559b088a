"""`config/aggregator.yaml`: read once, validated once, one clear line per mistake.

Each setting is declared once, below; `ntds.settings` does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ntds.settings import Settings, setting


def _country(value: str) -> str | None:
    return None if len(value) == 2 and value.isalpha() and value.isupper() else "must be an ISO 3166 alpha-2 code"


@dataclass(frozen=True)
class AggregatorConfig(Settings):
    path: Path
    endpoint: str = setting("str", "tcp://127.0.0.1:5555", "where sensors connect")
    server_key: Path = setting(
        "path", "/etc/ntds/keys/server.key_secret", "the aggregator's CURVE secret key", must_exist=True, secret=True
    )
    allow_list: Path = setting(
        "path", "/etc/ntds/sensors", "folder of admitted sensors' public keys", must_exist=True, secret=True
    )
    store: Path = setting("path", "/var/lib/ntds-aggregator/store.db", "the durable message store (SQLite)")
    archive: Path = setting("path", "/var/lib/ntds-aggregator/archive", "the Parquet archive reports read")
    retention_days: int = setting("int", 400, "days of data kept, counted from arrival (0: everything)", low=0,
                                  high=36500)  # fmt: skip
    archive_interval_s: int = setting("int", 30, "seconds between archive exports while serving", low=1, high=86400)
    site_country: str = setting("str", "", "ISO code of the site's country: the world map's origin", check=_country)


def load(path: str | Path, insecure: bool = False) -> AggregatorConfig:
    """The validated configuration; with insecure (the --insecure flag) no keys are needed."""
    return AggregatorConfig.load(path, insecure)
