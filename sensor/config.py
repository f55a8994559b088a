"""`config/sensor.yaml`: what a sensor captures, how it scores, where it sends.

Read once at start (and again on SIGHUP), validated completely before anything
opens: a sensor never runs half-configured. The meaning of each key is written
once, here; `ntds-sensor check-config` prints it next to the effective value,
and config/sensor.yaml repeats it for people editing the file.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from sensor import settings
from sensor.errors import InputError
from sensor.profiles import PROFILES
from sensor.settings import Setting
from sensor.traffic_classes import DEFAULT_LOCAL_NETWORKS


def _networks(values: list[str]) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"has {v!r}, which is not an address or network"
    return None


def _endpoint(value: str) -> str | None:
    return None if value.startswith(("tcp://", "ipc://")) else "must be tcp://HOST:PORT (or ipc://PATH)"


SETTINGS: dict[str, Setting] = {
    "sensor_id": Setting("str", socket.gethostname(), "the sensor's name; the aggregator only accepts it from its key"),
    "interfaces": Setting("list", [], "network interfaces `run` captures on (tap or mirror ports)"),
    "files": Setting("list", [], "capture files `replay` reads when none are given on its command line"),
    "bpf_filter": Setting("str", "", "BPF filter applied in the kernel (empty: everything)"),
    "snaplen": Setting("int", 1536, "bytes kept of each packet (headers are all the meter needs)", 64, 262144),
    "n_meters": Setting("int", 1, "metering processes per interface (0: one per spare core)", 0, 63),
    "local_networks": Setting("list", list(DEFAULT_LOCAL_NETWORKS), "the site's own address space", check=_networks),
    "local_servers": Setting("list", [], "the site's servers: traffic with them is local service", check=_networks),
    "baseline": Setting(
        "path", "baseline.json", "the per-application baseline flows are scored against", must_exist=True
    ),
    "feature_profile": Setting(
        "choice", "unicauca", "feature profile; must match the baseline's", choices=tuple(sorted(PROFILES))
    ),
    "min_alert_tier": Setting("int", 3, "flows of this rarity tier or rarer are sent as alerts (0-5)", 0, 5),
    "summary_interval_s": Setting("int", 60, "seconds per summary", 1, 86400),
    "health_interval_s": Setting("int", 60, "seconds between health messages", 1, 86400),
    "aggregator": Setting("str", "tcp://127.0.0.1:5555", "the aggregator's endpoint", check=_endpoint),
    "sensor_key": Setting(
        "path", "/etc/ntds/keys/sensor.key_secret", "this sensor's CURVE secret key", must_exist=True
    ),
    "server_key": Setting("path", "/etc/ntds/keys/server.key", "the aggregator's CURVE public key", must_exist=True),
    "spool_dir": Setting("path", "/var/lib/ntds-sensor", "folder of the durable spool (spool.db)"),
    "spool_limit_mb": Setting("int", 256, "spool size limit in MB (health, then summaries, then alerts dropped)", 1),
    "geoip_database": Setting("path", "", "first,last,CC ranges CSV (empty: the bundled iptocc data)", must_exist=True),
}
KEY_SETTINGS = frozenset({"sensor_key", "server_key"})


@dataclass(frozen=True)
class SensorConfig:
    path: Path
    sensor_id: str
    interfaces: list[str]
    files: list[Path]
    bpf_filter: str
    snaplen: int
    n_meters: int
    local_networks: list[str]
    local_servers: list[str]
    baseline: Path
    feature_profile: str
    min_alert_tier: int
    summary_interval_s: int
    health_interval_s: int
    aggregator: str
    sensor_key: Path
    server_key: Path
    spool_dir: Path
    spool_limit_mb: int
    geoip_database: Path | None

    @property
    def spool(self) -> Path:
        return self.spool_dir / "spool.db"

    def describe(self) -> str:
        values = {k: getattr(self, k) for k in SETTINGS}
        values["files"] = [str(f) for f in self.files]
        values["geoip_database"] = str(self.geoip_database or "")
        return settings.describe(SETTINGS, values)


def load(path: str | Path, insecure: bool = False) -> SensorConfig:
    """The validated configuration; with insecure (the --insecure flag) key files are not needed."""
    values = settings.load(path, SETTINGS, skip_exists=KEY_SETTINGS if insecure else frozenset())
    base = Path(path).resolve().parent
    values["files"] = [Path(f) if Path(f).is_absolute() else base / f for f in values["files"]]
    values["geoip_database"] = values["geoip_database"] or None
    if not values["sensor_id"] or any(c in values["sensor_id"] for c in "/\\\n\0"):
        raise InputError(f"{path}: setting 'sensor_id' must be a plain name")
    return SensorConfig(path=Path(path), **values)
