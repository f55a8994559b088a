"""ZAP handler: who may talk to the aggregator, and under which sensor id.

Only CURVE clients whose public key is in the allow-list folder are admitted;
the key's file name is the sensor id the client may send as (the id becomes the
ZeroMQ User-Id of its messages). Every refusal is logged with the peer address
and counted.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq
import zmq.auth

log = logging.getLogger("ntds.aggregator.zap")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


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
        self.refused = 0
        self._socket = context.socket(zmq.REP)
        self._socket.linger = 0
        self._socket.bind(ZAP_ENDPOINT)
        self._halt = threading.Event()

    def reload(self) -> None:
        self.allowed = load_allow_list(self.folder)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._halt.is_set():
            if not poller.poll(200):
                continue
            msg = self._socket.recv_multipart()
            if len(msg) < 6:
                self._socket.send_multipart([b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"bad request", b"", b""])
                continue
            version, request_id, _domain, address, _identity, mechanism = msg[:6]
            credentials = msg[6:]
            user = None
            if mechanism == b"CURVE" and len(credentials) == 1:
                key = zmq.utils.z85.encode(credentials[0])
                user = self.allowed.get(key)
                if user is None:
                    self.reload()  # a key added to the folder since start-up is admitted
                    user = self.allowed.get(key)
            if user is None:
                self.refused += 1
                log.warning(
                    "refused %s peer %s (key %s): not in the allow-list",
                    mechanism.decode(errors="replace"),
                    address.decode(errors="replace"),
                    zmq.utils.z85.encode(credentials[0]).decode() if len(credentials) == 1 else "-",
                )
                self._socket.send_multipart([version, request_id, b"400", b"not allowed", b"", b""])
            else:
                self._socket.send_multipart([version, request_id, b"200", b"OK", user.encode(), b""])
        self._socket.close()
