"""The sensor agent: replay throughput of the whole pipeline, live capture rate, memory over a long run.

1. Replay: `ntds-sensor replay FILE` (meter, score, summarise, spool, publish to
   a real aggregator on 127.0.0.1, wait for every acknowledgement) against
   `ntds-sensor features -q FILE > /dev/null` on the same capture (bench_meter's
   generated 500,000-packet file), alternating, 3 runs each, median. Peak
   resident memory of the replay's process tree for the 250,000- and
   500,000-packet files (flat memory means no per-packet state).
2. Live: two network namespaces joined by a veth pair; the sensor runs on one
   end with a real aggregator on the namespace's loopback; tcpreplay sends
   --live-packets (1,000,000) packets of the same traffic from the other end
   at each --pps, so that a rate the capture cannot sustain overflows the
   kernel buffer (--buffer-mb, the sensor's default 64 MiB, for both tools).
   Per rate: packets sent (tcpreplay), packets the capture delivered and the
   drops the kernel reported (the sensor's final health message; NFStream's
   own counters for bare NFStream). Result: the highest rate under 0.1% loss
   in every run.

    python bench/bench_sensor.py [--runs 3] [--skip-live] [--skip-replay] [--tools sensor,nfstream]
        [--meters 1,2] [--workers 0,1,2] [--rates ...] [--live-packets N] [--buffer-mb M]
        (live: root, iproute2, tcpreplay)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
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
from loopback import free_port  # noqa: E402
from netns import veth_namespaces  # noqa: E402


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


BARE_LIVE = """
import sys
from nfstream import NFStreamer
# The streamer settings of `ntds-sensor run` (ntds.flows.meter.FlowMeter._streamer, bpf_filter ip), without ntds;
# performance_report prints NFStream's own counters (packets processed, ignored, dropped) every second.
for flow in NFStreamer(source=sys.argv[1], decode_tunnels=False, bpf_filter="ip", promiscuous_mode=True,
                       snapshot_length=1536, idle_timeout=120, active_timeout=120, accounting_mode=1,
                       n_dissections=20, statistical_analysis=False, splt_analysis=0, n_meters=int(sys.argv[2]),
                       max_nflows=0, performance_report=1, system_visibility_mode=0,
                       socket_buffer_size=int(sys.argv[3])):
    pass
"""


def _sensor_seen(root: Path, sensor: subprocess.Popen) -> tuple[int, int]:
    sensor.send_signal(signal.SIGTERM)
    sensor.wait(120)
    with sqlite3.connect(root / "store.db") as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM messages WHERE type='health'")]
    health = max(bodies, key=lambda h: h["packets_seen"])
    return health["packets_seen"], health["packets_dropped"]


def _bare_seen(out: Path) -> tuple[int, int]:
    """NFStream's last performance line: packets its meters took in (processed + ignored), and kernel drops."""
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    last = lines[-1] if lines else {"packets_processed": 0, "packets_ignored": 0,
                                    "packets_dropped_filtered_by_kernel": 0}  # fmt: skip
    return last["packets_processed"] + last["packets_ignored"], last["packets_dropped_filtered_by_kernel"]


TAIL = 20
"""Packets sent slowly (10 a second) after each burst so that NFStream's counters catch up; they are not counted
as sent, so up to 20 lost packets (0.02%) could hide behind them, for both tools alike."""


def live_rate(pps: int, packets: int, pcap: Path, tool: str = "sensor", meters: int = 1, buffer_mb: int = 64,
              extra: str = "") -> dict:  # fmt: skip
    """One rate: tcpreplay sends `packets` at `pps` into the capture namespace, where `tool` (the sensor with
    scoring, host detectors and publishing to a real aggregator, or bare NFStream) captures with `meters` and
    a kernel capture buffer of `buffer_mb` MiB (both tools alike); `extra`: more sensor.yaml lines."""
    with tempfile.TemporaryDirectory(prefix="ntds-bench-live-") as tmp:
        root = Path(tmp)
        agg = proc = None
        with veth_namespaces("ntds-bench") as (cap, snd):
            try:
                log = root / "capture.log"
                if tool == "sensor":
                    cfg, agg = setup(root, cap)
                    with cfg.open("a") as fh:
                        fh.write(f"n_meters: {meters}\ncapture_buffer_mb: {buffer_mb}\n{extra}")
                    proc = subprocess.Popen(
                        ["ip", "netns", "exec", cap, str(BIN / "ntds-sensor"), "run", "--interface", "vcap",
                         "--config", str(cfg), "--insecure"], stderr=log.open("w"),
                    )  # fmt: skip
                    ready = lambda: "capturing from" in log.read_text()  # noqa: E731
                else:
                    # its own session: bare NFStream's meters do not die with their parent, so the whole group
                    # is killed at the end
                    proc = subprocess.Popen(["ip", "netns", "exec", cap, sys.executable, "-c", BARE_LIVE, "vcap",
                                             str(meters), str(buffer_mb << 20)], stdout=log.open("w"),
                                            stderr=subprocess.DEVNULL,
                                            start_new_session=True)  # fmt: skip
                    ready = lambda: "packets_processed" in log.read_text()  # noqa: E731
                end = time.monotonic() + 30
                while not ready() and time.monotonic() < end:
                    time.sleep(0.05)
                time.sleep(0.5)
                out = subprocess.run(
                    ["ip", "netns", "exec", snd, "tcpreplay", "-i", "vsnd", "--pps", str(pps), "--limit",
                     str(packets), str(pcap)], capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                sent = int(re.search(r"Actual: (\d+) packets", out).group(1))
                actual = float(re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out).group(1))
                # NFStream's own counters are updated as packets arrive, a second of packet time apart: a slow
                # tail of packets after a pause makes them count everything before it (for both tools alike)
                time.sleep(1.5)
                tail = subprocess.run(
                    ["ip", "netns", "exec", snd, "tcpreplay", "-i", "vsnd", "--pps", "10", "--limit", str(TAIL),
                     str(pcap)], capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                assert int(re.search(r"Actual: (\d+) packets", tail).group(1)) == TAIL
                time.sleep(2.5)
                seen, dropped = _sensor_seen(root, proc) if tool == "sensor" else _bare_seen(log)
            finally:
                if tool != "sensor" and proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                for p in (proc, agg):
                    if p is not None and p.poll() is None:
                        p.kill()
                        p.wait()
    lost = max(0, sent - seen)
    return {"tool": tool, "meters": meters, "buffer_mb": buffer_mb, "packets": packets, "requested_pps": pps,
            "actual_pps": round(actual), "sent": sent,
            "seen": seen, "kernel_dropped": dropped, "loss_pct": round(100 * lost / sent, 3)}  # fmt: skip


def bench_stats_cost(runs: int) -> dict:
    """What the statistics for baseline learning cost a replay: the real mix with stats_interval_s 3600 (the
    default) and 0 (none), alternating."""
    pcap = DATA / "real-mix-500000.pcap"
    if not pcap.exists():
        return {"skipped": f"{pcap} not found (bench_meter.py writes it from ../shared/pcaps)"}
    times: dict[str, list[float]] = {"3600": [], "0": []}
    with tempfile.TemporaryDirectory(prefix="ntds-bench-stats-") as tmp:
        cfg, agg = setup(Path(tmp))
        base = cfg.read_text()
        try:
            for i in range(runs):
                for interval in times:
                    cfg.write_text(base + f"stats_interval_s: {interval}\n")
                    times[interval].append(replay(cfg, pcap)[0])
                print(f"  run {i + 1}: with stats {times['3600'][-1]:.2f} s, without {times['0'][-1]:.2f} s",
                      file=sys.stderr)  # fmt: skip
        finally:
            agg.send_signal(signal.SIGTERM)
            agg.wait(60)
    with_stats, without = statistics.median(times["3600"]), statistics.median(times["0"])
    return {"capture": pcap.name, "with_stats_s": with_stats, "without_stats_s": without,
            "ratio": without / with_stats, "runs": times}  # fmt: skip


def bench_live(args: argparse.Namespace) -> dict:
    """Every rate, tool and meter count, --runs times, the tools alternating within each run; per rate the
    loss of every run, and the highest rate under 0.1% loss in every run."""
    pcap = DATA / f"spread-{args.live_packets}.pcap"
    if not pcap.exists():
        generate(pcap, args.live_packets)
    losses: dict[str, dict[int, list[float]]] = {}
    for run in range(args.runs):
        for meters in map(int, args.meters.split(",")):
            for tool in args.tools.split(","):
                for workers in map(int, args.workers.split(",")) if tool == "sensor" else [None]:
                    label = f"{tool}, {meters} meters" + (f", {workers} analysis workers" if args.workers else "")
                    extra = f"analysis_workers: {workers}\n" if args.workers and workers is not None else ""
                    for pps in map(int, args.rates.split(",")):
                        row = live_rate(pps, args.live_packets, pcap, tool, meters, args.buffer_mb, extra)
                        print(f"  live run {run + 1} {label} {row}", file=sys.stderr)
                        losses.setdefault(label, {}).setdefault(pps, []).append(row["loss_pct"])
    return {
        "packets_per_burst": args.live_packets,
        "buffer_mb": args.buffer_mb,
        "loss_pct": losses,
        "best_pps_under_0.1pct_loss_in_every_run": {
            k: max((pps for pps, runs in v.items() if max(runs) < 0.1), default=None) for k, v in losses.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--rates", default="100000,150000,200000,250000")
    ap.add_argument("--live-packets", type=int, default=1_000_000, help="packets per live burst")
    ap.add_argument("--buffer-mb", type=int, default=64, help="kernel capture buffer, both tools (sensor default)")
    ap.add_argument("--meters", default="1,2", help="n_meters values to measure live (comma-separated)")
    ap.add_argument("--workers", default="", help="live: analysis_workers values for the sensor (default: its own)")
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--tools", default="sensor,nfstream", help="live: sensor, nfstream or both")
    ap.add_argument("--stats-cost", action="store_true", help="only: a replay with and without statistics")
    args = ap.parse_args()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    if args.stats_cost:
        print(json.dumps(result | {"stats_cost": bench_stats_cost(args.runs)}, indent=1))
        return
    if not args.skip_replay:
        result["replay"] = bench_replay(args.runs)
        print(json.dumps(result["replay"]), file=sys.stderr)
    if not args.skip_live and os.geteuid() == 0 and shutil.which("tcpreplay"):
        result["live"] = bench_live(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
