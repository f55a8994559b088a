"""The weekly report's numbers against an independent computation from the same flows.

The flows go the way they go in production: summarised per sensor, encoded and
decoded by the wire codec, stored, exported to the Parquet archive, computed
with Dask. The expected numbers come from tests/week_scenario.py's
construction facts in plain Python.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from datetime import date

import pytest

from aggregator.report.weekly import Week, compute
from tests import week_scenario
from tests.conftest import ROOT
from tests.week_scenario import DAYS, FINDINGS, WEEK, build_archive, expected, flow_id


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("week")
    store, archive, truth = build_archive(folder)
    yield folder, store, archive, truth
    store.close()


@pytest.fixture(scope="module")
def report(site):
    return compute(site[2], Week.parse(WEEK))


def test_overview_per_sensor(site, report):
    e = expected(site[3])
    rows = {r["sensor"]: r for r in report["overview"]["sensors"]}
    assert set(rows) == set(DAYS)
    for sensor, row in rows.items():
        assert row["flows"] == e["per_sensor"][sensor]["flows"]
        assert row["bytes"] == e["per_sensor"][sensor]["bytes"]
        assert row["packets"] == e["per_sensor"][sensor]["packets"]
        assert row["hours_with_data"] == len(e["hours"][sensor])
        assert row["packets_dropped"] == e["drops"][sensor]
    assert rows["tap-a"]["spool_dropped"] == 3  # cumulative 2 before the week, 5 inside it
    assert rows["tap-b"]["spool_dropped"] == 0
    assert report["overview"]["totals"]["flows"] == sum(e["per_sensor"][s]["flows"] for s in DAYS)


def test_throughput_days_and_weeks(site, report):
    e = expected(site[3])
    t = report["throughput"]
    assert t["days"] == [f"2026-11-{d}" for d in range(16, 23)]
    for cls, cols in e["throughput"].items():
        assert t["daily"][cls] == cols, cls
        assert t["daily"][cls]["bytes_up"][2] == 0  # Wednesday: no data, a zero, not a gap
    # Week 46 holds only Sunday 15 November (tap-a); earlier weeks are zeros.
    assert t["weeks"][-2:] == ["2026-W46", "2026-W47"] and len(t["weeks"]) == 12
    truth = site[3]
    sunday = [x for x in truth if _day(x) < date(2026, 11, 16)]
    ext_up = sum((x.flow.bytes_fwd if x.client_is_src else x.flow.bytes_bwd) for x in sunday if x.cls == "external")
    assert t["weekly"]["external"]["bytes_up"][-2] == ext_up > 0
    assert t["weekly"]["external"]["bytes_up"][-1] == sum(e["throughput"]["external"]["bytes_up"])
    assert t["weekly"]["external"]["bytes_up"][:-2] == [0] * 10


def test_applications_ranking_and_change(site, report):
    e = expected(site[3])
    apps = report["applications"]
    assert {a["application"]: a["flows"] for a in apps} == e["apps"]
    total = sum(e["apps"].values())
    flows = [a["flows"] for a in apps]
    assert flows == sorted(flows, reverse=True)
    running = 0.0
    for a in apps:
        share = 100 * a["flows"] / total
        running += share
        assert a["share"] == pytest.approx(share, abs=1e-3)
        assert a["one_in"] == max(1, round(100 / share))
        assert a["cumulative"] == pytest.approx(running, abs=1e-3)
        prev_total = sum(e["prev_apps"].values())
        prev = e["prev_apps"].get(a["application"], 0)
        assert a["previous_flows"] == prev
        assert a["share_change"] == pytest.approx(share - 100 * prev / prev_total, abs=1e-3)
    assert apps[-1]["cumulative"] == pytest.approx(100.0)


def test_alert_tiers_rarest_and_per_application(site, report):
    e = expected(site[3])
    a = report["alerts"]
    assert a["flows_per_tier_per_day"] == e["tiers_per_day"]
    assert [(x["kind"], x["flow_id"] or x["src_ip"], x["tier"]) for x in a["rarest"]] == e["rarest"]
    assert all(x["explanation"][0]["axis"] == "volume" for x in a["rarest"] if x["kind"] == "flow")
    assert all(x["explanation"][0]["text"] for x in a["rarest"])  # words, with units
    per_app = {r["application"]: r["tiers"] for r in a["tiers_per_application"]}
    truth_week = [x for x in site[3] if date(2026, 11, 16) <= _day(x) <= date(2026, 11, 22)]
    for app, tiers in per_app.items():
        assert tiers == [sum(1 for x in truth_week if x.flow.application == app and x.tier == k) for k in range(6)]
    assert "SSDP" not in per_app  # never scored: single-packet flows have no tier


def test_unanswered_pairs_and_countries(site, report):
    e = expected(site[3])
    assert report["unanswered"]["kinds"] == e["unanswered"]
    assert report["unanswered"]["kinds"]["p2p_one_way"]["flows"][2] == 0
    pairs = {(p["a"], p["b"]): p for p in report["peer_to_peer"]["pairs"]}
    assert set(pairs) == set(e["pairs"])
    for key, p in pairs.items():
        want = e["pairs"][key]
        assert (p["flows"], p["bytes"], p["active_days"]) == (want["flows"], want["bytes"], len(want["days"]))
        assert (p["one_way"], p["two_way"]) == (want["one_way"], want["two_way"])
        assert p["bytes_per_active_day"] == pytest.approx(want["bytes"] / len(want["days"]), abs=1e-3)
    assert report["peer_to_peer"]["one_way"] == sum(w["one_way"] for w in e["pairs"].values())
    countries = {c["country"]: c for c in report["geography"]}
    assert set(countries) == set(e["countries"])
    for cc, c in countries.items():
        assert {k: c[k] for k in ("flows", "bytes_in", "bytes_out", "max_tier")} == e["countries"][cc]


def test_sensor_filter(site):
    only_b = compute(site[2], Week.parse(WEEK), ["tap-b"])
    e = expected(site[3], ["tap-b"])
    assert [r["sensor"] for r in only_b["overview"]["sensors"]] == ["tap-b"]
    assert {a["application"]: a["flows"] for a in only_b["applications"]} == e["apps"]
    assert only_b["throughput"]["daily"]["external"] == e["throughput"]["external"]


def test_empty_week_is_all_zeros(site):
    r = compute(site[2], Week.parse("2026-W30"))
    assert r["overview"]["sensors"] == [] and r["applications"] == [] and r["geography"] == []
    assert r["throughput"]["daily"]["external"]["bytes_up"] == [0] * 7
    assert r["alerts"]["flows_per_tier_per_day"] == [[0] * 7] * 6


def test_week_parsing():
    assert str(Week.parse("2026-w47")) == "2026-W47" and Week.parse("2026-W47").first == date(2026, 11, 16)
    assert str(Week.parse("2026-W01").shifted(-1)) == "2025-W52"
    from ntds.errors import InputError

    for bad in ("2026-47", "2026-W54", "week"):
        with pytest.raises(InputError):
            Week.parse(bad)


def test_local_cluster_gives_the_same_report(site, report, tmp_path):
    """Two worker processes of a real dask.distributed LocalCluster compute the identical report."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1") as cluster,
        distributed.Client(cluster) as client,
    ):
        assert len(client.scheduler_info()["workers"]) == 2
        on_cluster = compute(site[2], Week.parse(WEEK))
    assert json.dumps(on_cluster, sort_keys=True) == json.dumps(report, sort_keys=True)


def _day(x) -> date:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(x.flow.start_ms / 1000, UTC).date()


def test_cli_writes_html_json_and_csv(site, report, tmp_path):
    folder = site[0]
    cfg = tmp_path / "aggregator.yaml"
    cfg.write_text(f"store: {folder / 'store.db'}\narchive: {folder / 'archive'}\n")
    out = tmp_path / "report"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregator.cli",
            "report",
            "weekly",
            "--week",
            WEEK,
            "-o",
            str(out),
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    written = json.loads((out / "report.json").read_text())
    assert written["news"]["from_store"]  # new behaviour is read from the store, which the command has
    assert written | {"news": report["news"]} == report
    html = (out / "report.html").read_text()
    for needle in ("2026-W47", "tap-a", "tap-b", report["applications"][0]["application"], "<svg"):
        assert needle in html
    apps_csv = (out / "applications.csv").read_text().splitlines()
    assert apps_csv[0].startswith("application,flows,share")
    assert len(apps_csv) == len(report["applications"]) + 1


CHROMIUM = shutil.which("chromium")


def chromium(page, screenshot, netlog) -> set[str]:
    """Render page in headless Chromium inside a network namespace of its own (nothing can leave);
    returns the http(s)/ws URLs the page itself asked for, from Chromium's network log (the
    browser's own update pings are told apart by their network isolation key)."""
    run = subprocess.run(
        ["unshare", "--net", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1200,5200", f"--screenshot={screenshot}", f"--log-net-log={netlog}", page.as_uri()],
        capture_output=True, text=True, timeout=120, cwd=page.parent,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return {
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start_job
        and e["params"].get("network_isolation_key", "").startswith("file://")
        and re.match(r"(https?|wss?|ftp)://", e["params"]["url"])
    }


@pytest.mark.skipif(CHROMIUM is None or shutil.which("unshare") is None, reason="chromium (make test installs it)")
def test_html_renders_offline_in_chromium(site, report, tmp_path):
    """The page renders to a full screenshot and requests nothing; a control page with one remote
    image shows the check would see such a request."""
    from aggregator.report.page import write

    html = write(report, tmp_path / "report", "CO")
    text = html.read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://192.0.2.1/x.png">control</body></html>')
    assert chromium(control, tmp_path / "control.png", tmp_path / "control.json") == {"http://192.0.2.1/x.png"}
    shot = tmp_path / "report.png"
    assert chromium(html, shot, tmp_path / "net.json") == set()
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page with charts, not a blank one


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "aggregator.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@pytest.fixture(scope="module")
def config(site, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "aggregator.yaml"
    cfg.write_text(f"store: {site[0] / 'store.db'}\narchive: {site[0] / 'archive'}\n")
    return cfg


def test_alerts_command_lists_and_filters(site, config):
    truth = [x for x in site[3] if x.tier is not None and x.tier >= 3]
    # a first listing judges the alerts' prevalence (which may move the tier the alert manager sorts on); the
    # filter below is on the sensor's tier all the same
    assert _cli("alerts", "--config", config).returncode == 0
    p = _cli("alerts", "--config", config, "--json", "--min-tier", 4, "--sensor", "tap-b", "--since", "2026-11-20")
    assert p.returncode == 0, p.stderr
    got = [json.loads(line) for line in p.stdout.splitlines()]
    want = sorted(
        [(x.flow.start_ms, flow_id(x), x.tier) for x in truth
         if x.sensor == "tap-b" and x.tier >= 4 and _day(x) >= date(2026, 11, 20)]
        + [(week_scenario._ms(day, hour), host, tier) for sensor, _, host, _, _, _, tier, day, hour in FINDINGS
           if sensor == "tap-b" and tier >= 4 and day >= 4]
    )  # fmt: skip
    assert [(a["flow_id"] or a["src_ip"], a["tier"]) for a in got] == [w[1:] for w in want]
    assert any(a["kind"] == "port-scan" for a in got) and any(a["kind"] == "flow" for a in got)
    assert [a["first_seen"] for a in got] == sorted(a["first_seen"] for a in got)
    text = _cli("alerts", "--config", config)
    assert text.returncode == 0 and f"{len(truth) + len(FINDINGS)} alerts" in text.stderr
    assert len(text.stdout.splitlines()) == len(truth) + len(FINDINGS)
    assert "port-scan  tier 5" in text.stdout and "10.1.0.13" in text.stdout
    # the newest N only, chosen on the index, and said so; the same N as the end of the whole list
    n = 5
    newest = _cli("alerts", "--config", config, "--json", "--limit", n)
    assert newest.returncode == 0, newest.stderr
    every = _cli("alerts", "--config", config, "--json", "--limit", 0).stdout.splitlines()
    got = [json.loads(line) for line in newest.stdout.splitlines()]
    assert len(every) == len(truth) + len(FINDINGS) and len(got) == n
    assert [a["id"] for a in got] == [json.loads(line)["id"] for line in every][-n:]
    assert f"the newest {n} of {len(every):,} alerts" in newest.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["report", "weekly", "--week", "2026-47"], "expected an ISO week"),
        (["report", "weekly", "--week", "9999-W52"], "outside the weeks ntds holds data for"),
        (["report", "weekly", "--week", "2026-W47", "--sensor", "nobody"], "no data from such a sensor"),
        (["alerts", "--since", "yesterday"], "--since 'yesterday'"),
        (["alerts", "--min-tier", "9"], "--min-tier must be 0..5"),
        (["alerts", "--limit", "-1"], "--limit must be 0"),
    ],
)
def test_report_and_alerts_bad_input_is_one_line(config, tmp_path, args, words):
    p = _cli(*args, "--config", config)
    assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_report_without_a_store_is_one_line(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"store: {tmp_path / 'none.db'}\n")
    p = _cli("report", "weekly", "--config", cfg)
    assert p.returncode == 2 and "no store yet" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_unreachable_scheduler_is_one_line(config, tmp_path):
    from test_transport import free_port

    p = _cli("report", "weekly", "--week", WEEK, "--scheduler", f"tcp://127.0.0.1:{free_port()}",
             "--scheduler-timeout", "1", "--config", config)  # fmt: skip
    assert p.returncode == 2 and "cannot connect" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_alert_hosts(site, report):
    truth = [
        x for x in site[3] if x.tier is not None and x.tier >= 3 and date(2026, 11, 16) <= _day(x) <= date(2026, 11, 22)
    ]
    want: dict[str, list[int]] = {}
    kinds: dict[str, dict[str, int]] = {}
    for x in truth:
        want.setdefault(x.flow.src_ip, [0] * 6)[x.tier] += 1
        kinds.setdefault(x.flow.src_ip, {}).setdefault("flow", 0)
        kinds[x.flow.src_ip]["flow"] += 1
    for _, kind, host, _, _, _, tier, _, _ in FINDINGS:
        want.setdefault(host, [0] * 6)[tier] += 1
        kinds.setdefault(host, {}).setdefault(kind, 0)
        kinds[host][kind] += 1
    got = {h["src_ip"]: h["tiers"] for h in report["alerts"]["hosts"]}
    assert got == want
    assert {h["src_ip"]: h["kinds"] for h in report["alerts"]["hosts"]} == kinds
    order = [(-h["max_tier"], -h["alerts"]) for h in report["alerts"]["hosts"]]
    assert order == sorted(order)


def test_scanners_and_beacons(report):
    """The per-host view against the scenario's host-level alerts."""
    scans = [f for f in FINDINGS if f[1] in ("port-scan", "host-sweep")]
    want = {}
    for host in {f[2] for f in scans}:
        mine = [f for f in scans if f[2] == host]
        ports = [f for f in mine if f[1] == "port-scan"]
        sweeps = [f for f in mine if f[1] == "host-sweep"]
        want[host] = {
            "alerts": len(mine), "max_tier": max(f[6] for f in mine), "hosts_scanned": len({f[3] for f in ports}),
            "ports_swept": len({f[4] for f in sweeps}), "most_ports": max((f[5] for f in ports), default=0),
            "most_hosts": max((f[5] for f in sweeps), default=0),
        }  # fmt: skip
    got = {x["src_ip"]: {k: x[k] for k in want[x["src_ip"]]} for x in report["alerts"]["scanners"]}
    assert got == want
    assert [x["src_ip"] for x in report["alerts"]["scanners"]] == ["203.0.113.9", "10.1.0.13"]  # tier 5 first
    (b,) = report["alerts"]["beacons"]
    assert (b["src_ip"], b["dst_ip"], b["dst_port"], b["tier"], b["connections"]) == ("10.1.0.12", "81.2.69.160",
                                                                                       443, 5, 90)  # fmt: skip
    assert b["interval_s"] == 300.0 + 90 and b["first_seen"].startswith("2026-11-18T12:00")


def test_pairs_beyond_the_listed_ones_are_counted(tmp_path):
    """Busy intervals list the 128 largest pairs; the rest arrive as totals and the report keeps them."""
    from aggregator.archive import Archive
    from aggregator.store import Store
    from ntds.wire import schema as wire

    store = Store(tmp_path / "s.db")
    omitted = [(3, 40, 9000), (5, 60, 12000)]
    msgs = []
    for i, (pairs, flows, size) in enumerate(omitted, 1):
        body = json.loads(json.dumps(wire.EXAMPLES["summary"]))
        body["interval_start"] = f"2026-11-1{6 + i}T08:00:00Z"
        body["peer_pairs_omitted"] = {"pairs": pairs, "flows": flows, "bytes": size}
        msgs.append(wire.decode(wire.encode(wire.Message("summary", "tap-z", i, wire.now_iso(), body))))
    store.store(msgs)
    archive = Archive(tmp_path / "a")
    archive.export(store, today=date(2026, 11, 30))
    r = compute(archive, Week.parse(WEEK))
    assert r["peer_to_peer"]["omitted"] == {"flows": 100, "bytes": 21000}


HOSTILE = ["$\\alpha^{2}$ $x", "<script>alert(1)</script>", "\x1b[31mred\x1b[0m", "=cmd|' /C calc'!A0"]
"""Strings an attacker can put on the wire (or that nDPI copies from a packet): TeX, markup, terminal
escapes, a spreadsheet formula."""


def test_strings_from_the_network_are_text_in_charts_pages_csv_and_terminals(tmp_path):
    from aggregator.archive import Archive
    from aggregator.report.page import write
    from aggregator.store import Store
    from ntds.wire import schema as wire

    store = Store(tmp_path / "s.db")
    body = json.loads(json.dumps(wire.EXAMPLES["summary"]))
    body["interval_start"] = "2026-11-18T08:00:00Z"
    body["peer_pairs"] = [dict(body["peer_pairs"][0], a=HOSTILE[0], b=HOSTILE[1])]
    body["applications"] = [dict(body["applications"][0], application=name) for name in HOSTILE]
    body["countries"] = [dict(body["countries"][0], country="$$")]
    alert = wire.EXAMPLES["alert"] | {
        "first_seen": "2026-11-18T08:00:01Z",
        "last_seen": "2026-11-18T08:00:02Z",
        "application": HOSTILE[2],
        "src_ip": HOSTILE[3],
        "signature": HOSTILE[0],
    }
    msgs = [
        wire.Message("summary", "tap-z", 1, wire.now_iso(), body),
        wire.Message("alert", "tap-z", 2, wire.now_iso(), alert),
    ]
    store.store([wire.decode(wire.encode(m)) for m in msgs])
    archive = Archive(tmp_path / "a")
    archive.export(store, today=date(2026, 11, 30))
    store.close()
    html = write(compute(archive, Week.parse(WEEK)), tmp_path / "report", "CO").read_text()  # no TeX parse error
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\x1b" not in html and "$\\alpha^{2}$" in html  # the TeX is shown as text in the chart
    assert html.count("<svg") == 7 and "&lt;svg" not in html
    apps = (tmp_path / "report" / "applications.csv").read_text()
    assert "\n=cmd" not in apps and "'=cmd" in apps
    rarest = (tmp_path / "report" / "rarest_alerts.csv").read_text() + (
        tmp_path / "report" / "alert_hosts.csv"
    ).read_text()
    assert "\n=cmd" not in rarest and "'=cmd" in rarest
    cfg = tmp_path / "agg.yaml"
    cfg.write_text(f"store: {tmp_path / 's.db'}\narchive: {tmp_path / 'a'}\n")
    listed = _cli("alerts", "--config", cfg)
    assert listed.returncode == 0 and "\x1b" not in listed.stdout and "\\x1b[31mred" in listed.stdout


def test_alerts_read_source_to_destination(report, tmp_path):
    """The flow id is canonical (lower address first); the page and the CSV show the flow's own direction."""
    from aggregator.report.page import write

    html = write(report, tmp_path / "r").read_text()
    rarest = report["alerts"]["rarest"]
    assert rarest

    def end(ip, port):
        return f"{ip}:{port}" if port else ip

    for a in rarest:
        assert f"{end(a['src_ip'], a['src_port'])} &rarr; {end(a['dst_ip'], a['dst_port'])}" in html
    table = list(csv.DictReader((tmp_path / "r" / "rarest_alerts.csv").open()))
    assert [(r["source"], r["destination"]) for r in table] == [
        (end(a["src_ip"], a["src_port"]), end(a["dst_ip"], a["dst_port"])) for a in rarest
    ]
