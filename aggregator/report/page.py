"""Writing a computed weekly report: report.html, report.json and one CSV per table.

The HTML is one file with its charts inline (SVG) and its style in a <style>
block: it opens from a USB stick on an air-gapped laptop. Jinja2 autoescapes
every value, so an application name or a sensor id from the wire cannot
inject markup into the page.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from aggregator.report import charts
from ntds.detect.scoring import TIER_LABELS
from ntds.errors import InputError
from ntds.wire.schema import TIERS

MB = 1e6


def tables(report: dict) -> dict[str, tuple[list[str], list[list]]]:
    """Every table of the report as (header, rows): the CSV files and the HTML share them."""
    t = report["throughput"]
    daily_header = ["day"] + [f"{c}_{col}" for c in t["classes"] for col in ("bytes_up", "bytes_down")]
    out = {
        "sensors": (
            list(report["overview"]["sensors"][0]) if report["overview"]["sensors"] else ["sensor"],
            [list(r.values()) for r in report["overview"]["sensors"]],
        ),
        "throughput_daily": (
            daily_header,
            [
                [d] + [t["daily"][c][col][i] for c in t["classes"] for col in ("bytes_up", "bytes_down")]
                for i, d in enumerate(t["days"])
            ],
        ),
        "throughput_weekly": (
            ["week"] + daily_header[1:],
            [
                [w] + [t["weekly"][c][col][i] for c in t["classes"] for col in ("bytes_up", "bytes_down")]
                for i, w in enumerate(t["weeks"])
            ],
        ),
        "applications": (
            [
                "application",
                "flows",
                "share",
                "one_in",
                "cumulative",
                "bytes_up",
                "bytes_down",
                "previous_flows",
                "previous_share",
                "share_change",
            ],
            [],
        ),
        "tiers_per_day": (
            ["day"] + [f"tier{k}" for k in range(TIERS)],
            [
                [d] + [report["alerts"]["flows_per_tier_per_day"][k][i] for k in range(TIERS)]
                for i, d in enumerate(t["days"])
            ],
        ),
        "rarest_alerts": (
            ["tier", "score", "time", "sensor", "application", "flow_id", "explanation"],
            [
                [
                    a["tier"],
                    a["score"],
                    a["time"],
                    a["sensor"],
                    a["application"],
                    a["flow_id"],
                    explain(a["explanation"]),
                ]
                for a in report["alerts"]["rarest"]
            ],
        ),
        "alert_hosts": (
            ["src_ip", "alerts", "max_tier"] + [f"tier{k}" for k in range(TIERS)],
            [[h["src_ip"], h["alerts"], h["max_tier"], *h["tiers"]] for h in report["alerts"]["hosts"]],
        ),
        "tiers_per_application": (
            ["application"] + [f"tier{k}" for k in range(TIERS)],
            [[r["application"], *r["tiers"]] for r in report["alerts"]["tiers_per_application"]],
        ),
        "unanswered": (
            ["day"] + [f"{k}_{m}" for k in report["unanswered"]["kinds"] for m in ("flows", "bytes")],
            [
                [d] + [v[m][i] for v in report["unanswered"]["kinds"].values() for m in ("flows", "bytes")]
                for i, d in enumerate(report["unanswered"]["days"])
            ],
        ),
        "peer_pairs": (
            [
                "a",
                "b",
                "flows",
                "two_way",
                "one_way",
                "bytes_ab",
                "bytes_ba",
                "bytes",
                "active_days",
                "bytes_per_active_day",
            ],
            [],
        ),
        "countries": (["country", "name", "flows", "bytes_in", "bytes_out", "max_tier"], []),
    }
    for name, source in (
        ("applications", report["applications"]),
        ("peer_pairs", report["peer_to_peer"]["pairs"]),
        ("countries", report["geography"]),
    ):
        header, rows = out[name]
        rows.extend([r[h] for h in header] for r in source)
    return out


def explain(explanation: list[dict]) -> str:
    """One line per alert: which radar axes were unusual, and how far from typical."""
    return "; ".join(
        f"{e['axis']} {e['value']:.4g} (typical {e['typical']:.4g}, score {e['score']:.2f})" for e in explanation
    )


def write(report: dict, folder: str | Path, site_country: str = "") -> Path:
    """Write the report folder; returns the HTML path."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        all_tables = tables(report)
        for name, (header, rows) in all_tables.items():
            with _atomic(out / f"{name}.csv", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows(rows)
        with _atomic(out / "report.json") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
        env = Environment(
            loader=FileSystemLoader(Path(__file__).parent / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["mb"] = lambda v: f"{v / MB:,.2f}"
        env.filters["thousands"] = lambda v: f"{v:,}"
        page = env.get_template("weekly.html").render(
            r=report,
            tables=all_tables,
            tier_labels=TIER_LABELS,
            explain=explain,
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            charts={
                "daily": charts.throughput(report, "daily"),
                "weekly": charts.throughput(report, "weekly"),
                "tiers": charts.tiers_per_day(report),
                "unanswered": charts.unanswered(report),
                "pairs": charts.pair_heatmap(report),
                "countries": charts.countries(report),
                "map": charts.world_map(report, site_country),
            },
        )
        html = out / "report.html"
        with _atomic(html) as fh:
            fh.write(page)
    except OSError as e:
        raise InputError(f"{out}: cannot write the report: {e.strerror or e}") from None
    return html


class _atomic:
    """Write to a temporary name and rename, so a full disk never leaves half a report behind."""

    def __init__(self, path: Path, newline: str | None = None) -> None:
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.fh = open(self.tmp, "w", encoding="utf-8", newline=newline)  # noqa: SIM115

    def __enter__(self):
        return self.fh

    def __exit__(self, kind, *_):
        self.fh.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
