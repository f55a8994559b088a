"""Writing a computed weekly report: report.html, report.json and one CSV per table.

The HTML is one file with its charts inline (SVG) and its style in a <style>
block: it opens from a USB stick on an air-gapped laptop. Jinja2 autoescapes
every value, so an application name or a sensor id from the wire cannot
inject markup into the page. Tables and charts come from the section modules
(`weekly.SECTIONS`), so the CSV files and the page show the same rows.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

from markupsafe import Markup

from aggregator.report.alerts import explain
from aggregator.report.chart_kit import MB
from aggregator.report.weekly import SECTIONS
from ntds.atomic import atomic_open
from ntds.detect.scoring import TIER_LABELS
from ntds.errors import InputError
from ntds.logs import printable


def tables(report: dict) -> dict[str, tuple[list[str], list[list]]]:
    """Every table of the report as (header, rows): the CSV files and the HTML share them."""
    return {name: table for s in SECTIONS for name, table in s.tables(report).items()}


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet shows as text: a string from the network that starts like a formula
    (= + - @, tab, carriage return) gets a leading apostrophe, as OWASP advises against CSV injection."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _shown(value):
    """Every value the page prints: text gets its control characters escaped (charts, marked safe, are ours)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, 100_000)
    return value


def write(report: dict, folder: str | Path, site_country: str = "") -> Path:
    """Write the report folder; returns the HTML path."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        all_tables = tables(report)
        for name, (header, rows) in all_tables.items():
            with atomic_open(out / f"{name}.csv", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows([spreadsheet_safe(v) for v in row] for row in rows)
        with atomic_open(out / "report.json") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
        env = Environment(
            loader=FileSystemLoader(Path(__file__).parent / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_shown,
        )
        env.filters["mb"] = lambda v: f"{v / MB:,.2f}"
        env.filters["thousands"] = lambda v: f"{v:,}"
        page = env.get_template("weekly.html").render(
            r=report,
            tables=all_tables,
            tier_labels=TIER_LABELS,
            explain=explain,
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            charts={name: chart for s in SECTIONS for name, chart in s.charts(report, site_country).items()},
        )
        html = out / "report.html"
        with atomic_open(html) as fh:
            fh.write(page)
    except OSError as e:
        raise InputError(f"{out}: cannot write the report: {e.strerror or e}") from None
    return html
