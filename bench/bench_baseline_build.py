"""Baseline build at the scale of the Unicauca data set: 3,577,296 rows of the 87 columns.

Writes (once, under bench/data/) a CSV shaped like Dataset-Unicauca-Version2-87Atts.csv
(same header, 78 applications with a skewed share like the real file's), by
repeating a block of generated rows; then times `ntds-aggregator baseline build`
on it and reports its peak memory.

    python bench/bench_baseline_build.py [--rows 3577296]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ntds.flows.columns import COLUMNS, FLOAT_COLUMNS, STRING_COLUMNS  # noqa: E402

BLOCK = 100_000


def block(rng: np.random.Generator) -> str:
    """BLOCK rows of CSV text (no header)."""
    import pandas as pd

    apps = [f"APP{i:02d}" for i in range(78)]
    share = 1 / np.arange(1, 79) ** 1.3
    cols: dict[str, object] = {}
    for c in COLUMNS:
        if c in STRING_COLUMNS:
            continue
        base = rng.lognormal(4, 2, BLOCK)
        cols[c] = base if c in FLOAT_COLUMNS else np.round(base).astype(np.int64)
    cols["Flow.ID"] = "10.0.0.1-10.0.0.2-1-2-6"
    cols["Source.IP"] = rng.choice(["10.0.0.1", "192.168.1.9", "8.8.8.8", "172.19.1.46"], BLOCK)
    cols["Destination.IP"] = rng.choice(["10.200.7.7", "142.250.1.1", "31.13.64.1"], BLOCK)
    cols["Timestamp"] = "26/04/201711:11:17"
    cols["Label"] = "BENIGN"
    cols["ProtocolName"] = rng.choice(apps, BLOCK, p=share / share.sum())
    frame = pd.DataFrame({c: cols[c] for c in COLUMNS})
    frame.loc[::97, "Flow.Bytes.s"] = np.inf  # zero-duration flows, written as Infinity
    return frame.to_csv(index=False, header=False, float_format="%.6g").replace("inf", "Infinity")


def generate(path: Path, rows: int) -> None:
    rng = np.random.default_rng(87)
    text = block(rng)
    lines = text.splitlines(keepends=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        out.write(",".join(COLUMNS) + "\n")
        left = rows
        while left > 0:
            take = min(left, BLOCK)
            out.write(text if take == BLOCK else "".join(lines[:take]))
            left -= take


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3_577_296)
    args = ap.parse_args()
    csv = HERE / "data" / f"unicauca-shaped-{args.rows}.csv"
    if not csv.exists():
        print(f"generating {csv}", file=sys.stderr)
        generate(csv, args.rows)
    out = HERE / "data" / "unicauca-shaped-baseline.json"
    cmd = [str(Path(sys.executable).parent / "ntds-aggregator"), "baseline", "build", str(csv), "-o", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    doc = json.loads(out.read_text())
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                "rows": args.rows,
                "csv_bytes": csv.stat().st_size,
                "seconds": round(seconds, 1),
                "rows_per_s": round(args.rows / seconds),
                "peak_memory_kib": peak,
                "applications": doc["counts"]["applications"],
                "baseline_bytes": out.stat().st_size,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
