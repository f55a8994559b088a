"""`make demo` end to end: its own steps (generate, baseline, keys, serve, replay, report), twice.

Expected totals come from the capture's packets (dpkt: IP lengths and times), the
planted anomalies from pcaps/campus.py's manifest; neither from ntds code.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import dpkt
import pytest

from demo.__main__ import run_demo, summary
from pcaps import campus


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    first = run_demo(work)
    second = run_demo(work)  # running it again works, from a fresh run folder
    return first, second


def week_totals(pcap) -> tuple[int, int, list[int]]:
    """Packets and IP bytes of week 2026-W47, and IP bytes per day, straight from the capture."""
    start = datetime(2026, 11, 16, tzinfo=UTC).timestamp()
    packets = size = 0
    per_day = [0] * 7
    with open(pcap, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            if start <= ts < start + 7 * 86400:
                ip = dpkt.ethernet.Ethernet(buf).data
                packets += 1
                size += ip.len
                per_day[int((ts - start) // 86400)] += ip.len
    return packets, size, per_day


def test_demo_report_totals_match_the_capture(demo):
    first, second = demo
    report = first["report"]
    packets, size, per_day = week_totals(first["week_pcap"])
    t = report["overview"]["totals"]
    assert (t["packets"], t["bytes"]) == (packets, size)
    assert per_day[2] == 0  # Wednesday 18 November: no traffic
    daily = [
        sum(
            report["throughput"]["daily"][c][k][d]
            for c in report["throughput"]["classes"]
            for k in ("bytes_up", "bytes_down")
        )
        for d in range(7)
    ]
    assert daily[2] == 0 and all(x > 0 for i, x in enumerate(daily) if i != 2)
    assert report["throughput"]["weekly"]["external"]["bytes_down"][-2] > 0  # Sunday 15 November, week 46

    # the same capture gives the same report; only the baseline's id (its build time) differs between runs
    def without_baselines(r: dict) -> dict:
        return {**r, "overview": {k: v for k, v in r["overview"].items() if k != "baselines"}}

    used = [r["overview"]["baselines"] for r in (report, second["report"])]
    assert without_baselines(second["report"]) == without_baselines(report)
    assert [[(b["sensor"], b["alerts"]) for b in u] for u in used] == [[("campus-tap", sum(
        report["alerts"]["alerts_per_kind"].values()))]] * 2  # fmt: skip


def test_demo_report_names_the_planted_attackers(demo):
    """Each planted anomaly is an alert of the right kind naming its host, in the report's per-host view."""
    report = demo[0]["report"]
    hosts = {h["src_ip"]: h for h in report["alerts"]["hosts"]}
    upload, tunnel, scan = (campus.PLANTED[k] for k in ("bulk upload", "dns tunnelling", "port scan"))
    assert "exfiltration" in hosts[upload["src"]]["kinds"]
    assert "dns-tunnel" in hosts[tunnel["src"]]["kinds"]
    assert "port-scan" in hosts[scan["src"]]["kinds"]
    (scanner,) = [x for x in report["alerts"]["scanners"] if x["src_ip"] == scan["src"]]
    assert scanner["hosts_scanned"] == 1 and scanner["most_ports"] >= 100  # 200 ports probed, all dropped
    strongest = {(a["kind"], a["src_ip"], a["dst_ip"]) for a in report["alerts"]["rarest"]}
    assert ("exfiltration", upload["src"], upload["dst"]) in strongest
    assert ("port-scan", scan["src"], scan["dst"]) in strongest
    # no other host is named by a host-level alert: the knocker's and the chatter's flows are not attacks
    named = {h["src_ip"] for h in report["alerts"]["hosts"] if set(h["kinds"]) - {"flow"}}
    assert named == {upload["src"], tunnel["src"], scan["src"]}
    # The scan's probes got nothing back: they are one-way peer-to-peer traffic on its day.
    day = (datetime(2026, 11, 15).toordinal() + scan["day"]) - datetime(2026, 11, 16).toordinal()
    assert report["unanswered"]["kinds"]["p2p_one_way"]["flows"][day] >= 200


def test_demo_stops_everything_and_prints_a_summary(demo):
    first = demo[0]
    run = str(first["run"])
    left = subprocess.run(["pgrep", "-f", run], capture_output=True, text=True).stdout.split()
    assert left == []
    text = summary(first["report"], first["html"])
    assert str(first["html"]) in text and "top 5 alerts:" in text and "port-scan" in text
    assert text.count("\n  tier ") == min(5, len(first["report"]["alerts"]["rarest"])) >= 3
    assert first["html"].exists() and (first["html"].parent / "applications.csv").exists()


def test_demo_broadcasts_every_alert_to_the_eve_file(demo):
    """The demo's route sends each alert to an EVE JSON-lines file: one line per alert the report counts,
    naming the planted hosts, each line valid JSON with the EVE fields a SIEM shipper expects."""
    first = demo[0]
    lines = [json.loads(x) for x in first["eve"].read_text().splitlines()]
    per_kind = first["report"]["alerts"]["alerts_per_kind"]
    assert len(lines) == sum(per_kind.values()) >= 3
    assert {x["event_type"] for x in lines} == {"alert"}
    planted = {campus.PLANTED[k]["src"] for k in ("bulk upload", "dns tunnelling", "port scan")}
    assert {x["src_ip"] for x in lines} == planted
    # every line validates against Suricata's own EVE schema (tests/schemas: Suricata 8.0.6's etc/schema.json)
    from tests.test_siem_formats import eve_errors

    assert [(x["alert"]["signature"], e) for x in lines for e in eve_errors(x)] == []
