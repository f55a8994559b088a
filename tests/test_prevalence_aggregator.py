"""Prevalence and the host's story on the aggregator: context messages merged per sensor, site and fleet, the tier
modifier applied and explained, notices once and only for what is new; the `prevalence` command.

Messages are stored through the store's own `store` (as the receiver does) and merged by `catch_up`, the same
call `serve`'s context thread makes.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aggregator import context, host_story, prevalence
from aggregator.prevalence import ModifierOptions, Sites
from aggregator.store import Store
from ntds import prevalence as sk
from ntds.wire.schema import EXAMPLES, Message, decode, encode, pack

BIN = Path(sys.executable).parent
DAY = 86400.0
T0 = 1_794_816_000.0  # 2026-11-16 08:00 UTC
SEQ = iter(range(1, 10**6))


def ctx(t: float, destinations=(), hosts=()) -> dict:
    return {"interval_start": _iso(t - t % 3600), "interval_s": 3600, "destinations_omitted": 0, "hosts_omitted": 0,
            "packed": pack({"destinations": list(destinations), "hosts": list(hosts)})}  # fmt: skip


def _iso(t: float) -> str:
    from ntds.times import iso_ms

    return iso_ms(int(t * 1000), "seconds")


def dest(key: str, hosts: list[str], t: float, kind: str = "address") -> dict:
    ms = int(t * 1000)
    return {"kind": kind, "key": key, "first_ms": ms, "last_ms": ms + 1000, "flows": len(hosts),
            "sketch": sk.encode(sk.sketch_of(hosts))}  # fmt: skip


def host(ip: str, t: float, apps=(), services=(), peers=()) -> dict:
    ms = int(t * 1000)
    return {"host": ip, "first_ms": ms, "last_ms": ms + 1000, "flows": 5, "bytes_up": 1000, "bytes_down": 9000,
            "applications": [{"application": a, "flows": 1} for a in apps],
            "services": [{"protocol": p, "port": port, "application": a, "flows": 1} for p, port, a in services],
            "peers": [{"peer": p, "flows": 1, "bytes": 10} for p in peers]}  # fmt: skip


def put(store: Store, sensor: str, kind: str, body: dict) -> None:
    m = Message(kind, sensor, next(SEQ), "2026-11-16T08:00:00Z", body, "0123456789abcdef")
    store.store([decode(encode(m))])  # exactly what a sensor could send


def alert(src: str, dst: str, t: float, tier: int = 3, domain: str = "") -> dict:
    a = copy.deepcopy(EXAMPLES["alert"])
    a |= {"src_ip": src, "dst_ip": dst, "first_seen": _iso(t), "last_seen": _iso(t + 1), "tier": tier,
          "domain": domain, "kind": "beacon", "flows": [], "flows_total": 0}  # fmt: skip
    return a


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.db")
    yield s
    s.close()


SITES = context.ContextOptions(Sites.of({"north": ["tap-a", "tap-b"]}), ModifierOptions(),
                               host_story.NoticeOptions(learning_days=1))  # fmt: skip


def test_sketches_merge_per_sensor_site_and_fleet(store):
    """Three sensors, two sites: hosts reached through two sensors count once, sites count where it was seen."""
    put(store, "tap-a", "context", ctx(T0, [dest("198.51.100.7", ["10.0.0.1", "10.0.0.2"], T0)]))
    put(store, "tap-b", "context", ctx(T0 + 7200, [dest("198.51.100.7", ["10.0.0.2", "10.0.0.3"], T0 + 7200)]))
    put(store, "tap-c", "context", ctx(T0 + 3600, [dest("198.51.100.7", ["10.9.0.1"], T0 + 3600)]))
    put(store, "tap-c", "context", ctx(T0, [dest("203.0.113.5", ["10.9.0.1"], T0 + 60)]))
    assert context.catch_up(store.db, SITES) == (4, 0)
    assert context.catch_up(store.db, SITES) == (0, 0)  # each message merged once
    p = prevalence.lookup(store.db, SITES.sites, "address", "198.51.100.7")
    assert (p.hosts, p.sites, p.sites_total) == (4, 2, 2)
    assert p.first_seen == T0 and p.last_seen == T0 + 7201
    assert [(s, h) for s, h, _, _ in p.per_site] == [("north", 3), ("tap-c", 1)]
    rare = prevalence.listing(store.db, SITES.sites, sk.KINDS)
    assert [r.key for r in rare] == ["203.0.113.5", "198.51.100.7"]  # rarest first
    assert prevalence.words(rare[0], now=T0 + 2 * 3600 + 60) == (
        "reached by 1 host at 1 of 2 sites; first seen 2 hours ago"
    )
    assert prevalence.words(p, now=T0 + 30 * DAY) == "reached by 4 hosts at 2 of 2 sites since 2026-11-16"


def test_many_hosts_within_the_sketch_error(store):
    hosts = [f"10.1.{i >> 8}.{i & 255}" for i in range(3000)]
    for k, sensor in enumerate(("tap-a", "tap-b", "tap-c")):  # overlapping thirds: 3,000 distinct in all
        put(store, sensor, "context", ctx(T0, [dest("192.0.2.80", hosts[k * 800 : k * 800 + 1400], T0)]))
    context.catch_up(store.db, SITES)
    p = prevalence.lookup(store.db, SITES.sites, "address", "192.0.2.80")
    assert abs(p.hosts - 3000) <= 3 * sk.RELATIVE_ERROR * 3000
    assert p.low <= 3000 <= p.high


def test_the_tier_modifier_is_applied_and_explained(store):
    """Rare and new raises one step, common and old lowers one step, between leaves it; each says so."""
    common = [f"10.2.0.{i}" for i in range(1, 80)]
    put(store, "tap-a", "context", ctx(T0 - 60 * DAY, [dest("142.250.1.1", common, T0 - 60 * DAY)]))
    put(store, "tap-a", "context", ctx(T0 - 10 * DAY, [dest("192.0.2.50", common[:10], T0 - 10 * DAY)]))
    put(store, "tap-a", "alert", alert("10.2.0.5", "142.250.1.1", T0, tier=3))  # common and old
    put(store, "tap-a", "alert", alert("10.2.0.5", "198.51.100.99", T0, tier=3))  # never seen: rare and new
    put(store, "tap-a", "alert", alert("10.2.0.5", "192.0.2.50", T0, tier=3))  # neither
    put(store, "tap-a", "alert", alert("10.2.0.5", "10.2.0.6", T0, tier=3))  # an internal address: not judged
    put(store, "tap-a", "alert", alert("10.2.0.5", "10.0.0.53", T0, tier=5, domain="evil.example"))  # by domain
    assert context.catch_up(store.db, SITES) == (2, 5)
    got = {
        dst: (tier, ctx_row)
        for dst, tier, ctx_row in store.db.execute(
            "SELECT a.dst_ip, a.tier, c.modifier FROM alerts a LEFT JOIN alert_context c ON c.alert_id = a.id"
        )
    }
    assert got["142.250.1.1"][0] == 2 and got["142.250.1.1"][1].startswith("prevalence lowered the tier 3 -> 2")
    assert got["198.51.100.99"][0] == 4 and got["198.51.100.99"][1].startswith("prevalence raised the tier 3 -> 4")
    assert got["192.0.2.50"][0] == 3 and got["192.0.2.50"][1].startswith("prevalence left the tier at 3")
    assert got["10.2.0.6"] == (3, None)
    assert got["10.0.0.53"][0] == 5 and "raised the tier 5 -> 5" in got["10.0.0.53"][1]  # capped at 5
    (alert_id,) = store.db.execute("SELECT id FROM alerts WHERE dst_ip = '142.250.1.1'").fetchone()
    (body,) = store.db.execute("SELECT body FROM messages WHERE id = ?", (alert_id,)).fetchone()
    shown = context.of_alert(store.db, SITES, alert_id, json.loads(body), now=T0 + 3600)
    assert shown["words"] == "reached by 79 hosts at 1 of 1 site since 2026-09-17"
    assert shown["tier_before"] == 3 and shown["tier_after"] == 2
    assert json.loads(body)["tier"] == 3  # the sensor's own body is kept as sent


def test_notices_fire_once_for_what_is_new_and_never_while_learning(store):
    day1 = ctx(T0, hosts=[host("10.3.0.1", T0, apps=["DNS", "TLS"], services=[(6, 22, "SSH")])])
    put(store, "tap-a", "context", day1)
    later = T0 + 2 * DAY
    put(store, "tap-a", "context", ctx(later, hosts=[
        host("10.3.0.1", later, apps=["DNS", "TLS", "BitTorrent"], services=[(6, 22, "SSH"), (6, 3389, "RDP")]),
        host("10.3.0.9", later, apps=["DNS"]),
    ]))  # fmt: skip
    put(store, "tap-a", "context", ctx(later + 3600, hosts=[
        host("10.3.0.1", later + 3600, apps=["BitTorrent"], services=[(6, 3389, "RDP")]),
        host("10.3.0.9", later + 3600, apps=["DNS"]),
    ]))  # the same again: nothing new  # fmt: skip
    context.catch_up(store.db, SITES)
    got = sorted((n["host"], n["kind"], n["what"]) for n in host_story.notices(store.db))
    assert got == [
        ("10.3.0.1", "new-application", "used BitTorrent for the first time"),
        ("10.3.0.1", "new-service", "answered on TCP/3389 (RDP) for the first time"),
        ("10.3.0.9", "new-host", "first seen by sensor tap-a"),
    ]
    assert store.count("alert") == 0  # notices only, unless the operator turns alerts on
    s = host_story.story(store.db, "10.3.0.1")
    assert s["first_seen"] == T0 and [t["day"] for t in s["traffic"]] == ["2026-11-16", "2026-11-18"]
    assert {a["application"] for a in s["applications"]} == {"DNS", "TLS", "BitTorrent"}
    assert [x["name"] for x in s["services"]] == ["TCP/22 (SSH)", "TCP/3389 (RDP)"]


def test_notices_become_alerts_where_the_operator_turns_them_on(store):
    opts = context.ContextOptions(Sites({}), ModifierOptions(), host_story.NoticeOptions(0, ("new-service",)))
    put(store, "tap-a", "context", ctx(T0, hosts=[host("10.4.0.1", T0)]))
    put(store, "tap-a", "context", ctx(T0 + DAY, hosts=[host("10.4.0.1", T0 + DAY, services=[(17, 69, "TFTP")]),
                                                        host("10.4.0.2", T0 + DAY)]))  # fmt: skip
    context.catch_up(store.db, opts)
    alerts = store.alerts()
    assert [(a["kind"], a["src_ip"], a["tier"]) for _, _, _, a in alerts] == [("new-service", "10.4.0.1", 1)]
    assert "UDP/69 (TFTP)" in alerts[0][3]["signature"]
    assert {n["kind"] for n in host_story.notices(store.db)} == {"new-host", "new-service"}


def test_prevalence_command(store, tmp_path):
    put(store, "tap-a", "context", ctx(T0, [dest("198.51.100.7", ["10.0.0.1"], T0),
                                            dest("evil.example", ["10.0.0.1", "10.0.0.2"], T0, "domain")]))  # fmt: skip
    cfg = tmp_path / "agg.yaml"
    cfg.write_text(f"store: {store.path}\nsites: {{north: [tap-a, tap-b]}}\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ntds-aggregator"), "prevalence", *args, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    p = run("--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert [(r["destination"], r["hosts"], r["sites"]) for r in rows] == [("198.51.100.7", 1, 1),
                                                                          ("evil.example", 2, 1)]  # fmt: skip
    p = run("EVIL.example.")
    assert p.returncode == 0 and "reached by 2 hosts at 1 of 1 site" in p.stdout
    assert "note" not in p.stderr
    put(store, "tap-b", "context", ctx(T0, [dest("198.51.100.7", ["10.0.0.3"], T0)]) | {"destinations_omitted": 7})
    p = run("198.51.100.7")
    assert "reached by 2 hosts at 1 of 1 site" in p.stdout  # tap-a and tap-b are one site
    assert "sensor tap-b counted 7 flows to destinations beyond context_max_destinations" in p.stderr
    p = run("203.0.113.1")
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "no sensor has reported" in p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"store: {store.path}\nsites: {{north: [tap-a], south: [tap-a]}}\n")
    p = subprocess.run([str(BIN / "ntds-aggregator"), "prevalence", "--config", str(bad)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode != 0 and "in two sites" in p.stderr and p.stderr.strip().count("\n") == 0


def test_the_weekly_report_lists_the_weeks_notices_and_new_destinations(store, tmp_path):
    """Notices and rare new destinations dated in the week are in report.json, a CSV and the page (escaped)."""
    app = "<b>New</b>App"
    put(store, "tap-a", "context", ctx(T0 - 3 * DAY, hosts=[host("10.6.0.1", T0 - 3 * DAY, apps=["DNS"])]))
    put(store, "tap-a", "context", ctx(T0, [dest("198.51.100.200", ["10.6.0.1"], T0)],
                                       [host("10.6.0.1", T0, apps=["DNS", app])]))  # fmt: skip
    put(store, "tap-a", "context", ctx(T0 + 8 * DAY, hosts=[host("10.6.0.2", T0 + 8 * DAY)]))  # the next week
    cfg = tmp_path / "agg.yaml"
    cfg.write_text(f"store: {store.path}\narchive: {tmp_path / 'archive'}\n")
    out = tmp_path / "report"
    p = subprocess.run([str(BIN / "ntds-aggregator"), "report", "weekly", "--week", "2026-W47", "-o", str(out),
                        "--config", str(cfg)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    news = json.loads((out / "report.json").read_text())["news"]
    assert news["from_store"] and news["notices_per_kind"] == {"new-host": 0, "new-service": 0, "new-application": 1}
    assert [(n["host"], n["what"]) for n in news["notices"]] == [("10.6.0.1", f"used {app} for the first time")]
    assert [(d["destination"], d["hosts"]) for d in news["new_destinations"]] == [("198.51.100.200", 1)]
    assert "10.6.0.1" in (out / "notices.csv").read_text()
    html = (out / "report.html").read_text()
    assert "&lt;b&gt;New&lt;/b&gt;App" in html and "<b>New</b>" not in html


def test_merged_context_leaves_the_store_and_retention_forgets(store):
    """Merged context messages are deleted two days after they arrived (the merged tables keep what they said);
    destinations and a host's days older than retention_days are forgotten."""
    put(store, "tap-a", "context", ctx(T0, [dest("198.51.100.7", ["10.0.0.1"], T0)], [host("10.0.0.1", T0)]))
    context.catch_up(store.db, SITES, now=time.time())
    assert store.count("context") == 1  # kept a while: just arrived
    put(store, "tap-a", "context", ctx(T0 + 3600, [dest("203.0.113.8", ["10.0.0.1"], T0 + 3600)]))
    context.catch_up(store.db, SITES, now=time.time() + 3 * DAY)
    assert store.count("context") == 0
    assert prevalence.lookup(store.db, SITES.sites, "address", "203.0.113.8").hosts == 1
    old = context.ContextOptions(retention_days=30)
    context.forget(store.db, old, now=T0 + 3600 + 31 * DAY)
    assert prevalence.lookup(store.db, SITES.sites, "address", "198.51.100.7") is None
    assert host_story.story(store.db, "10.0.0.1")["traffic"] == []


def test_the_alerts_command_says_prevalence(store, tmp_path):
    put(store, "tap-a", "context", ctx(T0 - 40 * DAY, [dest("142.250.9.9", [f"10.7.0.{i}" for i in range(60)],
                                                            T0 - 40 * DAY)]))  # fmt: skip
    put(store, "tap-a", "alert", alert("10.7.0.1", "142.250.9.9", T0, tier=4))
    cfg = tmp_path / "agg.yaml"
    cfg.write_text(f"store: {store.path}\n")
    cmd = [str(BIN / "ntds-aggregator"), "alerts", "--config", str(cfg)]
    p = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (a,) = map(json.loads, p.stdout.splitlines())
    assert a["tier"] == 4 and a["prevalence"]["tier"] == 3  # the sensor's tier, and the one with prevalence
    assert a["prevalence"]["words"] == "reached by 60 hosts at 1 of 1 site since 2026-10-07"
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "reached by 60 hosts at 1 of 1 site since 2026-10-07 (prevalence lowered the tier 4 -> 3" in p.stdout
