"""An intel alert in the alert manager, in headless Chromium (the helpers and fixtures of tests/test_ui.py): its
indicator, source and confidence shown, and every string that came from the network escaped, never run.

Skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing (`make test` installs them)."""

from __future__ import annotations

import pytest

from ntds.flows.traffic import FlowTraffic
from ntds.intel.alerts import intel_alert
from ntds.intel.indicators import Indicator
from tests.test_transport import wait
from tests.test_ui import SCRIPT, Site, browser, follow, login, pytestmark  # noqa: F401 - fixtures and the skip

ADDED = 1794800000.0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("ui-intel"))
    t = FlowTraffic(1794816000000, "10.9.0.5", "203.0.113.9", 50000, 443, 6, 10, 1000, 10, 2000, "TLS",
                    end_ms=1794816002000, server_name="www.evil.example")  # fmt: skip
    live = intel_alert(t, Indicator("domain", "evil.example", "feed " + SCRIPT, 85, ADDED), "server_name",
                       "www.evil.example", "test baseline")  # fmt: skip
    # what a compromised sensor could claim: markup in every string the page shows
    live["intel"][0]["value"] = "evil.example" + SCRIPT
    live["domain"] = "www." + SCRIPT
    t = FlowTraffic(1794816000000, "10.9.0.6", "203.0.113.9", 50001, 443, 6, 10, 1000, 10, 2000, "TLS",
                    end_ms=1794816002000)  # fmt: skip
    later = intel_alert(t, Indicator("ip", "203.0.113.9", "abuse.ch", 30, ADDED), "dst_ip", "203.0.113.9",
                        "test baseline", found_later=ADDED + 3600)  # fmt: skip
    s.agg.send([live, later])
    yield s
    s.stop()


def test_an_intel_alert_shows_indicator_source_and_confidence_escaped(site, browser):  # noqa: F811 - fixture
    from selenium.webdriver.common.by import By

    login(browser, site, "ana")
    wait(lambda: browser.get(site.base + "/?kind=intel") or len(browser.find_elements(By.CSS_SELECTOR, "a.alert-link"))
         == 2, 20, "the intel alerts in the queue")  # fmt: skip
    links = sorted(a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.alert-link"))
    pages = {}
    for href in links:
        browser.get(href)
        pages[browser.find_element(By.ID, "intel-indicator").text.split()[0]] = href
    browser.get(pages["domain"])
    assert browser.find_element(By.ID, "intel-indicator").text == "domain evil.example" + SCRIPT
    assert browser.find_element(By.ID, "intel-source").text == "feed " + SCRIPT
    assert browser.find_element(By.ID, "intel-confidence").text == "85/100 (tier 5)"
    assert "www." + SCRIPT in browser.find_element(By.ID, "identity").text
    assert not browser.find_elements(By.ID, "intel-found-later")
    assert "10.9.0.5:50000 → 203.0.113.9:443" in browser.find_element(By.ID, "flow").text
    # escaped and inert: the text is there, no element was made of it, nothing ran
    assert "&lt;script&gt;" in browser.page_source and browser.title != "pwned"
    assert not browser.find_elements(By.TAG_NAME, "script") and not browser.find_elements(By.CSS_SELECTOR, "img")
    # the retro-hunt's alert says it was found later, and its lower confidence gives a lower tier
    browser.get(pages["ip"])
    assert browser.find_element(By.ID, "intel-indicator").text == "ip 203.0.113.9"
    assert browser.find_element(By.ID, "intel-source").text == "abuse.ch"
    assert browser.find_element(By.ID, "intel-confidence").text == "30/100 (tier 2)"
    assert "retro-hunt" in browser.find_element(By.ID, "intel-found-later").text
    follow(browser, browser.find_element(By.ID, "history-audit"))  # the page's links still work
