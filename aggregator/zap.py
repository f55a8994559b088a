"""ZAP handler: who may talk to the aggregator, and under which sensor id.

Only CURVE clients whose public key is in the allow-list folder are admitted;
the key's file name is the sensor id the client may send as (the id becomes the
ZeroMQ User-Id of its messages). Every refusal is logged (rate-limited) with
the peer address and counted by reason.

The handler is the gate every sensor passes, so it must outlive any error: a
failure inside one request is logged and answered with a refusal, and the
loop carries on. The allow-list folder is read again only when it changed
(its modification time), and at most once a second, so a flood of unknown
keys costs no file system work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import zmq
import zmq.auth

from ntds.logs import printable

log = logging.getLogger("ntds.aggregator.zap")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
RELOAD_EVERY_S = 1.0


def load_allow_list(folder: str | Path) -> dict[bytes, str]:
    """z85 public key -> sensor id, from every NAME.key in the folder."""
    allowed = {}
    for f in sorted(Path(folder).glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(str(f))
        except (OSError, ValueError):
            log.warning("allow-list: %s is not a public key file, ignored", f)
            continue
        allowed[public] = f.stem
    return allowed


class ZapHandler(threading.Thread):
    def __init__(self, context: zmq.Context, allow_folder: str | Path) -> None:
        super().__init__(name="zap", daemon=True)
        self.folder = Path(allow_folder)
        self.allowed = load_allow_list(self.folder)
        self._mtime = self._folder_mtime()
        self._checked = time.monotonic()
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._socket = context.socket(zmq.REP)
        self._socket.linger = 0
        self._socket.bind(ZAP_ENDPOINT)
        self._halt = threading.Event()

    def _folder_mtime(self) -> float:
        try:
            return self.folder.stat().st_mtime
        except OSError:
            return 0.0

    def _maybe_reload(self) -> None:
        """A key added to the folder since start-up is admitted at its holder's next connection."""
        now = time.monotonic()
        if now - self._checked < RELOAD_EVERY_S:
            return
        self._checked = now
        mtime = self._folder_mtime()
        if mtime != self._mtime:
            self._mtime = mtime
            self.allowed = load_allow_list(self.folder)

    def take_refusals(self) -> Counter[str]:
        """Refusals counted since the last call (the receiver stores them with the other rejections)."""
        with self._lock:
            out, self.refused = self.refused, Counter()
        return out

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._halt.is_set():
            try:
                if not poller.poll(200):
                    continue
                msg = self._socket.recv_multipart()
            except zmq.ZMQError as e:  # interrupted or out of resources: retry, the gate must stay up
                log.error("key check could not read a request (%s); carrying on", e)
                time.sleep(0.05)
                continue
            try:
                reply = self._reply(msg)
            except Exception as e:  # noqa: BLE001 - a bad request must never stop the gate
                log.error("key check failed on one request (%s: %s); refused", type(e).__name__, e)
                self._count("malformed")
                reply = [b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"bad request", b"", b""]
            try:
                self._socket.send_multipart(reply)
            except zmq.ZMQError as e:
                log.error("key check could not answer (%s); carrying on", e)
        self._socket.close()

    def _reply(self, msg: list[bytes]) -> list[bytes]:
        if len(msg) < 6:
            self._count("malformed")
            return [b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"bad request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = msg[:6]
        credentials = msg[6:]
        user = None
        key = b"-"
        if mechanism == b"CURVE" and len(credentials) == 1:
            key = zmq.utils.z85.encode(credentials[0])
            user = self.allowed.get(key)
            if user is None:
                self._maybe_reload()
                user = self.allowed.get(key)
            reason = "unknown_key"
        else:
            reason = "no_curve"
        if user is None:
            self._count(reason)
            log.warning(
                "refused %s peer %s (key %s): not in the allow-list",
                printable(mechanism.decode(errors="replace")),
                printable(address.decode(errors="replace")),
                key.decode(),
            )
            return [version, request_id, b"400", b"not allowed", b"", b""]
        return [version, request_id, b"200", b"OK", user.encode(), b""]

    def _count(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1
