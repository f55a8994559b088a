"""The sensor's durable outbox: every message is written here before it is sent.

A message leaves the spool only when the aggregator acknowledges it, so an
unreachable aggregator, a restart of either side or a crash loses nothing: the
backlog drains in order on reconnect. The spool also owns the sensor's sequence
numbers, so they continue across restarts, and a random id drawn when the
spool file is created: a spool that is lost or replaced starts again at
sequence 1 under a new id, and the aggregator stores its messages as new
rather than taking them for resends of the old spool's.

SQLite (standard library) in WAL mode with synchronous=FULL: a commit returns
only after the data reached the disk, and a batch of messages is one commit.

At the size limit the oldest messages of the least valuable type go first:
health, then statistics, summaries, hellos, and alerts last (the order is the
message types' drop ranks, ntds.wire.schema).
Every drop is counted, per type, and the counts survive restarts; health
messages report them.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ntds.wire.schema import DROP_ORDER, Message, encode, now_iso


@dataclass(frozen=True)
class SpoolStats:
    messages: int
    bytes: int
    dropped: dict[str, int]
    next_seq: int


class Spool:
    def __init__(self, path: str | Path, sensor_id: str, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.sensor_id = sensor_id
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_file(self.path)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY, type TEXT NOT NULL, size INTEGER NOT NULL, frame BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT OR IGNORE INTO meta VALUES ('next_seq', 1);
            CREATE TABLE IF NOT EXISTS identity (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        self.db.execute("INSERT OR IGNORE INTO identity VALUES ('spool_id', ?)", (secrets.token_hex(8),))
        (self.spool_id,) = self.db.execute("SELECT value FROM identity WHERE key = 'spool_id'").fetchone()
        for kind in DROP_ORDER:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, 0)", (f"dropped_{kind}",))

    def close(self) -> None:
        self.db.close()

    def append(self, items: list[tuple[str, dict]]) -> list[int]:
        """Spool (type, body) messages in one durable commit; returns their sequence numbers."""
        if not items:
            return []
        with self._transaction():
            (seq,) = self.db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            seqs = []
            for kind, body in items:
                frame = encode(Message(kind, self.sensor_id, seq, now_iso(), body, self.spool_id))
                self.db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)", (seq, kind, len(frame), frame))
                seqs.append(seq)
                seq += 1
            self.db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (seq,))
            self._enforce_limit()
        return seqs

    def pending(self, limit: int = 1000, after: int = 0) -> list[tuple[int, bytes]]:
        """The oldest unacknowledged frames (seq > after), in order."""
        rows = self.db.execute("SELECT seq, frame FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [(seq, bytes(frame)) for seq, frame in rows]

    def ack(self, seqs: list[int]) -> int:
        """Forget acknowledged messages; returns how many were still here."""
        if not seqs:
            return 0
        with self._transaction():
            cur = self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        return cur.rowcount

    def empty(self) -> bool:
        return self.db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is None

    def stats(self) -> SpoolStats:
        n, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        dropped = {k: meta[f"dropped_{k}"] for k in DROP_ORDER}
        return SpoolStats(n, size, dropped, meta["next_seq"])

    def _enforce_limit(self) -> None:
        (size,) = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()
        for kind in DROP_ORDER:
            while size > self.max_bytes:
                row = self.db.execute(
                    "SELECT seq, size FROM outbox WHERE type=? ORDER BY seq LIMIT 1", (kind,)
                ).fetchone()
                if row is None:
                    break
                self.db.execute("DELETE FROM outbox WHERE seq=?", (row[0],))
                self.db.execute("UPDATE meta SET value=value+1 WHERE key=?", (f"dropped_{kind}",))
                size -= row[1]

    def _transaction(self):
        return _Tx(self.db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def private_file(path: Path) -> None:
    """Create `path` (if absent) readable by its owner only: a spool holds what the network showed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also a spool an earlier version left readable
    finally:
        os.close(fd)
