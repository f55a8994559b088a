"""Sensor -> aggregator over ZeroMQ on 127.0.0.1, with real processes: nothing lost, nothing twice, no intruder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from conftest import FIXTURES, ROOT, every_flow_an_alert
from synthetic import udp_flows

BIN = Path(sys.executable).parent
SAMPLE = FIXTURES.parent / "sample.pcap"
BASELINE = ROOT / "config" / "baseline.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def count(db: Path, sql: str = "SELECT COUNT(*) FROM messages") -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


class Site:
    """Keys, allow-list, configs, a capture of many flows, and the processes of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        run("ntds-aggregator", "keygen", "--out", root / "agg", check=True)
        run("ntds-sensor", "keygen", "--out", root / "tap", "--name", "tap-01", check=True)
        (root / "allow").mkdir()
        shutil.copy(root / "tap" / "tap-01.key", root / "allow" / "tap-01.key")
        self.store = root / "store.db"
        self.config = root / "aggregator.yaml"
        self.config.write_text(
            f"endpoint: {self.endpoint}\nserver_key: agg/server.key_secret\nallow_list: allow\nstore: store.db\n"
        )
        self.procs: list[subprocess.Popen] = []

    def aggregator(self) -> subprocess.Popen:
        p = subprocess.Popen(
            [str(BIN / "ntds-aggregator"), "serve", "--config", str(self.config)],
            stderr=open(self.root / "aggregator.log", "a"),  # noqa: SIM115
        )
        self.procs.append(p)
        wait(lambda: f"listening on {self.endpoint}" in (self.root / "aggregator.log").read_text(), 30, "aggregator")
        return p

    def sensor_config(self, key: str = "tap", spool: str = "spool") -> Path:
        """sensor.yaml for `ntds-sensor replay`: every scored flow is sent (min_alert_tier 0, no grouping), 1 s
        summaries."""
        path = self.root / f"sensor-{key}-{spool}.yaml"
        values = {
            "sensor_id": "tap-01",
            "baseline": str(BASELINE),
            "spool_dir": str(self.root / spool),
            "aggregator": self.endpoint,
            **every_flow_an_alert(),
            "summary_interval_s": 1,
            "sensor_key": str(self.root / key / "tap-01.key_secret"),
            "server_key": str(self.root / "agg" / "server.key"),
        }
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
        return path

    def replay(self, capture: Path, key: str = "tap", spool: str = "spool", wait_s: float = 120, *extra: str):
        args = [str(BIN / "ntds-sensor"), "replay", str(capture), "--config", str(self.sensor_config(key, spool))]
        p = subprocess.Popen([*args, "--wait", str(wait_s), *extra], stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def flows(self, n: int) -> Path:
        """A capture of n two-packet flows, one a second: n alerts and n one-second summaries."""
        return udp_flows(self.root / f"flows-{n}.pcap", n)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def run(tool, *args, check=False):
    p = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.stop()


def exactly_once(store: Path, n: int) -> None:
    assert count(store, "SELECT COUNT(*) FROM messages WHERE sensor='tap-01'") == n
    assert count(store, "SELECT COUNT(DISTINCT seq) FROM messages WHERE sensor='tap-01'") == n
    assert count(store, "SELECT MIN(seq) FROM messages") == 1 and count(store, "SELECT MAX(seq) FROM messages") == n


def spooled_total(spool: Path) -> int:
    """How many messages the sensor's spool has ever numbered (next_seq - 1)."""
    return count(spool, "SELECT value FROM meta WHERE key='next_seq'") - 1


def test_aggregator_killed_mid_stream_stores_every_message_once(site):
    capture = site.flows(10_000)  # 10,000 alerts and 10,000 summaries: the kill lands well before the end
    agg = site.aggregator()
    pub = site.replay(capture)
    wait(lambda: count(site.store) > 2000, 120, "the first 2000 messages")
    os.kill(agg.pid, signal.SIGKILL)
    agg.wait()
    stored_before = count(site.store)
    assert stored_before < 20_000, "the stream finished before the kill; the test proves nothing"
    time.sleep(1.0)
    site.aggregator()
    assert pub.wait(timeout=180) == 0, pub.stderr.read()
    exactly_once(site.store, spooled_total(site.root / "spool" / "spool.db"))
    assert count(site.store, "SELECT COUNT(*) FROM messages WHERE type='alert'") == 10_000
    assert count(site.store, "SELECT COUNT(*) FROM messages WHERE type='summary'") == 10_000


def test_sensor_killed_mid_stream_resumes_from_its_spool(site):
    pub = site.replay(site.flows(10_000), wait_s=60)  # no aggregator yet: everything stays spooled
    spool = site.root / "spool" / "spool.db"
    wait(lambda: count(spool, "SELECT COUNT(*) FROM outbox") > 3000, 120, "3000 spooled messages")
    os.kill(pub.pid, signal.SIGKILL)
    pub.wait()
    spooled = count(spool, "SELECT COUNT(*) FROM outbox")
    assert 3000 < spooled < 20_000
    wait(lambda: not _meters_of(pub.pid), 10, "the killed sensor's meters to die with it")
    site.aggregator()
    again = site.replay(site.flows(10))  # the next start delivers the backlog, then its own messages
    assert again.wait(timeout=120) == 0, again.stderr.read()
    total = spooled_total(spool)
    exactly_once(site.store, total)
    assert count(site.store, f"SELECT COUNT(*) FROM messages WHERE seq <= {spooled}") == spooled
    assert count(site.store, f"SELECT COUNT(*) FROM messages WHERE seq > {spooled} AND type='alert'") == 10


def _meters_of(pid: int) -> list[int]:
    """Processes whose parent is pid (the sensor's NFStream meters)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_intruders_are_refused_and_the_sensor_is_unaffected(site, zmq_context):
    capture = site.flows(30)
    site.aggregator()
    # a key that is not in the allow-list, claiming the legitimate sensor's name
    run("ntds-sensor", "keygen", "--out", site.root / "evil", "--name", "tap-01", check=True)
    intruder = site.replay(capture, key="evil", spool="evil", wait_s=3)
    # raw garbage on the TCP port, and a client speaking plain text to the CURVE port
    with socket.create_connection(("127.0.0.1", site.port)) as s:
        s.sendall(os.urandom(4096))
    plain = zmq_context.socket(zmq.DEALER)
    plain.linger = 0
    plain.connect(site.endpoint)
    plain.send(b"hello in plain text")
    # a legitimate key sending garbage frames
    dealer = zmq_context.socket(zmq.DEALER)
    from ntds.wire.keys import load_pair, load_public

    dealer.curve_publickey, dealer.curve_secretkey = load_pair(site.root / "tap" / "tap-01.key_secret")
    dealer.curve_serverkey = load_public(site.root / "agg" / "server.key")
    dealer.connect(site.endpoint)
    for junk in (b"garbage", b'{"v": 99}', b"[" * 50, b"x" * 70000):
        dealer.send(junk)
    legit = site.replay(capture)
    assert legit.wait(timeout=120) == 0, legit.stderr.read()
    assert intruder.wait(timeout=60) == 3  # nothing acknowledged: all still spooled
    exactly_once(site.store, spooled_total(site.root / "spool" / "spool.db"))
    assert count(site.store, "SELECT COUNT(*) FROM messages WHERE type='alert'") == 30
    wait(lambda: count(site.store, "SELECT COALESCE(SUM(count), 0) FROM rejections") >= 4, 10, "rejections")
    reasons = dict(sqlite3.connect(site.store).execute("SELECT reason, count FROM rejections"))
    assert reasons.get("malformed", 0) >= 2 and reasons.get("version") == 1 and reasons.get("oversized") == 1
    assert reasons.get("unknown_key", 0) >= 1  # the intruder's handshakes are counted with the rest
    wait(lambda: count(site.store, "SELECT COALESCE(SUM(count), 0) FROM rejections WHERE reason='handshake'") >= 1,
         10, "the plain-text client to be counted")  # fmt: skip
    plain.close()
    log = (site.root / "aggregator.log").read_text()
    assert "refused CURVE peer 127.0.0.1" in log
    dealer.close(linger=0)
    listing = run("ntds-aggregator", "sensors", "--config", site.config, check=True).stdout.splitlines()
    # the replay said goodbye (health state "stopping") with nothing left in its spool
    assert listing[1].split()[:2] == ["tap-01", "stopped"] and listing[1].split()[-2:] == ["0", "0"]


def test_insecure_mode_warns(site, tmp_path):
    cfg = tmp_path / "plain.yaml"
    port = free_port()
    cfg.write_text(f"endpoint: tcp://127.0.0.1:{port}\nstore: plain.db\n")
    log = tmp_path / "plain.log"
    cmd = [str(BIN / "ntds-aggregator"), "serve", "--config", str(cfg), "--insecure"]
    p = subprocess.Popen(cmd, stderr=log.open("w"))
    site.procs.append(p)
    wait(lambda: f"listening on tcp://127.0.0.1:{port} (plain)" in log.read_text(), 30, "the aggregator")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0  # a clean stop on SIGTERM
    assert "warning: --insecure: no encryption, no authentication" in log.read_text()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("endpoint: [1, 2\n", "not valid YAML"),
        ("colour: blue\n", "unknown setting 'colour'"),
        ("insecure: true\n", "unknown setting 'insecure'"),
        ("endpoint: 5\n", "line 1: setting 'endpoint' must be text"),
        ("endpoint: ''\n", "setting 'endpoint' must not be empty"),
        ("server_key: nope.key_secret\n", "does not exist"),
        ("store: s.db\nretention_days: -1\n", "line 2: setting 'retention_days' must be at least 0"),
        ("retention_days: yes\n", "line 1: setting 'retention_days' must be a whole number"),
        ("archive_interval_s: 0\n", "'archive_interval_s' must be at least 1"),
        ("site_country: Colombia\n", "ISO 3166 alpha-2"),
        ("retention_days: 1000000\n", "'retention_days' must be at most 36500"),
        ("archive_interval_s: 1000000000000\n", "'archive_interval_s' must be at most 86400"),
        ("store: s.db\nstore: t.db\n", "line 2: setting 'store' is given twice"),
        ("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_aggregator_config_is_one_line(tmp_path, text, words):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(text)
    p = run("ntds-aggregator", "serve", "--config", cfg)
    assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_keygen_writes_a_private_secret(tmp_path):
    run("ntds-sensor", "keygen", "--out", tmp_path / "k", "--name", "tap-09", check=True)
    assert (tmp_path / "k" / "tap-09.key_secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    again = run("ntds-sensor", "keygen", "--out", tmp_path / "k", "--name", "tap-09")
    assert again.returncode == 2 and "exists already" in again.stderr


def test_names_and_files_are_safe(tmp_path, site):
    """A sensor name is a plain name (it becomes a file, a user id, a log field); spool and store are private
    even under a permissive umask."""
    bad = run("ntds-sensor", "keygen", "--out", tmp_path / "k", "--name", "tap\n01")
    assert bad.returncode == 2 and "bad key name" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    old = os.umask(0o022)
    try:
        site.aggregator()
        p = site.replay(site.flows(5))
        assert p.wait(120) == 0, p.stderr.read()
    finally:
        os.umask(old)
    for f in (site.store, site.root / "spool" / "spool.db"):
        assert f.stat().st_mode & 0o077 == 0, f
