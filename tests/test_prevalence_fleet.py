"""Fleet prevalence end to end: real captures replayed through two real sensors into a real aggregator.

Two `ntds-sensor replay` processes (tap-a in the site "north", tap-b a site of its own) send their context
messages over ZeroMQ to `ntds-aggregator serve`, whose context thread merges them; `ntds-aggregator prevalence
--json` then says, per external address, how many local hosts reached it, at how many sites, and first and last
seen. Each must equal an exact count over the packets of the same captures with dpkt
(tests/prevalence_reference.py), within the sketches' documented error (exact at these counts).
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from prevalence_reference import exact
from test_prevalence import real_captures
from test_sensor_agent import Agent
from test_transport import wait

from ntds.networks import DEFAULT_LOCAL_NETWORKS
from ntds.wire.schema import wire_time

BIN = Path(sys.executable).parent
SHARED_BY_BOTH = "openvpn.pcap"
"""Replayed by both sensors: the same hosts seen twice count once, at both sites."""


def _captures() -> tuple[list[Path], list[Path]]:
    usable = []
    for p in real_captures():
        try:
            if any(k[0] == "address" for k in exact([p], list(DEFAULT_LOCAL_NETWORKS))):
                usable.append(p)
        except ValueError:  # a link type the reference does not read
            continue
    common = [p for p in usable if p.name == SHARED_BY_BOTH]
    rest = [p for p in usable if p.name != SHARED_BY_BOTH]
    return rest[0::2] + common, rest[1::2] + common


@pytest.mark.skipif(not real_captures(), reason="../shared/pcaps is absent")
def test_two_sensors_fleet_prevalence_equals_an_exact_count(tmp_path):
    north, other = _captures()
    assert len(north) > 5 and len(other) > 5
    agent = Agent(tmp_path, sensor_id="tap-a", local_networks=list(DEFAULT_LOCAL_NETWORKS), min_alert_tier=5,
                  min_flow_tier=5, detectors={}, alert_grouping={})  # fmt: skip
    with (tmp_path / "agg.yaml").open("a") as f:
        f.write("sites: {north: [tap-a]}\n")
    second = tmp_path / "b"
    second.mkdir()
    config_b = second / "sensor.yaml"
    text = agent.config.read_text().replace('"tap-a"', '"tap-b"')
    config_b.write_text(text.replace(str(tmp_path / "spool"), str(second / "spool")))
    shutil.copy(agent.baseline, second / "baseline.json")
    try:
        agent.aggregator()
        a = agent.sensor("replay", *map(str, north))
        b = subprocess.Popen([str(BIN / "ntds-sensor"), "replay", *map(str, other), "--config", str(config_b),
                              "--insecure"], stderr=(second / "sensor.log").open("w"))  # fmt: skip
        agent.procs.append(b)
        assert a.wait(300) == 0, agent.log()[-2000:]
        assert b.wait(300) == 0, (second / "sensor.log").read_text()[-2000:]
        n_context = len(agent.rows("context"))
        assert n_context >= 2

        def merged() -> bool:
            with sqlite3.connect(f"file:{agent.store}?mode=ro", uri=True) as db:
                row = db.execute("SELECT value FROM state WHERE key = 'context_mark'").fetchone()
                top = db.execute("SELECT MAX(id) FROM messages WHERE type = 'context'").fetchone()[0]
                return row is not None and int(row[0]) >= top

        wait(merged, 60, "the context thread")
        serve = agent.procs[0]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, (tmp_path / "agg.log").read_text()[-2000:]  # its context thread stops cleanly
    finally:
        agent.stop()
    p = subprocess.run([str(BIN / "ntds-aggregator"), "prevalence", "--kind", "address", "--limit", "100000",
                        "--json", "--config", str(tmp_path / "agg.yaml")], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = {r["destination"]: r for r in map(json.loads, p.stdout.splitlines())}
    ref_a = {k[1]: v for k, v in exact(north, list(DEFAULT_LOCAL_NETWORKS)).items() if k[0] == "address"}
    ref_b = {k[1]: v for k, v in exact(other, list(DEFAULT_LOCAL_NETWORKS)).items() if k[0] == "address"}
    assert set(got) == set(ref_a) | set(ref_b)
    both = 0
    for key, r in got.items():
        hosts = (ref_a[key].hosts if key in ref_a else set()) | (ref_b[key].hosts if key in ref_b else set())
        sites = (key in ref_a) + (key in ref_b)
        both += sites == 2
        assert r["hosts"] == len(hosts), key
        assert r["sites"] == sites and r["sites_total"] == 2, key
        first = min(x[key].first_ms for x in (ref_a, ref_b) if key in x)
        last = max(x[key].last_ms for x in (ref_a, ref_b) if key in x)
        assert abs(wire_time(r["first_seen"]).timestamp() * 1000 - first) <= 1, key
        assert abs(wire_time(r["last_seen"]).timestamp() * 1000 - last) <= 1, key
    assert both >= 1 and len(got) > 50
