"""Drawing helpers every report chart uses: matplotlib figures rendered to inline SVG strings.

Every chart takes the report dict (never the archive), so the HTML shows
exactly the numbers in report.json. SVG keeps the page one self-contained file
that opens offline: no scripts, no fonts or images fetched.
"""

from __future__ import annotations

import io
import re

from matplotlib.figure import Figure

from aggregator.baseline_plots import TIER_COLOURS
from ntds.logs import printable

MB = 1e6
CLASS_COLOURS = {"external": "#1565c0", "local_service": "#00897b", "peer_to_peer": "#f4511e"}
_RC = {"svg.fonttype": "none", "svg.hashsalt": "ntds", "font.size": 9, "text.parse_math": False}
"""text.parse_math off: labels are data (host names, countries from the wire), never TeX to interpret."""

__all__ = ["CLASS_COLOURS", "MB", "TIER_COLOURS", "figure", "ip_key", "label", "short_days", "svg"]


def svg(fig: Figure) -> str:
    import matplotlib

    with matplotlib.rc_context(_RC):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)


def figure(w: float, h: float, rows: int = 1, cols: int = 1):
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(w, h))
        axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def label(text: object, limit: int = 40) -> str:
    """A string from the network as a chart label: control characters escaped, long text cut."""
    return printable(text, limit)


def short_days(days: list[str]) -> list[str]:
    from datetime import date

    return [date.fromisoformat(d).strftime("%a %d") for d in days]


def ip_key(ip: str):
    import ipaddress

    try:
        a = ipaddress.ip_address(ip)
        return (a.version, int(a))
    except ValueError:
        return (9, 0)
