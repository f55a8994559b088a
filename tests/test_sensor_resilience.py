"""The sensor under hostile or broken conditions (issue 13): a lost spool, clocks past 2038, a flood of open
flows, a long flow on a realtime replay. Real sensor and aggregator processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time

import pytest
from synthetic import long_flow, open_flows, udp_flows
from test_sensor_agent import BIN, Agent
from test_transport import count, wait


@pytest.fixture
def agent(tmp_path):
    a = Agent(tmp_path, summary_interval_s=1)
    yield a
    a.stop()


def settled(read, quiet_s: float = 1.0, timeout_s: float = 20.0) -> int:
    """`read()` once it has stopped changing for quiet_s."""
    value, since, end = read(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < end:
        time.sleep(0.1)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def spool_total(agent: Agent) -> int:
    return count(agent.root / "spool" / "spool.db", "SELECT value FROM meta WHERE key='next_seq'") - 1


def test_a_lost_spool_never_loses_the_next_run(agent, tmp_path):
    """kill -9 mid-replay, the spool deleted: the next run starts again at sequence 1 under a new spool id,
    and the aggregator stores all of it (not taking it for resends of the old spool), and says so."""
    agent.aggregator()
    capture = udp_flows(tmp_path / "flows.pcap", 3000)
    first = agent.sensor("replay", str(capture))
    wait(lambda: count(agent.store) > 500, 60, "the first messages")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    stored_first = settled(lambda: count(agent.store))  # frames already sent are still being stored
    shutil.rmtree(agent.root / "spool")
    second = agent.sensor("replay", str(capture))
    assert second.wait(120) == 0, agent.log()
    total = spool_total(agent)
    with sqlite3.connect(agent.store) as db:
        spools = dict(db.execute("SELECT spool, COUNT(*) FROM messages GROUP BY spool"))
    assert len(spools) == 2 and sorted(spools.values()) == sorted([stored_first, total])
    assert count(agent.store, "SELECT COUNT(*) FROM messages WHERE type='alert'") >= 3000
    listing = subprocess.run(
        [str(BIN / "ntds-aggregator"), "sensors", "--config", str(agent.root / "agg.yaml"), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(listing.stdout)["spool_restarts"] == 1
    assert "restarts its sequence at 1" in (agent.root / "agg.log").read_text()


@pytest.mark.parametrize(("start_s", "day"), [(2**31 + 3600, "2038-01-19"), (4_200_000_000, "2103-02-04")])
def test_captures_after_2038_replay_with_their_own_times(agent, tmp_path, start_s, day):
    agent.aggregator()
    capture = udp_flows(tmp_path / "late.pcap", 20, start_s=start_s)
    p = agent.sensor("replay", str(capture))
    assert p.wait(120) == 0, agent.log()
    alerts = agent.rows("alert")
    assert len(alerts) == 20 and all(a["first_seen"].startswith(day) for a in alerts), alerts[0]["first_seen"]
    assert {s["interval_start"][:10] for s in agent.rows("summary")} == {day}


def test_the_flow_table_is_bounded_and_evictions_counted(tmp_path):
    """5,000 flows open at once against a bound of 1,000: the oldest are expired early, counted in health,
    and still counted in the summaries (nothing vanishes, the memory stays bounded)."""
    a = Agent(tmp_path, max_flows=1000)
    try:
        a.aggregator()
        capture = open_flows(tmp_path / "open.pcap", 5000)
        p = a.sensor("replay", str(capture))
        assert p.wait(120) == 0, a.log()
        health = a.rows("health")[-1]
        assert health["flows_evicted"] >= 4000
        assert sum(s["packets"] for s in a.rows("summary")) == 10_000  # every packet still counted
    finally:
        a.stop()


def test_status_counts_packets_as_the_capture_delivers_them(agent, tmp_path):
    """A realtime replay of one long flow: the STATUS line's packets and rate move while the flow is open."""
    agent.aggregator()
    capture = long_flow(tmp_path / "long.pcap", 300, gap_s=0.02)  # 6 s at recorded speed, one flow
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    p = agent.sensor("replay", str(capture), "--pace", "realtime", env={"NOTIFY_SOCKET": str(path)})
    status: list[str] = []
    end = time.monotonic() + 4
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            status += [g for g in sock.recv(4096).decode().split("\n") if g.startswith("STATUS=")]
    assert p.wait(60) == 0, agent.log()
    sock.close()
    moving = [s for s in status if (m := re.search(r"STATUS=([\d,]+) packets \(([\d,]+)/s\), 0 flows", s))
              and int(m.group(1).replace(",", "")) > 0 and int(m.group(2).replace(",", "")) > 10]  # fmt: skip
    assert moving, status
    assert "scored flows by tier" in agent.log()


DAMAGES = {
    "wrong-length": lambda d: d["applications"]["*all-traffic*"]["model"].update(log_median=[1.0] * 3),
    "zero-tiers": lambda d: d["applications"]["*all-traffic*"].update(tiers=[0, 0, 0, 0, 0]),
    "zero-spread": lambda d: d["applications"]["*all-traffic*"]["model"].update(log_scale=[0.0] * 7),
}


def test_sighup_with_a_baseline_that_would_crash_scoring_keeps_the_old_one(agent, tmp_path):
    """Three baselines that would load and then crash scoring (or never alert), one SIGHUP each to one running
    sensor: each is refused, and the sensor scores on to the end with the old one."""
    agent.aggregator()
    p = agent.sensor("replay", str(long_flow(tmp_path / "long.pcap", 300, gap_s=0.02)), "--pace", "realtime")
    wait(lambda: "capturing from" in agent.log(), 30, "the sensor to start")
    good = agent.baseline.read_text()
    for n, damage in enumerate(DAMAGES.values(), 1):
        doc = json.loads(good)
        damage(doc)
        agent.baseline.write_text(json.dumps(doc))
        p.send_signal(signal.SIGHUP)
        wait(lambda n=n: agent.log().count("reload refused") == n, 20, f"refusal {n}")
    assert p.wait(60) == 0, agent.log()  # scored on to the end with the old baseline
    assert "Traceback" not in agent.log() and len(agent.rows("alert")) == 1


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in open(f"/proc/{pid}/task/{task}/children").read().split()]  # noqa: SIM115
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has died)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_meters_die_with_a_killed_sensor(agent, tmp_path):
    """kill -9 of the sensor while its NFStream meters read a realtime replay: the meters go too, they are
    never left running on their own (issue 13, item 9)."""
    agent.aggregator()
    capture = udp_flows(tmp_path / "slow.pcap", 120)
    sensor = agent.sensor("replay", str(capture), "--pace", "realtime")
    wait(lambda: "capturing from" in agent.log(), 30, "the sensor to start")
    wait(lambda: _children(sensor.pid), 10, "the meter processes")
    meters = _children(sensor.pid)
    assert meters and all(_alive(m) for m in meters)
    os.kill(sensor.pid, signal.SIGKILL)
    sensor.wait()
    wait(lambda: not any(_alive(m) for m in meters), 10, "the meters to die with the sensor")
