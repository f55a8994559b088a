"""Fleet prevalence and first seen of external destinations, and how they move an alert's tier.

Sensors send, per context interval, a HyperLogLog sketch of the local hosts
that reached each external destination (sensor.context, ntds.prevalence). Here
they are merged, per sensor and across the fleet, into the store's
`prevalence` table: one row per (kind, destination, sensor), and one for the
fleet (sensor ''), each with the union of its sketches, first and last seen and
flows. A site is a named group of sensors (`sites:` in aggregator.yaml; a
sensor in no group is a site of its own), resolved when asked, so regrouping
sensors needs no reprocessing: a site's hosts are the union of its sensors'
sketches, and a destination's sites are the sites of the sensors that saw it.

Prevalence moves an alert's tier in the manner of RITA's threat modifiers
(rare and new up, common and old down), each step explained in words on the
alert (`modifier`): what an analyst asks right after "is it known bad" is how
many of our hosts talk to it, and since when.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ntds import prevalence as sk
from ntds.times import iso_ms

SCHEMA = """
CREATE TABLE IF NOT EXISTS prevalence (
    kind TEXT NOT NULL, key TEXT NOT NULL, sensor TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    flows INTEGER NOT NULL, hosts INTEGER NOT NULL, sketch BLOB NOT NULL, PRIMARY KEY (kind, key, sensor));
CREATE INDEX IF NOT EXISTS prevalence_rare ON prevalence (sensor, hosts, first_seen);
CREATE TABLE IF NOT EXISTS context_omitted (
    sensor TEXT PRIMARY KEY, destinations INTEGER NOT NULL, hosts INTEGER NOT NULL, last REAL NOT NULL);
"""
FLEET = ""
"""The sensor column of fleet-wide rows."""


@dataclass(frozen=True)
class Sites:
    """Which site each sensor belongs to: named groups from aggregator.yaml, every other sensor its own site."""

    groups: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, mapping: dict) -> Sites:
        return cls({str(k): tuple(str(s) for s in v) for k, v in (mapping or {}).items()})

    def site(self, sensor: str) -> str:
        for name, members in self.groups.items():
            if sensor in members:
                return name
        return sensor

    def all(self, sensors: Iterable[str]) -> set[str]:
        """Every site: the named ones and those of the sensors known."""
        return set(self.groups) | {self.site(s) for s in sensors}

    @staticmethod
    def problem(mapping: dict) -> str | None:
        """For the setting's check: a sensor in two sites, or a site that is not a list of sensor ids."""
        seen: dict[str, str] = {}
        for name, members in mapping.items():
            if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
                return f"site {name!r} must be a list of sensor ids"
            for m in members:
                if m in seen:
                    return f"sensor {m!r} is in two sites ({seen[m]!r} and {name!r})"
                seen[m] = str(name)
        return None


@dataclass(frozen=True)
class ModifierOptions:
    """When prevalence moves a tier (README: Context on every alert). Defaults follow RITA's spirit: a destination
    one or two of the fleet's hosts reached within the last week is news; one that many hosts have reached for a
    month is part of the site's normal."""

    rare_hosts: int = 2
    new_days: float = 7.0
    common_hosts: int = 50
    old_days: float = 30.0

    MEANINGS = {
        "rare_hosts": "a destination reached by at most this many local hosts across the fleet is rare",
        "new_days": "first seen at most this many days before the alert: new",
        "common_hosts": "reached by at least this many local hosts across the fleet: common",
        "old_days": "first seen at least this many days before the alert: old",
    }

    @staticmethod
    def problem(value: dict) -> str | None:
        for k, v in value.items():
            if k not in ModifierOptions.MEANINGS:
                return f"has unknown key {k!r} (known: {', '.join(ModifierOptions.MEANINGS)})"
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 10**7:
                return f"{k} must be a number from 0"
        return None


# -- merging what sensors send ------------------------------------------------------------


def ingest(db: sqlite3.Connection, sensor: str, body: dict) -> int:
    """Merge one context message's destinations into the sensor's and the fleet's rows (inside the caller's
    transaction); returns how many destinations it named."""
    for d in body["destinations"]:
        sketch = sk.decode(d["sketch"])
        first, last = d["first_ms"] / 1000, d["last_ms"] / 1000
        for who in (sensor, FLEET):
            row = db.execute(
                "SELECT first_seen, last_seen, flows, sketch FROM prevalence WHERE kind = ? AND key = ? AND sensor = ?",
                (d["kind"], d["key"], who),
            ).fetchone()
            if row is None:
                merged, f, la, n = sketch, first, last, d["flows"]
            else:
                merged = sk.merge([sketch, bytes(row[3])])
                f, la, n = min(row[0], first), max(row[1], last), row[2] + d["flows"]
            db.execute(
                "INSERT OR REPLACE INTO prevalence VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d["kind"], d["key"], who, f, la, n, sk.estimate(merged), merged.serialize_compact()),
            )
    if body["destinations_omitted"] or body["hosts_omitted"]:
        db.execute(
            "INSERT INTO context_omitted VALUES (?, ?, ?, ?) ON CONFLICT(sensor) DO UPDATE SET "
            "destinations = destinations + excluded.destinations, hosts = hosts + excluded.hosts, last = excluded.last",
            (sensor, body["destinations_omitted"], body["hosts_omitted"], time.time()),
        )
    return len(body["destinations"])


def forget(db: sqlite3.Connection, before: float) -> int:
    """Destinations not seen since `before` (retention): their rows go."""
    return db.execute("DELETE FROM prevalence WHERE last_seen < ?", (before,)).rowcount


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prevalence:
    """One destination across the fleet."""

    kind: str
    key: str
    hosts: int
    sites: int
    sites_total: int
    first_seen: float
    last_seen: float
    flows: int
    per_site: tuple[tuple[str, int, float, float], ...]
    """(site, hosts, first seen, last seen), most hosts first."""
    low: float = 0.0
    high: float = 0.0
    """The host count's bounds at 2 standard deviations (equal to it while exact)."""

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "destination": self.key,
            "hosts": self.hosts,
            "hosts_bounds": [round(self.low, 1), round(self.high, 1)],
            "sites": self.sites,
            "sites_total": self.sites_total,
            "first_seen": iso_ms(int(self.first_seen * 1000)),
            "last_seen": iso_ms(int(self.last_seen * 1000)),
            "flows": self.flows,
            "per_site": [
                {"site": s, "hosts": h, "first_seen": iso_ms(int(f * 1000)), "last_seen": iso_ms(int(la * 1000))}
                for s, h, f, la in self.per_site
            ],  # fmt: skip
        }


def known_sensors(db: sqlite3.Connection) -> list[str]:
    return [s for (s,) in db.execute("SELECT sensor FROM sensors")]


def lookup(
    db: sqlite3.Connection, sites: Sites, kind: str, key: str, plus_host: str = "", plus_time: float = 0.0
) -> Prevalence | None:
    """A destination's prevalence; with plus_host, as if that host had reached it at plus_time too (an alert's own
    host and time, which the hourly context may not carry yet)."""
    rows = db.execute(
        "SELECT sensor, first_seen, last_seen, flows, sketch FROM prevalence WHERE kind = ? AND key = ?", (kind, key)
    ).fetchall()
    if not rows and not plus_host:
        return None
    per_site: dict[str, list] = {}
    fleet = None
    for sensor, first, last, flows, blob in rows:
        if sensor == FLEET:
            fleet = (first, last, flows, sk.decode(bytes(blob)))
            continue
        s = per_site.setdefault(sites.site(sensor), [[], first, last])
        s[0].append(bytes(blob))
        s[1], s[2] = min(s[1], first), max(s[2], last)
    parts = [fleet[3]] if fleet else []
    if plus_host:
        parts.append(sk.sketch_of([plus_host]))
    merged = sk.merge(parts)
    firsts = ([fleet[0]] if fleet else []) + ([plus_time] if plus_host else [])
    lasts = ([fleet[1]] if fleet else []) + ([plus_time] if plus_host else [])
    first, last = min(firsts), max(lasts)
    site_rows = sorted(((name, sk.estimate(sk.merge(p[0])), p[1], p[2]) for name, p in per_site.items()),
                       key=lambda r: (-r[1], r[0]))  # fmt: skip
    low, high = sk.bounds(merged)
    return Prevalence(
        kind, key, sk.estimate(merged), max(len(site_rows), 1 if plus_host else 0),
        len(sites.all(known_sensors(db))) or 1, first, last, fleet[2] if fleet else 0, tuple(site_rows), low, high,
    )  # fmt: skip


def listing(db: sqlite3.Connection, sites: Sites, kinds: Iterable[str], limit: int = 50) -> list[Prevalence]:
    """The rarest destinations, newest first among equally rare."""
    marks = ",".join("?" * len(tuple(kinds)))
    rows = db.execute(
        f"SELECT kind, key FROM prevalence WHERE sensor = '' AND kind IN ({marks}) "
        "ORDER BY hosts, first_seen DESC, kind, key LIMIT ?",
        (*kinds, limit),
    ).fetchall()
    return [p for kind, key in rows if (p := lookup(db, sites, kind, key)) is not None]


# -- in words, and the tier modifier ------------------------------------------------------


def span(seconds: float) -> str:
    """'2 hours', '3 days', 'under a minute': a length of time in the largest whole unit."""
    s = max(0.0, seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = int(s // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "under a minute"


def ago(seconds: float) -> str:
    """'2 hours ago', '3 days ago': how long before now (or before an alert)."""
    return "just now" if seconds < 60 else f"{span(seconds)} ago"


def words(p: Prevalence, now: float | None = None) -> str:
    """'reached by 1 host at 1 of 3 sites; first seen 2 hours ago' / '... since 2026-10-02'."""
    now = time.time() if now is None else now
    hosts = f"{p.hosts:,} host{'s' if p.hosts != 1 else ''}"
    where = f"at {p.sites} of {p.sites_total} site{'s' if p.sites_total != 1 else ''}"
    age = now - p.first_seen
    if age < 7 * 86400:
        return f"reached by {hosts} {where}; first seen {ago(age)}"
    return f"reached by {hosts} {where} since {time.strftime('%Y-%m-%d', time.gmtime(p.first_seen))}"


@dataclass(frozen=True)
class Modifier:
    """How prevalence moved a tier, and why, in words (an explanation item of the alert)."""

    step: int
    tier_before: int
    tier_after: int
    text: str


def modifier(p: Prevalence | None, tier: int, at: float, options: ModifierOptions) -> Modifier:
    """RITA's manner: a rare and new destination raises the tier one step, a common and old one lowers it one step
    (never below 1 or above 5); anything between leaves it, and says so."""
    if p is None:
        return Modifier(0, tier, tier, "prevalence: the destination is not one the fleet's context counts (kept)")
    age_days = max(0.0, at - p.first_seen) / 86400
    if p.hosts <= options.rare_hosts and age_days <= options.new_days:
        after = min(5, tier + 1)
        why = (f"rare and new: {p.hosts} host{'s' if p.hosts != 1 else ''} (at most {options.rare_hosts}), first "
               f"seen {span(at - p.first_seen)} before the alert (at most {options.new_days:g} days)")  # fmt: skip
        return Modifier(after - tier, tier, after, f"prevalence raised the tier {tier} -> {after}: {why}")
    if p.hosts >= options.common_hosts and age_days >= options.old_days:
        after = max(1, tier - 1)
        why = (f"common and old: {p.hosts:,} hosts (at least {options.common_hosts}), first seen "
               f"{span(at - p.first_seen)} before the alert (at least {options.old_days:g} days)")  # fmt: skip
        return Modifier(after - tier, tier, after, f"prevalence lowered the tier {tier} -> {after}: {why}")
    text = (f"prevalence left the tier at {tier}: neither rare and new nor common and old ({p.hosts:,} hosts, "
            f"first seen {span(at - p.first_seen)} before the alert)")  # fmt: skip
    return Modifier(0, tier, tier, text)


def destination_of(alert: dict) -> tuple[str, str] | None:
    """The destination an alert is about: its registered domain where it names one (a DNS tunnel's domain: the
    address is then the resolver), else its destination address."""
    if alert.get("domain"):
        return "domain", sk.normal_key("domain", alert["domain"])
    if alert.get("dst_ip"):
        return "address", sk.normal_key("address", alert["dst_ip"])
    return None
