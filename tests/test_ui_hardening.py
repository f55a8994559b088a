"""The alert manager against its own users (issue 23, items 9 to 13), on real processes and sockets: a real
`ntds-aggregator serve` fed alerts over ZeroMQ, a real `ntds-aggregator ui`, and HTTP clients on 127.0.0.1.

- logins: back-off and temporary locks per account, per address and per browser, documented numbers, a browser
  that logged in before is never locked out by someone else's guesses, one-time passwords spent once by parallel
  logins and expiring, failures in the login log, the UI's log and /metrics, never in the audit log;
- the audit log: paged, filtered by actor, action and alert; an alert's history complete under thousands of rows;
- bad input on every route, parameter and JSON body: a 4xx with one line, never a traceback;
- assignees are known users on every action; a password change ends API tokens; `user token --days -5` refused;
- a full disk (a small tmpfs, as root): a 503 with one line, and everything works again once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from aggregator.manager import Manager, User, connect
from tests.test_broadcast import finding
from tests.test_ui import Site

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"


class Client:
    """One HTTP client with its own cookies (a browser, or an attacker's script); never follows redirects."""

    def __init__(self, site: Site) -> None:
        self.port = site.ui_port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
                form: dict | None = None) -> tuple[int, dict, str]:  # fmt: skip
        headers = dict(headers or {})
        if form is not None:
            body = urllib.parse.urlencode(form, doseq=True)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if isinstance(body, str):
            body = body.encode()
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            got = {k.lower(): v for k, v in r.getheaders()}
            for cookie in r.headers.get_all("Set-Cookie") or []:
                name, _, rest = cookie.partition("=")
                value = rest.split(";", 1)[0]
                if "Max-Age=0" in cookie or not value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            return r.status, got, text
        finally:
            conn.close()

    def login_form(self) -> str:
        status, _, text = self.request("GET", "/login")
        assert status == 200
        return re.search(r'name="csrf" value="([^"]+)"', text).group(1)

    def login(self, name: str, password: str = PASSWORD, csrf: str | None = None) -> tuple[int, dict, str]:
        csrf = csrf or self.login_form()
        return self.request("POST", "/login", form={"csrf": csrf, "name": name, "password": password, "next": "/"})

    def api(self, method: str, path: str, data=None, token: str = "") -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif method != "GET":
            headers["X-CSRF-Token"] = self.csrf()
        body = data if isinstance(data, str | bytes) or data is None else json.dumps(data)
        status, _, text = self.request(method, path, body, headers)
        return status, json.loads(text or "{}")

    def csrf(self) -> str:
        status, _, text = self.request("GET", "/api/me")
        assert status == 200, text
        return json.loads(text)["csrf"]


def cli(site: Site, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ntds-aggregator"), *args, "--config", str(config or site.agg.config)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def one_line_error(status: int, headers: dict, text: str) -> str:
    """The refusal's one line (JSON error or the error page's message); fails on a traceback or several lines."""
    assert "Traceback" not in text
    if headers.get("content-type", "").startswith("application/json"):
        error = json.loads(text)["error"]
    else:
        found = re.findall(r'<p class="error" id="(?:error|login-error)">(.*?)</p>', text, re.S)
        assert len(found) == 1, text[:500]
        error = found[0]
    assert error and "\n" not in error and "\r" not in error, error
    return error


def metric(site: Site, name: str) -> float:
    status, _, text = Client(site).request("GET", "/metrics")
    assert status == 200
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@contextlib.contextmanager
def running(root: Path, **settings):
    root.mkdir(parents=True, exist_ok=True)
    site = Site(root, **settings)
    try:
        site.agg.send([finding(k) for k in range(4)] + [finding(4, kind="beacon", tier=4)])
        with sqlite3.connect(site.store, timeout=30) as db:
            assert db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 5
        yield site
    finally:
        site.stop()


def alert_ids(client: Client) -> list[int]:
    status, body = client.api("GET", "/api/alerts?status=all")
    assert status == 200
    return sorted(a["id"] for a in body["alerts"])


# -- item 10: logins ----------------------------------------------------------------------------------------------


def test_guessing_one_account_backs_off_locks_and_never_keeps_its_user_out(tmp_path):
    policy = {"account_failures": 5, "address_failures": 1000, "lock_s": 5, "max_lock_s": 8}
    with running(tmp_path, ui_login=policy) as site:
        analyst = Client(site)
        assert analyst.login("ana")[0] == 302  # her browser: it has logged in to ana before (device cookie)
        analyst.cookies.pop("ntds_session")
        attacker = Client(site)
        answers = []
        for _ in range(25):
            status, headers, text = attacker.login("ana", "password123456")
            answers.append(status)
            if status == 429:
                assert 1 <= int(headers["retry-after"]) <= 5
                assert "too many failed logins" in one_line_error(status, headers, text)
        assert answers == [401] * 5 + [429] * 20  # five guesses, then nothing is even checked
        assert "ntds_device" in analyst.cookies
        status, _, _ = attacker.login("ana")  # locked means locked: even the right password is refused
        assert status == 429
        # ... but not for the browser ana logged in from: the attacker cannot keep her out
        assert analyst.login("ana")[0] == 302
        # failures are in the login log, the UI's log and the metrics; the audit log holds operators' actions only
        logins = analyst.api("GET", "/api/logins?name=ana&limit=1000")[1]
        wrong = [x for x in logins["logins"] if x["outcome"] == "wrong"]
        assert len(wrong) == 5 and all(x["address"] == "127.0.0.1" for x in wrong)
        lock = next(x for x in logins["locks"] if x["key"] == "account:ana")
        assert lock["failures"] == 5 and lock["refused"] == 21
        audit = analyst.api("GET", "/api/audit?limit=1000")[1]["audit"]
        assert all(x["action"] in ("login", "user add") for x in audit)
        log = (site.root / "ui.log").read_text()
        assert "login refused (wrong) for ana from 127.0.0.1" in log
        assert "logins locked for account:ana for 5 s after 5 failures" in log
        assert metric(site, 'ntds_ui_logins_total{outcome="wrong"}') == 5
        assert metric(site, 'ntds_ui_logins_total{outcome="locked"}') == 21
        assert metric(site, 'ntds_ui_logins_total{outcome="ok"}') == 2
        assert metric(site, "ntds_ui_login_lockouts_total") == 1
        assert metric(site, 'ntds_ui_login_locked{kind="account"}') == 1
        # the lock is temporary: after it, the next guess is checked (and a wrong one locks twice as long, at most
        # max_lock_s)
        time.sleep(max(0.0, lock["until"] - time.time()) + 0.2)
        status, headers, _ = attacker.login("ana", "password123456")
        assert status == 401
        status, headers, _ = attacker.login("ana", "password123456")
        assert status == 429 and 6 <= int(headers["retry-after"]) <= 8
        time.sleep(int(headers["retry-after"]) + 0.5)
        assert attacker.login("ana")[0] == 302  # the right password, once the lock is over
        assert Client(site).api("GET", "/api/logins")[0] == 401  # nobody reads the log without logging in


def test_guessing_from_one_address_locks_the_address_for_every_account(tmp_path):
    policy = {"account_failures": 5, "address_failures": 8, "lock_s": 30, "max_lock_s": 60}
    with running(tmp_path, ui_login=policy) as site:
        analyst = Client(site)
        assert analyst.login("ana")[0] == 302
        analyst.cookies.pop("ntds_session")
        attacker = Client(site)
        answers = [attacker.login(f"user{k}", "password123456")[0] for k in range(8)]  # one guess per name
        assert answers == [401] * 8
        status, headers, text = attacker.login("vic")  # the address is locked: any account, any password
        assert status == 429 and "too many failed logins" in one_line_error(status, headers, text)
        assert Client(site).login("vic")[0] == 429  # a new client from the same address too
        assert analyst.login("ana")[0] == 302  # a browser that logged in to ana before is not locked out
        locks = analyst.api("GET", "/api/logins")[1]["locks"]
        assert [x["key"] for x in locks] == ["address:127.0.0.1"]
        assert metric(site, 'ntds_ui_login_locked{kind="address"}') == 1
        unknown = analyst.api("GET", "/api/logins?outcome=wrong")[1]["logins"]
        assert {x["name"] for x in unknown} == {f"user{k}" for k in range(8)}
        assert {x["detail"] for x in unknown} == {"unknown name"}


def test_a_one_time_password_gives_one_session_to_parallel_logins_and_expires(tmp_path):
    with running(tmp_path) as site:
        p = cli(site, "user", "add", "newbie", "--one-time")
        assert p.returncode == 0, p.stderr
        password = p.stdout.strip()
        clients = [Client(site) for _ in range(6)]
        forms = [c.login_form() for c in clients]
        start = threading.Barrier(len(clients))
        answers: list[int] = [0] * len(clients)

        def attempt(k: int) -> None:
            start.wait()
            answers[k] = clients[k].login("newbie", password, forms[k])[0]

        threads = [threading.Thread(target=attempt, args=(k,)) for k in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(answers)[0] == 302 and answers.count(302) == 1, answers
        assert "within 24 hours" in p.stderr
        assert set(answers) <= {302, 401, 429}
        winner = clients[answers.index(302)]
        assert winner.api("GET", "/api/me")[1]["name"] == "newbie"
        assert sum(bool(c.cookies.get("ntds_session")) for c in clients) == 1
        assert Client(site).login("newbie", password)[0] in (401, 429)  # spent
        outcomes = [x["outcome"] for x in winner.api("GET", "/api/logins?name=newbie")[1]["logins"]]
        assert outcomes.count("ok") == 1
        # a one-time password expires (one_time_hours, here about a second, from a second configuration)
        short = site.root / "short.yaml"
        short.write_text(site.agg.config.read_text() + "ui_login: {one_time_hours: 0.0003}\n")
        p = cli(site, "user", "add", "late", "--one-time", config=short)
        assert p.returncode == 0, p.stderr
        time.sleep(1.5)
        status, headers, text = Client(site).login("late", p.stdout.strip())
        assert status == 401 and "expired" in one_line_error(status, headers, text)
        analyst = Client(site)
        assert analyst.login("ana")[0] == 302
        late = analyst.api("GET", "/api/logins?name=late")[1]["logins"]
        assert [x["outcome"] for x in late] == ["expired"]


# -- item 11: the audit log ---------------------------------------------------------------------------------------


def test_the_audit_log_is_paged_and_filtered_and_an_alert_history_is_complete(tmp_path):
    with running(tmp_path) as site:
        analyst = Client(site)
        assert analyst.login("ana")[0] == 302
        ids = alert_ids(analyst)
        target, other = ids[0], ids[1]
        status, body = analyst.api(
            "POST",
            "/api/alerts/action",
            {"id": [target], "action": "escalate", "comment": "real intrusion, IR ticket 7"},
        )
        assert status == 200 and body["changed"] == 1
        # then a long log: thousands of actions on another alert (a busy shift), by the product's own code on the
        # running UI's store (through HTTP it would only be slower)
        busy = Manager(connect(site.store))
        busy.db.execute("PRAGMA synchronous=OFF")
        for k in range(2600):
            busy.act([other], "acknowledge", User("vic", "analyst"), f"row {k}")
        busy.db.close()
        for _ in range(30):  # and anonymous guessing, which must not bury anything
            Client(site).login("ana", "password123456")
        # the alert's history (page and API) has the escalation, however far back it is
        status, _, page = analyst.request("GET", f"/alerts/{target}")
        assert status == 200 and "real intrusion, IR ticket 7" in page.split('id="history"')[1]
        history = analyst.api("GET", f"/api/alerts/{target}")[1]["history"]
        assert [(x["user"], x["action"]) for x in history] == [("ana", "escalate")]
        assert len(analyst.api("GET", f"/api/alerts/{other}")[1]["history"]) == 2600
        # filtered by alert, by actor, by action
        rows = analyst.api("GET", f"/api/audit?alert={target}")[1]["audit"]
        assert [x["comment"] for x in rows] == ["real intrusion, IR ticket 7"]
        rows = analyst.api("GET", "/api/audit?user=ana&action=escalate")[1]["audit"]
        assert [x["target"] for x in rows] == [f"alert {target}"]
        assert analyst.api("GET", "/api/audit?user=vic&action=escalate")[1]["audit"] == []
        # paged: following `next` walks the whole log once, newest first
        seen, before = [], ""
        while True:
            status, body = analyst.api("GET", f"/api/audit?limit=500{before}")
            assert status == 200 and len(body["audit"]) <= 500
            seen += [x["id"] for x in body["audit"]]
            if body["next"] is None:
                break
            before = f"&before={body['next']}"
        with sqlite3.connect(site.store) as db:
            everything = [i for (i,) in db.execute("SELECT id FROM audit ORDER BY id DESC")]
        assert seen == everything and len(seen) > 2600
        # the page: filters and an "older" link
        status, _, page = analyst.request("GET", "/audit?user=vic&limit=50")
        assert status == 200 and page.count("<td>vic</td>") == 50
        older = re.search(r'id="older" href="([^"]+)"', page).group(1).replace("&amp;", "&")
        assert "user=vic" in older and "before=" in older
        status, _, page = analyst.request("GET", older)
        assert status == 200 and page.count("<td>vic</td>") == 50
        assert "login refused" not in json.dumps(analyst.api("GET", "/api/audit?limit=1000")[1])


# -- item 12: bad input -------------------------------------------------------------------------------------------

BAD_IDS = ["99999999999999999999", "9223372036854775808", "0", "-1", "1e308", "abc", "%00"]
BAD_BODIES = ["[1]", '"x"', "null", "1", "{", b"\xff", b"\xff\xfe{}", '{"id": [1e308], "action": "close"}',
              '{"id": [Infinity], "action": "close"}', '{"id": [NaN], "action": "close"}',
              '{"id": [1234567890123456789012345], "action": "close"}', '{"id": "x", "action": "close"}',
              '{"id": [true], "action": "close"}', '{"id": [[1]], "action": "close"}', '{"id": {"a": 1}}',
              '{"id": [1], "action": {"a": 1}}', '{"id": [1], "action": "close", "comment": [1]}',
              '{"id": [1], "action": "nuke"}', '{"id": [], "action": "close"}',
              '{"kind": ["a"], "hours": 1, "reason": "x"}', '{"kind": "a", "hours": true, "reason": "x"}',
              '{"kind": "a", "hours": 1e400, "reason": "x"}', '{"kind": "a", "hours": "NaN", "reason": "x"}',
              '{"host": "not-an-address", "hours": 1, "reason": "x"}', '{"kind": "a", "hours": 1, "reason": 5}',
              '{"comment": {"a": 1}}', "[" * 100_000 + "]" * 100_000]  # fmt: skip
BAD_QUERIES = ["limit=abc", "limit=0", f"limit={10**30}", "min_tier=-1", "min_tier=9", "since=garbage",
               "until=0001-01-01T00:00%2B23:59", "status=zzz", "before=-1", "before=1e9", "alert=1e308",
               f"alert={10**25}", "limit=1%00", "user=%ff%fe", "silenced=%0d%0a"]  # fmt: skip
ROUTES = {  # every route of the UI, with how the sweep reaches it
    "/login", "/logout", "/favicon.ico", "/", "/api/queue", "/api/alerts", "/alerts/<id:alert_id>",
    "/api/alerts/<id:alert_id>", "/alerts/<id:alert_id>/packets", "/api/alerts/<id:alert_id>/packets",
    "/pcap-jobs/<id:job_id>/download", "/api/pcap-jobs/<id:job_id>/download", "/alerts/action",
    "/api/alerts/action", "/hosts/<ip>", "/api/hosts/<ip>", "/sensors", "/api/sensors", "/silences",
    "/silences/<id:silence_id>/revoke", "/api/silences", "/api/silences/<id:silence_id>/revoke", "/reports",
    "/api/reports", "/reports/<name>/<path:file>", "/deliveries", "/api/deliveries", "/audit", "/api/audit",
    "/logins", "/api/logins", "/api/me", "/metrics",
}  # fmt: skip


def test_the_sweep_covers_every_route(tmp_path):
    from aggregator.config import load
    from aggregator.ui.app import create_app

    config = tmp_path / "agg.yaml"
    config.write_text(f"store: {tmp_path / 'store.db'}\n")
    assert {r.rule for r in create_app(load(config, insecure=True)).url_map.iter_rules()} == ROUTES


def test_bad_input_on_every_route_is_a_4xx_with_one_line(tmp_path):
    with running(tmp_path) as site:
        analyst, viewer = Client(site), Client(site)
        assert analyst.login("ana")[0] == 302 and viewer.login("vic")[0] == 302
        csrf = analyst.csrf()
        token = cli(site, "user", "token", "ana").stdout.strip()
        alert = alert_ids(analyst)[0]
        refused: list[tuple[str, int]] = []

        def bad(client: Client, method: str, path: str, body=None, headers=None, form=None, want=None) -> None:
            status, got, text = client.request(method, path, body, headers, form)
            assert 400 <= status < 500, (method, path, body if body is None else str(body)[:80], status, text[:300])
            if want is not None:
                assert status == want, (method, path, status)
            one_line_error(status, got, text)
            refused.append((path, status))

        api = {"Content-Type": "application/json", "X-CSRF-Token": csrf}
        for i in BAD_IDS:
            for path in (f"/alerts/{i}", f"/api/alerts/{i}", f"/alerts/{i}/packets", f"/api/alerts/{i}/packets",
                         f"/pcap-jobs/{i}/download", f"/api/pcap-jobs/{i}/download"):  # fmt: skip
                bad(analyst, "GET", path)
            for path in (f"/alerts/{i}/packets", f"/api/alerts/{i}/packets", f"/api/silences/{i}/revoke"):
                bad(analyst, "POST", path, "{}", api)
            bad(analyst, "POST", f"/silences/{i}/revoke", form={"csrf": csrf})
        for path in ("/alerts/99999999/packets", "/api/pcap-jobs/99999999/download", "/api/silences/99999999/revoke"):
            bad(analyst, "POST" if "revoke" in path else "GET", path, "{}" if "revoke" in path else None, api)
        for body in BAD_BODIES:
            for path in ("/api/alerts/action", "/api/silences", f"/api/silences/{10**6}/revoke"):
                bad(analyst, "POST", path, body, api)
                bad(analyst, "POST", path, body, {"Authorization": f"Bearer {token}"})
        for query in BAD_QUERIES:
            for path in ("/", "/api/queue", "/api/alerts", "/audit", "/api/audit", "/logins", "/api/logins",
                         "/deliveries", "/api/deliveries"):  # fmt: skip
                status, got, text = analyst.request("GET", f"{path}?{query}")
                assert status == 200 or 400 <= status < 500, (path, query, status, text[:300])
                if status != 200:
                    one_line_error(status, got, text)
                    refused.append((path, status))
        for form in ({"id": "1e308"}, {"id": "99999999999999999999"}, {"id": "x"}, {"id": []},
                     {"id": str(alert), "action": "nuke"}, {"id": str(alert), "action": "close", "assignee": "\x00"},
                     {"id": str(alert), "action": "assign"}):  # fmt: skip
            bad(analyst, "POST", "/alerts/action", form={"csrf": csrf, "action": "close"} | form)
        for form in ({"kind": "a", "hours": "inf", "reason": "x"}, {"hours": "1", "reason": "x"},
                     {"kind": "a", "hours": "1"}, {"host": "10.0.0.0/99", "hours": "1", "reason": "x"}):  # fmt: skip
            bad(analyst, "POST", "/silences", form={"csrf": csrf} | form)
        for ip in ("not-an-ip", "1.2.3.4.5", "%0d%0a", "x" * 3000):
            bad(analyst, "GET", f"/hosts/{ip}")
            bad(analyst, "GET", f"/api/hosts/{ip}")
        for path in ("/reports/nothing/report.html", "/reports/../../etc/passwd", "/reports/x/%00", "/nowhere"):
            bad(analyst, "GET", path)
        # CSRF tokens, cookies and headers that are not even ASCII; wrong methods; a body over the limit
        bad(analyst, "POST", "/api/alerts/action", "{}", {"X-CSRF-Token": "é" * 40}, want=403)
        bad(Client(site), "POST", "/login", form={"csrf": "é", "name": "ana", "password": "x"},
            headers={"Cookie": "ntds_login=%C3%A9"}, want=403)  # fmt: skip
        bad(Client(site), "POST", "/login", form={"csrf": "é", "name": "ana", "password": "x"},
            headers={"Cookie": "ntds_login=é"})  # fmt: skip
        bad(analyst, "PUT", "/api/queue", headers={"X-CSRF-Token": csrf}, want=405)
        bad(analyst, "DELETE", "/alerts/action", headers={"X-CSRF-Token": csrf}, want=405)
        bad(analyst, "POST", "/api/alerts/action", "{" + " " * (2 << 20) + "}", api, want=413)
        bad(viewer, "POST", f"/api/alerts/{alert}/packets", "{}", {"X-CSRF-Token": viewer.csrf()}, want=403)
        bad(viewer, "GET", f"/alerts/{alert}/packets", want=403)
        # redirects with CR/LF or to other sites go to the queue instead
        for target in ("/x\r\nSet-Cookie: evil=1", "//evil.example", "/\\evil.example", "https://evil.example",
                       "/%0d%0aX: y", "\x00"):  # fmt: skip
            status, got, text = analyst.request("GET", "/login?next=" + urllib.parse.quote(target))
            assert status == 200 and "evil=1" not in text.split('name="next"')[1][:60]
            status, got, _ = analyst.request("POST", "/alerts/action",
                                             form={"csrf": csrf, "id": str(alert), "action": "acknowledge",
                                                   "back": target})  # fmt: skip
            assert status == 302 and got["location"] == "/", (target, got)
            status, got, _ = (c := Client(site)).request("POST", "/login", form={
                "csrf": c.login_form(), "name": "ana", "password": PASSWORD, "next": target})  # fmt: skip
            assert status == 302 and got["location"] == "/" and "evil" not in json.dumps(got)
        assert len(refused) > 300
        log = (site.root / "ui.log").read_text()
        assert "Traceback" not in log and " 500 " not in log
        # and the good requests still work: the packets routes among them
        assert analyst.api("POST", f"/api/alerts/{alert}/packets")[0] == 200
        assert analyst.request("GET", f"/alerts/{alert}/packets")[0] == 200


# -- item 13: assignees and tokens --------------------------------------------------------------------------------


def test_an_assignee_is_a_known_user_on_every_action(tmp_path):
    with running(tmp_path) as site:
        analyst = Client(site)
        assert analyst.login("ana")[0] == 302
        alert = alert_ids(analyst)[0]
        hostile = ["x" * 300_000, "vic\x00\u202egnp.exe", "mallory", "vic ", "", "../../vic"]
        for action in ("acknowledge", "assign", "escalate", "close", "reopen"):
            for name in hostile:
                if name == "" and action != "assign":
                    continue  # no assignee: the action leaves it as it is
                status, body = analyst.api("POST", "/api/alerts/action",
                                           {"id": [alert], "action": action, "assignee": name})  # fmt: skip
                assert status == 400 and "\n" not in body["error"], (action, name[:20], status)
            status, body = analyst.api("POST", "/api/alerts/action", {"id": [alert], "action": action,
                                                                      "assignee": "vic"})  # fmt: skip
            assert status == 200 and body["changed"] == 1
        with sqlite3.connect(site.store) as db:
            assignees = {a for (a,) in db.execute("SELECT DISTINCT assignee FROM alerts WHERE assignee != ''")}
        assert assignees == {"vic"}
        status, _, page = analyst.request("POST", "/alerts/action", form={
            "csrf": analyst.csrf(), "id": str(alert), "action": "close", "assignee": "vic\u202e"})  # fmt: skip
        assert status == 400 and "user name must be" in one_line_error(status, {}, page)


def test_api_tokens_end_with_a_password_change_and_live_1_to_3650_days(tmp_path):
    with running(tmp_path) as site:
        for days in ("-5", "0", "3651"):
            p = cli(site, "user", "token", "ana", "--days", days)
            assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1
            assert "1 to 3650 days" in p.stderr
        p = cli(site, "user", "token", "ana", "--days", "30")
        assert p.returncode == 0 and "until ana's password changes" in p.stderr
        token = p.stdout.strip()
        browser = Client(site)
        assert browser.login("ana")[0] == 302
        client = Client(site)
        assert client.api("GET", "/api/me", token=token)[0] == 200
        new = site.root / "new.pw"
        new.write_text("a completely new passphrase\n")
        p = cli(site, "user", "passwd", "ana", "--password-file", str(new))
        assert p.returncode == 0 and "API tokens are ended" in p.stderr
        assert client.api("GET", "/api/me", token=token)[0] == 401
        assert browser.request("GET", "/api/me")[0] == 401
        assert browser.login("ana", "a completely new passphrase")[0] == 302


# -- item 9: a full disk ------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs")
def test_a_full_disk_is_a_503_with_one_line_and_heals(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        with running(tmp_path / "site", store=str(small / "store.db")) as site:
            analyst = Client(site)
            assert analyst.login("ana")[0] == 302
            alert = alert_ids(analyst)[0]
            site.agg.proc.terminate()  # only the UI writes from here on
            site.agg.proc.wait(30)
            with sqlite3.connect(site.store, timeout=30) as db:  # an empty WAL: the next write needs new space
                assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            filler = small / "filler"
            with filler.open("wb", buffering=0) as f, pytest.raises(OSError) as full:
                while True:
                    f.write(b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
            status, headers, text = Client(site).login("vic")
            assert status == 503 and "disk is full" in one_line_error(status, headers, text)
            assert headers["retry-after"] == "60"
            status, body = analyst.api("POST", "/api/alerts/action", {"id": [alert], "action": "close"})
            assert status == 503 and "disk is full" in body["error"] and "\n" not in body["error"]
            status, headers, text = analyst.request("POST", "/silences", form={
                "csrf": analyst.csrf(), "kind": "beacon", "hours": "1", "reason": "x"})  # fmt: skip
            assert status == 503 and "disk is full" in one_line_error(status, headers, text)
            assert analyst.api("GET", "/api/queue")[0] == 200  # reading goes on
            p = cli(site, "user", "add", "eve", "--one-time")
            assert p.returncode == 2 and p.stderr.strip().endswith("the store's disk is full: nothing was changed")
            filler.unlink()  # room again: the same processes work on
            assert Client(site).login("vic")[0] == 302
            status, body = analyst.api("POST", "/api/alerts/action", {"id": [alert], "action": "close"})
            assert status == 200 and body["changed"] == 1
            log = (site.root / "ui.log").read_text()
            assert "Traceback" not in log and "answered 503: the store's disk is full" in log
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
