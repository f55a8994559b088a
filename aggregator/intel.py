"""Indicators on the aggregator: kept in the store, signed as one set, pushed to every sensor.

`ntds-aggregator intel add` reads indicator files (ntds.intel.formats) into
the store's `intel` table, one row per (type, value, source): adding a value
again updates its confidence and expiry and keeps when it was first added.
`remove` deletes rows, `expire` ends them at a time (they stay listed and stop
matching). After every change the set of indicators not yet expired is written
as one set file (ntds.intel.matching.write_set), signed under a new grant
(`ntds.wire.signing.IntelGrant`: its SHA-256, its size, a serial one above every
set signed before) with the same key as baselines (`baseline_signing_key`, which
`serve` never reads), and kept in `intel_sets`; `serve` pushes the newest to
every sensor whose hello or health names another serial (`IntelPusher`), as it
pushes baselines: an offline sensor gets it when it reconnects, a sensor that
refuses it (it logs why and counts it in health) is offered it again at most
once a minute. Only the newest few sets are kept (a million indicators make a
set of about 10 MB compressed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ntds.errors import InputError
from ntds.intel.indicators import Indicator
from ntds.intel.matching import write_set
from ntds.times import now_iso
from ntds.wire import signing
from ntds.wire.schema import INTEL_CHUNK, Message, packed_intel_parts

log = logging.getLogger("ntds.aggregator.intel")

SCHEMA = """
CREATE TABLE IF NOT EXISTS intel (
    id INTEGER PRIMARY KEY, type TEXT NOT NULL, value TEXT NOT NULL, source TEXT NOT NULL,
    confidence INTEGER NOT NULL, added REAL NOT NULL, expires REAL NOT NULL DEFAULT 0, updated REAL NOT NULL,
    hunted REAL NOT NULL DEFAULT 0, UNIQUE (type, value, source));
CREATE INDEX IF NOT EXISTS intel_hunted ON intel (hunted);
CREATE TABLE IF NOT EXISTS intel_sets (
    serial INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, content BLOB NOT NULL, indicators INTEGER NOT NULL,
    grant_text TEXT NOT NULL, signature TEXT NOT NULL, signed REAL NOT NULL, note TEXT NOT NULL);
"""
KEEP_SETS = 3
PUSH_MAX_PARTS = 900
"""Parts one push may have: under ZeroMQ's default queue of 1,000 messages per peer, which `serve`'s socket drops
beyond (about 40 MB compressed: some four million indicators)."""
RESEND_S = 60.0
REREAD_S = 1.0


def connect(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT (a full disk) has ended it: the first error is the one to tell
            db.execute("ROLLBACK")
        raise


def add(db: sqlite3.Connection, indicators: Iterable[Indicator], now: float | None = None) -> tuple[int, int]:
    """Store indicators: (new rows, rows updated). A new row is first added now (or when its file says) and waits
    for a retro-hunt (hunted 0); an existing one takes the new confidence and expiry."""
    now = time.time() if now is None else now
    before = db.execute("SELECT COUNT(*) FROM intel").fetchone()[0]
    rows = [(i.type, i.value, i.source, i.confidence, i.added or now, i.expires, now) for i in indicators]
    with _transaction(db):
        db.executemany(
            "INSERT INTO intel (type, value, source, confidence, added, expires, updated) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (type, value, source) DO UPDATE SET confidence = excluded.confidence, "
            "expires = excluded.expires, updated = excluded.updated",
            rows,
        )
    new = db.execute("SELECT COUNT(*) FROM intel").fetchone()[0] - before
    return new, len(rows) - new


def _where(values: list[str], source: str | None, kind: str | None) -> tuple[str, list]:
    if not values and not source and not kind:
        raise InputError("name the indicators: values, --source or --type")
    clauses, args = [], []
    if values:
        clauses.append(f"value IN ({', '.join('?' * len(values))})")
        args += [v.strip().lower() for v in values]
    if source:
        clauses.append("source = ?")
        args.append(source)
    if kind:
        clauses.append("type = ?")
        args.append(kind)
    return " AND ".join(clauses), args


def remove(db: sqlite3.Connection, values: list[str], source: str | None = None, kind: str | None = None) -> int:
    """Delete indicators by value (any type and source), source or type; how many."""
    where, args = _where(values, source, kind)
    with _transaction(db):
        return db.execute(f"DELETE FROM intel WHERE {where}", args).rowcount


def expire(db: sqlite3.Connection, values: list[str], source: str | None = None, kind: str | None = None,
           at: float | None = None) -> int:  # fmt: skip
    """End indicators at `at` (now): they stay listed and stop matching on every sensor by themselves."""
    where, args = _where(values, source, kind)
    at = time.time() if at is None else at
    with _transaction(db):
        return db.execute(f"UPDATE intel SET expires = ?, updated = ? WHERE {where}", [at, time.time(), *args]).rowcount


def active(db: sqlite3.Connection, now: float | None = None) -> Iterator[Indicator]:
    """The indicators not yet expired, oldest first."""
    now = time.time() if now is None else now
    for row in db.execute(
        "SELECT type, value, source, confidence, added, expires FROM intel WHERE expires = 0 OR expires > ? "
        "ORDER BY id",
        (now,),
    ):
        yield Indicator(*row)


def listing(db: sqlite3.Connection, kind: str | None = None, source: str | None = None, expired: bool = False,
            limit: int = 0, now: float | None = None) -> list[dict]:  # fmt: skip
    now = time.time() if now is None else now
    clauses, args = [], []
    if kind:
        clauses.append("type = ?")
        args.append(kind)
    if source:
        clauses.append("source = ?")
        args.append(source)
    if not expired:
        clauses.append("(expires = 0 OR expires > ?)")
        args.append(now)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT id, type, value, source, confidence, added, expires, hunted FROM intel {where} ORDER BY id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    names = ("id", "type", "value", "source", "confidence", "added", "expires", "hunted")
    return [dict(zip(names, r)) | {"active": not r[6] or r[6] > now} for r in db.execute(sql, args)]


@dataclass(frozen=True)
class SignedSet:
    serial: int
    sha256: str
    packed: bytes
    """The set file, zlib-compressed: what is pushed."""
    indicators: int
    grant: str
    signature: str

    @property
    def content(self) -> bytes:
        return zlib.decompress(self.packed)


def sign(db: sqlite3.Connection, signing_key_file: Path | None, note: str = "") -> SignedSet | None:
    """The active indicators as a new signed set (None when no signing key is configured or made yet)."""
    if signing_key_file is None or not Path(signing_key_file).exists():
        return None
    key = signing.load_signing_key(signing_key_file)
    inds = list(active(db))
    content = write_set(inds)
    digest = hashlib.sha256(content).hexdigest()
    packed = zlib.compress(content, 6)  # as pushed (ntds.wire.schema.packed_intel_parts)
    if len(packed) > PUSH_MAX_PARTS * INTEL_CHUNK:
        raise InputError(f"{len(inds):,} indicators are {len(packed) / 2**20:.0f} MB compressed, more than one push "
                         f"carries ({PUSH_MAX_PARTS * INTEL_CHUNK / 2**20:.0f} MB): they are stored but not signed; "
                         "remove or expire some (intel remove --source ...)")  # fmt: skip
    with _transaction(db):
        serial = db.execute("SELECT COALESCE(MAX(serial), 0) + 1 FROM intel_sets").fetchone()[0]
        grant = signing.IntelGrant(serial, digest, len(inds), "*", now_iso())
        text = grant.text()
        signature = signing.sign(text.encode("utf-8"), key)
        db.execute(
            "INSERT INTO intel_sets (serial, sha256, content, indicators, grant_text, signature, signed, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (serial, digest, packed, len(inds), text, signature, time.time(), note[:2000]),
        )
        # the content of old sets is never pushed again (sensors refuse a lower serial): keep their rows, small
        db.execute("UPDATE intel_sets SET content = x'' WHERE serial <= ?", (serial - KEEP_SETS,))
    return SignedSet(serial, digest, packed, len(inds), text, signature)


def newest(db: sqlite3.Connection) -> SignedSet | None:
    row = db.execute(
        "SELECT serial, sha256, content, indicators, grant_text, signature FROM intel_sets ORDER BY serial DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return SignedSet(row[0], row[1], bytes(row[2]), row[3], row[4], row[5])


def sets(db: sqlite3.Connection) -> list[dict]:
    names = ("serial", "sha256", "indicators", "signed", "note")
    return [dict(zip(names, r)) for r in db.execute(
        "SELECT serial, sha256, indicators, signed, note FROM intel_sets ORDER BY serial DESC")]  # fmt: skip


class IntelPusher:
    """Decides, per sensor message, whether that sensor needs the newest indicator set, and builds its parts."""

    def __init__(self, store_path: str | Path) -> None:
        self.db = connect(store_path)
        self._newest: SignedSet | None = None
        self._serial = 0
        self._read = 0.0
        self._offered: dict[tuple[str, str, int, int], float] = {}
        self._parts: tuple[int, list[Message]] = (0, [])
        """The newest set's parts, compressed once (a million indicators take a second to compress)."""
        self.pushed = 0

    def current(self) -> SignedSet | None:
        if time.monotonic() - self._read > REREAD_S:  # `intel add` is another process: look again
            self._read = time.monotonic()
            try:
                serial = self.db.execute("SELECT COALESCE(MAX(serial), 0) FROM intel_sets").fetchone()[0]
                if serial != self._serial:
                    self._newest, self._serial = newest(self.db), serial
            except sqlite3.Error as e:  # pushing pauses; receiving goes on
                log.error("cannot read the newest indicator set: %s", e)
        return self._newest

    def offer(self, m: Message) -> list[Message]:
        """The parts to send to m's sender, if its hello or health names another set than the newest (only sensors
        of schema version 6 and later match indicators)."""
        if m.type not in ("hello", "health") or m.version < 6:
            return []
        s = self.current()
        if s is None or m.body.get("intel_serial") == s.serial:
            return []
        now = time.monotonic()
        key = (m.sensor, m.spool, int(m.body.get("intel_serial", 0)), s.serial)
        if now - self._offered.get(key, -RESEND_S) < RESEND_S:
            return []
        if len(self._offered) > 100_000:
            self._offered.clear()
        self._offered[key] = now
        self.pushed += 1
        log.info("pushing indicator set %d (%d indicators) to %s, which runs set %s", s.serial, s.indicators,
                 m.sensor, m.body.get("intel_serial") or "none")  # fmt: skip
        if self._parts[0] != s.serial:
            self._parts = (s.serial, packed_intel_parts("", s.serial, s.packed, s.sha256, s.indicators, s.grant,
                                                        s.signature))  # fmt: skip
        return [dataclasses.replace(p, sensor=m.sensor) for p in self._parts[1]]

    def close(self) -> None:
        self.db.close()
