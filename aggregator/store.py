"""The aggregator's durable, idempotent message store.

Each (sensor, seq) is stored once however often it arrives: the primary key
makes a resent message a no-op. A batch is one transaction committed with
synchronous=FULL, and only after the commit are its messages acknowledged, so
an acknowledged message is on disk. `aggregator.archive` exports messages in
`id` order into the Parquet archive the reports read; its high-water mark lives
here too, so export and store can never disagree about what was exported.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from ntds.wire.schema import Message, parse_time


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT, sensor TEXT NOT NULL, seq INTEGER NOT NULL,
                type TEXT NOT NULL, created TEXT NOT NULL, received REAL NOT NULL, body TEXT NOT NULL,
                UNIQUE (sensor, seq));
            CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS sensors (
                sensor TEXT PRIMARY KEY, last_seen REAL NOT NULL, hello TEXT, health TEXT);
            CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
            """
        )

    def close(self) -> None:
        self.db.close()

    def store(self, messages: list[Message], rejections: dict[str, int] | None = None) -> int:
        """Store a batch durably; returns how many were new."""
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            new = 0
            for m in messages:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO messages (sensor, seq, type, created, received, body)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (m.sensor, m.seq, m.type, m.created, now, json.dumps(m.body, separators=(",", ":"))),
                )
                new += cur.rowcount
                self.db.execute(
                    "INSERT INTO sensors (sensor, last_seen) VALUES (?, ?) "
                    "ON CONFLICT(sensor) DO UPDATE SET last_seen = excluded.last_seen",
                    (m.sensor, now),
                )
                if m.type in ("hello", "health"):
                    self.db.execute(f"UPDATE sensors SET {m.type} = ? WHERE sensor = ?", (json.dumps(m.body), m.sensor))
            for reason, n in (rejections or {}).items():
                self.db.execute(
                    "INSERT INTO rejections VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET count = count + ?",
                    (reason, n, n),
                )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return new

    def count(self, kind: str | None = None, sensor: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM messages WHERE 1=1", []
        if kind:
            sql, args = sql + " AND type = ?", [*args, kind]
        if sensor:
            sql, args = sql + " AND sensor = ?", [*args, sensor]
        return self.db.execute(sql, args).fetchone()[0]

    def sensors(self) -> list[dict]:
        rows = self.db.execute("SELECT sensor, last_seen, hello, health FROM sensors ORDER BY sensor")
        return [
            {"sensor": s, "last_seen": t, "hello": json.loads(h) if h else None, "health": json.loads(x) if x else None}
            for s, t, h, x in rows
        ]

    def rejections(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, count FROM rejections"))

    # -- for the archive and the alerts command ------------------------------------------

    def after(self, last_id: int, limit: int) -> list[tuple[int, str, int, str, str, str]]:
        """(id, sensor, seq, type, created, body) of the next messages after last_id, in id order."""
        return self.db.execute(
            "SELECT id, sensor, seq, type, created, body FROM messages WHERE id > ? ORDER BY id LIMIT ?",
            (last_id, limit),
        ).fetchall()

    def state(self, key: str, default: int = 0) -> int:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
        )

    def forget(self, up_to_id: int, received_before: float) -> int:
        """Delete exported messages older than the retention; returns how many."""
        cur = self.db.execute("DELETE FROM messages WHERE id <= ? AND received < ?", (up_to_id, received_before))
        return cur.rowcount

    def alerts(self, sensor: str | None = None) -> list[tuple[str, int, dict]]:
        """Stored alerts as (sensor, seq, body), oldest first by flow time."""
        sql, args = "SELECT sensor, seq, body FROM messages WHERE type = 'alert'", []
        if sensor:
            sql, args = sql + " AND sensor = ?", [*args, sensor]
        rows = [(s, q, json.loads(b)) for s, q, b in self.db.execute(sql, args)]
        return sorted(rows, key=lambda r: (parse_time(r[2]["time"]), r[0], r[1]))
