"""Archive export under a busy day: memory stays bounded and each export writes only what is new.

`serve` exports every archive_interval_s. This benchmark stores MESSAGES messages
dated in one day (alerts from many sensors' worth of traffic, one archive row
each, and summaries, about 20 rows each) arriving in ROUNDS equal rounds, runs
one export after each round in a fresh process (as serve's archiver would, with
its own store connection), and reports per round: peak memory of the export
process, seconds, and bytes written to the archive. A whole-day rewrite per
export would show as bytes written growing with the day; a bounded, incremental
export keeps them proportional to the round.

    python bench/bench_archive.py [--messages 500000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aggregator.store import Store  # noqa: E402
from ntds.wire import schema as wire  # noqa: E402

EXPORT = """
import resource, sys, time
sys.path.insert(0, sys.argv[3])
from aggregator.archive import Archive
from aggregator.store import Store
store = Store(sys.argv[1])
started = time.perf_counter()
n = Archive(sys.argv[2]).export(store)
print(n, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


IDLE = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from aggregator.archive import Archive
from aggregator.store import Store
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def messages(rng: random.Random, first_seq: int, n: int, day: str) -> list[wire.Message]:
    out = []
    for i in range(n):
        seq = first_seq + i
        second = seq % 86400
        t = f"{day}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"
        if seq % 10:
            body = wire.EXAMPLES["alert"] | {"time": t, "src_port": rng.randint(1024, 65535), "score": rng.random()}
            out.append(wire.Message("alert", f"tap-{seq % 4}", seq, wire.now_iso(), body, "bench"))
        else:
            body = json.loads(json.dumps(wire.EXAMPLES["summary"]))
            body["interval_start"] = t
            out.append(wire.Message("summary", f"tap-{seq % 4}", seq, wire.now_iso(), body, "bench"))
    return out


def folder_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    rng = random.Random(1)
    root = Path(__file__).resolve().parent.parent
    per = args.messages // args.rounds
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store_path, archive = Path(tmp) / "store.db", Path(tmp) / "archive"
        store = Store(store_path)
        written_before = 0
        for r in range(args.rounds):
            for k in range(0, per, 10_000):
                store.store(messages(rng, 1 + r * per + k, min(10_000, per - k), "2026-11-18"))
            out = subprocess.run(
                [sys.executable, "-c", EXPORT, str(store_path), str(archive), str(root)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            n, seconds, rss_kb = out.stdout.split()
            # bytes written: new files, plus rewritten ones (merges), seen as the change in the folder plus
            # what merges replaced; the archive's total size shows whether a day is rewritten each time
            total = folder_bytes(archive)
            rows.append(
                {
                    "round": r + 1,
                    "stored": (r + 1) * per,
                    "exported": int(n),
                    "seconds": round(float(seconds), 2),
                    "peak_rss_mb": round(int(rss_kb) / 1024, 1),
                    "archive_mb": round(total / 1e6, 1),
                    "growth_mb": round((total - written_before) / 1e6, 1),
                }
            )
            written_before = total
            print(json.dumps(rows[-1]), flush=True)
        store.close()
    idle = subprocess.run(
        [sys.executable, "-c", IDLE, str(root)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": f"python bench/bench_archive.py --messages {args.messages} --rounds {args.rounds}",
        "when": time.strftime("%Y-%m-%d"),
        "rounds": rows,
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows),
        "rss_mb_after_imports": round(int(idle) / 1024, 1),
        "seconds_last": rows[-1]["seconds"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
