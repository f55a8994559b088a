"""The sensor's analysis: where each flow's microseconds go, and the whole sensor's CPU against bare NFStream.

1. Stages (`--stages`): a capture is metered once in this process (the meter's own process does the packets);
   the CPU this process spends receiving the flows and finishing their columns is the first stage. Then the
   same flows, in order, through each later stage alone: per-flow rarity (Detection without host detectors,
   in the sensor's batches), each host-level detector (learn and score), the flows behind an alert, the
   summaries, the population statistics and the context counts. Best of --repeat passes; µs per flow.
2. Whole sensor (`--whole`): CPU time (user + system of every process, the meters included) of bare NFStream
   iterating the capture with the sensor's streamer settings, `ntds-sensor score`, and `ntds-sensor replay` to
   a real `ntds-aggregator serve` on 127.0.0.1 (every message acknowledged), alternating, --runs times;
   medians and the ratio to bare NFStream measured in the same run, for each `--workers` count
   (`analysis_workers`; 0: all in the sensor's process).
3. Split (`--split`): `score`'s loop with 0, 1, 2 ... analysis workers, the sensor process's own CPU against the
   meter's and the workers': what one process must still do per flow when the workers take the detectors.

    python bench/bench_analysis.py [--stages] [--split] [--whole] [--captures generated,real-mix] [--runs 5]
        [--repeat 3] [--workers 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_meter import BARE, generate, real_mix  # noqa: E402

CAPTURES = {"generated": DATA / "spread-1000000.pcap", "real-mix": DATA / "real-mix-500000.pcap"}


def capture(name: str) -> Path:
    path = CAPTURES[name]
    if not path.exists():
        print(f"writing {path}", file=sys.stderr)
        generate(path, 1_000_000) if name == "generated" else real_mix(path, 500_000)
    return path


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stages(path: Path, repeat: int) -> dict:
    """µs per flow of each stage of the analysis, on the flows of one capture."""
    from ntds.detect.baseline import Baseline
    from ntds.detect.behind import FlowsBehind
    from ntds.detect.detection import Detection
    from ntds.detect.hosts import DETECTORS
    from ntds.flows.meter import FlowMeter
    from sensor.config import SensorConfig
    from sensor.context import ContextCounter
    from sensor.geo import GeoIP
    from sensor.pipeline import BATCH
    from sensor.populations import PopulationStats
    from sensor.summaries import Summariser
    from sensor.traffic_classes import TrafficClasses

    defaults = {k: s.default for k, s in SensorConfig.declared().items()}
    meter = FlowMeter("unicauca", single_packet_flows=True)
    before = cpu_self()
    records = list(meter.read([path]))
    n = len(records)
    out: dict[str, float] = {"receive and finish columns": (cpu_self() - before) / n * 1e6}
    baseline = Baseline.load(ROOT / "config" / "baseline.json")
    batches = [records[i : i + BATCH] for i in range(0, n, BATCH)]

    def best(run) -> float:
        times = []
        for _ in range(repeat):
            start = cpu_self()
            run()
            times.append(cpu_self() - start)
        return min(times) / n * 1e6

    classes = TrafficClasses(defaults["local_networks"], defaults["local_servers"])
    off = {k: {"enabled": False} for k in DETECTORS}
    judged = []

    def rarity() -> None:
        judged.clear()
        d = Detection(baseline, detectors=off, local=classes.is_local)
        for b in batches:
            judged.append(d.process(b))

    out["rarity (scoring, grouping)"] = best(rarity)
    for kind, cls in DETECTORS.items():

        def one(cls=cls) -> None:
            det = cls(local=classes.is_local)
            for r in records:
                det.findings(r.traffic)

        out[f"detector {kind}"] = best(one)

    def behind() -> None:
        fb = FlowsBehind()
        for r in records:
            fb.add(r.traffic, None)

    out["flows behind alerts"] = best(behind)
    tiers = [t for j in judged for t in j.tiers]

    def summaries() -> None:
        s = Summariser(classes, GeoIP(None), defaults["summary_interval_s"])
        for r, t in zip(records, tiers):
            s.add(r.traffic, t)

    out["summaries"] = best(summaries)

    def populations() -> None:
        p = PopulationStats(defaults["stats_interval_s"])
        for j in judged:
            if j.scored is not None:
                p.add(j.scored)

    out["population statistics"] = best(populations)

    def context() -> None:
        c = ContextCounter(classes, defaults["context_interval_s"], defaults["context_max_destinations"],
                           defaults["context_max_hosts"])  # fmt: skip
        for r in records:
            c.add(r.traffic, (r.extra[5] or "") if r.extra else "")

    out["context counts"] = best(context)

    def whole() -> None:
        d = Detection(baseline, local=classes.is_local)
        for b in batches:
            d.process(b)

    out["all of Detection (rarity, every detector, behind, grouping)"] = best(whole)
    return {"flows": n, "us_per_flow": out}


def split(path: Path, workers: list[int], runs: int) -> dict:
    """Where the CPU goes with N analysis workers: `score`'s loop run here (metering in NFStream's meter process,
    the next batch read while the workers judge this one), this process's CPU (receiving, rarity, merging,
    grouping) against the children's (the meter and the workers), and the wall time; best of `runs`."""
    out = {}
    for w in workers:
        best = None
        for _ in range(runs):
            code = (
                "import sys, time, resource, json\n"
                f"sys.path.insert(0, {str(ROOT)!r})\n"
                "import sensor.score as score\n"
                "from pathlib import Path\n"
                "from ntds.detect.baseline import Baseline\n"
                "from ntds.detect.detection import Detection\n"
                "from ntds.networks import DEFAULT_LOCAL_NETWORKS, matcher\n"
                f"d = Detection(Baseline.load({str(ROOT / 'config' / 'baseline.json')!r}), "
                f"local=matcher(DEFAULT_LOCAL_NETWORKS), workers={w})\n"
                "r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter(); begun = None; n = 0\n"
                f"for recs in score._capture_records(Path({str(path)!r}), 'unicauca', [0]):\n"
                "    n += len(recs)\n"
                "    if begun is not None: d.end(begun)\n"
                "    begun = d.begin(recs)\n"
                "d.end(begun); d.close(); d.stop()\n"
                "r1 = resource.getrusage(resource.RUSAGE_SELF); c = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
                "print(json.dumps({'flows': n, 'wall_s': time.perf_counter() - t0, "
                "'sensor_process_cpu_s': r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, "
                "'meter_and_workers_cpu_s': c.ru_utime + c.ru_stime}))\n"
            )
            got = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True).stdout)  # fmt: skip
            if best is None or got["wall_s"] < best["wall_s"]:
                best = got
        best["sensor_process_us_per_flow"] = best["sensor_process_cpu_s"] / best["flows"] * 1e6
        out[f"{w} workers"] = best
        print(f"{path.name}, {w} workers: {best}", file=sys.stderr)
    return out


def run_cpu(cmd: list[str], env: dict | None = None) -> float:
    """CPU seconds (user + system) of a command and every process it started."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def whole(path: Path, runs: int, workers: list[int]) -> dict:
    """CPU of bare NFStream, `score` and `replay` to a real aggregator on one capture, alternating."""
    from bench_sensor import setup

    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ntds-bench-") as tmp:
        root = Path(tmp)
        config, aggregator = setup(root)
        try:
            commands = {"nfstream": [sys.executable, "-c", BARE, str(path)]}
            for w in workers:
                cfg = root / f"sensor-{w}.yaml"
                cfg.write_text(config.read_text() + f"\nanalysis_workers: {w}\n")
                commands[f"score, {w} worker(s)"] = [str(BIN / "ntds-sensor"), "score", "--config", str(cfg),
                                                     "-o", os.devnull, str(path)]  # fmt: skip
                commands[f"replay, {w} worker(s)"] = [str(BIN / "ntds-sensor"), "replay", "--config", str(cfg),
                                                      "--insecure", str(path)]  # fmt: skip
            for i in range(runs):
                for name, cmd in commands.items():
                    cpu.setdefault(name, []).append(run_cpu(cmd))
                print(f"{path.name} run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in cpu.items()),
                      file=sys.stderr)  # fmt: skip
        finally:
            aggregator.terminate()
            try:
                aggregator.wait(120)
            except subprocess.TimeoutExpired:  # noted in docs/benchmarks.md: the archive's catch-up after 9 replays
                aggregator.kill()
                aggregator.wait()
    med = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "capture": path.name,
        "runs": runs,
        "median_cpu_s": med,
        "ratio_to_nfstream": {k: v / med["nfstream"] for k, v in med.items()},
        # each run's CPU over bare NFStream's in the same run, then the median: the machine's drift between runs
        # (bare NFStream alone moves by 10% here) cancels out of each ratio
        "median_run_ratio": {k: statistics.median(x / b for x, b in zip(v, cpu["nfstream"])) for k, v in cpu.items()},
        "all_cpu_s": cpu,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", action="store_true")
    ap.add_argument("--split", action="store_true", help="the sensor process's CPU against its workers'")
    ap.add_argument("--whole", action="store_true")
    ap.add_argument("--captures", default="generated,real-mix")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", default="1")
    args = ap.parse_args()
    if not (args.stages or args.whole or args.split):
        args.stages = args.whole = args.split = True
    names = args.captures.split(",")
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python bench/bench_analysis.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d"),
    }
    for name in names:
        path = capture(name)
        if args.stages:
            result.setdefault("stages", {})[name] = stages(path, args.repeat)
            print(json.dumps(result["stages"][name], indent=2), file=sys.stderr)
        if args.split:
            result.setdefault("split", {})[name] = split(path, [int(w) for w in args.workers.split(",")], args.repeat)
        if args.whole:
            result.setdefault("whole", {})[name] = whole(path, args.runs, [int(w) for w in args.workers.split(",")])
        print(json.dumps(result, indent=2), file=sys.stderr)  # what is measured so far, should a later part fail
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
