"""Context on every alert, kept current: the sensors' context messages merged, and each new alert judged by it.

`catch_up` is the one entry point. It reads the context messages stored since
its last pass (a high-water mark in the store's `state` table, so each message
is merged exactly once however often it runs and whoever runs it: `serve`'s
context thread every few seconds, `ntds-aggregator prevalence`, the weekly
report), merges them into the prevalence tables (aggregator.prevalence) and
the host tables (aggregator.host_story), then gives every alert stored since
its last pass its prevalence: in words, and the tier modifier it applied, kept
in `alert_context` with the tier before and after. The alert index's tier (what
the queue filters and shows) becomes the modified tier; the alert's body stays
as the sensor sent it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aggregator import host_story, prevalence
from aggregator.prevalence import ModifierOptions, Sites
from ntds.errors import one_line
from ntds.networks import DEFAULT_LOCAL_NETWORKS, parse_networks
from ntds.wire.schema import unpack, upgrade_body, wire_time

log = logging.getLogger("ntds.aggregator.context")

SCHEMA = (
    prevalence.SCHEMA
    + host_story.SCHEMA
    + """
CREATE TABLE IF NOT EXISTS alert_context (
    alert_id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, tier_before INTEGER NOT NULL,
    tier_after INTEGER NOT NULL, modifier TEXT NOT NULL, words TEXT NOT NULL, computed REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS alert_context_forgotten AFTER DELETE ON alerts BEGIN
    DELETE FROM alert_context WHERE alert_id = OLD.id;
END;
"""
)
_DEFAULT_LOCAL = parse_networks(DEFAULT_LOCAL_NETWORKS)


def is_local_default(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return any(a in n for n in _DEFAULT_LOCAL if n.version == a.version)


MARK = "context_mark"
ALERT_MARK = "context_alert_mark"
BATCH = 200
MERGED_KEEP_S = 2 * 86400.0
"""Context messages are deleted from the store this long after they arrived once merged: what they said lives on
in the merged tables, and a busy sensor's hourly context (about 1-3 MB, docs/benchmarks.md) would otherwise stay
for retention_days."""
SKIPPED_KINDS = ("overflow", *host_story.NOTICE_KINDS)
"""Alerts prevalence does not judge: an overflow summary names no destination; notices are about the host itself."""


@dataclass(frozen=True)
class ContextOptions:
    sites: Sites = Sites({})
    modifier: ModifierOptions = ModifierOptions()
    notices: host_story.NoticeOptions = host_story.NoticeOptions()
    retention_days: int = 400

    @classmethod
    def of(cls, cfg) -> ContextOptions:
        """From aggregator.yaml's sites, prevalence_modifier, notices_learning_days and notices_alert."""
        return cls(
            Sites.of(cfg.sites),
            ModifierOptions(**cfg.prevalence_modifier),
            host_story.NoticeOptions(cfg.notices_learning_days, tuple(cfg.notices_alert)),
            cfg.retention_days,
        )


def ensure(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def ensure_readable(db: sqlite3.Connection) -> None:
    """Whether the context tables exist, for a reader that cannot create them: InputError if they do not."""
    from ntds.errors import InputError

    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alert_context'").fetchone() is None:
        raise InputError("the store has no context yet and cannot be written here (run serve, or as its owner)")


def _mark(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _set_mark(db: sqlite3.Connection, key: str, value: int) -> None:
    db.execute("INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def _past_mark(db: sqlite3.Connection, key: str, query: str, apply: Callable[[list], None]) -> int:
    """Rows past the mark `key` (`query` takes the mark and a batch size, first column the id), a batch at a time,
    each batch applied and the mark moved in one transaction; a batch another process took meanwhile is skipped.
    Returns the rows applied."""
    done = 0
    while True:
        mark = _mark(db, key)
        rows = db.execute(query, (mark, BATCH)).fetchall()
        if not rows:
            return done
        db.execute("BEGIN IMMEDIATE")
        try:
            if _mark(db, key) != mark:  # another process took them meanwhile
                db.execute("ROLLBACK")
                continue
            apply(rows)
            _set_mark(db, key, rows[-1][0])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        done += len(rows)


def catch_up(db: sqlite3.Connection, options: ContextOptions, now: float | None = None) -> tuple[int, int]:
    """Merge the context messages and judge the alerts stored since the last pass; (messages, alerts) done."""
    ensure(db)

    def merge(rows: list) -> None:
        for _, sensor, body in rows:
            b = json.loads(body)
            b |= unpack(b.pop("packed"))  # checked as the message was received
            prevalence.ingest(db, sensor, b)
            host_story.ingest(db, sensor, options.sites.site(sensor), b, options.notices)

    def judge(rows: list) -> None:
        for alert_id, tier, body in rows:
            _judge(db, options, alert_id, tier, upgrade_body("alert", json.loads(body)), now)

    messages = _past_mark(db, MARK, "SELECT id, sensor, body FROM messages WHERE type = 'context' AND id > ? "
                          "ORDER BY id LIMIT ?", merge)  # fmt: skip
    if messages:
        db.execute("DELETE FROM messages WHERE type = 'context' AND id <= ? AND received < ?",
                   (_mark(db, MARK), (time.time() if now is None else now) - MERGED_KEEP_S))  # fmt: skip
    alerts = _past_mark(db, ALERT_MARK, "SELECT a.id, a.tier, m.body FROM alerts a JOIN messages m ON m.id = a.id "
                        "WHERE a.id > ? ORDER BY a.id LIMIT ?", judge)  # fmt: skip
    return messages, alerts


def forget(db: sqlite3.Connection, options: ContextOptions, now: float | None = None) -> None:
    """Retention (retention_days, 0: keep everything): destinations, days, peers and notices older go."""
    if not options.retention_days:
        return
    before = (time.time() if now is None else now) - options.retention_days * 86400.0
    db.execute("BEGIN IMMEDIATE")
    try:
        prevalence.forget(db, before)
        host_story.forget(db, before)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _external(kind: str, key: str) -> bool:
    """Whether a destination the fleet has not counted yet is one it would count: names always, addresses outside the
    sensors' default local networks (RFC 1918, ULA, link-local: an internal scan's target is no external
    destination)."""
    if kind != "address":
        return True
    try:
        a = ipaddress.ip_address(key)
    except ValueError:
        return False
    return not (a.is_loopback or a.is_multicast or a.is_unspecified or is_local_default(key))


def _judge(db: sqlite3.Connection, options: ContextOptions, alert_id: int, tier: int, body: dict,
           now: float | None) -> None:  # fmt: skip
    if body["kind"] in SKIPPED_KINDS:
        return
    dest = prevalence.destination_of(body)
    if dest is None:
        return
    kind, key = dest
    at = wire_time(body["first_seen"]).timestamp()
    known = db.execute("SELECT 1 FROM prevalence WHERE kind = ? AND key = ? AND sensor = ''", dest).fetchone()
    if known is None and not _external(kind, key):
        return
    # The alert's own host and time count too: the hourly context of its hour may not have arrived yet.
    p = prevalence.lookup(db, options.sites, kind, key, plus_host=body["src_ip"], plus_time=at)
    m = prevalence.modifier(p, tier, at, options.modifier)
    db.execute(
        "INSERT OR REPLACE INTO alert_context VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (alert_id, kind, key, m.tier_before, m.tier_after, m.text, prevalence.words(p, now), time.time()),
    )
    if m.tier_after != tier:
        db.execute("UPDATE alerts SET tier = ? WHERE id = ?", (m.tier_after, alert_id))


def of_alert(db: sqlite3.Connection, options: ContextOptions, alert_id: int, body: dict, now: float | None = None
             ) -> dict | None:  # fmt: skip
    """What the alert page shows: the destination's prevalence now, in words, and the modifier applied on arrival."""
    ensure(db)
    row = db.execute(
        "SELECT kind, key, tier_before, tier_after, modifier FROM alert_context WHERE alert_id = ?", (alert_id,)
    ).fetchone()
    if row is None:
        return None
    kind, key, before, after, text = row
    p = prevalence.lookup(db, options.sites, kind, key, plus_host=body.get("src_ip", ""),
                          plus_time=wire_time(body["first_seen"]).timestamp())  # fmt: skip
    return {
        "kind": kind,
        "destination": key,
        "words": prevalence.words(p, now) if p else "",
        "prevalence": p.as_dict() if p else None,
        "tier_before": before,
        "tier_after": after,
        "modifier": text,
    }


class ContextWorker(threading.Thread):
    """`serve`'s context thread: catch_up every `every_s` seconds on its own connection to the store."""

    def __init__(self, store_path, options: ContextOptions, every_s: float = 5.0) -> None:
        super().__init__(name="context", daemon=True)
        self.store_path = store_path
        self.options = options
        self.every_s = every_s
        self._halt = threading.Event()
        self.failure: str | None = None

    def run(self) -> None:
        db = sqlite3.connect(self.store_path, isolation_level=None, timeout=30, check_same_thread=False)
        forgotten = 0.0
        try:
            while not self._halt.is_set():
                try:
                    if time.monotonic() - forgotten > 3600 or not forgotten:
                        ensure(db)
                        forget(db, self.options)
                        forgotten = time.monotonic()
                    done = catch_up(db, self.options)
                    if any(done):
                        log.info("context: %d context messages merged, %d alerts judged", *done)
                except sqlite3.OperationalError as e:  # a full disk, a busy store: again at the next pass
                    log.error("context waits: %s", one_line(e))
                self._halt.wait(self.every_s)
        except Exception as e:  # noqa: BLE001 - a damaged store, a bug: serve stops and says why, in one line
            self.failure = one_line(e)
        finally:
            db.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
