"""The weekly report's numbers, computed with Dask DataFrame from the Parquet archive.

`compute` turns an ISO week and the archive into a plain dict: every number
the report shows, JSON-ready, in a fixed order, so the same archive gives the
same `report.json` in-process and on a cluster. Days and weeks without data
are zeros, never missing.

Each section is one module holding its query, its numbers, its CSV tables and
its charts together (`SECTIONS`, in the order the page shows them). All the
sections' aggregates are built lazily and computed in one `dask.compute` call;
every group-by is a tree reduction (`split_out=1`: the results are small), so a
cluster never shuffles.
"""

from __future__ import annotations

import dask

from aggregator.archive import Archive
from aggregator.report import alerts, applications, geography, news, overview, peers, throughput, unanswered
from aggregator.report.query import Query
from aggregator.report.week import Week

REPORT_SCHEMA = 1
SECTIONS = (overview, throughput, applications, alerts, unanswered, peers, geography, news)

__all__ = ["REPORT_SCHEMA", "SECTIONS", "Week", "compute"]


def compute(archive: Archive, week: Week, sensors: list[str] | None = None) -> dict:
    """Every number of the weekly report for `week` (optionally some sensors only)."""
    q = Query(archive, week, sensors)
    lazy = {f"{s.KEY}.{name}": value for s in SECTIONS for name, value in s.lazy(q).items()}
    done = dict(zip(lazy, dask.compute(*lazy.values()), strict=True))
    report = {
        "schema": REPORT_SCHEMA,
        "week": str(week),
        "first_day": week.days[0].isoformat(),
        "last_day": week.days[-1].isoformat(),
        "sensor_filter": sorted(sensors) if sensors else None,
    }
    for section in SECTIONS:
        report[section.KEY] = section.assemble(q, done)
    return report
