"""The alert manager's data: operators, sessions, triage, silences and the audit log, in the store.

Everything lives in the aggregator's SQLite store beside the alerts it is
about, so one file holds what sensors saw and what people did with it, and a
backup of the store is a backup of both. Every change an operator makes is
one transaction with its audit row: who, when, what, on which alerts, why.

Passwords are hashed with Argon2id (`argon2-cffi`, its default parameters).
Session and API tokens are random 256-bit values; only their SHA-256 is
stored, so a stolen store does not log anyone in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ntds.errors import InputError

ROLES = ("viewer", "analyst")
"""viewer: reads everything, changes nothing. analyst: also acknowledges, assigns, escalates, closes, silences.
Downloading packets is a permission of its own (packets hold payloads: passwords, mail, files): analysts have it
unless it is taken away (`user packets NAME no`), viewers never."""
ACTIONS = {"acknowledge": "acknowledged", "assign": "assigned", "escalate": "escalated", "close": "closed",
           "reopen": "new"}  # fmt: skip
"""Triage actions and the status each leaves the alert in."""
STATUSES = ("new", "acknowledged", "assigned", "escalated", "closed")
SILENCE_FIELDS = ("kind", "host", "application", "sensor")
"""What a silence matches on: alert kind, the responsible host (an address or a network), application, sensor."""
SESSION_S = 12 * 3600
NAME_MAX = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password TEXT NOT NULL, created REAL NOT NULL,
    one_time INTEGER NOT NULL DEFAULT 0, packets INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, user TEXT NOT NULL, kind TEXT NOT NULL, csrf TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, comment TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, matchers TEXT NOT NULL, starts REAL NOT NULL, expires REAL NOT NULL,
    reason TEXT NOT NULL, created_by TEXT NOT NULL, revoked REAL, revoked_by TEXT);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection to the store for the alert manager (the store itself creates the alert index)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    if "packets" not in {r[1] for r in db.execute("PRAGMA table_info(users)")}:  # a store from before packets
        db.execute("ALTER TABLE users ADD COLUMN packets INTEGER NOT NULL DEFAULT 1")
    return db


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


@dataclass(frozen=True)
class User:
    name: str
    role: str
    csrf: str = ""
    packets: bool = False

    @property
    def can_change(self) -> bool:
        return self.role == "analyst"

    @property
    def can_download_packets(self) -> bool:
        return self.role == "analyst" and bool(self.packets)


def valid_name(name: str) -> str:
    if not name or len(name) > NAME_MAX or not all(c.isalnum() or c in "._-@" for c in name):
        raise InputError(f"user name must be 1 to {NAME_MAX} letters, digits, dots, dashes, underscores or @")
    return name


class Manager:
    """The alert manager's operations on one store connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def _tx(self):
        return _Transaction(self.db)

    def audit(self, user: str, action: str, target: str, comment: str = "") -> None:
        self.db.execute("INSERT INTO audit (time, user, action, target, comment) VALUES (?, ?, ?, ?, ?)",
                        (time.time(), user, action, target, comment[:2000]))  # fmt: skip

    # -- operators ---------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str, by: str = "cli", one_time: bool = False,
                 packets: bool = True) -> None:  # fmt: skip
        valid_name(name)
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}")
        packets = packets and role == "analyst"
        if len(password) < 12 and not one_time:
            raise InputError("a password needs at least 12 characters")
        with self._tx():
            if self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise InputError(f"user {name!r} exists already")
            self.db.execute("INSERT INTO users (name, role, password, created, one_time, packets) VALUES "
                            "(?, ?, ?, ?, ?, ?)", (name, role, _hasher().hash(password), time.time(), int(one_time),
                                                   int(packets)))  # fmt: skip
            self.audit(by, "user add", name, role + ("" if packets or role != "analyst" else ", no packets"))

    def set_packets(self, name: str, allowed: bool, by: str = "cli") -> None:
        """Grant or take away an analyst's permission to download packets (viewers never have it)."""
        with self._tx():
            row = self.db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise InputError(f"no user {name!r}")
            if allowed and row[0] != "analyst":
                raise InputError(f"{name} is a {row[0]}: only analysts may download packets")
            self.db.execute("UPDATE users SET packets = ? WHERE name = ?", (int(allowed), name))
            self.audit(by, "user packets", name, "allowed" if allowed else "denied")

    def set_password(self, name: str, password: str, by: str = "cli") -> None:
        if len(password) < 12:
            raise InputError("a password needs at least 12 characters")
        with self._tx():
            cur = self.db.execute("UPDATE users SET password = ?, one_time = 0 WHERE name = ?",
                                  (_hasher().hash(password), name))  # fmt: skip
            if cur.rowcount == 0:
                raise InputError(f"no user {name!r}")
            self.db.execute("DELETE FROM tokens WHERE user = ? AND kind = 'session'", (name,))
            self.audit(by, "user password", name)

    def remove_user(self, name: str, by: str = "cli") -> None:
        with self._tx():
            if self.db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise InputError(f"no user {name!r}")
            self.db.execute("DELETE FROM tokens WHERE user = ?", (name,))
            self.audit(by, "user remove", name)

    def users(self) -> list[dict]:
        rows = self.db.execute("SELECT name, role, created, one_time, packets FROM users ORDER BY name")
        return [{"name": n, "role": r, "created": c, "one_time": bool(o), "packets": bool(p) and r == "analyst"}
                for n, r, c, o, p in rows]  # fmt: skip

    def login(self, name: str, password: str) -> tuple[str, User] | None:
        """A new session (token, user) for a correct password; None otherwise. A one-time login works once."""
        from argon2.exceptions import VerificationError

        row = self.db.execute("SELECT role, password, one_time, packets FROM users WHERE name = ?",
                              (name,)).fetchone()  # fmt: skip
        if row is None:
            _hasher().hash(password)  # the same time for unknown names as for wrong passwords
            return None
        role, stored, one_time, packets = row
        try:
            _hasher().verify(stored, password)
        except VerificationError:
            self.audit(name, "login refused", "session")
            return None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._tx():
            self.db.execute("INSERT INTO tokens VALUES (?, ?, 'session', ?, ?, ?)",
                            (_hash(token), name, csrf, time.time(), time.time() + SESSION_S))  # fmt: skip
            if one_time:  # spent: the password no longer matches anything
                self.db.execute("UPDATE users SET password = ?, one_time = 0 WHERE name = ?",
                                (_hasher().hash(secrets.token_urlsafe(32)), name))  # fmt: skip
            self.audit(name, "login", "session")
        return token, User(name, role, csrf, bool(packets))

    def api_token(self, name: str, days: int = 365, by: str = "cli") -> str:
        """A bearer token for scripts (shown once; only its hash is kept)."""
        row = self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise InputError(f"no user {name!r}")
        token = secrets.token_urlsafe(32)
        with self._tx():
            self.db.execute("INSERT INTO tokens VALUES (?, ?, 'api', '', ?, ?)",
                            (_hash(token), name, time.time(), time.time() + days * 86400))  # fmt: skip
            self.audit(by, "api token", name, f"valid {days} days")
        return token

    def user_for(self, token: str, kind: str) -> User | None:
        """The user a session or API token belongs to, if it is valid now."""
        if not token or len(token) > 200:
            return None
        row = self.db.execute(
            "SELECT t.user, u.role, t.csrf, u.packets FROM tokens t JOIN users u ON u.name = t.user "
            "WHERE t.hash = ? AND t.kind = ? AND t.expires > ?",
            (_hash(token), kind, time.time()),
        ).fetchone()
        return User(row[0], row[1], row[2], bool(row[3])) if row else None

    def logout(self, token: str) -> None:
        self.db.execute("DELETE FROM tokens WHERE hash = ?", (_hash(token),))

    @staticmethod
    def csrf_ok(user: User, sent: str | None) -> bool:
        return bool(sent) and bool(user.csrf) and hmac.compare_digest(user.csrf, sent)

    # -- triage ------------------------------------------------------------------------

    def act(self, ids: list[int], action: str, user: User, comment: str = "", assignee: str = "") -> int:
        """Apply a triage action to alerts; returns how many changed. Audited with the comment."""
        if action not in ACTIONS:
            raise InputError(f"action must be one of {', '.join(ACTIONS)}")
        if action == "assign":
            valid_name(assignee)
        ids = [int(i) for i in ids][:10_000]
        if not ids:
            raise InputError("no alerts given")
        with self._tx():
            marks = ",".join("?" * len(ids))
            cur = self.db.execute(
                f"UPDATE alerts SET status = ?, assignee = CASE WHEN ? != '' THEN ? ELSE assignee END, updated = ? "
                f"WHERE id IN ({marks})",
                (ACTIONS[action], assignee, assignee, time.time(), *ids),
            )
            target = "alert " + ",".join(map(str, ids[:50])) + (" ..." if len(ids) > 50 else "")
            self.audit(user.name, action + (f" to {assignee}" if assignee else ""), target, comment)
        return cur.rowcount

    # -- silences ----------------------------------------------------------------------

    def silence(self, matchers: dict, expires: float, reason: str, user: User, starts: float | None = None) -> int:
        matchers = check_matchers(matchers)
        now = time.time()
        starts = now if starts is None else starts
        if not reason.strip():
            raise InputError("a silence needs a reason")
        if not starts < expires <= now + 366 * 86400:
            raise InputError("a silence must end after it starts, within a year")
        with self._tx():
            cur = self.db.execute(
                "INSERT INTO silences (matchers, starts, expires, reason, created_by) VALUES (?, ?, ?, ?, ?)",
                (json.dumps(matchers, sort_keys=True), starts, expires, reason[:2000], user.name),
            )
            self.audit(user.name, "silence", f"silence {cur.lastrowid}", f"{json.dumps(matchers)}: {reason}")
        return cur.lastrowid

    def revoke(self, silence_id: int, user: User, comment: str = "") -> None:
        with self._tx():
            cur = self.db.execute("UPDATE silences SET revoked = ?, revoked_by = ? WHERE id = ? AND revoked IS NULL",
                                  (time.time(), user.name, silence_id))  # fmt: skip
            if cur.rowcount == 0:
                raise InputError(f"no active silence {silence_id}")
            self.audit(user.name, "revoke silence", f"silence {silence_id}", comment)

    def silences(self, active_only: bool = False, at: float | None = None) -> list[dict]:
        at = time.time() if at is None else at
        rows = self.db.execute("SELECT id, matchers, starts, expires, reason, created_by, revoked, revoked_by "
                               "FROM silences ORDER BY id DESC")  # fmt: skip
        out = []
        for i, m, starts, expires, reason, by, revoked, revoked_by in rows:
            active = revoked is None and starts <= at < expires
            if active_only and not active:
                continue
            out.append({"id": i, "matchers": json.loads(m), "starts": starts, "expires": expires, "reason": reason,
                        "created_by": by, "revoked": revoked, "revoked_by": revoked_by, "active": active})  # fmt: skip
        return out

    def silenced(self, alert: dict, sensor: str, at: float | None = None) -> int | None:
        """The id of an active silence matching an alert (body and sensor), or None."""
        for s in self.silences(active_only=True, at=at):
            if matches(s["matchers"], alert, sensor):
                return s["id"]
        return None

    # -- reading ------------------------------------------------------------------------

    def queue(self, f: QueueFilter) -> list[dict]:
        """Alerts grouped by sensor, kind, host and application, newest first, silenced ones hidden unless asked.

        Each group: its newest alert's id, alerts and occurrences, highest tier, first and last seen, how many
        are still new, and the silence hiding it (if shown)."""
        where, args = f.sql()
        rows = self.db.execute(
            "SELECT sensor, kind, src_ip, application, COUNT(*), SUM(count), MAX(tier), MIN(first_seen), "
            "MAX(last_seen), MAX(id), SUM(status = 'new') "
            f"FROM alerts WHERE {where} GROUP BY sensor, kind, src_ip, application "
            "ORDER BY MAX(first_seen) DESC LIMIT ?",
            (*args, f.limit),
        ).fetchall()
        # the newest alert's signature names each group (read for the shown groups only: the grouping itself
        # reads nothing but the alerts_group index)
        newest_ids = [r[9] for r in rows]
        signatures = dict(self.db.execute(f"SELECT id, signature FROM alerts WHERE id IN ({','.join('?' * len(rows))})",
                                          newest_ids)) if rows else {}  # fmt: skip
        active = self.silences(active_only=True)
        out = []
        for sensor, kind, src, app, n, occurrences, tier, first, last, newest, fresh in rows:
            signature = signatures.get(newest, "")
            probe = {"kind": kind, "src_ip": src, "application": app}
            silence = next((x["id"] for x in active if matches(x["matchers"], probe, sensor)), None)
            if silence is not None and not f.silenced:
                continue
            out.append({"sensor": sensor, "kind": kind, "src_ip": src, "application": app, "alerts": n,
                        "count": occurrences, "max_tier": tier, "first_seen": first, "last_seen": last,
                        "newest": newest, "new": fresh, "signature": signature, "silenced_by": silence})  # fmt: skip
        return out

    def alerts(self, f: QueueFilter) -> list[dict]:
        """The alerts themselves (index columns), newest first."""
        where, args = f.sql()
        sql = f"SELECT {_LISTED} FROM alerts a WHERE {where} ORDER BY first_seen DESC, id DESC LIMIT ?"
        rows = self.db.execute(sql, (*args, f.limit))
        return [dict(zip(_LISTED_NAMES, r)) for r in rows]

    def alert(self, alert_id: int) -> dict | None:
        """One alert: its index row and its full body as the sensor sent it."""
        row = self.db.execute(f"SELECT {_LISTED}, m.body FROM alerts a JOIN messages m ON m.id = a.id "
                              "WHERE a.id = ?", (alert_id,)).fetchone()  # fmt: skip
        if row is None:
            return None
        from ntds.wire.schema import upgrade_body

        out = dict(zip(_LISTED_NAMES, row[:-1]))
        out["body"] = upgrade_body("alert", json.loads(row[-1]))
        return out

    def audit_log(self, limit: int = 500) -> list[dict]:
        rows = self.db.execute("SELECT id, time, user, action, target, comment FROM audit ORDER BY id DESC LIMIT ?",
                               (limit,))  # fmt: skip
        return [dict(zip(("id", "time", "user", "action", "target", "comment"), r)) for r in rows]


_LISTED_NAMES = ("id", "sensor", "kind", "src_ip", "dst_ip", "dst_port", "application", "tier", "count", "first_seen",
                 "last_seen", "signature", "status", "assignee", "updated")  # fmt: skip
_LISTED = ", ".join(f"a.{c}" for c in _LISTED_NAMES)


@dataclass
class QueueFilter:
    """What the queue shows: every field optional; times are seconds since the epoch."""

    sensor: str = ""
    kind: str = ""
    host: str = ""
    application: str = ""
    min_tier: int = 0
    since: float | None = None
    until: float | None = None
    status: str = "open"
    """open (not closed), all, or one status."""
    silenced: bool = False
    limit: int = 200

    def sql(self) -> tuple[str, list]:
        where, args = ["tier >= ?"], [self.min_tier]
        for column in ("sensor", "kind", "application"):
            value = getattr(self, column)
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if self.host:
            where.append("(src_ip = ? OR dst_ip = ?)")
            args += [self.host, self.host]
        if self.since is not None:
            where.append("last_seen >= ?")
            args.append(self.since)
        if self.until is not None:
            where.append("first_seen < ?")
            args.append(self.until)
        if self.status == "open":
            where.append("status != 'closed'")
        elif self.status != "all":
            where.append("status = ?")
            args.append(self.status)
        return " AND ".join(where), args


def check_matchers(matchers: object) -> dict:
    """A silence's matchers: some of SILENCE_FIELDS, each a non-empty value; `host` an address or network."""
    if not isinstance(matchers, dict) or not matchers:
        raise InputError(f"a silence matches on at least one of {', '.join(SILENCE_FIELDS)}")
    out = {}
    for k, v in matchers.items():
        if k not in SILENCE_FIELDS:
            raise InputError(f"a silence cannot match on {str(k)[:40]!r} (only {', '.join(SILENCE_FIELDS)})")
        if not isinstance(v, str) or not v.strip() or len(v) > 256:
            raise InputError(f"silence matcher {k} must be a value")
        if k == "host":
            try:
                ipaddress.ip_network(v.strip(), strict=False)
            except ValueError:
                raise InputError(f"silence matcher host {v[:60]!r} is not an address or network") from None
        out[k] = v.strip()
    return out


def matches(matchers: dict, alert: dict, sensor: str) -> bool:
    """Whether every matcher matches (values equal; `host` contains the alert's responsible host)."""
    for k, v in matchers.items():
        if k == "host":
            try:
                if ipaddress.ip_address(alert.get("src_ip", "")) not in ipaddress.ip_network(v, strict=False):
                    return False
            except ValueError:
                return False
        elif k == "sensor":
            if sensor != v:
                return False
        elif alert.get(k) != v:
            return False
    return True


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
