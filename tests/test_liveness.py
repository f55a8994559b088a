"""Dead peers are found by TCP, not ZMTP heartbeats: with heartbeats, libzmq 4.3.5 aborts the process when a
heartbeat falls due on a connection whose input stalled at the high-water mark and whose peer reset it
(zeromq/libzmq#4364). The scenario is run for real in two processes, both ways."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import zmq

from aggregator.receiver import Receiver
from aggregator.store import Store
from sensor.link import Link
from sensor.spool import Spool

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stall(mode: str) -> subprocess.CompletedProcess:
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    server = subprocess.Popen([sys.executable, str(HERE / "zmq_stall.py"), mode, port, "server"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    client = subprocess.run([sys.executable, str(HERE / "zmq_stall.py"), mode, port, "client"],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert client.returncode == -9  # it killed itself, with the server's acknowledgements unread
    out, _ = server.communicate(timeout=60)
    return subprocess.CompletedProcess(server.args, server.returncode, out)


def test_a_stalled_connection_whose_peer_resets_aborts_with_heartbeats_and_not_with_keepalive():
    old = stall("heartbeat")  # what both ends set before: the scenario still reproduces libzmq's abort
    assert old.returncode == -6 and "Assertion failed: !_io_error" in old.stdout, old.stdout
    new = stall("keepalive")
    assert new.returncode == 0 and "drained" in new.stdout, new.stdout


def test_both_ends_watch_their_peer_by_tcp(tmp_path):
    receiver = Receiver(f"tcp://127.0.0.1:{free_port()}", Store(tmp_path / "store.db"))
    link = Link(Spool(tmp_path / "spool.db", "tap-01"), "tcp://127.0.0.1:1")
    try:
        for s in (receiver.socket, link.socket):
            assert s.getsockopt(zmq.HEARTBEAT_IVL) == 0
            assert s.getsockopt(zmq.TCP_KEEPALIVE) == 1 and s.getsockopt(zmq.TCP_MAXRT) > 0
    finally:
        link.close()
        receiver.close()
