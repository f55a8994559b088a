"""The sensor agent as it runs: `replay`, `run`, `check-config`, signals, sd_notify and the systemd units.

Every test starts real processes: a real aggregator on 127.0.0.1 and the real
`ntds-sensor` command; captures are the project's own scapy traffic. Expected
flows come from `ntds-sensor features` / `ntds-sensor score` on the same
packets, a separate command path.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest
from netns import veth_namespaces
from test_transport import free_port, wait

from tests.conftest import ROOT, every_flow_an_alert

BIN = Path(sys.executable).parent
BASELINE = ROOT / "config" / "baseline.json"


class Agent:
    """An insecure aggregator on loopback and a sensor configuration pointing at it."""

    def __init__(self, root: Path, **settings) -> None:
        self.root = root
        self.port = free_port()
        self.store = root / "store.db"
        (root / "agg.yaml").write_text(f"endpoint: tcp://127.0.0.1:{self.port}\nstore: {self.store}\n")
        self.baseline = root / "baseline.json"
        shutil.copy(BASELINE, self.baseline)
        values = {
            "sensor_id": "tap-01",
            "baseline": str(self.baseline),
            "spool_dir": str(root / "spool"),
            "aggregator": f"tcp://127.0.0.1:{self.port}",
            **every_flow_an_alert(),
            "health_interval_s": 1,
            "local_networks": ["10.1.0.0/16"],
        } | settings
        self.config = root / "sensor.yaml"
        self.config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
        self.procs: list[subprocess.Popen] = []

    def aggregator(self, netns: str | None = None) -> None:
        log = self.root / "agg.log"
        cmd = [str(BIN / "ntds-aggregator"), "serve", "--config", str(self.root / "agg.yaml"), "--insecure"]
        p = subprocess.Popen(([*NETNS_EXEC, netns] if netns else []) + cmd, stderr=log.open("w"))
        self.procs.append(p)
        wait(lambda: "listening on" in log.read_text(), 30, "the aggregator")

    def sensor(self, *args: str, env: dict | None = None, netns: str | None = None) -> subprocess.Popen:
        cmd = [str(BIN / "ntds-sensor"), *args, "--config", str(self.config), "--insecure"]
        p = subprocess.Popen(
            ([*NETNS_EXEC, netns] if netns else []) + cmd,
            stderr=(self.root / "sensor.log").open("w"),
            env={**os.environ, **(env or {})},
        )
        self.procs.append(p)
        return p

    def log(self) -> str:
        return (self.root / "sensor.log").read_text()

    def run_live(self, netns: str) -> subprocess.Popen:
        """The aggregator and `ntds-sensor run` on `vcap`, both in namespace `netns`, once the sensor captures."""
        self.aggregator(netns=netns)
        p = self.sensor("run", "--interface", "vcap", netns=netns)
        wait(lambda: "capturing from vcap" in self.log() or p.poll() is not None, 30, "the sensor")
        assert p.poll() is None, self.log()
        return p

    def rows(self, kind: str) -> list[dict]:
        with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=10) as db:
            return [json.loads(b) for (b,) in db.execute("SELECT body FROM messages WHERE type = ?", (kind,))]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


NETNS_EXEC = ["ip", "netns", "exec"]


@pytest.fixture
def agent(tmp_path):
    a = Agent(tmp_path)
    yield a
    a.stop()


def _key(a: dict) -> tuple:
    return (a["first_seen"], a["kind"], a["flow_id"], a["src_ip"], a["pattern"], a["tier"], a["last_seen"])


def scored(pcap: Path, tmp: Path, config: Path) -> list[dict]:
    """Every alert `ntds-sensor score --config` (the sensor's own settings) writes for the same packets."""
    out = tmp / f"{pcap.stem}-scores.jsonl"
    p = subprocess.run(
        [str(BIN / "ntds-sensor"), "score", str(pcap), "--config", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    return sorted(map(json.loads, out.read_text().splitlines()), key=_key)


def stored(agent: Agent) -> list[dict]:
    alerts = agent.rows("alert")
    assert len({_key(a) for a in alerts}) == len(alerts)  # nothing twice
    return sorted(alerts, key=_key)


def test_replay_sends_what_score_finds_with_detection_at_its_defaults(tmp_path):
    """Host-level detectors and grouping on, as shipped: the alerts a replay delivers are exactly those
    `ntds-sensor score --config` prints for the same capture (one pass, the flows' own clock)."""
    from tests import detection_week as week

    cap = week.Capture(seed=4)
    week.scan_dropped(cap, week.START + 600, host="10.1.0.77", target="10.1.0.2")
    week.http_brute_force(cap, week.START + 1200, host="10.1.0.78", target="10.1.0.80")
    week.icmp_tunnel(cap, week.START + 2000, host="10.1.0.79")
    pcap = cap.write(tmp_path / "attacks.pcap")
    agent = Agent(tmp_path, min_alert_tier=3, alert_grouping={}, detectors={})
    try:
        agent.aggregator()
        p = agent.sensor("replay", str(pcap))
        assert p.wait(120) == 0, agent.log()
        got = stored(agent)
        assert got == scored(pcap, tmp_path, agent.config)
        assert {(a["kind"], a["src_ip"]) for a in got} >= {
            ("port-scan", "10.1.0.77"), ("brute-force", "10.1.0.78"), ("icmp-tunnel", "10.1.0.79")}  # fmt: skip
    finally:
        agent.stop()


def test_replay_publishes_every_flow_and_summary(agent, site_pcap, tmp_path):
    agent.aggregator()
    p = agent.sensor("replay", str(site_pcap))
    assert p.wait(120) == 0, agent.log()
    assert stored(agent) == scored(site_pcap, tmp_path, agent.config)
    # Summaries count every flow NFStream made, single-packet ones too, and every packet of the file.
    packets = sum(1 for _ in dpkt.pcap.Reader(site_pcap.open("rb")))
    summaries = agent.rows("summary")
    assert sum(s["packets"] for s in summaries) == packets
    assert sum(s["flows"] for s in summaries) >= len(stored(agent))
    assert agent.rows("hello")[0]["feature_profile"] == "unicauca"
    health = agent.rows("health")[-1]
    assert health["packets_seen"] == packets and health["packets_dropped"] == 0
    assert "done:" in agent.log() and "Traceback" not in agent.log()


def prefix(pcap: Path, n: int, out: Path) -> Path:
    with pcap.open("rb") as fh, out.open("wb") as dst:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(dst, snaplen=reader.snaplen, linktype=reader.datalink(), nano=False)
        for i, (ts, buf) in enumerate(reader):
            if i == n:
                break
            writer.writepkt(buf, ts)
    return out


def test_sigterm_during_replay_loses_no_flow(agent, site_pcap, tmp_path):
    """SIGTERM mid-capture: the sensor stops reading, expires and scores what is open, publishes, exits 0.
    What is stored equals `ntds-sensor score` on exactly the packets it had read."""
    agent.aggregator()
    p = agent.sensor("replay", str(site_pcap), "--pace", "realtime")
    wait(lambda: "capturing from" in agent.log(), 30, "the sensor to start")
    time.sleep(4)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0, agent.log()
    n = int(re.search(r"stopped after (\d+) packets", agent.log()).group(1))
    total = sum(1 for _ in dpkt.pcap.Reader(site_pcap.open("rb")))
    assert 0 < n < total  # it did stop early
    expected = scored(prefix(site_pcap, n, tmp_path / "prefix.pcap"), tmp_path, agent.config)
    assert expected and stored(agent) == expected
    assert sum(s["packets"] for s in agent.rows("summary")) == n


def test_sd_notify_ready_watchdog_and_status(agent, site_pcap, tmp_path):
    """A real unix datagram socket as NOTIFY_SOCKET, as systemd sets it for Type=notify."""
    agent.aggregator()
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    p = agent.sensor(
        "replay", str(site_pcap), "--pace", "realtime", env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
    )
    got: list[str] = []
    end = time.monotonic() + 30
    while time.monotonic() < end and not ({"READY=1", "WATCHDOG=1"} <= set(got) and len(got) > 8):
        with contextlib.suppress(TimeoutError):
            got += sock.recv(4096).decode().split("\n")
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0
    with sock:
        while True:
            try:
                got += sock.recv(4096).decode().split("\n")
            except TimeoutError:
                break
    assert got.index("READY=1") < got.index("WATCHDOG=1")
    assert got.count("WATCHDOG=1") >= 3  # every 0.2 s: half the watchdog period
    status = [g for g in got if g.startswith("STATUS=")]
    assert any(re.search(r"packets \(.*/s\), [\d,]+ flows, [\d,]+ alerts, [\d,]+ dropped", s) for s in status), status
    assert "STOPPING=1" in got


def test_sighup_refuses_a_bad_baseline_and_takes_a_good_one(agent, site_pcap):
    agent.aggregator()
    p = agent.sensor("replay", str(site_pcap), "--pace", "realtime")
    wait(lambda: "capturing from" in agent.log(), 30, "the sensor to start")
    agent.baseline.write_text('{"format": "ntds-baseline", "version": 1, "applications": ')
    p.send_signal(signal.SIGHUP)
    wait(lambda: "reload refused" in agent.log(), 20, "the refusal")
    assert p.poll() is None  # still running, on the old baseline
    shutil.copy(BASELINE, agent.baseline)
    agent.config.write_text(agent.config.read_text().replace("min_flow_tier: 0", "min_flow_tier: 5"))
    p.send_signal(signal.SIGHUP)
    wait(lambda: "reloaded: baseline" in agent.log(), 20, "the reload")
    assert "minimum tiers 0 (host-level), 5 (flows)" in agent.log()
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0, agent.log()
    assert len(agent.rows("hello")) == 2  # a fresh hello names the baseline now in use


def test_check_config_prints_the_effective_configuration(agent):
    p = subprocess.run(
        [str(BIN / "ntds-sensor"), "check-config", str(agent.config), "--insecure"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert "min_alert_tier: 0" in p.stdout and "snaplen: 1536" in p.stdout  # set, and defaulted
    assert "# seconds per summary" in p.stdout


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("colour: blue\n", "line 2: unknown setting 'colour'"),
        ("snaplen: big\n", "line 2: setting 'snaplen' must be a whole number"),
        ("snaplen: 10\n", "setting 'snaplen' must be at least 64"),
        ("min_alert_tier: 7\n", "setting 'min_alert_tier' must be at most 5"),
        ("feature_profile: fancy\n", "setting 'feature_profile' must be one of corrected, unicauca"),
        ("local_servers: [10.0.0.300]\n", "setting 'local_servers' has '10.0.0.300'"),
        ("geoip_database: nowhere.csv\n", "setting 'geoip_database' names"),
        ("aggregator: 127.0.0.1:5555\n", "setting 'aggregator' must be tcp://HOST:PORT"),
        ("interfaces: {a: 1}\n", "setting 'interfaces' must be a list"),
        ("sensor_id: [unclosed\n", "not valid YAML"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("snaplen: 100\nsnaplen: 200\n", "line 3: setting 'snaplen' is given twice (first on line 2)"),
        ("bpf_filter: tcp port eighty\n", "setting 'bpf_filter' does not compile: unknown port 'eighty'"),
        ("max_flows: 10\n", "setting 'max_flows' must be at least 1000"),
        ("# padding\n" * 120_000, "is not one"),
    ],
)
def test_bad_sensor_config_is_one_line(tmp_path, text, words):
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text(f"baseline: {BASELINE}\n{text}")
    for cmd in (["check-config", str(cfg)], ["replay", "x.pcap", "--config", str(cfg)]):
        p = subprocess.run([str(BIN / "ntds-sensor"), *cmd, "--insecure"], capture_output=True, text=True)
        assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_missing_keys_and_interfaces_are_one_line(tmp_path, agent):
    p = subprocess.run([str(BIN / "ntds-sensor"), "check-config", str(agent.config)], capture_output=True, text=True)
    assert p.returncode == 2 and "setting 'sensor_key' names" in p.stderr
    p = subprocess.run(
        [str(BIN / "ntds-sensor"), "run", "--config", str(agent.config), "--insecure", "--interface", "nosuch0"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "interface 'nosuch0' does not exist" in p.stderr and "Traceback" not in p.stderr
    agent.config.write_text(agent.config.read_text() + "interfaces: [nosuch0]\n")
    p = subprocess.run(
        [str(BIN / "ntds-sensor"), "check-config", str(agent.config), "--insecure"], capture_output=True, text=True
    )
    assert p.returncode == 2 and "'interfaces' names nosuch0" in p.stderr and len(p.stderr.splitlines()) == 1


def test_bad_baseline_stops_the_start(agent, site_pcap):
    agent.baseline.write_text("{}")
    p = agent.sensor("replay", str(site_pcap))
    assert p.wait(30) == 2
    assert "not an ntds baseline file" in agent.log() and "Traceback" not in agent.log()


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
STRACE = shutil.which("strace")


def _syscall_group(name: str) -> set[str]:
    out = subprocess.run([SYSTEMD_ANALYZE, "syscall-filter", "--no-pager", name], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            calls |= _syscall_group(line) if line.startswith("@") else {line}
    return calls


def _allowed_syscalls(unit: str) -> set[str]:
    """The system calls a unit's SystemCallFilter= lines let through, as systemd combines them: the first line
    (an allow list here) sets the default; a later ~list removes, a later plain list adds back."""
    allowed: set[str] | None = None
    for line in unit.splitlines():
        if line.startswith("SystemCallFilter="):
            items = line.split("=", 1)[1].split()
            deny = items[0].startswith("~")
            items[0] = items[0].lstrip("~")
            calls = set().union(*(_syscall_group(i) if i.startswith("@") else {i} for i in items))
            assert allowed is not None or not deny, "the units start from an allow list"
            allowed = calls if allowed is None else (allowed - calls if deny else allowed | calls)
    assert allowed is not None
    return allowed


@pytest.mark.skipif(SYSTEMD_ANALYZE is None or STRACE is None, reason="systemd-analyze and strace (make test)")
def test_the_units_allow_every_system_call_the_programs_make(tmp_path):
    """Under a unit's system call filter, a call outside it kills the process. Every call the sensor's meter
    and the aggregator's baseline build make (strace, every process) must be one its units let through: NFStream's
    meters set their CPU affinity, and that alone killed them under the first filter."""
    sample = ROOT / "pcaps" / "sample.pcap"
    commands = {
        "ntds-sensor.service": [str(BIN / "ntds-sensor"), "features", str(sample), "-o", str(tmp_path / "f.csv")],
        "ntds-aggregator.service": [
            str(BIN / "ntds-aggregator"),
            "baseline",
            "build",
            str(sample),
            "-o",
            str(tmp_path / "b.json"),
            "--min-count",
            "1",
        ],  # fmt: skip
    }
    for unit, cmd in commands.items():
        trace = tmp_path / f"{unit}.trace"
        subprocess.run([STRACE, "-f", "-qq", "-o", str(trace), *cmd], check=True, capture_output=True, timeout=120)
        used = {m.group(1) for m in re.finditer(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", trace.read_text(), re.M)}
        assert {"sched_setaffinity", "openat", "read"} <= used, sorted(used)  # the trace saw the meter
        names = [unit] if unit == "ntds-sensor.service" else [
            n for n in ("ntds-aggregator.service", "ntds-aggregator-ui.service", "ntds-baseline-learn.service",
                        "ntds-report.service")]  # fmt: skip
        for name in names:
            text = (ROOT / "systemd" / name).read_text()
            assert not used - _allowed_syscalls(text), (name, sorted(used - _allowed_syscalls(text)))
            assert "SystemCallErrorNumber=EPERM" in text
    # live capture also lowers the analysis below the meters (analysis_nice)
    assert "setpriority" in _allowed_syscalls((ROOT / "systemd" / "ntds-sensor.service").read_text())


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze (Debian package systemd; make test installs it)")
def test_systemd_units_verify(tmp_path):
    """systemd-analyze verify accepts every unit and the report timer (their /opt/ntds paths pointed at this
    checkout); a unit with an unknown key, as a control, is reported."""
    units = sorted(p.name for p in (ROOT / "systemd").iterdir() if p.suffix in (".service", ".timer"))
    assert units == ["ntds-aggregator-ui.service", "ntds-aggregator.service", "ntds-baseline-learn.service",
                     "ntds-baseline-learn.timer", "ntds-report.service", "ntds-report.timer",
                     "ntds-sensor.service"]  # fmt: skip
    for name in units:  # the timer's service must sit beside it
        text = (ROOT / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/ntds", str(ROOT)))
    (tmp_path / "bad.service").write_text("[Service]\nBogus=1\nExecStart=/bin/true\n")
    for name in [*units, "bad.service"]:
        p = subprocess.run([SYSTEMD_ANALYZE, "verify", str(tmp_path / name)], capture_output=True, text=True)
        if name == "bad.service":
            assert "Unknown key" in p.stderr
            continue
        assert p.returncode == 0 and p.stderr.strip() == "" and p.stdout.strip() == "", (name, p.stderr)
        text = (ROOT / "systemd" / name).read_text()
        if name.endswith(".service"):
            assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text and "User=ntds" in text
    for name in ("ntds-sensor.service", "ntds-aggregator.service"):
        text = (ROOT / "systemd" / name).read_text()
        assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=on-failure" in text
    sensor = (ROOT / "systemd" / "ntds-sensor.service").read_text()
    assert "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN" in sensor and "StateDirectory=" in sensor
    report = (ROOT / "systemd" / "ntds-report.service").read_text()
    assert "Type=oneshot" in report and "WorkingDirectory=/var/lib/ntds-aggregator/reports" in report
    assert "OnCalendar=Mon" in (ROOT / "systemd" / "ntds-report.timer").read_text()
    learn = (ROOT / "systemd" / "ntds-baseline-learn.service").read_text()
    assert "Type=oneshot" in learn and "baseline learn --config" in learn
    assert "OnCalendar=Mon *-*-* 05:" in (ROOT / "systemd" / "ntds-baseline-learn.timer").read_text()


TCPREPLAY = shutil.which("tcpreplay")


def flow_ids(pcap: Path, tmp: Path) -> list[str]:
    out = tmp / "features.csv"
    subprocess.run([str(BIN / "ntds-sensor"), "features", str(pcap), "-o", str(out)], check=True, capture_output=True)
    return sorted(r["Flow.ID"] for r in csv.DictReader(out.open()))


LIVE = pytest.mark.skipif(os.geteuid() != 0 or TCPREPLAY is None or shutil.which("ip") is None,
                          reason="needs root, iproute2 and tcpreplay (make test installs them)")  # fmt: skip


def _nice(pid: int, tid: int) -> int:
    """A thread's nice value, from /proc (field 19 of stat)."""
    return int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@LIVE
def test_one_finished_flow_on_a_quiet_interface_is_judged_within_seconds(tmp_path):
    """The meters send flows in batches (ntds.flows.engine._BatchChannel): a lone conversation on an otherwise
    silent interface must still reach the aggregator as an alert within seconds, not wait for 63 more flows
    or for the sensor to stop."""
    from scapy.all import IP, TCP, Raw, wrpcap

    from tests.frames import ether

    c, s = ("10.1.0.5", 40001), ("10.1.0.9", 8080)
    fwd = lambda flags, seq, ack, data=b"": ether() / IP(src=c[0], dst=s[0]) / TCP(  # noqa: E731
        sport=c[1], dport=s[1], flags=flags, seq=seq, ack=ack) / Raw(data)  # fmt: skip
    bwd = lambda flags, seq, ack, data=b"": ether() / IP(src=s[0], dst=c[0]) / TCP(  # noqa: E731
        sport=s[1], dport=c[1], flags=flags, seq=seq, ack=ack) / Raw(data)  # fmt: skip
    frames = [fwd("S", 0, 0), bwd("SA", 0, 1), fwd("A", 1, 1), fwd("PA", 1, 1, b"GET / HTTP/1.0\r\n\r\n"),
              bwd("PA", 1, 19, b"HTTP/1.0 200 OK\r\n\r\nhello"), fwd("FA", 19, 27), bwd("FA", 27, 20),
              fwd("A", 20, 28)]  # fmt: skip
    for k, f in enumerate(frames):
        f.time = 1_700_000_000 + k * 0.01
    pcap = tmp_path / "one.pcap"
    wrpcap(str(pcap), frames)
    agent = Agent(tmp_path, bpf_filter="ip")
    try:
        with veth_namespaces() as (cap, snd):
            p = agent.run_live(cap)
            time.sleep(0.5)
            sent = subprocess.run(["ip", "netns", "exec", snd, TCPREPLAY, "-i", "vsnd", "--pps", "100", str(pcap)],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            start = time.monotonic()
            wait(lambda: any(a["dst_port"] == 8080 for a in agent.rows("alert")), 10, "the lone flow's alert")
            assert time.monotonic() - start < 10 and p.poll() is None  # still capturing: no stop flushed it
    finally:
        agent.stop()


@LIVE
def test_live_capture_in_a_network_namespace(tmp_path, site_pcap):
    """The real sensor captures on a veth end inside a namespace while tcpreplay sends the site capture
    from the other end; flows, summaries and health reach a real aggregator (in the same namespace, on
    its loopback)."""
    agent = Agent(tmp_path, bpf_filter="ip", summary_interval_s=5)
    try:
        with veth_namespaces() as (cap, snd):
            p = agent.run_live(cap)
            time.sleep(0.5)
            # capture first: the sensor's own threads run analysis_nice (5) below its meters
            tasks = {int(t): _nice(p.pid, int(t)) for t in os.listdir(f"/proc/{p.pid}/task")}
            meters = [int(c) for t in tasks for c in Path(f"/proc/{p.pid}/task/{t}/children").read_text().split()]
            assert set(tasks.values()) == {5} and meters and {_nice(m, m) for m in meters} == {0}, (tasks, meters)
            sent = subprocess.run(
                ["ip", "netns", "exec", snd, TCPREPLAY, "-i", "vsnd", "--pps", "2000", str(site_pcap)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            packets = int(re.search(r"Actual: (\d+) packets", sent.stdout).group(1))
            time.sleep(1.5)
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, agent.log()
            summaries = agent.rows("summary")
            health = agent.rows("health")
    finally:
        agent.stop()
    assert packets == sum(1 for _ in dpkt.pcap.Reader(site_pcap.open("rb")))
    assert sum(s["packets"] for s in summaries) == packets
    assert health[-1]["packets_seen"] == packets and health[-1]["packets_dropped"] == 0
    # tcpreplay compresses 8 minutes into 2 s: flows the file's idle gaps split become one, so compare
    # which conversations were seen, not how often.
    assert {a["flow_id"] for a in agent.rows("alert")} == set(flow_ids(site_pcap, tmp_path))
    assert sum(s["traffic"]["external"]["flows"] for s in summaries) > 0


@pytest.mark.parametrize("name", ["sensor", "aggregator"])
def test_shipped_configs_are_valid_and_document_every_key(name):
    """Every setting appears in the shipped file, right under a comment that explains it."""
    from aggregator.config import AggregatorConfig
    from ntds.settings import load_values
    from sensor.config import SensorConfig

    path = ROOT / "config" / f"{name}.yaml"
    settings = (SensorConfig if name == "sensor" else AggregatorConfig).declared()
    load_values(path, settings, skip_exists=frozenset(settings))  # raises on any mistake
    lines = path.read_text().splitlines()
    for key in settings:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        above = lines[at - 1] if lines[at - 1].startswith("#") else lines[at - 2]
        assert above.startswith("#"), f"{key} has no comment above it"


def test_replay_with_the_aggregator_down_keeps_everything_in_the_spool(agent, site_pcap, tmp_path):
    """No aggregator: replay spools, says so, exits 3. The next start delivers the backlog first."""
    p = agent.sensor("replay", str(site_pcap), "--wait", "1")
    assert p.wait(120) == 3, agent.log()
    assert "not yet acknowledged remain in" in agent.log()
    with sqlite3.connect(tmp_path / "spool" / "spool.db") as db:
        spooled = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert spooled > 100
    agent.aggregator()
    p = agent.sensor("replay", str(site_pcap))
    assert p.wait(120) == 0, agent.log()
    with sqlite3.connect(f"file:{agent.store}?mode=ro", uri=True) as db:
        seqs = [s for (s,) in db.execute("SELECT seq FROM messages WHERE sensor = 'tap-01' ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 2 * spooled - 10  # both runs, nothing missing
    assert len(agent.rows("alert")) == 2 * len(scored(site_pcap, tmp_path, agent.config))


def test_flow_records_rotate_keep_every_flow_and_stay_under_the_cap(tmp_path):
    """With flow_records_dir set, replay writes every metered flow to rotated Parquet files: the rows are
    exactly the flows of `ntds-sensor features` on the same capture (a separate command path); with a small
    cap the oldest files go and the folder stays under it."""
    import pyarrow.parquet as pq

    from ntds.flows.columns import COLUMNS
    from tests.synthetic import udp_flows

    capture = udp_flows(tmp_path / "many.pcap", 40_000)
    records = tmp_path / "records"
    quiet = {"min_flow_tier": 5, "min_alert_tier": 5, "flow_records_dir": str(records), "flow_records_file_mb": 1}

    def replay_with(name: str, **settings) -> str:
        (tmp_path / name).mkdir()
        agent = Agent(tmp_path / name, **quiet, **settings)
        try:
            agent.aggregator()
            p = agent.sensor("replay", str(capture))
            assert p.wait(300) == 0, agent.log()
            return agent.log()
        finally:
            agent.stop()

    replay_with("uncapped", flow_records_max_mb=1024)
    files = sorted(records.glob("flows-*.parquet"))
    assert len(files) >= 2 and not list(records.glob("*.open"))
    tables = [pq.read_table(f) for f in files]
    assert all(t.column_names[: len(COLUMNS)] == list(COLUMNS) for t in tables)
    got = sorted(fid for t in tables for fid in t.column("Flow.ID").to_pylist())
    assert got == flow_ids(capture, tmp_path)
    # the same folder with a 1 MB cap: the oldest files go, the total stays under 1 MB
    log = replay_with("capped", flow_records_max_mb=1)
    kept = sorted(records.glob("flows-*.parquet"))
    assert kept and sum(f.stat().st_size for f in kept) <= 2**20 and "deleted" in log
