"""Threat intelligence: what matching indicators costs the sensor, in time per flow and in memory, and what a push
of the set costs on the link.

Flows: the starter baseline's generated site traffic (pcaps/generate.py --site-traffic: DNS, TLS, HTTP, SSH, NTP,
ICMP from 20 hosts), metered once and held in memory, then judged by a fresh `Detection` (the sensor's per-flow
rarity, host-level detectors, grouping: what `run`, `replay` and `score` do per batch of 512) with no indicator set,
1,000 indicators and 1,000,000 indicators. The indicators are random (70% addresses, 10% networks from /20 to /28,
15% domains, 5% JA3S/JA4/HASSH; any the traffic happens to contain left out), so they cost their matching and
nothing else; a fourth run adds two that the traffic does contain (the address and the name it contacts least), to
show what building the alerts of matches adds. They are run in turn, `--runs` times, and the median of each is
reported with its ratio to no indicators measured in the same run. The matcher alone (`IntelSet.match` over the same
flows) is timed the same way.

Memory: a child process reads the 1,000,000-indicator set file as a sensor does after a push (`IntelUpdates._load`:
every line read, then the numpy arrays) and reports its resident memory before, at its peak and after.
Push: the set file's size, compressed, its parts on the wire, and the sensor's time to check and load it. With
`--push`, also end to end: `ntds-aggregator intel add` of a CSV of the million (read, stored, signed, hunted), a real
`serve` (CURVE) and a real `ntds-sensor replay --pace realtime` of 20 flows to a known-bad server on 127.0.0.1 (the
site of tests/test_baseline_push.py): the set's arrival and the intel alerts stored.

    .venv/bin/python bench/bench_intel.py [--runs 5] [--indicators 1000000]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ntds.detect.baseline import Baseline  # noqa: E402
from ntds.detect.detection import Detection, _fields  # noqa: E402
from ntds.intel.indicators import Indicator  # noqa: E402
from ntds.intel.matching import IntelSet, write_set  # noqa: E402
from ntds.wire import schema as wire  # noqa: E402

BATCH = 512


def site_records(sessions: int) -> tuple[list, float]:
    """The flows of the generated site traffic, and the seconds the meter took for them."""
    from scapy.all import wrpcap

    from ntds.flows.meter import FlowMeter
    from pcaps.generate import site_traffic

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.pcap"
        wrpcap(str(path), site_traffic(sessions))
        t0 = time.perf_counter()
        records = list(FlowMeter("unicauca", single_packet_flows=True).read([path]))
        return records, time.perf_counter() - t0


def random_indicators(n: int, seed: int = 1) -> list[Indicator]:
    rng = random.Random(seed)
    out = []
    tlds = ("com", "net", "org", "ru", "cn", "info", "xyz", "io")
    for i in range(n):
        r = rng.random()
        if r < 0.7:
            v = str(ipaddress.ip_address(rng.randrange(16_777_216, 3_758_096_383)))  # 1.0.0.0 .. 223.255.255.255
            kind = "ip"
        elif r < 0.8:
            plen = rng.randrange(20, 29)
            v = str(ipaddress.ip_network(f"{ipaddress.ip_address(rng.randrange(16_777_216, 3_758_096_383))}/{plen}",
                                         strict=False))  # fmt: skip
            kind = "net"
        elif r < 0.95:
            label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randrange(5, 14)))
            v, kind = f"{label}.{rng.choice(tlds)}", "domain"
        else:
            kind = rng.choice(("ja3s", "hassh", "ja4"))
            h = f"{rng.getrandbits(128):032x}"
            v = h if kind != "ja4" else f"t13d{rng.randrange(1000, 9999)}h2_{h[:12]}_{h[12:24]}"
        out.append(Indicator(kind, v, f"feed-{i % 20}", rng.randrange(0, 101), 1.79e9, 0.0))
    return out


def without_hits(inds: list[Indicator], records: list) -> list[Indicator]:
    """The random indicators less any the traffic happens to contain (a random /20 can hold a real server), so the
    first runs measure matching alone."""
    hit = {m.index for ms in IntelSet(inds).match([_fields(r) for r in records], time.time()) for m in ms}
    return [ind for i, ind in enumerate(inds) if i not in hit]


def with_hits(inds: list[Indicator], records: list) -> list[Indicator]:
    """Two indicators the traffic contains (the address and the name contacted least often), so alerts are built
    too, at about the rate a real feed hits (a few flows in a thousand)."""
    from collections import Counter

    names = Counter(r.traffic.server_name for r in records if r.traffic.server_name)
    servers = Counter(r.traffic.dst_ip for r in records if r.traffic.dst_ip != "255.255.255.255")
    name, server = min(names, key=lambda k: (names[k], k)), min(servers, key=lambda k: (servers[k], k))
    return [*inds, Indicator("ip", server, "bench", 80), Indicator("domain", name, "bench", 60)]


def judge(baseline: Baseline, records: list, intel: IntelSet | None) -> tuple[float, int]:
    """Seconds for a fresh Detection to judge every flow in batches, and the flows that matched an indicator."""
    d = Detection(baseline, intel=intel)
    t0 = time.perf_counter()
    for i in range(0, len(records), BATCH):
        d.process(records[i : i + BATCH])
    d.close()
    return time.perf_counter() - t0, d.stats.findings["intel"]


def match_only(records: list, intel: IntelSet) -> float:
    keys = [_fields(r) for r in records]
    t0 = time.perf_counter()
    for i in range(0, len(keys), BATCH):
        intel.match(keys[i : i + BATCH], time.time())
    return time.perf_counter() - t0


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak (VmHWM: this process's own, unlike ru_maxrss, which a child
    inherits from the parent it was forked from)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(path: str) -> None:
    """Run in a child: load the set as a sensor does after a push; print resident memory (MiB) as JSON."""
    from sensor.intel_updates import IntelUpdates

    before = rss_mib()
    content = Path(path).read_bytes()
    t0 = time.perf_counter()
    s = IntelUpdates._load(content)
    load_s = time.perf_counter() - t0
    del content
    import gc

    gc.collect()
    after = rss_mib()
    peak = rss_mib("VmHWM")
    print(json.dumps({"before": before, "after": after, "peak": peak, "nbytes": s.nbytes, "n": len(s),
                      "load_s": load_s}))  # fmt: skip


def push_end_to_end(inds: list[Indicator]) -> None:
    """intel add, serve, a sensor replaying 20 flows to a server the set names: what each step took."""
    import sqlite3

    sys.path.insert(0, str(ROOT / "tests"))
    from tests.test_baseline_push import PushSite
    from tests.test_transport import run

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        site = PushSite(root)
        try:
            feed = root / "feed.csv"
            rows = "".join(f"{i.value},{i.type},{i.source},{i.confidence}\n" for i in inds)
            feed.write_text("indicator,type,source,confidence\n" + rows + "10.1.0.53,ip,bench,90\n")
            t0 = time.perf_counter()
            p = run("ntds-aggregator", "intel", "add", feed, "--config", site.config)
            add_s = time.perf_counter() - t0
            assert p.returncode == 0, p.stderr
            site.aggregator()
            t0 = time.perf_counter()
            sensor = site.replay_realtime(site.flows(20))
            assert sensor.wait(600) == 0
            log = [line for line in sensor.stderr.read().splitlines() if "matching indicator set" in line]
            with sqlite3.connect(site.store) as db:
                alerts = db.execute("SELECT COUNT(*) FROM alerts WHERE kind = 'intel'").fetchone()[0]
            taken = log[0].split(" INFO ")[-1] if log else "no set taken"
            print(f"\nEnd to end: intel add of {len(inds) + 1:,} indicators (CSV) {add_s:.1f} s; a sensor replaying "
                  f"20 flows (20 s at their pace) took the set and sent {alerts} intel alerts in "
                  f"{time.perf_counter() - t0:.1f} s; {taken}")  # fmt: skip
        finally:
            site.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--indicators", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=2400, help="site traffic sessions (2,400: the starter's)")
    ap.add_argument("--push", action="store_true", help="also push the set end to end through real processes")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    baseline = Baseline.load(ROOT / "config" / "baseline.json")
    records, meter_s = site_records(args.sessions)
    print(f"{len(records):,} flows of generated site traffic", file=sys.stderr)
    t0 = time.perf_counter()
    big = without_hits(random_indicators(args.indicators), records)
    small = without_hits(random_indicators(1000, seed=2), records)
    hit = with_hits(big, records)
    print(f"indicators made in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    sets = {"none": None, "1,000": IntelSet(small), f"{args.indicators:,}": IntelSet(big),
            f"{args.indicators:,} + 2 the traffic contains": IntelSet(hit)}  # fmt: skip
    build_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in sets}
    match: dict[str, list[float]] = {k: [] for k in sets if k != "none"}
    hits: dict[str, int] = {}
    for s in sets.values():  # warm-up: first-call costs (imports, caches) belong to no variant
        judge(baseline, records, s)
    for _ in range(args.runs):
        for name, s in sets.items():
            t, n = judge(baseline, records, s)
            times[name].append(t)
            hits[name] = n
            if s is not None:
                match[name].append(match_only(records, s))
    n = len(records)
    base = statistics.median(times["none"])
    print(f"\nDetection per flow, {n:,} flows, median of {args.runs} runs (alternating):")
    print("| indicators | µs per flow (Detection.process) | ratio | matcher alone, µs per flow | flows matched |")
    print("|---|---|---|---|---|")
    for name in sets:
        med = statistics.median(times[name])
        m = f"{statistics.median(match[name]) / n * 1e6:.2f}" if name in match else "-"
        print(f"| {name} | {med / n * 1e6:.1f} | {med / base:.3f} | {m} | {hits[name]} |")
    # push size and the sensor's cost to take it
    content = write_set(big)
    packed = zlib.compress(content, 6)
    parts = wire.intel_parts("tap-01", 1, content, len(big), "{}", "00" * 64)
    on_wire = sum(len(wire.encode(p)) for p in parts)
    print(f"(for scale: NFStream and the meter took {meter_s / n * 1e6:.0f} µs per flow of the same capture)")
    print(f"\nPush of {len(big):,} indicators: set file {len(content) / 2**20:.1f} MiB, compressed "
          f"{len(packed) / 2**20:.1f} MiB, {len(parts)} parts, {on_wire / 2**20:.1f} MiB on the wire")  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".txt") as fh:
        fh.write(content)
        fh.flush()
        child = subprocess.run([sys.executable, __file__, "--memory-child", fh.name], capture_output=True, text=True,
                               check=True)  # fmt: skip
    mem = json.loads(child.stdout)
    print(f"Sensor memory for the set: {mem['after'] - mem['before']:.0f} MiB resident after loading "
          f"({mem['nbytes'] / 2**20:.0f} MiB of arrays), peak {mem['peak'] - mem['before']:.0f} MiB above the "
          f"start while loading; check and load {mem['load_s']:.1f} s")  # fmt: skip
    if args.push:
        push_end_to_end(big)
    print(f"Building the matcher in-process: {build_s:.1f} s for both sets; {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
