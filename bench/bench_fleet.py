"""A fleet of sensors against one real aggregator: what keeps up, what falls behind, what is lost.

A real `ntds-aggregator serve` (CURVE, the shipped defaults of config/aggregator.yaml but for paths: quotas,
archive every 30 s) on 127.0.0.1, and N simulated sensors in this process, each a real `Spool` (on a RAM disk,
/dev/shm, so the simulator is not the bottleneck) and a real `Link` with its own CURVE key, sharing one ZeroMQ
context. Data time runs --speed times faster than real time: each sensor sends a hello, a summary and a health
message every simulated minute, statistics every simulated hour, and bursts of alerts (a burst of 1-20 with
probability 2% a minute), bodies from the wire schema's documented examples with their times moved.

Measured: messages offered and acknowledged per second; acknowledgement latency (spool append to ack, p50/p99);
the aggregator's CPU seconds and peak RSS (from /proc); the archive's lag (the oldest message not yet exported,
sampled every 2 s: largest and last); Parquet files written and per simulated day; store bytes per sensor-day;
messages lost (appended, never stored) and stored twice; the sensors' resends and reconnections; the
acknowledgements that said busy (and how often the aggregator fell behind). With --kill-at F the aggregator is
killed with SIGKILL at that share of the run and started again a second later (the outage: kill to listening).

    python bench/bench_fleet.py [--sensors 10,100,1000] [--minutes 60] [--speed 60] [--kill-at 0.5] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loopback import free_port  # noqa: E402

from ntds.wire.keys import generate, load_pair, load_public  # noqa: E402
from ntds.wire.schema import EXAMPLES  # noqa: E402
from sensor.link import Link  # noqa: E402
from sensor.spool import Spool  # noqa: E402

BIN = Path(sys.executable).parent
T0 = datetime(2026, 11, 16, tzinfo=UTC)
TICK = sys.getswitchinterval()


class Aggregator:
    """`ntds-aggregator serve` as a user runs it, with /proc sampling of its CPU and memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.config = root / "aggregator.yaml"
        self.config.write_text(
            f"endpoint: {self.endpoint}\nserver_key: agg/server.key_secret\nallow_list: allow\nstore: store.db\n"
            "archive: archive\narchive_interval_s: 30\n"
        )
        self.proc: subprocess.Popen | None = None
        self.cpu_before = 0.0
        """CPU seconds of the processes killed so far (a restart starts the count again)."""
        self.peak_rss = 0

    def start(self) -> None:
        log = self.root / "aggregator.log"
        seen = log.read_text().count("listening on") if log.exists() else 0
        with open(log, "a") as out:
            self.proc = subprocess.Popen([str(BIN / "ntds-aggregator"), "serve", "--config", str(self.config)],
                                         stderr=out)  # fmt: skip
        end = time.monotonic() + 120
        while log.read_text().count("listening on") <= seen:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"aggregator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def cpu(self) -> float:
        """CPU seconds (user + system) of the running process and its reaped children, plus the killed ones."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return self.cpu_before
        ticks = os.sysconf("SC_CLK_TCK")
        return self.cpu_before + sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks

    def sample(self) -> None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
        except OSError:
            pass

    def kill(self) -> None:
        self.cpu_before = self.cpu()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> float:
        """SIGTERM, as systemd stops it; returns the seconds it took to exit."""
        self.cpu_before = self.cpu()
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - t


STEADY_AFTER_S = 10.0
"""p99_after_start leaves out messages appended in the run's first seconds: every sensor's CURVE handshake (and the
aggregator's ZAP check of its key) happens then, and a message waits for its connection."""


OUTAGE_MARGIN_S = 1.0
"""p99_outside_outage leaves out messages appended from this long before the kill until the aggregator listens
again: they were in flight in the killed process, or had nowhere to go."""


class TimedSpool(Spool):
    """A spool that remembers when each message was appended and how long its acknowledgement took."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.appended: dict[int, float] = {}
        self.latencies: list[float] = []
        self.appended_at: list[float] = []
        """When each acknowledged message was appended (beside `latencies`)."""
        self.count = 0

    def append(self, items):
        seqs = super().append(items)
        now = time.monotonic()
        for s in seqs:
            self.appended[s] = now
        self.count += len(seqs)
        return seqs

    def ack(self, seqs):
        now = time.monotonic()
        for s in seqs:
            t = self.appended.pop(s, None)
            if t is not None:
                self.latencies.append(now - t)
                self.appended_at.append(t)
        return super().ack(seqs)


def _at(body: dict, when: datetime) -> dict:
    """An example body with its times moved to `when` (ISO-8601 UTC, millisecond precision)."""
    text = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    out = dict(body)
    for key in ("interval_start", "first_seen", "last_seen"):
        if key in out:
            out[key] = text
    return out


def names(n: int) -> list[str]:
    return [f"tap-{k:04d}" for k in range(n)]


def enrol(root: Path, n: int) -> None:
    """Every sensor's CURVE key pair, its public key in the aggregator's allow-list (before it starts)."""
    for name in names(n):
        generate(root / "keys", name)
        shutil.copy(root / "keys" / f"{name}.key", root / "allow" / f"{name}.key")


class Fleet:
    def __init__(self, n: int, root: Path, shm: Path, agg: Aggregator, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.context = zmq.Context(io_threads=1)
        self.context.max_sockets = 3 * n + 64  # each Link: its socket and the two ends of its monitor
        server = load_public(root / "agg" / "server.key")
        self.sensors: list[tuple[TimedSpool, Link]] = []
        for name in names(n):
            spool = TimedSpool(shm / f"{name}.db", name)
            link = Link(spool, agg.endpoint, client_keys=load_pair(root / "keys" / f"{name}.key_secret"),
                        server_public=server, context=self.context)  # fmt: skip
            spool.append([("hello", EXAMPLES["hello"])])
            self.sensors.append((spool, link))
        self.minute = [self.rng.random() for _ in range(n)]
        """Each sensor's phase within a minute: they do not all report at once."""

    def offer(self, sim_minutes_before: float, sim_minutes_now: float) -> int:
        """Append what every sensor produced between two data times (in minutes from T0)."""
        made = 0
        for (spool, _), phase in zip(self.sensors, self.minute):
            first = int(sim_minutes_before - phase) + 1
            last = int(sim_minutes_now - phase)
            for m in range(max(first, 0), last + 1):
                when = T0 + timedelta(minutes=m + phase)
                items = [("summary", _at(EXAMPLES["summary"], when)), ("health", EXAMPLES["health"])]
                if m % 60 == 59:
                    items.append(("stats", _at(EXAMPLES["stats"], when)))
                if self.rng.random() < 0.02:
                    items += [("alert", _at(EXAMPLES["alert"], when))] * self.rng.randint(1, 20)
                spool.append(items)
                made += len(items)
        return made

    def pump(self) -> None:
        for _, link in self.sensors:
            link.pump(timeout_ms=0)

    def pending(self) -> int:
        return sum(len(spool.appended) for spool, _ in self.sensors)

    def close(self) -> None:
        for spool, link in self.sensors:
            link.close()
            spool.close()
        self.context.term()


def archive_lag(store: Path) -> float:
    """Seconds since the oldest message not yet in the archive arrived (0: the archive is up to date)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT value FROM state WHERE key = 'archived_id'").fetchone()
            done = int(row[0]) if row else 0
            oldest = db.execute("SELECT MIN(received) FROM messages WHERE id > ?", (done,)).fetchone()[0]
    except sqlite3.Error:
        return float("nan")
    return time.time() - oldest if oldest else 0.0


def run(n: int, minutes: float, speed: float, kill_at: float | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{n}-"))
    shm = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{n}-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    generate(root / "agg", "server")
    (root / "allow").mkdir()
    enrol(root, n)
    agg = Aggregator(root)
    agg.start()
    fleet = Fleet(n, root, shm, agg)
    real_s = minutes * 60 / speed
    start = time.monotonic()
    offered, lags, killed, last_sample, sim_before, outage = 0, [], False, 0.0, 0.0, []
    print(f"{n} sensors: {minutes:g} simulated minutes in {real_s:.0f} s", file=sys.stderr)
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= real_s:
            break
        sim_now = elapsed * speed / 60
        offered += fleet.offer(sim_before, sim_now)
        sim_before = sim_now
        fleet.pump()
        if kill_at is not None and not killed and elapsed >= kill_at * real_s:
            outage = [time.monotonic()]
            agg.kill()
            time.sleep(1.0)
            agg.start()
            outage.append(time.monotonic())
            killed = True
        if elapsed - last_sample >= 2.0:
            agg.sample()
            lags.append(archive_lag(root / "store.db"))
            last_sample = elapsed
    offered_s = time.monotonic() - start
    drain_start = time.monotonic()
    while fleet.pending() and time.monotonic() - drain_start < 600:
        fleet.pump()
        time.sleep(0.001)
    drained_s = time.monotonic() - drain_start
    agg.sample()
    cpu = agg.cpu()
    resends = sum(link.sent for _, link in fleet.sensors) - sum(spool.count for spool, _ in fleet.sensors)
    holds = sum(link.holds for _, link in fleet.sensors)
    latencies = sorted(x for spool, _ in fleet.sensors for x in spool.latencies)
    around = sorted(x for spool, _ in fleet.sensors for x, t in zip(spool.latencies, spool.appended_at)
                    if not outage or not outage[0] - OUTAGE_MARGIN_S <= t <= outage[1])  # fmt: skip
    steady = sorted(x for spool, _ in fleet.sensors for x, t in zip(spool.latencies, spool.appended_at)
                    if t >= start + STEADY_AFTER_S)  # fmt: skip
    appended = {spool.sensor_id: spool.count for spool, _ in fleet.sensors}
    unacked = fleet.pending()
    fleet.close()
    stop_s = agg.stop()
    with sqlite3.connect(root / "store.db") as db:
        stored = dict(db.execute("SELECT sensor, COUNT(DISTINCT seq) FROM messages GROUP BY sensor").fetchall())
        twice = db.execute("SELECT COUNT(*) - COUNT(DISTINCT sensor || '/' || spool || '/' || seq) FROM messages"
                           ).fetchone()[0]  # fmt: skip
        backwards = db.execute("SELECT COALESCE(SUM(seq_backwards), 0) FROM sensors").fetchone()[0]
    files = list((root / "archive").rglob("*.parquet"))
    days = minutes / 1440
    store_bytes = sum(p.stat().st_size for p in root.glob("store.db*"))
    lost = sum(max(0, c - stored.get(s, 0)) for s, c in appended.items())
    acked = sum(appended.values()) - unacked
    result = {
        "sensors": n,
        "simulated_minutes": minutes,
        "speed": speed,
        "messages_offered": sum(appended.values()),
        "offered_per_s": round(offered / offered_s, 1),
        "acknowledged_per_s": round(acked / (offered_s + drained_s), 1),
        "drain_after_s": round(drained_s, 1),
        "ack_latency_s": {
            "p50": round(statistics.median(latencies), 3) if latencies else None,
            "p99": round(latencies[int(0.99 * (len(latencies) - 1))], 3) if latencies else None,
            "p99_after_start": round(steady[int(0.99 * (len(steady) - 1))], 3) if steady else None,
            "p99_outside_outage": round(around[int(0.99 * (len(around) - 1))], 3) if around and outage else None,
        },
        "aggregator_cpu_s": round(cpu, 1),
        "aggregator_cpu_ms_per_message": round(cpu / max(acked, 1) * 1000, 3),
        "aggregator_peak_rss_mb": round(agg.peak_rss / 2**20, 1),
        "archive_lag_s": {"max": round(max(lags, default=0.0), 1), "last": round(lags[-1], 1) if lags else None},
        "parquet_files": len(files),
        "parquet_files_per_simulated_day": round(len(files) / days),
        "store_bytes_per_sensor_day": round(store_bytes / n / days),
        "lost": lost,
        "stored_twice": twice,
        "seq_backwards_counted": backwards,
        "resends": resends,
        "reconnects": sum(link.reconnects for _, link in fleet.sensors),
        "busy_acknowledgements": holds,
        "aggregator_busy_episodes": (root / "aggregator.log").read_text().count("behind: every batch fills up"),
        "killed_at": kill_at,
        "outage_s": round(outage[1] - outage[0], 2) if outage else None,
        "shutdown_s": round(stop_s, 1),
    }
    shutil.rmtree(shm, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", default="10,100,1000", help="fleet sizes, comma-separated")
    ap.add_argument("--minutes", type=float, default=60.0, help="simulated minutes of each run")
    ap.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    ap.add_argument("--kill-at", type=float, help="kill -9 the aggregator at this share of each run (0..1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = [run(int(n), args.minutes, args.speed, args.kill_at) for n in args.sensors.split(",")]
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python bench/bench_fleet.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
