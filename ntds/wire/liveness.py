"""How both ends of the link notice a dead peer: TCP keepalive and a retransmission limit, not ZMTP heartbeats.

libzmq 4.3.5 (what pyzmq 27.3.0 bundles, and still the newest release) aborts the whole process with
"Assertion failed: !_io_error (stream_engine_base.cpp)" when a heartbeat falls due on a connection whose input
had stopped at the receive high-water mark and whose peer then reset it: the heartbeat timer writes to a socket
the engine has already closed (zeromq/libzmq#4364, open; the heartbeat and high-water-mark crashes #3937 and
#4229 are the same engine path). An overloaded aggregator with sensors that give up and reconnect is exactly
that case: it aborted once under 3,200 messages a second. Without ZMTP heartbeats that timer does not exist,
and a peer sends no PING that would have to be answered on a dead connection. The kernel does the same job:
keepalive probes find an idle peer that is gone, and TCP_MAXRT (TCP_USER_TIMEOUT) ends a connection whose
sent data stay unacknowledged, and libzmq reconnects.
"""

from __future__ import annotations

import zmq

IDLE_S, PROBE_S, PROBES = 15, 5, 3
"""Keepalive: the first probe after 15 s of silence, then every 5 s; three unanswered end the connection."""
UNACKNOWLEDGED_MS = 30_000
"""Data unacknowledged by the peer's TCP for this long end the connection."""


def watch_peer(socket: zmq.Socket) -> None:
    """Set before connect or bind."""
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, IDLE_S)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, PROBE_S)
    socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, PROBES)
    socket.setsockopt(zmq.TCP_MAXRT, UNACKNOWLEDGED_MS)
