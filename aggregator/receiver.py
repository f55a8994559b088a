"""The aggregator's receiving end: a ROUTER socket, CURVE by default, acks after durable storage.

Per loop: drain what has arrived (up to a batch of BATCH frames or
BATCH_BYTES), refuse what is over its sensor's quota, reject what is malformed or
claims another sensor's id (counted, per reason), store the rest in one
transaction, then acknowledge every message of the batch to its sender,
including duplicates of messages stored before (a lost ack means a resend).

Overload: each connection queues at most `receive_queue` frames in memory (libzmq stops reading that
connection's TCP beyond it, and the sensor's own queue and spool hold the rest), so memory is bounded by the
number of sensors, not by how far behind the aggregator is. A receiver whose batches have all stopped at their
limit for BUSY_AFTER_S is behind: its acknowledgements say busy (`busy_s`), and its sensors hold their resends,
which would only queue twice what is already queued; once a batch ends short of its limit, every connection
told so is told it has caught up.

Quotas (`aggregator.quotas`): a message over its sensor's rate or its bytes of
the day is neither decoded nor stored nor acknowledged: it stays in the sensor's
spool and comes again. With CURVE the sensor is known from the connection's key
before the frame is parsed, so refusing costs next to nothing, and the bytes
per batch bound the transaction: a sensor over quota cannot slow the others'
acknowledgements. Refusals are counted per sensor in the store's sensors table.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path

import zmq
from zmq.utils.monitor import parse_monitor_message

from aggregator import evidence
from aggregator.quotas import Quotas
from aggregator.store import Store
from aggregator.zap import ZapHandler
from ntds.logs import printable
from ntds.wire.liveness import watch_peer
from ntds.wire.schema import MAX_FRAME, MESSAGE_TYPES, Message, WireError, ack, decode, encode

log = logging.getLogger("ntds.aggregator.receiver")
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
HANDSHAKE_MS = 5000
BATCH = 2000
BATCH_BYTES = 8 * 2**20
"""Frames read per batch stop here too: one transaction stays short whatever the frames' size."""
RECEIVE_QUEUE = 100
"""Frames one connection may have waiting in the aggregator's memory by default (the ROUTER's receive high-water
mark, per connection; aggregator.yaml receive_queue): 1,000 sensors at most 100,000 frames, typically 1-2 kB."""
BUSY_AFTER_S = 2.0
"""Batches stopped at their limit for this long (more was waiting each time) make the receiver busy."""
BUSY_SINCE_KEY = "receiver_busy_since"
"""The store's state: when the receiver fell behind (seconds since the epoch; 0 while it keeps up), for the
metrics a monitoring system alerts on."""
BUSY_EPISODES_KEY = "receiver_busy_episodes"
BUSY_HOLD_S = 30
"""What a busy receiver asks of its sensors: resend nothing for this long (renewed with every acknowledgement)."""
MAX_TOLD = 100_000
"""Connections remembered as told busy (past it, one is released by its hold running out)."""
REFUSALS_EVERY_S = 1.0
"""Quota refusals are written with the next batch, or on their own at most this often."""


class Receiver:
    def __init__(
        self,
        endpoint: str,
        store: Store,
        *,
        server_secret: tuple[bytes, bytes] | None = None,
        allow_folder: str | Path | None = None,
        quotas: Quotas | None = None,
        receive_queue: int = RECEIVE_QUEUE,
    ) -> None:
        self.context = zmq.Context()
        self.secure = server_secret is not None
        self.zap = None
        if self.secure:
            self.zap = ZapHandler(self.context, allow_folder)
            self.zap.start()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.setsockopt(zmq.MAXMSGSIZE, 4 * MAX_FRAME)  # bigger frames cost a disconnect, not memory
        self.socket.setsockopt(zmq.RCVHWM, receive_queue)
        watch_peer(self.socket)  # not ZMTP heartbeats: ntds/wire/liveness.py says why
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted sensor takes over its old identity
        # A connection that has not completed its CURVE handshake within this time is dropped: a flood of
        # idle TCP connections cannot hold file descriptors for long.
        self.socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if self.secure:
            public, secret = server_secret
            self.socket.curve_server = True
            self.socket.curve_publickey = public
            self.socket.curve_secretkey = secret
            self.socket.zap_domain = b"ntds"
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        # Handshakes that fail before the key check (a plain-text client on a CURVE port, garbage on the
        # port) are counted with the other rejections, from the socket's own event stream.
        self.monitor = self.socket.get_monitor_socket(HANDSHAKE_EVENTS)
        self.store = store
        self.pusher = None
        """The baseline pusher (aggregator.baselines.Pusher), when serve pushes baselines."""
        self.intel_pusher = None
        """The indicator-set pusher (aggregator.intel.IntelPusher), the same way."""
        self.rejected: Counter[str] = Counter()
        self.stored = 0
        self.store_errors = 0
        self._unsaved: Counter[str] = Counter()
        """Rejections counted but not yet stored (the store refused a write: a full disk)."""
        self.identities: dict[str, bytes] = {}
        """Each sensor's connection, as of its last message: where its pcap jobs go."""
        self.evidence_folder = evidence.folder_of(store.path)
        self._jobs_checked = 0.0
        self._jobs_pruned = -600.0
        self.evidence_keep = (30 * 86400.0, 10240 * 2**20)
        """How long, and how much of, the fetched packets are kept (serve sets aggregator.yaml's evidence_days/mb)."""
        self._jobs_sent_to: dict[int, bytes] = {}
        """The connection each open pcap job went out on (a sensor that reconnects gets it again)."""
        self.quotas = quotas or Quotas(store)
        self._refused: dict[str, list] = {}
        """Quota refusals not yet written: sensor -> [messages, bytes, why]."""
        self._refused_written = time.monotonic()
        self.refused: Counter[str] = Counter()
        """Messages refused over a quota since start, per sensor."""
        self.batch = BATCH
        self.busy_after_s = BUSY_AFTER_S
        self.busy = False
        self.busy_batches = 0
        """Batches acknowledged as busy since start."""
        self._behind_since: float | None = None
        self._told_busy: dict[tuple[bytes, str, str], None] = {}
        """Connections (and the sensor and spool on them) told busy since the receiver fell behind."""
        self._note_busy(False)  # a receiver that died busy left its mark: this one starts keeping up

    def close(self) -> None:
        if self.zap:
            self.zap.stop()
            self.zap.join(timeout=2)
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self.context.destroy(linger=0)  # never hang on a socket a dead thread left open

    def serve_once(self, timeout_ms: int = 200) -> int:
        """Handle one batch; returns the number of messages acknowledged.

        Raises StoreBroken when the store can no longer be written for a reason other than room (a
        corrupt file): serving on would acknowledge nothing while looking alive."""
        self._jobs()
        if not self.socket.poll(timeout_ms):
            self._pace(False)
            return self._store_refusals()
        batch: list[tuple[bytes, Message]] = []
        rejections: Counter[str] = Counter()
        size = read = 0
        self.quotas.start_batch()
        while read < self.batch and size < BATCH_BYTES:  # every frame counts: a flood of refused ones ends one too
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            read += 1
            identity = frames[0].bytes
            if len(frames) != 2:
                rejections["malformed"] += 1
                continue
            frame = frames[1]
            n = len(frame)
            bound = frame.get("User-Id") if self.secure else None
            if bound is not None and not self._admit(bound, n):  # the key says who: refused before parsing
                continue
            size += n
            try:
                msg = decode(frame.bytes)
            except WireError as e:
                rejections[e.reason] += 1
                log.warning("rejected a %s message: %s", e.reason, e)
                continue
            if MESSAGE_TYPES[msg.type].drop_rank is None:  # only the aggregator sends acks and baselines
                rejections["malformed"] += 1
                continue
            if self.secure:
                if msg.sensor != bound:
                    rejections["impersonation"] += 1
                    log.warning("rejected a message claiming sensor %r from the key of %r", msg.sensor, bound)
                    continue
            elif not self._admit(msg.sensor, n):  # plain text (tests): the id is known once parsed
                continue
            batch.append((identity, msg))
        self._pace(read >= self.batch or size >= BATCH_BYTES)
        if self.zap is not None:
            rejections.update(self.zap.take_refusals())
        rejections.update(self._handshake_failures())
        rejections.update(self._unsaved)
        refused = self._take_refused(force=bool(batch or rejections))
        if not batch and not rejections and not refused:
            return 0
        try:
            result = self.store.store([m for _, m in batch], dict(rejections), refused)
        except sqlite3.OperationalError as e:
            # A full disk: nothing of the batch is acknowledged, so every sensor keeps it and resends.
            self.store_errors += 1
            self._unsaved = rejections  # counted with the next batch that stores
            self._put_back(refused)
            log.error("cannot store a batch of %d messages, not acknowledged (sensors resend): %s", len(batch), e)
            return 0
        except sqlite3.DatabaseError as e:
            raise StoreBroken(f"{self.store.path}: the store cannot be written ({e})") from None
        finally:
            self.quotas.start_batch()  # what the batch stored is in the store's own count now
        self._unsaved = Counter()
        self.stored += result.new
        for event in result.events:
            log.warning("%s", event)
        self.rejected.update(rejections)
        acks: dict[tuple[bytes, str, str, int], list[int]] = defaultdict(list)
        for identity, m in batch:
            acks[(identity, m.sensor, m.spool, m.version)].append(m.seq)
        busy_s = BUSY_HOLD_S if self.busy else 0
        self.busy_batches += self.busy
        for (identity, sensor, spool, version), seqs in acks.items():
            # Older sensors are answered in their own version (before 8 without busy). A peer gone since
            # resends, and the duplicate is acknowledged then.
            frame = encode(ack(sensor, spool, seqs, busy_s), version=version)
            with contextlib.suppress(zmq.ZMQError):
                self.socket.send_multipart([identity, frame], flags=zmq.NOBLOCK)
            if busy_s and version >= 8 and len(self._told_busy) < MAX_TOLD:
                self._told_busy[(identity, sensor, spool)] = None
        for identity, m in batch:
            self.identities[m.sensor] = identity
        if any(m.type == "evidence" for _, m in batch):
            self._jobs_checked = 0.0
        for pusher in (self.pusher, self.intel_pusher):
            if pusher is None:
                continue
            for identity, m in batch:
                for part in pusher.offer(m):
                    with contextlib.suppress(zmq.ZMQError):  # a peer gone since is offered it again when back
                        self.socket.send_multipart([identity, encode(part)], flags=zmq.NOBLOCK)
        return len(batch)

    def _pace(self, full: bool) -> None:
        """Busy once every batch has stopped at its limit for busy_after_s; caught up at the first that does not,
        and then every connection told busy hears so (an empty acknowledgement that is not busy)."""
        now = time.monotonic()
        if full:
            if self._behind_since is None:
                self._behind_since = now
            if not self.busy and now - self._behind_since >= self.busy_after_s:
                self.busy = True
                self._note_busy(True)
                log.warning("behind: every batch fills up, acknowledgements ask sensors to hold their resends")
            return
        self._behind_since = None
        if not self.busy:
            return
        self.busy = False
        self._note_busy(False)
        told, self._told_busy = self._told_busy, {}
        for identity, sensor, spool in told:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.send_multipart([identity, encode(ack(sensor, spool, []))], flags=zmq.NOBLOCK)
        log.warning("caught up: told %d connections to resend what is overdue", len(told))

    def _note_busy(self, busy: bool) -> None:
        """Write the change to the store's state (the metrics read it); a store that cannot be written now (a full
        disk) only loses the note."""
        try:
            if busy:
                self.store.set_state(BUSY_SINCE_KEY, time.time())
                self.store.set_state(BUSY_EPISODES_KEY, int(self.store.state(BUSY_EPISODES_KEY)) + 1)
            elif self.store.state(BUSY_SINCE_KEY):
                self.store.set_state(BUSY_SINCE_KEY, 0)
        except sqlite3.OperationalError as e:
            log.error("cannot note that the receiver is %s: %s", "busy" if busy else "keeping up", e)

    def _jobs(self) -> None:
        """Once a second: send open pcap jobs to their connected sensors, assemble the answers complete."""
        now = time.monotonic()
        if now - self._jobs_checked < 1.0:
            return
        self._jobs_checked = now
        db = self.store.db
        try:
            for line in evidence.assemble(db, self.evidence_folder):
                log.info("%s", line)
            if now - self._jobs_pruned >= 600:
                self._jobs_pruned = now
                for line in evidence.prune(db, *self.evidence_keep):
                    log.info("%s", line)
            sent = []
            for connection, frame, job_id in evidence.due(db, self.identities, self._jobs_sent_to, time.time()):
                try:
                    self.socket.send_multipart([connection, frame], flags=zmq.NOBLOCK)
                    sent.append(job_id)
                    self._jobs_sent_to[job_id] = connection
                except zmq.ZMQError:
                    continue  # gone since: sent again when it is back
            if len(self._jobs_sent_to) > 10_000:  # finished jobs' entries: at worst an open one is sent again
                self._jobs_sent_to.clear()
            if sent:
                evidence.mark_sent(db, sent, time.time())
                log.info("sent pcap jobs %s", ", ".join(map(str, sent)))
        except sqlite3.OperationalError as e:
            log.error("pcap jobs wait: %s", e)

    def _admit(self, sensor: str, size: int) -> bool:
        """Whether a message of `size` bytes from `sensor` is within its quotas; if not, it is counted (and logged
        once a minute per sensor) and will not be acknowledged."""
        why = self.quotas.admit(sensor, size)
        if why is None:
            return True
        counts = self._refused.setdefault(sensor, [0, 0, why])
        counts[0] += 1
        counts[1] += size
        counts[2] = why
        self.refused[sensor] += 1
        if self.quotas.should_tell(sensor):
            log.warning("sensor %r is over its quota (%s): its messages are not acknowledged, it keeps them and "
                        "sends them again (%d refused since start)", sensor, self.quotas.describe(why),
                        self.refused[sensor])  # fmt: skip
        return False

    def _take_refused(self, force: bool) -> dict[str, tuple[int, int, str]]:
        """The refusals to write now: with a batch, or on their own once every REFUSALS_EVERY_S."""
        if not self._refused or (not force and time.monotonic() - self._refused_written < REFUSALS_EVERY_S):
            return {}
        self._refused_written = time.monotonic()
        out, self._refused = {s: (c[0], c[1], c[2]) for s, c in self._refused.items()}, {}
        return out

    def _put_back(self, refused: dict[str, tuple[int, int, str]]) -> None:
        """Refusals a failed write did not keep: counted with the next one."""
        for s, (n, size, why) in refused.items():
            counts = self._refused.setdefault(s, [0, 0, why])
            counts[0] += n
            counts[1] += size

    def _handshake_failures(self) -> Counter[str]:
        failed: Counter[str] = Counter()
        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(flags=zmq.NOBLOCK))
            except zmq.Again:
                return failed
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                continue  # the key check counted and logged it already
            failed["handshake"] += 1
            log.warning("a connection failed its handshake (%s): plain text on a CURVE port, or garbage",
                        printable(event.get("endpoint", b"").decode(errors="replace")))  # fmt: skip

    def _store_refusals(self) -> int:
        """On an idle poll, store the refusals (key check, failed handshakes) so they are counted even when
        nobody else talks."""
        refusals = self.zap.take_refusals() if self.zap is not None else Counter()
        refusals.update(self._handshake_failures())
        refusals.update(self._unsaved)
        refused = self._take_refused(force=True)
        if not refusals and not refused:
            return 0
        try:
            self.store.store([], dict(refusals), refused)
        except sqlite3.OperationalError:
            self._unsaved = refusals
            self._put_back(refused)
            return 0
        except sqlite3.DatabaseError as e:
            raise StoreBroken(f"{self.store.path}: the store cannot be written ({e})") from None
        self._unsaved = Counter()
        self.rejected.update(refusals)
        return 0

    def serve(self, stop, tick=None) -> None:
        """Serve until stop() returns True; tick() runs after every batch or idle poll (systemd watchdog)."""
        while not stop():
            self.serve_once()
            if tick is not None:
                tick()


class StoreBroken(Exception):
    """The store fails for a reason other than a full disk: the aggregator must stop, not pretend."""
