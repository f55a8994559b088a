"""Analysis workers as users run them: `score --workers`, `replay` with `analysis_workers`, and their failures.

The equality of the alerts on the planted campus week is in tests/test_detectors.py; here real captures go
through the real commands (real NFStream, real processes), and what a worker's death or the sensor's does.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntds.detect.baseline import Baseline
from ntds.detect.detection import Detection
from ntds.errors import WorkerFailed
from ntds.flows.traffic import FlowTraffic
from ntds.wire.schema import decode
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BASELINE = ROOT / "config" / "baseline.json"
ATTACKS = SHARED / "attacks"


def _score(inputs: list[Path], workers: int, out: Path) -> str:
    p = subprocess.run([str(BIN / "ntds-sensor"), "score", "--baseline", str(BASELINE), "--min-tier", "3",
                        "--workers", str(workers), "-o", str(out), *map(str, inputs)], capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return out.read_text()


def test_score_with_workers_writes_what_one_process_writes_on_real_attacks(tmp_path):
    """Every labelled real attack capture, scored as one stream, by one process and by two workers: the same
    JSON lines, byte for byte (and the attacks are found, so the comparison is not of two empty files)."""
    pcaps = sorted(p for p in ATTACKS.glob("*.pcap*") if p.stat().st_size < 4_000_000)
    if not pcaps:
        pytest.skip("../shared/pcaps/attacks is absent")
    alone = _score(pcaps, 0, tmp_path / "alone.jsonl")
    assert _score(pcaps, 2, tmp_path / "two.jsonl") == alone
    kinds = {json.loads(line)["kind"] for line in alone.splitlines()}
    assert len(kinds - {"flow"}) >= 4, kinds


def _outbox(spool: Path) -> dict[str, list]:
    """The spooled messages by type (health and hello left out: they carry the process's own times)."""
    out: dict[str, list] = {}
    with sqlite3.connect(spool / "spool.db") as db:
        for (frame,) in db.execute("SELECT frame FROM outbox ORDER BY seq"):
            m = decode(frame)
            if m.type not in ("health", "hello"):
                out.setdefault(m.type, []).append(m.body)
    return out


def test_replay_with_two_workers_spools_the_same_alerts_summaries_and_statistics(tmp_path):
    """`replay` with `analysis_workers: 2` and with 0, no aggregator (everything stays in the spool): the same
    alerts, summaries, statistics and context messages, in the same order."""
    from tests import detection_week as week

    cap = week.Capture(seed=4)
    for k, host in enumerate(("10.1.0.77", "10.1.0.78")):
        week.scan_dropped(cap, week.START + 600 + 900 * k, host=host, target="10.1.0.2")
    week.http_brute_force(cap, week.START + 1200, host="10.1.0.79", target="10.1.0.80")
    week.icmp_tunnel(cap, week.START + 2000, host="10.1.0.81")
    pcap = cap.write(tmp_path / "attacks.pcap")
    got = {}
    for workers in (0, 2):
        root = tmp_path / f"w{workers}"
        root.mkdir()
        config = root / "sensor.yaml"
        config.write_text(f"sensor_id: tap-01\nbaseline: {BASELINE}\nspool_dir: {root / 'spool'}\n"
                          f"aggregator: tcp://127.0.0.1:9\nlocal_networks: [10.1.0.0/16]\nmin_alert_tier: 3\n"
                          f"stats_interval_s: 600\ncontext_interval_s: 600\nanalysis_workers: {workers}\n")  # fmt: skip
        p = subprocess.run([str(BIN / "ntds-sensor"), "replay", str(pcap), "--config", str(config), "--insecure",
                            "--wait", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr  # 3: kept in the spool
        got[workers] = _outbox(root / "spool")
    assert got[2] == got[0]
    assert {"alert", "summary", "stats", "context"} <= set(got[0]), set(got[0])
    assert {(a["kind"], a["src_ip"]) for a in got[0]["alert"]} >= {
        ("port-scan", "10.1.0.77"), ("port-scan", "10.1.0.78"), ("brute-force", "10.1.0.79"),
        ("icmp-tunnel", "10.1.0.81")}  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_workers_end_with_the_sensor_even_on_kill_9(tmp_path):
    """kill -9 of the sensor: its workers see their pipe close and end by themselves, no orphan left."""
    big = sorted((SHARED).glob("*.pcap*"), key=lambda p: p.stat().st_size)
    if not big:
        pytest.skip("../shared/pcaps is absent")
    p = subprocess.Popen([str(BIN / "ntds-sensor"), "score", "--baseline", str(BASELINE), "--workers", "2",
                          "-o", os.devnull, *map(str, big[-3:] * 4)], stderr=subprocess.PIPE)  # fmt: skip
    try:
        end = time.monotonic() + 30
        workers: list[int] = []
        while time.monotonic() < end and len(workers) < 2:
            workers = [c for c in _children(p.pid) if _comm(c).startswith("ntds-analysis-")]
            time.sleep(0.05)
        assert len(workers) >= 2, "the workers never started"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers)
    finally:
        if p.poll() is None:
            p.kill()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _flow(i: int, src: str) -> FlowTraffic:
    return FlowTraffic(1_794_787_200_000 + i * 10, src, f"10.9.{i % 200}.{1 + i % 250}", 40000, 1 + i % 60000, 6,
                       1, 60, 0, 0, "Unknown", end_ms=1_794_787_200_000 + i * 10)  # fmt: skip


class _Record:
    features = None

    def __init__(self, traffic: FlowTraffic) -> None:
        self.traffic = traffic


def test_a_dead_worker_is_one_clear_error_and_tables_stay_bounded_per_worker():
    only_scans = {k: {"enabled": False} for k in ("beacon", "brute-force", "dns-tunnel", "exfiltration",
                                                   "icmp-tunnel", "long-connection", "host-sweep")}  # fmt: skip
    only_scans["port-scan"] = {"sources": 100}
    detection = Detection(Baseline.load(BASELINE), detectors=only_scans, workers=2)
    try:
        # a flood of 5,000 (source, target) pairs: each worker keeps at most its 100, and counts the rest
        detection.process([_Record(_flow(i, f"198.51.{i // 250}.{i % 250}")) for i in range(5000)])
        assert all(0 < size <= 100 for size in detection.workers.sizes), detection.workers.sizes
        assert detection.evicted == 5000 - sum(detection.workers.sizes)
        os.kill(detection.workers.pids[1], signal.SIGKILL)
        with pytest.raises(WorkerFailed, match=r"analysis worker 1 (died|is gone)"):
            detection.process([_Record(_flow(i, "203.0.113.9")) for i in range(10)])
    finally:
        detection.stop()


def test_bad_worker_counts_are_one_line(tmp_path):
    p = subprocess.run([str(BIN / "ntds-sensor"), "score", "--baseline", str(BASELINE), "--workers", "99",
                        str(ROOT / "pcaps" / "sample.pcap")], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and "--workers 99" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    config = tmp_path / "sensor.yaml"
    config.write_text(f"sensor_id: t\nbaseline: {BASELINE}\nanalysis_workers: -5\n")
    p = subprocess.run([str(BIN / "ntds-sensor"), "check-config", str(config), "--insecure"], capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode != 0 and "analysis_workers" in p.stderr and "Traceback" not in p.stderr


def test_workers_end_by_themselves_when_the_sensor_is_done():
    """Closing the pipes ends the workers (exit 0), not the 5 s join timeout and a kill: each worker closes its
    copies of the sensor's ends, so it sees the end of its pipe."""
    detection = Detection(Baseline.load(BASELINE), workers=2)
    procs = list(detection.workers.procs)
    detection.process([_Record(_flow(i, "203.0.113.7")) for i in range(100)])
    start = time.monotonic()
    detection.stop()
    assert [p.exitcode for p in procs] == [0, 0] and time.monotonic() - start < 2
