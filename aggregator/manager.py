"""The alert manager's data: operators, sessions, triage, silences and the audit log, in the store.

Everything lives in the aggregator's SQLite store beside the alerts it is
about, so one file holds what sensors saw and what people did with it, and a
backup of the store is a backup of both. Every change an operator makes is
one transaction with its audit row: who, when, what, on which alerts, why.

Passwords are hashed with Argon2id (`argon2-cffi`, its default parameters).
Session, API and device tokens are random 256-bit values; only their SHA-256
is stored, so a stolen store does not log anyone in.

Logins follow `LoginPolicy`: failures are counted per account, per address
and per device (a browser that logged in to the account before), each attempt
is counted before its password is checked (parallel guesses cannot slip
through together), and enough failures lock the key for a time that doubles.
A browser holding the account's device cookie is counted apart, so nobody
else's failures can keep its user out. Login attempts go to `login_log`, not
to the audit log, which holds what operators did.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ntds.errors import InputError
from ntds.logs import printable

log = logging.getLogger("ntds.aggregator")

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
ID_MAX = 2**63 - 1
"""The largest row id SQLite stores; a bigger alert, silence or audit id names nothing."""
TOKEN_DAYS_MAX = 3650
LOGIN_LOG_KEEP = 100_000
"""Rows of the login log kept (the oldest go first), and at most LOGIN_LOG_DAYS days."""
LOGIN_LOG_DAYS = 90

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
CREATE TABLE IF NOT EXISTS login_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, name TEXT NOT NULL, address TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS login_throttle (
    key TEXT PRIMARY KEY, failures INTEGER NOT NULL, last REAL NOT NULL, locked_until REAL NOT NULL,
    refused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS ui_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, matchers TEXT NOT NULL, starts REAL NOT NULL, expires REAL NOT NULL,
    reason TEXT NOT NULL, created_by TEXT NOT NULL, revoked REAL, revoked_by TEXT);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection to the store for the alert manager (the store itself creates the alert index)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    fresh = not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_alerts'").fetchone()
    db.executescript(SCHEMA)
    if fresh:
        _index_audit(db)
    _add_column(db, "users", "packets", "INTEGER NOT NULL DEFAULT 1")  # a store from before packets
    _add_column(db, "users", "one_time_expires", "REAL")  # before one-time passwords expired (they never do)
    return db


def _add_column(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    if column in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
        return
    try:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    except sqlite3.OperationalError as e:
        if "duplicate column" not in str(e):  # another connection added it first
            raise


def _index_audit(db: sqlite3.Connection) -> None:
    """Which audit rows are about which alerts: the table, and the rows written before it (from their targets,
    which list at most 50 alerts)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS audit_alerts (alert_id INTEGER NOT NULL, audit_id INTEGER NOT NULL, "
                   "PRIMARY KEY (alert_id, audit_id)) WITHOUT ROWID")  # fmt: skip
        for audit_id, target in db.execute("SELECT id, target FROM audit WHERE target LIKE 'alert %'").fetchall():
            listed = (x.strip() for x in target[6:].replace(" ...", "").split(","))
            ids = [int(x) for x in listed if x.isascii() and x.isdigit() and len(x) < 19]
            db.executemany("INSERT OR IGNORE INTO audit_alerts VALUES (?, ?)", [(i, audit_id) for i in ids])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT (a full disk) has ended it: the first error is the one to tell
            db.execute("ROLLBACK")
        raise


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


@dataclass(frozen=True)
class LoginPolicy:
    """How logins are throttled (`ui_login` in aggregator.yaml; README: Alert manager)."""

    account_failures: int = 5
    address_failures: int = 20
    lock_s: float = 60
    max_lock_s: float = 900
    forget_s: float = 3600
    device_days: float = 90
    one_time_hours: float = 24

    MEANINGS = {
        "account_failures": "failed logins to one account (from browsers it never logged in from) before it is "
        "locked for them; a browser that did (its device cookie) has the same allowance of its own",
        "address_failures": "failed logins from one address, to any accounts, before the address is locked",
        "lock_s": "the first lock; every further failure doubles it",
        "max_lock_s": "the longest lock",
        "forget_s": "failures are forgotten after this long without one",
        "device_days": "how long a browser that logged in to an account is recognised (its device cookie)",
        "one_time_hours": "how long a one-time password (user add --one-time) can be used",
    }

    @classmethod
    def problem(cls, values: dict) -> str | None:
        """What is wrong with the settings, or None."""
        for k, v in values.items():
            if k not in cls.MEANINGS:
                return f"has unknown key {str(k)[:40]!r} (known: {', '.join(cls.MEANINGS)})"
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v <= 10**7:
                return f"{k} must be a positive number"
            if k.endswith("_failures") and v != int(v):
                return f"{k} must be a whole number"
        if values.get("max_lock_s", cls.max_lock_s) < values.get("lock_s", cls.lock_s):
            return "max_lock_s must be at least lock_s"
        return None

    def lock(self, failures: int, threshold: int) -> float:
        """Seconds locked after `failures` failures (0 below the threshold)."""
        if failures < threshold:
            return 0.0
        return min(self.lock_s * 2 ** min(failures - threshold, 40), self.max_lock_s)


@dataclass(frozen=True)
class Login:
    """What a login attempt came to: a session (token, user, and a new device token when the browser had none for
    the account), or a refusal: outcome wrong, locked (retry_after seconds), expired or spent (a one-time
    password)."""

    outcome: str
    token: str = ""
    user: User | None = None
    device: str = ""
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def valid_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= NAME_MAX or not all(c.isalnum() or c in "._-@" for c in name):
        raise InputError(f"user name must be 1 to {NAME_MAX} letters, digits, dots, dashes, underscores or @")
    return name


def alert_ids(values: object) -> list[int]:
    """Alert ids from a form or JSON: whole numbers (or strings of digits) from 1 to ID_MAX, at most 10,000."""
    values = values if isinstance(values, list) else [values]
    if len(values) > 10_000:
        raise InputError("at most 10,000 alerts at once")
    out = []
    for v in values:
        if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit() and len(v.strip()) <= 19:
            v = int(v.strip())
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= ID_MAX:
            raise InputError("alert ids must be whole numbers from 1 to 2^63-1")
        out.append(v)
    return out


class Manager:
    """The alert manager's operations on one store connection."""

    def __init__(self, db: sqlite3.Connection, policy: LoginPolicy | None = None) -> None:
        self.db = db
        self.policy = policy or LoginPolicy()

    def _tx(self):
        return _Transaction(self.db)

    def audit(self, user: str, action: str, target: str, comment: str = "", alerts: list[int] = ()) -> None:
        """One row of the audit log; `alerts` are the alerts it is about (their history lists it)."""
        cur = self.db.execute("INSERT INTO audit (time, user, action, target, comment) VALUES (?, ?, ?, ?, ?)",
                              (time.time(), user, action, target, comment[:2000]))  # fmt: skip
        if alerts:
            self.db.executemany("INSERT OR IGNORE INTO audit_alerts VALUES (?, ?)",
                                [(i, cur.lastrowid) for i in alerts])  # fmt: skip

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the counters /metrics shows."""
        self.db.execute("INSERT INTO ui_counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
                        (name, n, n))  # fmt: skip

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM ui_counters"))

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
            expires = time.time() + self.policy.one_time_hours * 3600 if one_time else None
            self.db.execute("INSERT INTO users (name, role, password, created, one_time, packets, one_time_expires) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (name, role, _hasher().hash(password), time.time(),
                                                             int(one_time), int(packets), expires))  # fmt: skip
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
            # every session, API token and device cookie ends: whoever had the old password has nothing left
            ended = self.db.execute("DELETE FROM tokens WHERE user = ?", (name,)).rowcount
            self.db.execute("DELETE FROM login_throttle WHERE key = ?", ("account:" + name,))
            self.audit(by, "user password", name, f"{ended} sessions and tokens ended")

    def remove_user(self, name: str, by: str = "cli") -> None:
        with self._tx():
            if self.db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise InputError(f"no user {name!r}")
            self.db.execute("DELETE FROM tokens WHERE user = ?", (name,))
            self.db.execute("DELETE FROM login_throttle WHERE key = ?", ("account:" + name,))
            self.audit(by, "user remove", name)

    def unlock(self, name: str, by: str = "cli") -> int:
        """Lift the locks on an account (for browsers without its device cookie); how many there were."""
        with self._tx():
            n = self.db.execute("DELETE FROM login_throttle WHERE key = ?", ("account:" + name,)).rowcount
            self.audit(by, "user unlock", name)
        return n

    def users(self) -> list[dict]:
        rows = self.db.execute("SELECT name, role, created, one_time, packets FROM users ORDER BY name")
        return [{"name": n, "role": r, "created": c, "one_time": bool(o), "packets": bool(p) and r == "analyst"}
                for n, r, c, o, p in rows]  # fmt: skip

    def login(self, name: str, password: str, address: str = "", device: str = "") -> Login:
        """A login attempt from `address` (a browser sending `device`, its device cookie, if it has one).

        The attempt is counted as a failure before the password is checked, atomically with the check of the locks,
        so parallel guesses cannot all slip in; a correct password takes it back. A one-time password is spent by
        a compare-and-swap of the stored hash: of parallel logins with it exactly one gets a session."""
        from argon2.exceptions import VerificationError

        now, p = time.time(), self.policy
        trusted = bool(device) and self._device_user(device) == name
        keys = {"device:" + _hash(device): p.account_failures} if trusted else \
            {"account:" + name: p.account_failures, "address:" + address: p.address_failures}  # fmt: skip
        with self._tx():
            before = {k: self.db.execute("SELECT failures, last, locked_until FROM login_throttle WHERE key = ?",
                                         (k,)).fetchone() for k in keys}  # fmt: skip
            locked = max((r[2] for r in before.values() if r and r[2] > now), default=0.0)
            if locked:
                for k in keys:
                    self.db.execute("UPDATE login_throttle SET refused = refused + 1 WHERE key = ?", (k,))
                self.count("login_locked")
                return Login("locked", retry_after=locked - now)
            for k, threshold in keys.items():
                row = before[k]
                failures = 1 if row is None or now - row[1] > p.forget_s else row[0] + 1
                until = now + p.lock(failures, threshold) if failures >= threshold else 0.0
                self.db.execute("INSERT INTO login_throttle VALUES (?, ?, ?, ?, 0) ON CONFLICT (key) DO UPDATE SET "
                                "failures = excluded.failures, last = excluded.last, "
                                "locked_until = excluded.locked_until", (k, failures, now, until))  # fmt: skip
        row = self.db.execute("SELECT role, password, one_time, packets, one_time_expires FROM users WHERE name = ?",
                              (name,)).fetchone()  # fmt: skip
        outcome = "ok"
        if row is None:
            _hasher().hash(password)  # the same time for unknown names as for wrong passwords
            outcome = "wrong"
        else:
            try:
                _hasher().verify(row[1], password)
            except VerificationError:
                outcome = "wrong"
            if outcome == "ok" and row[2] and row[4] is not None and row[4] < now:
                outcome = "expired"
        if outcome != "ok":
            return self._failed(name, address, outcome, keys, "unknown name" if row is None else "")
        role, stored, one_time, packets, _ = row
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        new_device = "" if trusted else secrets.token_urlsafe(32)
        with self._tx():
            spent = False
            if one_time:  # spent: the password no longer matches anything, and only one login can spend it
                spent = (
                    self.db.execute(
                        "UPDATE users SET password = ?, one_time = 0, one_time_expires = NULL "
                        "WHERE name = ? AND password = ? AND one_time = 1",
                        (_hasher().hash(secrets.token_urlsafe(32)), name, stored),
                    ).rowcount
                    == 0
                )
            if not spent:
                self.db.execute("INSERT INTO tokens VALUES (?, ?, 'session', ?, ?, ?)",
                                (_hash(token), name, csrf, now, now + SESSION_S))  # fmt: skip
                if new_device:
                    self.db.execute("INSERT INTO tokens VALUES (?, ?, 'device', '', ?, ?)",
                                    (_hash(new_device), name, now, now + p.device_days * 86400))  # fmt: skip
                for k in keys:  # the attempt counted in advance was not a failure
                    if k.startswith("address:"):
                        r = before[k]
                        self.db.execute("UPDATE login_throttle SET failures = MAX(failures - 1, 0), locked_until = ? "
                                        "WHERE key = ?", (r[2] if r else 0.0, k))  # fmt: skip
                    else:
                        self.db.execute("DELETE FROM login_throttle WHERE key = ?", (k,))
                self.audit(name, "login", "session")
                self._log(name, address, "ok", "known browser" if trusted else "")
                self.count("login_ok")
        if spent:
            return self._failed(name, address, "spent", keys, "a one-time password used by a parallel login")
        return Login("ok", token, User(name, role, csrf, bool(packets)), new_device)

    def _failed(self, name: str, address: str, outcome: str, keys: dict, detail: str) -> Login:
        """A refused login: logged, counted, and the locks it started said in the log."""
        now = time.time()
        with self._tx():
            self._log(name, address, outcome, detail)
            self.count("login_" + outcome)
            locks = [(k, f, u - last) for k in keys for f, u, last in
                     self.db.execute("SELECT failures, locked_until, last FROM login_throttle WHERE key = ? AND "
                                     "locked_until > ?", (k, now))]  # fmt: skip
            if locks:
                self.count("login_lockouts", len(locks))
        log.warning("login refused (%s) for %s from %s%s", outcome, printable(name, NAME_MAX), printable(address, 64),
                    f": {detail}" if detail else "")  # fmt: skip
        for k, failures, length in locks:  # the lock's length from the failure that set it (a slow hash under
            # load must not make the log say 4 s for a 5 s lock)
            log.warning("logins locked for %s for %.0f s after %d failures", printable(k, 100), length, failures)
        return Login(outcome)

    def _log(self, name: str, address: str, outcome: str, detail: str = "") -> None:
        cur = self.db.execute("INSERT INTO login_log (time, name, address, outcome, detail) VALUES (?, ?, ?, ?, ?)",
                              (time.time(), name[:NAME_MAX], address[:64], outcome, detail[:200]))  # fmt: skip
        if cur.lastrowid % 1000 == 0:  # bounded: the newest LOGIN_LOG_KEEP rows of the last LOGIN_LOG_DAYS days
            self.db.execute("DELETE FROM login_log WHERE id <= ? OR time < ?",
                            (cur.lastrowid - LOGIN_LOG_KEEP, time.time() - LOGIN_LOG_DAYS * 86400))  # fmt: skip
            self.db.execute("DELETE FROM login_throttle WHERE last < ? AND locked_until < ?",
                            (time.time() - self.policy.forget_s, time.time()))  # fmt: skip

    def _device_user(self, device: str) -> str | None:
        if not device or len(device) > 200:
            return None
        row = self.db.execute("SELECT user FROM tokens WHERE hash = ? AND kind = 'device' AND expires > ?",
                              (_hash(device), time.time())).fetchone()  # fmt: skip
        return row[0] if row else None

    def login_log(self, limit: int = 100, before: int | None = None, name: str = "", outcome: str = "") -> list[dict]:
        """Login attempts, newest first: ok, wrong (a wrong password or an unknown name), expired or spent (one-time
        passwords). Attempts refused while locked are counted (metrics, `locks`), not logged one by one."""
        where, args = ["1"], []
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if name:
            where.append("name = ?")
            args.append(name)
        if outcome:
            where.append("outcome = ?")
            args.append(outcome)
        rows = self.db.execute(f"SELECT id, time, name, address, outcome, detail FROM login_log WHERE "
                               f"{' AND '.join(where)} ORDER BY id DESC LIMIT ?", (*args, limit))  # fmt: skip
        return [dict(zip(("id", "time", "name", "address", "outcome", "detail"), r)) for r in rows]

    def locks(self) -> list[dict]:
        """Keys locked now (account:NAME, address:IP, device:...), their failures and the attempts refused since."""
        rows = self.db.execute("SELECT key, failures, locked_until, refused FROM login_throttle WHERE locked_until > ? "
                               "ORDER BY locked_until DESC", (time.time(),))  # fmt: skip
        return [{"key": k if not k.startswith("device:") else k[:15] + "…", "failures": f, "until": u, "refused": r}
                for k, f, u, r in rows]  # fmt: skip

    def api_token(self, name: str, days: int = 365, by: str = "cli") -> str:
        """A bearer token for scripts (shown once; only its hash is kept), valid 1 to TOKEN_DAYS_MAX days or until
        the user's password changes."""
        if not isinstance(days, int) or not 1 <= days <= TOKEN_DAYS_MAX:
            raise InputError(f"a token is valid for 1 to {TOKEN_DAYS_MAX} days")
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
        return (isinstance(sent, str) and bool(sent) and bool(user.csrf)
                and hmac.compare_digest(user.csrf.encode(), sent.encode()))  # fmt: skip

    # -- triage ------------------------------------------------------------------------

    def act(self, ids: list[int], action: str, user: User, comment: str = "", assignee: str = "") -> int:
        """Apply a triage action to alerts; returns how many changed. Audited with the comment."""
        if action not in ACTIONS:
            raise InputError(f"action must be one of {', '.join(ACTIONS)}")
        if not isinstance(comment, str) or not isinstance(assignee, str):
            raise InputError("comment and assignee must be text")
        if action == "assign" or assignee:
            valid_name(assignee)
        ids = alert_ids(ids)
        if not ids:
            raise InputError("no alerts given")
        with self._tx():
            if assignee and not self.db.execute("SELECT 1 FROM users WHERE name = ?", (assignee,)).fetchone():
                raise InputError(f"no user {assignee!r} to assign to")
            marks = ",".join("?" * len(ids))
            cur = self.db.execute(
                f"UPDATE alerts SET status = ?, assignee = CASE WHEN ? != '' THEN ? ELSE assignee END, updated = ? "
                f"WHERE id IN ({marks})",
                (ACTIONS[action], assignee, assignee, time.time(), *ids),
            )
            target = "alert " + ",".join(map(str, ids[:50])) + (" ..." if len(ids) > 50 else "")
            self.audit(user.name, action + (f" to {assignee}" if assignee else ""), target, comment, alerts=ids)
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

    def audit_log(self, limit: int = 100, before: int | None = None, user: str = "", action: str = "",
                  alert: int | None = None) -> list[dict]:  # fmt: skip
        """Audit rows, newest first, `limit` of them with ids below `before` (the next page: the last id shown).
        Filters: the user, the action (its first word matches too: `assign` finds `assign to bob`), an alert (every
        row about it, whatever the log's size)."""
        where, args = ["1"], []
        if before is not None:
            where.append("a.id < ?")
            args.append(before)
        if user:
            where.append("a.user = ?")
            args.append(user)
        if action:
            where.append("(a.action = ? OR substr(a.action, 1, ?) = ?)")
            args += [action, len(action) + 1, action + " "]
        if alert is not None:
            where.append("a.id IN (SELECT audit_id FROM audit_alerts WHERE alert_id = ?)")
            args.append(alert)
        rows = self.db.execute(f"SELECT a.id, a.time, a.user, a.action, a.target, a.comment FROM audit a WHERE "
                               f"{' AND '.join(where)} ORDER BY a.id DESC LIMIT ?", (*args, limit))  # fmt: skip
        return [dict(zip(("id", "time", "user", "action", "target", "comment"), r)) for r in rows]

    def history(self, alert_id: int) -> list[dict]:
        """Every audit row about one alert, oldest first."""
        return self.audit_log(limit=-1, alert=alert_id)[::-1]


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
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:  # a full disk at the commit: never leave the connection inside the transaction
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
