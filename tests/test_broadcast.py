"""Broadcast end to end: a real `ntds-aggregator serve` on 127.0.0.1, alerts sent to it over ZeroMQ, and real
receivers on loopback: an HTTP server checking the HMAC, syslog listeners parsing RFC 5424 (UDP and TCP), an SMTP
server (with and without STARTTLS), the EVE file read back as JSON."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from ntds.detect.alerts import host_alert
from ntds.detect.hosts.base import Finding
from ntds.wire import schema as wire
from tests.receivers import SmtpServer, SyslogListener, WebhookServer, self_signed
from tests.test_transport import free_port, wait

BIN = Path(sys.executable).parent
HOSTILE = '<script>alert(1)</script> "quote" ]bracket\\ \x1b[31mred\nnext line'


def finding(k: int, kind: str = "port-scan", tier: int = 3, signature: str = "") -> dict:
    f = Finding(kind=kind, src_ip=f"10.9.{k // 250}.{k % 250 + 1}", first_ms=1794816000000 + k * 1000,
                last_ms=1794816000000 + k * 1000 + 500, count=20 + k, window_s=300, tier=tier, score=1.5,
                signature=signature or f"Port scan number {k}", dst_ip="10.9.255.1", protocol=6,
                facts=[{"what": "ports", "value": 20.0, "typical": 15.0, "score": 1.3, "text": "20 ports failed"}],
                pattern="10.9.255.1")  # fmt: skip
    return host_alert(f, "test baseline")


class Aggregator:
    """`serve --insecure` with a broadcast configuration, and a DEALER that sends alerts to it."""

    def __init__(self, root: Path, receivers: list, routes: list, **settings) -> None:
        self.root = root
        self.port = free_port()
        self.store = root / "store.db"
        values = {"endpoint": f"tcp://127.0.0.1:{self.port}", "store": str(self.store),
                  "archive": str(root / "archive"), "receivers": receivers, "routes": routes,
                  "broadcast": {"max_attempts": 50, "backoff_s": 0.2, "max_backoff_s": 1}} | settings  # fmt: skip
        self.config = root / "agg.yaml"
        self.config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
        self.proc: subprocess.Popen | None = None
        self.ctx = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.dealer.connect(f"tcp://127.0.0.1:{self.port}")
        self.seq = 0

    def start(self) -> Aggregator:
        log = self.root / "serve.log"
        self.proc = subprocess.Popen([str(BIN / "ntds-aggregator"), "serve", "--config", str(self.config),
                                      "--insecure"], stderr=log.open("a"))  # fmt: skip
        wait(lambda: "listening on" in log.read_text(), 30, "the aggregator")
        return self

    def send(self, bodies: list[dict]) -> None:
        want = []
        for body in bodies:
            self.seq += 1
            want.append(self.seq)
            m = wire.Message("alert", "tap-01", self.seq, wire.now_iso(), body, "0123456789abcdef")
            self.dealer.send(wire.encode(m))
        got: set[int] = set()
        end = time.monotonic() + 30
        while time.monotonic() < end and not set(want) <= got:
            if self.dealer.poll(100):
                got |= set(wire.decode(self.dealer.recv()).body["seqs"])
        assert set(want) <= got, "the aggregator did not acknowledge"

    def outbox(self, sql: str) -> int:
        with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=10) as db:
            try:
                return db.execute(sql).fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.ctx.destroy(linger=0)


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text("s3cret-for-the-hmac\n")
    return path


def test_alerts_reach_every_kind_of_receiver_escaped_for_each(tmp_path, secret):
    hook = WebhookServer(b"s3cret-for-the-hmac").start()
    udp, tcp, smtp = SyslogListener("udp"), SyslogListener("tcp"), SmtpServer()
    eve = tmp_path / "eve" / "alerts.json"
    receivers = [
        {"name": "hook", "type": "webhook", "url": hook.url, "secret_file": str(secret)},
        {"name": "udp", "type": "syslog", "host": "127.0.0.1", "port": udp.port},
        {"name": "tcp", "type": "syslog", "host": "127.0.0.1", "port": tcp.port, "protocol": "tcp"},
        {
            "name": "mail",
            "type": "email",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "from": "ntds@example.org",
            "to": ["soc@example.org"],
        },  # fmt: skip
        {"name": "eve", "type": "eve", "path": str(eve)},
    ]
    routes = [{"receivers": ["hook", "udp", "tcp", "mail", "eve"], "group_wait_s": 0, "group_by": ["src_ip"]}]
    agg = Aggregator(tmp_path, receivers, routes).start()
    try:
        bodies = [finding(k) for k in range(5)] + [finding(5, signature=HOSTILE, tier=5)]
        agg.send(bodies)
        wait(lambda: agg.outbox("SELECT COUNT(*) FROM outbox WHERE status = 'delivered'") == 6 * 5, 30,
             "every delivery")  # fmt: skip
        # webhook: signed (the server refuses anything else), one notification per source host
        assert hook.bad_signatures == 0
        got = hook.alert_ids()
        assert sorted(len(v) for v in got.values()) == [1] * 6
        notes = {n["alerts"][0]["src_ip"]: n for n in hook.received}
        assert notes["10.9.0.6"]["alerts"][0]["signature"] == HOSTILE  # JSON carries the text as it was
        # syslog over UDP and TCP: RFC 5424, the fields as structured data, control characters escaped
        for listener in (udp, tcp):
            wait(lambda listener=listener: len(listener.messages) == 6, 10, f"{listener.protocol} syslog")
            by_host = {m["params"]["src_ip"]: m for m in listener.messages}
            m = by_host["10.9.0.6"]
            assert m["sd_id"] == "ntds@32473" and m["msgid"] == "port-scan" and m["pri"] == 16 * 8 + 2
            assert m["params"]["tier"] == "5" and m["params"]["sensor"] == "tap-01" and m["params"]["key"]
            assert "\x1b" not in m["msg"] and "\n" not in m["msg"] and "\\x1b[31mred" in m["msg"]
            assert by_host["10.9.0.1"]["pri"] == 16 * 8 + 4  # tier 3: warning
        # e-mail: one per notification, the subject one printable line
        wait(lambda: len(smtp.messages) == 6, 10, "the e-mails")
        bodies_text = [m["data"].decode() for m in smtp.messages]
        hostile = next(t for t in bodies_text if "10.9.0.6" in t)
        assert "\x1b" not in hostile and "Subject: [ntds] tier 5 port-scan 10.9.0.6" in hostile
        assert all("Message-ID: <" in t for t in bodies_text) and not smtp.messages[0]["tls"]
        # EVE: JSON lines in Suricata's alert shape
        records = [json.loads(line) for line in eve.read_text().splitlines()]
        assert len(records) == 6 and all(r["event_type"] == "alert" for r in records)
        r = next(r for r in records if r["src_ip"] == "10.9.0.6")
        assert r["alert"]["signature"] == HOSTILE and r["alert"]["severity"] == 1 and r["dest_ip"] == "10.9.255.1"
        assert r["alert"]["category"] == "Detection of a Network Scan" and r["alert"]["signature_id"] == 1_900_200
        assert r["alert"]["metadata"]["ntds_kind"] == ["port-scan"] and r["alert"]["metadata"]["ntds_delivery"][0]
    finally:
        agg.stop()
        hook.stop()
        udp.stop()
        tcp.stop()
        smtp.stop()


def test_email_upgrades_with_starttls(tmp_path):
    cert, key = self_signed(tmp_path)
    smtp = SmtpServer(tls=(cert, key))
    receivers = [{"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                  "from": "ntds@example.org", "to": ["soc@example.org"], "starttls": "require",
                  "ca_file": str(cert)}]  # fmt: skip
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["mail"], "group_wait_s": 0}]).start()
    try:
        agg.send([finding(1)])
        wait(lambda: len(smtp.messages) == 1, 20, "the e-mail")
        assert smtp.messages[0]["tls"] and "10.9.0.2" in smtp.messages[0]["data"].decode()
    finally:
        agg.stop()
        smtp.stop()


def test_a_receiver_down_gets_everything_once_it_is_back(tmp_path, secret):
    hook = WebhookServer(b"s3cret-for-the-hmac").start()
    port = hook.port
    receivers = [{"name": "hook", "type": "webhook", "url": hook.url, "secret_file": str(secret)}]
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["hook"], "group_wait_s": 0, "group_by": ["src_ip"]}])
    agg.start()
    try:
        agg.send([finding(k) for k in range(5)])
        wait(lambda: len(hook.alert_ids()) == 5, 20, "the first deliveries")
        hook.stop()  # the receiver goes down mid-stream
        agg.send([finding(k) for k in range(5, 25)])
        wait(lambda: agg.outbox("SELECT COUNT(*) FROM outbox WHERE attempts > 0 AND status = 'pending'") > 0, 20,
             "failed attempts")  # fmt: skip
        assert "retrying in" in (tmp_path / "serve.log").read_text()
        hook = WebhookServer(b"s3cret-for-the-hmac", port=port).start()
        wait(lambda: len(hook.alert_ids()) == 20, 40, "the backlog")
        delivered = [i for ids in hook.alert_ids().values() for i in ids]
        assert len(delivered) == len(set(delivered)) == 20  # every alert of the outage, each under one key
    finally:
        agg.stop()
        hook.stop()


def test_kill_9_mid_delivery_loses_nothing(tmp_path, secret):
    hook = WebhookServer(b"s3cret-for-the-hmac", delay_s=0.2).start()
    receivers = [{"name": "hook", "type": "webhook", "url": hook.url, "secret_file": str(secret)}]
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["hook"], "group_wait_s": 0, "group_by": ["src_ip"]}])
    agg.start()
    try:
        agg.send([finding(k) for k in range(40)])
        wait(lambda: len(hook.received) >= 5, 30, "deliveries under way")
        os.kill(agg.proc.pid, signal.SIGKILL)
        agg.proc.wait()
        assert len(hook.received) < 40, "everything was delivered before the kill; the test proves nothing"
        agg.start()
        wait(lambda: agg.outbox("SELECT COUNT(*) FROM outbox WHERE status = 'delivered'") == 40, 60, "the rest")
        keys = hook.alert_ids()  # raises if one key came with two different notifications
        delivered = sorted(i for ids in keys.values() for i in ids)
        assert delivered == sorted(set(delivered)) and len(delivered) == 40
        assert len(hook.received) - len(keys) <= 1  # at most the one in flight at the kill came twice, same key
    finally:
        agg.stop()
        hook.stop()


def test_silences_stop_broadcast_until_revoked(tmp_path):
    from aggregator.manager import Manager, User, connect

    eve = tmp_path / "eve.json"
    agg = Aggregator(tmp_path, [{"name": "eve", "type": "eve", "path": str(eve)}],
                     [{"receivers": ["eve"], "group_wait_s": 0, "group_by": ["src_ip"]}]).start()  # fmt: skip
    try:
        m = Manager(connect(agg.store))
        ana = User("ana", "analyst")
        silence = m.silence({"kind": "port-scan", "host": "10.9.0.0/24"}, time.time() + 3600, "pentest", ana)
        agg.send([finding(1), finding(2, kind="brute-force"), finding(300)])  # 10.9.0.2, 10.9.0.3, 10.9.1.51
        wait(lambda: eve.exists() and len(eve.read_text().splitlines()) == 2, 20, "the unsilenced alerts")
        time.sleep(1)
        hosts = sorted((r["src_ip"], r["alert"]["metadata"]["ntds_kind"][0])
                       for r in map(json.loads, eve.read_text().splitlines()))  # fmt: skip
        assert hosts == [("10.9.0.3", "brute-force"), ("10.9.1.51", "port-scan")]
        assert agg.outbox("SELECT COUNT(*) FROM suppressed") == 1
        m.revoke(silence, ana, "pentest over")
        agg.send([finding(4)])
        wait(lambda: "10.9.0.5" in eve.read_text(), 20, "alerts after the silence")
        m.db.close()
    finally:
        agg.stop()


def test_undeliverable_notifications_are_parked_listed_and_retried(tmp_path, secret):
    port = free_port()  # nobody listens
    receivers = [{"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{port}/x", "secret_file": str(secret)}]
    agg = Aggregator(tmp_path, receivers, [{"receivers": ["hook"], "group_wait_s": 0}],
                     broadcast={"max_attempts": 2, "backoff_s": 0.1, "max_backoff_s": 0.2}).start()  # fmt: skip
    try:
        agg.send([finding(1)])
        wait(lambda: agg.outbox("SELECT COUNT(*) FROM outbox WHERE status = 'failed'") == 1, 20, "parking")
        p = subprocess.run([str(BIN / "ntds-aggregator"), "deliveries", "--config", str(agg.config), "--status",
                            "failed"], capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 0 and "\thook\tfailed\t2 attempts\t1 alerts\t" in p.stdout and "1 failed" in p.stderr
        hook = WebhookServer(b"s3cret-for-the-hmac", port=port).start()
        try:
            p = subprocess.run([str(BIN / "ntds-aggregator"), "deliveries", "retry", "--config", str(agg.config)],
                               capture_output=True, text=True)  # fmt: skip
            assert p.returncode == 0 and "1 deliveries queued again" in p.stderr
            wait(lambda: len(hook.received) == 1, 20, "the retried delivery")
        finally:
            hook.stop()
    finally:
        agg.stop()


@pytest.mark.parametrize(
    ("receivers", "routes", "words"),
    [
        ([{"name": "x", "type": "pager"}], [], "type must be one of"),
        ([{"name": "x", "type": "webhook", "url": "ftp://h", "secret_file": "/etc/hostname"}], [], "url must be"),
        ([{"name": "x", "type": "eve", "path": "e.json"}], [{"receivers": ["y"]}], "no receiver named 'y'"),
        ([{"name": "x", "type": "syslog", "host": "h", "protocol": "sctp"}], [], "protocol must be udp or tcp"),
        (
            [{"name": "x", "type": "eve", "path": "e.json"}],
            [{"receivers": ["x"], "match": {"host": "nope"}}],
            "match.host must be",
        ),  # fmt: skip
        ([{"name": "x", "type": "webhook", "url": "http://h", "secret_file": "/nonexistent"}], [], "does not exist"),
    ],
)
def test_bad_broadcast_configuration_is_one_line(tmp_path, receivers, routes, words):
    cfg = tmp_path / "agg.yaml"
    cfg.write_text(f"store: {tmp_path / 's.db'}\nreceivers: {json.dumps(receivers)}\nroutes: {json.dumps(routes)}\n")
    p = subprocess.run([str(BIN / "ntds-aggregator"), "deliveries", "--config", str(cfg)], capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
