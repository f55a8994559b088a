"""Full disks, for real: the spool and the store on a tiny tmpfs that fills up.

The sensor stops with one error line and keeps what it had spooled; the
aggregator acknowledges nothing it could not store, keeps serving, and once
there is room again every message arrives exactly once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess

import pytest
from test_sensor_agent import Agent, scored, stored
from test_transport import wait

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount tmpfs")


@contextlib.contextmanager
def tmpfs(path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_sensor_with_a_full_spool_disk_stops_with_one_line(tmp_path, site_pcap):
    with tmpfs(tmp_path / "small", "160k") as small:
        agent = Agent(tmp_path, spool_dir=str(small))
        try:
            p = agent.sensor("replay", str(site_pcap), "--wait", "1")  # no aggregator: everything stays spooled
            assert p.wait(120) == 2
            log = agent.log()
            assert "Traceback" not in log
            last = log.strip().splitlines()[-1]
            assert last.startswith("ntds-sensor: error:") and "cannot write the spool" in last and "full" in last
            with sqlite3.connect(small / "spool.db") as db:  # what was spooled is intact and readable
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] > 0
        finally:
            agent.stop()


def test_aggregator_with_a_full_disk_acknowledges_nothing_it_did_not_store(tmp_path, site_pcap):
    with tmpfs(tmp_path / "small", "400k") as small:
        agent = Agent(tmp_path)
        agent.store = small / "store.db"
        (tmp_path / "agg.yaml").write_text(f"endpoint: tcp://127.0.0.1:{agent.port}\nstore: {agent.store}\n")
        try:
            agent.aggregator()
            p = agent.sensor("replay", str(site_pcap), "--wait", "300")
            wait(lambda: "not acknowledged (sensors resend)" in (tmp_path / "agg.log").read_text(), 120, "a full disk")
            assert agent.procs[0].poll() is None  # still serving
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            assert p.wait(300) == 0, agent.log()
            log = (tmp_path / "agg.log").read_text()
            assert "Traceback" not in log and "cannot rollback" not in log and "disk is full" in log, log
            with sqlite3.connect(f"file:{agent.store}?mode=ro", uri=True) as db:
                seqs = [s for (s,) in db.execute("SELECT seq FROM messages ORDER BY seq")]
            assert seqs == list(range(1, len(seqs) + 1))  # every message once, none missing
            assert stored(agent) == scored(site_pcap, tmp_path, agent.config)
        finally:
            agent.stop()
