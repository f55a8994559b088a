"""Baseline versions: promoted, signed, kept, rolled back, and pushed to sensors.

Every promoted baseline is a version in the store (the file's exact bytes, its
signed grant, what it was built from, the checks it passed, who promoted it and
why); exactly one is active. The grant (`ntds.wire.signing.Grant`) names the
file's SHA-256, its version, a serial number one above every grant signed before,
and whether it is a rollback; `promote` and `rollback` sign it with the signing
key, which `serve` never reads: whoever holds only the link's CURVE key cannot
make a sensor go back to an older version. A version promoted before grants
existed is not pushed (sensors would refuse it); `rollback --to` signs it anew.

`serve` pushes the active version to every sensor whose hello or health names
another baseline: a sensor that was offline
gets it when it reconnects, and one that refuses it (it logs why and counts it in
health) is offered it again at most once a minute. The baseline is the same for
every sensor of the site (one aggregator, one site).

Checks before a version is stored: the file loads and validates exactly as a
sensor loads it (format, version, profile, scorers, tiers) and its id differs
from the active one's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ntds.detect.baseline import Baseline
from ntds.errors import InputError
from ntds.times import now_iso
from ntds.wire import signing
from ntds.wire.schema import Message, baseline_parts

log = logging.getLogger("ntds.aggregator.baselines")

SCHEMA = """
CREATE TABLE IF NOT EXISTS baselines (
    version INTEGER PRIMARY KEY AUTOINCREMENT, baseline_id TEXT NOT NULL, sha256 TEXT NOT NULL, content BLOB NOT NULL,
    signature TEXT NOT NULL, feature_profile TEXT NOT NULL, method TEXT NOT NULL, entries INTEGER NOT NULL,
    inputs TEXT NOT NULL, checks TEXT NOT NULL, note TEXT NOT NULL, promoted REAL NOT NULL, promoted_by TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0, serial INTEGER NOT NULL DEFAULT 0, grant_text TEXT NOT NULL DEFAULT '',
    grant_signature TEXT NOT NULL DEFAULT '');
"""
GRANT_COLUMNS = {"serial": "INTEGER NOT NULL DEFAULT 0", "grant_text": "TEXT NOT NULL DEFAULT ''",
                 "grant_signature": "TEXT NOT NULL DEFAULT ''"}  # fmt: skip
"""Added to a store from before grants (its versions have serial 0: signed over the bare file)."""
RESEND_S = 60.0
"""A sensor that still names another baseline is offered the active one again after this long."""
REREAD_S = 1.0
"""How often the pusher looks for a newly promoted version (one indexed row; only when a hello or health comes)."""


@dataclass(frozen=True)
class Version:
    version: int
    baseline_id: str
    sha256: str
    content: bytes
    signature: str
    serial: int = 0
    grant: str = ""
    grant_signature: str = ""


def connect(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    have = {r[1] for r in db.execute("PRAGMA table_info(baselines)")}
    for name, kind in GRANT_COLUMNS.items():
        if name not in have:
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it just now
                db.execute(f"ALTER TABLE baselines ADD COLUMN {name} {kind}")
    return db


def check(content: bytes, source: str = "baseline") -> Baseline:
    """The file loaded exactly as a sensor loads it (one InputError line for anything wrong)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        fh.write(content)
        fh.flush()
        try:
            return Baseline.load(fh.name)
        except InputError as e:
            raise InputError(str(e).replace(fh.name, source)) from None


def active(db: sqlite3.Connection) -> Version | None:
    row = db.execute(
        "SELECT version, baseline_id, sha256, content, signature, serial, grant_text, grant_signature FROM baselines "
        "WHERE active = 1"
    ).fetchone()
    return Version(row[0], row[1], row[2], bytes(row[3]), *row[4:]) if row else None


def _grant(db: sqlite3.Connection, version: int, baseline_id: str, sha256: str, key) -> tuple[int, str, str]:
    """(serial, text, signature) of a new grant for `version`, inside the caller's transaction: its serial is one
    above every grant signed before; it is a rollback when a newer version exists."""
    serial = db.execute("SELECT COALESCE(MAX(serial), 0) + 1 FROM baselines").fetchone()[0]
    newest = db.execute("SELECT COALESCE(MAX(version), 0) FROM baselines").fetchone()[0]
    grant = signing.Grant(serial, version, sha256, baseline_id, rollback=version < newest, to="*", signed=now_iso())
    return (serial, *signing.sign_grant(grant, key))


def promote(
    db: sqlite3.Connection, path: Path, signing_key_file: Path, note: str = "", by: str = "cli",
    learned_checks: dict | None = None,
) -> dict:  # fmt: skip
    """Sign `path` and make it the active version; returns the stored version's description. `learned_checks`:
    what `baseline learn` checked (kept with the version)."""
    try:
        content = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the baseline: {e.strerror or e}") from None
    baseline = check(content, str(path))
    key = signing.load_signing_key(signing_key_file)
    current = active(db)
    if current is not None and current.baseline_id == baseline.id:
        raise InputError(f"{path}: baseline {baseline.id} is already the active version {current.version}")
    checks = {"loads_as_a_sensor_loads_it": True, "entries": len(baseline.scorers),
              "differs_from_active": current is not None}  # fmt: skip
    if learned_checks is not None:
        checks["learned"] = learned_checks
    inputs = baseline.doc.get("inputs", [])
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("UPDATE baselines SET active = 0 WHERE active = 1")
        digest = hashlib.sha256(content).hexdigest()
        cur = db.execute(
            "INSERT INTO baselines (baseline_id, sha256, content, signature, feature_profile, method, entries, inputs, "
            "checks, note, promoted, promoted_by, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (baseline.id, digest, content, signing.sign(content, key), baseline.profile,
             baseline.method, len(baseline.scorers), json.dumps(inputs)[:100_000], json.dumps(checks), note[:2000],
             time.time(), by),
        )  # fmt: skip
        serial, text, signature = _grant(db, cur.lastrowid, baseline.id, digest, key)
        db.execute("UPDATE baselines SET serial = ?, grant_text = ?, grant_signature = ? WHERE version = ?",
                   (serial, text, signature, cur.lastrowid))  # fmt: skip
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT (a full disk) has ended it: the first error is the one to tell
            db.execute("ROLLBACK")
        raise
    return versions(db)[0] | {"version": cur.lastrowid}


def rollback(db: sqlite3.Connection, to: int | None = None, signing_key_file: Path | None = None) -> dict:
    """Make an earlier version active again (default: the one before the active one), under a new grant signed as
    a rollback (sensors running a newer version take it only so). `--to` the active version signs it anew (a
    version promoted before grants existed)."""
    current = active(db)
    if to is None:
        if current is None:
            raise InputError("no baseline has been promoted yet")
        row = db.execute("SELECT MAX(version) FROM baselines WHERE version < ?", (current.version,)).fetchone()
        if row[0] is None:
            raise InputError(f"version {current.version} is the first: nothing to roll back to")
        to = row[0]
    row = db.execute("SELECT baseline_id, sha256 FROM baselines WHERE version = ?", (to,)).fetchone()
    if row is None:
        raise InputError(f"no baseline version {to}")
    if signing_key_file is None:
        raise InputError("a rollback must be signed: baseline_signing_key is not set")
    key = signing.load_signing_key(signing_key_file)
    db.execute("BEGIN IMMEDIATE")
    try:
        serial, text, signature = _grant(db, to, row[0], row[1], key)
        db.execute("UPDATE baselines SET active = (version = ?)", (to,))
        db.execute("UPDATE baselines SET serial = ?, grant_text = ?, grant_signature = ? WHERE version = ?",
                   (serial, text, signature, to))  # fmt: skip
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT (a full disk) has ended it: the first error is the one to tell
            db.execute("ROLLBACK")
        raise
    return next(v for v in versions(db) if v["version"] == to)


def versions(db: sqlite3.Connection) -> list[dict]:
    """Every version, newest first, without the file itself."""
    rows = db.execute(
        "SELECT version, baseline_id, sha256, feature_profile, method, entries, inputs, checks, note, promoted, "
        "promoted_by, active, serial FROM baselines ORDER BY version DESC"
    )
    names = ("version", "baseline_id", "sha256", "feature_profile", "method", "entries", "inputs", "checks", "note",
             "promoted", "promoted_by", "active", "serial")  # fmt: skip
    out = []
    for r in rows:
        v = dict(zip(names, r))
        v["inputs"], v["checks"], v["active"] = json.loads(v["inputs"]), json.loads(v["checks"]), bool(v["active"])
        out.append(v)
    return out


class Pusher:
    """Decides, per sensor message, whether that sensor needs the active baseline, and builds the parts."""

    def __init__(self, store_path: str | Path) -> None:
        self.db = connect(store_path)
        self._active: Version | None = None
        self._read = 0.0
        self._offered: dict[tuple[str, str, str, int, int], float] = {}
        self.pushed = 0
        self._unsigned_told = 0

    def current(self) -> Version | None:
        if time.monotonic() - self._read > REREAD_S:  # `baseline promote` is another process: look again
            self._read = time.monotonic()
            try:
                self._active = active(self.db)
            except sqlite3.Error as e:  # the receiver's own writes find a broken store; pushing just pauses
                log.error("cannot read the active baseline: %s", e)
        return self._active

    def offer(self, m: Message) -> list[Message]:
        """The parts to send to m's sender, if its hello or health names a baseline other than the active one."""
        if m.type not in ("hello", "health"):
            return []
        v = self.current()
        if v is None or m.body.get("baseline_id") == v.baseline_id:
            return []
        if not v.grant:
            if self._unsigned_told != v.version:
                self._unsigned_told = v.version
                log.error("baseline version %d (%s) was signed before versions were signed, and sensors refuse it: "
                          "sign it anew with `ntds-aggregator baseline rollback --to %d`", v.version, v.baseline_id,
                          v.version)  # fmt: skip
            return []
        now = time.monotonic()
        # asked anew: a new spool (a sensor reinstalled), another reported baseline, another grant
        key = (m.sensor, m.spool, m.body.get("baseline_id", ""), v.version, v.serial)
        if now - self._offered.get(key, -RESEND_S) < RESEND_S:
            return []
        if len(self._offered) > 100_000:  # bounded: sensors come and go
            self._offered.clear()
        self._offered[key] = now
        self.pushed += 1
        log.info("pushing baseline version %d (%s, grant %d) to %s, which runs %s", v.version, v.baseline_id,
                 v.serial, m.sensor, m.body.get("baseline_id") or "?")  # fmt: skip
        return baseline_parts(m.sensor, v.serial, v.baseline_id, v.content, v.grant, v.grant_signature)

    def close(self) -> None:
        self.db.close()
