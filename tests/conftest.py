"""Shared helpers: where the captures are, and the sensor's rows as dicts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from ntds.flows.columns import COLUMNS
from ntds.flows.meter import EXTRA_COLUMNS, FlowMeter

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "pcaps" / "fixtures"
SHARED = ROOT.parent / "shared" / "pcaps"


def shared_captures() -> list[Path]:
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def fixture_captures() -> list[Path]:
    return sorted(FIXTURES.glob("*.pcap"))


def start_ms(extra: dict) -> int:
    v = extra["flow_start_utc"]
    if v.startswith("@"):
        return int(v[1:-2])
    return round(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)


def sensor_rows(paths, profile: str = "unicauca", warnings: list | None = None) -> list[dict]:
    meter = FlowMeter(profile, on_warning=(warnings.append if warnings is not None else None))
    rows = []
    for rec in meter.read([str(p) for p in paths]):
        row = dict(zip(COLUMNS, rec.features))
        extra = dict(zip(EXTRA_COLUMNS, rec.extra))
        row.update(extra)
        row["_start_ms"] = start_ms(extra)
        rows.append(row)
    return rows


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir() or not any(FIXTURES.glob("*.pcap")):
        pytest.fail("pcaps/fixtures is empty: run `python -m pcaps.generate` (make test does)")
    return FIXTURES


@pytest.fixture(scope="session")
def site_pcap(tmp_path_factory) -> Path:
    """A few minutes of ordinary traffic (DNS, TLS, HTTP, SSH, NTP, ICMP) from 20 hosts (pcaps/generate.py)."""
    from scapy.all import wrpcap

    from pcaps.generate import site_traffic

    path = tmp_path_factory.mktemp("pcap") / "site.pcap"
    wrpcap(str(path), site_traffic(300))
    return path


@pytest.fixture
def zmq_context():
    """A ZeroMQ context destroyed (linger 0) however the test ends: a context left to the garbage collector
    with an open socket would block the whole run in its finaliser."""
    import zmq

    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def every_flow_an_alert() -> dict:
    """sensor.yaml settings for transport tests: each scored flow is one alert (no grouping, no budget, no
    host-level detectors), so alerts can be counted against flows."""
    from ntds.detect.hosts import DETECTORS

    return {
        "min_alert_tier": 0,
        "min_flow_tier": 0,
        "alert_grouping": {"group_wait_s": 0, "group_interval_s": 0, "budget_per_hour": 10**9},
        "detectors": {kind: {"enabled": False} for kind in DETECTORS},
    }
