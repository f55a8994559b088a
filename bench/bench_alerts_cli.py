"""`ntds-aggregator alerts` on a store of many alerts: the default (the newest 1,000, chosen on the alerts index)
against every alert (`--limit 0`, what the command did before), and two filters. Wall seconds of the command as a
user runs it (Python's start included), median of --runs.

    python bench/bench_alerts_cli.py [--alerts 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from aggregator.store import Store  # noqa: E402
from ntds.wire import schema as wire  # noqa: E402

BIN = Path(sys.executable).parent


def fill(path: Path, n: int) -> None:
    """`n` alerts from 100 sensors over five days, stored as the receiver stores them (batches of 5,000)."""
    store, batch = Store(path), []
    for i in range(n):
        body = dict(wire.EXAMPLES["alert"])
        body["first_seen"] = body["last_seen"] = (f"2026-11-{16 + i * 5 // n:02d}T{(i // 400) % 24:02d}:"
                                                  f"{(i // 7) % 60:02d}:{i % 60:02d}.000Z")  # fmt: skip
        batch.append(wire.Message("alert", f"tap-{i % 100:03d}", i + 1, wire.now_iso(), body, "spool"))
        if len(batch) == 5000:
            store.store(batch)
            batch = []
    store.store(batch)
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    fill(root / "store.db", args.alerts)
    cfg = root / "agg.yaml"
    cfg.write_text(f"store: {root / 'store.db'}\narchive: {root / 'archive'}\n")
    out = {}
    cases = {"default": [], "every alert (--limit 0)": ["--limit", "0"], "--min-tier 4": ["--min-tier", "4"],
             "--sensor tap-007": ["--sensor", "tap-007"]}  # fmt: skip
    for name, extra in cases.items():
        times, said = [], ""
        for _ in range(args.runs):
            t = time.perf_counter()
            p = subprocess.run([str(BIN / "ntds-aggregator"), "alerts", "--config", str(cfg), *extra],
                               capture_output=True, text=True, check=True)  # fmt: skip
            times.append(time.perf_counter() - t)
            said = p.stderr.strip().splitlines()[-1]
        out[name] = {"median_s": round(statistics.median(times), 2), "said": said}
    print(json.dumps({"alerts": args.alerts, "runs": args.runs, "results": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
