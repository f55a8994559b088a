"""Scoring: calibration of the rarity tiers, detection of injected anomalies, and speed.

A traffic mix is generated directly as flow records (per application: packets
each way, packet sizes, duration, activity drawn from per-application
distributions, then the nine metrics computed from them exactly as the meter
defines them). The baseline is built on 60% of it; on the other 40% the share of
flows reaching each tier is compared with 1/10**k. Injected anomalies: bulk
upload exfiltration over TLS, DNS tunnelling, a very long-lived flow, and an
SSDP/UDP amplification burst; the share of them reaching tier 3 or higher is
reported. Both scoring methods run on the same data.

    python bench/bench_scoring.py [--flows-per-app 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ntds.detect.baseline import METRICS, Baseline, build  # noqa: E402

# name: (fwd packets lognormal mu, sigma), (bwd/fwd ratio mu, sigma), fwd size, bwd size, duration µs (mu, sigma)
APPS = {
    "SSL": ((2.3, 0.8), (0.4, 0.5), (5.0, 0.6), (6.5, 0.5), (13.0, 1.6)),
    "GOOGLE": ((2.0, 0.7), (0.3, 0.4), (4.8, 0.5), (6.8, 0.4), (12.5, 1.5)),
    "YOUTUBE": ((3.5, 1.0), (1.2, 0.4), (4.0, 0.3), (7.1, 0.1), (15.0, 1.2)),
    "DNS": ((0.0, 0.2), (0.0, 0.1), (3.5, 0.3), (4.6, 0.4), (9.5, 1.0)),
    "HTTP": ((1.8, 0.7), (0.5, 0.5), (5.5, 0.5), (6.6, 0.6), (12.0, 1.5)),
    "SSDP": ((1.0, 0.5), (-2.0, 0.3), (5.0, 0.2), (5.5, 0.2), (14.0, 1.0)),
}


def flows(rng: np.random.Generator, spec, n: int) -> np.ndarray:
    """(n, 9) metrics of n generated flows of one application."""
    (fm, fs), (rm, rs), (sfm, sfs), (sbm, sbs), (dm, ds) = spec
    fwd = np.maximum(1, np.round(rng.lognormal(fm, fs, n))).astype(int)
    bwd = np.maximum(0, np.round(fwd * rng.lognormal(rm, rs, n))).astype(int)
    fsize = rng.lognormal(sfm, sfs, n)
    bsize = rng.lognormal(sbm, sbs, n)
    duration = np.round(rng.lognormal(dm, ds, n) / 1000) * 1000  # millisecond clock
    return metrics(fwd, bwd, fsize, bsize, duration, rng)


def metrics(fwd, bwd, fsize, bsize, duration, rng) -> np.ndarray:
    fbytes, bbytes = fwd * fsize, bwd * bsize
    n = fwd + bwd
    volume = fbytes + bbytes
    with np.errstate(divide="ignore", invalid="ignore"):
        flowrate = np.where(duration > 0, volume / (duration / 1e6), np.inf)
    avpktsz = volume / n
    dnuprat = bwd // fwd
    # spread of sizes within a flow: mixture of the two directions' means plus jitter
    pktlenvar = (fwd * bwd / np.maximum(n * (n - 1), 1)) * (fsize - bsize) ** 2 + (0.3 * avpktsz) ** 2
    actmean = np.where(duration > 5e6, duration * rng.uniform(0.05, 0.3, len(n)), 0)
    cols = {
        "flowrate": flowrate,
        "duration": duration,
        "volume": volume,
        "avpktsz": avpktsz,
        "dnuprat": dnuprat,
        "pktlenvar": pktlenvar,
        "fwdpktlen": fsize,
        "bwdpktlen": np.where(bwd > 0, bsize, 0.0),
        "actmean": actmean,
    }
    return np.column_stack([cols[m] for m in METRICS])


def anomalies(rng, n: int, strength: str = "strong") -> dict[str, tuple[str, np.ndarray]]:
    """Injected flows of four kinds; "moderate" ones are 10-50x smaller and harder to tell apart."""
    one = np.ones(n)
    m = strength == "moderate"
    ints = rng.integers
    return {
        # data pushed out over TLS: many large forward packets, few replies (200 MB; moderate 3-8 MB)
        "bulk upload over TLS": (
            "SSL",
            metrics(
                ints(2_000, 6_000, n) if m else ints(100_000, 200_000, n),
                ints(40, 120, n) if m else ints(2_000, 4_000, n),
                1400 * one,
                60 * one,
                rng.uniform(10e6, 60e6, n).round(-3) if m else rng.uniform(60e6, 110e6, n).round(-3),
                rng,
            ),
        ),
        # DNS tunnel: a run of near-full-size queries and answers on one 5-tuple (moderate: 20-60 pairs)
        "DNS tunnelling": (
            "DNS",
            metrics(
                ints(20, 60, n) if m else ints(300, 900, n),
                ints(20, 60, n) if m else ints(300, 900, n),
                230 * one,
                250 * one,
                rng.uniform(5e6, 30e6, n).round(-3) if m else rng.uniform(30e6, 110e6, n).round(-3),
                rng,
            ),
        ),
        # a connection held open with a trickle of data (119 s; moderate 30-60 s)
        "very long-lived flow": (
            "HTTP",
            metrics(
                ints(20, 40, n),
                ints(20, 40, n),
                80 * one,
                90 * one,
                rng.uniform(30e6, 60e6, n).round(-3) if m else 119_000_000 * one,
                rng,
            ),
        ),
        # one small query, a burst of large answers (200-600; moderate 10-30)
        "SSDP/UDP amplification burst": (
            "SSDP",
            metrics(
                one.astype(int),
                ints(10, 30, n) if m else ints(200, 600, n),
                90 * one,
                1400 * one,
                rng.uniform(0.5e6, 3e6, n).round(-3),
                rng,
            ),
        ),
    }


def run(method: str, train_apps, train_M, test_apps, test_M, injected) -> dict:
    doc = build(train_apps, train_M, method=method, min_count=100)
    b = Baseline(doc)
    scored = b.score(test_apps, test_M)
    shares = {f"tier>={k}": float((scored.tier >= k).mean()) for k in range(1, 6)}
    detection = {}
    for strength, kinds in injected.items():
        for name, (app, M) in kinds.items():
            t = b.score(np.array([app] * len(M)), M).tier
            detection[f"{name} ({strength})"] = float((t >= 3).mean())
    # speed: one at a time and a batch of 100,000
    X = np.tile(test_M, (max(1, 100_000 // len(test_M) + 1), 1))[:100_000]
    A = np.tile(test_apps, max(1, 100_000 // len(test_apps) + 1))[:100_000]
    t0 = time.perf_counter()
    b.score(A, X)
    batch = 100_000 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(2000):
        b.score(A[i : i + 1], X[i : i + 1])
    single = 2000 / (time.perf_counter() - t0)
    return {
        "tier_shares": shares,
        "detected_tier3_plus": detection,
        "flows_per_s": {"one": single, "batch_100k": batch},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows-per-app", type=int, default=20_000)
    ap.add_argument("--anomalies", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    apps, parts = [], []
    for name, spec in APPS.items():
        parts.append(flows(rng, spec, args.flows_per_app))
        apps += [name] * args.flows_per_app
    apps = np.array(apps)
    M = np.vstack(parts)
    order = rng.permutation(len(apps))
    cut = int(0.6 * len(apps))
    train, test = order[:cut], order[cut:]
    injected = {k: anomalies(rng, args.anomalies, k) for k in ("strong", "moderate")}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "train_flows": int(cut),
        "test_flows": int(len(test)),
        "expected_shares": {f"tier>={k}": 10.0**-k for k in range(1, 6)},
    }
    for method in ("robust", "pseudo-sigma"):
        result[method] = run(method, apps[train], M[train], apps[test], M[test], injected)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
