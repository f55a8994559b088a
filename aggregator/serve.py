"""`ntds-aggregator serve`: the receiver in the main thread, the archiver (and the other workers) beside it.

The process is alive only while every part of it is: a background worker that
dies unexpectedly (a corrupt store, a bug) stops the whole process with a
non-zero exit and one log line, so systemd restarts it, instead of leaving a
receiver that acknowledges while nothing is archived. The watchdog is pinged
only from a healthy main loop.

The broadcast is the exception: nothing a sensor sends waits on it (its work
is on the store, picked up where it stopped), while a restart of the process
stops every sensor's acknowledgements. A broadcast thread that ends is logged
and started again, with a growing wait while it keeps ending; it never takes
`serve` down.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import threading
import time

from aggregator.archive import Archiver
from aggregator.baselines import Pusher
from aggregator.broadcast.outbox import Broadcaster
from aggregator.config import AggregatorConfig
from aggregator.context import ContextOptions, ContextWorker
from aggregator.intel import IntelPusher
from aggregator.quotas import Quotas
from aggregator.receiver import Receiver, StoreBroken
from aggregator.store import IntegrityCheck, damaged_marker, open_store
from ntds.errors import InputError, one_line
from ntds.notify import Notifier
from ntds.wire.keys import load_pair

log = logging.getLogger("ntds.aggregator")
EXIT_FAILED = 1
DAMAGE_WORDS = ("malformed", "not a database", "the store is damaged")
"""What SQLite (or the store check) says of a damaged store: serve marks it and will not start on it again."""
BROADCAST_RESTART_S = (1.0, 60.0)
"""First and longest wait before the broadcast thread is started again (doubling while it keeps ending)."""


def raise_open_file_limit() -> int:
    """Every sensor connection is a file descriptor: use all the kernel allows this process (the unit sets
    LimitNOFILE), so a burst of connections does not starve the store and the archive of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Server:
    def __init__(self, cfg: AggregatorConfig, insecure: bool = False) -> None:
        self.cfg = cfg
        self.files = raise_open_file_limit()
        secret = None if insecure else load_pair(cfg.server_key)
        self.store = open_store(cfg.store, create=True, check=True, check_at_start_mb=cfg.store_check_at_start_mb)
        try:
            self.receiver = Receiver(
                cfg.endpoint, self.store, server_secret=secret, allow_folder=None if insecure else cfg.allow_list,
                quotas=Quotas.of(self.store, cfg), receive_queue=cfg.receive_queue,
            )  # fmt: skip
        except Exception as e:  # zmq errors on bind name the endpoint problem
            self.store.close()
            raise InputError(f"{cfg.endpoint}: cannot listen: {e}") from None
        self.receiver.pusher = Pusher(cfg.store)
        self.receiver.intel_pusher = IntelPusher(cfg.store)
        self.receiver.evidence_keep = (cfg.evidence_days * 86400.0, cfg.evidence_mb * 2**20)
        self.archiver = Archiver(cfg)
        self.context = ContextWorker(cfg.store, ContextOptions.of(cfg))
        self.workers: list[threading.Thread] = [self.archiver, self.context]
        self.store_check: IntegrityCheck | None = None
        if cfg.store.stat().st_size > cfg.store_check_at_start_mb * 2**20:  # too big to check before starting
            self.store_check = IntegrityCheck(cfg.store)
            self.workers.append(self.store_check)
        routes, receivers, options = cfg.broadcast_setup
        self.broadcast_setup = (routes, receivers, options) if routes else None
        self.broadcaster: Broadcaster | None = None
        self._broadcast_next = 0.0  # monotonic time of the next start of the broadcast thread
        self._broadcast_wait = BROADCAST_RESTART_S[0]
        if self.receiver.zap is not None:
            self.workers.append(self.receiver.zap)
        self.notify = Notifier()
        self._stopping = False
        self._shown = 0.0
        self.failure: str | None = None

    def _on_signal(self, *_) -> None:
        self._stopping = True

    def _stop(self) -> bool:
        dead = [w.name for w in self.workers if not w.is_alive()]
        if dead and not self._stopping:
            reason = next((getattr(w, "failure", None) for w in self.workers if w.name in dead), None)
            self.failure = f"the {', '.join(dead)} thread stopped" + (f": {reason}" if reason else "")
        return self._stopping or self.failure is not None

    def _broadcast(self) -> None:
        """Start the broadcast thread, or again once its wait is over if it ended (logged once per end)."""
        if self.broadcast_setup is None or self._stopping:
            return
        b = self.broadcaster
        if b is not None and b.is_alive():
            if b.started_at is not None and time.monotonic() - b.started_at > 300:
                self._broadcast_wait = BROADCAST_RESTART_S[0]  # it has run a while: the next end waits little
            return
        now = time.monotonic()
        if b is not None and not b.noted:
            b.noted = True
            self._broadcast_next = now + self._broadcast_wait
            log.error("the broadcast thread stopped (%s); starting it again in %.0f s", b.failure or "no reason given",
                      self._broadcast_wait)  # fmt: skip
            self._broadcast_wait = min(self._broadcast_wait * 2, BROADCAST_RESTART_S[1])
        if now < self._broadcast_next:
            return
        routes, receivers, options = self.broadcast_setup
        try:
            self.broadcaster = Broadcaster(self.cfg.store, routes, receivers, options)
        except Exception as e:  # noqa: BLE001 - a store that cannot be opened now (a full disk): try again later
            self._broadcast_next = now + self._broadcast_wait
            log.error("the broadcast cannot start (%s); trying again in %.0f s", one_line(e), self._broadcast_wait)
            self._broadcast_wait = min(self._broadcast_wait * 2, BROADCAST_RESTART_S[1])
            self.broadcaster = None
            return
        self.broadcaster.start()
        log.info("broadcasting to %d receivers over %d routes", len(receivers), len(routes))

    def _tick(self) -> None:
        if self.failure is not None:
            return
        self._broadcast()
        self.notify.watchdog()
        if time.monotonic() - self._shown >= 2:
            self._shown = time.monotonic()
            r = self.receiver
            self.notify.status(
                f"{r.stored:,} messages stored, {sum(r.rejected.values()):,} rejected, listening on {r.endpoint}"
            )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("listening on %s (%s), up to %d open files", self.receiver.endpoint,
                 "CURVE" if self.receiver.secure else "plain", self.files)  # fmt: skip
        self.archiver.start()
        self.context.start()
        if self.store_check is not None:
            self.store_check.start()
        self._broadcast()
        self.notify.ready(f"listening on {self.receiver.endpoint}")
        try:
            self.receiver.serve(self._stop, self._tick)
        except StoreBroken as e:
            self.failure = str(e)
        finally:
            self.notify.stopping()
            self.receiver.close()
            self.receiver.pusher.close()
            self.receiver.intel_pusher.close()
            if self.broadcaster is not None:
                self.broadcaster.stop()
            self.context.stop()
            if self.store_check is not None:
                self.store_check.stop()
            self.store.close()
            self.archiver.stop(final_export=self.failure is None, within_s=self.cfg.shutdown_export_s)
        if self.failure:
            log.critical("stopping: %s", self.failure)
            if any(word in self.failure for word in DAMAGE_WORDS):  # found damaged: no restart until someone looks
                with contextlib.suppress(OSError):
                    damaged_marker(self.cfg.store).write_text(self.failure + "\n")
            return EXIT_FAILED
        return 0
