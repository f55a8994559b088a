"""`ntds-aggregator baseline build` and `ntds-sensor score` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES

BIN = Path(sys.executable).parent


def run(tool: str, *args) -> subprocess.CompletedProcess:
    exe = BIN / tool
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-m", "sensor.cli" if tool == "ntds-sensor" else "aggregator.cli"]
    )
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)


SAMPLE = FIXTURES.parent / "sample.pcap"


def test_build_from_csv_equals_build_from_capture(tmp_path, fixtures_dir):
    csv = tmp_path / "flows.csv"
    assert run("ntds-sensor", "features", SAMPLE, "-o", csv).returncode == 0
    a, b = tmp_path / "from-csv.json", tmp_path / "from-pcap.json"
    pa = run("ntds-aggregator", "baseline", "build", csv, "-o", a, "--min-count", "2")
    pb = run("ntds-aggregator", "baseline", "build", SAMPLE, "-o", b, "--min-count", "2")
    assert pa.returncode == 0 and pb.returncode == 0, pa.stderr + pb.stderr
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert da["applications"] == db["applications"]
    assert da["ranking"] == db["ranking"]
    rows = list(__import__("csv").DictReader(csv.open()))
    scorable = [r for r in rows if float(r["Total.Backward.Packets"]) > 0 and (r["Protocol"] != "6" or float(
        r["Total.Length.of.Fwd.Packets"]) + float(r["Total.Length.of.Bwd.Packets"]) > 0)]  # fmt: skip
    assert da["flows_read"] == len(rows) == 17 and da["format"] == "ntds-baseline"
    assert da["counts"]["flows"] == len(scorable) < 17  # handshakes and unanswered flows are not fitted
    assert sum(r["count"] for r in da["ranking"]) == 17  # but every flow counts in the ranking


def test_score_a_capture_and_its_csv_alike(tmp_path, fixtures_dir):
    csv = tmp_path / "flows.csv"
    run("ntds-sensor", "features", SAMPLE, "-o", csv)
    base = tmp_path / "b.json"
    run("ntds-aggregator", "baseline", "build", csv, "-o", base, "--min-count", "2", "--method", "pseudo-sigma")
    from_pcap = run("ntds-sensor", "score", SAMPLE, "--baseline", base, "--all")
    from_csv = run("ntds-sensor", "score", csv, "--baseline", base, "--all")
    assert from_pcap.returncode == 0 and from_csv.returncode == 0, from_pcap.stderr + from_csv.stderr
    pa = [json.loads(line) for line in from_pcap.stdout.splitlines()]
    pb = [json.loads(line) for line in from_csv.stdout.splitlines()]
    pa, pb = [a for a in pa if a["kind"] == "flow"], [a for a in pb if a["kind"] == "flow"]
    assert len(pa) == len(pb) == 12  # every scorable flow, tier 0 up
    for x, y in zip(pa, pb):
        for k in ("first_seen", "last_seen"):  # a flow file's Timestamp has whole seconds
            x.pop(k), y.pop(k)
            for f, g in zip(x["flows"], y["flows"]):  # the flows behind the alert too
                f.pop(k), g.pop(k)
        for f, g in zip(x["flows"], y["flows"]):  # the 87 columns hold no IP header bytes: a flow file's are less
            assert f.pop("bytes") >= g.pop("bytes")
            if g["protocol"] == 0:  # the unicauca profile's Protocol column: 0 beyond TCP and UDP
                assert f.pop("protocol") not in (6, 17) and g.pop("protocol") == 0
        assert x == y and len(x["flows"]) == 1
    assert {a["baseline"] for a in pa} == {"application", "all-traffic"}
    assert all(0 <= a["tier"] <= 5 and a["explanation"] for a in pa)


def test_min_tier_filters_alerts(tmp_path, fixtures_dir):
    base = tmp_path / "b.json"
    run("ntds-aggregator", "baseline", "build", SAMPLE, "-o", base, "--min-count", "2")
    every = [
        json.loads(x) for x in run("ntds-sensor", "score", SAMPLE, "--baseline", base, "--all").stdout.splitlines()
    ]
    out = tmp_path / "alerts.jsonl"
    assert run("ntds-sensor", "score", SAMPLE, "--baseline", base, "--min-tier", "1", "-o", out).returncode == 0
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert kept == [a for a in every if a["tier"] >= 1]


def test_offsite_only_keeps_flows_with_one_local_end(tmp_path, fixtures_dir):
    base = tmp_path / "b.json"
    # the sample's DNS and NTP servers are local (10.1.0.x); web, SSH and ICMP go to 93.184.216.34
    p = run("ntds-aggregator", "baseline", "build", SAMPLE, "-o", base, "--min-count", "1", "--offsite-only")
    assert p.returncode == 0, p.stderr
    doc = json.loads(base.read_text())
    assert sum(r["count"] for r in doc["ranking"]) == 12 and doc["flows_read"] == 17
    assert 0 < doc["counts"]["flows"] < 12  # of those, the scorable ones are fitted
    assert "NTP" not in doc["applications"]


def test_errors_are_one_line(tmp_path, fixtures_dir):
    (tmp_path / "bad.json").write_text("{")
    for tool, args, words in (
        ("ntds-sensor", ["score", SAMPLE, "--baseline", tmp_path / "bad.json"], ["invalid JSON"]),
        ("ntds-sensor", ["score", SAMPLE, "--baseline", tmp_path / "none.json"], ["no such baseline"]),
        ("ntds-aggregator", ["baseline", "build", tmp_path / "x.csv", "-o", tmp_path / "o.json"], ["no such file"]),
        ("ntds-aggregator", ["baseline", "build", tmp_path / "x.txt", "-o", tmp_path / "o.json"], ["unknown input"]),
        (
            "ntds-aggregator",
            ["baseline", "build", SAMPLE, "-o", tmp_path / "o.json", "--local-net", "nope"],
            ["not an address or network"],
        ),
    ):
        p = run(tool, *args)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert all(w in lines[0] for w in words), lines[0]


def test_csv_of_other_columns_is_refused(tmp_path):
    f = tmp_path / "other.csv"
    f.write_text("a,b\n1,2\n")
    p = run("ntds-aggregator", "baseline", "build", f, "-o", tmp_path / "o.json")
    assert p.returncode == 2 and "not a flow file of the 87 columns" in p.stderr


def test_score_summary_counts_tiers_and_lists_the_rarest(tmp_path, fixtures_dir):
    base = tmp_path / "b.json"
    run("ntds-aggregator", "baseline", "build", SAMPLE, "-o", base, "--min-count", "2")
    p = run("ntds-sensor", "score", SAMPLE, "--baseline", base, "--summary", "--min-tier", "5")
    assert p.returncode == 0, p.stderr
    every = [
        json.loads(x) for x in run("ntds-sensor", "score", SAMPLE, "--baseline", base, "--all").stdout.splitlines()
    ]
    flows = [a for a in every if a["kind"] == "flow"]
    lines = p.stderr.splitlines()
    assert lines[0] == f"{len(flows)} flows scored against the baseline"
    for k in range(6):
        assert f"tier {k} (" in lines[1 + k] and lines[1 + k].endswith(f": {sum(a['tier'] == k for a in flows)}")
    assert lines[7].startswith("host-level findings before grouping: ")
    written = [json.loads(x) for x in p.stdout.splitlines()]
    # grouped: every tier-5 flow is in some alert's count
    assert sum(a["count"] for a in written if a["kind"] == "flow") == sum(a["tier"] == 5 for a in flows)
    assert all(a["tier"] >= 5 for a in written)
    strongest = lines[lines.index(f"{len(written)} alerts written; the strongest:") + 1 :]
    assert len(strongest) == min(len(written), 10)
    if written:
        best = max(written, key=lambda a: (a["tier"], a["score"]))
        assert best["signature"] in strongest[0]


def test_score_output_is_a_valid_wire_alert_body(tmp_path, fixtures_dir):
    from ntds.wire.schema import Message, decode, encode, now_iso

    base = tmp_path / "b.json"
    run("ntds-aggregator", "baseline", "build", SAMPLE, "-o", base, "--min-count", "2")
    for line in run("ntds-sensor", "score", SAMPLE, "--baseline", base, "--all").stdout.splitlines():
        body = json.loads(line)
        assert decode(encode(Message("alert", "tap-01", 1, now_iso(), body))).body == body


def test_baseline_diff_names_new_gone_and_shifted_entries(tmp_path):
    """A candidate made from the starter baseline by hand: one entry removed, one added (a copy under a new
    name), one axis's median moved tenfold on log1p scale. The diff must report exactly those."""
    import math

    start = Path(__file__).resolve().parent.parent / "config" / "baseline.json"
    doc = json.loads(start.read_text())
    apps = doc["applications"]
    names = [n for n in apps if not n.startswith("*")]
    gone, moved = names[0], names[1]
    apps["NEWAPP"] = json.loads(json.dumps(apps[gone]))
    del apps[gone]
    axis = doc["axes"].index("duration")
    before = math.expm1(apps[moved]["model"]["log_median"][axis])
    apps[moved]["model"]["log_median"][axis] = math.log1p(10 * before)
    doc["built"] = "2026-11-24T06:00:00Z"
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(doc))
    p = run("ntds-aggregator", "baseline", "diff", start, cand, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["new"] == ["NEWAPP"] and d["gone"] == [gone]
    shifted = {c["entry"]: c["shifted"] for c in d["changed"] if c["shifted"]}
    assert shifted == {moved: ["duration"]}
    (x,) = [a for c in d["changed"] if c["entry"] == moved for a in c["axes"] if a["axis"] == "duration"]
    assert abs(x["after"] - 10 * before) < 1e-6 * max(1, before) and abs(x["before"] - before) < 1e-6 * max(1, before)
    words = run("ntds-aggregator", "baseline", "diff", start, cand).stdout
    assert f"gone entries (1): {gone}" in words and f"  {moved} (" in words and "duration" in words
    bad = run("ntds-aggregator", "baseline", "diff", start, tmp_path / "missing.json")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_baseline_diff_counts_what_each_baseline_would_have_raised(tmp_path):
    """`diff --flows`: the tier counts each baseline gives the same flows equal `ntds-sensor score --all` with
    that baseline (the sensor's own Detection, a separate path)."""
    root = Path(__file__).resolve().parent.parent
    start = root / "config" / "baseline.json"
    doc = json.loads(start.read_text())
    for entry in doc["applications"].values():  # a stricter candidate: every threshold lowered
        entry["tiers"] = [t * 0.8 for t in entry["tiers"]]
    doc["built"] = "2026-11-24T07:00:00Z"
    cand = tmp_path / "strict.json"
    cand.write_text(json.dumps(doc))
    sample = root / "pcaps" / "sample.pcap"
    p = run("ntds-aggregator", "baseline", "diff", start, cand, "--flows", sample, "--json")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)["flows"]
    for which, baseline in (("current", start), ("candidate", cand)):
        out = tmp_path / f"{which}.jsonl"
        s = run("ntds-sensor", "score", sample, "--baseline", baseline, "--all", "-o", out)
        assert s.returncode == 0, s.stderr
        tiers = [a["tier"] for a in map(json.loads, out.read_text().splitlines()) if a["kind"] == "flow"]
        assert got[which]["scored"] == len(tiers)
        assert got[which]["at_least_tier"] == [sum(t >= k for t in tiers) for k in range(1, 6)]
    assert got["candidate"]["at_least_tier"][0] > got["current"]["at_least_tier"][0]  # stricter: more flagged
