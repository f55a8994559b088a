"""Broadcast: stored alerts -> routes -> notification groups -> the outbox -> receivers, durably.

Three steps, each one transaction in the store, run by `Broadcaster` (a
thread of `ntds-aggregator serve`):

1. **route**: alerts stored since the last routed id (a high-water mark in the
   store, moved in the same transaction) are matched against the silences and
   the routes; an alert an active silence matches is recorded as suppressed
   and goes nowhere; the others join their route's notification group for
   each receiver.
2. **dispatch**: a group whose wait is over (group_wait_s for a new group,
   group_interval_s since its last notification, repeat_interval_s for alerts
   still open) becomes one outbox row with a deterministic idempotency key
   (receiver, group, notification number).
3. **deliver**: due outbox rows go to their receiver; success marks them
   delivered; a failure is retried with exponential backoff; after
   `max_attempts` the row is parked as failed (the UI and `ntds-aggregator
   deliveries` show it, `deliveries retry` re-queues it).

An alert accepted by the store is routed exactly once whatever happens to the
process (kill -9 included): the high-water mark moves with the rows it
produced. A delivery interrupted between sending and recording is sent again
under the same key, so a receiver that keeps keys never shows it twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass

from aggregator.broadcast.routes import ReceiverConfig, Route
from aggregator.broadcast.senders import SENDERS, RateLimit, Sender
from aggregator.manager import Manager
from aggregator.manager import connect as connect_manager
from ntds.errors import one_line
from ntds.wire.schema import upgrade_body

log = logging.getLogger("ntds.aggregator.broadcast")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT, route INTEGER NOT NULL, receiver TEXT NOT NULL, labels TEXT NOT NULL,
    first_pending REAL, last_sent REAL, notes INTEGER NOT NULL DEFAULT 0, UNIQUE (route, receiver, labels));
CREATE TABLE IF NOT EXISTS notify_pending (
    group_id INTEGER NOT NULL, alert_id INTEGER NOT NULL, PRIMARY KEY (group_id, alert_id));
CREATE TABLE IF NOT EXISTS notify_sent (
    group_id INTEGER NOT NULL, alert_id INTEGER NOT NULL, PRIMARY KEY (group_id, alert_id));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, receiver TEXT NOT NULL, key TEXT NOT NULL UNIQUE, route INTEGER NOT NULL,
    labels TEXT NOT NULL, alert_ids TEXT NOT NULL, repeat INTEGER NOT NULL, created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT '', delivered REAL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt);
CREATE TABLE IF NOT EXISTS suppressed (alert_id INTEGER PRIMARY KEY, silence_id INTEGER NOT NULL, time REAL NOT NULL);
"""
ROUTED = "routed_id"
OPEN = "status NOT IN ('acknowledged', 'closed')"
"""Alerts a repeat reminds of: neither acknowledged nor closed."""
NOTE_VERSION = 1


@dataclass(frozen=True)
class BroadcastOptions:
    max_attempts: int = 12
    backoff_s: float = 5.0
    max_backoff_s: float = 600.0
    keep_delivered_days: int = 30

    MEANINGS = {
        "max_attempts": "attempts before a delivery is parked as failed (visible in the UI and `deliveries`)",
        "backoff_s": "wait after the first failure; it doubles with each failure",
        "max_backoff_s": "longest wait between two attempts",
        "keep_delivered_days": "days delivered notifications stay in the outbox (the delivery log)",
    }


class Outbox:
    """The three steps on one store connection (see the module docstring)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        routes: list[Route],
        receivers: dict[str, ReceiverConfig],
        options: BroadcastOptions | None = None,
    ) -> None:
        self.db = db
        db.executescript(SCHEMA)
        self.routes = routes
        self.receivers = receivers
        self.o = options or BroadcastOptions()
        self.manager = Manager(db)
        self.senders: dict[str, Sender] = {}
        self.limits = {name: RateLimit(r.rate_per_minute) for name, r in receivers.items()}
        self.delivered = 0
        self.failed = 0

    def _sender(self, name: str) -> Sender:
        if name not in self.senders:
            cfg = self.receivers[name]
            self.senders[name] = SENDERS[cfg.type](cfg)
        return self.senders[name]

    # -- 1. route --------------------------------------------------------------------------

    def route(self, now: float | None = None, batch: int = 2000) -> int:
        """Route the alerts stored since the high-water mark; returns how many were routed."""
        now = time.time() if now is None else now
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT value FROM state WHERE key = ?", (ROUTED,)).fetchone()
            last = int(row[0]) if row else 0
            rows = self.db.execute(
                "SELECT id, sensor, body FROM messages WHERE type = 'alert' AND id > ? ORDER BY id LIMIT ?",
                (last, batch),
            ).fetchall()
            silences = self.manager.silences(active_only=True, at=now)
            for alert_id, sensor, body in rows:
                alert = upgrade_body("alert", json.loads(body))
                silence = next((s["id"] for s in silences if _matches(s["matchers"], alert, sensor)), None)
                if silence is not None:
                    self.db.execute("INSERT OR IGNORE INTO suppressed VALUES (?, ?, ?)", (alert_id, silence, now))
                    continue
                for route in self.routes:
                    if not route.matches(alert, sensor):
                        continue
                    labels = json.dumps(route.labels(alert, sensor), sort_keys=True)
                    for receiver in route.receivers:
                        self.db.execute(
                            "INSERT INTO notify_groups (route, receiver, labels, first_pending) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (route, receiver, labels) DO UPDATE SET "
                            "first_pending = COALESCE(first_pending, excluded.first_pending)",
                            (route.index, receiver, labels, now),
                        )
                        group = self.db.execute(
                            "SELECT id FROM notify_groups WHERE route = ? AND receiver = ? AND labels = ?",
                            (route.index, receiver, labels),
                        ).fetchone()[0]
                        self.db.execute("INSERT OR IGNORE INTO notify_pending VALUES (?, ?)", (group, alert_id))
            if rows:
                self.db.execute("INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                (ROUTED, rows[-1][0]))  # fmt: skip
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(rows)

    # -- 2. dispatch -----------------------------------------------------------------------

    def dispatch(self, now: float | None = None) -> int:
        """Turn groups whose wait is over into outbox rows; returns how many notifications were made."""
        now = time.time() if now is None else now
        routes = {r.index: r for r in self.routes}
        made = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            groups = self.db.execute(
                "SELECT id, route, receiver, labels, first_pending, last_sent, notes FROM notify_groups"
            ).fetchall()
            silences = self.manager.silences(active_only=True, at=now)
            for gid, route_index, receiver, labels, first_pending, last_sent, notes in groups:
                route = routes.get(route_index)
                if route is None or receiver not in route.receivers:
                    continue  # a route or receiver the configuration no longer has: its pending alerts wait
                pending = [a for (a,) in self.db.execute(
                    "SELECT alert_id FROM notify_pending WHERE group_id = ? ORDER BY alert_id", (gid,))]  # fmt: skip
                if pending:
                    due = (first_pending + route.group_wait_s) if last_sent is None else (
                        max(last_sent + route.group_interval_s, first_pending or 0))  # fmt: skip
                    if now < due:
                        continue
                    ids = self._unsilenced(pending, silences, now)
                    self.db.execute("DELETE FROM notify_pending WHERE group_id = ?", (gid,))
                    repeat = False
                elif route.repeat_interval_s and last_sent is not None and now >= last_sent + route.repeat_interval_s:
                    ids = [a for (a,) in self.db.execute(
                        f"SELECT s.alert_id FROM notify_sent s JOIN alerts a ON a.id = s.alert_id "
                        f"WHERE s.group_id = ? AND a.{OPEN} ORDER BY s.alert_id", (gid,))]  # fmt: skip
                    ids = self._unsilenced(ids, silences, now)
                    repeat = True
                    if not ids:
                        self.db.execute("UPDATE notify_groups SET last_sent = ? WHERE id = ?", (now, gid))
                        continue
                else:
                    continue
                notes += 1
                if ids:
                    key = f"{receiver}-{gid}-{notes}"
                    self.db.execute(
                        "INSERT OR IGNORE INTO outbox (receiver, key, route, labels, alert_ids, repeat, created, "
                        "next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (receiver, key, route_index, labels, json.dumps(ids), int(repeat), now, now),
                    )
                    self.db.executemany("INSERT OR IGNORE INTO notify_sent VALUES (?, ?)", [(gid, a) for a in ids])
                    made += 1
                self.db.execute("UPDATE notify_groups SET last_sent = ?, notes = ?, first_pending = NULL WHERE id = ?",
                                (now, notes, gid))  # fmt: skip
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return made

    def _unsilenced(self, ids: list[int], silences: list[dict], now: float) -> list[int]:
        """Alerts a silence created since they were routed now holds back (recorded as suppressed)."""
        if not silences or not ids:
            return ids
        keep = []
        for alert_id in ids:
            row = self.db.execute("SELECT sensor, body FROM messages WHERE id = ?", (alert_id,)).fetchone()
            if row is None:
                continue
            alert = upgrade_body("alert", json.loads(row[1]))
            silence = next((s["id"] for s in silences if _matches(s["matchers"], alert, row[0])), None)
            if silence is None:
                keep.append(alert_id)
            else:
                self.db.execute("INSERT OR IGNORE INTO suppressed VALUES (?, ?, ?)", (alert_id, silence, now))
        return keep

    # -- 3. deliver ------------------------------------------------------------------------

    def note(self, row: tuple) -> dict:
        """The notification an outbox row stands for, as receivers get it."""
        _, receiver, key, route, labels, alert_ids, repeat = row[:7]
        ids = json.loads(alert_ids)
        marks = ",".join("?" * len(ids))
        alerts = []
        for alert_id, sensor, body in self.db.execute(
            f"SELECT id, sensor, body FROM messages WHERE id IN ({marks}) ORDER BY id", ids
        ):
            alerts.append({"id": alert_id, "sensor": sensor, **upgrade_body("alert", json.loads(body))})
        return {"version": NOTE_VERSION, "idempotency_key": key, "receiver": receiver, "route": route,
                "group": json.loads(labels), "repeat": bool(repeat), "alerts": alerts}  # fmt: skip

    def deliver(self, now: float | None = None, limit: int = 100) -> int:
        """Send what is due; returns how many deliveries succeeded."""
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT id, receiver, key, route, labels, alert_ids, repeat, attempts FROM outbox "
            "WHERE status = 'pending' AND next_attempt <= ? ORDER BY id LIMIT ?",
            (now, limit),
        ).fetchall()
        done = 0
        for row in rows:
            outbox_id, receiver, attempts = row[0], row[1], row[7]
            if receiver not in self.receivers:
                self._failed(outbox_id, attempts, "receiver no longer configured", park=True)
                continue
            limit_ = self.limits[receiver]
            if not limit_.ready():
                continue
            limit_.take()
            note = self.note(row)
            try:
                if note["alerts"]:
                    self._sender(receiver).send(note)
            except Exception as e:  # noqa: BLE001 - any failure of a receiver is retried, never fatal
                self._failed(outbox_id, attempts, one_line(e))
                continue
            self.db.execute("UPDATE outbox SET status = 'delivered', delivered = ?, attempts = ? WHERE id = ?",
                            (time.time(), attempts + 1, outbox_id))  # fmt: skip
            self.delivered += 1
            done += 1
        return done

    def _failed(self, outbox_id: int, attempts: int, error: str, park: bool = False) -> None:
        attempts += 1
        if park or attempts >= self.o.max_attempts:
            self.db.execute("UPDATE outbox SET status = 'failed', attempts = ?, last_error = ? WHERE id = ?",
                            (attempts, error[:500], outbox_id))  # fmt: skip
            self.failed += 1
            log.error("delivery %d parked as failed after %d attempts: %s", outbox_id, attempts, error)
            return
        wait = min(self.o.backoff_s * 2 ** (attempts - 1), self.o.max_backoff_s)
        self.db.execute("UPDATE outbox SET attempts = ?, last_error = ?, next_attempt = ? WHERE id = ?",
                        (attempts, error[:500], time.time() + wait, outbox_id))  # fmt: skip
        log.warning("delivery %d to %s failed (attempt %d), retrying in %.0f s: %s", outbox_id,
                    self.db.execute("SELECT receiver FROM outbox WHERE id = ?", (outbox_id,)).fetchone()[0],
                    attempts, wait, error)  # fmt: skip

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.db.execute("DELETE FROM outbox WHERE status = 'delivered' AND delivered < ?",
                        (now - self.o.keep_delivered_days * 86400,))  # fmt: skip

    def step(self, now: float | None = None) -> None:
        self.route(now)
        self.dispatch(now)
        self.deliver(now)


def _matches(matchers: dict, alert: dict, sensor: str) -> bool:
    from aggregator.manager import matches

    return matches(matchers, alert, sensor)


def retry(db: sqlite3.Connection, ids: list[int] | None) -> int:
    """Re-queue parked deliveries (all failed ones when ids is None); returns how many."""
    db.executescript(SCHEMA)
    if ids is None:
        cur = db.execute("UPDATE outbox SET status = 'pending', attempts = 0, next_attempt = 0 WHERE status = 'failed'")
    else:
        marks = ",".join("?" * len(ids))
        cur = db.execute(f"UPDATE outbox SET status = 'pending', attempts = 0, next_attempt = 0 "
                         f"WHERE status = 'failed' AND id IN ({marks})", ids)  # fmt: skip
    return cur.rowcount


def deliveries(db: sqlite3.Connection, status: str | None = None, limit: int = 500) -> list[dict]:
    db.executescript(SCHEMA)
    sql = "SELECT id, receiver, key, status, attempts, last_error, created, delivered, alert_ids, repeat FROM outbox"
    args: list = []
    if status:
        sql, args = sql + " WHERE status = ?", [status]
    rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    names = ("id", "receiver", "key", "status", "attempts", "last_error", "created", "delivered", "alerts", "repeat")
    return [dict(zip(names, r)) | {"alerts": len(json.loads(r[8])), "repeat": bool(r[9])} for r in rows]


class Broadcaster(threading.Thread):
    """The outbox's steps every `interval_s`, on its own connection to the store, until stopped."""

    def __init__(self, store_path, routes, receivers, options: BroadcastOptions, interval_s: float = 0.25) -> None:
        super().__init__(name="broadcast", daemon=True)
        self.outbox = Outbox(connect_manager(store_path), routes, receivers, options)
        self.interval_s = interval_s
        self._stop_event = threading.Event()
        self.failure: str | None = None

    def run(self) -> None:
        last_prune = 0.0
        try:
            while not self._stop_event.is_set():
                self.outbox.step()
                if time.time() - last_prune > 3600:
                    last_prune = time.time()
                    self.outbox.prune()
                self._stop_event.wait(self.interval_s)
            self.outbox.route()  # what arrived last is routed (and delivered at the next start if not now)
            self.outbox.dispatch()
            self.outbox.deliver()
        except sqlite3.DatabaseError as e:
            self.failure = one_line(e)
            log.critical("broadcast stopped: %s", self.failure)
        finally:
            self.outbox.db.close()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop_event.set()
        self.join(timeout)
