"""`config/sensor.yaml`: what a sensor captures, how it scores, where it sends.

Read once at start (and again on SIGHUP), validated completely before anything
opens: a sensor never runs half-configured. Each setting is declared once,
below, with its meaning and whether SIGHUP can change it; `ntds-sensor
check-config` prints the meaning next to the effective value, and
config/sensor.yaml repeats it for people editing the file.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from ntds.errors import InputError
from ntds.flows.profiles import PROFILES
from ntds.networks import DEFAULT_LOCAL_NETWORKS, invalid_network
from ntds.settings import Settings, setting
from ntds.wire.keys import NAME


def _bpf(value: str) -> str | None:
    from ntds.flows.engine import filter_problem

    problem = filter_problem(value)
    return f"does not compile: {problem}" if problem else None


def missing_interfaces(names: list[str]) -> list[str]:
    """Interfaces of the list this host does not have (`run` and `check-config` refuse them)."""
    out = []
    for name in names:
        try:
            socket.if_nametoindex(name)
        except OSError:
            out.append(name)
    return out


def _detectors(value: dict) -> str | None:
    from ntds.detect.detection import build_detectors

    try:
        build_detectors(value)
    except (TypeError, ValueError) as e:
        return f"is not valid: {e}"
    return None


def _grouping(value: dict) -> str | None:
    from ntds.detect.grouping import GroupingOptions

    known = GroupingOptions.MEANINGS
    for k, v in value.items():
        if k not in known:
            return f"has unknown key {k!r} (known: {', '.join(known)})"
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10**9:
            return f"{k} must be a whole number from 0 to 1000000000"
    if value.get("groups", 1) < 1:
        return "groups must be at least 1"
    return None


def _endpoint(value: str) -> str | None:
    return None if value.startswith(("tcp://", "ipc://")) else "must be tcp://HOST:PORT (or ipc://PATH)"


@dataclass(frozen=True)
class SensorConfig(Settings):
    path: Path
    sensor_id: str = setting(
        "str", socket.gethostname(), "the sensor's name; the aggregator only accepts it from its key"
    )
    interfaces: list[str] = setting("list", [], "network interfaces `run` captures on (tap or mirror ports)")
    files: list[Path] = setting("list", [], "capture files `replay` reads when none are given on its command line")
    bpf_filter: str = setting("str", "", "BPF filter applied in the kernel (empty: everything)", check=_bpf)
    snaplen: int = setting(
        "int", 1536, "bytes kept of each packet (headers are all the meter needs)", low=64, high=262144
    )
    n_meters: int = setting("int", 1, "metering processes per interface (0: one per spare core)", low=0, high=63)
    capture_buffer_mb: int = setting(
        "int", 64, "kernel buffer per interface for packets the meters have not read yet (0: libpcap's 2 MiB); "
        "it carries capture through bursts and short stalls", low=0, high=2047,
    )  # fmt: skip
    analysis_nice: int = setting(
        "int", 5, "live capture: how much lower than its meters the sensor runs its own analysis (scoring, "
        "detectors, publishing), so that on a busy host packets go first and analysis catches up; 0: equal",
        low=0, high=19,
    )  # fmt: skip
    analysis_workers: int = setting(
        "int", -1, "processes running the host-level detectors beside the sensor's own, each detector's state "
        "kept whole in one of them (0: none, everything in the sensor's process; -1: the cores left beside the "
        "meters and the sensor's process)", low=-1, high=64,
    )  # fmt: skip
    max_flows: int = setting(
        "int", 200_000, "open flows per meter before the least recently seen are expired early (memory bound)",
        low=1000, high=50_000_000,
    )  # fmt: skip
    local_networks: list[str] = setting(
        "list", list(DEFAULT_LOCAL_NETWORKS), "the site's own address space", check=invalid_network, reload=True
    )
    local_servers: list[str] = setting(
        "list", [], "the site's servers: traffic with them is local service", check=invalid_network, reload=True
    )
    baseline: Path = setting(
        "path", "baseline.json", "the per-application baseline flows are scored against", must_exist=True, reload=True
    )
    baseline_key: Path = setting(
        "path", "", "the aggregator's baseline public key (baseline-signing.pub): a pushed baseline or indicator set "
        "is taken only when signed by it; empty: pushes are refused and the configured baseline stays", must_exist=True,
    )  # fmt: skip
    feature_profile: str = setting(
        "choice", "unicauca", "feature profile; must match the baseline's", choices=tuple(sorted(PROFILES))
    )
    min_alert_tier: int = setting(
        "int", 3, "host-level alerts of this tier or stronger are sent (each detector's documented mapping)",
        low=0, high=5, reload=True,
    )  # fmt: skip
    min_flow_tier: int = setting(
        "int", 4, "flows of this rarity tier or rarer are sent as flow alerts (tier k: about 1 scored flow in 10^k)",
        low=0, high=5, reload=True,
    )  # fmt: skip
    detectors: dict = setting(
        "mapping", {}, "host-level detectors: per kind, enabled: false or options that differ from the defaults "
        "(ntds-sensor detectors lists them)", check=_detectors,
    )  # fmt: skip
    alert_grouping: dict = setting(
        "mapping", {}, "grouping of repeated alerts and the hourly alert budget: group_wait_s (60), group_interval_s "
        "(3600), budget_per_hour (60), groups (20000)", check=_grouping,
    )  # fmt: skip
    summary_interval_s: int = setting("int", 60, "seconds per summary", low=1, high=86400)
    stats_interval_s: int = setting(
        "int", 3600, "seconds per statistics message, what the aggregator learns baselines from (0: none sent)",
        low=0, high=86400,
    )  # fmt: skip
    context_interval_s: int = setting(
        "int", 3600, "seconds per context message: destination prevalence sketches and each local host's activity "
        "(0: none sent)", low=0, high=86400,
    )  # fmt: skip
    context_max_destinations: int = setting(
        "int", 20_000, "external destinations sketched per context interval at most (more are counted, not sketched)",
        low=1, high=1_000_000,
    )  # fmt: skip
    context_max_hosts: int = setting(
        "int", 5_000, "local hosts described per context interval at most (more are counted, not described)", low=1,
        high=1_000_000,
    )  # fmt: skip
    health_interval_s: int = setting("int", 60, "seconds between health messages", low=1, high=86400, reload=True)
    aggregator: str = setting("str", "tcp://127.0.0.1:5555", "the aggregator's endpoint", check=_endpoint)
    sensor_key: Path = setting(
        "path", "/etc/ntds/keys/sensor.key_secret", "this sensor's CURVE secret key", must_exist=True, secret=True
    )
    server_key: Path = setting(
        "path", "/etc/ntds/keys/server.key", "the aggregator's CURVE public key", must_exist=True, secret=True
    )
    spool_dir: Path = setting("path", "/var/lib/ntds-sensor", "folder of the durable spool (spool.db)")
    flow_records_dir: Path = setting(
        "path", "", "folder for the sensor's own flow records (87 columns and extras, rotated Parquet); empty: off"
    )
    flow_records_file_mb: int = setting("int", 64, "size at which a flow-record file is closed and a new one begun",
                                        low=1, high=65536)  # fmt: skip
    flow_records_max_mb: int = setting("int", 1024, "the oldest flow-record files are deleted beyond this total",
                                       low=1, high=2**24)  # fmt: skip
    spool_limit_mb: int = setting(
        "int", 256, "spool size limit in MB (health, then statistics, summaries, hellos, alerts dropped)", low=1
    )
    ring_mb: int = setting(
        "int", 2048, "live capture: the packet ring, the packets as captured, kept on disk for the evidence behind "
        "alerts (the oldest files go first beyond this total); 0: no ring", low=0, high=2**24,
    )  # fmt: skip
    ring_max_age_s: int = setting(
        "int", 7 * 86400, "ring files older than this are removed even below ring_mb (0: by size only)", low=0,
        high=10**9,
    )  # fmt: skip
    ring_file_mb: int = setting("int", 64, "size at which a meter closes its ring file and begins the next",
                                low=1, high=4096)  # fmt: skip
    evidence_dir: Path = setting(
        "path", "", "folder of the packet ring (ring/), the packets kept for alerts (kept/) and the replayed files' "
        "list; empty: evidence/ in spool_dir",
    )  # fmt: skip
    evidence_keep_mb: int = setting(
        "int", 1024, "packets kept for alerts beyond the ring's rotation, in all (the oldest go first); 0: none kept",
        low=0, high=2**24,
    )  # fmt: skip
    evidence_keep_days: int = setting("int", 30, "days the packets kept for an alert are kept", low=1, high=36500)
    pcap_max_mb: int = setting(
        "int", 64, "largest pcap one alert's packets (or one pcap job) may come to; beyond it the newest are left "
        "out and the answer says how many", low=1, high=180,
    )  # fmt: skip
    geoip_database: Path | None = setting(
        "path", "", "first,last,CC ranges CSV (empty: the bundled iptocc data)", must_exist=True, reload=True
    )

    @classmethod
    def finish(cls, path: Path, values: dict) -> dict:
        base = path.resolve().parent
        values["files"] = [Path(f) if Path(f).is_absolute() else base / f for f in values["files"]]
        values["geoip_database"] = values["geoip_database"] or None
        if not NAME.fullmatch(values["sensor_id"]):
            raise InputError(f"{path}: setting 'sensor_id' must be 1 to 64 letters, digits, dots, dashes, underscores")
        return values

    @property
    def spool(self) -> Path:
        return self.spool_dir / "spool.db"

    @property
    def evidence_folder(self) -> Path:
        return Path(self.evidence_dir) if self.evidence_dir else self.spool_dir / "evidence"

    @property
    def grouping(self):
        from ntds.detect.grouping import GroupingOptions

        return GroupingOptions(**self.alert_grouping)


def load(path: str | Path, insecure: bool = False) -> SensorConfig:
    """The validated configuration; with insecure (the --insecure flag) key files are not needed."""
    return SensorConfig.load(path, insecure)
