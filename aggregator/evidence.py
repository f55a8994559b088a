"""Pcap jobs on the aggregator: ask the sensor that raised an alert for its packets, collect the answer, hand it over.

A job is a row of `pcap_jobs` in the store: which sensor, which packets (the
`pcap_job` message's fields), its state and outcome. Anyone with the store
creates one (`ntds-aggregator pcap`, the alert manager's Download packets); the
receiver inside `serve` sends pending jobs to their sensor over the CURVE link
as soon as that sensor is connected (a sensor that is offline gets its job when
it comes back, a sensor that restarted gets it again on its new connection, and
a job unanswered for `RESEND_S` is sent again), and takes the
`evidence` parts the sensor answers with into `pcap_parts`, in the same durable
transaction as any message, before acknowledging them. When every part is in,
the file is assembled, checked against the SHA-256 the sensor announced, written
beside the store (`evidence/job-N.pcap`, mode 0600: packets hold payloads) and
the parts are forgotten. A sensor that cannot serve a job answers why, in one
line, and the job ends failed with that line.

States: pending (not sent yet), sent, receiving (parts arriving), done, failed, expired (the file was removed
after `evidence_days` or beyond `evidence_mb`, aggregator.yaml).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import sqlite3
import time
from pathlib import Path

from ntds.errors import InputError
from ntds.wire.schema import JOB_RANGE_MAX_S, Message, encode, now_iso, packets_behind, upgrade_body, wire_time

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS pcap_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id INTEGER NOT NULL DEFAULT 0, sensor TEXT NOT NULL,
    spec TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, sent REAL NOT NULL DEFAULT 0, updated REAL NOT NULL,
    requested_by TEXT NOT NULL DEFAULT '', parts INTEGER NOT NULL DEFAULT 0, packets INTEGER NOT NULL DEFAULT 0,
    packets_total INTEGER NOT NULL DEFAULT 0, sha256 TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
    file TEXT NOT NULL DEFAULT '', bytes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS pcap_jobs_state ON pcap_jobs (state, sensor);
CREATE TABLE IF NOT EXISTS pcap_parts (
    job INTEGER NOT NULL, part INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job, part));
"""

RESEND_S = 60.0
"""A job sent but unanswered this long is sent again (the sensor lost it, or is still reading a large ring)."""
STALL_S = 300.0
"""An answer whose parts stopped arriving this long ago is asked for again (the sensor's spool dropped some)."""
MAX_BYTES = 64 * 2**20
"""What a job asks for at most; each sensor's pcap_max_mb may cap it lower."""
OPEN = ("pending", "sent", "receiving")


def folder_of(store_path: str | Path) -> Path:
    """Where assembled packet captures live: beside the store."""
    return Path(store_path).resolve().parent / "evidence"


# -- asking -------------------------------------------------------------------------------


def check_selection(sel: dict) -> dict:
    """A job's packet selection, checked (one InputError line for each mistake)."""
    for key in ("host", "peer"):
        if sel[key]:
            try:
                ipaddress.ip_address(sel[key])
            except ValueError:
                raise InputError(f"{key} {sel[key]!r:.60} is not an IP address") from None
    if not sel["host"]:
        raise InputError("a pcap job needs the host whose packets are wanted")
    try:
        since, until = wire_time(sel["since"]), wire_time(sel["until"])
    except (TypeError, ValueError):
        raise InputError("since and until must be times between 1970 and 2106") from None
    if until < since:
        raise InputError("until is before since")
    if (until - since).total_seconds() > JOB_RANGE_MAX_S:
        raise InputError(f"a pcap job spans at most {JOB_RANGE_MAX_S // 86400} days; ask for a shorter range")
    for key, top in (("host_port", 65535), ("peer_port", 65535), ("protocol", 255)):
        if not isinstance(sel[key], int) or not 0 <= sel[key] <= top:
            raise InputError(f"{key} must be 0..{top}")
    return sel


def request_for_alert(db: sqlite3.Connection, alert_id: int, requested_by: str = "") -> int:
    """The job for an alert's packets: an open or finished one if there is one, else a new one."""
    row = db.execute("SELECT sensor, spool, seq, body FROM messages WHERE id = ? AND type = 'alert'",
                     (alert_id,)).fetchone()  # fmt: skip
    if row is None:
        raise InputError(f"no alert {alert_id} in the store (ntds-aggregator alerts lists their ids)")
    sensor, spool, seq, body = row
    alert = upgrade_body("alert", json.loads(body))
    if not alert["src_ip"]:
        raise InputError(f"alert {alert_id} ({alert['kind']}) names no host, so it has no packets of its own")
    known = db.execute(
        "SELECT id FROM pcap_jobs WHERE alert_id = ? AND state IN ('pending', 'sent', 'receiving', 'done') "
        "ORDER BY id DESC LIMIT 1", (alert_id,)
    ).fetchone()  # fmt: skip
    if known is not None and _usable(db, known[0]):
        return known[0]
    sel = check_selection(packets_behind(alert))
    return _insert(db, alert_id, sensor, sel | {"alert_spool": spool, "alert_seq": seq}, requested_by)


def request_for_host(db: sqlite3.Connection, sensor: str, sel: dict, requested_by: str = "") -> int:
    """A new job for a host's packets in a time range (`pcap --sensor --host --since --until`)."""
    check_selection(sel)
    if db.execute("SELECT 1 FROM sensors WHERE sensor = ?", (sensor,)).fetchone() is None:
        raise InputError(f"no sensor {sensor!r} has ever sent to this aggregator (ntds-aggregator sensors)")
    return _insert(db, 0, sensor, sel | {"alert_spool": "", "alert_seq": 0}, requested_by)


def _usable(db: sqlite3.Connection, job_id: int) -> bool:
    j = job(db, job_id)
    return j["state"] != "done" or Path(j["file"]).exists()


def _insert(db: sqlite3.Connection, alert_id: int, sensor: str, spec: dict, requested_by: str) -> int:
    spec = spec | {"max_bytes": MAX_BYTES}
    encode(Message("pcap_job", sensor, 1, now_iso(), spec))  # what the sensor would refuse is refused here
    now = time.time()
    cur = db.execute(
        "INSERT INTO pcap_jobs (alert_id, sensor, spec, created, updated, requested_by) VALUES (?, ?, ?, ?, ?, ?)",
        (alert_id, sensor, json.dumps(spec), now, now, requested_by),
    )
    return int(cur.lastrowid)


def job(db: sqlite3.Connection, job_id: int) -> dict:
    row = db.execute(
        "SELECT id, alert_id, sensor, spec, state, error, created, sent, updated, requested_by, parts, packets, "
        "packets_total, sha256, source, file, bytes FROM pcap_jobs WHERE id = ?", (job_id,)
    ).fetchone()  # fmt: skip
    if row is None:
        raise InputError(f"no pcap job {job_id}")
    keys = ("id", "alert_id", "sensor", "spec", "state", "error", "created", "sent", "updated", "requested_by",
            "parts", "packets", "packets_total", "sha256", "source", "file", "bytes")  # fmt: skip
    out = dict(zip(keys, row))
    out["spec"] = json.loads(out["spec"])
    if out["state"] in OPEN:
        out["received"] = db.execute("SELECT COUNT(*) FROM pcap_parts WHERE job = ?", (job_id,)).fetchone()[0]
    return out


def jobs(db: sqlite3.Connection, alert_id: int | None = None, limit: int = 100) -> list[dict]:
    sql, args = "SELECT id FROM pcap_jobs", []
    if alert_id is not None:
        sql, args = sql + " WHERE alert_id = ?", [alert_id]
    return [job(db, i) for (i,) in db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()]


def wait(db: sqlite3.Connection, job_id: int, timeout: float, progress=None) -> dict:
    """Poll a job until it is done or failed, or `timeout` seconds pass (the job stays open then)."""
    end = time.monotonic() + timeout
    while True:
        j = job(db, job_id)
        if j["state"] in ("done", "failed") or time.monotonic() >= end:
            return j
        if progress is not None:
            progress(j)
        time.sleep(0.2)


# -- in serve: sending and receiving ---------------------------------------------------


def due(db: sqlite3.Connection, connections: dict[str, bytes], sent_to: dict[int, bytes],
        now: float) -> list[tuple[bytes, bytes, int]]:  # fmt: skip
    """(connection, frame, job) for each open job whose sensor is connected and which is not sent yet; was sent on a
    connection the sensor has since replaced (it restarted: a kill -9 in the middle of a job) or `RESEND_S` ago
    with nothing back; or whose answer stalled for `STALL_S` (parts the sensor's spool dropped)."""
    rows = db.execute(
        "SELECT id, sensor, spec, state, sent, updated FROM pcap_jobs WHERE state IN ('pending', 'sent', 'receiving') "
        "ORDER BY id LIMIT 200"
    ).fetchall()
    out = []
    for job_id, sensor, spec, state, sent, updated in rows:
        connection = connections.get(sensor)
        if connection is None:
            continue
        if state == "sent" and sent_to.get(job_id) == connection and now - sent < RESEND_S:
            continue
        if state == "receiving" and now - updated < STALL_S:
            continue
        out.append((connection, encode(Message("pcap_job", sensor, job_id, now_iso(), json.loads(spec))), job_id))
    return out


def mark_sent(db: sqlite3.Connection, job_ids: list[int], now: float) -> None:
    db.executemany("UPDATE pcap_jobs SET state = CASE state WHEN 'receiving' THEN 'receiving' ELSE 'sent' END, "
                   "sent = ?, updated = ? WHERE id = ? AND state IN ('pending', 'sent', 'receiving')",
                   [(now, now, j) for j in job_ids])  # fmt: skip


def store_part(db: sqlite3.Connection, m: Message) -> int:
    """One `evidence` part, inside the store's transaction; 1 if it was new. Parts for a job that is not this
    sensor's, or not open, are ignored (acknowledged, so never resent)."""
    b = m.body
    row = db.execute("SELECT sensor, state, parts, sha256 FROM pcap_jobs WHERE id = ?", (b["job"],)).fetchone()
    if row is None or row[0] != m.sensor or row[1] not in OPEN:
        return 0
    now = time.time()
    if b["parts"] == 0:
        db.execute("UPDATE pcap_jobs SET state = 'failed', error = ?, updated = ? WHERE id = ?",
                   (b["error"] or "the sensor could not serve it", now, b["job"]))  # fmt: skip
        return 1
    if row[1] == "receiving" and (row[2], row[3]) != (b["parts"], b["sha256"]):
        db.execute("DELETE FROM pcap_parts WHERE job = ?", (b["job"],))  # a new answer replaces an older one
    try:
        data = base64.b64decode(b["data"], validate=True)
    except (binascii.Error, ValueError):
        db.execute("UPDATE pcap_jobs SET state = 'failed', error = 'a part was not base64', updated = ? WHERE id = ?",
                   (now, b["job"]))  # fmt: skip
        return 1
    cur = db.execute("INSERT OR IGNORE INTO pcap_parts VALUES (?, ?, ?)", (b["job"], b["part"], data))
    db.execute(
        "UPDATE pcap_jobs SET state = 'receiving', parts = ?, packets = ?, packets_total = ?, sha256 = ?, "
        "source = ?, updated = ? WHERE id = ?",
        (b["parts"], b["packets"], b["packets_total"], b["sha256"], b["source"], now, b["job"]),
    )
    return cur.rowcount


def prune(db: sqlite3.Connection, max_age_s: float, max_bytes: int, now: float | None = None) -> list[str]:
    """Fetched packets past `max_age_s`, or beyond `max_bytes` in all (oldest first), removed: their jobs end
    `expired`, saying so (asking again makes a new job). Returns a log line per file removed."""
    now = time.time() if now is None else now
    rows = db.execute("SELECT id, file, updated, bytes FROM pcap_jobs WHERE state = 'done' ORDER BY updated").fetchall()
    total = sum(size for *_, size in rows)
    lines = []
    for job_id, file, updated, size in rows:
        if now - updated <= max_age_s and total <= max_bytes:
            break
        Path(file).unlink(missing_ok=True)
        total -= size
        why = (
            f"the packets were removed {'after' if now - updated > max_age_s else 'beyond the space for'} "
            + (f"{max_age_s / 86400:g} days" if now - updated > max_age_s else f"{max_bytes // 2**20} MB")
            + "; ask again"
        )
        db.execute("UPDATE pcap_jobs SET state = 'expired', error = ?, file = '', updated = ? WHERE id = ?",
                   (why, now, job_id))  # fmt: skip
        lines.append(f"pcap job {job_id}: {why}")
    return lines


def assemble(db: sqlite3.Connection, folder: Path) -> list[str]:
    """Jobs whose parts are all in: written out as one file each, checked, their parts forgotten. Returns a log
    line per job finished."""
    lines = []
    rows = db.execute(
        "SELECT j.id, j.sha256 FROM pcap_jobs j WHERE j.state = 'receiving' "
        "AND (SELECT COUNT(*) FROM pcap_parts p WHERE p.job = j.id) >= j.parts"
    ).fetchall()
    for job_id, digest in rows:
        path = folder / f"job-{job_id}.pcap"
        h = hashlib.sha256()
        size = 0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                for (data,) in db.execute("SELECT data FROM pcap_parts WHERE job = ? ORDER BY part", (job_id,)):
                    h.update(data)
                    size += len(data)
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if h.hexdigest() != digest:
                tmp.unlink(missing_ok=True)
                state, error, file = "failed", "the parts do not add up to the file the sensor announced", ""
            else:
                os.replace(tmp, path)
                state, error, file = "done", "", str(path)
        except OSError as e:
            lines.append(f"pcap job {job_id}: cannot write {path}: {e.strerror or e}; parts kept, tried again")
            continue
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE pcap_jobs SET state = ?, error = ?, file = ?, bytes = ?, updated = ? WHERE id = ?",
                   (state, error, file, size, time.time(), job_id))  # fmt: skip
        db.execute("DELETE FROM pcap_parts WHERE job = ?", (job_id,))
        db.execute("COMMIT")
        lines.append(f"pcap job {job_id}: {state}" + (f" ({error})" if error else f", {size:,} bytes in {path}"))
    return lines
