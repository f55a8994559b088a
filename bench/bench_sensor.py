"""The sensor agent: replay throughput of the whole pipeline, live capture rate, memory over a long run.

1. Replay: `ntds-sensor replay FILE` (meter, score, summarise, spool, publish to
   a real aggregator on 127.0.0.1, wait for every acknowledgement) against
   `ntds-sensor features -q FILE > /dev/null` on the same capture (bench_meter's
   generated 500,000-packet file), alternating, 3 runs each, median. Peak
   resident memory of the replay's process tree for the 250,000- and
   500,000-packet files (flat memory means no per-packet state).
2. Live: two network namespaces joined by a veth pair; the sensor runs on one
   end with a real aggregator on the namespace's loopback; tcpreplay sends
   100,000 packets of the same traffic from the other end at increasing
   --pps. Per rate: packets sent (tcpreplay), packets the capture delivered
   and the drops the kernel reported (the sensor's final health message).
   Result: the highest rate with under 0.1% loss.

    python bench/bench_sensor.py [--runs 3] [--skip-live]   (live needs root, iproute2, tcpreplay)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))

from bench_meter import generate  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from netns import veth_namespaces  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(root: Path, netns: str | None = None) -> tuple[Path, subprocess.Popen]:
    port = free_port()
    (root / "agg.yaml").write_text(f"endpoint: tcp://127.0.0.1:{port}\nstore: {root / 'store.db'}\n")
    (root / "sensor.yaml").write_text(
        f"sensor_id: bench\nbaseline: {ROOT / 'config' / 'baseline.json'}\nspool_dir: {root / 'spool'}\n"
        f"aggregator: tcp://127.0.0.1:{port}\nbpf_filter: ip\nhealth_interval_s: 5\nlocal_networks: [10.0.0.0/8]\n"
    )
    prefix = ["ip", "netns", "exec", netns] if netns else []
    log = root / "agg.log"
    agg = subprocess.Popen(
        [*prefix, str(BIN / "ntds-aggregator"), "serve", "--config", str(root / "agg.yaml"), "--insecure"],
        stderr=log.open("w"),
    )
    end = time.monotonic() + 30
    while "listening on" not in log.read_text() and time.monotonic() < end:
        time.sleep(0.05)
    return root / "sensor.yaml", agg


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (the meters), in KiB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text()).group(1))
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total


def replay(cfg: Path, pcap: Path) -> tuple[float, int]:
    start = time.perf_counter()
    p = subprocess.Popen(
        [str(BIN / "ntds-sensor"), "replay", str(pcap), "--config", str(cfg), "--insecure"], stderr=subprocess.DEVNULL
    )
    peak = 0
    while p.poll() is None:
        peak = max(peak, tree_rss_kib(p.pid))
        time.sleep(0.2)
    took = time.perf_counter() - start
    assert p.returncode == 0, p.returncode
    return took, peak


def features(pcap: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "ntds-sensor"), "features", "-q", str(pcap)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def bench_replay(runs: int) -> dict:
    files = {n: DATA / f"spread-{n}.pcap" for n in (250_000, 500_000)}
    for n, path in files.items():
        if not path.exists():
            DATA.mkdir(exist_ok=True)
            print(f"generating {path}", file=sys.stderr)
            generate(path, n)
    big = files[500_000]
    replays, feats, peaks = [], [], {}
    with tempfile.TemporaryDirectory(prefix="ntds-bench-sensor-") as tmp:
        cfg, agg = setup(Path(tmp))
        try:
            for i in range(runs):
                took, peak = replay(cfg, big)
                replays.append(took)
                peaks[500_000] = max(peaks.get(500_000, 0), peak)
                feats.append(features(big))
                print(f"  run {i + 1}: replay {replays[-1]:.2f} s, features {feats[-1]:.2f} s", file=sys.stderr)
            _, peaks[250_000] = replay(cfg, files[250_000])
        finally:
            agg.send_signal(signal.SIGTERM)
            agg.wait(60)
    r, f = statistics.median(replays), statistics.median(feats)
    return {
        "packets": 500_000,
        "replay_s": round(r, 2),
        "features_s": round(f, 2),
        "replay_pps": round(500_000 / r),
        "features_pps": round(500_000 / f),
        "replay_to_features": round(f / r, 2),
        "peak_rss_mib": {str(k): round(v / 1024) for k, v in sorted(peaks.items())},
    }


def live_rate(pps: int, packets: int, pcap: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="ntds-bench-live-") as tmp:
        root = Path(tmp)
        agg = sensor = None
        with veth_namespaces("ntds-bench") as (cap, snd):
            try:
                cfg, agg = setup(root, cap)
                log = root / "sensor.log"
                sensor = subprocess.Popen(
                    ["ip", "netns", "exec", cap, str(BIN / "ntds-sensor"), "run", "--interface", "vcap",
                     "--config", str(cfg), "--insecure"], stderr=log.open("w"),
                )  # fmt: skip
                end = time.monotonic() + 30
                while "capturing from" not in log.read_text() and time.monotonic() < end:
                    time.sleep(0.05)
                time.sleep(0.5)
                out = subprocess.run(
                    ["ip", "netns", "exec", snd, "tcpreplay", "-i", "vsnd", "--pps", str(pps), "--limit",
                     str(packets), str(pcap)], capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                sent = int(re.search(r"Actual: (\d+) packets", out).group(1))
                actual = float(re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out).group(1))
                time.sleep(2)
                sensor.send_signal(signal.SIGTERM)
                sensor.wait(120)
                with sqlite3.connect(root / "store.db") as db:
                    bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM messages WHERE type='health'")]
                health = max(bodies, key=lambda h: h["packets_seen"])
            finally:
                for p in (sensor, agg):
                    if p is not None and p.poll() is None:
                        p.kill()
                        p.wait()
    lost = max(0, sent - health["packets_seen"])
    return {
        "requested_pps": pps,
        "actual_pps": round(actual),
        "sent": sent,
        "seen": health["packets_seen"],
        "kernel_dropped": health["packets_dropped"],
        "loss_pct": round(100 * lost / sent, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--rates", default="10000,20000,25000,30000,35000,40000")
    args = ap.parse_args()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    result["replay"] = bench_replay(args.runs)
    print(json.dumps(result["replay"]), file=sys.stderr)
    if not args.skip_live and os.geteuid() == 0 and shutil.which("tcpreplay"):
        rows = []
        for pps in map(int, args.rates.split(",")):
            row = live_rate(pps, 100_000, DATA / "spread-250000.pcap")
            print(f"  live {row}", file=sys.stderr)
            rows.append(row)
        result["live"] = rows
        ok = [r["actual_pps"] for r in rows if r["loss_pct"] < 0.1]
        result["live_best_pps_under_0.1pct_loss"] = max(ok, default=None)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
