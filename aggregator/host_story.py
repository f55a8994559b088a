"""The host's story: what a local host normally does, and what it does for the first time.

From the hosts part of the sensors' context messages (sensor.context) the
store keeps, per local host: its traffic per UTC day and sensor, the
applications it used as a client, the services (protocol, port, application)
it answered as a server, its peers, and when it was first and last seen. The
alert manager's host page reads these (`story`) and draws one chart of its
traffic by day with its alerts on the same time axis (`chart_png`: rendered on
the server with matplotlib, shown as an image; the page has no script).

New behaviour is news, in the manner of Zeek's known-hosts and known-services
logs and ntopng's learning period: a host seen for the first time, a host
answering on a service it never answered on, a client using an application it
never used become **notices** (`notices` table), once each, on the host page
and in the weekly report. During a site's first `notices_learning_days`
nothing is news (everything is seen for the first time then). Where the
operator lists kinds in `notices_alert`, a notice is also stored as an alert
of that kind (tier 1) of the sensor that saw it.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from dataclasses import dataclass

from ntds.times import iso_ms
from ntds.wire.schema import Message, encode, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS host_days (
    host TEXT NOT NULL, day TEXT NOT NULL, sensor TEXT NOT NULL, flows INTEGER NOT NULL, bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL, PRIMARY KEY (host, day, sensor));
CREATE TABLE IF NOT EXISTS hosts_seen (
    host TEXT PRIMARY KEY, site TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS host_apps (
    host TEXT NOT NULL, application TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    flows INTEGER NOT NULL, PRIMARY KEY (host, application));
CREATE TABLE IF NOT EXISTS host_services (
    host TEXT NOT NULL, protocol INTEGER NOT NULL, port INTEGER NOT NULL, application TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, flows INTEGER NOT NULL, PRIMARY KEY (host, protocol, port));
CREATE TABLE IF NOT EXISTS host_peers (
    host TEXT NOT NULL, peer TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, flows INTEGER NOT NULL,
    bytes INTEGER NOT NULL, PRIMARY KEY (host, peer));
CREATE TABLE IF NOT EXISTS site_learning (site TEXT PRIMARY KEY, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, site TEXT NOT NULL, sensor TEXT NOT NULL, host TEXT NOT NULL,
    kind TEXT NOT NULL, what TEXT NOT NULL, alerted INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS notices_host ON notices (host, time);
CREATE INDEX IF NOT EXISTS notices_time ON notices (time);
"""
NOTICE_KINDS = ("new-host", "new-service", "new-application")
NOTICE_WORDS = {
    "new-host": "a host seen for the first time",
    "new-service": "a host answering on a service it never offered",
    "new-application": "a client using an application it never used",
}
NOTICE_SPOOL = "notices"
"""The spool id notice alerts are stored under (no sensor's spool has it: those are 16 hex digits)."""
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


@dataclass(frozen=True)
class NoticeOptions:
    learning_days: float = 1.0
    alert: tuple[str, ...] = ()


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


def service_name(protocol: int, port: int, application: str) -> str:
    return f"{PROTOCOLS.get(protocol, f'IP-{protocol}')}/{port} ({application})"


class _Notices:
    """Records one host's notices of one message: (time, site, sensor, host) fixed, (kind, what) per call."""

    def __init__(self, db: sqlite3.Connection, ids: list[int], where: tuple) -> None:
        self.db, self.ids, self.where = db, ids, where

    def __call__(self, kind: str, what: str) -> None:
        cur = self.db.execute("INSERT INTO notices (time, site, sensor, host, kind, what) VALUES (?, ?, ?, ?, ?, ?)",
                              (*self.where, kind, what))  # fmt: skip
        self.ids.append(cur.lastrowid)


def _no_notice(kind: str, what: str) -> None:
    """During a site's learning days nothing is news."""


def ingest(db: sqlite3.Connection, sensor: str, site: str, body: dict, options: NoticeOptions) -> list[int]:
    """Merge one context message's hosts (inside the caller's transaction); returns the ids of new notices."""
    hosts = body["hosts"]
    if not hosts:
        return []
    start = min(h["first_ms"] for h in hosts) / 1000
    db.execute("INSERT OR IGNORE INTO site_learning VALUES (?, ?)", (site, start))
    db.execute("UPDATE site_learning SET first_seen = MIN(first_seen, ?) WHERE site = ?", (start, site))
    (learned_from,) = db.execute("SELECT first_seen FROM site_learning WHERE site = ?", (site,)).fetchone()
    notices: list[int] = []
    for h in hosts:
        ip, first, last = h["host"], h["first_ms"] / 1000, h["last_ms"] / 1000
        news = first >= learned_from + options.learning_days * 86400
        notice = _Notices(db, notices, (first, site, sensor, ip)) if news else _no_notice

        db.execute(
            "INSERT INTO host_days VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(host, day, sensor) DO UPDATE SET "
            "flows = flows + excluded.flows, bytes_up = bytes_up + excluded.bytes_up, "
            "bytes_down = bytes_down + excluded.bytes_down",
            (ip, _day(h["first_ms"]), sensor, h["flows"], h["bytes_up"], h["bytes_down"]),
        )
        new_host = db.execute("INSERT OR IGNORE INTO hosts_seen VALUES (?, ?, ?, ?)", (ip, site, first, last)).rowcount
        if new_host:
            notice("new-host", f"first seen by sensor {sensor}")
        else:
            db.execute("UPDATE hosts_seen SET first_seen = MIN(first_seen, ?), last_seen = MAX(last_seen, ?) "
                       "WHERE host = ?", (first, last, ip))  # fmt: skip
        for a in h["applications"]:
            cur = db.execute("INSERT OR IGNORE INTO host_apps VALUES (?, ?, ?, ?, ?)",
                             (ip, a["application"], first, last, a["flows"]))  # fmt: skip
            if cur.rowcount:
                if not new_host:
                    notice("new-application", f"used {a['application']} for the first time")
            else:
                db.execute("UPDATE host_apps SET first_seen = MIN(first_seen, ?), last_seen = MAX(last_seen, ?), "
                           "flows = flows + ? WHERE host = ? AND application = ?",
                           (first, last, a["flows"], ip, a["application"]))  # fmt: skip
        for s in h["services"]:
            cur = db.execute("INSERT OR IGNORE INTO host_services VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (ip, s["protocol"], s["port"], s["application"], first, last, s["flows"]))  # fmt: skip
            if cur.rowcount:
                if not new_host:
                    notice("new-service", f"answered on {service_name(s['protocol'], s['port'], s['application'])} "
                                          "for the first time")  # fmt: skip
            else:
                db.execute("UPDATE host_services SET first_seen = MIN(first_seen, ?), last_seen = MAX(last_seen, ?), "
                           "flows = flows + ? WHERE host = ? AND protocol = ? AND port = ?",
                           (first, last, s["flows"], ip, s["protocol"], s["port"]))  # fmt: skip
        for p in h["peers"]:
            db.execute(
                "INSERT INTO host_peers VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(host, peer) DO UPDATE SET "
                "first_seen = MIN(first_seen, excluded.first_seen), last_seen = MAX(last_seen, excluded.last_seen), "
                "flows = flows + excluded.flows, bytes = bytes + excluded.bytes",
                (ip, p["peer"], first, last, p["flows"], p["bytes"]),
            )
    if options.alert and notices:
        _alerts(db, notices, options.alert)
    return notices


def _alerts(db: sqlite3.Connection, ids: list[int], kinds: tuple[str, ...]) -> None:
    """Notices of the kinds the operator turned on, stored as alerts of the sensor that saw them."""
    marks = ",".join("?" * len(ids))
    rows = db.execute(f"SELECT id, time, sensor, host, kind, what FROM notices WHERE id IN ({marks})", ids).fetchall()
    seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE spool = ?", (NOTICE_SPOOL,)).fetchone()[0]
    created = now_iso()
    for nid, when, sensor, host, kind, what in rows:
        if kind not in kinds:
            continue
        seq += 1
        body = notice_alert(kind, host, what, when)
        encode(Message("alert", sensor, seq, created, body, NOTICE_SPOOL))  # refuses what a sensor could not send
        db.execute(
            "INSERT INTO messages (sensor, spool, seq, type, created, received, data_time, body) "
            "VALUES (?, ?, ?, 'alert', ?, ?, ?, ?)",
            (sensor, NOTICE_SPOOL, seq, created, time.time(), when, json.dumps(body, separators=(",", ":"))),
        )
        db.execute("UPDATE notices SET alerted = 1 WHERE id = ?", (nid,))


def notice_alert(kind: str, host: str, what: str, when: float) -> dict:
    """A notice as an alert body of the wire schema (tier 1: news, not a verdict)."""
    t = iso_ms(int(when * 1000))
    return {
        "kind": kind, "signature": f"{NOTICE_WORDS[kind].capitalize()}: {host} {what}"[:512], "first_seen": t,
        "last_seen": t, "count": 1, "window_s": 0, "src_ip": host, "src_port": 0, "dst_ip": "", "dst_port": 0,
        "protocol": 0, "application": "", "domain": "", "pattern": what[:256], "flow_id": "", "community_id": "",
        "baseline_id": "", "baseline": "notices", "score": 1.0, "tier": 1, "tier_label": "1 in 10 event",
        "explanation": [{"axis": kind, "value": 1.0, "typical": 0.0, "score": 1.0,
                         "text": f"{NOTICE_WORDS[kind]}: {what}"[:1024]}],
        "features": {}, "flows": [], "flows_total": 0, "intel": [],
    }  # fmt: skip


def forget(db: sqlite3.Connection, before: float) -> None:
    """Retention: days, peers and notices older than `before` go; what a host offered and used stays while seen."""
    db.execute("DELETE FROM host_days WHERE day < ?", (time.strftime("%Y-%m-%d", time.gmtime(before)),))
    db.execute("DELETE FROM host_peers WHERE last_seen < ?", (before,))
    db.execute("DELETE FROM notices WHERE time < ?", (before,))


# -- reading --------------------------------------------------------------------------------


def notices(db: sqlite3.Connection, host: str | None = None, since: float = 0.0, until: float = 1e18,
            limit: int = 200) -> list[dict]:  # fmt: skip
    sql = "SELECT id, time, site, sensor, host, kind, what, alerted FROM notices WHERE time >= ? AND time < ?"
    args: list = [since, until]
    if host:
        sql, args = sql + " AND host = ?", [*args, host]
    rows = db.execute(sql + " ORDER BY time DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
    return [{"id": i, "time": t, "site": s, "sensor": se, "host": h, "kind": k, "what": w, "alerted": bool(a)}
            for i, t, s, se, h, k, w, a in rows]  # fmt: skip


def story(db: sqlite3.Connection, host: str, days: int = 366) -> dict | None:
    """Everything the host page shows of a host's normal, or None when no sensor has described it."""
    seen = db.execute("SELECT site, first_seen, last_seen FROM hosts_seen WHERE host = ?", (host,)).fetchone()
    if seen is None:
        return None
    site, first, last = seen
    since_day = time.strftime("%Y-%m-%d", time.gmtime(last - days * 86400))
    traffic = db.execute(
        "SELECT day, SUM(flows), SUM(bytes_up), SUM(bytes_down) FROM host_days WHERE host = ? AND day >= ? "
        "GROUP BY day ORDER BY day",
        (host, since_day),
    ).fetchall()
    apps = db.execute(
        "SELECT application, flows, first_seen, last_seen FROM host_apps WHERE host = ? ORDER BY flows DESC LIMIT 20",
        (host,),
    ).fetchall()
    services = db.execute(
        "SELECT protocol, port, application, flows, first_seen, last_seen FROM host_services WHERE host = ? "
        "ORDER BY flows DESC LIMIT 20",
        (host,),
    ).fetchall()
    peers = db.execute(
        "SELECT peer, flows, bytes, first_seen, last_seen FROM host_peers WHERE host = ? ORDER BY bytes DESC LIMIT 10",
        (host,),
    ).fetchall()
    return {
        "site": site,
        "first_seen": first,
        "last_seen": last,
        "traffic": [{"day": d, "flows": f, "bytes_up": u, "bytes_down": dn} for d, f, u, dn in traffic],
        "applications": [{"application": a, "flows": f, "first_seen": fs, "last_seen": ls} for a, f, fs, ls in apps],
        "services": [
            {
                "protocol": p,
                "port": port,
                "application": a,
                "flows": f,
                "first_seen": fs,
                "last_seen": ls,
                "name": service_name(p, port, a),
            }
            for p, port, a, f, fs, ls in services
        ],  # fmt: skip
        "peers": [
            {"peer": p, "flows": f, "bytes": b, "first_seen": fs, "last_seen": ls} for p, f, b, fs, ls in peers
        ],  # fmt: skip
    }


def chart_png(traffic: list[dict], alerts: list[tuple[float, int]], notice_times: list[float]) -> str:
    """The host's traffic by day (bytes sent and received) with its alerts (by tier) and notices on the same time
    axis, as a PNG data URI: drawn on the server, so the page needs no script; no text from the network is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 3.6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    try:
        # One call per series (not one per day or per alert): a year of days and hundreds of alerts draw in tens of
        # milliseconds (bench/bench_prevalence.py).
        if traffic:
            given = mdates.date2num([datetime.strptime(t["day"], "%Y-%m-%d").replace(tzinfo=UTC) for t in traffic])
            days = np.arange(given.min(), given.max() + 1)  # every day, a day without data at zero
            at = np.searchsorted(days, given)
            down, up = np.zeros(len(days)), np.zeros(len(days))
            down[at] = [t["bytes_down"] / 1e6 for t in traffic]
            up[at] = [t["bytes_up"] / 1e6 for t in traffic]
            ax.fill_between(days, 0, down, step="mid", color="#7aa6c2", label="received", linewidth=0)
            ax.fill_between(days, down, down + up, step="mid", color="#e08a3c", label="sent", linewidth=0)
            ax.set_ylim(bottom=0)
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.set_ylabel("MB per day", fontsize=8)
        ax.tick_params(labelsize=8)
        colours = ["#bbbbbb", "#f2c14e", "#f29e4c", "#e4572e", "#c1121f", "#6a040f"]
        if alerts:
            when = mdates.date2num([datetime.fromtimestamp(w, UTC) for w, _ in alerts])
            tiers = np.clip(np.array([t for _, t in alerts]), 0, 5)
            ax2.scatter(when, tiers, c=[colours[t] for t in tiers], s=18, marker="o", zorder=3)
        if notice_times:
            when = mdates.date2num([datetime.fromtimestamp(w, UTC) for w in notice_times])
            ax2.scatter(when, np.zeros(len(when)), color="#2a9d8f", marker="^", s=24, zorder=3)
        ax2.set_ylim(-1, 5.8)
        ax2.set_yticks([0, 2, 4], ["notice", "tier 2", "tier 4"], fontsize=7)
        ax2.grid(axis="y", color="#eeeeee")
        ax2.xaxis_date()
        ax2.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        ax2.tick_params(axis="x", labelsize=7)
        fig.autofmt_xdate()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
