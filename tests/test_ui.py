"""The alert manager in headless Chromium (Selenium, Debian's chromium and chromium-driver), against a real
`ntds-aggregator ui` process, a real `serve` that broadcasts to an EVE file, and alerts sent over ZeroMQ.

Skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing (`make test` installs them)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_broadcast import Aggregator, finding
from tests.test_transport import free_port, wait

BIN = Path(sys.executable).parent
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and DRIVER.exists()), reason="chromium/chromedriver missing")
SCRIPT = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"


class Site:
    """`serve` and `ui` on one store, with an analyst (ana) and a viewer (vic); `settings` go to aggregator.yaml."""

    def __init__(self, root: Path, **settings) -> None:
        self.root = root
        self.eve = root / "eve.json"
        self.ui_port = free_port()
        self.agg = Aggregator(root, [{"name": "eve", "type": "eve", "path": str(self.eve)}],
                              [{"receivers": ["eve"], "group_wait_s": 0, "group_by": ["src_ip"]}],
                              ui_listen=f"127.0.0.1:{self.ui_port}", reports=str(root / "reports"),
                              **settings)  # fmt: skip
        self.store = Path(settings.get("store", self.agg.store))
        self.agg.start()
        self.base = f"http://127.0.0.1:{self.ui_port}"
        for name, role in (("ana", "analyst"), ("vic", "viewer")):
            pw = root / f"{name}.pw"
            pw.write_text("correct horse battery staple\n")
            p = subprocess.run([str(BIN / "ntds-aggregator"), "user", "add", name, "--role", role, "--password-file",
                                str(pw), "--config", str(self.agg.config)], capture_output=True, text=True)  # fmt: skip
            assert p.returncode == 0, p.stderr
        (root / "reports" / "report-2026-W47").mkdir(parents=True)
        (root / "reports" / "report-2026-W47" / "report.html").write_text("<html><body>weekly W47</body></html>")
        self.ui = subprocess.Popen([str(BIN / "ntds-aggregator"), "ui", "--config", str(self.agg.config)],
                                   stderr=(root / "ui.log").open("w"))  # fmt: skip
        wait(lambda: _up(self.base), 30, "the UI")

    def stop(self) -> None:
        self.ui.terminate()
        self.ui.wait(20)
        self.agg.stop()


def _up(base: str) -> bool:
    try:
        urllib.request.urlopen(base + "/login", timeout=1)
        return True
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("ui"))
    bodies = [finding(k) for k in range(6)]
    bodies.append(finding(6, kind="beacon", tier=4, signature="Beacon " + SCRIPT))
    bodies.append(finding(7, kind="dns-tunnel", tier=5))
    s.agg.send(bodies)
    wait(lambda: s.eve.exists() and len(s.eve.read_text().splitlines()) == 8, 20, "the first broadcast")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def login(browser, site: Site, name: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(site.base + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "password").send_keys("correct horse battery staple")
    follow(browser, browser.find_element(By.ID, "login"))
    wait(lambda: browser.find_elements(By.ID, "queue"), 10, "the queue")


def follow(browser, element) -> None:
    """Click what submits a form or follows a link, and wait until the next page has replaced this one (a click
    returns before a POST and its redirect have finished loading)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")

    def replaced(_) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:  # asked while the old page is torn down, chromedriver says it this way
            if "does not belong to the document" in str(e):
                return True
            raise
        return False

    element.click()
    WebDriverWait(browser, 15).until(replaced)


def rows(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#queue tr")[1:]]


def test_analyst_triages_filters_silences_and_expires(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    login(browser, site, "ana")
    assert len(rows(browser)) == 8
    # filter: one kind
    Select(browser.find_element(By.ID, "f-kind")).select_by_visible_text("beacon")
    follow(browser, browser.find_element(By.ID, "apply"))
    assert [r.split()[1] for r in rows(browser)] == ["beacon"]
    # the hostile signature is text: shown, escaped, never run
    assert SCRIPT in browser.find_element(By.ID, "queue").text and browser.title != "pwned"
    assert "&lt;script&gt;" in browser.page_source
    # open it: flow identity source -> destination, the explanation, the baseline, the host's timeline
    follow(browser, browser.find_element(By.CSS_SELECTOR, "a.alert-link"))
    assert browser.find_element(By.ID, "flow").text.startswith("10.9.0.7 → 10.9.255.1")
    assert "20 ports failed" in browser.find_element(By.ID, "explanation").text
    assert "detector, test baseline" in browser.find_element(By.ID, "baseline").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline tr")) == 2
    # acknowledge with a comment: the status changes, the history and the audit log say who and why
    Select(browser.find_element(By.ID, "action")).select_by_visible_text("acknowledge")
    browser.find_element(By.ID, "comment").send_keys("known scanner, ticket 42")
    follow(browser, browser.find_element(By.ID, "do"))
    assert browser.find_element(By.ID, "status").text == "acknowledged"
    assert "known scanner, ticket 42" in browser.find_element(By.ID, "history").text
    browser.get(site.base + "/audit")
    assert "ana acknowledge" in browser.find_element(By.ID, "audit").text
    # a silence on port scans from 10.9.0.0/24: new matching alerts are hidden and not broadcast
    browser.get(site.base + "/silences?kind=port-scan&host=10.9.0.0/24")
    browser.find_element(By.ID, "s-reason").send_keys("authorised pentest")
    follow(browser, browser.find_element(By.ID, "s-create"))
    assert "active" in browser.find_element(By.ID, "silences").text
    site.agg.send([finding(20), finding(21, kind="brute-force")])  # 10.9.0.21 port-scan, 10.9.0.22 brute force
    wait(lambda: "10.9.0.22" in site.eve.read_text(), 20, "the unsilenced alert's broadcast")
    time.sleep(1)
    assert "10.9.0.21" not in site.eve.read_text()
    browser.get(site.base + "/")
    shown = "\n".join(rows(browser))
    assert "10.9.0.22" in shown and "10.9.0.21" not in shown and "10.9.0.1 " not in shown
    browser.get(site.base + "/?silenced=1")
    assert "10.9.0.21" in "\n".join(rows(browser))
    # expire it: later alerts show and go out again
    browser.get(site.base + "/silences")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "button.revoke"))
    assert "revoked by ana" in browser.find_element(By.ID, "silences").text
    site.agg.send([finding(23)])
    wait(lambda: "10.9.0.24" in site.eve.read_text(), 20, "the broadcast after the silence")
    browser.get(site.base + "/")
    assert "10.9.0.24" in "\n".join(rows(browser))
    # sensors and reports pages
    browser.get(site.base + "/sensors")
    assert "tap-01" in browser.find_element(By.ID, "sensors").text
    browser.get(site.base + "/reports")
    follow(browser, browser.find_element(By.LINK_TEXT, "report-2026-W47"))
    assert "weekly W47" in browser.page_source


def test_a_viewer_reads_but_cannot_change_anything(site, browser):
    from selenium.webdriver.common.by import By

    login(browser, site, "vic")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "a.alert-link"))
    assert not browser.find_elements(By.ID, "act")  # no action form
    cookie = browser.get_cookie("ntds_session")["value"]
    me = _request(site, "/api/me", cookie=cookie)
    code, body = _request(site, "/api/alerts/action", cookie=cookie, csrf=me[1]["csrf"],
                          data={"id": [1], "action": "close"})  # fmt: skip
    assert code == 403 and "read-only" in body["error"]
    code, body = _request(site, "/api/silences", cookie=cookie, csrf=me[1]["csrf"],
                          data={"kind": "beacon", "hours": 1, "reason": "x"})  # fmt: skip
    assert code == 403


def test_requests_without_a_session_or_csrf_token_are_refused(site, browser):
    login(browser, site, "ana")
    cookie = browser.get_cookie("ntds_session")["value"]
    assert _request(site, "/api/queue")[0] == 401
    assert _request(site, "/api/alerts/action", data={"id": [1], "action": "close"})[0] == 401
    code, body = _request(site, "/api/alerts/action", cookie=cookie, data={"id": [1], "action": "close"})
    assert code == 403 and "CSRF" in body["error"]
    # a script with an API token (no cookie, no CSRF) can act, and the audit log names it
    token = subprocess.run([str(BIN / "ntds-aggregator"), "user", "token", "ana", "--config", str(site.agg.config)],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    code, body = _request(site, "/api/alerts/action", bearer=token,
                          data={"id": [2], "action": "close", "comment": "from a script"})  # fmt: skip
    assert code == 200 and body["changed"] == 1
    audit = _request(site, "/api/audit", bearer=token)[1]["audit"]
    assert audit[0]["user"] == "ana" and audit[0]["comment"] == "from a script"
    assert _request(site, "/api/queue", bearer="not-a-token")[0] == 401
    # the session cookie is HttpOnly and SameSite=Strict; the pages forbid scripts
    with urllib.request.urlopen(site.base + "/login") as r:
        assert "script-src 'none'" in r.headers["Content-Security-Policy"]
        assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]


def test_metrics_endpoint(site):
    with urllib.request.urlopen(site.base + "/metrics") as r:
        text = r.read().decode()
    assert re.search(r'ntds_messages_stored_total\{type="alert"\} \d+', text)
    assert 'ntds_alerts_total{kind="beacon",tier="4"} 1.0' in text
    assert re.search(r'ntds_broadcast_deliveries\{receiver="eve",status="delivered"\} \d+', text)
    assert 'ntds_sensor_last_seen_seconds{sensor="tap-01"}' in text


def _request(site: Site, path: str, cookie: str = "", csrf: str = "", bearer: str = "", data=None):
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = f"ntds_session={cookie}"
    if csrf:
        headers["X-CSRF-Token"] = csrf
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(site.base + path, data=body, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
