"""Broadcast and alert manager: alerts per second through routing and grouping to a webhook, and the time the
queue page takes to serve over a store of 100,000 alerts.

1. Throughput. --alerts host-level alerts (from --hosts hosts, several kinds) are
   stored as the receiver stores them; the outbox (`aggregator.broadcast.outbox`,
   the serve process's own code) routes them, groups them by (kind, src_ip) with
   no group wait, and delivers each group as one HMAC-signed POST to a webhook
   on 127.0.0.1 until every alert is delivered. The comparison, in the same run:
   the same request bodies POSTed by plain urllib (one request per group, no
   store, no signature), the floor any sender pays on this machine.
2. The alert manager. --queue-alerts alerts are stored, a real `ntds-aggregator
   ui` process serves them, and a logged-in client asks for the queue page
   (grouped by kind, host and application, newest first), the same page with
   a filter (kind and minimum tier) and the JSON API's queue, --runs each. The
   server time is the request's round trip on loopback.
3. Memory of `serve` delivering one large group. A real `ntds-aggregator
   serve` stores and delivers one alert (so its store and the group exist) and
   stops; --group-alerts more alerts of that group are then written straight
   into the store as stored and routed, due a few seconds after the next start.
   `serve` is started again, its resident memory read once it idles (VmRSS),
   and its peak (VmHWM) once a webhook on 127.0.0.1 has every alert; the
   figure is the peak over the idle memory, median of --memory-runs runs.

    python bench/bench_broadcast.py [--alerts 20000] [--hosts 2000] [--queue-alerts 100000] [--runs 7]
                                    [--group-alerts 100000] [--memory-runs 3] [--only memory]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from loopback import free_port, wait_for_ui  # noqa: E402

from aggregator.broadcast.outbox import BroadcastOptions, Outbox  # noqa: E402
from aggregator.broadcast.routes import parse_receivers, parse_routes  # noqa: E402
from aggregator.manager import Manager, connect  # noqa: E402
from aggregator.store import open_store  # noqa: E402
from ntds.detect.alerts import host_alert  # noqa: E402
from ntds.detect.hosts.base import Finding  # noqa: E402
from ntds.wire import schema as wire  # noqa: E402

KINDS = ("port-scan", "host-sweep", "brute-force", "beacon", "dns-tunnel", "exfiltration")
T0_MS = 1_794_816_000_000  # 2026-11-16


def alerts(n: int, hosts: int) -> list[wire.Message]:
    out = []
    for k in range(n):
        h = k % hosts
        f = Finding(kind=KINDS[k % len(KINDS)], src_ip=f"10.{h // 62500}.{h // 250 % 250}.{h % 250 + 1}",
                    first_ms=T0_MS + k * 20, last_ms=T0_MS + k * 20 + 500, count=20, window_s=300,
                    tier=3 + k % 3, score=1.5, signature=f"Finding {k}", dst_ip="192.0.2.7", protocol=6,
                    facts=[{"what": "ports", "value": 20.0, "typical": 15.0, "score": 1.3, "text": "20 ports"}],
                    pattern="192.0.2.7")  # fmt: skip
        body = host_alert(f, "bench baseline")
        out.append(wire.Message("alert", f"tap-{k % 4:02d}", k + 1, wire.now_iso(), body, "0123456789abcdef"))
    return out


def fill(store_path: Path, messages: list[wire.Message]) -> None:
    store = open_store(store_path, create=True)
    for i in range(0, len(messages), 5000):
        store.store(messages[i : i + 5000])
    store.close()


class Hook:
    """A webhook on 127.0.0.1 that keeps the bodies it receives (204 to each); with count_only, only the number
    of alerts they carried."""

    def __init__(self, count_only: bool = False) -> None:
        self.bodies: list[bytes] = []
        self.alerts = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if count_only:
                    owner.alerts += len(json.loads(body)["alerts"])
                else:
                    owner.bodies.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def throughput(tmp: Path, n: int, hosts: int) -> dict:
    store = tmp / "broadcast.db"
    fill(store, alerts(n, hosts))
    hook = Hook()
    secret = tmp / "hook.secret"
    secret.write_text("bench-secret\n")
    receivers = parse_receivers([{"name": "hook", "type": "webhook", "url": hook.url, "secret_file": str(secret),
                                  "rate_per_minute": 10_000_000}], tmp)  # fmt: skip
    routes = parse_routes(
        [{"receivers": ["hook"], "group_by": ["kind", "src_ip"], "group_wait_s": 0, "group_interval_s": 0}], receivers
    )
    outbox = Outbox(connect(store), routes, receivers, BroadcastOptions())
    started = time.perf_counter()
    delivered = 0
    while delivered < n:
        outbox.route()
        outbox.dispatch()
        outbox.deliver(limit=1000)
        delivered = sum(len(json.loads(b)["alerts"]) for b in hook.bodies)
        if time.perf_counter() - started > 600:
            raise SystemExit(f"bench: only {delivered} of {n} alerts delivered in 10 minutes")
    outbox_s = time.perf_counter() - started
    assert delivered == n, (delivered, n)
    bodies = list(hook.bodies)
    started = time.perf_counter()
    for body in bodies:
        request = urllib.request.Request(hook.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10):
            pass
    bare_s = time.perf_counter() - started
    hook.server.shutdown()
    outbox.db.close()
    return {"alerts": n, "requests": len(bodies), "outbox_s": outbox_s, "bare_post_s": bare_s}


def login(base: str, name: str, password: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = opener.open(base + "/login", timeout=30).read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode({"name": name, "password": password, "csrf": csrf, "next": "/"}).encode()
    opener.open(base + "/login", data=data, timeout=60).read()
    return opener


def queue_page(tmp: Path, n: int, runs: int) -> dict:
    store = tmp / "queue.db"
    started = time.perf_counter()
    fill(store, alerts(n, max(1, n // 10)))
    fill_s = time.perf_counter() - started
    port = free_port()
    cfg = tmp / "agg.yaml"
    cfg.write_text(f"endpoint: tcp://127.0.0.1:{free_port()}\nstore: {store}\narchive: {tmp / 'archive'}\n"
                   f"ui_listen: 127.0.0.1:{port}\n")  # fmt: skip
    m = Manager(connect(store))
    m.add_user("bench", "viewer", "a long bench password")
    m.db.close()
    ui = subprocess.Popen([str(BIN / "ntds-aggregator"), "ui", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_ui(base)
        opener = login(base, "bench", "a long bench password")
        pages = {"queue": "/", "queue, kind and tier filter": "/?kind=dns-tunnel&min_tier=4",
                 "api queue": "/api/queue"}  # fmt: skip
        out = {"alerts": n, "fill_s": fill_s}
        for label, path in pages.items():
            opener.open(base + path, timeout=60).read()  # warm: the page cache of the store
            times, size = [], 0
            for _ in range(runs):
                t = time.perf_counter()
                size = len(opener.open(base + path, timeout=60).read())
                times.append(time.perf_counter() - t)
            out[label] = {"median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000, "bytes": size}
        return out
    finally:
        ui.terminate()
        ui.wait(20)


def status_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def group_memory(tmp: Path, n: int) -> dict:
    """One run of part 3: serve's idle memory, its peak while delivering a group of n alerts, the time it took."""
    import zmq

    hook = Hook(count_only=True)
    secret = tmp / "hook.secret"
    secret.write_text("bench-secret\n")
    store = tmp / "store.db"
    port = free_port()
    receivers = [{"name": "hook", "type": "webhook", "url": hook.url, "secret_file": str(secret),
                  "rate_per_minute": 10_000_000}]  # fmt: skip
    routes = [{"receivers": ["hook"], "group_by": ["kind"], "group_wait_s": 0, "group_interval_s": 0}]
    cfg = tmp / "agg.yaml"
    cfg.write_text(f"endpoint: tcp://127.0.0.1:{port}\nstore: {store}\narchive: {tmp / 'archive'}\n"
                   f"receivers: {json.dumps(receivers)}\nroutes: {json.dumps(routes)}\n")  # fmt: skip
    log = tmp / "serve.log"

    def start() -> subprocess.Popen:
        before = log.read_text().count("listening on") if log.exists() else 0
        proc = subprocess.Popen([str(BIN / "ntds-aggregator"), "serve", "--config", str(cfg), "--insecure"],
                                stderr=log.open("a"))  # fmt: skip
        until(lambda: log.read_text().count("listening on") > before, 60, "serve", proc)
        return proc

    def until(condition, seconds: float, what: str, proc: subprocess.Popen) -> None:
        end = time.monotonic() + seconds
        while not condition():
            if proc.poll() is not None:
                raise SystemExit(f"bench: serve exited ({proc.returncode}) waiting for {what}: "
                                 f"{log.read_text().strip().splitlines()[-1]}")  # fmt: skip
            if time.monotonic() > end:
                raise SystemExit(f"bench: timed out waiting for {what}")
            time.sleep(0.05)

    proc = start()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"tcp://127.0.0.1:{port}")
    first = alerts(1, 1)[0]
    dealer.send(wire.encode(wire.Message("alert", "tap-00", 1, wire.now_iso(), first.body, "0123456789abcdef")))
    until(lambda: hook.alerts == 1, 60, "the first alert", proc)
    ctx.destroy(linger=0)
    proc.terminate()
    proc.wait(60)
    bodies = [json.dumps(m.body) for m in alerts(1000, 1000)]  # same kind as the first: one group
    bodies = [b for b in bodies if json.loads(b)["kind"] == first.body["kind"]]
    db = sqlite3.connect(store)
    with db:
        group = db.execute("SELECT id FROM notify_groups").fetchone()[0]
        rows = ((f"tap-{k % 4:02d}", k + 1, time.time(), bodies[k % len(bodies)]) for k in range(n))
        db.executemany("INSERT INTO messages (sensor, spool, seq, type, created, received, data_time, body) "
                       "VALUES (?, 'bench', ?, 'alert', '2026-12-01T00:00:00.000000Z', ?, 0, ?)", rows)  # fmt: skip
        db.execute("INSERT INTO notify_pending SELECT ?, id FROM messages WHERE spool = 'bench'", (group,))
        top = db.execute("SELECT MAX(id) FROM messages").fetchone()[0]
        for key in ("routed_id", "archived_id"):
            db.execute("INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (key, top))  # fmt: skip
        db.execute("UPDATE notify_groups SET first_pending = ? WHERE id = ?", (time.time() + 15, group))
    db.close()
    proc = start()
    try:
        time.sleep(8)
        if hook.alerts != 1:
            raise SystemExit("bench: the group went out before serve's idle memory was read")
        idle = status_mb(proc.pid)["VmRSS"]
        until(lambda: hook.alerts > 1, 60, "the group to start", proc)
        started = time.perf_counter()
        until(lambda: hook.alerts == n + 1, 1800, "the whole group", proc)
        seconds = time.perf_counter() - started
        peak = status_mb(proc.pid)["VmHWM"]
    finally:
        proc.terminate()
        proc.wait(60)
        hook.server.shutdown()
    with sqlite3.connect(store) as db:
        pages, largest = db.execute("SELECT COUNT(*), MAX(json_array_length(alert_ids)) FROM outbox").fetchone()
    return {"alerts": n, "idle_mb": idle, "peak_mb": peak, "added_mb": peak - idle, "deliver_s": seconds,
            "deliveries": pages, "largest_delivery": largest}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=20_000)
    ap.add_argument("--hosts", type=int, default=2_000)
    ap.add_argument("--queue-alerts", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--group-alerts", type=int, default=100_000)
    ap.add_argument("--memory-runs", type=int, default=3)
    ap.add_argument("--only", choices=("throughput", "queue", "memory"), help="run one part")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "memory"):
            runs = []
            for i in range(args.memory_runs):
                (Path(tmp) / f"m{i}").mkdir()
                runs.append(group_memory(Path(tmp) / f"m{i}", args.group_alerts))
            added = statistics.median(r["added_mb"] for r in runs)
            result["group_memory"] = {"alerts": args.group_alerts, "runs": runs, "added_mb": added}
            r = runs[0]
            print(f"serve delivering one group of {args.group_alerts:,} alerts to a webhook: +{added:.0f} MB over "
                  f"{statistics.median(x['idle_mb'] for x in runs):.0f} MB idle (peak RSS; median of {len(runs)}), "
                  f"{statistics.median(x['deliver_s'] for x in runs):.1f} s, {r['deliveries']:,} deliveries of at "
                  f"most {r['largest_delivery']} alerts")  # fmt: skip
        if args.only in (None, "throughput"):
            runs = []
            for i in range(3):
                (Path(tmp) / f"t{i}").mkdir()
                runs.append(throughput(Path(tmp) / f"t{i}", args.alerts, args.hosts))
            outbox_s = statistics.median(r["outbox_s"] for r in runs)
            bare_s = statistics.median(r["bare_post_s"] for r in runs)
            result["throughput"] = {"alerts": args.alerts, "requests": runs[0]["requests"], "runs": runs,
                                    "outbox_alerts_per_s": args.alerts / outbox_s,
                                    "bare_alerts_per_s": args.alerts / bare_s, "ratio": bare_s / outbox_s}  # fmt: skip
            t = result["throughput"]
            print(f"broadcast: {args.alerts:,} alerts in {t['requests']:,} webhook requests: outbox "
                  f"{outbox_s:.2f} s ({t['outbox_alerts_per_s']:,.0f} alerts/s), bare urllib POSTs {bare_s:.2f} s "
                  f"({t['bare_alerts_per_s']:,.0f} alerts/s), ratio {t['ratio']:.2f}x (median of 3)")  # fmt: skip
        if args.only in (None, "queue"):
            q = Path(tmp) / "q"
            q.mkdir()
            result["queue"] = queue_page(q, args.queue_alerts, args.runs)
            for label, v in result["queue"].items():
                if isinstance(v, dict):
                    print(f"ui over {args.queue_alerts:,} alerts: {label}: median {v['median_ms']:.0f} ms, "
                          f"max {v['max_ms']:.0f} ms ({v['bytes']:,} bytes; median of {args.runs})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
