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
   still open) becomes outbox rows, each a *page* of at most `page_alerts`
   alerts and `page_bytes` of stored alert bodies, each with a deterministic
   idempotency key (receiver, group, notification number). The group is read
   a page at a time, and one transaction pages at most `dispatch_alerts`
   pending alerts (the rest stay pending and follow at the next step), so
   neither memory nor the time the store is held grows with a group's size.
3. **deliver**: due outbox rows go to their receiver, one thread per
   receiver (a slow or dead receiver delays only itself); each delivery is
   bounded in total time by the receiver's `timeout_s`; success marks it
   delivered; a failure is retried with exponential backoff; after
   `max_attempts` the row is parked as failed (the UI and `ntds-aggregator
   deliveries` show it, `deliveries retry` re-queues it, `deliveries park` and
   `deliveries drop` take a pending one out of the queue by hand). A row made
   before pages existed (more alerts than a page) is split into pages first;
   a row that cannot be read is parked, never retried in a loop.

A store that cannot be written (a full disk) holds every step back with one
log line per episode; nothing is lost and the steps resume when there is room.
The broadcast thread never takes `serve` down: `serve` logs its end and
starts it again.

An alert accepted by the store is routed exactly once whatever happens to the
process (kill -9 included): the high-water mark moves with the rows it
produced. A delivery interrupted between sending and recording is sent again
under the same key, so a receiver that keeps keys never shows it twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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
    page_alerts: int = 500
    page_bytes: int = 2 * 2**20
    dispatch_alerts: int = 20_000

    MEANINGS = {
        "max_attempts": "attempts before a delivery is parked as failed (visible in the UI and `deliveries`)",
        "backoff_s": "wait after the first failure; it doubles with each failure",
        "max_backoff_s": "longest wait between two attempts",
        "keep_delivered_days": "days delivered notifications stay in the outbox (the delivery log)",
        "page_alerts": "most alerts in one delivery (a larger group goes out as several pages)",
        "page_bytes": "most bytes of stored alerts in one delivery (one alert always fits)",
        "dispatch_alerts": "most pending alerts paged in one transaction (the rest follow at the next step)",
    }


CHUNK = 500
"""Rows read per query when walking a group or a list of ids: below SQLite's limit on parameters, bounded memory."""


def store_problem(e: sqlite3.OperationalError) -> str:
    """One line for a store that cannot be written now: a full disk says so."""
    if getattr(e, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(e).lower():
        return f"disk full: the store cannot be written ({one_line(e)})"
    return f"the store cannot be written now: {one_line(e)}"


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is still open: SQLite has already rolled back a transaction a full disk ended."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.OperationalError):
            db.execute("ROLLBACK")


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
            ids = [a for (a,) in self.db.execute(
                "SELECT id FROM messages WHERE type = 'alert' AND id > ? ORDER BY id LIMIT ?", (last, batch)
            )]  # fmt: skip
            silences = self.manager.silences(active_only=True, at=now)
            for alert_id, sensor, body in self._bodies(ids):
                try:
                    alert = upgrade_body("alert", json.loads(body))
                except (ValueError, TypeError, KeyError, AttributeError) as e:
                    log.error("alert %d cannot be routed (its stored body cannot be read): %s", alert_id, one_line(e))
                    continue
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
            if ids:
                self.db.execute("INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                (ROUTED, ids[-1]))  # fmt: skip
            self.db.execute("COMMIT")
        except BaseException:
            _rollback(self.db)
            raise
        return len(ids)

    def _bodies(self, ids: list[int], at_once: int = 50) -> Iterator[tuple[int, str, str]]:
        """(id, sensor, body) of these messages, a few at a time: memory does not grow with the batch."""
        for start in range(0, len(ids), at_once):
            chunk = ids[start : start + at_once]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, sensor, body FROM messages WHERE id IN ({marks}) ORDER BY id"
            yield from self.db.execute(sql, chunk).fetchall()

    # -- 2. dispatch -----------------------------------------------------------------------

    def dispatch(self, now: float | None = None) -> int:
        """Turn groups whose wait is over into outbox rows, a page each; returns how many notifications were made.

        At most `dispatch_alerts` pending alerts are paged in one call: a larger group keeps the rest pending and
        stays due, so the next call goes on with it."""
        now = time.time() if now is None else now
        routes = {r.index: r for r in self.routes}
        made = 0
        budget = self.o.dispatch_alerts
        self.db.execute("BEGIN IMMEDIATE")
        try:
            groups = self.db.execute(
                "SELECT id, route, receiver, labels, first_pending, last_sent, notes FROM notify_groups"
            ).fetchall()
            silences = self.manager.silences(active_only=True, at=now)
            for gid, route_index, receiver, labels, first_pending, last_sent, notes in groups:
                if budget <= 0:
                    break
                route = routes.get(route_index)
                if route is None or receiver not in route.receivers:
                    continue  # a route or receiver the configuration no longer has: its pending alerts wait
                has_pending = self.db.execute(
                    "SELECT 1 FROM notify_pending WHERE group_id = ? LIMIT 1", (gid,)
                ).fetchone()  # fmt: skip
                if has_pending:
                    due = (first_pending + route.group_wait_s) if last_sent is None else (
                        max(last_sent + route.group_interval_s, first_pending or 0))  # fmt: skip
                    if now < due:
                        continue
                    rows, repeat = self._pending(gid, budget), False
                elif route.repeat_interval_s and last_sent is not None and now >= last_sent + route.repeat_interval_s:
                    rows, repeat = self._open_sent(gid), True
                else:
                    continue
                sent_any = False
                for page in self._pages(rows):
                    ids = self._unsilenced([a for a, _ in page], silences, now)
                    if not repeat:
                        self.db.execute("DELETE FROM notify_pending WHERE group_id = ? AND alert_id <= ?",
                                        (gid, page[-1][0]))  # fmt: skip
                        budget -= len(page)
                    if not ids:
                        continue
                    notes += 1
                    key = f"{receiver}-{gid}-{notes}"
                    self.db.execute(
                        "INSERT OR IGNORE INTO outbox (receiver, key, route, labels, alert_ids, repeat, created, "
                        "next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (receiver, key, route_index, labels, json.dumps(ids), int(repeat), now, now),
                    )
                    self.db.executemany("INSERT OR IGNORE INTO notify_sent VALUES (?, ?)", [(gid, a) for a in ids])
                    made += 1
                    sent_any = True
                unfinished = not repeat and self.db.execute(
                    "SELECT 1 FROM notify_pending WHERE group_id = ? LIMIT 1", (gid,)
                ).fetchone()  # fmt: skip
                if unfinished:  # the rest of a large group: still due, the next call goes on with it
                    self.db.execute("UPDATE notify_groups SET notes = ? WHERE id = ?", (notes, gid))
                elif repeat and not sent_any:
                    self.db.execute("UPDATE notify_groups SET last_sent = ? WHERE id = ?", (now, gid))
                else:
                    self.db.execute(
                        "UPDATE notify_groups SET last_sent = ?, notes = ?, first_pending = NULL WHERE id = ?",
                        (now, notes if sent_any else notes + 1, gid),
                    )
            self.db.execute("COMMIT")
        except BaseException:
            _rollback(self.db)
            raise
        return made

    def _pending(self, gid: int, budget: int) -> Iterator[tuple[int, int]]:
        """(alert id, stored size) of a group's pending alerts in id order, read CHUNK at a time, at most budget."""
        last, left = 0, budget
        while left > 0:
            rows = self.db.execute(
                "SELECT p.alert_id, COALESCE(length(m.body), 0) FROM notify_pending p "
                "LEFT JOIN messages m ON m.id = p.alert_id WHERE p.group_id = ? AND p.alert_id > ? "
                "ORDER BY p.alert_id LIMIT ?",
                (gid, last, min(CHUNK, left)),
            ).fetchall()
            if not rows:
                return
            yield from rows
            last, left = rows[-1][0], left - len(rows)

    def _open_sent(self, gid: int) -> Iterator[tuple[int, int]]:
        """(alert id, stored size) of a group's alerts sent before and still open, read CHUNK at a time."""
        last = 0
        while True:
            rows = self.db.execute(
                f"SELECT s.alert_id, COALESCE(length(m.body), 0) FROM notify_sent s JOIN alerts a ON a.id = s.alert_id "
                f"LEFT JOIN messages m ON m.id = s.alert_id WHERE s.group_id = ? AND s.alert_id > ? AND a.{OPEN} "
                f"ORDER BY s.alert_id LIMIT ?",
                (gid, last, CHUNK),
            ).fetchall()
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    def _pages(self, rows: Iterable[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
        """Cut (id, size) pairs into pages of at most page_alerts alerts and page_bytes (one alert always fits)."""
        page: list[tuple[int, int]] = []
        size = 0
        for alert_id, n in rows:
            if page and (len(page) >= self.o.page_alerts or size + n > self.o.page_bytes):
                yield page
                page, size = [], 0
            page.append((alert_id, n))
            size += n
        if page:
            yield page

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
        """The notification an outbox row stands for, as receivers get it (a row holds at most one page)."""
        _, receiver, key, route, labels, alert_ids, repeat = row[:7]
        ids = json.loads(alert_ids)
        alerts = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            for alert_id, sensor, body in self.db.execute(
                f"SELECT id, sensor, body FROM messages WHERE id IN ({marks}) ORDER BY id", chunk
            ):
                alerts.append({"id": alert_id, "sensor": sensor, **upgrade_body("alert", json.loads(body))})
        return {"version": NOTE_VERSION, "idempotency_key": key, "receiver": receiver, "route": route,
                "group": json.loads(labels), "repeat": bool(repeat), "alerts": alerts}  # fmt: skip

    def _oversize(self, ids: list[int]) -> bool:
        """More than a page: a row made before deliveries were paged."""
        if len(ids) > self.o.page_alerts:
            return True
        if len(ids) < 2:
            return False
        marks = ",".join("?" * len(ids))
        size = self.db.execute(f"SELECT SUM(length(body)) FROM messages WHERE id IN ({marks})", ids).fetchone()[0]
        return (size or 0) > self.o.page_bytes

    def _split(self, row: tuple, ids: list[int]) -> int:
        """Replace an outbox row of more than a page by its pages (keys KEY.1, KEY.2, ...); returns how many."""
        outbox_id, receiver, key, route, labels, _, repeat = row[:7]

        def sizes() -> Iterator[tuple[int, int]]:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                marks = ",".join("?" * len(chunk))
                got = dict(self.db.execute(f"SELECT id, length(body) FROM messages WHERE id IN ({marks})", chunk))
                yield from ((a, got.get(a, 0)) for a in chunk)

        now, n = time.time(), 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            still = self.db.execute("SELECT status FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
            if still is None or still[0] != "pending":  # parked or dropped by hand meanwhile
                self.db.execute("ROLLBACK")
                return 0
            for n, page in enumerate(self._pages(sizes()), 1):  # noqa: B007 - n is the count afterwards
                self.db.execute(
                    "INSERT OR IGNORE INTO outbox (receiver, key, route, labels, alert_ids, repeat, created, "
                    "next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (receiver, f"{key}.{n}", route, labels, json.dumps([a for a, _ in page]), repeat, now, now),
                )
            self.db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))
            self.db.execute("COMMIT")
        except BaseException:
            _rollback(self.db)
            raise
        log.info("delivery %d (%d alerts) split into %d pages", outbox_id, len(ids), n)
        return n

    def deliver(
        self,
        now: float | None = None,
        limit: int = 100,
        receiver: str | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Send what is due (to one receiver, or all); returns how many deliveries succeeded."""
        now = time.time() if now is None else now
        only = "AND receiver = ? " if receiver is not None else ""
        rows = self.db.execute(
            "SELECT id, receiver, key, route, labels, alert_ids, repeat, attempts FROM outbox "
            f"WHERE status = 'pending' AND next_attempt <= ? {only}ORDER BY id LIMIT ?",
            (now, *([receiver] if receiver is not None else []), limit),
        ).fetchall()
        done = 0
        for row in rows:
            if stop is not None and stop():
                break
            outbox_id, name, attempts = row[0], row[1], row[7]
            if name not in self.receivers:
                self._failed(outbox_id, attempts, "receiver no longer configured", park=True)
                continue
            try:
                ids = json.loads(row[5])
                if not isinstance(ids, list) or not all(isinstance(a, int) for a in ids):
                    raise ValueError("alert_ids is not a list of alert ids")
                if self._oversize(ids):
                    self._split(row, ids)
                    continue
            except (ValueError, TypeError) as e:
                self._failed(outbox_id, attempts, f"the delivery cannot be read: {one_line(e)}", park=True)
                continue
            limit_ = self.limits[name]
            if not limit_.ready():
                continue
            limit_.take()
            try:
                note = self.note(row)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                self._failed(outbox_id, attempts, f"an alert of the delivery cannot be read: {one_line(e)}", park=True)
                continue
            try:
                if note["alerts"]:
                    self._sender(name).send(note)
            except Exception as e:  # noqa: BLE001 - any failure of a receiver is retried, never fatal
                self._failed(outbox_id, attempts, one_line(e))
                continue
            finally:
                del note
            self.db.execute("UPDATE outbox SET status = 'delivered', delivered = ?, attempts = ? "
                            "WHERE id = ? AND status = 'pending'", (time.time(), attempts + 1, outbox_id))  # fmt: skip
            self.delivered += 1
            done += 1
        return done

    def _failed(self, outbox_id: int, attempts: int, error: str, park: bool = False) -> None:
        attempts += 1
        if park or attempts >= self.o.max_attempts:
            self.db.execute("UPDATE outbox SET status = 'failed', attempts = ?, last_error = ? "
                            "WHERE id = ? AND status = 'pending'", (attempts, error[:500], outbox_id))  # fmt: skip
            self.failed += 1
            log.error("delivery %d parked as failed after %d attempts: %s", outbox_id, attempts, error)
            return
        wait = min(self.o.backoff_s * 2 ** (attempts - 1), self.o.max_backoff_s)
        self.db.execute("UPDATE outbox SET attempts = ?, last_error = ?, next_attempt = ? WHERE id = ? "
                        "AND status = 'pending'", (attempts, error[:500], time.time() + wait, outbox_id))  # fmt: skip
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


def _by_ids(db: sqlite3.Connection, sql: str, ids: list[int]) -> int:
    """Run `sql` (ending in `id IN ({marks})`) over ids, CHUNK at a time; returns the rows changed."""
    changed = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        changed += db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk).rowcount
    return changed


def retry(db: sqlite3.Connection, ids: list[int] | None) -> int:
    """Re-queue parked deliveries (all failed ones when ids is None); returns how many."""
    db.executescript(SCHEMA)
    sql = "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt = 0 WHERE status = 'failed'"
    if ids is None:
        return db.execute(sql).rowcount
    return _by_ids(db, sql + " AND id IN ({marks})", ids)


def park(db: sqlite3.Connection, ids: list[int]) -> int:
    """Take pending deliveries out of the queue as failed (`retry` sends them again); returns how many."""
    db.executescript(SCHEMA)
    return _by_ids(db, "UPDATE outbox SET status = 'failed', last_error = 'parked by hand' "
                       "WHERE status = 'pending' AND id IN ({marks})", ids)  # fmt: skip


def drop(db: sqlite3.Connection, ids: list[int]) -> int:
    """Give up pending or parked deliveries for good: kept in the log as dropped, never sent; returns how many."""
    db.executescript(SCHEMA)
    return _by_ids(db, "UPDATE outbox SET status = 'dropped', last_error = 'dropped by hand' "
                       "WHERE status IN ('pending', 'failed') AND id IN ({marks})", ids)  # fmt: skip


def deliveries(db: sqlite3.Connection, status: str | None = None, limit: int = 500) -> list[dict]:
    db.executescript(SCHEMA)
    sql = ("SELECT id, receiver, key, status, attempts, last_error, created, delivered, json_array_length(alert_ids), "
           "repeat FROM outbox")  # fmt: skip
    args: list = []
    if status:
        sql, args = sql + " WHERE status = ?", [status]
    rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    names = ("id", "receiver", "key", "status", "attempts", "last_error", "created", "delivered", "alerts", "repeat")
    return [dict(zip(names, r)) | {"repeat": bool(r[9])} for r in rows]


class _Episode:
    """One log line when a trouble starts and one when it ends, not one per attempt."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.problem: str | None = None

    def failed(self, problem: str) -> None:
        if problem != self.problem:
            log.error("%s waits: %s; nothing is lost, it goes on when the store can be written", self.what, problem)
        self.problem = problem

    def ok(self) -> None:
        if self.problem is not None:
            log.warning("%s goes on: the store can be written again", self.what)
        self.problem = None


class ReceiverWorker(threading.Thread):
    """Delivers one receiver's due outbox rows on its own connection: a slow or dead receiver delays only itself."""

    def __init__(self, store_path, name: str, routes, receivers, options: BroadcastOptions,
                 stopping: threading.Event, interval_s: float) -> None:  # fmt: skip
        super().__init__(name=f"broadcast-{name}", daemon=True)
        self.store_path, self.receiver = store_path, name
        self.routes, self.receivers, self.options = routes, receivers, options
        self.stopping, self.interval_s = stopping, interval_s
        self.failure: str | None = None

    def run(self) -> None:
        episode = _Episode(f"delivery to {self.receiver}")
        outbox = None
        try:
            while not self.stopping.is_set():
                try:
                    if outbox is None:
                        outbox = Outbox(connect_manager(self.store_path), self.routes, self.receivers, self.options)
                    done = outbox.deliver(limit=20, receiver=self.receiver, stop=self.stopping.is_set)
                    episode.ok()
                except sqlite3.OperationalError as e:
                    episode.failed(store_problem(e))
                    done = 0
                    self.stopping.wait(min(5.0, 20 * self.interval_s))
                if not done:
                    self.stopping.wait(self.interval_s)
        except Exception as e:  # noqa: BLE001 - logged; the broadcast thread starts this receiver's worker again
            self.failure = one_line(e)
            log.critical("delivery to %s stopped: %s", self.receiver, self.failure)
        finally:
            if outbox is not None:
                outbox.db.close()


class Broadcaster(threading.Thread):
    """Routes and dispatches every `interval_s` on its own connection to the store, and keeps one delivery thread
    per receiver running (a dead one is logged and started again), until stopped."""

    RESTART_S = (1.0, 60.0)
    """First and longest wait before a dead delivery thread is started again (it doubles while they keep dying)."""

    def __init__(self, store_path, routes, receivers, options: BroadcastOptions, interval_s: float = 0.25) -> None:
        super().__init__(name="broadcast", daemon=True)
        self.store_path, self.interval_s = store_path, interval_s
        self.outbox = Outbox(connect_manager(store_path), routes, receivers, options)
        self._stop_event = threading.Event()
        self._stopping_workers = threading.Event()
        self.workers: dict[str, ReceiverWorker] = {}
        self._restart: dict[str, tuple[float, float]] = {}  # receiver -> (not before, next wait)
        self.failure: str | None = None
        self.started_at: float | None = None  # monotonic, set when it runs
        self.noted = False  # serve has logged its end

    def _worker(self, name: str) -> ReceiverWorker:
        o = self.outbox
        w = ReceiverWorker(self.store_path, name, o.routes, o.receivers, o.o, self._stopping_workers, self.interval_s)
        w.start()
        return w

    def _watch_workers(self) -> None:
        now = time.monotonic()
        for name in self.outbox.receivers:
            w = self.workers.get(name)
            if w is not None and w.is_alive():
                continue
            if w is None:
                self.workers[name] = self._worker(name)
                continue
            not_before, wait = self._restart.get(name, (0.0, self.RESTART_S[0]))
            if not_before == 0.0:
                self._restart[name] = (now + wait, wait)
                log.error("delivery to %s stopped (%s); starting it again in %.0f s", name, w.failure, wait)
            elif now >= not_before:
                self.workers[name] = self._worker(name)
                self._restart[name] = (0.0, min(wait * 2, self.RESTART_S[1]))

    def _park_unconfigured(self) -> None:
        names = list(self.outbox.receivers)
        marks = ",".join("?" * len(names))
        n = self.outbox.db.execute(
            f"UPDATE outbox SET status = 'failed', last_error = 'receiver no longer configured' "
            f"WHERE status = 'pending' AND receiver NOT IN ({marks})", names,
        ).rowcount  # fmt: skip
        if n:
            log.error("%d deliveries parked as failed: their receiver is no longer configured", n)

    def run(self) -> None:
        self.started_at = time.monotonic()
        episode = _Episode("broadcast")
        last_prune = 0.0
        try:
            while not self._stop_event.is_set():
                try:
                    if time.time() - last_prune > 3600:
                        self._park_unconfigured()
                        self.outbox.prune()
                        last_prune = time.time()
                    self.outbox.route()
                    self.outbox.dispatch()
                    episode.ok()
                    wait = self.interval_s
                except sqlite3.OperationalError as e:
                    episode.failed(store_problem(e))
                    wait = min(5.0, 20 * self.interval_s)
                self._watch_workers()
                self._stop_event.wait(wait)
            try:  # what arrived last is routed (and delivered at the next start if not now)
                self.outbox.route()
                self.outbox.dispatch()
            except sqlite3.OperationalError as e:
                episode.failed(store_problem(e))
        except Exception as e:  # noqa: BLE001 - logged; serve starts the broadcast again
            self.failure = one_line(e)
            log.critical("broadcast stopped: %s", self.failure)
        finally:
            self._stopping_workers.set()
            end = time.monotonic() + 15
            for w in self.workers.values():
                w.join(max(0.0, end - time.monotonic()))
            self.outbox.db.close()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop_event.set()
        self.join(timeout)
