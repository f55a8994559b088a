"""Retro-hunt: new indicators checked against what the fleet already reported, past contacts made alerts.

When `intel add` stores indicators that were not there before (the `intel`
table's `hunted` is 0), every alert the store still holds (retention_days) is
searched for them: the flows behind each alert (both ends), its own two ends,
and the domain it names. A match becomes an `intel` alert of the sensor that
saw the flow, marked found later (`intel[0].found_later`, a fact in its
explanation and its signature), dated when the contact happened, and grouped
like the sensors group alerts: one alert per (sensor, local host, application,
indicator) with the count of flows and the newest 32 of them. They are stored
as the sensor's messages under the spool id `retro-hunt` (the alert manager,
`alerts`, the broadcast and the archive take them like any other alert), without
touching the sensor's last-seen time or quota. Each indicator is hunted once.

What a retro-hunt can see is what the fleet sent up: the flows behind alerts,
not every flow (sensors keep those, with `flow_records_dir`, on their own disk);
names only where an alert names a domain (dns-tunnel), fingerprints not at all.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from aggregator import intel
from ntds.flows.traffic import FlowTraffic
from ntds.intel.alerts import fold, intel_alert
from ntds.intel.indicators import Indicator
from ntds.intel.matching import FIELDS, IntelSet
from ntds.networks import matcher
from ntds.times import now_iso
from ntds.wire.schema import MAX_FLOWS_BEHIND, Message, encode, upgrade_body, wire_time

SPOOL = "retro-hunt"
"""The spool id retro-hunt alerts are stored under (no sensor's spool has it: those are 16 hex digits)."""


def _ms(text: str) -> int:
    return int(wire_time(text).timestamp() * 1000)


def _traffic(f: dict) -> FlowTraffic:
    return FlowTraffic(_ms(f["first_seen"]), f["src_ip"], f["dst_ip"], f["src_port"], f["dst_port"], f["protocol"],
                       f["packets"], f["bytes"], 0, 0, f["application"], end_ms=_ms(f["last_seen"]))  # fmt: skip


def _candidates(body: dict) -> Iterator[tuple[FlowTraffic, str, int]]:
    """(flow, server name, tier) for everything an alert says was seen: its flows, else its own two ends."""
    domain = body.get("domain") or ""
    if body.get("flows"):
        for f in body["flows"]:
            yield _traffic(f), domain, f["tier"]
        return
    t = FlowTraffic(_ms(body["first_seen"]), body["src_ip"], body["dst_ip"], body["src_port"], body["dst_port"],
                    body["protocol"], 0, 0, 0, 0, body["application"], end_ms=_ms(body["last_seen"]))  # fmt: skip
    yield t, domain, -1


def hunt(store_path: str | Path, now: float | None = None, local_networks: list[str] | None = None) -> list[str]:
    """Hunt every indicator not hunted yet over the stored alerts; the lines to tell the operator."""
    now = time.time() if now is None else now
    db = intel.connect(store_path)
    try:
        rows = db.execute("SELECT id, type, value, source, confidence, added, expires FROM intel WHERE hunted = 0")
        rows = rows.fetchall()
        if not rows:
            return []
        inds = [Indicator(*r[1:]) for r in rows]
        iset = IntelSet(inds, now=now)
        local = matcher(local_networks) if local_networks else matcher()
        groups: dict[tuple, dict] = {}
        seen_flows: set[tuple] = set()
        alerts = 0
        if len(iset):
            for sensor, body_text in db.execute(
                "SELECT sensor, body FROM messages WHERE type = 'alert' AND spool != ? ORDER BY data_time", (SPOOL,)
            ):
                alerts += 1
                body = upgrade_body("alert", json.loads(body_text))
                if body.get("kind") == "intel":
                    continue  # matched already, by the sensor
                cands = list(_candidates(body))
                hits = iset.match([(t.src_ip, t.dst_ip, d, "", "") for t, d, _ in cands], now)
                for (t, domain, tier), matches in zip(cands, hits):
                    for m in matches:
                        flow_key = (sensor, t.src_ip, t.src_port, t.dst_ip, t.dst_port, t.protocol, t.start_ms, m.index)
                        if flow_key in seen_flows:
                            continue  # the same flow behind several alerts (a detector's repeats)
                        seen_flows.add(flow_key)
                        seen = (t.src_ip, t.dst_ip, domain)[FIELDS.index(m.field)]
                        a = intel_alert(t, iset.indicator(m.index), m.field, seen, body.get("baseline_id", ""),
                                        None if tier < 0 else tier, local, found_later=now)  # fmt: skip
                        fold(groups, sensor, a, MAX_FLOWS_BEHIND)
        stored = _store(db, groups, now)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE intel SET hunted = ? WHERE id = ?", [(now, r[0]) for r in rows])
        db.execute("COMMIT")
    finally:
        db.close()
    contacts = sum(g["count"] for g in groups.values())
    return [f"retro-hunt: {len(iset)} new indicators over {alerts:,} stored alerts: {contacts} past contacts found, "
            f"stored as {stored} alerts marked found later"]  # fmt: skip


def _store(db: sqlite3.Connection, groups: dict, now: float) -> int:
    """The grouped alerts as the sensors' messages under the retro-hunt spool (validated as any message is)."""
    if not groups:
        return 0
    db.execute("BEGIN IMMEDIATE")
    try:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE spool = ?", (SPOOL,)).fetchone()[0]
        created = now_iso()
        for (sensor, *_), body in groups.items():
            seq += 1
            encode(Message("alert", sensor, seq, created, body, SPOOL))  # refuses what a sensor could not send
            db.execute(
                "INSERT INTO messages (sensor, spool, seq, type, created, received, data_time, body) "
                "VALUES (?, ?, ?, 'alert', ?, ?, ?, ?)",
                (sensor, SPOOL, seq, created, now, wire_time(body["first_seen"]).timestamp(),
                 json.dumps(body, separators=(",", ":"))),
            )  # fmt: skip
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return len(groups)
