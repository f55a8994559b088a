"""Detection: planted attacks found, benign alerts per 10,000 flows, calibration, and what detection costs.

Two generated weeks of the same campus (tests/detection_week.py; different seeds):
- a training week without attacks: the baseline is built from it
  (`ntds-aggregator baseline build`'s own collection and fitting);
- a test week with every planted attack, each from its own host, metered by
  the sensor's meter and judged by the sensor's `Detection` at the default
  settings (minimum tier 3, default detectors and grouping).

Reported per scenario: detected (an alert of the right kind naming the
attacking host) and the time to detect (from the attack's first packet to the
data time the alert was sent at, grouping wait included). Benign alerts: every
alert that names no attacking host, per 10,000 benign flows and per day, by
kind. Calibration of the per-flow tiers on the held-out week: the share of
scored benign flows at each tier or above against the nominal 1 in 10**k.

Real captures (`../shared/pcaps`, skipped when absent), with the starter
baseline at the defaults, as `ntds-sensor score` judges them: per kind, the
recall on the labelled attack captures (`attacks/labels.tsv`: an alert of the
labelled kind naming the responsible host) and the alerts of another
host-level kind naming that host (the wrong story); and the host-level alerts
per 10,000 flows on the benign captures (every other capture, less the five
that hold attacks, plus the labelled benign control).

Per kind, beside each other: recall on the campus week and on the labelled
real captures, false alerts per 10,000 benign flows (campus week and benign
shared captures together) and the detector's cost per flow (`per_kind`).

Speed: `ntds-sensor replay` of the test week to a real aggregator on
127.0.0.1, with the default detection and with every host-level detector
disabled and grouping off (per-flow scoring stays), alternating, --runs each;
and each host-level detector alone over the test week's flows (microseconds
per flow, learn and score).

    python bench/bench_detection.py [--hosts 100] [--runs 3] [--json out.json] [--captures-only | --cost-only]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from loopback import free_port  # noqa: E402

from aggregator.baseline_build import collect, local_networks  # noqa: E402
from ntds.detect import baseline as bl  # noqa: E402
from ntds.detect.detection import Detection  # noqa: E402
from ntds.detect.hosts import DETECTORS  # noqa: E402
from ntds.flows.meter import FlowMeter  # noqa: E402
from tests import detection_week as campus  # noqa: E402

SHARED = ROOT.parent / "shared" / "pcaps"
ATTACKS_IN_SHARED = {"synscan.pcap", "dns-tunnel-iodine.pcap", "dns_exfiltration.pcap", "bad-dns-traffic.pcap",
                     "icmp-tunnel.pcap"}  # fmt: skip
"""Captures of ../shared/pcaps that hold attacks (README, Detection): not benign."""


def build_baseline(path: Path, out: Path) -> dict:
    got = collect([path], "unicauca", local_networks(None), False, False)
    doc = got.build(min_count=100, inputs=[str(path)])
    bl.save(doc, out)
    return doc


def score_capture(path: Path, baseline: bl.Baseline) -> tuple[int, list[dict]]:
    """(flows, alerts) of one capture at the default settings, as `ntds-sensor score` judges it."""
    detection = Detection(baseline)
    meter = FlowMeter("unicauca", single_packet_flows=True, on_warning=lambda m: None)
    alerts, batch, flows = [], [], 0
    for record in meter.read([path]):
        batch.append(record)
        flows += 1
        if len(batch) == 512:
            alerts += detection.process(batch).alerts
            batch = []
    return flows, alerts + detection.process(batch).alerts + detection.close()


def real_captures(baseline_path: Path) -> dict:
    """Recall per kind on the labelled attack captures, wrong stories, and benign host-level alerts per 10,000 flows."""
    labels_path = SHARED / "attacks" / "labels.tsv"
    if not labels_path.exists():
        return {"skipped": f"{SHARED} is absent"}
    baseline = bl.Baseline.load(baseline_path)
    with open(labels_path, newline="") as fh:
        labels = list(csv.DictReader(fh, delimiter="\t"))
    rows, benign_paths = [], []
    for row in labels:
        path = SHARED / "attacks" / row["file"]
        if row["kind"] == "benign":
            benign_paths.append(path)
            continue
        _, alerts = score_capture(path, baseline)
        host = row["responsible_hosts"]
        kinds = sorted({a["kind"] for a in alerts if a["src_ip"] == host and a["kind"] not in ("flow", "overflow")})
        rows.append({"file": row["file"], "kind": row["kind"], "host": host, "detected": row["kind"] in kinds,
                     "wrong_kinds": [k for k in kinds if k != row["kind"]]})  # fmt: skip
    recall = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        recall[kind] = {"detected": sum(r["detected"] for r in mine), "captures": len(mine),
                        "wrong_story": sum(bool(r["wrong_kinds"]) for r in mine)}  # fmt: skip
    for folder in (SHARED, SHARED / "ndpi"):
        benign_paths += sorted(p for p in folder.iterdir() if p.suffix in (".pcap", ".pcapng")
                               and p.name not in ATTACKS_IN_SHARED)  # fmt: skip
    flows, by_kind, unreadable, named = 0, Counter(), 0, []
    for path in benign_paths:
        try:
            n, alerts = score_capture(path, baseline)
        except Exception:  # fuzzed and corrupt captures: the meter's own tests cover them
            unreadable += 1
            continue
        flows += n
        for a in alerts:
            if a["kind"] not in ("flow", "overflow"):
                by_kind[a["kind"]] += 1
                named.append(f"{path.name}: {a['kind']} {a['src_ip']}")
    total = sum(by_kind.values())
    return {
        "captures": rows,
        "recall_by_kind": recall,
        "benign_captures": len(benign_paths) - unreadable,
        "benign_unreadable": unreadable,
        "benign_flows": flows,
        "benign_host_alerts": total,
        "benign_host_alerts_by_kind": dict(by_kind),
        "benign_host_alerts_per_10k_flows": round(total / max(flows, 1) * 1e4, 3),
        "benign_named": named[:20],
    }


def detector_cost(traffic: list, runs: int = 1) -> dict:
    """Microseconds per flow of each host-level detector alone (learn and score), over the given flows: the
    median of `runs`, the detectors taking turns within each run."""
    times: dict[str, list[float]] = {kind: [] for kind in DETECTORS}
    for _ in range(runs):
        for kind, cls in DETECTORS.items():
            d = cls()
            t0 = time.perf_counter()
            for t in traffic:
                d.findings(t)
            times[kind].append((time.perf_counter() - t0) / max(len(traffic), 1) * 1e6)
    return {kind: round(statistics.median(v), 2) for kind, v in times.items()}


def cost_only(hosts: int, runs: int) -> dict:
    """The detectors' cost alone on the test week (no judging, no replay): for comparing two versions."""
    work = Path(tempfile.mkdtemp(prefix="bench-detection-cost-"))
    test, _ = campus.week(work / "test.pcap", hosts=hosts, seed=12)
    traffic = [r.traffic for r in FlowMeter("unicauca", single_packet_flows=True).read([test])]
    return {"flows": len(traffic), "runs": runs, "detector_us_per_flow": detector_cost(traffic, runs)}


def judge(path: Path, baseline: Path) -> dict:
    """Meter and judge the test week; every alert with the data time it was sent at."""
    detection = Detection(bl.Baseline.load(baseline))
    meter = FlowMeter("unicauca", single_packet_flows=True)
    sent: list[tuple[int, dict]] = []
    flows = Counter()
    tiers = Counter()
    attackers = {a.host for a in campus.ATTACKS}
    first_ms = last_ms = None
    batch = []

    traffic = []

    def run(batch):
        traffic.extend(r.traffic for r in batch)
        judged = detection.process(batch)
        sent.extend(zip(judged.due_ms, judged.alerts))
        for r, tier in zip(batch, judged.tiers):
            benign = r.traffic.src_ip not in attackers and r.traffic.dst_ip not in attackers
            flows["benign" if benign else "attack"] += 1
            if tier is not None and benign:
                tiers[tier] += 1

    for record in meter.read([path]):
        t = record.traffic.start_ms
        first_ms = t if first_ms is None else min(first_ms, t)
        last_ms = t if last_ms is None else max(last_ms, t)
        batch.append(record)
        if len(batch) == 512:
            run(batch)
            batch = []
    run(batch)
    sent.extend((detection.clock_ms, a) for a in detection.close())
    return {"sent": sent, "flows": flows, "tiers": tiers, "days": (last_ms - first_ms) / 86_400_000,
            "findings": dict(detection.stats.findings), "evicted": detection.evicted,
            "detector_us_per_flow": detector_cost(traffic)}  # fmt: skip


def score(result: dict, starts: dict) -> dict:
    attackers = {a.host for a in campus.ATTACKS}
    rows = []
    for attack in campus.ATTACKS:
        hits = [(t, a) for t, a in result["sent"] if a["kind"] == attack.kind and a["src_ip"] == attack.host]
        t0 = starts[attack.name] * 1000
        rows.append({
            "scenario": attack.name, "kind": attack.kind, "host": attack.host, "detected": bool(hits),
            "time_to_detect_s": round((min(t for t, _ in hits) - t0) / 1000, 1) if hits else None,
            "tier": max(a["tier"] for _, a in hits) if hits else None,
        })  # fmt: skip
    benign = [a for _, a in result["sent"] if a["src_ip"] not in attackers and a["dst_ip"] not in attackers]
    n = result["flows"]["benign"]
    scored = sum(result["tiers"].values())
    calibration = []
    for k in range(1, 6):
        at_or_above = sum(v for t, v in result["tiers"].items() if t >= k)
        calibration.append({"tier": k, "nominal": 10.0**-k, "observed": at_or_above / max(scored, 1),
                            "flows": at_or_above})  # fmt: skip
    return {
        "scenarios": rows,
        "benign_flows": n,
        "attack_flows": result["flows"]["attack"],
        "days": round(result["days"], 2),
        "benign_alerts": len(benign),
        "benign_alerts_by_kind": dict(Counter(a["kind"] for a in benign)),
        "benign_alerts_per_10k_flows": round(len(benign) / max(n, 1) * 1e4, 3),
        "benign_alerts_per_day": round(len(benign) / max(result["days"], 1e-9), 2),
        "benign_examples": [a["signature"] for a in benign[:10]],
        "scored_benign_flows": scored,
        "calibration": calibration,
        "findings_before_grouping": result["findings"],
        "detector_keys_evicted": result["evicted"],
        "detector_us_per_flow": result["detector_us_per_flow"],
    }


def per_kind(result: dict, captures: dict) -> dict:
    """For each host-level kind: recall on the campus week's planted scenarios and on the labelled real attack
    captures, false alerts per 10,000 benign flows (the campus week's and the benign shared captures'), and the
    detector's cost per flow."""
    benign_flows = result["benign_flows"] + captures.get("benign_flows", 0)
    out = {}
    for kind in DETECTORS:
        planted = [r for r in result["scenarios"] if r["kind"] == kind]
        real = captures.get("recall_by_kind", {}).get(kind, {"detected": 0, "captures": 0})
        false = result["benign_alerts_by_kind"].get(kind, 0) + captures.get("benign_host_alerts_by_kind", {}).get(
            kind, 0)  # fmt: skip
        out[kind] = {
            "campus_recall": f"{sum(r['detected'] for r in planted)}/{len(planted)}",
            "real_recall": f"{real['detected']}/{real['captures']}",
            "false_alerts": false,
            "false_per_10k_benign_flows": round(false / max(benign_flows, 1) * 1e4, 3),
            "us_per_flow": result["detector_us_per_flow"].get(kind),
        }
    return out


def replay_time(capture: Path, baseline: Path, work: Path, detection_on: bool) -> float:
    """Wall time of `ntds-sensor replay` of the capture to a fresh aggregator on loopback."""
    port = free_port()
    run = Path(tempfile.mkdtemp(dir=work))
    (run / "agg.yaml").write_text(f"endpoint: tcp://127.0.0.1:{port}\nstore: {run / 'store.db'}\n")
    off = {} if detection_on else {
        "detectors": {k: {"enabled": False} for k in DETECTORS},
        "alert_grouping": {"group_wait_s": 0, "group_interval_s": 0},
    }  # fmt: skip
    values = {"sensor_id": "bench", "baseline": str(baseline), "spool_dir": str(run / "spool"),
              "aggregator": f"tcp://127.0.0.1:{port}", "local_networks": ["10.20.0.0/16"]} | off  # fmt: skip
    (run / "sensor.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    agg = subprocess.Popen([str(BIN / "ntds-aggregator"), "serve", "--config", str(run / "agg.yaml"), "--insecure"],
                           stderr=(run / "agg.log").open("w"))  # fmt: skip
    try:
        end = time.monotonic() + 30
        while "listening on" not in (run / "agg.log").read_text() and time.monotonic() < end:
            time.sleep(0.1)
        t0 = time.perf_counter()
        p = subprocess.run([str(BIN / "ntds-sensor"), "replay", str(capture), "--config", str(run / "sensor.yaml"),
                            "--insecure"], capture_output=True, text=True)  # fmt: skip
        elapsed = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"replay failed: {p.stderr[-2000:]}")
        return elapsed
    finally:
        agg.terminate()
        agg.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--captures-only", action="store_true", help="only the real captures of ../shared/pcaps")
    ap.add_argument("--cost-only", action="store_true", help="only each detector's cost per flow, median of --runs")
    args = ap.parse_args()
    if args.cost_only:
        print(json.dumps(cost_only(args.hosts, args.runs), indent=1))
        return
    captures = real_captures(ROOT / "config" / "baseline.json")
    if args.captures_only:
        print(json.dumps(captures, indent=1))
        if args.json:
            args.json.write_text(json.dumps(captures, indent=1))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-detection-"))
    t = time.perf_counter()
    train, _ = campus.week(work / "train.pcap", hosts=args.hosts, seed=11, attacks=False)
    test, starts = campus.week(work / "test.pcap", hosts=args.hosts, seed=12)
    print(f"generated two weeks in {time.perf_counter() - t:.0f} s ({test.stat().st_size / 1e6:.0f} MB test week)",
          file=sys.stderr)  # fmt: skip
    baseline = work / "baseline.json"
    doc = build_baseline(train, baseline)
    entries = {name: (e["count"], e["max_tier"]) for name, e in doc["applications"].items()}
    result = score(judge(test, baseline), starts)
    result["baseline_entries"] = entries
    result["real_captures"] = captures
    result["per_kind"] = per_kind(result, captures)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    if not args.no_speed:
        on, off = [], []
        for _ in range(args.runs):
            off.append(replay_time(test, baseline, work, False))
            on.append(replay_time(test, baseline, work, True))
        result["replay_s"] = {"detection_on": on, "detection_off": off,
                              "median_on": statistics.median(on), "median_off": statistics.median(off),
                              "overhead": statistics.median(on) / statistics.median(off) - 1}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
