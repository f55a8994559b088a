"""Per-sensor quotas (issue 23, item 4): one admitted sensor flooding the aggregator is held to its message rate
and its bytes per day, the refusals are counted for it, and another sensor's acknowledgements stay fast.

Real processes on 127.0.0.1: `ntds-aggregator serve` with CURVE, raw DEALER sockets holding the sensors' own
CURVE keys, and a real `ntds-sensor replay` whose spool resends what was refused."""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import threading
import time

import pytest
import zmq
from test_transport import Site, count, exactly_once, run, spooled_total

from ntds.wire import schema as wire
from ntds.wire.keys import load_pair, load_public

RATE = 100
"""sensor_messages_per_s in the flood test: bursts of 1,000."""
DAY_MB = 10
"""sensor_mb_per_day in the flood test: at the rate, 62 kB messages reach it in under two seconds."""


def big_summary() -> dict:
    """A valid summary of about 62 kB (15 applications with 4,000-character names): the frame limit's worth."""
    body = json.loads(json.dumps(wire.EXAMPLES["summary"]))
    app = body["applications"][0]
    body["applications"] = [app | {"application": f"{i:02d}" + "x" * 3990} for i in range(15)]
    return body


class Peer:
    """A raw DEALER speaking as one admitted sensor, with that sensor's CURVE keys."""

    def __init__(self, ctx: zmq.Context, site: Site, sensor: str, key_dir: str) -> None:
        self.sensor = sensor
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.curve_publickey, self.socket.curve_secretkey = load_pair(
            site.root / key_dir / f"{sensor}.key_secret"
        )
        self.socket.curve_serverkey = load_public(site.root / "agg" / "server.key")
        self.socket.connect(site.endpoint)
        self.spool = f"{sensor.replace('-', '')}0123456789"[:16]

    def frame(self, kind: str, seq: int, body: dict) -> bytes:
        return wire.encode(wire.Message(kind, self.sensor, seq, wire.now_iso(), body, self.spool))

    def acks(self, timeout_ms: int = 0) -> list[int]:
        seqs = []
        while self.socket.poll(timeout_ms):
            msg = wire.decode(self.socket.recv())
            if msg.type == "ack":
                seqs += msg.body["seqs"]
            timeout_ms = 0
        return seqs

    def roundtrip(self, seq: int) -> float:
        """Send one health message and wait for its acknowledgement; seconds it took."""
        frame = self.frame("health", seq, wire.EXAMPLES["health"])
        start = time.monotonic()
        self.socket.send(frame)
        end = start + 20
        while time.monotonic() < end:
            if seq in self.acks(100):
                return time.monotonic() - start
        raise AssertionError(f"{self.sensor}: message {seq} not acknowledged within 20 s")


class Flood(threading.Thread):
    """Sends as fast as the socket takes them: first small hello messages (over the rate), then 62 kB summaries
    (over the day's bytes), each with a new sequence number; collects the acknowledgements."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(daemon=True)
        self.peer = peer
        self.big = threading.Event()
        self.stop = threading.Event()
        self.sent = {"hello": 0, "summary": 0}
        self.acked: list[int] = []
        self.seq = 0

    def run(self) -> None:
        # one frame per kind, sent under ever new numbers: cheap, so the flood is as fast as the link
        template = {"hello": self.peer.frame("hello", 0, wire.EXAMPLES["hello"]),
                    "summary": self.peer.frame("summary", 0, big_summary())}  # fmt: skip
        while not self.stop.is_set():
            kind = "summary" if self.big.is_set() else "hello"
            frame = template[kind].replace(b'"seq":0,', b'"seq":%d,' % (self.seq + 1), 1)
            try:
                self.peer.socket.send(frame, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.acked += self.peer.acks(1)
                continue
            self.seq += 1
            self.sent[kind] += 1
            if self.seq % 50 == 0:
                self.acked += self.peer.acks()
        end = time.monotonic() + 3
        while time.monotonic() < end:
            self.acked += self.peer.acks(200)


def sensors_json(site: Site) -> dict[str, dict]:
    p = run("ntds-aggregator", "sensors", "--json", "--config", site.config)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return {r["sensor"]: r for r in map(json.loads, p.stdout.splitlines())}


def add_sensor(site: Site, name: str, key_dir: str) -> None:
    run("ntds-sensor", "keygen", "--out", site.root / key_dir, "--name", name, check=True)
    shutil.copy(site.root / key_dir / f"{name}.key", site.root / "allow" / f"{name}.key")


def test_a_flooding_sensor_is_held_to_its_quota_and_the_others_stay_fast(tmp_path, zmq_context):
    site = Site(tmp_path)
    add_sensor(site, "tap-02", "tap2")
    with site.config.open("a") as fh:
        fh.write(f"sensor_messages_per_s: {RATE}\nsensor_mb_per_day: {DAY_MB}\n")
    stop_at_exit = None
    try:
        agg = site.aggregator()
        legit = Peer(zmq_context, site, "tap-01", "tap")
        quiet = [legit.roundtrip(seq) for seq in range(1, 21)]
        flood = stop_at_exit = Flood(Peer(zmq_context, site, "tap-02", "tap2"))
        started = time.monotonic()
        flood.start()
        busy: list[float] = []
        seq = 21
        while time.monotonic() - started < 3:  # small messages, far over the rate
            busy.append(legit.roundtrip(seq))
            seq += 1
            time.sleep(0.05)
        flood.big.set()  # now 62 kB messages: over the day's bytes within a second
        rate_phase = time.monotonic() - started
        while time.monotonic() - started < 9:
            busy.append(legit.roundtrip(seq))
            seq += 1
            time.sleep(0.05)
        flood.stop.set()
        flood.join(30)
        print(f"flood: sent {flood.sent}, acknowledged {len(flood.acked)}; tap-01 acks quiet median "
              f"{statistics.median(quiet) * 1000:.1f} ms, during the flood median "
              f"{statistics.median(busy) * 1000:.1f} ms, 95th {sorted(busy)[int(0.95 * len(busy))] * 1000:.1f} ms, "
              f"max {max(busy) * 1000:.1f} ms over {len(busy)}")  # fmt: skip
        # the flood really was one: many times what the quotas let through
        assert flood.sent["hello"] > 3 * (10 * RATE + RATE * rate_phase), flood.sent
        assert flood.sent["summary"] * 62_000 > 2 * DAY_MB * 10**6, flood.sent
        # the rate: at most the burst plus the rate over the small-message phase
        small = count(site.store, "SELECT COUNT(*) FROM messages WHERE sensor = 'tap-02' AND type = 'hello'")
        assert 10 * RATE <= small <= 10 * RATE + RATE * (rate_phase + 1), small
        # the day's bytes: filled to the quota, never beyond
        stored = count(site.store, "SELECT SUM(LENGTH(body)) FROM messages WHERE sensor = 'tap-02'")
        assert (DAY_MB - 0.2) * 10**6 < stored <= DAY_MB * 10**6, stored
        # nothing acknowledged is missing, nothing stored went unacknowledged (it is the sensor's to resend)
        with_seqs = "SELECT COUNT(*) FROM messages WHERE sensor = 'tap-02' AND seq IN (%s)"
        assert count(site.store, with_seqs % ",".join(map(str, flood.acked))) == len(flood.acked)
        assert count(site.store, "SELECT COUNT(*) FROM messages WHERE sensor = 'tap-02'") == len(flood.acked)
        # the other sensor: every message acknowledged, and fast
        assert count(site.store, "SELECT COUNT(*) FROM messages WHERE sensor = 'tap-01'") == seq - 1
        assert statistics.median(busy) < 0.05 and sorted(busy)[int(0.95 * len(busy))] < 0.25, busy
        # refusals counted per sensor: the store's sensors table and `ntds-aggregator sensors`
        time.sleep(1.5)  # refusals on their own are written once a second
        refused = count(site.store, "SELECT refused FROM sensors WHERE sensor = 'tap-02'")
        assert refused >= flood.sent["hello"] + flood.sent["summary"] - len(flood.acked) - 2000, refused
        listed = sensors_json(site)
        assert listed["tap-02"]["refused"] == refused and listed["tap-02"]["over_quota"]
        assert listed["tap-02"]["refused_why"] == "day" and listed["tap-02"]["refused_bytes"] > refused * 1000
        assert listed["tap-02"]["stored_today_bytes"] == stored
        assert listed["tap-01"]["refused"] == 0 and not listed["tap-01"]["over_quota"]
        text = run("ntds-aggregator", "sensors", "--config", site.config).stdout
        assert "refused" in text.splitlines()[0] and "over(day)" in text, text
        log = (tmp_path / "aggregator.log").read_text()
        assert "sensor 'tap-02' is over its quota" in log and "Traceback" not in log
        assert len([x for x in log.splitlines() if "over its quota" in x]) <= 3  # once a minute, not per message
        # the day's count survives a restart: still refused, the other sensor still served
        agg.send_signal(signal.SIGTERM)
        assert agg.wait(30) == 0
        site.aggregator()
        again = Peer(zmq_context, site, "tap-02", "tap2")
        base = flood.seq + 1000
        for i in range(5):
            again.socket.send(again.frame("summary", base + i, big_summary()))
        legit.roundtrip(seq)
        assert again.acks(2000) == []
        assert count(site.store, "SELECT SUM(LENGTH(body)) FROM messages WHERE sensor = 'tap-02'") == stored
    finally:
        if stop_at_exit is not None:  # a failed assertion must not leave the flood on a socket being destroyed
            stop_at_exit.stop.set()
            stop_at_exit.join(30)
        site.stop()


def test_a_sensor_over_its_rate_loses_nothing(tmp_path):
    """A real sensor whose messages come faster than its quota: the refused ones stay in its spool and are sent
    again until every one is stored, once; the refusals are counted."""
    site = Site(tmp_path)
    with site.config.open("a") as fh:
        fh.write("sensor_messages_per_s: 3\n")  # bursts of 30; 40 flows make about 85 messages
    try:
        site.aggregator()
        started = time.monotonic()
        sensor = site.replay(site.flows(40), wait_s=120)
        assert sensor.wait(180) == 0, sensor.stderr.read()
        took = time.monotonic() - started
        total = spooled_total(site.root / "spool" / "spool.db")
        assert total > 80
        exactly_once(site.store, total)
        assert count(site.store, "SELECT COUNT(*) FROM messages WHERE type = 'alert'") == 40
        assert took > (total - 30) / 3 - 5, took  # the rate held it back: it is a quota, not a no-op
        time.sleep(1.5)
        refused = count(site.store, "SELECT refused FROM sensors WHERE sensor = 'tap-01'")
        assert refused > 0
        row = sensors_json(site)["tap-01"]
        assert row["refused"] == refused and row["refused_why"] == "rate"
    finally:
        site.stop()


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_bad_quota_settings_are_one_line(tmp_path, value):
    site = Site(tmp_path)
    with site.config.open("a") as fh:
        fh.write(f"sensor_mb_per_day: {value}\n")
    p = run("ntds-aggregator", "serve", "--config", site.config)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "sensor_mb_per_day" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
