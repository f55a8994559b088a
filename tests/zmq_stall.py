"""A ROUTER whose input stalls at its receive high-water mark while its DEALER peer dies with unread data
(a reset): the case that made an overloaded aggregator abort (tests/test_liveness.py runs it).

    python tests/zmq_stall.py heartbeat|keepalive PORT server|client
"""

import os
import signal
import sys
import time

import zmq

MESSAGES = 20_000


def liveness(s: zmq.Socket, mode: str) -> None:
    if mode == "heartbeat":  # what both ends set before
        s.setsockopt(zmq.HEARTBEAT_IVL, 100)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    else:
        from ntds.wire.liveness import watch_peer

        watch_peer(s)


def socket(kind: int, mode: str) -> zmq.Socket:
    """Each end holds everything it is sent but reads only 10 messages ahead."""
    s = zmq.Context().socket(kind)
    s.linger = 0
    liveness(s, mode)
    s.setsockopt(zmq.RCVHWM, 10)
    s.setsockopt(zmq.SNDHWM, 100_000)
    return s


def server(mode: str, port: int) -> None:
    s = socket(zmq.ROUTER, mode)
    s.bind(f"tcp://127.0.0.1:{port}")
    peer = s.recv_multipart()[0]
    for _ in range(MESSAGES):
        s.send_multipart([peer, b"a" * 1000])  # acknowledgements the peer does not read
    time.sleep(4)  # behind: input stalls at the high-water mark while the peer goes away
    n = 0
    while s.poll(500):
        s.recv_multipart()
        n += 1
    print("drained", n, flush=True)


def client(mode: str, port: int) -> None:
    d = socket(zmq.DEALER, mode)
    d.connect(f"tcp://127.0.0.1:{port}")
    for _ in range(MESSAGES):
        d.send(b"x" * 1000)
    time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)  # unread data in its buffers: the kernel resets the connection


if __name__ == "__main__":
    (server if sys.argv[3] == "server" else client)(sys.argv[1], int(sys.argv[2]))
