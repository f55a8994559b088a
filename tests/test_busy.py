"""An aggregator that falls behind says so, and its sensors hold their resends until it has caught up.

A real Receiver (plain text, a real store) and real Links with their Spools on 127.0.0.1. The receiver reads a
smaller batch than it ships with, so that a few hundred messages are a backlog of several batches.
"""

from __future__ import annotations

import re
import socket
import time

import zmq

from aggregator.manager import Manager, connect
from aggregator.receiver import RECEIVE_QUEUE, Receiver
from aggregator.store import Store
from aggregator.ui.metrics import exposition
from ntds.wire.schema import EXAMPLES
from sensor.link import Link
from sensor.spool import Spool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(store: Store, name: str) -> float:
    """One unlabelled metric as the UI's /metrics serves it."""
    db = connect(store.path)
    try:
        text = exposition(store, Manager(db)).decode()
    finally:
        db.close()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_a_backlog_makes_acknowledgements_say_busy_and_the_sensors_hold_until_it_is_gone(tmp_path):
    store = Store(tmp_path / "store.db")
    receiver = Receiver(f"tcp://127.0.0.1:{free_port()}", store)
    receiver.batch = 40
    receiver.busy_after_s = 0.0
    assert receiver.socket.getsockopt(zmq.RCVHWM) == RECEIVE_QUEUE  # what one connection may queue in memory
    spools = [Spool(tmp_path / f"spool-{i}.db", f"tap-{i:02d}") for i in range(6)]
    links = [Link(s, receiver.endpoint, resend_after=0.3) for s in spools]
    for s in spools:
        s.append([("alert", EXAMPLES["alert"])] * 60)
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end and receiver.socket.poll(0) == 0:
            for link in links:
                link.pump(timeout_ms=1)
        time.sleep(0.3)  # 360 messages queued at the receiver: nine batches of 40
        for link in links:
            link.pump(timeout_ms=1)
        held: list[bool] = []
        end = time.monotonic() + 20
        while time.monotonic() < end and not all(s.empty() for s in spools):
            receiver.serve_once(timeout_ms=10)
            for link in links:
                link.pump(timeout_ms=1)
            held.append(any(link.hold_until > time.monotonic() for link in links))
        assert all(s.empty() for s in spools)
        assert receiver.busy_batches > 0 and any(held)  # full batches: "busy", and the sensors heard it
        # The next poll finds the queue empty: "caught up" to every connection told busy, and every hold is
        # released (no resend waits on it).
        assert receiver.busy
        assert metric(store, "ntds_receiver_busy_seconds") > 0  # what a monitoring system alerts on
        assert metric(store, "ntds_receiver_busy_episodes_total") == 1
        end = time.monotonic() + 10
        while time.monotonic() < end and (receiver.busy or any(link.hold_until for link in links)):
            receiver.serve_once(timeout_ms=10)
            for link in links:
                link.pump(timeout_ms=1)
        assert not receiver.busy
        assert all(link.hold_until == 0 for link in links)
        assert metric(store, "ntds_receiver_busy_seconds") == 0
        assert metric(store, "ntds_receiver_busy_episodes_total") == 1
        assert sum(link.holds for link in links) > 0
        n = store.db.execute("SELECT count(*), count(DISTINCT sensor || ':' || seq) FROM messages").fetchone()
        assert n == (360, 360)
    finally:
        for link in links:
            link.close()
        for s in spools:
            s.close()
        receiver.close()
