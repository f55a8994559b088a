"""Memory per concurrent flow, and the flow-table bound that caps it.

A capture holds N UDP flows all open at once (every flow's first packet, then
every answer ten seconds later), so the meter's table reaches N entries. For
each N, `ntds-sensor features` runs with no bound and with `--max-flows` (the
sensor's default bound, 200,000 per meter); the peak memory of the metering
processes (the largest child, which is the NFStream meter) is reported with the
memory per 100,000 open flows.

    python bench/bench_flow_table.py [--flows 100000 250000 500000 1000000] [--bound 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from synthetic import open_flows  # noqa: E402

PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_mb(cmd: list[str]) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, nargs="+", default=[100_000, 250_000, 500_000, 1_000_000])
    ap.add_argument("--bound", type=int, default=200_000)
    args = ap.parse_args()
    sensor = str(Path(sys.executable).parent / "ntds-sensor")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.flows:
            capture = open_flows(Path(tmp) / f"open-{n}.pcap", n, spread_s=30)
            unbounded = peak_mb([sensor, "features", "-q", str(capture), "-o", str(Path(tmp) / "out.csv")])
            bounded = peak_mb([sensor, "features", "-q", str(capture), "--max-flows", str(args.bound),
                               "-o", str(Path(tmp) / "out.csv")])  # fmt: skip
            rows.append({"open_flows": n, "peak_mb_unbounded": round(unbounded), "peak_mb_bounded": round(bounded)})
            print(json.dumps(rows[-1]), flush=True)
            capture.unlink()
    small, big = rows[0], rows[-1]
    # the slope between the smallest and the largest table (one size alone has no slope)
    spread = (big["open_flows"] - small["open_flows"]) / 1e5
    per_100k = (big["peak_mb_unbounded"] - small["peak_mb_unbounded"]) / spread if spread else None
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python bench/bench_flow_table.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "mb_per_100k_open_flows": round(per_100k) if per_100k is not None else None,
        "bound": args.bound,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
