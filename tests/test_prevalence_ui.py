"""Context in the alert manager, in headless Chromium (the helpers and fixtures of tests/test_ui.py): an alert
shows its destination's prevalence in words and how it moved the tier; a host page shows its chart (an image
drawn on the server), its applications, services, peers with their prevalence, and its notices; every string
from the network is escaped, nothing runs.

Context messages and alerts go over ZeroMQ to a real `serve`, whose context thread merges them.
Skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing (`make test` installs them)."""

from __future__ import annotations

import copy
import json
import sqlite3
import time

import pytest

from ntds import prevalence as sk
from ntds.times import iso_ms
from ntds.wire import schema as wire
from tests.test_transport import wait
from tests.test_ui import SCRIPT, Site, browser, follow, login, pytestmark  # noqa: F401 - fixtures and the skip

NOW = time.time()
HOST = "10.5.0.7"
COMMON = "142.250.1.1"
RARE = "198.51.100.66"
APP = "App" + SCRIPT


def _iso(t: float) -> str:
    return iso_ms(int(t * 1000))


def context_body(t: float, destinations: list, hosts: list) -> dict:
    return {"interval_start": iso_ms(int(t - t % 3600) * 1000, "seconds"), "interval_s": 3600,
            "destinations_omitted": 0, "hosts_omitted": 0,
            "packed": wire.pack({"destinations": destinations, "hosts": hosts})}  # fmt: skip


def host_body(t: float, apps: list[str], services: list, peers: list[str]) -> dict:
    ms = int(t * 1000)
    return {"host": HOST, "first_ms": ms, "last_ms": ms + 5000, "flows": 40, "bytes_up": 2_000_000,
            "bytes_down": 30_000_000, "applications": [{"application": a, "flows": 3} for a in apps],
            "services": [{"protocol": 6, "port": p, "application": a, "flows": 2} for p, a in services],
            "peers": [{"peer": p, "flows": 4, "bytes": 5000} for p in peers]}  # fmt: skip


def beacon(dst: str, t: float, tier: int) -> dict:
    a = copy.deepcopy(wire.EXAMPLES["alert"])
    a |= {"kind": "beacon", "signature": f"Beacon {HOST} -> {dst}", "src_ip": HOST, "dst_ip": dst,
          "first_seen": _iso(t), "last_seen": _iso(t + 600), "tier": tier, "flows": [], "flows_total": 0,
          "features": {}, "baseline": "detector"}  # fmt: skip
    return a


def send(site: Site, kind: str, bodies: list[dict]) -> None:
    """Like the sensor's link: each message spooled and acknowledged (tests.test_broadcast.Aggregator.send, any
    type)."""
    agg = site.agg
    want = []
    for body in bodies:
        agg.seq += 1
        want.append(agg.seq)
        agg.dealer.send(wire.encode(wire.Message(kind, "tap-01", agg.seq, wire.now_iso(), body, "0123456789abcdef")))
    got: set[int] = set()
    end = time.monotonic() + 30
    while time.monotonic() < end and not set(want) <= got:
        if agg.dealer.poll(100):
            got |= set(wire.decode(agg.dealer.recv()).body["seqs"])
    assert set(want) <= got, "the aggregator did not acknowledge"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("ui-context"), notices_learning_days=0)
    old = NOW - 40 * 86400
    common_hosts = [HOST] + [f"10.5.1.{i}" for i in range(1, 60)]
    d = {"kind": "address", "key": COMMON, "first_ms": int(old * 1000), "last_ms": int(old * 1000) + 1000,
         "flows": 60, "sketch": sk.encode(sk.sketch_of(common_hosts))}  # fmt: skip
    send(s, "context", [context_body(old, [d], [host_body(old, ["TLS"], [(22, "SSH")], [COMMON])])])
    later = NOW - 3 * 3600
    send(s, "context", [context_body(later, [], [host_body(later, ["TLS", APP], [(22, "SSH"), (8080, APP)],
                                                          [COMMON, RARE])])])  # fmt: skip
    send(s, "alert", [beacon(RARE, NOW - 2 * 3600, 3), beacon(COMMON, NOW - 2 * 3600, 3)])
    yield s
    s.stop()


def _alert_id(site: Site, dst: str) -> int:
    with sqlite3.connect(f"file:{site.store}?mode=ro", uri=True, timeout=10) as db:
        return db.execute("SELECT id FROM alerts WHERE dst_ip = ?", (dst,)).fetchone()[0]


def test_an_alert_shows_prevalence_and_the_tier_it_moved(site, browser):  # noqa: F811 - fixture
    from selenium.webdriver.common.by import By

    login(browser, site, "ana")
    rare, common = _alert_id(site, RARE), _alert_id(site, COMMON)
    wait(lambda: browser.get(f"{site.base}/alerts/{rare}") or browser.find_elements(By.ID, "prevalence"), 30,
         "the alert's prevalence (serve's context thread)")  # fmt: skip
    assert browser.find_element(By.ID, "prevalence-destination").text == f"address {RARE}"
    assert browser.find_element(By.ID, "prevalence-words").text == (
        "reached by 1 host at 1 of 1 site; first seen 2 hours ago"
    )
    assert browser.find_element(By.ID, "prevalence-tier").text == "3 from the sensor, 4 with prevalence"
    why = browser.find_element(By.ID, "explanation-prevalence").text
    assert why.startswith("prevalence raised the tier 3 -> 4: rare and new: 1 host (at most 2)")
    browser.get(f"{site.base}/alerts/{common}")
    assert browser.find_element(By.ID, "prevalence-words").text.startswith("reached by 60 hosts at 1 of 1 site since ")
    assert browser.find_element(By.ID, "prevalence-tier").text == "3 from the sensor, 2 with prevalence"
    assert "prevalence lowered the tier 3 -> 2: common and old" in browser.find_element(By.ID, "explanation").text


def test_the_host_page_shows_its_story_chart_and_notices_escaped(site, browser):  # noqa: F811 - fixture
    from selenium.webdriver.common.by import By

    login(browser, site, "vic")
    wait(lambda: browser.get(f"{site.base}/hosts/{HOST}") or "new application" in browser.find_element(
        By.ID, "host-notices").text, 30, "the host's notices")  # fmt: skip
    chart = browser.find_element(By.ID, "host-chart")
    assert chart.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", chart) > 300  # a real picture, decoded
    notices = browser.find_element(By.ID, "host-notices").text
    assert f"new application: used {APP} for the first time" in notices
    assert f"new service: answered on TCP/8080 ({APP}) for the first time" in notices
    assert "new host: first seen by sensor tap-01" in notices
    assert APP in browser.find_element(By.ID, "host-applications").text
    services = browser.find_element(By.ID, "host-services").text
    assert "TCP/22 (SSH)" in services and f"TCP/8080 ({APP})" in services
    peers = browser.find_element(By.ID, "host-peers").text
    assert COMMON in peers and "reached by 60 hosts at 1 of 1 site since" in peers
    assert "Beacon 10.5.0.7 -> 198.51.100.66" in browser.find_element(By.ID, "host-alerts").text
    # escaped and inert: the text is there, no element was made of it, nothing ran
    assert "&lt;script&gt;" in browser.page_source and browser.title != "pwned"
    assert not browser.find_elements(By.TAG_NAME, "script")
    assert len(browser.find_elements(By.TAG_NAME, "img")) == 1  # the chart alone: the markup's img was not made
    browser.get(f"{site.base}/api/hosts/{HOST}")  # the same story for scripts
    api = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert {a["application"] for a in api["story"]["applications"]} == {"TLS", APP}
    assert sorted(n["kind"] for n in api["notices"]) == ["new-application", "new-host", "new-service"]
    assert "chart" not in api
