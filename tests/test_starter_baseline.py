"""The baseline shipped in config/ is what the README's command builds from the project's own traffic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from ntds.detect.baseline import Baseline

BIN = Path(sys.executable).parent


def test_shipped_baseline_loads_for_the_default_profile():
    b = Baseline.load(ROOT / "config" / "baseline.json", feature_profile="unicauca")
    assert b.method == "robust" and len(b.scorers) >= 5


def test_shipped_baseline_is_reproducible(tmp_path):
    pcap, out = tmp_path / "site-traffic.pcap", tmp_path / "baseline.json"
    gen = subprocess.run([sys.executable, "-m", "pcaps.generate", "--site-traffic", str(pcap)], cwd=ROOT, timeout=300)
    assert gen.returncode == 0
    cmd = [str(BIN / "ntds-aggregator"), "baseline", "build", str(pcap), "-o", str(out), "--min-count", "50"]
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    rebuilt = json.loads(out.read_text())
    shipped = json.loads((ROOT / "config" / "baseline.json").read_text())
    for key in ("applications", "ranking", "counts", "method", "feature_profile", "combine", "min_count"):
        assert rebuilt[key] == shipped[key], key
