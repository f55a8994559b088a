"""`ntds-aggregator baseline plots`: one histogram and one radar PNG per entry, and the medians table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES

BIN = Path(sys.executable).parent
PNG = b"\x89PNG\r\n\x1a\n"


def agg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ntds-aggregator"), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_plots_from_a_baseline_and_from_flows(tmp_path, fixtures_dir):
    sample = FIXTURES.parent / "sample.pcap"
    base = tmp_path / "b.json"
    assert agg("baseline", "build", sample, "-o", base, "--min-count", "2").returncode == 0
    doc = json.loads(base.read_text())
    out = tmp_path / "from-baseline"
    p = agg("baseline", "plots", base, "-o", out)
    assert p.returncode == 0, p.stderr
    for name in doc["applications"]:
        safe = "all-traffic" if name.startswith("*") else name
        for kind in ("histograms", "radar"):
            png = out / f"{safe}_{kind}.png"
            assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000, png
    table = (out / "metrics.txt").read_text().splitlines()
    google = next(line for line in table if line.startswith("GOOGLE "))
    median_volume = doc["applications"]["GOOGLE"]["metrics"]["volume"]["median"]
    assert f"{median_volume:.6g}" in google.split()
    # the same figures straight from the capture (a baseline is built on the way)
    out2 = tmp_path / "from-flows"
    assert agg("baseline", "plots", sample, "-o", out2, "--min-count", "2").returncode == 0
    assert sorted(p.name for p in out2.iterdir()) == sorted(p.name for p in out.iterdir())
    assert (out2 / "metrics.txt").read_text() == (out / "metrics.txt").read_text()
