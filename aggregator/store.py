"""The aggregator's durable, idempotent message store.

Each message is stored once however often it arrives: (sensor, spool, seq,
created) is unique, so a resent message is a no-op while a recreated spool
that starts again at sequence 1 (new spool id) or a restored one that reuses
numbers (new creation times) is stored as new, counted and logged. A batch is
one transaction committed with synchronous=FULL, and only after the commit are
its messages acknowledged, so an acknowledged message is on disk.

`aggregator.archive` exports messages in `id` order into the Parquet archive
the reports read; its high-water mark lives here too, so export and store can
never disagree about what was exported. Each row also keeps its data time (a
summary's interval, an alert's flow start, a health message's creation), so a
report can tell a week that has no data from a week whose data the archive
lacks.

Per sensor the sensors table also keeps what the quotas need and show: the
bytes stored on the current UTC day (`day`, `day_bytes`: each new message's
body as stored, an evidence part's data), and the messages the receiver refused
over a quota (`refused`, `refused_bytes`, `refused_last`, `refused_why`: rate
or day). Refused messages were never acknowledged, so their sensors still hold
them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aggregator.evidence import JOBS_SCHEMA, store_part
from ntds.errors import InputError
from ntds.wire.schema import Message, upgrade_body, wire_time

log = logging.getLogger("ntds.aggregator.store")

ALERTS_INDEXED_KEY = "alerts_indexed"
"""State key: every stored alert has its row in the alerts table (the upgrade from before it ran)."""
COLD_MARK = "cold_mark"
"""The highest message id `forget_cold` has looked at: below it, only what it keeps."""
DATA_TIME = {"summary": "interval_start", "stats": "interval_start", "context": "interval_start", "alert": "first_seen"}
"""The body field holding a message's data time; other types are dated by their creation."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sensor TEXT NOT NULL, spool TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL, type TEXT NOT NULL, created TEXT NOT NULL, received REAL NOT NULL,
    data_time REAL NOT NULL DEFAULT 0, body TEXT NOT NULL,
    UNIQUE (sensor, spool, seq, created));
CREATE INDEX IF NOT EXISTS messages_data_time ON messages (data_time);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE IF NOT EXISTS sensors (
    sensor TEXT PRIMARY KEY, last_seen REAL NOT NULL, hello TEXT, health TEXT,
    spool TEXT NOT NULL DEFAULT '', max_seq INTEGER NOT NULL DEFAULT 0,
    spool_restarts INTEGER NOT NULL DEFAULT 0, seq_backwards INTEGER NOT NULL DEFAULT 0,
    day TEXT NOT NULL DEFAULT '', day_bytes INTEGER NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0,
    refused_bytes INTEGER NOT NULL DEFAULT 0, refused_last REAL NOT NULL DEFAULT 0,
    refused_why TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, sensor TEXT NOT NULL, kind TEXT NOT NULL, src_ip TEXT NOT NULL, dst_ip TEXT NOT NULL,
    dst_port INTEGER NOT NULL, application TEXT NOT NULL, tier INTEGER NOT NULL, count INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, signature TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new', assignee TEXT NOT NULL DEFAULT '', updated REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS alerts_first_seen ON alerts (first_seen);
CREATE INDEX IF NOT EXISTS alerts_src ON alerts (src_ip, first_seen);
CREATE INDEX IF NOT EXISTS alerts_kind ON alerts (kind, first_seen);
-- the alert manager's queue: grouping 100,000 alerts reads this index alone, never the table
CREATE INDEX IF NOT EXISTS alerts_group ON alerts (sensor, kind, src_ip, application, tier, status, count, first_seen,
                                                   last_seen);
CREATE TRIGGER IF NOT EXISTS alert_forgotten AFTER DELETE ON messages WHEN OLD.type = 'alert' BEGIN
    DELETE FROM alerts WHERE id = OLD.id;
END;
"""


QUOTA_COLUMNS = {"day": "TEXT NOT NULL DEFAULT ''", "day_bytes": "INTEGER NOT NULL DEFAULT 0",
                 "refused": "INTEGER NOT NULL DEFAULT 0", "refused_bytes": "INTEGER NOT NULL DEFAULT 0",
                 "refused_last": "REAL NOT NULL DEFAULT 0", "refused_why": "TEXT NOT NULL DEFAULT ''"}  # fmt: skip
"""Columns of the sensors table added for quotas (a store from before them gets them on opening)."""


def utc_day(t: float) -> str:
    """The UTC day of a time in seconds since the epoch, as YYYY-MM-DD: what a day's quota counts."""
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _alert_columns(row: str) -> str:
    """SQL for the indexed columns of an alert body (version 2 bodies, stored by an older aggregator, included)."""
    b = f"{row}.body"
    last = f"COALESCE(json_extract({b}, '$.last_seen'), json_extract({b}, '$.time'))"
    return (
        f"COALESCE(json_extract({b}, '$.kind'), 'flow'), json_extract({b}, '$.src_ip'), json_extract({b}, '$.dst_ip'), "
        f"json_extract({b}, '$.dst_port'), json_extract({b}, '$.application'), json_extract({b}, '$.tier'), "
        f"COALESCE(json_extract({b}, '$.count'), 1), {row}.data_time, (julianday({last}) - 2440587.5) * 86400.0, "
        f"COALESCE(json_extract({b}, '$.signature'), '')"
    )


_INDEXED = "id, sensor, kind, src_ip, dst_ip, dst_port, application, tier, count, first_seen, last_seen, signature"
SCHEMA += f"""
CREATE TRIGGER IF NOT EXISTS alert_indexed AFTER INSERT ON messages WHEN NEW.type = 'alert' BEGIN
    INSERT OR IGNORE INTO alerts ({_INDEXED}) VALUES (NEW.id, NEW.sensor, {_alert_columns("NEW")});
END;
"""
"""`alerts` is the alert manager's index of the stored alerts (the queue's filters and counts, and each alert's
triage status), kept by triggers in the same transaction as the message itself: an alert is never stored
without its index row, and forgetting a message forgets its row."""


def data_time(m: Message) -> float:
    """Seconds since the epoch of the time a message is about (see DATA_TIME)."""
    field_name = DATA_TIME.get(m.type)
    return wire_time(m.body[field_name] if field_name else m.created).timestamp()


@dataclass
class Stored:
    """What one batch did: new messages, and sequence anomalies to log."""

    new: int = 0
    events: list[str] = field(default_factory=list)


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # what sensors saw is nobody else's
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self.db.executescript(SCHEMA)
        self.db.executescript(JOBS_SCHEMA)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(sensors)")}
        for name, kind in QUOTA_COLUMNS.items():
            if name not in have:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it just now
                    self.db.execute(f"ALTER TABLE sensors ADD COLUMN {name} {kind}")
        self._index_alerts()
        self.usage: dict[str, tuple[str, int]] = {
            s: (d, n) for s, d, n in self.db.execute("SELECT sensor, day, day_bytes FROM sensors WHERE day != ''")
        }
        """Per sensor: (UTC day, bytes stored that day), as committed."""

    def _migrate(self) -> None:
        """Stores written before spool ids (0.1): rebuild the messages and sensors tables in place."""
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(messages)")}
        if not columns or "spool" in columns:
            return
        log.info("%s: upgrading the store to spool ids and data times", self.path)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE messages RENAME TO messages_v1")
            self.db.execute("ALTER TABLE sensors RENAME TO sensors_v1")
            self.db.executescript(SCHEMA.replace("CREATE INDEX IF NOT EXISTS", "CREATE INDEX"))
            rows = self.db.execute("SELECT id, sensor, seq, type, created, received, body FROM messages_v1")
            for id_, sensor, seq, kind, created, received, body in rows.fetchall():
                when = data_time(Message(kind, sensor, seq, created, upgrade_body(kind, json.loads(body))))
                self.db.execute(
                    "INSERT INTO messages (id, sensor, spool, seq, type, created, received, data_time, body)"
                    " VALUES (?, ?, '', ?, ?, ?, ?, ?, ?)",
                    (id_, sensor, seq, kind, created, received, when, body),
                )
            self.db.execute(
                "INSERT INTO sensors (sensor, last_seen, hello, health) SELECT sensor, last_seen, hello, health"
                " FROM sensors_v1"
            )
            self.db.execute("DROP TABLE messages_v1")
            self.db.execute("DROP TABLE sensors_v1")
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a failed COMMIT (a full disk) has ended it: the first error is the one to tell
                self.db.execute("ROLLBACK")
            raise

    def _index_alerts(self) -> None:
        """Alerts stored before the index existed (an upgraded aggregator) get their index rows, once: the
        state table remembers it, so opening a big store does not read every message (start-up time)."""
        if self.state(ALERTS_INDEXED_KEY, 0):
            return
        missing = self.db.execute(
            "SELECT COUNT(*) FROM messages m WHERE m.type = 'alert' "
            "AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.id = m.id)"
        ).fetchone()[0]
        if missing:
            log.info("%s: indexing %d stored alerts for the alert manager", self.path, missing)
            self.db.execute(
                f"INSERT OR IGNORE INTO alerts ({_INDEXED}) SELECT m.id, m.sensor, {_alert_columns('m')} "
                "FROM messages m WHERE m.type = 'alert'"
            )
        with contextlib.suppress(sqlite3.OperationalError):  # a read-only store: the next writer notes it
            self.set_state(ALERTS_INDEXED_KEY, 1)

    def close(self) -> None:
        self.db.close()

    def store(
        self, messages: list[Message], rejections: dict[str, int] | None = None,
        refused: dict[str, tuple[int, int, str]] | None = None,
    ) -> Stored:  # fmt: skip
        """Store a batch durably; returns how many were new and the sequence anomalies seen. `refused`: per sensor,
        (messages, bytes, why) refused over a quota since the last call, added to its counts."""
        now = time.time()
        day = utc_day(now)
        out = Stored()
        added: dict[str, int] = {}
        seen: dict[str, list] = {}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for m in messages:
                if m.type == "evidence":
                    new = store_part(self.db, m)
                    out.new += new
                    added[m.sensor] = added.get(m.sensor, 0) + new * len(m.body["data"])
                    self._seen(m, now, False, out.events, seen)
                    continue
                body = json.dumps(m.body, separators=(",", ":"))
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO messages (sensor, spool, seq, type, created, received, data_time, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (m.sensor, m.spool, m.seq, m.type, m.created, now, data_time(m), body),
                )  # fmt: skip
                new = cur.rowcount == 1
                out.new += new
                added[m.sensor] = added.get(m.sensor, 0) + new * len(body)
                self._seen(m, now, new, out.events, seen)
            self.db.executemany(
                "UPDATE sensors SET spool = ?, max_seq = ?, spool_restarts = spool_restarts + ?, "
                "seq_backwards = seq_backwards + ?, last_seen = ? WHERE sensor = ?",
                [(spool, max_seq, restarts, backwards, now, sensor)
                 for sensor, (spool, max_seq, restarts, backwards) in seen.items()],
            )  # fmt: skip
            usage = {s: (day, self.today(s, day) + n) for s, n in added.items()}
            for s, (d, n) in usage.items():
                self.db.execute("UPDATE sensors SET day = ?, day_bytes = ? WHERE sensor = ?", (d, n, s))
            for s, (n, size, why) in (refused or {}).items():
                self.db.execute(
                    "INSERT INTO sensors (sensor, last_seen, refused, refused_bytes, refused_last, refused_why) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sensor) DO UPDATE SET refused = refused + excluded.refused, "
                    "refused_bytes = refused_bytes + excluded.refused_bytes, refused_last = excluded.refused_last, "
                    "refused_why = excluded.refused_why, last_seen = MAX(last_seen, excluded.last_seen)",
                    (s, now, n, size, now, why),
                )
            for reason, n in (rejections or {}).items():
                self.db.execute(
                    "INSERT INTO rejections VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET count = count + ?",
                    (reason, n, n),
                )
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a failed COMMIT (a full disk) has ended it: the first error is the one to tell
                self.db.execute("ROLLBACK")
            raise
        self.usage.update(usage)
        return out

    def today(self, sensor: str, day: str) -> int:
        """Bytes `sensor` has had stored on `day` (UTC, YYYY-MM-DD), as committed."""
        d, n = self.usage.get(sensor, ("", 0))
        return n if d == day else 0

    def _seen(self, m: Message, now: float, new: bool, events: list[str], seen: dict[str, list]) -> None:
        """A message's sensor: its spool and highest sequence number, kept in `seen` for the batch ([spool,
        max_seq, spool restarts, backwards sequences] added by the batch), which `store` writes once per sensor:
        one statement a sensor and batch instead of three a message."""
        s = seen.get(m.sensor)
        if s is None:
            row = self.db.execute("SELECT spool, max_seq FROM sensors WHERE sensor = ?", (m.sensor,)).fetchone()
            if row is None:  # a sensor's first message: nothing to compare it with
                self.db.execute(
                    "INSERT INTO sensors (sensor, last_seen, spool, max_seq) VALUES (?, ?, ?, ?)",
                    (m.sensor, now, m.spool, m.seq),
                )
                seen[m.sensor] = [m.spool, m.seq, 0, 0]
                self._body_of(m, new)
                return
            s = seen[m.sensor] = [row[0], row[1], 0, 0]
        spool, max_seq = s[0], s[1]
        if new and m.spool != spool and m.seq < max_seq:
            # A spool that was lost or replaced: numbering restarts under a new id.
            s[0], s[1] = m.spool, m.seq
            s[2] += 1
            events.append(
                f"sensor {m.sensor!r}: new spool {m.spool or '(v1)'!r} restarts its sequence at {m.seq} "
                f"(was {max_seq} in spool {spool or '(v1)'!r}); both are kept"
            )
        elif new and m.spool == spool and m.seq <= max_seq and self._reused(m):
            # A number already used with another creation time: a spool restored from a backup. (A new
            # message below the highest number is otherwise a gap filled late: a resend after a restart.)
            s[3] += 1
            events.append(f"sensor {m.sensor!r}: sequence went backwards to {m.seq} (was {max_seq}); stored as new")
        elif m.seq > max_seq or m.spool != spool:
            s[0], s[1] = m.spool, m.seq
        self._body_of(m, new)

    def _body_of(self, m: Message, new: bool) -> None:
        """A sensor's newest hello and health, kept on its row for `sensors`."""
        if new and m.type in ("hello", "health"):
            self.db.execute(f"UPDATE sensors SET {m.type} = ? WHERE sensor = ?", (json.dumps(m.body), m.sensor))

    def _reused(self, m: Message) -> bool:
        """Does another message of this spool already hold this sequence number (another creation time)?"""
        return self.db.execute("SELECT 1 FROM messages WHERE sensor = ? AND spool = ? AND seq = ? AND created != ? "
                               "LIMIT 1", (m.sensor, m.spool, m.seq, m.created)).fetchone() is not None  # fmt: skip

    def count(self, kind: str | None = None, sensor: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM messages WHERE 1=1", []
        if kind:
            sql, args = sql + " AND type = ?", [*args, kind]
        if sensor:
            sql, args = sql + " AND sensor = ?", [*args, sensor]
        return self.db.execute(sql, args).fetchone()[0]

    def count_dated(self, first: float, end: float, kinds: tuple[str, ...] = ("summary", "alert")) -> int:
        """Messages whose data time lies in [first, end) (seconds since the epoch)."""
        marks = ",".join("?" * len(kinds))
        sql = f"SELECT COUNT(*) FROM messages WHERE data_time >= ? AND data_time < ? AND type IN ({marks})"
        return self.db.execute(sql, (first, end, *kinds)).fetchone()[0]

    def sensors(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT sensor, last_seen, hello, health, spool_restarts, seq_backwards, day, day_bytes, refused, "
            "refused_bytes, refused_last, refused_why FROM sensors ORDER BY sensor"
        )
        today = utc_day(time.time())
        return [
            {
                "sensor": s,
                "last_seen": t,
                "hello": json.loads(h) if h else None,
                "health": upgrade_body("health", json.loads(x)) if x else None,
                "spool_restarts": restarts,
                "seq_backwards": backwards,
                "stored_today_bytes": day_bytes if day == today else 0,
                "refused": refused,
                "refused_bytes": refused_bytes,
                "refused_last": refused_last or None,
                "refused_why": refused_why,
            }
            for s, t, h, x, restarts, backwards, day, day_bytes, refused, refused_bytes, refused_last, refused_why in (
                rows
            )
        ]

    def rejections(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, count FROM rejections"))

    # -- for the archive and the alerts command ------------------------------------------

    def after(self, last_id: int, limit: int) -> list[tuple[int, str, str, int, str, str, str]]:
        """(id, sensor, spool, seq, type, created, body) of the next messages after last_id, in id order."""
        return self.db.execute(
            "SELECT id, sensor, spool, seq, type, created, body FROM messages WHERE id > ? ORDER BY id LIMIT ?",
            (last_id, limit),
        ).fetchall()

    def count_after(self, last_id: int) -> int:
        """Messages stored after last_id (those the archive has yet to take)."""
        return self.db.execute("SELECT COUNT(*) FROM messages WHERE id > ?", (last_id,)).fetchone()[0]

    def state(self, key: str, default=0):
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value) -> None:
        self.db.execute(
            "INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
        )

    def forget(self, up_to_id: int, received_before: float) -> int:
        """Delete exported messages that arrived before the retention cutoff; returns how many."""
        cur = self.db.execute("DELETE FROM messages WHERE id <= ? AND received < ?", (up_to_id, received_before))
        return cur.rowcount

    def forget_cold(self, up_to_id: int, received_before: float, batch: int = 5000,
                    stop: Callable[[], bool] | None = None) -> int:  # fmt: skip
        """Delete messages past the hot window: stored (id <= up_to_id: archived, and seen by every consumer
        that reads the store after a mark) and arrived before `received_before`; returns how many.

        Kept whatever their age: alerts not closed (the alert manager's queue shows them: new, acknowledged),
        alerts a notification still waits for, and the newest message of each spool (the aggregator numbers the
        messages of its own spools, notices and retro-hunt alerts, after the newest stored). Walks ids upward
        from where the last call stopped (arrival follows id), a transaction per batch, so receiving never waits
        long behind it."""
        mark, gone, kept = self.state(COLD_MARK), 0, None
        while not (stop and stop()):
            rows = self.db.execute("SELECT id, received FROM messages WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                                   (mark, up_to_id, batch)).fetchall()  # fmt: skip
            warm = next((k for k, (_, received) in enumerate(rows) if received >= received_before), len(rows))
            if not warm:
                break
            if kept is None:  # only once something is cold: most exports find nothing, and this reads every spool
                kept = self._kept_cold()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                gone += self.db.executemany(
                    "DELETE FROM messages WHERE id = ?", [(i,) for i, _ in rows[:warm] if i not in kept]
                ).rowcount
                mark = rows[warm - 1][0]
                self.set_state(COLD_MARK, mark)
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            if warm < len(rows):
                break
        return gone

    def _kept_cold(self) -> set[int]:
        """Ids `forget_cold` keeps whatever their age."""
        kept = {i for (i,) in self.db.execute("SELECT id FROM alerts WHERE status != 'closed'")}
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'notify_pending'").fetchone():
            kept |= {i for (i,) in self.db.execute("SELECT alert_id FROM notify_pending")}
        return kept | {i for (i,) in self.db.execute("SELECT MAX(id) FROM messages GROUP BY sensor, spool")}

    def alerts(self, sensor: str | None = None, since: float | None = None, min_tier: int = 0,
               limit: int = 0) -> list[tuple[int, str, int, dict]]:  # fmt: skip
        """Stored alerts as (id, sensor, seq, body), oldest first by first seen (bodies as the current schema); the
        id is the alert's one id everywhere (the alert manager's URLs, the API, `pcap`). With `limit`, the newest
        that many: chosen on the alerts index (first seen, tier, sensor), so a big store is not read whole."""
        where, args = self._alert_filter(sensor, since, min_tier)
        ids = [i for (i,) in self.db.execute(
            f"SELECT a.id FROM {where} ORDER BY a.first_seen DESC, a.id DESC"
            + (" LIMIT ?" if limit else ""), [*args, limit] if limit else args)]  # fmt: skip
        rows = []
        for k in range(0, len(ids), 500):  # SQLite's parameter limit
            chunk = ids[k : k + 500]
            rows += self.db.execute(f"SELECT id, sensor, seq, body, data_time FROM messages WHERE id IN "
                                    f"({','.join('?' * len(chunk))})", chunk).fetchall()  # fmt: skip
        rows.sort(key=lambda r: (r[4], r[1], r[2]))
        return [(i, s, q, upgrade_body("alert", json.loads(b))) for i, s, q, b, _ in rows]

    def count_alerts(self, sensor: str | None = None, since: float | None = None, min_tier: int = 0) -> int:
        where, args = self._alert_filter(sensor, since, min_tier)
        return self.db.execute(f"SELECT COUNT(*) FROM {where}", args).fetchone()[0]

    @staticmethod
    def _alert_filter(sensor: str | None, since: float | None, min_tier: int) -> tuple[str, list]:
        """FROM and WHERE of an alert query on the alerts index. The tier is the sensor's (the alert's own body):
        the index holds the tier prevalence adjusted, which the alert manager's queue sorts on."""
        where, args = ["1 = 1"], []
        if sensor:
            where, args = [*where, "a.sensor = ?"], [*args, sensor]
        if since is not None:
            where, args = [*where, "a.first_seen >= ?"], [*args, since]
        if min_tier:
            where, args = [*where, "json_extract(m.body, '$.tier') >= ?"], [*args, min_tier]
            return f"alerts a JOIN messages m ON m.id = a.id WHERE {' AND '.join(where)}", args
        return f"alerts a WHERE {' AND '.join(where)}", args


CHECK_AT_START_MB = 256
"""Stores up to this size are checked whole (PRAGMA quick_check, 5-13 s a GB here) before `serve` says it is
ready; a larger one is checked in the background (`IntegrityCheck`), so start-up does not grow with the store."""


def damaged_marker(path: str | Path) -> Path:
    """The file beside a store that says it was found damaged: `serve` refuses to start until someone looks."""
    p = Path(path)
    return p.with_name(p.name + ".damaged")


def integrity(db: sqlite3.Connection) -> str:
    """SQLite's quick_check verdict of a store: "ok", or its first problem."""
    (verdict,) = db.execute("PRAGMA quick_check(1)").fetchone()
    return str(verdict)


def open_store(path: str | Path, create: bool = False, check: bool = False, check_at_start_mb: int | None = None
               ) -> Store:  # fmt: skip
    """The store, or one InputError line: missing (for the read commands), unwritable, not a database, or
    (with check, as `serve` starts) damaged: found so before (its marker), at its newest message, or anywhere
    when it is no bigger than `check_at_start_mb` (larger: `IntegrityCheck` reads it all in the background).
    A service must not start on a store it cannot keep."""
    p = Path(path)
    if not create and not p.exists():
        raise InputError(f"{p}: no store yet (has serve run?)")
    marker = damaged_marker(p)
    if check and marker.exists():
        why = marker.read_text(errors="replace").strip()[:300]
        raise InputError(f"{p}: found damaged before ({why}); repair it or move it aside, then remove {marker}")
    limit = CHECK_AT_START_MB if check_at_start_mb is None else check_at_start_mb
    try:
        store = Store(p)
        store.db.execute("SELECT COUNT(*) FROM sensors").fetchone()
        if check:
            store.db.execute("SELECT id, body FROM messages ORDER BY id DESC LIMIT 1").fetchone()  # the newest pages
            if p.stat().st_size <= limit * 2**20:
                verdict = integrity(store.db)
                if verdict != "ok":
                    store.close()
                    raise sqlite3.DatabaseError(f"damaged ({verdict})")
    except PermissionError as e:
        raise InputError(f"{p}: cannot open the store: {e.strerror}") from None
    except OSError as e:
        raise InputError(f"{p}: cannot open the store: {e.strerror or e}") from None
    except sqlite3.DatabaseError as e:
        raise InputError(f"{p}: cannot open the store: {e}") from None
    return store


class IntegrityCheck(threading.Thread):
    """`serve`'s background check of a store too big to check at start: soon after start, then daily.

    It reads the whole store on a connection of its own (WAL: the receiver keeps writing meanwhile). A damaged
    store is marked (`damaged_marker`) and the thread ends with `failure` set, so `serve` stops with one line
    and refuses to start again until someone has looked."""

    def __init__(self, path: str | Path, first_after_s: float = 10.0, every_s: float = 86400.0) -> None:
        super().__init__(name="store-check", daemon=True)
        self.path = Path(path)
        self.first_after_s = first_after_s
        self.every_s = every_s
        self._stopping = threading.Event()
        self.failure: str | None = None
        self.checked = 0

    def run(self) -> None:
        wait = self.first_after_s
        while not self._stopping.wait(wait):
            wait = self.every_s
            try:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
                try:
                    verdict = integrity(db)
                finally:
                    db.close()
            except sqlite3.DatabaseError as e:
                verdict = str(e)
            except (OSError, sqlite3.Error) as e:  # not readable now (a busy disk): try again at the next round
                log.error("store check skipped: %s", e)
                continue
            self.checked += 1
            if verdict != "ok":
                self.failure = f"the store is damaged ({verdict})"
                with contextlib.suppress(OSError):
                    damaged_marker(self.path).write_text(f"{verdict}\n")
                return
            log.info("store check: %s is sound", self.path)

    def stop(self) -> None:
        self._stopping.set()
