"""Sensor -> aggregator throughput and latency on 127.0.0.1, CURVE on, fsync-level durability both sides.

1. Throughput: 50,000 alerts spooled in batches of 500 (one fsync per batch),
   then delivered to a real `ntds-aggregator serve` process (which commits every
   batch with fsync before acknowledging); messages per second for each phase
   and end to end.
2. Latency: alerts created one at a time at 500/s for 20 s, each spooled on its
   own (one fsync per alert) and sent at once. The aggregator is stopped
   (SIGTERM) from second 6 to second 12. Latency is the store's receive time
   minus the alert's creation time; median and 99th percentile, overall and for
   alerts created while the aggregator was up.

    python bench/bench_transport.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loopback import free_port  # noqa: E402

from ntds.wire.keys import generate, load_pair, load_public  # noqa: E402
from ntds.wire.schema import EXAMPLES  # noqa: E402
from sensor.link import Link  # noqa: E402
from sensor.spool import Spool  # noqa: E402

BIN = Path(sys.executable).parent
ALERT = EXAMPLES["alert"]


class Aggregator:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.config = root / "aggregator.yaml"
        self.config.write_text(
            f"endpoint: {self.endpoint}\nserver_key: agg/server.key_secret\nallow_list: allow\nstore: store.db\n"
            "sensor_messages_per_s: 0\nsensor_mb_per_day: 0\n"  # the transport itself, not the quotas
        )
        self.proc = None

    def start(self) -> None:
        log = open(self.root / "aggregator.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen([str(BIN / "ntds-aggregator"), "serve", "--config", str(self.config)], stderr=log)
        end = time.monotonic() + 30
        while f"listening on {self.endpoint}" not in (self.root / "aggregator.log").read_text():
            if time.monotonic() > end:
                raise RuntimeError("aggregator did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def setup(root: Path) -> tuple[Aggregator, tuple, bytes]:
    generate(root / "agg", "server")
    generate(root / "tap", "tap-01")
    (root / "allow").mkdir()
    shutil.copy(root / "tap" / "tap-01.key", root / "allow" / "tap-01.key")
    return Aggregator(root), load_pair(root / "tap" / "tap-01.key_secret"), load_public(root / "agg" / "server.key")


def throughput(root: Path, n: int = 50_000) -> dict:
    agg, keys, server = setup(root)
    agg.start()
    spool = Spool(root / "spool.db", "tap-01")
    t0 = time.perf_counter()
    for _ in range(0, n, 500):
        spool.append([("alert", ALERT)] * 500)
    t1 = time.perf_counter()
    link = Link(spool, agg.endpoint, client_keys=keys, server_public=server)
    assert link.drain(300)
    t2 = time.perf_counter()
    agg.stop()
    link.close()
    with sqlite3.connect(root / "store.db") as db:
        stored = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert stored == n
    return {
        "messages": n,
        "spool_msgs_per_s": n / (t1 - t0),
        "delivery_msgs_per_s": n / (t2 - t1),
        "end_to_end_msgs_per_s": n / (t2 - t0),
    }


def latency(root: Path, rate: int = 500, seconds: float = 20.0, down=(6.0, 12.0)) -> dict:
    agg, keys, server = setup(root)
    agg.start()
    spool = Spool(root / "spool.db", "tap-01")
    link = Link(spool, agg.endpoint, client_keys=keys, server_public=server, resend_after=1.0)
    start = time.monotonic()
    sent = 0
    stopped = restarted = False
    while True:
        now = time.monotonic() - start
        if now >= seconds:
            break
        if not stopped and now >= down[0]:
            agg.stop()
            stopped = True
        if stopped and not restarted and now >= down[1]:
            agg.start()
            restarted = True
        while sent < now * rate:
            spool.append([("alert", ALERT)])
            sent += 1
        link.pump(timeout_ms=1)
    assert link.drain(120)
    agg.stop()
    link.close()
    with sqlite3.connect(root / "store.db") as db:
        rows = db.execute("SELECT created, received FROM messages").fetchall()
    created = np.array([datetime.fromisoformat(c.replace("Z", "+00:00")).timestamp() for c, _ in rows])
    lat = (np.array([r for _, r in rows]) - created) * 1000
    t0 = created.min()
    up = (created - t0 < down[0]) | (created - t0 > down[1] + 1.0)
    return {
        "rate_per_s": rate,
        "messages": int(len(rows)),
        "aggregator_down_s": list(down),
        "latency_ms_all": {"median": float(np.median(lat)), "p99": float(np.percentile(lat, 99))},
        "latency_ms_while_up": {"median": float(np.median(lat[up])), "p99": float(np.percentile(lat[up], 99))},
        "max_ms": float(lat.max()),
    }


def main() -> int:
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory(prefix="ntds-bench-") as a, tempfile.TemporaryDirectory(prefix="ntds-bench-") as b:
        result["throughput"] = throughput(Path(a))
        result["latency"] = latency(Path(b))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
