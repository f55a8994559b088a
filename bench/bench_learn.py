"""Baselines that learn: what the statistics cost on the wire, how long `learn` takes, how well it calibrates.

Ten sensors, five weeks of hourly statistics each, from the traffic mix of
bench_scoring.py (six applications on their usual ports). Each sensor scores
its flows with a starter baseline built on a small separate sample (as a
fresh site would), counts them into `stats` messages (sensor.populations),
which go through the wire codec into a real store and are exported to the
Parquet archive. Then:

- size: bytes of stats messages per sensor-hour and per (application, port
  class) group-hour, and per scored flow;
- `learn` time over the archive (10 sensors x 4 weeks learned, the fifth held
  out; sensors combined by --fleet, median by default, and every check, the
  leave-one-sensor-out check's ten extra candidates included), median of --runs
  runs, against `baseline build` on the same four weeks' flows (the comparison
  in the same run);
- calibration on the held-out week's actual flows (not the samples): the share
  of flows at tier k or above over 1 in 10**k, for the learned and the built
  baseline; and the learned baseline's documented checks.

    python bench/bench_learn.py [--sensors 10] [--weeks 5] [--flows-per-hour 400] [--runs 3] [--fleet median]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import APPS, flows  # noqa: E402

from aggregator.archive import Archive  # noqa: E402
from aggregator.baseline_learn import learn  # noqa: E402
from aggregator.store import Store  # noqa: E402
from ntds.detect.baseline import Baseline, build, service_keys  # noqa: E402
from ntds.detect.detection import Scored  # noqa: E402
from ntds.wire import schema as wire  # noqa: E402
from sensor.populations import PopulationStats  # noqa: E402

PORTS = {"SSL": (6, 443), "GOOGLE": (6, 443), "YOUTUBE": (6, 443), "DNS": (17, 53), "HTTP": (6, 80), "SSDP": (17, 1900)}
SHARE = {"SSL": 0.35, "GOOGLE": 0.2, "YOUTUBE": 0.05, "DNS": 0.3, "HTTP": 0.07, "SSDP": 0.03}
START = datetime(2026, 10, 19, tzinfo=UTC)  # a Monday


def hour_of_traffic(rng, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names = list(SHARE)
    apps = rng.choice(names, n, p=[SHARE[a] for a in names])
    M = np.empty((n, 9))
    for a in names:
        mask = apps == a
        if mask.any():
            M[mask] = flows(rng, APPS[a], int(mask.sum()))
    proto = np.array([PORTS[a][0] for a in apps])
    port = np.array([PORTS[a][1] for a in apps])
    return apps, M, service_keys(proto, np.full(n, 40000), port)


def simulate(root: Path, sensors: int, weeks: int, per_hour: int, rng) -> dict:
    s_apps, s_metrics, s_classes = hour_of_traffic(rng, 5000)
    starter = Baseline(build(s_apps, s_metrics, classes=s_classes, min_count=100))
    store = Store(root / "store.db")
    archive = Archive(root / "archive")
    hours = weeks * 7 * 24
    train: list[tuple] = []
    held: list[tuple] = []
    frames = stats_bytes = groups = scored = 0
    for s in range(sensors):
        collector = PopulationStats(3600, seed=s)
        seq = 0
        messages = []
        for h in range(hours):
            t0 = int((START + timedelta(hours=h)).timestamp() * 1000)
            n = rng.poisson(per_hour * (0.4 + 0.6 * ((h % 24) in range(8, 20))))
            apps, M, classes = hour_of_traffic(rng, n)
            tiers = starter.score(apps, M, classes).raw_tier
            start = t0 + np.sort(rng.integers(0, 3_600_000, n))
            collector.add(Scored(start, apps, classes, M, tiers))
            scored += n
            (held if h >= hours - 7 * 24 else train).append((apps, M, classes))
            for body in collector.close(t0 + 3_600_000 * 3, starter.id):
                seq += 1
                frame = wire.encode(wire.Message("stats", f"tap-{s:02d}", seq, wire.now_iso(), body, f"spool{s}"))
                frames += 1
                stats_bytes += len(frame)
                groups += len(body["groups"])
                messages.append(wire.decode(frame))
        for body in collector.close(None, starter.id):
            seq += 1
            frame = wire.encode(wire.Message("stats", f"tap-{s:02d}", seq, wire.now_iso(), body, f"spool{s}"))
            frames, stats_bytes, groups = frames + 1, stats_bytes + len(frame), groups + len(body["groups"])
            messages.append(wire.decode(frame))
        store.store(messages)
    archive.export(store, today=date.today())
    store.close()
    return {
        "archive": archive,
        "train": train,
        "held": held,
        "last_day": (START + timedelta(hours=hours - 1)).date(),
        "size": {
            "messages": frames,
            "bytes": stats_bytes,
            "bytes_per_sensor_hour": stats_bytes / (sensors * hours),
            "bytes_per_group_hour": stats_bytes / groups,
            "bytes_per_scored_flow": stats_bytes / scored,
            "scored_flows": scored,
        },
    }


def concat(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate([p[0] for p in parts]), np.vstack([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))  # fmt: skip


def calibration(doc: dict, held) -> dict[str, float]:
    apps, M, classes = held
    tier = Baseline(doc).score(apps, M, classes).tier
    return {str(k): float((tier >= k).mean() * 10**k) for k in (1, 2, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=10)
    ap.add_argument("--weeks", type=int, default=5, help="weeks simulated; the last is held out")
    ap.add_argument("--flows-per-hour", type=int, default=400, help="scored flows per sensor-hour at the day's peak")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fleet", choices=("median", "pooled"), default="median", help="how sensors combine")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        sim = simulate(Path(tmp), args.sensors, args.weeks, args.flows_per_hour, rng)
        simulate_s = time.perf_counter() - t
        train, held = concat(sim["train"]), concat(sim["held"])
        learn_s, build_s = [], []
        doc = checks = built = None
        for _ in range(args.runs):
            t = time.perf_counter()
            doc, checks, _ = learn(sim["archive"], weeks=args.weeks, until=sim["last_day"], sensors=None,
                                   min_count=100, feature_profile="unicauca", active=None,
                                   fleet=args.fleet)  # fmt: skip
            learn_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            built = build(train[0], train[1], classes=train[2], min_count=100)
            build_s.append(time.perf_counter() - t)
    result = {
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "command": " ".join(sys.argv),
        "sensors": args.sensors,
        "fleet": args.fleet,
        "weeks_learned": args.weeks - 1,
        "training_flows": len(train[0]),
        "held_out_flows": len(held[0]),
        "simulate_s": simulate_s,
        "size": sim["size"],
        "learn_s_median": statistics.median(learn_s),
        "build_s_median": statistics.median(build_s),
        "learn_to_build_ratio": statistics.median(learn_s) / statistics.median(build_s),
        "entries": sorted(doc["applications"]),
        "held_out_rate_over_nominal": {"learned": calibration(doc, held), "built": calibration(built, held)},
        "checks": checks,
    }
    print(json.dumps(result, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
