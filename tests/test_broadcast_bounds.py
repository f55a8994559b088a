"""Broadcast with bounded work, on a real `ntds-aggregator serve` and real sockets (issue 23, items 2, 3, 5, 6, 7, 9):
a group larger than SQLite's limit on query parameters, a group of maximum-size alerts, a sleeping and a trickling
webhook beside an EVE file, a redirecting webhook, a TCP syslog listener that never reads, a full disk (tmpfs), and
the command that parks or drops a stuck delivery.

Large groups are written straight into the store with SQLite (as `serve` would have stored and routed them, only
faster); `serve` delivers them."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ntds.wire import schema as wire
from tests.receivers import DeafListener, RawHttp, WebhookServer, redirecting, trickling
from tests.test_broadcast import BIN, Aggregator, finding
from tests.test_full_disk import tmpfs
from tests.test_transport import free_port, wait

SECRET = b"s3cret-for-the-hmac"


def parameter_limit() -> int:
    """The most `?` one query may hold in this SQLite (SQLITE_MAX_VARIABLE_NUMBER: 32,766 upstream, 250,000 in
    Debian's build)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        return db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


FAST = 1_000_000
"""rate_per_minute that never holds a test back."""


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET.decode() + "\n")
    return path


def log_of(agg: Aggregator) -> str:
    return (agg.root / "serve.log").read_text()


def restart(agg: Aggregator) -> None:
    """Start `serve` again and wait for this start's own "listening on" line."""
    log = agg.root / "serve.log"
    before = log.read_text().count("listening on") if log.exists() else 0
    agg.proc = subprocess.Popen([str(BIN / "ntds-aggregator"), "serve", "--config", str(agg.config), "--insecure"],
                                stderr=log.open("a"))  # fmt: skip
    wait(lambda: log.read_text().count("listening on") > before, 30, "the aggregator")


def halt(agg: Aggregator) -> None:
    """Stop `serve` (SIGTERM) but keep the test's socket to it."""
    agg.proc.send_signal(signal.SIGTERM)
    assert agg.proc.wait(60) == 0


def eve_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def eve_ids(path: Path) -> list[int]:
    """The alert id of every record in the EVE file, read a line at a time."""
    out = []
    with path.open("rb") as fh:
        for line in fh:
            m = re.search(rb'"ntds_id":\["(\d+)"\]', line)
            assert m, line[:200]
            out.append(int(m.group(1)))
    return out


def eve_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def bulk(db: sqlite3.Connection, body: str, n: int, spool: str, vary_ip: str = "") -> list[int]:
    """n alerts stored straight into the store (what the receiver would have stored); their ids. With vary_ip,
    that address in the body becomes a different one per alert."""
    text = f"replace(?, '{vary_ip}', '10.' || (k / 62500) || '.' || (k / 250 % 250) || '.' || (k % 250 + 1))"
    column = text if vary_ip else "?"
    db.execute(
        "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?) "
        "INSERT INTO messages (sensor, spool, seq, type, created, received, data_time, body) "
        f"SELECT 'tap-01', ?, k, 'alert', '2026-12-01T00:00:00.000000Z', ?, 0, {column} FROM n",
        (n, spool, time.time(), body),
    )
    return [a for (a,) in db.execute("SELECT id FROM messages WHERE spool = ? ORDER BY id", (spool,))]


def mark_done(db: sqlite3.Connection, routed: bool = True) -> None:
    """Everything in the store is archived (and routed): `serve` only delivers."""
    top = db.execute("SELECT MAX(id) FROM messages").fetchone()[0]
    keys = ["archived_id"] + (["routed_id"] if routed else [])
    for key in keys:
        db.execute("INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, top))


def first_run(agg: Aggregator, eve: Path) -> tuple[str, int]:
    """One alert through `serve` to the EVE file: the store and the group exist. Its stored body and group id."""
    agg.start()
    agg.send([finding(0)])
    wait(lambda: eve_lines(eve) == 1, 30, "the first alert")
    halt(agg)
    with sqlite3.connect(agg.store) as db:
        body = db.execute("SELECT body FROM messages WHERE type = 'alert'").fetchone()[0]
        group = db.execute("SELECT id FROM notify_groups").fetchone()[0]
    return body, group


def test_a_group_beyond_sqlites_parameter_limit_goes_out_in_pages_and_serve_stays_up(tmp_path):
    """Item 2: a group of more alerts than SQLite takes parameters in one query (251,000 with Debian's SQLite),
    and a delivery row of an older version carrying 5,000 alerts at once: every alert reaches the EVE file
    exactly once, in deliveries of at most 500, and `serve` keeps acknowledging sensors throughout."""
    n, old_n = parameter_limit() + 1000, 5000
    eve = tmp_path / "eve.json"
    receivers = [{"name": "eve", "type": "eve", "path": str(eve), "rate_per_minute": FAST, "rotate_mb": 10_000}]
    routes = [{"receivers": ["eve"], "group_wait_s": 0, "group_interval_s": 0, "group_by": ["kind"]}]
    agg = Aggregator(tmp_path, receivers, routes)
    try:
        body, group = first_run(agg, eve)
        with sqlite3.connect(agg.store) as db:
            old = bulk(db, body, old_n, "old-row")
            labels = db.execute("SELECT labels FROM notify_groups WHERE id = ?", (group,)).fetchone()[0]
            row = ("INSERT INTO outbox (receiver, key, route, labels, alert_ids, repeat, created, next_attempt) "
                   "VALUES ('eve', 'eve-old-1', 0, ?, ?, 0, ?, 0)")  # fmt: skip
            db.execute(row, (labels, json.dumps(old), time.time()))  # all its alerts at once, as before pages
            pending = bulk(db, body, n, "pending")
            db.execute("INSERT INTO notify_pending SELECT ?, id FROM messages WHERE spool = 'pending'", (group,))
            db.execute("UPDATE notify_groups SET first_pending = ? WHERE id = ?", (time.time(), group))
            mark_done(db)
        restart(agg)
        deadline = time.monotonic() + 900
        while eve_lines(eve) < 1 + old_n + n and time.monotonic() < deadline:
            assert agg.proc.poll() is None, log_of(agg)[-3000:]
            time.sleep(0.5)
        assert eve_lines(eve) == 1 + old_n + n, "not every alert was delivered"
        agg.send([finding(1)])  # still acknowledging
        wait(lambda: eve_lines(eve) == 2 + old_n + n, 30, "an alert after the large group")
        assert agg.proc.poll() is None
        ids = eve_ids(eve)
        assert len(ids) == len(set(ids)) and set(old) | set(pending) <= set(ids)  # each alert once
        with sqlite3.connect(agg.store) as db:
            sizes = [s for (s,) in db.execute("SELECT json_array_length(alert_ids) FROM outbox")]
            assert max(sizes) <= 500 and sum(sizes) == 2 + old_n + n
            pages = db.execute("SELECT COUNT(*) FROM outbox WHERE key LIKE 'eve-old-1.%' AND status = 'delivered'")
            assert pages.fetchone()[0] == old_n // 500
        text = log_of(agg)
        assert "Traceback" not in text and "too many SQL variables" not in text
        assert f"({old_n} alerts) split into {old_n // 500} pages" in text
    finally:
        agg.stop()


def test_a_delivery_that_cannot_be_read_is_parked_and_the_rest_go_out(tmp_path):
    """A delivery row that cannot be read (written by hand, a damaged store) is parked with its reason; it
    neither stops the broadcast nor is retried in a loop."""
    eve = tmp_path / "eve.json"
    receivers = [{"name": "eve", "type": "eve", "path": str(eve)}]
    routes = [{"receivers": ["eve"], "group_wait_s": 0, "group_interval_s": 0, "group_by": ["src_ip"]}]
    agg = Aggregator(tmp_path, receivers, routes)
    try:
        first_run(agg, eve)
        with sqlite3.connect(agg.store) as db:
            db.execute("INSERT INTO outbox (receiver, key, route, labels, alert_ids, repeat, created, next_attempt) "
                       "VALUES ('eve', 'eve-garbage-1', 0, '{}', 'not a list', 0, ?, 0)", (time.time(),))  # fmt: skip
        restart(agg)
        agg.send([finding(k) for k in range(1, 4)])
        wait(lambda: eve_lines(eve) == 4, 20, "the deliveries after the unreadable one")
        with sqlite3.connect(agg.store) as db:
            status, attempts, error = db.execute(
                "SELECT status, attempts, last_error FROM outbox WHERE key = 'eve-garbage-1'"
            ).fetchone()  # fmt: skip
        assert status == "failed" and attempts == 1 and "cannot be read" in error
        assert agg.proc.poll() is None and "Traceback" not in log_of(agg)
    finally:
        agg.stop()


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_a_group_of_maximum_size_alerts_is_delivered_in_bounded_memory(tmp_path):
    """Item 3: 2,000 alerts of about 60 kB (120 MB stored) in one group; `serve`'s peak memory while delivering
    them grows by far less than the group (the whole group in memory would add several hundred MB)."""
    n = 2000
    eve = tmp_path / "eve.json"
    receivers = [{"name": "eve", "type": "eve", "path": str(eve), "rate_per_minute": FAST, "rotate_mb": 10_000}]
    routes = [{"receivers": ["eve"], "group_wait_s": 0, "group_interval_s": 0, "group_by": ["kind"]}]
    agg = Aggregator(tmp_path, receivers, routes)
    try:
        _, group = first_run(agg, eve)
        big = finding(7, signature="Port scan " + "x" * 60_000)
        with sqlite3.connect(agg.store) as db:
            ids = bulk(db, json.dumps(big), n, "big")
            db.executemany("INSERT INTO notify_pending VALUES (?, ?)", [(group, a) for a in ids])
            db.execute("UPDATE notify_groups SET first_pending = ? WHERE id = ?", (time.time() + 12, group))
            mark_done(db)
        restart(agg)
        time.sleep(5)  # started, idle: the group is due 12 s after it was written
        assert eve_lines(eve) == 1, "the group went out before the idle memory was measured"
        idle, _ = peak_rss_mb(agg.proc.pid)
        wait(lambda: eve_lines(eve) == 1 + n or agg.proc.poll() is not None, 300, "the group of large alerts")
        assert agg.proc.poll() is None, log_of(agg)[-2000:]
        _, peak = peak_rss_mb(agg.proc.pid)
        assert peak - idle < 100, f"serve grew from {idle:.0f} MB to a peak of {peak:.0f} MB"
        with sqlite3.connect(agg.store) as db:
            assert db.execute("SELECT MAX(json_array_length(alert_ids)) FROM outbox").fetchone()[0] < 40  # 2 MB pages
    finally:
        agg.stop()


def test_a_slow_receiver_delays_only_itself_and_every_delivery_has_a_total_deadline(tmp_path, secret):
    """Item 5: a webhook that sleeps 60 s and one that trickles a header byte a second, beside an EVE file: the
    EVE file gets every alert at once; each webhook attempt is cut at its 3 s deadline (a trickle never trips a
    per-read timeout)."""
    sleeper = WebhookServer(SECRET, delay_s=60).start()
    trickler = RawHttp(trickling(1.0))
    eve = tmp_path / "eve.json"
    receivers = [
        {"name": "sleeper", "type": "webhook", "url": sleeper.url, "secret_file": str(secret), "timeout_s": 3},
        {"name": "trickler", "type": "webhook", "url": trickler.url, "secret_file": str(secret), "timeout_s": 3},
        {"name": "eve", "type": "eve", "path": str(eve)},
    ]
    routes = [{"receivers": ["sleeper", "trickler", "eve"], "group_wait_s": 0, "group_by": ["src_ip"]}]
    agg = Aggregator(tmp_path, receivers, routes)
    try:
        agg.start()
        agg.send([finding(k) for k in range(5)])
        acked = time.monotonic()
        wait(lambda: eve_lines(eve) == 5, 10, "the EVE file, behind two stuck webhooks")
        assert time.monotonic() - acked < 5
        wait(lambda: any(closed for _, closed in trickler.connections), 15, "the trickling answer cut off")
        for opened, closed in trickler.connections:
            if closed:
                assert closed - opened < 3 + 2, "an attempt outlived its deadline"
        text = log_of(agg)
        wait(lambda: "the webhook did not finish within the 3 s deadline" in log_of(agg), 15, "the deadline")
        assert "Traceback" not in text
        assert agg.outbox("SELECT COUNT(*) FROM outbox WHERE receiver != 'eve' AND status = 'delivered'") == 0
    finally:
        agg.stop()
        sleeper.stop()
        trickler.stop()


def test_a_webhook_redirect_is_a_failed_attempt(tmp_path, secret):
    """Item 6: a 302 is a failed attempt (logged with where it pointed), never a body-less GET to the new address
    whose 200 counts as delivered."""
    target = WebhookServer(SECRET).start()
    redirector = RawHttp(redirecting(target.url))
    receivers = [{"name": "refuse", "type": "webhook", "url": redirector.url, "secret_file": str(secret)}]
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["refuse"], "group_wait_s": 0}])
    try:
        agg.start()
        agg.send([finding(1)])
        wait(lambda: len(redirector.requests) >= 2 or agg.outbox("SELECT COUNT(*) FROM outbox WHERE status = "
                                                                  "'delivered'") > 0, 20, "two attempts")  # fmt: skip
        time.sleep(0.5)
        assert target.gets == [] and target.received == [], "the redirect was followed"
        with sqlite3.connect(agg.store) as db:
            status, error = db.execute("SELECT status, last_error FROM outbox").fetchone()
        assert status == "pending" and "HTTP 302: redirect to http://127.0.0.1" in error and "refused" in error
        assert "redirect to http://127.0.0.1" in log_of(agg) and "refused" in log_of(agg)
        assert all(r.startswith(b"POST /hook ") for r in redirector.requests)
    finally:
        agg.stop()
        target.stop()
        redirector.stop()


def test_a_webhook_allowed_to_follow_redirects_posts_the_same_signed_body(tmp_path, secret):
    """Item 6: with max_redirects the same signed POST (body, signature, key) goes to the new address, and only
    its 2xx counts."""
    target = WebhookServer(SECRET).start()
    redirector = RawHttp(redirecting(target.url, status=307))
    receivers = [{"name": "follow", "type": "webhook", "url": redirector.url, "secret_file": str(secret),
                  "max_redirects": 1}]  # fmt: skip
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["follow"], "group_wait_s": 0}])
    try:
        agg.start()
        agg.send([finding(1)])
        wait(lambda: agg.outbox("SELECT COUNT(*) FROM outbox WHERE status = 'delivered'") == 1, 20, "delivery")
        assert target.gets == [] and target.bad_signatures == 0 and len(target.received) == 1
        assert target.received[0]["receiver"] == "follow" and target.received[0]["alerts"][0]["src_ip"] == "10.9.0.2"
        assert redirector.requests[0].startswith(b"POST /hook ")
    finally:
        agg.stop()
        target.stop()
        redirector.stop()


def test_tcp_syslog_to_a_listener_that_never_reads_is_not_delivered(tmp_path):
    """Item 7: messages written into a socket nobody reads are a failed attempt at the deadline, never a
    delivery (a listener that reads and closes is delivered: tests/test_broadcast.py)."""
    deaf = DeafListener()
    receivers = [{"name": "siem", "type": "syslog", "host": "127.0.0.1", "port": deaf.port, "protocol": "tcp",
                  "timeout_s": 2}]  # fmt: skip
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["siem"], "group_wait_s": 0}])
    try:
        agg.start()
        agg.send([finding(1)])
        wait(lambda: agg.outbox("SELECT COALESCE(MAX(attempts), 0) FROM outbox") >= 2, 30, "two attempts")
        with sqlite3.connect(agg.store) as db:
            status, error = db.execute("SELECT status, last_error FROM outbox").fetchone()
        assert status == "pending", "written into a socket nobody reads, and recorded as delivered"
        assert "did not finish within the 2 s deadline" in error
        assert deaf.held, "the listener was never reached"
    finally:
        agg.stop()
        deaf.stop()


def cli(agg: Aggregator, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ntds-aggregator"), "deliveries", *args, "--config", str(agg.config)],
                          capture_output=True, text=True)  # fmt: skip


def test_a_stuck_delivery_can_be_parked_or_dropped_while_serve_runs(tmp_path, secret):
    port = free_port()  # nobody listens yet: every attempt fails
    receivers = [{"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{port}/hook",
                  "secret_file": str(secret)}]  # fmt: skip
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["hook"], "group_wait_s": 0, "group_by": ["src_ip"]}])
    hook = None
    try:
        agg.start()
        agg.send([finding(k) for k in range(3)])
        wait(lambda: agg.outbox("SELECT COUNT(*) FROM outbox WHERE attempts > 0") == 3, 20, "failing attempts")
        with sqlite3.connect(agg.store) as db:
            first, second, third = [i for (i,) in db.execute("SELECT id FROM outbox ORDER BY id")]
        p = cli(agg, "park", str(first))
        assert p.returncode == 0 and "1 of 1 deliveries parked as failed" in p.stderr, p.stderr
        p = cli(agg, "drop", str(second))
        assert p.returncode == 0 and "1 of 1 deliveries dropped" in p.stderr, p.stderr
        for args, words in ((("drop",), "needs the ids"), (("drop", "999"), "not pending or failed deliveries"),
                            (("park", str(second)), "not pending deliveries")):  # fmt: skip
            p = cli(agg, *args)
            assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert "Traceback" not in p.stderr
        p = cli(agg, "--status", "dropped")
        assert p.returncode == 0 and f"{second}\thook\tdropped\t" in p.stdout
        hook = WebhookServer(SECRET, port=port).start()
        wait(lambda: len(hook.received) == 1, 20, "the delivery left in the queue")
        time.sleep(2)
        assert len(hook.received) == 1  # the parked and the dropped ones stay out
        assert cli(agg, "retry").returncode == 0  # parked ones go again, dropped ones never
        wait(lambda: len(hook.received) == 2, 20, "the parked delivery, retried")
        time.sleep(2)
        with sqlite3.connect(agg.store) as db:
            status = dict(db.execute("SELECT id, status FROM outbox"))
        assert status == {first: "delivered", second: "dropped", third: "delivered"}
        assert len(hook.received) == 2
    finally:
        agg.stop()
        if hook is not None:
            hook.stop()


def fill(path: Path, leave: int = 0) -> None:
    """Write path until the filesystem is full, then give `leave` bytes back."""
    with path.open("ab") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        fh.truncate(max(0, fh.tell() - leave))


def acknowledged(agg: Aggregator, frames: dict[int, bytes], seconds: float, resend: bool) -> set[int]:
    """Send these messages (seq -> frame; again every second with resend, as a sensor does) and return the
    sequence numbers acknowledged within `seconds`."""
    got: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end and set(frames) - got:
        for seq in sorted(set(frames) - got):
            agg.dealer.send(frames[seq])
        until = min(end, time.monotonic() + 1) if resend else end
        while time.monotonic() < until:
            if agg.dealer.poll(100):
                got |= set(wire.decode(agg.dealer.recv()).body["seqs"])
        if not resend:
            break
    return got


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount tmpfs")
def test_a_full_disk_under_the_broadcast_is_one_line_and_serve_stays_up(tmp_path):
    """Item 9: the store on a small tmpfs fills while the broadcast writes: one "disk full" line, no exit; the
    receiver acknowledges nothing it cannot store; once there is room every alert is delivered, once."""
    eve = tmp_path / "eve.json"
    n = 3000
    with tmpfs(tmp_path / "small", "32m") as small:
        receivers = [{"name": "eve", "type": "eve", "path": str(eve), "rate_per_minute": FAST}]
        routes = [{"receivers": ["eve"], "group_wait_s": 0, "group_by": ["src_ip"]}]
        agg = Aggregator(tmp_path, receivers, routes, store=str(small / "store.db"))
        agg.store = small / "store.db"
        try:
            body, _ = first_run(agg, eve)
            with sqlite3.connect(agg.store) as db:
                bulk(db, body, n, "unrouted", vary_ip="10.9.0.1")  # a group each: routing them writes ~1 MB
                mark_done(db, routed=False)
            fill(small / "filler", leave=160 * 1024)
            restart(agg)
            wait(lambda: "disk full" in log_of(agg), 30, "the broadcast meeting the full disk")
            fill(small / "filler2")  # nothing more fits than the space SQLite already holds
            frames = {seq: wire.encode(wire.Message("alert", "tap-01", seq, wire.now_iso(), finding(seq),
                                                    "0123456789abcdef")) for seq in range(2, 302)}  # fmt: skip
            early = acknowledged(agg, frames, 5, resend=False)
            assert len(early) < len(frames), "everything acknowledged while the disk is full"
            wait(lambda: "not acknowledged (sensors resend)" in log_of(agg), 10, "the receiver's refusal")
            time.sleep(2)
            assert agg.proc.poll() is None, log_of(agg)[-2000:]
            (small / "filler").unlink()
            (small / "filler2").unlink()
            late = acknowledged(agg, {k: v for k, v in frames.items() if k not in early}, 60, resend=True)
            assert early | late == set(frames), "not acknowledged once there was room"
            wait(lambda: eve_lines(eve) == 1 + n + len(frames), 120, "every alert once there was room")
            assert agg.proc.poll() is None
            text = log_of(agg)
            assert "Traceback" not in text
            ours = [line for line in text.splitlines() if "broadcast" in line or "delivery" in line]
            assert not [line for line in ours if "cannot rollback" in line], ours
            lines = [line for line in ours if "broadcast waits: disk full" in line]
            assert len(lines) == 1, lines  # one line for the episode, not one per attempt
            assert "broadcast goes on" in text
            ids = [r["alert"]["metadata"]["ntds_id"][0] for r in eve_records(eve)]
            assert len(ids) == len(set(ids)) == 1 + n + len(frames)
        finally:
            agg.stop()
