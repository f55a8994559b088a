"""Section 8, new behaviour: the week's notices (new hosts, new services, new applications) and the destinations
first seen in the week that few hosts reached.

Unlike the other sections this one is read from the store, not the archive: notices and prevalence live in the
store's context tables (aggregator.context), which `report weekly` brings up to date first (`fill`). Without a
store (a report computed from an archive alone) the section is empty and says so.
"""

from __future__ import annotations

import sqlite3

from aggregator import context, host_story, prevalence
from aggregator.report.query import Query
from ntds.times import iso_ms

KEY = "news"
MAX_ROWS = 500


def lazy(q: Query) -> dict:
    return {}


def assemble(q: Query, r: dict) -> dict:
    return {"from_store": False, "notices": [], "notices_per_kind": {}, "new_destinations": []}


def fill(report: dict, db: sqlite3.Connection, options: context.ContextOptions, start_s: float, end_s: float,
         sensors: list[str] | None = None) -> None:  # fmt: skip
    """The section from the store: notices dated in [start_s, end_s) and destinations first seen then (at most
    `rare_hosts` hosts of the fleet), after merging what the sensors sent since the last pass."""
    context.catch_up(db, options)
    notices = [n for n in host_story.notices(db, since=start_s, until=end_s, limit=100_000)
               if not sensors or n["sensor"] in sensors]  # fmt: skip
    per_kind = {k: sum(n["kind"] == k for n in notices) for k in host_story.NOTICE_KINDS}
    rows = db.execute(
        "SELECT kind, key FROM prevalence WHERE sensor = '' AND first_seen >= ? AND first_seen < ? AND hosts <= ? "
        "ORDER BY hosts, first_seen DESC LIMIT ?",
        (start_s, end_s, options.modifier.rare_hosts, MAX_ROWS),
    ).fetchall()
    new = []
    for kind, key in rows:
        p = prevalence.lookup(db, options.sites, kind, key)
        if p is not None:
            first = iso_ms(int(p.first_seen * 1000))
            new.append({"kind": kind, "destination": key, "hosts": p.hosts, "sites": p.sites, "first_seen": first,
                        "words": prevalence.words(p, end_s)})  # fmt: skip
    report[KEY] = {
        "from_store": True,
        "notices": [
            {
                "time": iso_ms(int(n["time"] * 1000)),
                "sensor": n["sensor"],
                "site": n["site"],
                "host": n["host"],
                "kind": n["kind"],
                "what": n["what"],
            }
            for n in notices[:MAX_ROWS]
        ],  # fmt: skip
        "notices_per_kind": per_kind,
        "new_destinations": new,
    }


def tables(report: dict) -> dict:
    n = report[KEY]
    return {
        "notices": (["time", "sensor", "site", "host", "kind", "what"],
                    [[x["time"], x["sensor"], x["site"], x["host"], x["kind"], x["what"]] for x in n["notices"]]),
        "new_destinations": (["kind", "destination", "hosts", "sites", "first_seen"],
                             [[x["kind"], x["destination"], x["hosts"], x["sites"], x["first_seen"]]
                              for x in n["new_destinations"]]),
    }  # fmt: skip


def charts(report: dict, site_country: str) -> dict:
    return {}
