"""The sensor's side of the link: send what the spool holds, forget it when acknowledged.

A DEALER socket (CURVE by default) connects to the aggregator. Messages go out
in sequence order, at most `window` unacknowledged at a time; a message not
acknowledged within `resend_after` seconds is sent again (after a reconnect the
aggregator's store makes the duplicate harmless), and each further time after
twice as long, up to `MAX_RESEND_S`, with +-20% random jitter: an overloaded
aggregator is not answered by the whole fleet resending its whole window every
few seconds, in step. Progress resets it: once acknowledgements come again (the
aggregator is back or has caught up), messages waiting on a long back-off are
sent again within `resend_after`. An aggregator that is behind says so in its
acknowledgements (`busy_s`): nothing is resent until that time has passed (what
was sent waits in its queue), and once it says it has caught up, what is overdue
goes out within `resend_after`. ZeroMQ reconnects by itself; TCP keepalive finds a
dead peer (ntds/wire/liveness.py). When a connection is cut and made again (an
aggregator restarted, or killed), whatever was in flight on the old one may have
died with it: it goes out again as soon as the new connection's handshake is done,
not a resend timer later.
"""

from __future__ import annotations

import logging
import random
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from ntds.wire.liveness import watch_peer
from ntds.wire.schema import WireError, decode
from sensor.spool import Spool

log = logging.getLogger("ntds.sensor.link")
MAX_RESEND_S = 60.0
"""Longest wait for an acknowledgement before a message is sent again (the resend back-off's ceiling)."""
JITTER = 0.2


class Link:
    def __init__(
        self,
        spool: Spool,
        endpoint: str,
        *,
        client_keys: tuple[bytes, bytes] | None = None,
        server_public: bytes | None = None,
        window: int = 1000,
        resend_after: float = 5.0,
        context: zmq.Context | None = None,
    ) -> None:
        self.spool = spool
        self.window = window
        self.resend_after = resend_after
        self._own_context = context is None
        """A sensor owns its context; a fleet simulated in one process (bench/bench_fleet.py) shares one."""
        self.context = zmq.Context() if context is None else context
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        watch_peer(self.socket)  # not ZMTP heartbeats: ntds/wire/liveness.py says why
        self.socket.setsockopt(zmq.RECONNECT_IVL, 100)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.socket.setsockopt(zmq.SNDHWM, 2 * window)
        if client_keys is not None:
            public, secret = client_keys
            self.socket.curve_publickey = public
            self.socket.curve_secretkey = secret
            self.socket.curve_serverkey = server_public
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._cut: set[int] | None = None
        """What was in flight when the connection was lost (None while connected): it may be lost with it. What
        is sent after waits in the socket's queue for the next connection."""
        self.reconnects = 0
        self.socket.connect(endpoint)
        self.in_flight: dict[int, float] = {}
        """Sequence number -> when it is sent again if not acknowledged (monotonic seconds)."""
        self.tries: dict[int, int] = {}
        """Sequence number -> times sent (the back-off doubles with each)."""
        self.resent = 0
        self.backed_off = False
        """Some message in flight waits on a back-off longer than resend_after."""
        self.hold_until = 0.0
        """While the aggregator says it is busy: nothing is resent before this (monotonic seconds; 0: no hold)."""
        self.holds = 0
        """Busy acknowledgements received."""
        self.sent = 0
        self.acked = 0
        self.bad_acks = 0
        self.downstream: list = []
        """Baseline parts and pcap jobs the aggregator sent, in arrival order (the pipeline takes them)."""

    def close(self) -> None:
        # Everything unacknowledged is still in the spool: nothing to linger for.
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        if self._own_context:
            self.context.destroy(linger=0)
        else:
            self.socket.close(linger=0)

    def pump(self, timeout_ms: int = 100) -> None:
        """Send what the window allows, resend what is overdue, take in acknowledgements."""
        now = time.monotonic()
        self._watch(now)
        overdue = [s for s, due in self.in_flight.items() if now > due]
        if overdue:
            frames = dict(self.spool.pending(limit=len(overdue) + self.window, after=min(overdue) - 1))
            for s in overdue:
                if s in frames:
                    self._send(s, frames[s], now)
                else:  # acknowledged meanwhile or dropped at the size limit
                    del self.in_flight[s]
                    self.tries.pop(s, None)
        room = self.window - len(self.in_flight)
        if room > 0:
            after = max(self.in_flight, default=0)
            for s, frame in self.spool.pending(limit=room, after=after):
                self._send(s, frame, now)
        if self.socket.poll(timeout_ms):
            while True:
                try:
                    reply = self.socket.recv(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = decode(reply)
                except WireError:
                    self.bad_acks += 1
                    continue
                if msg.type in ("baseline", "intel", "pcap_job") and msg.sensor == self.spool.sensor_id:
                    self.downstream.append(msg)  # the pipeline takes these between batches
                    continue
                if msg.type != "ack" or msg.spool != self.spool.spool_id:
                    self.bad_acks += 1  # not an ack, or one for a spool this sensor no longer has
                    continue
                seqs = msg.body["seqs"]
                if seqs:
                    self.spool.ack(seqs)
                for s in seqs:
                    self.tries.pop(s, None)
                    if self.in_flight.pop(s, None) is not None:
                        self.acked += 1
                if msg.body["busy_s"]:
                    self._hold(time.monotonic(), msg.body["busy_s"])
                elif self.hold_until:
                    self.hold_until = 0.0
                    log.info("the aggregator has caught up: resending what is overdue")
                    self._progress(time.monotonic())
                elif self.backed_off:
                    self._progress(time.monotonic())

    def _send(self, seq: int, frame: bytes, now: float) -> None:
        try:
            self.socket.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected yet or queue full: stays pending, tried again later
        tries = self.tries.get(seq, 0)
        self.tries[seq] = tries + 1
        self.resent += tries > 0
        self.backed_off = self.backed_off or tries > 0
        self.in_flight[seq] = max(now + self.resend_wait(tries), self.hold_until)
        self.sent += 1

    def _watch(self, now: float) -> None:
        """A new connection after a lost one: what was in flight on the lost one is due now (a restarted
        aggregator is not busy until it says so). The first connection changes nothing."""
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(flags=zmq.NOBLOCK))["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_DISCONNECTED:
                if self._cut is None:
                    self._cut = set(self.in_flight)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._cut is not None:
                self.reconnects += 1
                self.hold_until = 0.0
                for s in self._cut:
                    if s in self.in_flight:
                        self.in_flight[s] = now
                self._cut = None

    def _hold(self, now: float, busy_s: int) -> None:
        """The aggregator is behind: no resend before busy_s (and up to 20% more, so that a fleet does not come
        back in step) from now."""
        if not self.hold_until:
            log.info("the aggregator is busy: holding resends for %d s", busy_s)
        self.holds += 1
        self.hold_until = max(self.hold_until, now + busy_s * random.uniform(1, 1 + JITTER))
        for s, due in self.in_flight.items():
            if due < self.hold_until:
                self.in_flight[s] = self.hold_until

    def _progress(self, now: float) -> None:
        """Acknowledgements arrive again (and not busy): what waits on a long back-off goes out within
        resend_after."""
        soon = now + self.resend_after * (1 + JITTER)
        for s, due in self.in_flight.items():
            if due > soon:
                self.in_flight[s] = now + self.resend_wait(0)
        self.backed_off = False

    def resend_wait(self, tries: int) -> float:
        """Seconds to wait for the acknowledgement of a message sent `tries` times before: `resend_after`, then
        twice as long each time up to MAX_RESEND_S, with +-20% jitter so that sensors do not resend in step."""
        base = min(self.resend_after * 2**tries, MAX_RESEND_S)
        return base * random.uniform(1 - JITTER, 1 + JITTER)

    def drain(self, timeout: float) -> bool:
        """Pump until the spool is empty or timeout seconds pass; True if everything was acknowledged."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump()
            if self.spool.empty():
                return True
        return self.spool.empty()
