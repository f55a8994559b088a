"""The aggregator's durable, idempotent message store.

Each (sensor, seq) is stored once however often it arrives: the primary key
makes a resent message a no-op. A batch is one transaction committed with
synchronous=FULL, and only after the commit are its messages acknowledged, so
an acknowledged message is on disk. The report issue adds the Parquet archive
built from this store.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from sensor.wire import Message


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS messages (
                sensor TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, created TEXT NOT NULL,
                received REAL NOT NULL, body TEXT NOT NULL, PRIMARY KEY (sensor, seq));
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
                    "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
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

    def seqs(self, sensor: str) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT seq FROM messages WHERE sensor = ? ORDER BY seq", (sensor,))]

    def sensors(self) -> list[dict]:
        rows = self.db.execute("SELECT sensor, last_seen, hello, health FROM sensors ORDER BY sensor")
        return [
            {"sensor": s, "last_seen": t, "hello": json.loads(h) if h else None, "health": json.loads(x) if x else None}
            for s, t, h, x in rows
        ]

    def rejections(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, count FROM rejections"))
