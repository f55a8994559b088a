"""Context on alerts: what the prevalence sketches and host activity add to a sensor's messages, what they cost per
flow, and how fast the host page is with a year of a host's context.

Bytes: one synthetic busy hour of a site (`--hosts` local hosts, `--flows` flows; destinations drawn Zipf-like from
30,000 external addresses, 8,000 server names under 3,000 registered domains on 40% of flows, 60 client fingerprints
on 30%; each host a few applications, 5% of hosts answering a service) is counted by the sensor's own Summariser (60 s
summaries) and ContextCounter (one hour), and both are encoded as the wire frames the spool keeps. The context
messages' bytes are the figure, next to the summaries' bytes of the same hour (what a sensor already sends). A
sweep hour (one host reaching 100,000 addresses) shows the bound at the default caps. Cost: each counter's `add`
over the same flows, median of `--runs`.

Host page: a store with a year of hourly context messages (8,760, each with 20 hosts and 50 destinations) and 500
alerts of the host, merged by `catch_up` (timed: messages merged per second); then `ntds-aggregator ui` serves
/hosts/IP (story, notices, peers' prevalence, the chart drawn by matplotlib) for that host and, in the same run,
for a host with the same 500 alerts and no context (the page as it was before the story); median of `--runs`.

    .venv/bin/python bench/bench_prevalence.py [--runs 5] [--hosts 500] [--flows 100000]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loopback import free_port, wait_for_ui  # noqa: E402

from ntds import prevalence as sk  # noqa: E402
from ntds.flows.traffic import FlowTraffic  # noqa: E402
from ntds.times import iso_ms  # noqa: E402
from ntds.wire import schema as wire  # noqa: E402
from sensor.context import ContextCounter  # noqa: E402
from sensor.summaries import Summariser  # noqa: E402
from sensor.traffic_classes import TrafficClasses  # noqa: E402

BIN = Path(sys.executable).parent
HOUR0 = 1_794_816_000_000  # 2026-11-16 08:00 UTC
APPS = ["TLS", "DNS", "HTTP", "QUIC", "NTP", "SSH", "Google", "Microsoft", "Zoom", "Dropbox"]


def zipf_index(rng: random.Random, n: int) -> int:
    """An index 0..n-1 with P(k) about 1/(k+1) (log-uniform): a few destinations are common, most are rare."""
    return min(n - 1, int(n ** rng.random()) - 1)


def busy_hour(hosts: int, flows: int, seed: int = 1) -> list[tuple[FlowTraffic, str]]:
    rng = random.Random(seed)
    servers = {rng.randrange(hosts) for _ in range(max(1, hosts // 20))}
    out = []
    for i in range(flows):
        h = rng.randrange(hosts)
        local = f"10.20.{h >> 8}.{h & 255}"
        start = HOUR0 + int(i * 3_600_000 / flows)
        if h in servers and rng.random() < 0.3:  # someone asks this host's service
            peer = rng.randrange(hosts)
            t = FlowTraffic(start, f"10.20.{peer >> 8}.{peer & 255}", local, 40000 + i % 20000, 8443, 6, 8, 900, 8,
                            12000, "TLS", end_ms=start + 300, payload=11000)  # fmt: skip
            out.append((t, ""))
            continue
        d = zipf_index(rng, 30_000)
        remote = f"198.{18 + (d >> 16)}.{(d >> 8) & 255}.{d & 255}"
        name = ""
        if rng.random() < 0.4:
            n = zipf_index(rng, 8_000)
            name = f"h{n}.site{n % 3000}.example.com"
        fp = f"t13d1516h2_8daaf615{zipf_index(rng, 60):04d}_b186095e22b6" if rng.random() < 0.3 else ""
        app = APPS[zipf_index(rng, len(APPS)) % len(APPS)]
        t = FlowTraffic(start, local, remote, 40000 + i % 20000, 443, 6, 10, 1500, 12, 30000, app,
                        end_ms=start + 800, payload=28000, server_name=name)  # fmt: skip
        out.append((t, fp))
    return out


def frames_bytes(kind: str, bodies: list[dict]) -> int:
    return sum(len(wire.encode(wire.Message(kind, "tap-01", i + 1, "2026-11-16T09:10:00Z", b, "0123456789abcdef")))
               for i, b in enumerate(bodies))  # fmt: skip


def sensor_side(args) -> dict:
    classes = TrafficClasses(["10.0.0.0/8"])
    flows = busy_hour(args.hosts, args.flows)
    summary_s, context_s = [], []
    for _ in range(args.runs):
        s = Summariser(classes, interval_s=60)
        t = time.perf_counter()
        for f, _fp in flows:
            s.add(f, 0)
        summary_s.append(time.perf_counter() - t)
        c = ContextCounter(classes, 3600)
        t = time.perf_counter()
        for f, fp in flows:
            c.add(f, fp)
        context_s.append(time.perf_counter() - t)
    summaries, contexts = s.close(None), c.close(None)
    unpacked = [wire.unpack(b["packed"]) for b in contexts]
    destinations = sum(len(x["destinations"]) for x in unpacked)
    sketch_bytes = sum(len(d["sketch"]) for x in unpacked for d in x["destinations"])
    plain = sum(len(json.dumps(x, separators=(",", ":"))) for x in unpacked)
    sweep = ContextCounter(classes, 3600)
    for i in range(100_000):
        sweep.add(FlowTraffic(HOUR0 + i * 36, "10.20.0.9", f"203.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 40000, 445, 6,
                              1, 60, 0, 0, "Unknown", end_ms=HOUR0 + i * 36), "")  # fmt: skip
    swept = sweep.close(None)
    return {
        "flows": len(flows),
        "hosts": args.hosts,
        "summary_bytes": frames_bytes("summary", summaries),
        "summary_messages": len(summaries),
        "context_bytes": frames_bytes("context", contexts),
        "context_messages": len(contexts),
        "destinations": destinations,
        "sketch_text_bytes": sketch_bytes,
        "hosts_described": sum(len(x["hosts"]) for x in unpacked),
        "destinations_omitted": contexts[0]["destinations_omitted"],
        "context_plain_bytes": plain,
        "summary_us_per_flow": statistics.median(summary_s) / len(flows) * 1e6,
        "context_us_per_flow": statistics.median(context_s) / len(flows) * 1e6,
        "sweep_context_bytes": frames_bytes("context", swept),
        "sweep_destinations": sum(len(wire.unpack(b["packed"])["destinations"]) for b in swept),
        "sweep_omitted": swept[0]["destinations_omitted"],
    }


# -- the host page ------------------------------------------------------------------------


def _context_body(t_ms: int, h: int, rng: random.Random) -> dict:
    hosts = []
    for k in range(20):
        ip = "10.30.0.7" if k == 0 else f"10.30.{1 + h % 200}.{k}"
        peers = [f"198.51.{(h + j) % 200}.{j}" for j in range(8)]
        hosts.append({"host": ip, "first_ms": t_ms, "last_ms": t_ms + 3_000_000, "flows": 300 + rng.randrange(100),
                      "bytes_up": rng.randrange(10**6, 10**8), "bytes_down": rng.randrange(10**7, 10**9),
                      "applications": [{"application": a, "flows": 20} for a in APPS[: 3 + h % 5]],
                      "services": [{"protocol": 6, "port": 22, "application": "SSH", "flows": 3}] if k == 0 else [],
                      "peers": [{"peer": p, "flows": 10, "bytes": 10**6} for p in peers]})  # fmt: skip
    dests = []
    for j in range(50):
        key = f"198.51.{(h + j) % 200}.{j}"
        members = [f"10.30.{1 + (h + m) % 200}.{m}" for m in range(1 + j % 7)] + ["10.30.0.7"]
        dests.append({"kind": "address", "key": key, "first_ms": t_ms, "last_ms": t_ms + 3_000_000, "flows": 40,
                      "sketch": sk.encode(sk.sketch_of(members))})  # fmt: skip
    packed = wire.pack({"destinations": dests, "hosts": hosts})
    return {"interval_start": iso_ms(t_ms - t_ms % 3_600_000, "seconds"), "interval_s": 3600,
            "destinations_omitted": 0, "hosts_omitted": 0, "packed": packed}  # fmt: skip


def _alert(src: str, t_ms: int, k: int) -> dict:
    a = copy.deepcopy(wire.EXAMPLES["alert"])
    a |= {"kind": "beacon", "src_ip": src, "dst_ip": f"198.51.{k % 200}.{k % 50}", "first_seen": iso_ms(t_ms),
          "last_seen": iso_ms(t_ms + 60_000), "tier": 3 + k % 3, "signature": f"Beacon {src} #{k}"}  # fmt: skip
    return a


def host_page(args, tmp: Path) -> dict:
    from aggregator import context
    from aggregator.manager import Manager, connect
    from aggregator.store import Store

    store = Store(tmp / "store.db")
    rng = random.Random(7)
    start = HOUR0 - 365 * 86_400_000
    seq = 0
    batch = []
    for h in range(365 * 24):
        t = start + h * 3_600_000
        seq += 1
        batch.append(wire.Message("context", "tap-01", seq, "2026-11-16T08:00:00Z", _context_body(t, h, rng), "s"))
        if len(batch) == 200:
            store.store(batch)
            batch = []
    for k in range(500):
        for src in ("10.30.0.7", "10.40.0.9"):
            seq += 1
            t = start + k * 63_000_000
            batch.append(wire.Message("alert", "tap-01", seq, "2026-11-16T08:00:00Z", _alert(src, t, k), "s"))
    store.store(batch)
    t = time.perf_counter()
    merged, judged = context.catch_up(store.db, context.ContextOptions())
    catch_up_s = time.perf_counter() - t
    store.close()
    m = Manager(connect(tmp / "store.db"))
    m.add_user("bench", "viewer", "a long bench password")
    token = m.api_token("bench", 1)
    m.db.close()
    port = free_port()
    cfg = tmp / "agg.yaml"
    cfg.write_text(f"endpoint: tcp://127.0.0.1:{free_port()}\nstore: {tmp / 'store.db'}\narchive: {tmp / 'archive'}\n"
                   f"ui_listen: 127.0.0.1:{port}\n")  # fmt: skip
    ui = subprocess.Popen([str(BIN / "ntds-aggregator"), "ui", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    out = {"context_messages": merged, "alerts": judged, "catch_up_s": catch_up_s}
    try:
        wait_for_ui(base)

        def get(path: str) -> int:
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return len(r.read())

        pages = {"host page, a year of context and 500 alerts": "/hosts/10.30.0.7",
                 "host page, 500 alerts and no context (as before)": "/hosts/10.40.0.9"}  # fmt: skip
        for path in pages.values():
            get(path)  # warm
        for label, path in pages.items():
            times, size = [], 0
            for _ in range(args.runs):
                t = time.perf_counter()
                size = get(path)
                times.append(time.perf_counter() - t)
            out[label] = {"median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000, "bytes": size}
    finally:
        ui.terminate()
        ui.wait(20)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--hosts", type=int, default=500)
    p.add_argument("--flows", type=int, default=100_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, python {platform.python_version()}",
          file=sys.stderr)  # fmt: skip
    s = sensor_side(args)
    with tempfile.TemporaryDirectory() as d:
        h = host_page(args, Path(d))
    if args.json:
        print(json.dumps({"sensor": s, "host_page": h}, indent=1))
        return
    print(f"busy hour: {s['flows']:,} flows of {s['hosts']} hosts; summaries {s['summary_bytes']:,} B in "
          f"{s['summary_messages']} messages; context {s['context_bytes']:,} B in {s['context_messages']} messages "
          f"({s['context_bytes'] / s['summary_bytes']:.2f}x the summaries): {s['destinations']:,} destinations "
          f"(sketches {s['sketch_text_bytes']:,} B as base64; {s['destinations_omitted']:,} past the cap omitted), "
          f"{s['hosts_described']} hosts; as plain JSON "
          f"{s['context_plain_bytes']:,} B")  # fmt: skip
    print(f"per flow: summaries {s['summary_us_per_flow']:.2f} us, context {s['context_us_per_flow']:.2f} us "
          f"(median of {args.runs})")  # fmt: skip
    print(f"sweep hour (100,000 addresses from one host): context {s['sweep_context_bytes']:,} B, "
          f"{s['sweep_destinations']:,} destinations sketched, {s['sweep_omitted']:,} flows omitted")  # fmt: skip
    print(f"a year of context: {h['context_messages']:,} messages and {h['alerts']:,} alerts merged in "
          f"{h['catch_up_s']:.1f} s ({h['context_messages'] / h['catch_up_s']:,.0f} messages/s)")  # fmt: skip
    for label, v in h.items():
        if isinstance(v, dict):
            print(f"{label}: median {v['median_ms']:.0f} ms, max {v['max_ms']:.0f} ms ({v['bytes']:,} bytes; median "
                  f"of {args.runs})")  # fmt: skip


if __name__ == "__main__":
    main()
