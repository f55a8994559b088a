"""The aggregator's receiving end: a ROUTER socket, CURVE by default, acks after durable storage.

Per loop: drain what has arrived (up to a batch), reject what is malformed or
claims another sensor's id (counted, per reason), store the rest in one
transaction, then acknowledge every message of the batch to its sender,
including duplicates of messages stored before (a lost ack means a resend).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import zmq

from aggregator.store import Store
from aggregator.zap import ZapHandler
from ntds.wire.schema import MAX_FRAME, Message, WireError, ack, decode, encode

log = logging.getLogger("ntds.aggregator.receiver")
HEARTBEAT_MS = 5000
BATCH = 2000


class Receiver:
    def __init__(
        self,
        endpoint: str,
        store: Store,
        *,
        server_secret: tuple[bytes, bytes] | None = None,
        allow_folder: str | Path | None = None,
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
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * HEARTBEAT_MS)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted sensor takes over its old identity
        if self.secure:
            public, secret = server_secret
            self.socket.curve_server = True
            self.socket.curve_publickey = public
            self.socket.curve_secretkey = secret
            self.socket.zap_domain = b"ntds"
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.store = store
        self.rejected: Counter[str] = Counter()
        self.stored = 0
        self.store_errors = 0

    def close(self) -> None:
        if self.zap:
            self.zap.stop()
            self.zap.join(timeout=2)
        self.socket.close()
        self.context.term()

    def serve_once(self, timeout_ms: int = 200) -> int:
        """Handle one batch; returns the number of messages acknowledged."""
        if not self.socket.poll(timeout_ms):
            return 0
        batch: list[tuple[bytes, Message]] = []
        rejections: Counter[str] = Counter()
        while len(batch) < BATCH:
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            identity = frames[0].bytes
            if len(frames) != 2:
                rejections["malformed"] += 1
                continue
            frame = frames[1]
            try:
                msg = decode(frame.bytes)
            except WireError as e:
                text = str(e)
                reason = "oversized" if "exceeds" in text else "version" if "schema version" in text else "malformed"
                rejections[reason] += 1
                log.warning("rejected a %s message: %s", reason, text)
                continue
            if msg.type == "ack":
                rejections["malformed"] += 1
                continue
            if self.secure:
                bound = frame.get("User-Id")
                if msg.sensor != bound:
                    rejections["impersonation"] += 1
                    log.warning("rejected a message claiming sensor %r from the key of %r", msg.sensor, bound)
                    continue
            batch.append((identity, msg))
        if not batch and not rejections:
            return 0
        try:
            self.stored += self.store.store([m for _, m in batch], dict(rejections))
        except sqlite3.Error as e:
            # A full disk: nothing of the batch is acknowledged, so every sensor keeps it and resends.
            self.store_errors += 1
            log.error("cannot store a batch of %d messages, not acknowledged (sensors resend): %s", len(batch), e)
            return 0
        self.rejected.update(rejections)
        acks: dict[bytes, list[int]] = defaultdict(list)
        sensor_of: dict[bytes, str] = {}
        for identity, m in batch:
            acks[identity].append(m.seq)
            sensor_of[identity] = m.sensor
        for identity, seqs in acks.items():
            # A peer gone since: it resends, and the duplicate is acknowledged then.
            with contextlib.suppress(zmq.ZMQError):
                self.socket.send_multipart([identity, encode(ack(sensor_of[identity], seqs))], flags=zmq.NOBLOCK)
        return len(batch)

    def serve(self, stop, tick=None) -> None:
        """Serve until stop() returns True; tick() runs after every batch or idle poll (systemd watchdog)."""
        while not stop():
            self.serve_once()
            if tick is not None:
                tick()
