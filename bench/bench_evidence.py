"""Evidence: what the packet ring costs the sensor, what it takes on disk, and how fast one alert's packets come out.

1. Files: the meter (ntds's FlowMeter, exactly as `ntds-sensor features` runs it) over the real mix
   (bench_meter.py's real-mix capture) with the packet ring on (every frame written, as a live sensor does)
   and off, alternating, each in a fresh process, --runs times; median packets per second and the ratio.
   The ring's bytes per million packets are read from the same runs (its own counters).
2. Live: bench_sensor.py's live method (a veth pair between two network namespaces, tcpreplay bursts of
   --live-packets at each --rates, a real aggregator, the kernel's drop counters) for the sensor with its
   default ring (ring_mb 2048) and with ring_mb 0, alternating; per rate the loss of every run. Needs root,
   iproute2 and tcpreplay.
3. Serving: a ring of --ring-gb GB (the real mix repeated, 64 MB files, times continuing) and one pcap job for
   one host's packets within a minute, answered as the sensor answers it (sensor.evidence.jobs.Evidence), timed
   against the same extraction scanning every ring file (no index by time), --runs times, median.

    python bench/bench_evidence.py [--runs 5] [--skip-live] [--rates 100000,150000,200000] [--ring-gb 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

METER = """
import json, sys, tempfile, time
from ntds.flows.engine import CaptureControl
from ntds.flows.meter import FlowMeter
control = CaptureControl(max_flows=0)
ring = sys.argv[2] == "on"
with tempfile.TemporaryDirectory(prefix="ntds-bench-ring-", dir=sys.argv[3]) as folder:
    if ring:
        control.ring(folder, 64)
    meter = FlowMeter("unicauca", control=control, on_warning=lambda m: None)
    infos = meter.check([sys.argv[1]])
    start = time.perf_counter()
    flows = sum(1 for _ in meter.read_checked(infos))
    took = time.perf_counter() - start
    print(json.dumps({"seconds": took, "flows": flows, "packets": infos[0].packets} | control.ring_counts()))
"""


def meter_run(pcap: Path, ring: str, scratch: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", METER, str(pcap), ring, str(scratch)], capture_output=True,
                         text=True, check=True, cwd=ROOT)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_files(runs: int, packets: int) -> dict:
    from bench_meter import real_mix

    pcap = DATA / f"real-mix-{packets}.pcap"
    if not pcap.exists() and not real_mix(pcap, packets):
        return {"skipped": "../shared/pcaps not found"}
    scratch = DATA / "ring-scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"off": [], "on": []}
    for i in range(runs):
        for ring in ("off", "on"):
            rows[ring].append(meter_run(pcap, ring, scratch))
        print(f"  files run {i + 1}: off {rows['off'][-1]['seconds']:.2f} s, on {rows['on'][-1]['seconds']:.2f} s",
              file=sys.stderr)  # fmt: skip
    n = rows["on"][0]["packets"]
    off = statistics.median(r["seconds"] for r in rows["off"])
    on = statistics.median(r["seconds"] for r in rows["on"])
    per_million = rows["on"][0]["ring_bytes"] / rows["on"][0]["ring_packets"] * 1e6
    return {"capture": pcap.name, "packets": n, "ring_off_pps": n / off, "ring_on_pps": n / on, "ratio": off / on,
            "ring_packets": rows["on"][0]["ring_packets"], "ring_MB_per_million_packets": per_million / 1e6,
            "runs_s": {k: [round(r["seconds"], 3) for r in v] for k, v in rows.items()}}  # fmt: skip


def bench_live(args: argparse.Namespace) -> dict:
    from bench_meter import generate
    from bench_sensor import live_rate

    pcap = DATA / f"spread-{args.live_packets}.pcap"
    if not pcap.exists():
        generate(pcap, args.live_packets)
    losses: dict[str, dict[int, list[float]]] = {}
    for run in range(args.live_runs):
        for label, extra in (("ring on", ""), ("ring off", "ring_mb: 0\n")):
            for pps in map(int, args.rates.split(",")):
                row = live_rate(pps, args.live_packets, pcap, "sensor", 1, 64, extra=extra)
                print(f"  live run {run + 1} {label} {row}", file=sys.stderr)
                losses.setdefault(label, {}).setdefault(pps, []).append(row["loss_pct"])
    best = {k: max((pps for pps, r in v.items() if max(r) < 0.1), default=None) for k, v in losses.items()}
    return {"packets_per_burst": args.live_packets, "loss_pct": losses, "best_pps_under_0.1pct_loss_in_every_run": best}


def build_ring(folder: Path, gigabytes: float, source: Path) -> tuple[int, int, int]:
    """Ring files of 64 MB from the real mix, repeated with its times continuing; (files, packets, bytes)."""
    from sensor.evidence.packets import read

    records = list(read(source))
    span = records[-1].ts_ns - records[0].ts_ns + 1_000_000_000
    target = int(gigabytes * 2**30)
    total = packets = files = 0
    out, size, shift = None, 0, 0
    while total < target:
        for r in records:
            ts = r.ts_ns + shift
            if out is None:
                sec, ns = divmod(ts, 1_000_000_000)
                out = open(folder / f"ring-1-{sec:010d}-{ns:09d}.pcap", "wb")  # noqa: SIM115
                out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
                size, files = 24, files + 1
            sec, ns = divmod(ts, 1_000_000_000)
            out.write(struct.pack("<IIII", sec, ns, len(r.data), r.orig_len))
            out.write(r.data)
            size += 16 + len(r.data)
            packets += 1
            if size >= 64 * 2**20:
                out.close()
                total += size
                out = None
                _set_end(folder, ts)
                if total >= target:
                    break
        shift += span
    if out is not None:
        out.close()
        total += size
    return files, packets, total


def _set_end(folder: Path, end_ns: int) -> None:
    """The newest closed file's modification time: its last packet's time (as a meter's flushes leave it)."""
    newest = max(folder.glob("ring-*.pcap"))
    os.utime(newest, ns=(end_ns, end_ns))


def bench_serve(runs: int, gigabytes: float, packets: int) -> dict:
    from bench_meter import real_mix

    from sensor.evidence.jobs import Evidence
    from sensor.evidence.packets import Match, PcapWriter, read
    from sensor.evidence.ring import ring_files

    source = DATA / f"real-mix-{packets}.pcap"
    if not source.exists() and not real_mix(source, packets):
        return {"skipped": "../shared/pcaps not found"}
    with tempfile.TemporaryDirectory(prefix="ntds-bench-serve-", dir=DATA) as tmp:
        root = Path(tmp)
        ring = root / "ring"
        ring.mkdir()
        start = time.perf_counter()
        files, n, size = build_ring(ring, gigabytes, source)
        print(f"  ring: {files} files, {n:,} packets, {size / 2**30:.2f} GB in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)  # fmt: skip
        listed = ring_files(ring)
        middle = listed[len(listed) // 2]
        first = next(read(middle.path))
        from sensor.evidence.packets import endpoints

        src = endpoints(first.data, first.linktype)[0]
        host = ".".join(map(str, src)) if len(src) == 4 else None
        since = first.ts_ns // 1_000_000
        job = {"alert_spool": "", "alert_seq": 0, "host": host, "peer": "", "host_port": 0, "peer_port": 0,
               "protocol": 0, "since": _iso(since), "until": _iso(since + 60_000), "max_bytes": 0}  # fmt: skip
        evidence = Evidence(root / "evidence", ring)
        indexed, scanned, answers = [], [], None
        for _ in range(runs):
            t = time.perf_counter()
            answers = evidence.answer(1, job)
            indexed.append(time.perf_counter() - t)
            t = time.perf_counter()
            match = Match(host, since, since + 60_000)
            count = 0
            with open(os.devnull, "wb") as sink:
                w = PcapWriter(sink)
                for f in listed:
                    for r in read(f.path):
                        if match.wants(r):
                            w.add(r)
                            count += 1
            scanned.append(time.perf_counter() - t)
        got = answers[0]["packets"]
        assert got == count, (got, count)
        return {"ring_files": files, "ring_packets": n, "ring_GB": size / 2**30, "host": host, "window_s": 60,
                "packets_served": got, "parts": answers[0]["parts"], "serve_s": statistics.median(indexed),
                "full_scan_s": statistics.median(scanned),
                "ratio_full_scan_to_served": statistics.median(scanned) / statistics.median(indexed),
                "runs": {"serve": indexed, "full_scan": scanned}}  # fmt: skip


def _iso(ms: int) -> str:
    from ntds.detect.alerts import iso_ms

    return iso_ms(ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mix-packets", type=int, default=500_000)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-files", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--live-runs", type=int, default=3)
    ap.add_argument("--live-packets", type=int, default=1_000_000)
    ap.add_argument("--rates", default="100000,150000,200000")
    ap.add_argument("--ring-gb", type=float, default=2.0)
    args = ap.parse_args()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "command": " ".join(sys.argv)}  # fmt: skip
    if not args.skip_files:
        result["files"] = bench_files(args.runs, args.mix_packets)
    if not args.skip_serve:
        result["serve"] = bench_serve(args.runs, args.ring_gb, args.mix_packets)
    if not args.skip_live:
        result["live"] = bench_live(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
