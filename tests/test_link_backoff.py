"""The sensor's resends back off while the aggregator is silent, with jitter, and come back quickly once it answers.

A real Link and Spool against a real ROUTER socket on 127.0.0.1 that plays an aggregator: silent first (an
overloaded or stuck one), then acknowledging everything it receives.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import zmq

from ntds.wire.schema import EXAMPLES, ack, decode, encode
from sensor.link import MAX_RESEND_S, Link
from sensor.spool import Spool


class Peer:
    """A ROUTER socket on 127.0.0.1 that plays the aggregator, and a real Link and Spool holding `messages` alerts."""

    def __init__(self, folder, resend_after: float, messages: int) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.spool = Spool(folder / "spool.db", "tap-01")
        self.spool.append([("alert", EXAMPLES["alert"])] * messages)
        self.link = Link(self.spool, f"tcp://127.0.0.1:{self.port}", resend_after=resend_after)
        self.seen: dict[int, list[float]] = defaultdict(list)
        """Sequence number -> when each copy of it reached the peer."""

    def serve(self, seconds: float, answer=None) -> None:
        """Pump the link and read what reaches the peer for `seconds`, noting when each sequence number came;
        `answer(who, message)` may reply."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.link.pump(timeout_ms=5)
            while self.router.poll(0):
                who, frame = self.router.recv_multipart()
                m = decode(frame)
                self.seen[m.seq].append(time.monotonic())
                if answer is not None:
                    answer(who, m)

    def acknowledge(self, who: bytes, m) -> None:
        self.router.send_multipart([who, encode(ack(m.sensor, m.spool, [m.seq]))])

    def close(self) -> None:
        self.link.close()
        self.spool.close()
        self.router.close(0)
        self.ctx.term()


@pytest.fixture
def peer(tmp_path):
    made: list[Peer] = []

    def make(resend_after: float, messages: int = 5) -> Peer:
        made.append(Peer(tmp_path, resend_after, messages))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_resends_double_while_unanswered_and_progress_brings_the_rest_back(peer):
    p = peer(resend_after=0.2, messages=5)
    spool, link, seen = p.spool, p.link, p.seen

    p.serve(3.2)
    # Without back-off each message would come 3.2 / 0.2 = 16 times; doubling from 0.2 s: 0.2, 0.6, 1.4, 3.0 s.
    assert sorted(seen) == [1, 2, 3, 4, 5]
    for times in seen.values():
        assert 3 <= len(times) <= 5, times
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(later > 1.3 * earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert link.resent == sum(len(t) for t in seen.values()) - 5
    # The aggregator answers again: a new message is acknowledged, and what waited on a back-off of seconds
    # comes back within about resend_after, not after its long wait.
    spool.append([("alert", EXAMPLES["alert"])])
    t0 = time.monotonic()
    while not spool.empty() and time.monotonic() - t0 < 10:
        p.serve(0.05, p.acknowledge)
    assert spool.empty()
    assert time.monotonic() - t0 < 1.0


def test_the_back_off_is_capped_and_jittered():
    link = Link.__new__(Link)
    link.resend_after = 5.0
    waits = [link.resend_wait(tries) for tries in range(12) for _ in range(20)]
    assert max(waits) <= MAX_RESEND_S * 1.2 + 1e-9
    assert min(link.resend_wait(10) for _ in range(50)) >= MAX_RESEND_S * 0.8 - 1e-9
    firsts = {round(link.resend_wait(0), 3) for _ in range(50)}
    assert len(firsts) > 10 and all(4.0 <= w <= 6.0 for w in firsts)  # spread: sensors do not resend in step


def test_a_busy_aggregator_holds_resends_until_it_says_it_has_caught_up(peer):
    """An acknowledgement that says busy stops every resend for that long; "caught up" (an empty acknowledgement,
    not busy) brings what is overdue back within resend_after, long before the hold would have ended."""
    p = peer(resend_after=0.2, messages=5)
    router, link, seen = p.router, p.link, p.seen
    answered: list = []

    def busy_once(who: bytes, m) -> None:  # only the first is stored, and the answer says busy
        if m.seq == 1 and not answered:
            answered.append((who, m.sensor, m.spool))
            router.send_multipart([who, encode(ack(m.sensor, m.spool, [1], busy_s=3))])

    p.serve(1.0, busy_once)
    # Without the hold each unanswered message would have come 3 times by now (0, 0.2, 0.6 s).
    assert sorted(seen) == [1, 2, 3, 4, 5] and all(len(seen[s]) == 1 for s in (2, 3, 4, 5)), seen
    assert link.holds == 1 and link.hold_until > time.monotonic() + 1.5
    who, sensor, spool_id = answered[0]
    router.send_multipart([who, encode(ack(sensor, spool_id, []))])
    released = time.monotonic()
    p.serve(0.6)
    assert link.hold_until == 0
    for s in (2, 3, 4, 5):
        assert len(seen[s]) >= 2 and 0 < seen[s][1] - released < 0.5, seen[s]


def test_what_was_in_flight_goes_out_again_as_soon_as_a_lost_connection_is_made_again(peer):
    """An aggregator killed with messages received but not stored: once the sensor is connected to its successor,
    the unacknowledged messages come again at once, not after the resend timer (30 s here)."""
    p = peer(resend_after=30, messages=3)
    end = time.monotonic() + 5
    while len(p.seen) < 3 and time.monotonic() < end:
        p.serve(0.05)
    assert sorted(p.seen) == [1, 2, 3]  # received, never acknowledged: the aggregator dies here
    p.router.close(0)
    p.router = p.ctx.socket(zmq.ROUTER)
    p.seen.clear()
    cut = time.monotonic()
    while True:  # the old socket's port is let go by libzmq's own thread, a moment after close
        try:
            p.router.bind(f"tcp://127.0.0.1:{p.port}")
            break
        except zmq.ZMQError:
            assert time.monotonic() - cut < 5
            time.sleep(0.05)
    while (len(p.seen) < 3 or not p.spool.empty()) and time.monotonic() - cut < 10:
        p.serve(0.05, p.acknowledge)
    assert sorted(p.seen) == [1, 2, 3] and max(t[0] for t in p.seen.values()) - cut < 5, p.seen
    assert p.link.reconnects == 1 and p.spool.empty()
