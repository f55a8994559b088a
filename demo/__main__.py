"""`make demo`: the whole product, end to end, on the project's own campus week.

1. Generate the campus week and a few days of clean training traffic (pcaps/campus.py;
   cached in the work folder, the same bytes every time).
2. Build a site baseline from the training traffic (what a site does first).
3. Fresh CURVE keys for an aggregator and one sensor; the sensor's public key in the
   aggregator's allow-list.
4. Start `ntds-aggregator serve` on 127.0.0.1 and replay the week through
   `ntds-sensor replay`, which publishes to it like a live sensor.
5. Stop the aggregator (it archives on the way out), build the weekly report for
   2026-W47, print where it is and what it found.

Every process started is stopped, also on failure or Ctrl-C; a second run starts over
in a fresh run folder.

    python -m demo [--workdir build/demo] [--days 9]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ntds.logs import printable
from pcaps import campus

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WEEK = "2026-W47"
SENSOR = "campus-tap"
UI_PORT = 8080
"""Where `make ui` serves the alert manager over the demo's store (aggregator.yaml `ui_listen`)."""
DETECTORS = {"exfiltration": {"floor_bytes": 2_000_000}}
"""The demo site's detector settings (sensor.yaml `detectors:`): a small site lowers the exfiltration floor."""


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_children_on_signals() -> None:
    """SIGTERM (a service manager, `kill`, make stopping) goes the way of Ctrl-C: a KeyboardInterrupt, so every
    `finally` and `except` that stops a child runs; SIGINT already does. (Python's default for SIGTERM ends the
    process at once and leaves its children running.)"""
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def stop(p: subprocess.Popen) -> None:
    """SIGTERM first (a sensor then stops its own capture workers), SIGKILL after 15 s."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tool(name: str, *args, quiet: bool = True) -> subprocess.CompletedProcess:
    pipe = subprocess.PIPE if quiet else None
    with subprocess.Popen([str(BIN / name), *map(str, args)], stdout=pipe, stderr=pipe, text=True) as child:
        try:
            out, err = child.communicate()
        except BaseException:
            stop(child)
            raise
    p = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    if p.returncode != 0:
        raise SystemExit(f"demo: {name} {args[0]} failed ({p.returncode}): {(p.stderr or '').strip()[-2000:]}")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def captures(work: Path, days: int) -> tuple[Path, Path]:
    """The two captures, generated once (side by side: scapy is slow and each is one process's work)."""
    week = work / f"campus-week-{days}d.pcap"
    training = work / "campus-training.pcap"
    todo = [(path, n, is_training) for path, n, is_training in ((training, 5, True), (week, days, False))
            if not path.exists()]  # fmt: skip
    if todo:
        from concurrent.futures import ProcessPoolExecutor

        for path, _, is_training in todo:
            what = "clean training traffic" if is_training else f"the campus week ({days} days)"
            say(f"generating {what} with scapy -> {path} (once; about twenty seconds)")
        with ProcessPoolExecutor(max_workers=len(todo)) as pool:
            try:
                for job in [pool.submit(campus.write, path, n, is_training) for path, n, is_training in todo]:
                    job.result()
            except BaseException:
                for worker in list((pool._processes or {}).values()):  # stop the generators, not wait for them
                    worker.kill()
                pool.shutdown(wait=True, cancel_futures=True)
                for path, _, _ in todo:
                    path.unlink(missing_ok=True)  # half-written: generated again next time
                raise
    return week, training


def configure(run: Path, baseline: Path) -> tuple[Path, Path]:
    keys, allow = run / "keys", run / "allow"
    tool("ntds-aggregator", "keygen", "--out", keys)
    tool("ntds-sensor", "keygen", "--out", keys, "--name", SENSOR)
    allow.mkdir()
    shutil.copy(keys / f"{SENSOR}.key", allow / f"{SENSOR}.key")
    port = free_port()
    agg = run / "aggregator.yaml"
    agg.write_text(
        f"endpoint: tcp://127.0.0.1:{port}\nserver_key: keys/server.key_secret\nallow_list: allow\n"
        f"store: store.db\narchive: archive\nsite_country: {campus.SITE_COUNTRY}\nreports: reports\n"
        "# every alert, as it arrives, to an EVE-style JSON-lines file (what Filebeat or Vector would read)\n"
        "receivers: [{name: eve-file, type: eve, path: eve.json}]\n"
        "routes: [{receivers: [eve-file], group_wait_s: 0, group_interval_s: 0}]\n"
        f"ui_listen: 127.0.0.1:{UI_PORT}\n"
    )
    sensor = run / "sensor.yaml"
    sensor.write_text(
        f"sensor_id: {SENSOR}\nbaseline: {baseline.name}\naggregator: tcp://127.0.0.1:{port}\n"
        f"sensor_key: keys/{SENSOR}.key_secret\nserver_key: keys/server.key\nspool_dir: spool\n"
        f"local_networks: {json.dumps([campus.LOCAL_NET])}\nlocal_servers: {json.dumps(campus.SERVERS)}\n"
        "min_alert_tier: 3\nsummary_interval_s: 60\n"
        "# a dozen hosts: a few MB a day to one outside host is already far beyond anyone's habit\n"
        f"detectors: {json.dumps(DETECTORS)}\n"
    )
    return agg, sensor


def serve(agg: Path, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([str(BIN / "ntds-aggregator"), "serve", "--config", str(agg)], stderr=log.open("w"))
    end = time.monotonic() + 30
    while "listening on" not in log.read_text():
        if p.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"demo: the aggregator did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return p


def summary(report: dict, html: Path) -> str:
    t = report["overview"]["totals"]
    a = report["alerts"]
    lines = [
        f"report: {html}",
        f"week {report['week']} ({report['first_day']} .. {report['last_day']}): {t['flows']:,} flows, "
        f"{t['packets']:,} packets, {t['bytes'] / 1e6:,.1f} MB, {len(report['applications'])} applications "
        f"({', '.join(x['application'] for x in report['applications'][:5])}, ...)",
        "scored flows by tier: " + ", ".join(f"{k}: {sum(n)}" for k, n in enumerate(a["flows_per_tier_per_day"])),
        "alerts sent by kind: " + ", ".join(f"{k} {n}" for k, n in a["alerts_per_kind"].items()),
        "top 5 alerts:",
    ]
    for x in a["rarest"][:5]:
        count = f" x{x['count']}" if x["count"] > 1 else ""
        lines.append(f"  tier {x['tier']} {x['kind']}{count}  {x['time'][:19]}  {x['signature']}")
    hosts = a["hosts"][:3]
    if hosts:
        lines.append(
            "hosts the alerts name (strongest first): "
            + ", ".join(f"{h['src_ip']} ({', '.join(h['kinds'])})" for h in hosts)
        )
    return "\n".join(printable(line, 10_000) for line in lines)  # names from the network, never escapes


def run_demo(work: Path, days: int = campus.DAYS) -> dict:
    """All the steps; returns the report (report.json's content) and where things are."""
    work.mkdir(parents=True, exist_ok=True)
    week, training = captures(work, days)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    say("building a site baseline from the training traffic")
    baseline = run / "site-baseline.json"
    tool("ntds-aggregator", "baseline", "build", training, "-o", baseline, "--min-count", "30")
    agg_cfg, sensor_cfg = configure(run, baseline)
    say("starting the aggregator on 127.0.0.1 (CURVE keys, allow-list of one sensor)")
    aggregator = serve(agg_cfg, run / "aggregator.log")
    try:
        say(f"replaying {week.name} through the sensor, which publishes to the aggregator")
        tool("ntds-sensor", "replay", week, "--config", sensor_cfg, "--wait", "120", quiet=False)
        aggregator.send_signal(signal.SIGTERM)
        if aggregator.wait(120) != 0:
            raise SystemExit(
                f"demo: the aggregator did not stop cleanly: {(run / 'aggregator.log').read_text()[-2000:]}"
            )
    finally:
        stop(aggregator)
    say(f"building the weekly report for {WEEK}")
    out = run / "reports" / f"report-{WEEK}"
    html = Path(
        tool("ntds-aggregator", "report", "weekly", "--week", WEEK, "-o", out, "--config", agg_cfg).stdout.strip()
    )
    report = json.loads((out / "report.json").read_text())
    return {"report": report, "html": html, "run": run, "week_pcap": week, "eve": run / "eve.json"}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--days", type=int, default=campus.DAYS, help="days of the campus week (default: 9)")
    args = ap.parse_args()
    started = time.monotonic()
    stop_children_on_signals()
    try:
        result = run_demo(args.workdir, args.days)
    except KeyboardInterrupt:
        say("interrupted; every process it started has been stopped")
        return 130
    print(summary(result["report"], result["html"]))
    eve = result["eve"]
    delivered = sum(1 for _ in eve.open()) if eve.exists() else 0
    print(f"broadcast: {delivered} alerts delivered to {eve} (EVE JSON lines)")
    say(f"done in {time.monotonic() - started:.0f} s; open {result['html']} in a browser (it works offline)")
    say("triage the alerts in the alert manager: make ui (prints a one-time login; Ctrl-C stops it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
