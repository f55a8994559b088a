"""Weekly report time: one week of 10 sensors with 60 s summaries and 100,000 alerts.

Setup (timed too, reported separately): 100,800 summaries and 100,000 alerts,
built as wire messages (decoded by the strict codec, as the receiver does),
stored in a SQLite store, exported to the Parquet archive. Each summary holds
4 traffic classes, 6-10 applications, 3 unanswered kinds, 2-5 peer pairs and
3-6 countries, so the archive has about 2.5 million rows.

Then `compute` + `write` (report.json, CSVs, HTML with its charts) for week
2026-W47, alternating in-process (Dask's threaded scheduler) and on a
LocalCluster of two worker processes (started once, outside the timing),
5 runs each, median.

    python bench/bench_report.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow.parquet as pq  # noqa: E402

from aggregator.archive import Archive  # noqa: E402
from aggregator.report.page import write  # noqa: E402
from aggregator.report.weekly import Week, compute  # noqa: E402
from aggregator.store import Store  # noqa: E402
from ntds.wire import schema as wire  # noqa: E402

SENSORS = 10
WEEK = Week.parse("2026-W47")
APPS = ["TLS", "QUIC", "DNS", "HTTP", "SSH", "NTP", "SSDP", "MDNS", "YouTube", "Netflix", "SMB", "Unknown"]
COUNTRIES = ["US", "GB", "CO", "DE", "FR", "BR", "JP", "ZZ"]
ZERO = {"flows": 0, "packets_up": 0, "packets_down": 0, "bytes_up": 0, "bytes_down": 0}


def summary(rng: random.Random, t: datetime) -> dict:
    def directional():
        f = rng.randint(1, 400)
        return {
            "flows": f,
            "packets_up": f * 9,
            "packets_down": f * 12,
            "bytes_up": f * rng.randint(500, 5000),
            "bytes_down": f * rng.randint(2000, 90000),
        }

    traffic = {c: directional() for c in ("external", "local_service", "peer_to_peer")} | {"other": dict(ZERO)}
    apps = [
        {
            "application": a,
            "flows": (n := rng.randint(1, 300)),
            "bytes_up": n * 800,
            "bytes_down": n * 9000,
            "tiers": [n, rng.randint(0, 9), rng.randint(0, 3), rng.randint(0, 1), 0, 0],
        }
        for a in rng.sample(APPS, rng.randint(6, 10))
    ]
    hosts = [f"10.1.{i // 250}.{i % 250 + 2}" for i in range(40)]
    pairs = []
    for _ in range(rng.randint(2, 5)):
        a, b = sorted(rng.sample(hosts, 2))
        if any(p["a"] == a and p["b"] == b for p in pairs):
            continue
        f = rng.randint(1, 20)
        one = rng.randint(0, f)
        pairs.append(
            {"a": a, "b": b, "flows": f, "two_way": f - one, "one_way": one, "bytes_ab": f * 3000, "bytes_ba": f * 900}
        )
    countries = [
        {"country": c, "flows": rng.randint(1, 200), "bytes_in": rng.randint(1, 10**7),
         "bytes_out": rng.randint(1, 10**6), "max_tier": rng.randint(0, 3)}
        for c in rng.sample(COUNTRIES, rng.randint(3, 6))
    ]  # fmt: skip
    flows = sum(v["flows"] for v in traffic.values())
    return {
        "interval_start": t.isoformat().replace("+00:00", "Z"),
        "interval_s": 60,
        "flows": flows,
        "packets": flows * 21,
        "bytes": sum(v["bytes_up"] + v["bytes_down"] for v in traffic.values()),
        "traffic": traffic,
        "applications": apps,
        "unanswered": {k: {"flows": rng.randint(0, 9), "bytes": rng.randint(0, 900)} for k in wire.UNANSWERED_KINDS},
        "peer_pairs": pairs,
        "peer_pairs_omitted": {"pairs": 0, "flows": 0, "bytes": 0},
        "countries": countries,
        "capture": {"packets_seen": flows * 21, "packets_dropped": 0, "flows_active": 100},
    }


def alert(rng: random.Random, t: datetime) -> dict:
    body = dict(wire.EXAMPLES["alert"])
    body["time"] = t.isoformat().replace("+00:00", "Z")
    body["src_port"] = rng.randint(1024, 65535)
    body["score"] = round(rng.uniform(1, 12), 3)
    body["tier"] = rng.choice([1, 1, 1, 2, 2, 3, 4, 5])
    return body


def build(root: Path) -> dict:
    rng = random.Random(2026)
    store = Store(root / "store.db")
    start = datetime.combine(WEEK.first, datetime.min.time(), UTC)
    t0 = time.perf_counter()
    alerts_per_sensor = 100_000 // SENSORS
    for s in range(SENSORS):
        sensor = f"tap-{s:02d}"
        messages = []
        for i in range(7 * 1440):
            body = summary(rng, start + timedelta(minutes=i))
            messages.append(wire.Message("summary", sensor, len(messages) + 1, wire.now_iso(), body))
        for _ in range(alerts_per_sensor):
            t = start + timedelta(seconds=rng.uniform(0, 7 * 86400))
            messages.append(wire.Message("alert", sensor, len(messages) + 1, wire.now_iso(), alert(rng, t)))
        decoded = [wire.decode(wire.encode(m)) for m in messages]
        for k in range(0, len(decoded), 2000):
            store.store(decoded[k : k + 2000])
        print(f"  {sensor}: {len(decoded):,} messages stored", file=sys.stderr)
    stored = time.perf_counter() - t0
    archive = Archive(root / "archive")
    t0 = time.perf_counter()
    n = archive.export(store, today=WEEK.first + timedelta(days=8))
    exported = time.perf_counter() - t0
    store.close()
    rows = sum(
        pq.read_metadata(f).num_rows
        for table in ("summaries", "traffic", "applications", "unanswered", "peer_pairs", "countries", "alerts")
        for f in archive.files(table, WEEK.first, WEEK.first + timedelta(days=6))
    )
    return {"messages": n, "store_s": stored, "export_s": exported, "rows": rows, "archive": archive}


def one_report(archive: Archive, out: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    report = compute(archive, WEEK)
    write(report, out, "CO")
    return time.perf_counter() - t0, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="ntds-bench-report-") as tmp:
        root = Path(tmp)
        print("building the archive ...", file=sys.stderr)
        setup = build(root)
        archive = setup["archive"]
        one_report(archive, root / "warm")  # imports, fonts, world outlines
        local, cluster_times = [], []
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1") as cluster:
            for i in range(args.runs):
                took, first = one_report(archive, root / f"local-{i}")
                local.append(took)
                with Client(cluster):
                    took, second = one_report(archive, root / f"cluster-{i}")
                cluster_times.append(took)
                assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
                print(
                    f"  run {i + 1}: in-process {local[-1]:.2f} s, cluster {cluster_times[-1]:.2f} s", file=sys.stderr
                )
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "messages": setup["messages"],
            "archive_rows": setup["rows"],
            "store_s": round(setup["store_s"], 1),
            "export_s": round(setup["export_s"], 1),
            "report_in_process_s": round(statistics.median(local), 2),
            "report_cluster_s": round(statistics.median(cluster_times), 2),
            "cluster_to_in_process": round(statistics.median(cluster_times) / statistics.median(local), 2),
            "runs": args.runs,
            "flows": first["overview"]["totals"]["flows"],
            "alerts": first["overview"]["totals"]["alerts"],
        }
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
