"""Analysis workers: the host-level detectors spread over processes, each detector's state kept whole.

One Python process can analyse only so many flows a second, however many cores
its host has. The host-level detectors are most of that work, and each keeps
its state per *route* (`Detector.route`: the source host for scans and brute
force, the destination for beacons, the registered domain for DNS tunnels, the
local host for exfiltration, the conversation for long connections). Every
(detector, route) belongs to one worker, by a hash of the route, so each worker
sees all of the flows its rows are made of, in the order they ended, and
concludes what one process would have. The sensor's own process keeps what
needs every flow in order: rarity scoring, the flows behind an alert, grouping,
summaries, the spool and the link.

Per batch: the flows go to every worker at once (one pickled copy, each with its
own list of which detectors to run on which flow), the sensor's process scores
rarity meanwhile, then takes the workers' findings and puts them back in flow
order, detector order within a flow: exactly the order of one process, so the
alerts are the same (tests/test_analysis_workers.py). Each worker's tables have
the configured bounds (so N workers hold at most N times the rows).

Workers are forked before any capture thread starts, ignore SIGINT and SIGTERM
(the sensor stops them once the last flows are judged, like its meters), and
end by themselves when the sensor's end of their pipe closes, kill -9 included.
The pipe carries Python objects between processes of one sensor (pickle): it
never crosses a trust boundary and never lands on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from operator import attrgetter

from ntds.detect.hosts import Detector, Finding
from ntds.errors import WorkerFailed
from ntds.flows.traffic import FlowTraffic

PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1
_FIELDS = tuple(FlowTraffic.__dataclass_fields__)
_values = attrgetter(*_FIELDS)
"""A flow travels as the tuple of its fields: pickled several times faster than the dataclass."""


def cores_left(meters: int) -> int:
    """Workers the host's cores allow beside the meters and the sensor's own process (0 on 2 cores, 1 meter)."""
    return max(0, (os.cpu_count() or 1) - meters - 1)


class Workers:
    """N processes each running every detector on the flows routed to it."""

    def __init__(self, n: int, build: Callable[[], list[Detector]]) -> None:
        self.n = n
        self.kinds = build()  # the sensor's process keeps a copy for `counted` (the flows behind an alert)
        bits: dict = {}  # detectors that route alike (most by the source) are routed once a flow
        for d_i, d in enumerate(self.kinds):
            bits[type(d).route] = bits.get(type(d).route, 0) | 1 << d_i
        self._routes = [(self.kinds[(b & -b).bit_length() - 1].route, b) for b in bits.values()]
        self.evicted = [0] * n
        self.sizes = [0] * n
        ctx = multiprocessing.get_context("fork")
        self.conns, self.procs = [], []
        for k in range(n):
            ours, theirs = ctx.Pipe()
            # the worker closes its copies of the sensor's ends (its own pipe's too), or it would never see EOF
            p = ctx.Process(target=_serve, args=(theirs, build, k, os.getpid(), [*self.conns, ours]),
                            name=f"ntds-analysis-{k}", daemon=True)  # fmt: skip
            p.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def send(self, flows: Sequence[FlowTraffic]) -> None:
        """Hand a batch to the workers: each gets every flow once, with the detectors it owns for it (a bit each)."""
        n = self.n
        masks = [[0] * len(flows) for _ in range(n)]
        for i, t in enumerate(flows):
            for route, bits in self._routes:
                k = hash(route(t)) % n
                masks[k][i] |= bits
        data = pickle.dumps([_values(t) for t in flows], pickle.HIGHEST_PROTOCOL)
        for k in range(n):
            self._send(k, ("batch", masks[k]), data)

    def set_local(self, local: Callable[[str], bool]) -> None:
        """New local networks (SIGHUP), from the next batch on, as in the sensor's process: `local` must pickle
        (a bound method of the sensor's traffic classes does)."""
        for d in self.kinds:
            d.local = local
        for k in range(self.n):
            self._send(k, ("local", local))

    def _send(self, k: int, message: tuple, data: bytes | None = None) -> None:
        try:
            self.conns[k].send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
            if data is not None:
                self.conns[k].send_bytes(data)
        except OSError as e:
            raise WorkerFailed(f"analysis worker {k} is gone ({e.strerror or e})") from None

    def receive(self) -> dict[int, list[tuple[int, Finding]]]:
        """The batch's findings by flow position, each flow's in detector order."""
        found: list[tuple[int, int, Finding]] = []
        for k, conn in enumerate(self.conns):
            try:
                reply = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                raise WorkerFailed(f"analysis worker {k} died (exit {self.procs[k].exitcode})") from None
            if isinstance(reply, str):
                raise WorkerFailed(f"analysis worker {k} failed: {reply}")
            part, self.evicted[k], self.sizes[k] = reply
            found += part
        found.sort(key=lambda x: (x[0], x[1]))
        out: dict[int, list[tuple[int, Finding]]] = {}
        for i, d_i, f in found:
            out.setdefault(i, []).append((d_i, f))
        return out

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()


def _bind_to_parent(name: str, parent: int) -> None:
    """Named in ps, top and /proc/PID/comm, and killed by the kernel when the sensor dies: the pipe alone would
    not say so while a sibling (another worker, a meter forked later) holds a copy of the sensor's end."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the sensor died before the line above
        os._exit(0)


def _serve(conn, build: Callable[[], list[Detector]], k: int, parent: int, others: list) -> None:
    """One worker: batches in, findings out, until the sensor closes the pipe."""
    _bind_to_parent(f"ntds-analysis-{k}", parent)
    for other in others:
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    detectors = build()
    while True:
        try:
            what, value = pickle.loads(conn.recv_bytes())
            if what == "local":
                for d in detectors:
                    d.local = value
                continue
            masks, rows = value, pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            found = []
            for i, (mask, row) in enumerate(zip(masks, rows)):
                if not mask:
                    continue
                t = FlowTraffic(*row)
                for d_i, d in enumerate(detectors):
                    if mask >> d_i & 1:
                        found += [(i, d_i, f) for f in d.findings(t)]
            reply = (found, sum(d.evicted for d in detectors), sum(d.size for d in detectors))
        except Exception as e:  # noqa: BLE001 - reported by the sensor's process, which stops
            reply = f"{type(e).__name__}: {e}"
        try:
            conn.send_bytes(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
        except OSError:
            return
