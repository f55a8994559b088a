"""The weekly report's numbers, computed with Dask DataFrame from the Parquet archive.

One function, `compute`, turns an ISO week and the archive into a plain dict:
every number the report shows, JSON-ready, in a fixed order, so the same
archive gives the same `report.json` in-process and on a cluster. Days and
weeks without data are zeros, never missing.

Each archive file becomes one Dask partition (`dd.from_map`), read with the
archive's own schema, so an empty week is a typed empty frame rather than an
error, and the partitions are the same on one machine and on workers (which
must see the archive at the same path). All aggregates are built lazily and
computed in one `dask.compute` call; every group-by is a tree reduction
(`split_out=1`: the results are small), so a cluster never shuffles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq

from aggregator.archive import TABLES, Archive
from aggregator.report.world import country_name
from ntds.errors import InputError
from ntds.wire.schema import TIERS, TRAFFIC_CLASSES, UNANSWERED_KINDS

REPORT_SCHEMA = 1
HISTORY_WEEKS = 12
"""Weeks in the throughput history, this week included."""
RAREST = 20
HOSTS = 20
"""Source hosts listed by alerts started."""
REPORTED_CLASSES = ("external", "local_service", "peer_to_peer")
"""The classes the report charts; "other" (multicast, no local host) is only in the totals."""
TIER_COLUMNS = [f"tier{k}" for k in range(TIERS)]


@dataclass(frozen=True)
class Week:
    """An ISO week in UTC, Monday 00:00 to the next Monday."""

    year: int
    number: int

    @classmethod
    def parse(cls, text: str) -> Week:
        try:
            year, _, num = text.upper().partition("-W")
            week = cls(int(year), int(num))
            date.fromisocalendar(week.year, week.number, 1)
        except ValueError:
            raise InputError(f"--week {text!r}: expected an ISO week such as 2026-W47") from None
        return week

    @classmethod
    def containing(cls, day: date) -> Week:
        y, w, _ = day.isocalendar()
        return cls(y, w)

    @classmethod
    def previous_complete(cls, now: datetime | None = None) -> Week:
        return cls.containing((now or datetime.now(UTC)).date() - timedelta(days=7))

    @property
    def first(self) -> date:
        return date.fromisocalendar(self.year, self.number, 1)

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(7)]

    def shifted(self, weeks: int) -> Week:
        return Week.containing(self.first + timedelta(weeks=weeks))

    def __str__(self) -> str:
        return f"{self.year}-W{self.number:02d}"


def _read(path: str, table: str) -> pd.DataFrame:
    return pq.read_table(path, schema=TABLES[table]).to_pandas()


def frame(archive: Archive, table: str, first: date, last: date, sensors: list[str] | None) -> dd.DataFrame:
    """One archive table for days first..last as a Dask DataFrame (one partition per file)."""
    files = archive.files(table, first, last, sensors)
    if not files:
        return dd.from_pandas(TABLES[table].empty_table().to_pandas(), npartitions=1)
    return dd.from_map(_read, files, table=table, meta=TABLES[table].empty_table().to_pandas())


def _day_index(times: dd.Series, first: date) -> dd.Series:
    origin = pd.Timestamp(first, tz="UTC")
    return ((times - origin) // pd.Timedelta(days=1)).astype("int64")


def compute(archive: Archive, week: Week, sensors: list[str] | None = None) -> dict:
    """Every number of the weekly report for `week` (optionally some sensors only)."""
    first, last = week.first, week.first + timedelta(days=6)
    history_first = week.shifted(-(HISTORY_WEEKS - 1)).first
    prev_first = week.shifted(-1).first

    def this_week(table: str) -> dd.DataFrame:
        return frame(archive, table, first, last, sensors)

    summaries = this_week("summaries")
    summaries = summaries.assign(hour=summaries.interval_start.dt.floor("h"))
    lazy = {
        "omitted": summaries[["pairs_omitted_flows", "pairs_omitted_bytes"]].sum(),
        "per_sensor": summaries.groupby("sensor")[["flows", "packets", "bytes", "packets_seen", "packets_dropped"]].sum(
            split_out=1
        ),
        "hours": summaries.groupby(["sensor", "hour"]).size(split_out=1),
    }

    traffic = frame(archive, "traffic", history_first, last, sensors)
    traffic = traffic.assign(day=_day_index(traffic.interval_start, history_first))
    lazy["traffic"] = traffic.groupby(["day", "class"])[["bytes_up", "bytes_down", "packets_up", "packets_down"]].sum(
        split_out=1
    )

    apps = frame(archive, "applications", prev_first, last, sensors)
    apps = apps.assign(day=_day_index(apps.interval_start, prev_first))
    lazy["apps"] = apps.groupby(["day", "application"])[["flows", "bytes_up", "bytes_down", *TIER_COLUMNS]].sum(
        split_out=1
    )

    unanswered = this_week("unanswered")
    unanswered = unanswered.assign(day=_day_index(unanswered.interval_start, first))
    lazy["unanswered"] = unanswered.groupby(["day", "kind"])[["flows", "bytes"]].sum(split_out=1)

    pairs = this_week("peer_pairs")
    pairs = pairs.assign(day=_day_index(pairs.interval_start, first))
    lazy["pairs"] = pairs.groupby(["a", "b", "day"])[["flows", "two_way", "one_way", "bytes_ab", "bytes_ba"]].sum(
        split_out=1
    )

    countries = this_week("countries")
    lazy["countries"] = countries.groupby("country").agg(
        {"flows": "sum", "bytes_in": "sum", "bytes_out": "sum", "max_tier": "max"}, split_out=1
    )

    alerts = this_week("alerts")
    lazy["alerts"] = alerts.nlargest(RAREST, ["tier", "score"])
    lazy["alert_count"] = alerts.groupby("tier").size(split_out=1)
    lazy["alert_hosts"] = alerts.groupby(["src_ip", "tier"]).size(split_out=1)

    health = frame(archive, "health", history_first, last, sensors)
    health = health.assign(in_week=health.created >= pd.Timestamp(first, tz="UTC"))
    lazy["spool"] = health.groupby(["sensor", "in_week"]).spool_dropped.max(split_out=1)

    keys = list(lazy)
    done = dict(zip(keys, dask.compute(*lazy.values()), strict=True))
    return _assemble(week, sensors, done, history_first)


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _assemble(week: Week, sensors: list[str] | None, r: dict, history_first: date) -> dict:
    days = week.days
    per_sensor = r["per_sensor"]
    hours = r["hours"].groupby(level="sensor").size() if len(r["hours"]) else r["hours"]
    spool = r["spool"]
    overview_rows = []
    for s in sorted(set(per_sensor.index) | set(_spool_sensors(spool))):
        row = per_sensor.loc[s] if s in per_sensor.index else None
        before = spool.get((s, False), 0)
        during = spool.get((s, True), before)
        overview_rows.append(
            {
                "sensor": s,
                "hours_with_data": int(hours.get(s, 0)),
                **{k: int(row[k]) if row is not None else 0 for k in ("flows", "packets", "bytes")},
                "packets_seen": int(row["packets_seen"]) if row is not None else 0,
                "packets_dropped": int(row["packets_dropped"]) if row is not None else 0,
                "spool_dropped": max(0, int(during) - int(before)),
            }
        )
    alert_count = r["alert_count"]
    totals = {
        k: sum(x[k] for x in overview_rows)
        for k in ("flows", "packets", "bytes", "packets_seen", "packets_dropped", "spool_dropped")
    }
    totals["alerts"] = int(alert_count.sum()) if len(alert_count) else 0
    totals["hours_with_data"] = sum(x["hours_with_data"] for x in overview_rows)

    return {
        "schema": REPORT_SCHEMA,
        "week": str(week),
        "first_day": days[0].isoformat(),
        "last_day": days[-1].isoformat(),
        "sensor_filter": sorted(sensors) if sensors else None,
        "overview": {"sensors": overview_rows, "totals": totals},
        "throughput": _throughput(week, r["traffic"], history_first),
        "applications": _applications(r["apps"]),
        "alerts": _alerts(r["apps"], r["alerts"], alert_count) | {"hosts": _alert_hosts(r["alert_hosts"])},
        "unanswered": _unanswered(days, r["unanswered"]),
        "peer_to_peer": _pairs(r["pairs"])
        | {"omitted": {k: int(r["omitted"][f"pairs_omitted_{k}"]) for k in ("flows", "bytes")}},
        "geography": _countries(r["countries"]),
    }


def _spool_sensors(spool: pd.Series) -> list[str]:
    return sorted({s for s, _ in spool.index}) if len(spool) else []


def _throughput(week: Week, traffic: pd.DataFrame, history_first: date) -> dict:
    offset = (week.first - history_first).days
    daily: dict = {}
    weekly: dict = {}
    for cls in REPORTED_CLASSES:
        daily[cls], weekly[cls] = {}, {}
        for col in ("bytes_up", "bytes_down"):
            per_day = [0] * (7 * HISTORY_WEEKS)
            if len(traffic):
                sub = traffic.xs(cls, level="class") if cls in traffic.index.get_level_values("class") else None
                if sub is not None:
                    for d, v in sub[col].items():
                        if 0 <= d < len(per_day):
                            per_day[d] += int(v)
            daily[cls][col] = per_day[offset : offset + 7]
            weekly[cls][col] = [sum(per_day[i : i + 7]) for i in range(0, 7 * HISTORY_WEEKS, 7)]
    return {
        "days": [d.isoformat() for d in week.days],
        "daily": daily,
        "weeks": [str(week.shifted(i - HISTORY_WEEKS + 1)) for i in range(HISTORY_WEEKS)],
        "weekly": weekly,
        "classes": list(REPORTED_CLASSES),
        "all_classes": list(TRAFFIC_CLASSES),
    }


def _week_split(apps: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(previous week, this week) application totals; days 0-6 of the frame are the previous week."""
    if not len(apps):
        empty = pd.DataFrame(columns=["flows", "bytes_up", "bytes_down", *TIER_COLUMNS], dtype="int64")
        return empty, empty
    day = apps.index.get_level_values("day")
    prev = apps[day < 7].groupby(level="application").sum()
    cur = apps[day >= 7].groupby(level="application").sum()
    return prev, cur


def _applications(apps: pd.DataFrame) -> list[dict]:
    prev, cur = _week_split(apps)
    total, prev_total = int(cur.flows.sum()), int(prev.flows.sum())
    rows, cumulative = [], 0.0
    ranked = sorted(cur.iterrows(), key=lambda kv: (-int(kv[1].flows), kv[0]))
    for name, row in ranked:
        flows = int(row.flows)
        if not flows:
            continue
        share = 100.0 * flows / total
        cumulative += share
        prev_flows = int(prev.flows.get(name, 0)) if len(prev) else 0
        prev_share = 100.0 * prev_flows / prev_total if prev_total else 0.0
        rows.append(
            {
                "application": name,
                "flows": flows,
                "share": round(share, 4),
                "one_in": max(1, round(100.0 / share)),
                "cumulative": round(min(cumulative, 100.0), 4),
                "bytes_up": int(row.bytes_up),
                "bytes_down": int(row.bytes_down),
                "previous_flows": prev_flows,
                "previous_share": round(prev_share, 4),
                "share_change": round(share - prev_share, 4),
            }
        )
    return rows


def _alerts(apps: pd.DataFrame, rarest: pd.DataFrame, alert_count: pd.Series) -> dict:
    per_day = [[0] * 7 for _ in range(TIERS)]
    if len(apps):
        day = apps.index.get_level_values("day")
        by_day = apps[day >= 7].groupby(level="day")[TIER_COLUMNS].sum()
        for d, row in by_day.iterrows():
            for k in range(TIERS):
                per_day[k][int(d) - 7] = int(row[f"tier{k}"])
    _, cur = _week_split(apps)
    per_app = [
        {"application": name, "tiers": _ints(row[TIER_COLUMNS])}
        for name, row in sorted(cur.iterrows(), key=lambda kv: kv[0])
        if int(row[TIER_COLUMNS].sum())
    ]
    top = rarest.sort_values(["tier", "score", "time", "sensor", "seq"], ascending=[False, False, True, True, True])
    listed = []
    for a in top.head(RAREST).itertuples(index=False):
        listed.append(
            {
                "sensor": a.sensor,
                "time": a.time.isoformat().replace("+00:00", "Z"),
                "flow_id": a.flow_id,
                "src_ip": a.src_ip,
                "src_port": int(a.src_port),
                "dst_ip": a.dst_ip,
                "dst_port": int(a.dst_port),
                "protocol": int(a.protocol),
                "application": a.application,
                "score": float(a.score),
                "tier": int(a.tier),
                "tier_label": a.tier_label,
                "explanation": json.loads(a.explanation),
            }
        )
    return {
        "flows_per_tier_per_day": per_day,
        "alerts_per_tier": [int(alert_count.get(k, 0)) for k in range(TIERS)],
        "rarest": listed,
        "tiers_per_application": per_app,
    }


def _alert_hosts(counts: pd.Series) -> list[dict]:
    """Source hosts by the alerts they started, rarest tier first: a scan is many ordinary-looking
    flows from one host, which a list of single rare flows does not show."""
    hosts: dict[str, list[int]] = {}
    for (ip, tier), n in counts.items():
        hosts.setdefault(ip, [0] * TIERS)[int(tier)] += int(n)
    rows = [{"src_ip": ip, "alerts": sum(t), "max_tier": max(k for k in range(TIERS) if t[k]), "tiers": t}
            for ip, t in hosts.items()]  # fmt: skip
    rows.sort(key=lambda h: (-h["max_tier"], -h["alerts"], h["src_ip"]))
    return rows[:HOSTS]


def _unanswered(days: list[date], table: pd.DataFrame) -> dict:
    out = {k: {"flows": [0] * 7, "bytes": [0] * 7} for k in UNANSWERED_KINDS}
    for (d, kind), row in table.iterrows():
        if kind in out and 0 <= d < 7:
            out[kind]["flows"][d] += int(row.flows)
            out[kind]["bytes"][d] += int(row.bytes)
    return {"days": [d.isoformat() for d in days], "kinds": out}


def _pairs(table: pd.DataFrame) -> dict:
    pairs = []
    if len(table):
        for (a, b), sub in table.groupby(level=["a", "b"]):
            total_ab, total_ba = int(sub.bytes_ab.sum()), int(sub.bytes_ba.sum())
            active = int(((sub.flows > 0) | (sub.bytes_ab + sub.bytes_ba > 0)).sum())
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "flows": int(sub.flows.sum()),
                    "two_way": int(sub.two_way.sum()),
                    "one_way": int(sub.one_way.sum()),
                    "bytes_ab": total_ab,
                    "bytes_ba": total_ba,
                    "bytes": total_ab + total_ba,
                    "active_days": active,
                    "bytes_per_active_day": round((total_ab + total_ba) / active, 3) if active else 0.0,
                }
            )
    pairs.sort(key=lambda p: (-p["bytes"], p["a"], p["b"]))
    return {
        "pairs": pairs,
        "two_way": sum(p["two_way"] for p in pairs),
        "one_way": sum(p["one_way"] for p in pairs),
    }


def _countries(table: pd.DataFrame) -> list[dict]:
    rows = [
        {
            "country": cc,
            "name": country_name(cc),
            "flows": int(r.flows),
            "bytes_in": int(r.bytes_in),
            "bytes_out": int(r.bytes_out),
            "max_tier": int(r.max_tier),
        }
        for cc, r in table.iterrows()
    ]
    rows.sort(key=lambda c: (-(c["bytes_in"] + c["bytes_out"]), c["country"]))
    return rows
