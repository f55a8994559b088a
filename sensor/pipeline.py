"""The sensor pipeline: capture -> features -> score -> summarise -> publish, live or from files.

`ntds-sensor run` (interfaces) and `ntds-sensor replay` (capture files) are the
same object with a different source. Each source is one NFStreamer iterated in
a thread of its own, feeding a bounded queue; the main thread owns everything
else, so it wakes at least four times a second even on a silent interface:
batches of flows are scored together (numpy), alerts and summaries go to the
durable spool and out over the link, health and the systemd watchdog and
STATUS line are kept current, signals are acted on.

Stopping (SIGTERM, SIGINT, or the end of the files) goes through NFStream's
own end-of-capture path (`ntds.flows.engine`): capture stops, every open
flow is expired, scored, summarised and spooled, the spool is flushed to the
aggregator for a while, and the process exits 0. SIGHUP re-reads the
configuration and the baseline; a baseline that does not load is refused and
the old one kept, settings that need a restart are named and left alone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ntds.detect.baseline import Baseline
from ntds.detect.detection import Detection
from ntds.detect.workers import cores_left
from ntds.errors import InputError
from ntds.flows.engine import CaptureControl
from ntds.flows.meter import FlowMeter, FlowRecord
from ntds.intel.matching import IntelSet
from ntds.logs import printable
from ntds.notify import Notifier
from ntds.progress import Progress
from ntds.wire import schema as wire
from ntds.wire.keys import load_pair, load_public
from ntds.wire.schema import TIERS, in_time_range
from sensor.baseline_updates import BaselineUpdates, Refused
from sensor.config import SensorConfig
from sensor.config import load as load_config
from sensor.context import ContextCounter
from sensor.evidence.jobs import Evidence, EvidenceWorker
from sensor.evidence.ring import prune as prune_ring
from sensor.flow_records import FlowRecords
from sensor.geo import GeoIP
from sensor.handoff import Handoff
from sensor.intel_hunt import RetroHunt
from sensor.intel_updates import IntelUpdates
from sensor.intel_updates import Refused as IntelRefused
from sensor.link import Link
from sensor.populations import PopulationStats
from sensor.spool import Spool
from sensor.summaries import Summariser
from sensor.traffic_classes import TrafficClasses

log = logging.getLogger("ntds.sensor")

BATCH = 512
"""Flows scored together; a partial batch waits at most FLUSH_S."""
FLUSH_S = 1.0
QUEUE = 50_000
"""Flows between capture and scoring; when full, the meters wait (and a live capture drops, counted)."""
SLOTS_PER_SOURCE = 16
RING_PRUNE_S = 5.0
"""How often the ring keeper looks at the ring's size and age."""
DRAIN_ON_STOP_S = 10.0
"""How long `run` keeps trying to deliver the spool after SIGTERM; the rest waits in the spool."""


@dataclass
class Counters:
    packets: int = 0
    flows: int = 0
    skipped: int = 0
    alerts: int = 0
    tiers: list[int] = field(default_factory=lambda: [0] * TIERS)
    started: float = field(default_factory=time.monotonic)


class _Done:
    """End of one source, with the error that ended it, if any."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error


class Pipeline:
    """One sensor: its configuration, its sources, and the loop that ties them to the aggregator."""

    def __init__(
        self,
        cfg: SensorConfig,
        *,
        interfaces: list[str] | None = None,
        files: list[Path] | None = None,
        pace: str = "max",
        insecure: bool = False,
        progress: bool = False,
        drain_s: float = DRAIN_ON_STOP_S,
        serve_evidence_s: float = 0.0,
    ) -> None:
        if bool(interfaces) == bool(files):
            raise InputError("give either interfaces (run) or capture files (replay)")
        self.cfg = cfg
        self.live = bool(interfaces)
        self.interfaces = interfaces or []
        self.files = files or []
        self.insecure = insecure
        self.progress = Progress(enabled=progress, status=True)
        self.drain_s = drain_s
        self.notify = Notifier()
        self.counters = Counters()
        self.control = CaptureControl(pace, max_flows=cfg.max_flows, live=self.live)
        self.queue = Handoff(QUEUE)
        self._stop_requested = False
        self._reload_requested = False
        self._pending: list[FlowRecord] = []
        self._early: list = []
        self._last_flush = time.monotonic()
        self._data_clock_ms = 0
        self._rate_mark = (time.monotonic(), 0)
        # Everything that can fail on bad input fails here, before any capture opens.
        self.updates = BaselineUpdates(cfg.baseline_key, cfg.feature_profile, cfg.spool_dir)
        # A baseline the aggregator pushed (and signed) earlier wins over the configured file, which stays the
        # fallback: the configured one is still loaded, so a bad file is an error at start either way.
        configured = Baseline.load(cfg.baseline, feature_profile=cfg.feature_profile)
        self.baseline = self.updates.stored() or configured
        # The indicator set the aggregator pushed (and signed) last, kept in the spool folder: matched from the start.
        self.intel_updates = IntelUpdates(cfg.baseline_key, cfg.spool_dir)
        intel = self.intel_updates.stored()
        self.hunt: RetroHunt | None = None
        self.summariser = self._summariser(cfg)
        self.populations = PopulationStats(cfg.stats_interval_s) if cfg.stats_interval_s else None
        self.context = (
            ContextCounter(self.summariser.classes, cfg.context_interval_s, cfg.context_max_destinations,
                           cfg.context_max_hosts) if cfg.context_interval_s else None
        )  # fmt: skip
        self.detection = Detection(
            self.baseline,
            min_tier=cfg.min_alert_tier,
            min_flow_tier=cfg.min_flow_tier,
            detectors=cfg.detectors,
            grouping=cfg.grouping,
            local=self.summariser.classes.is_local,  # a reload hands detection the new one (set_local)
            intel=intel,
            workers=self._workers(cfg, len(self.interfaces)),
        )
        self.meter = FlowMeter(
            cfg.feature_profile,
            n_meters=cfg.n_meters,
            bpf_filter=cfg.bpf_filter or None,
            snapshot_length=cfg.snaplen,
            capture_buffer_mb=cfg.capture_buffer_mb,
            on_warning=lambda m: log.warning("%s", m),
            single_packet_flows=True,
            control=self.control,
        )
        self.infos = self.meter.check(self.files) if self.files else []
        for name in self.interfaces:
            try:
                socket.if_nametoindex(name)
            except OSError:
                raise InputError(f"interface {name!r} does not exist") from None
        self.keys = None if insecure else (load_pair(cfg.sensor_key), load_public(cfg.server_key))
        try:
            self.spool = Spool(cfg.spool, cfg.sensor_id, max_bytes=cfg.spool_limit_mb * 1024 * 1024)
        except Exception as e:  # sqlite3 or OSError: an unwritable or corrupt spool
            raise InputError(f"{cfg.spool}: cannot open the spool: {e}") from None
        self.evidence = self._evidence(cfg)
        self.evidence_worker: EvidenceWorker | None = None
        self.serve_evidence_s = serve_evidence_s
        self._ring_disk = 0
        self._ring_errors = self._ring_written = 0
        self._ring_failing = False
        self.records: FlowRecords | None = None
        if cfg.flow_records_dir:
            try:
                self.records = FlowRecords(cfg.flow_records_dir, cfg.flow_records_file_mb, cfg.flow_records_max_mb)
            except OSError as e:
                raise InputError(f"{cfg.flow_records_dir}: cannot keep flow records there: {e.strerror or e}") from None

    @staticmethod
    def _workers(cfg: SensorConfig, interfaces: int) -> int:
        """Analysis worker processes: the setting, or (-1) the cores left beside the meters and this process."""
        if cfg.analysis_workers >= 0:
            return cfg.analysis_workers
        return cores_left(max(interfaces, 1) * max(cfg.n_meters, 1))

    def _evidence(self, cfg: SensorConfig) -> Evidence:
        """The evidence room: the ring (live, ring_mb > 0), the kept packets, the replayed files remembered."""
        folder = cfg.evidence_folder
        ring = folder / "ring" if self.live and cfg.ring_mb else None
        try:
            if ring is not None:
                ring.mkdir(parents=True, exist_ok=True)
            evidence = Evidence(folder, ring, max_mb=cfg.pcap_max_mb, keep_mb=cfg.evidence_keep_mb,
                                keep_days=cfg.evidence_keep_days)  # fmt: skip
            if self.files:
                evidence.remember_replay((i.path, i.packets if i.damaged else None) for i in self.infos)
        except OSError as e:
            raise InputError(f"{folder}: cannot keep evidence there: {e.strerror or e}") from None
        if ring is not None:
            self.control.ring(ring, cfg.ring_file_mb)
        return evidence

    @staticmethod
    def _summariser(cfg: SensorConfig) -> Summariser:
        try:
            classes = TrafficClasses(cfg.local_networks, cfg.local_servers)
            return Summariser(classes, GeoIP(cfg.geoip_database), cfg.summary_interval_s)
        except ValueError as e:
            raise InputError(f"{cfg.path}: {e}") from None

    # -- running ------------------------------------------------------------------------

    def run(self) -> int:
        """Capture until stopped (live) or until the files end (replay); returns the exit code."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
        # Inherited by the meters: SIGUSR1 only interrupts their wait (see CaptureControl.wake), and SIGTERM
        # or SIGINT sent to the whole group (Ctrl-C) does not kill them before their flows are out.
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        link = None
        self.evidence_worker = EvidenceWorker(self.evidence)
        self.evidence_worker.start()
        try:
            threads = self._start_sources()
            self._yield_to_meters()
            link = Link(self.spool, self.cfg.aggregator, client_keys=self.keys and self.keys[0],
                        server_public=self.keys and self.keys[1])  # fmt: skip
            self.spool.append([("hello", self._hello())])
            what = ", ".join(self.interfaces) if self.live else f"{len(self.files)} files"
            log.info("capturing from %s, sending to %s as %s", what, self.cfg.aggregator, self.cfg.sensor_id)
            self.notify.ready(self.status())
            self._loop(link, len(threads))
            for t in threads:
                t.join(timeout=5)
            return self._finish(link)
        except sqlite3.Error as e:
            # A full disk (or a spool gone bad): what is spooled stays spooled, and systemd restarts us.
            raise InputError(f"{self.cfg.spool}: cannot write the spool ({e}); what it holds is kept") from None
        finally:
            self.control.stop()
            self.detection.stop()
            self.evidence_worker.stop()
            if self.records is not None:
                with contextlib.suppress(OSError):
                    self.records.close()
            if link is not None:
                link.close()
            self.spool.close()
            for s, h in previous.items():
                signal.signal(s, h)
            self.progress.close()

    def _on_stop(self, *_) -> None:
        self._stop_requested = True

    def _on_reload(self, *_) -> None:
        self._reload_requested = True

    def _hello(self) -> dict:
        return wire.hello(self.baseline.id, self.cfg.feature_profile, self.intel_updates.serial)

    def _sources(self) -> list[Callable[[], Iterator[FlowRecord]]]:
        if self.live:
            return [lambda k=k, name=name: self.meter.live(name, k * SLOTS_PER_SOURCE)
                    for k, name in enumerate(self.interfaces)]  # fmt: skip
        return [lambda: self.meter.read_checked(self.infos)]

    def _start_sources(self) -> list[threading.Thread]:
        threads = []
        for k, source in enumerate(self._sources()):
            before = len(multiprocessing.active_children())
            t = threading.Thread(target=self._capture, args=(source,), name=f"capture-{k}", daemon=True)
            t.start()
            threads.append(t)
            # Meters fork when the streamer starts; the next source's meters need the next slots.
            end = time.monotonic() + 10
            while len(multiprocessing.active_children()) <= before and t.is_alive() and time.monotonic() < end:
                time.sleep(0.01)
        # Capture open errors (permissions, a bad BPF filter) arrive within moments: fail before READY.
        time.sleep(0.3)
        items = self.queue.get_nowait()
        if items and isinstance(items[0], _Done) and items[0].error is not None:
            self.control.stop()
            raise items[0].error
        self._early = items  # the loop takes them first: putting them back would move them to the end
        return threads

    def _yield_to_meters(self) -> None:
        """Capture first: once the meters have forked (at the default priority), every thread of the sensor's
        own process, and any it starts later, runs `analysis_nice` steps lower. A packet the meter misses is
        lost for good, while a flow waiting for analysis is only late, so on a busy host the kernel gives
        the meters the CPU and the analysis catches up from its queue (docs/benchmarks.md)."""
        step = self.cfg.analysis_nice
        if not self.live or not step:
            return
        workers = self.detection.workers.pids if self.detection.workers else []
        try:
            for tid in [*map(int, os.listdir("/proc/self/task")), *workers]:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
        except OSError as e:
            log.warning("analysis runs at the meters' priority: cannot lower it (%s)", e.strerror or e)

    def _capture(self, source: Callable[[], Iterator[FlowRecord]]) -> None:
        try:
            for record in source():
                self.queue.put(record)
        except InputError as e:
            self.queue.put(_Done(e))
            return
        except Exception as e:  # noqa: BLE001 - reported by the main thread, as one line
            self.queue.put(_Done(InputError(f"capture failed: {type(e).__name__}: {e}")))
            return
        self.queue.put(_Done())

    def _loop(self, link: Link, sources: int) -> None:
        done = 0
        next_tick = next_health = next_ring = time.monotonic()
        last_wake = 0.0
        while done < sources:
            items, self._early = self._early or self.queue.get(timeout=0.25), []
            for item in items:
                if isinstance(item, _Done):
                    done += 1
                    if item.error is not None:
                        self.control.stop()
                        raise item.error
                else:
                    self._pending.append(item)
                    if len(self._pending) >= BATCH:
                        self._flush()
            now = time.monotonic()
            if self._pending and now - self._last_flush >= FLUSH_S:
                self._flush()
            if self._stop_requested and not self.control.stopping:
                log.info("stopping: closing capture, expiring open flows")
                self.notify.stopping()
                self.control.stop()
            elif self.control.stopping and now - last_wake >= 0.25:
                last_wake = now
                self.control.wake()
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if now >= next_tick:
                next_tick = now + 1.0
                self._close_intervals()
                link.pump(0)
                self._take_pushed(link)
                self._spool_evidence()
                self._spool_hunted()
                if now >= next_ring:
                    next_ring = now + RING_PRUNE_S
                    self._prune_ring()
                self.notify.watchdog()
                self.notify.status(self.status())
                self.progress.note(self.status())
            if now >= next_health:
                next_health = now + self.cfg.health_interval_s
                self.spool.append([("health", self._health())])
        self._flush()

    def _take_pushed(self, link: Link) -> None:
        """Parts of a pushed baseline: a complete, verified one is swapped in like a SIGHUP's, and the hello that
        names it tells the aggregator (and every later health) that it is active."""
        parts, link.downstream = link.downstream, []
        for m in parts:
            if m.type == "pcap_job":
                log.info("pcap job %d: packets of %s from %s to %s", m.seq, printable(m.body["host"]),
                         m.body["since"], m.body["until"])  # fmt: skip
                self.evidence_worker.job(m.seq, m.body)
                continue
            if m.type == "intel":
                self._take_intel(m)
                continue
            try:
                baseline = self.updates.take(m)
            except Refused as e:
                log.error("refused the baseline the aggregator pushed (push %d, not yet verified): %s; still using %s",
                          m.seq, e, self.baseline.id)  # fmt: skip
                continue
            if baseline is not None:
                self._swap(baseline, self.cfg)
                log.info("activated baseline %s (signed grant %d, pushed by the aggregator)", baseline.id, m.seq)

    def _take_intel(self, m: wire.Message) -> None:
        """A part of a pushed indicator set: a complete, verified one is matched from the next flow on (flows
        already judged keep the set they were matched with), and a hello names its serial."""
        previous = self.detection.intel
        try:
            intel = self.intel_updates.take(m)
        except IntelRefused as e:
            log.error("refused the indicator set the aggregator pushed (set %d): %s; still matching set %d", m.seq, e,
                      self.intel_updates.serial)  # fmt: skip
            return
        if intel is not None:
            self._flush()
            self.detection.intel = intel
            self.spool.append([("hello", self._hello())])
            log.info("matching indicator set %d (%d indicators, %.1f MB), pushed by the aggregator", m.seq, len(intel),
                     intel.nbytes / 2**20)  # fmt: skip
            self._retro_hunt(intel, previous)

    def _retro_hunt(self, intel: IntelSet, previous: IntelSet | None) -> None:
        """The indicators new to this sensor, searched in its closed flow-record files, in the background."""
        if self.records is None or (self.hunt is not None and self.hunt.is_alive()):
            return  # one hunt at a time: a set taken during one is hunted by the next push's
        files = self.records.files()
        new = intel.new_since(previous)
        if files and len(new):
            self.hunt = RetroHunt(files, new, self.baseline.id, self.summariser.classes.is_local, self.cfg.sensor_id)
            self.hunt.start()

    def _spool_hunted(self) -> None:
        if self.hunt is not None and self.hunt.found:
            alerts = self.hunt.take()
            for i in range(0, len(alerts), 64):
                self._spool_alerts(alerts[i : i + 64])

    def _swap(self, baseline: Baseline, cfg: SensorConfig) -> None:
        self._flush()  # flows scored so far keep the baseline they were scored with
        self.baseline = baseline
        self.detection.reload(baseline, cfg.min_alert_tier, cfg.min_flow_tier)
        self.spool.append([("hello", self._hello())])

    def _flush(self) -> None:
        """Score the pending flows as one batch, spool their alerts, count them in the summaries."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        dated = [r for r in pending if in_time_range(r.traffic.start_ms) and in_time_range(r.traffic.end_ms)]
        if len(dated) < len(pending):
            # A clock outside what the wire can carry (a fuzzed capture): counted in health, never sent.
            self.counters.skipped += len(pending) - len(dated)
            pending = dated
        self._record(pending)
        judged = self.detection.process(pending)
        self._spool_alerts(judged.alerts)
        if self.populations is not None and judged.scored is not None:
            self.populations.add(judged.scored)
        summariser, context, counters = self.summariser, self.context, self.counters
        classify, tiers = summariser.classes.classify, counters.tiers
        packets, latest = 0, self._data_clock_ms
        for r, tier in zip(pending, judged.tiers):
            t = r.traffic
            classified = classify(t.src_ip, t.dst_ip)
            summariser.add(t, tier, classified)
            if context is not None:
                context.add(t, (r.extra[5] or "") if r.extra else "", classified)
            packets += t.packets_fwd + t.packets_bwd
            if tier is not None:
                tiers[tier] += 1
            if t.start_ms > latest:
                latest = t.start_ms
        counters.packets += packets
        self._data_clock_ms = latest
        counters.flows += len(pending)
        self.notify.watchdog()

    def _record(self, pending: list[FlowRecord]) -> None:
        """The optional local flow records; a full disk stops them (one log line), never the sensor."""
        if self.records is None:
            return
        try:
            self.records.write(pending)
        except OSError as e:
            log.error("flow records stopped (%s): %s; detection and publishing go on", self.records.folder, e)
            self.records = None

    def _spool_alerts(self, alerts: list[dict]) -> None:
        if alerts:
            seqs = self.spool.append([("alert", a) for a in alerts])
            self.counters.alerts += len(alerts)
            if self.evidence.ring_dir is not None and self.cfg.evidence_keep_mb and self.evidence_worker is not None:
                for seq, a in zip(seqs, alerts):
                    self.evidence_worker.keep(self.spool.spool_id, seq, a)

    def _spool_evidence(self) -> None:
        """Answers to pcap jobs the evidence worker finished: spooled, so they are resent until acknowledged."""
        bodies = self.evidence_worker.take() if self.evidence_worker is not None else []
        for i in range(0, len(bodies), 64):
            self.spool.append([("evidence", b) for b in bodies[i : i + 64]])

    def _prune_ring(self) -> None:
        ring = self.evidence.ring_dir
        if ring is None:
            return
        counts = self.control.ring_counts()
        errors, written = counts["ring_errors"], counts["ring_packets"]
        if errors > self._ring_errors and not self._ring_failing:  # one warning per episode, counted in health
            log.warning("the packet ring %s cannot be written (a full disk?); capture goes on, the ring resumes by "
                        "itself (ring_errors in health)", ring)  # fmt: skip
            self._ring_failing = True
        elif errors == self._ring_errors and written > self._ring_written and self._ring_failing:
            log.info("the packet ring %s is written again", ring)
            self._ring_failing = False
        self._ring_errors, self._ring_written = errors, written
        try:
            _, self._ring_disk = prune_ring(ring, self.cfg.ring_mb * 2**20, self.cfg.ring_max_age_s)
        except OSError as e:
            log.warning("cannot prune the packet ring %s: %s", ring, e)

    def _close_intervals(self) -> None:
        """Live: intervals close, and grouped alerts fall due, by the wall clock. Replay: by the capture's own
        clock (the flows move it), so a replay sends what `score` prints."""
        self.summariser.capture(self._packets_seen(), self.control.packets_dropped, self.control.flows_active)
        now_ms = int(time.time() * 1000) if self.live else self._data_clock_ms
        if self.live:
            self._spool_alerts(self.detection.advance(now_ms))
        self._spool_summaries(self.summariser.close(now_ms))
        self._spool_stats(now_ms)
        self._spool_context(now_ms)

    def _spool_context(self, now_ms: int | None) -> None:
        if self.context is not None:
            bodies = self.context.close(now_ms)
            if bodies:
                self.spool.append([("context", b) for b in bodies])

    def _spool_stats(self, now_ms: int | None) -> None:
        if self.populations is not None:
            bodies = self.populations.close(now_ms, self.baseline.id)
            if bodies:
                self.spool.append([("stats", b) for b in bodies])

    def _spool_summaries(self, bodies: list[dict]) -> None:
        """Live, capture counters are what changed since the last summary. From files nothing is
        dropped and every packet is in some flow, so each summary reports its own interval's packets:
        the same file gives the same summaries however fast it was read."""
        if not self.live:
            for b in bodies:
                b["capture"] = {"packets_seen": b["packets"], "packets_dropped": 0, "flows_active": 0}
        if bodies:
            self.spool.append([("summary", b) for b in bodies])

    def _packets_seen(self) -> int:
        return self.control.packets_read if self.live else max(self.control.packets_read, self.counters.packets)

    def _health(self, state: str = "running") -> dict:
        st = self.spool.stats()
        capture = {
            "packets_seen": self._packets_seen(),
            "packets_dropped": self.control.packets_dropped,
            "flows_active": self.control.flows_active if state == "running" else 0,
        }
        return wire.health(
            capture, self.control.flows_evicted, self.counters.skipped, state, st.messages, st.bytes, st.dropped,
            self.detection.evicted, self.baseline.id, self.updates.refused, self._evidence_counts(),
            self.control.frame_fixups,
            (self.intel_updates.serial, len(self.detection.intel or ()), self.intel_updates.refused),
        )  # fmt: skip

    def _evidence_counts(self) -> dict:
        c = self.evidence.counts
        return self.control.ring_counts() | {"ring_disk_bytes": self._ring_disk, "kept_alerts": c.kept_alerts,
                                             "jobs_served": c.jobs_served, "jobs_failed": c.jobs_failed}  # fmt: skip

    def status(self) -> str:
        """The progress and STATUS line: packets as the capture delivers them (not as flows finish)."""
        c = self.counters
        now = time.monotonic()
        read = self.control.packets_read
        rate = (read - self._rate_mark[1]) / max(now - self._rate_mark[0], 1e-3)
        if now - self._rate_mark[0] >= 5:
            self._rate_mark = (now, read)
        return (
            f"{self._packets_seen():,} packets ({rate:,.0f}/s), {c.flows:,} flows, {c.alerts:,} alerts, "
            f"{self.control.packets_dropped:,} dropped"
        )

    def _finish(self, link: Link) -> int:
        self._spool_alerts(self.detection.close())
        if self.hunt is not None:  # a retro-hunt under way: its findings go out with the rest
            self.hunt.join(self.drain_s)
            self._spool_hunted()
        self.summariser.capture(self._packets_seen(), self.control.packets_dropped, 0)
        self._spool_summaries(self.summariser.close(None))
        self._spool_stats(None)
        self._spool_context(None)
        deadline = time.monotonic() + self.drain_s
        link.drain(self.drain_s)
        if self.serve_evidence_s and not self._stop_requested:
            self._serve_evidence(link)
            deadline = time.monotonic() + self.drain_s
        # Health last, so that it reports the backlog left after delivery (0 when all went through), and
        # says the sensor is stopping (the aggregator then shows it as stopped, not online).
        self.spool.append([("health", self._health("stopping"))])
        delivered = link.drain(max(0.5, deadline - time.monotonic()))
        c = self.counters
        log.info(
            "done: %s packets read, %d flows, %d alerts sent; scored flows by tier %s",
            f"{self.control.packets_read:,}", c.flows, c.alerts, " ".join(f"{k}:{n}" for k, n in enumerate(c.tiers)),
        )  # fmt: skip
        if self.files and self._stop_requested:
            log.info("stopped after %d packets of the input", self.control.packets_read)
        if not delivered:
            left = self.spool.stats().messages
            log.warning(
                "%d messages not yet acknowledged remain in %s; the next start sends them", left, self.cfg.spool
            )
            return 3
        return 0

    def _serve_evidence(self, link: Link) -> None:
        """replay --serve-evidence: after the files, stay connected and answer pcap jobs for the replay's
        alerts (from the replayed files) until the time is up or SIGTERM."""
        log.info("serving pcap jobs for %.0f s (SIGTERM ends it)", self.serve_evidence_s)
        self.notify.status(f"replay done; serving pcap jobs for {self.serve_evidence_s:.0f} s")
        end = time.monotonic() + self.serve_evidence_s
        next_health = 0.0
        while time.monotonic() < end and not self._stop_requested:
            link.pump(100)
            self._take_pushed(link)
            self._spool_evidence()
            self.notify.watchdog()
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + self.cfg.health_interval_s
                self.spool.append([("health", self._health())])

    # -- SIGHUP -------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the configuration and baseline; keep the old ones if the new ones are bad."""
        try:
            new = load_config(self.cfg.path, insecure=self.insecure)
            cfg, fixed = self.cfg.reloaded(new)
            configured = Baseline.load(cfg.baseline, feature_profile=cfg.feature_profile)
            baseline = self.updates.stored() or configured
            classes = TrafficClasses(cfg.local_networks, cfg.local_servers)
            geo = GeoIP(cfg.geoip_database) if cfg.geoip_database != self.cfg.geoip_database else self.summariser.geo
        except Exception as e:  # noqa: BLE001 - a bad file must never stop a running sensor
            log.error("reload refused, still running with the previous configuration and baseline: %s", e)
            return
        if fixed:
            log.warning("reload: %s changed; these take effect at the next restart", ", ".join(fixed))
        self.summariser.classes, self.summariser.geo = classes, geo  # from the next flow on
        self.detection.set_local(classes.is_local)
        if self.context is not None:
            self.context.classes = classes
        self._swap(baseline, cfg)
        self.cfg = cfg
        log.info("reloaded: baseline %s (%s), minimum tiers %d (host-level), %d (flows)", baseline.source,
                 baseline.method, cfg.min_alert_tier, cfg.min_flow_tier)  # fmt: skip
