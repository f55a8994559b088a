"""Everything ntds does inside NFStream's meter processes: the 87 features, a stop switch, pacing, capture
statistics, the flow-table bound, damaged files and the parent-death signal.

The features. With any NFPlugin registered, NFStream copies its whole flow
structure into Python and builds a packet tuple (with a copy of the IP bytes)
for every packet. Without one, the meter only calls its C engine per packet.
So ntds registers no plugin: it stands in for three methods of NFStream's flow
object (`NFlow.__init__`, `update`, `expire`) and, after the engine has done
its own work, hands the engine's packet structure (a cffi struct, read in
place) to the feature accumulator (`ntds.flows.features.CicFeatures`), whose
per-packet step is C and is told by `packet_layout` where NFStream keeps each
packet field. A flow ending by the FIN rule is expired the way a plugin would
expire it. The finished row travels back on the flow's `udps` slot, as a
plugin's would. Two more per-packet steps of NFStream's loop are C here: the
flow-table key (`get_flow_key_from_pkt`, `ntds/flows/flow_key.c`) and the
bookkeeping in front of `capture_next` (`ntds/flows/capture_next.c`); per flow,
`NFlow.__init__` and `expire` copy only the fields ntds reads.

NFStream's meter loop (nfstream 6.6.0, pinned) has no way to be told "stop
now, but expire every open flow first": a signal kills a meter and its open
flows with it, and its drop counters are only printed, never returned. The
loop does, however, call two engine functions we can stand in front of:
`capture_next` once per packet (or per timeout on an idle interface) and
`capture_stats` once a second. `install()` wraps the engine NFStream's meters
load, so that

- when `stop()` is called, the next `capture_next` answers "end of capture"
  (a SIGUSR1 wakes a meter waiting on a silent interface):
  the meter then closes the capture and expires every flow through its own
  end-of-file path, so nothing open is lost;
- with `pace="realtime"`, a capture file is read at the speed it was recorded;
- packets read and packets dropped (kernel and interface) are kept per meter
  in shared memory the sensor reads at any time;
- the flow table is bounded: NFStream's table (an ordered dict per meter)
  grows with every new 5-tuple, so a fast scan or a flood of random sources
  would exhaust memory. Past `max_flows` open flows a meter expires its least
  recently seen flows early (they are reported with end reason "evicted")
  and counts them, checked as each new flow is made;
- frames NFStream would drop or misread are fixed up before its engine parses
  them: each meter points the engine library's GOT slot of pcap_next_ex at
  `ntds/flows/packet_tap.c` (IPv4 total length 0 from segmentation offload,
  Cisco FabricPath), counted per meter in shared memory (`frame_fixups`);
- a packet keeps its own time in the features: the meter loop moves a time that
  goes backwards up to the newest seen, so `capture_next.c` keeps the packet's
  own time for the feature step (its flow's times never go backwards).

This is the only place ntds reaches into NFStream's internals, written for
NFStream 6.6.0 (pinned); `tests/test_engine.py` fails loudly if the pinned
NFStream changes any signature or structure it relies on, and the live-capture
and SIGTERM tests exercise the rest.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from operator import attrgetter

import nfstream
import nfstream.engine.engine
import nfstream.meter
import nfstream.streamer
from nfstream.flow import NFlow
from nfstream.utils import InternalError, NFEvent

from ntds.flows import _compiled
from ntds.flows.features import PACKET_FIELDS, PACKET_FLAGS, CicFeatures, FlowState, failed, is_state

_NO_LIMIT = 1 << 62
_MAX_METERS = 64


class CaptureControl:
    """Shared between the sensor and its meter processes (forked after `install`)."""

    def __init__(self, pace: str = "max", max_flows: int = 0, live: bool = False) -> None:
        if pace not in ("max", "realtime"):
            raise ValueError(f"pace must be max or realtime, not {pace!r}")
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Value("b", 0, lock=False)
        self._read = ctx.Array("Q", _MAX_METERS, lock=False)
        self._dropped = ctx.Array("Q", _MAX_METERS, lock=False)
        self._active = ctx.Array("q", _MAX_METERS, lock=False)
        self._evicted = ctx.Array("Q", _MAX_METERS, lock=False)
        self._tap = ctx.Array("Q", len(TAP_COUNTS) * _MAX_METERS, lock=False)  # ntds/flows/packet_tap.h
        self.realtime = pace == "realtime"
        self.max_flows = max_flows
        """Open flows per meter before the least recently seen are expired early (0: no bound)."""
        self.live = live
        self.features: CicFeatures | None = None
        """The feature accumulator the meters run (a copy each, after fork); None: NFStream as it is."""
        self._ring = ctx.Array("Q", 3, lock=False)  # packets, bytes, failed writes: ntds/flows/packet_ring.h
        self.ring_dir: str = ""
        """Live capture: the folder each meter writes its packet ring into ("" : no ring)."""
        self.ring_file_bytes = 64 * 2**20
        self.limits: list[int | None] = []
        """Per input file, in order: read at most this many records (a damaged file stops at its last intact
        one), or None for the whole file. Set before the meters fork."""

    def install(self, slot: int = 0) -> None:
        """Make meters forked from now on use this control, counting from `slot` (one block of
        slots per streamer: a sensor on two interfaces runs two streamers)."""
        global _current
        if not 0 <= slot < _MAX_METERS:
            raise ValueError(f"slot {slot} out of range")
        _current = (self, slot)

    def ring(self, folder, file_mb: int) -> None:
        """Have the meters forked from now on write the packets they capture into a ring in `folder`
        (sensor.evidence.ring), in files of `file_mb`."""
        self.ring_dir = str(folder)
        self.ring_file_bytes = file_mb * 2**20

    def ring_counts(self) -> dict[str, int]:
        """Packets and bytes the meters wrote to the ring, and the writes that failed (a full disk)."""
        packets, size, errors = self._ring
        return {"ring_packets": packets, "ring_bytes": size, "ring_errors": errors}

    def stop(self) -> None:
        self._stop.value = 1
        self.wake()

    @staticmethod
    def wake() -> None:
        """Interrupt meters blocked on a silent interface (libpcap's poll returns on a signal), so they
        see the stop switch. The sensor installs a no-op SIGUSR1 handler before the meters fork; call this
        until they have exited, since a signal that lands just before poll() is not seen by it."""
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGUSR1)

    @property
    def stopping(self) -> bool:
        return bool(self._stop.value)

    @property
    def packets_read(self) -> int:
        return sum(self._read)

    @property
    def packets_dropped(self) -> int:
        return sum(self._dropped)

    @property
    def flows_evicted(self) -> int:
        """Flows expired early because a meter's table was full."""
        return sum(self._evicted)

    @property
    def frame_fixups(self) -> dict[str, int]:
        """Frames the meters fixed up before NFStream parsed them (`ntds/flows/packet_tap.c`): IPv4 total
        lengths of 0 taken from the frame, FabricPath frames decapsulated, FabricPath frames skipped (ignored,
        with nothing inside to meter). Every meter reads every frame of a file, so for files this is the
        largest meter's count; a live interface's frames are shared out among the meters, so there the sum."""
        per_meter = [self._tap[i : i + len(TAP_COUNTS)] for i in range(0, len(self._tap), len(TAP_COUNTS))]
        combine = sum if self.live else max
        return {name: combine(meter[k] for meter in per_meter) for k, name in enumerate(TAP_COUNTS)}

    @property
    def frames_skipped(self) -> int:
        """Frames the meters could not read as IP and ignored, counted (FabricPath with no inner frame)."""
        return self.frame_fixups["fabricpath_skipped"]

    @property
    def flows_active(self) -> int:
        """Flows open in the meters, as of their last once-a-second report."""
        return max(0, sum(self._active))


_current: tuple[CaptureControl, int] | None = None

TAP_COUNTS = ("ip_length_filled", "fabricpath_decapsulated", "fabricpath_skipped")
"""The counters of `struct ntds_tap_counts` (ntds/flows/packet_tap.h), in order."""

_WRITTEN_FOR = f"ntds/flows/engine.py was written for NFStream 6.6.0, this is {nfstream.__version__}"


def packet_layout(ffi=None) -> dict[str, int]:
    """Where NFStream's engine keeps the packet fields the C feature step reads (`CicFeatures`), taken from
    NFStream's own cffi declaration of `struct nf_packet`, so the step follows NFStream's layout rather
    than a copy of it. A field whose type is not the one the step reads as is a clear error.
    ffi: whose declaration to read (NFStream's engine unless given)."""
    ffi = ffi or nfstream.engine.engine.ffi
    fields = dict(ffi.typeof("struct nf_packet").fields)
    layout: dict[str, int] = {}
    for name in (*PACKET_FIELDS, *PACKET_FLAGS):
        field = fields.get(name)
        want = PACKET_FIELDS.get(name, "uint16_t")
        if field is None or field.type.cname != want:
            found = "missing" if field is None else field.type.cname
            raise RuntimeError(f"NFStream's struct nf_packet.{name} is {found}, not {want}: {_WRITTEN_FOR}")
        if name in PACKET_FLAGS:
            if field.bitsize != 1 or layout.setdefault("flags", field.offset) != field.offset:
                raise RuntimeError(f"NFStream's TCP flag {name} is not a bit of one 16-bit word: {_WRITTEN_FOR}")
            layout[f"{name}_bit"] = field.bitshift
        else:
            layout[name] = field.offset
    return layout


class _Engine:
    """The engine library as a meter sees it, with capture_next and capture_stats wrapped.

    capture_next runs once per packet, so it is C (`ntds/flows/capture_next.c`, called by the meter loop
    with no Python frame of ours): it reads the stop switch every 64 calls, stops a damaged file at its last
    intact record, and writes the shared packet counter every 4,096 packets and when a capture closes; this
    class hands it NFStream's own capture_next, the shared memory and the per-file limits. capture_stats
    (once a second) and pacing stay Python."""

    def __init__(self, ffi, lib, control: CaptureControl, slot: int) -> None:
        for name in dir(lib):
            if not name.startswith("__") and name not in ("capture_next", "capture_stats"):
                setattr(self, name, getattr(lib, name))
        self._stats = lib.capture_stats
        self._control = control
        self._slot = slot
        self._first: tuple[float, int] | None = None  # (wall clock, packet ms) of the first packet
        c = self._capture = _compiled.lib.ntds_capture_state()  # one per process: a meter loop is one
        c.capture, c.file, c.records, c.total, c.calls, c.closed = _compiled.ffi.NULL, -1, 0, 0, 0, 0
        c.next = int(ffi.cast("uintptr_t", ffi.addressof(lib, "capture_next")))
        c.time_offset = packet_layout(ffi)["time"]  # the packet's own time is kept before the loop moves it
        c.breakloop = ctypes.cast(_pcap().pcap_breakloop, ctypes.c_void_p).value
        c.stop = ctypes.addressof(control._stop)
        c.read = ctypes.addressof(control._read) + slot * ctypes.sizeof(ctypes.c_uint64)
        self._limits = _compiled.ffi.new("int64_t[]", [-1 if n is None else n for n in control.limits] or [-1])
        c.limits, c.n_limits = self._limits, len(control.limits)
        self.capture_next = self._paced_next if control.realtime else _compiled.lib.ntds_capture_next
        if control.live:
            threading.Thread(target=self._wake_on_stop, daemon=True).start()
        if control.ring_dir:
            threading.Thread(target=self._flush_ring, daemon=True).start()

    def _paced_next(self, capture, packet, decode_tunnels, n_roots, root_idx, mode):
        """capture_next for a file read at the speed it was recorded."""
        ret = _compiled.lib.ntds_capture_next(capture, packet, decode_tunnels, n_roots, root_idx, mode)
        if ret > 0:
            self._pace(packet.time)
        return ret

    def _flush_ring(self) -> None:
        """The packet ring's buffer, written twice a second even when the link is silent (libpcap then waits in
        poll() and the meter's own thread never gets to it)."""
        while not self._control._stop.value:
            time.sleep(0.5)
            _compiled.lib.ntds_ring_idle()

    def _wake_on_stop(self) -> None:
        """A meter waiting on a silent interface sits in libpcap's poll(), which signals do not end (libpcap
        retries on EINTR). pcap_breakloop does: libpcap 1.10 wakes the poll through an eventfd, and the
        pending pcap_next_ex returns "break", which NFStream takes as the end of the capture. The C side
        never breaks a capture the meter is closing."""
        while not self._control._stop.value:
            time.sleep(0.1)
        _compiled.lib.ntds_capture_wake()

    def _pace(self, packet_ms: int) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, packet_ms)
            return
        due = self._first[0] + (packet_ms - self._first[1]) / 1000
        while due > now and not self._control._stop.value:
            time.sleep(min(due - now, 0.2))
            now = time.monotonic()

    def capture_stats(self, capture, stats, mode) -> None:
        self._stats(capture, stats, mode)
        # Called from the meter loop once a second: its flow table is a local there.
        loop = sys._getframe(2).f_locals
        if "cache" in loop and "root_idx" in loop:
            self._control._active[self._slot + loop["root_idx"]] = len(loop["cache"])
            self._control._read[self._slot + loop["root_idx"]] = self._capture.total
        # Fanout meters of one interface all see the interface's counters: keep the largest.
        d = self._control._dropped
        d[self._slot] = max(d[self._slot], stats.dropped + stats.dropped_by_interface)


_libpcap = None


def _pcap():
    global _libpcap
    if _libpcap is None:
        import _lib_engine

        _libpcap = ctypes.CDLL(_lib_engine.__file__)
        _libpcap.pcap_breakloop.argtypes = [ctypes.c_void_p]
        _libpcap.pcap_open_dead.restype = ctypes.c_void_p
        _libpcap.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        _libpcap.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                          ctypes.c_uint32]  # fmt: skip
        _libpcap.pcap_geterr.restype = ctypes.c_char_p
        _libpcap.pcap_geterr.argtypes = [ctypes.c_void_p]
        _libpcap.pcap_freecode.argtypes = [ctypes.c_void_p]
        _libpcap.pcap_close.argtypes = [ctypes.c_void_p]
    return _libpcap


def filter_problem(bpf_filter: str, snaplen: int = 1536) -> str | None:
    """libpcap's complaint about a BPF filter (compiled by the libpcap the meters use), or None if it compiles.

    Checked when the configuration is read, so `check-config` and a reload refuse what capture would."""
    lib = _pcap()
    handle = lib.pcap_open_dead(1, snaplen)  # DLT_EN10MB
    program = ctypes.create_string_buffer(64)  # struct bpf_program: a count and a pointer
    try:
        if lib.pcap_compile(handle, program, bpf_filter.encode(), 1, 0xFFFFFFFF) != 0:
            return (lib.pcap_geterr(handle) or b"does not compile").decode(errors="replace")
        lib.pcap_freecode(program)
        return None
    finally:
        lib.pcap_close(handle)


_original_create_engine = nfstream.meter.create_engine
_original_flow_key = nfstream.meter.get_flow_key_from_pkt


def _die_with_parent() -> None:
    """A meter must not outlive its sensor: after a kill -9 of the sensor an orphaned meter would keep
    capturing (and holding its memory) with nobody to read its flows. Linux's parent-death signal ends it."""
    if os.getpid() == _SENSOR_PID:
        return  # not a forked meter (a meter loop run in the sensor's own process)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != _SENSOR_PID:  # the sensor died before prctl took effect
            os._exit(1)


_PR_SET_PDEATHSIG = 1
_SENSOR_PID = os.getpid()


def _create_engine():
    # Runs first thing in every NFStream meter process (nfstream.meter.meter_workflow).
    _die_with_parent()
    ffi, lib = _original_create_engine()
    nfstream.meter.get_flow_key_from_pkt = _original_flow_key
    if _current is None or lib is None:
        return ffi, lib
    _install_tap(ffi, lib, *_current, sys._getframe(1).f_locals.get("root_idx", 0))
    engine = _Engine(ffi, lib, *_current)
    global _engine, _features, _max_flows, _step, _step_meter, _table
    _engine = engine
    _table = None  # this meter loop's table is found again (a loop run twice in one process has a new one)
    _features = engine._control.features
    if _features is not None:
        _step, _step_meter = _features.stepper()
        nfstream.meter.get_flow_key_from_pkt = _flow_key(_features.meter)
    _max_flows = engine._control.max_flows or _NO_LIMIT
    return ffi, engine


def _install_tap(ffi, lib, control: CaptureControl, slot: int, root_idx: int) -> None:
    """Put ntds's stand-in for pcap_next_ex (`ntds/flows/packet_tap.c`) in front of NFStream's engine in this
    meter process, counting into the meter's slot of shared memory. The stand-in fixes up frames NFStream
    would drop or misread (IPv4 total length 0, FabricPath) before the engine parses them."""
    error = _compiled.ffi.new("char[256]")
    inside = int(ffi.cast("uintptr_t", ffi.addressof(lib, "capture_next")))
    if _compiled.lib.ntds_tap_install(inside, error, len(error)) != 0:
        problem = _compiled.ffi.string(error).decode(errors="replace")
        raise RuntimeError(f"cannot stand in front of pcap_next_ex in NFStream's engine: {problem}; {_WRITTEN_FOR}")
    index = (slot + root_idx) % _MAX_METERS * len(TAP_COUNTS)
    _compiled.lib.ntds_tap_count_into(ctypes.addressof(control._tap) + index * ctypes.sizeof(ctypes.c_uint64))
    ring = _compiled.lib.ntds_ring_settings()
    ring.enabled = 0
    if control.ring_dir:
        folder = control.ring_dir.encode()
        if len(folder) >= len(ring.folder):
            raise RuntimeError(f"the ring's folder name is too long: {control.ring_dir[:80]}...")
        libpcap = _pcap()
        ring.folder = folder
        ring.meter = os.getpid()
        ring.file_bytes = control.ring_file_bytes
        ring.counters = ctypes.addressof(control._ring)
        ring.datalink, ring.snapshot, ring.precision = (
            ctypes.cast(getattr(libpcap, name), ctypes.c_void_p).value
            for name in ("pcap_datalink", "pcap_snapshot", "pcap_get_tstamp_precision")
        )
        ring.enabled = 1


def _flow_key(meter) -> Callable:
    """NFStream's get_flow_key_from_pkt, made in C (`ntds/flows/flow_key.c`): the same grouping of packets
    into flows, as 48 bytes instead of a tuple of nine values read one by one from the packet structure."""
    make, buf = _compiled.lib.ntds_flow_key, _compiled.ffi.new("char[48]")
    view = _compiled.ffi.buffer(buf)

    def flow_key(packet) -> bytes:
        make(meter, packet, buf)
        return view[:]

    return flow_key


_engine: _Engine | None = None
"""The engine of this meter process (set in the meter after fork)."""
_features: CicFeatures | None = None
"""This meter's feature accumulator (from the installed control; None: NFStream as it is)."""
_max_flows = _NO_LIMIT
"""This meter's flow table bound."""
_step = _step_meter = None
"""This meter's per-packet feature step (a C function) and its first argument."""

_original_flow_init = NFlow.__init__
_original_expire = NFlow.expire
_original_update = NFlow.update


def _flow_init(self, packet, ffi, lib, udps, sync, accounting_mode, n_dissections, statistics, splt, dissector,
               decode_tunnels, system_visibility_mode):  # fmt: skip
    """NFlow.__init__ for ntds's streamer: the engine's flow, and in Python only the fields ntds reads (NFStream
    copies some thirty, and twice as many again at expiry, that ntds never looks at), then the features."""
    features = _features
    if features is None or sync or statistics or splt:
        _original_flow_init(self, packet, ffi, lib, udps, sync, accounting_mode, n_dissections, statistics, splt,
                            dissector, decode_tunnels, system_visibility_mode)  # fmt: skip
    else:
        self.id = NFEvent.FLOW
        self.expiration_id = 0
        c = self._C = lib.meter_initialize_flow(packet, accounting_mode, statistics, splt, n_dissections, dissector,
                                                sync)  # fmt: skip
        if c == ffi.NULL:  # as NFStream: the meter reports it
            raise OSError("Not enough memory for new flow creation.")
        string = ffi.string
        self.src_ip = string(c.src_ip_str).decode("utf-8", errors="ignore")
        self.dst_ip = string(c.dst_ip_str).decode("utf-8", errors="ignore")
        self.src_port, self.dst_port, self.protocol = c.src_port, c.dst_port, c.protocol
        self.ip_version, self.vlan_id = c.ip_version, c.vlan_id
        self.bidirectional_first_seen_ms = c.bidirectional_first_seen_ms
        self.application_name = self.application_category_name = self.application_is_guessed = None
        self.application_confidence = self.requested_server_name = self.client_fingerprint = None
        self.server_fingerprint = self.user_agent = None
    if features is not None:
        try:
            self.udps = features.start(packet, self)
        except Exception as e:  # noqa: BLE001 - an exception here would kill the meter and every open flow
            self.udps = failed(e)
    if _max_flows != _NO_LIMIT:
        _bound(sys._getframe(1), udps, sync, n_dissections, statistics, splt, ffi, lib, dissector)


def _bound(consume, *expire_args) -> None:
    """The flow table bound, checked as a flow is made (just before NFStream's `consume`, the caller, adds it
    to its table): past max_flows, the least recently seen flows are expired now (onto the meter's channel, as
    an idle flow would be) and counted. Per new flow, not per packet."""
    global _table
    if _table is None:
        _table = (consume.f_locals["cache"], consume.f_locals["channel"])
    cache, channel = _table
    if len(cache) < _max_flows:
        return
    evicted = 0
    while len(cache) >= _max_flows:
        flow = cache.pop(cache.get_lru_key())
        state = getattr(flow, "udps", None)
        if state.__class__ is FlowState:
            state.evicted = True
        channel.put(flow.expire(*expire_args))
        evicted += 1
    engine = _engine
    engine._control._evicted[engine._slot] += evicted


_table = None
"""This meter's flow table and channel (NFStream's `cache` and `channel`), once its first flow is made."""


def _flow_update(self, packet, idle_timeout, active_timeout, ffi, lib, udps, sync, accounting_mode, n_dissections,
                 statistics, splt, dissector):  # fmt: skip
    """NFlow.update as NFStream 6.6.0 has it for a streamer without plugins, then the features."""
    ret = lib.meter_update_flow(self._C, packet, idle_timeout, active_timeout, accounting_mode, statistics, splt,
                                n_dissections, dissector, sync)  # fmt: skip
    if ret > 0:  # idle or active timeout: this packet starts the next flow
        self.expiration_id = ret - 1
        return self.expire(udps, sync, n_dissections, statistics, splt, ffi, lib, dissector)
    if _features is None:
        return None
    s = self.udps
    if s.__class__ is FlowState and _step(_step_meter, s, packet):  # the FIN rule ends the flow with this packet
        self.expiration_id = -1
        return self.expire(udps, sync, n_dissections, statistics, splt, ffi, lib, dissector)
    return None


def _flow_expire(self, udps, sync, n_dissections, statistics, splt, ffi, lib, dissector):
    """NFlow.expire for ntds's streamer: the engine's expiry, the fields ntds reads (as NFStream's sync copies
    them), the features' finish, the engine's free."""
    if _features is None or sync or statistics or splt:
        s = getattr(self, "udps", None)
        flow = _original_expire(self, udps, sync, n_dissections, statistics, splt, ffi, lib, dissector)
        if _features is not None and is_state(s):
            _finish(self, s)
        return self if flow is None else flow
    c = self._C
    lib.meter_expire_flow(c, n_dissections, dissector)
    self.bidirectional_last_seen_ms = c.bidirectional_last_seen_ms
    self.src2dst_packets, self.src2dst_bytes = c.src2dst_packets, c.src2dst_bytes
    self.dst2src_packets, self.dst2src_bytes = c.dst2src_packets, c.dst2src_bytes
    if n_dissections and c.detection_completed < 2:
        string = ffi.string
        self.application_name = string(c.application_name).decode("utf-8", errors="ignore")
        self.application_category_name = string(c.category_name).decode("utf-8", errors="ignore")
        self.requested_server_name = string(c.requested_server_name).decode("utf-8", errors="ignore")
        self.client_fingerprint = string(c.c_hash).decode("utf-8", errors="ignore")
        self.server_fingerprint = string(c.s_hash).decode("utf-8", errors="ignore")
        self.user_agent = string(c.user_agent).decode("utf-8", errors="ignore")
        self.application_is_guessed = c.guessed
        self.application_confidence = c.confidence
    s = self.udps
    if s.__class__ is FlowState:
        _finish(self, s)
    lib.meter_free_flow(c, n_dissections, splt, 1)
    del self._C
    return self


def _finish(flow: NFlow, s: FlowState) -> None:
    try:
        flow.udps = _features.finish(s, flow)
    except Exception as e:  # noqa: BLE001
        flow.udps = failed(e, "", bool(s.opens))
    # The flow's own first and last packet times (the feature step's), not NFStream's: its meter loop moves a
    # packet whose time goes backwards up to the newest time seen (ntds/flows/capture_next.c).
    flow.bidirectional_first_seen_ms = s.first_ms
    flow.bidirectional_last_seen_ms = s.first_ms + s.last_t // 1000


_FLOW_FIELDS = (
    "src_ip_str", "dst_ip_str", "src_port", "dst_port", "protocol", "ip_version", "vlan_id",
    "bidirectional_first_seen_ms", "bidirectional_last_seen_ms", "src2dst_packets", "src2dst_bytes",
    "dst2src_packets", "dst2src_bytes", "detection_completed", "application_name", "category_name",
    "requested_server_name", "c_hash", "s_hash", "user_agent", "guessed", "confidence",
)  # fmt: skip
"""The fields of NFStream's engine flow (struct nf_flow) that `_flow_init` and `_flow_expire` read."""


_SENT = (
    "id", "expiration_id", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ip_version", "vlan_id",
    "bidirectional_first_seen_ms", "bidirectional_last_seen_ms", "src2dst_packets", "src2dst_bytes",
    "dst2src_packets", "dst2src_bytes", "application_name", "application_category_name", "application_is_guessed",
    "application_confidence", "requested_server_name", "client_fingerprint", "server_fingerprint", "user_agent",
    "udps",
)  # fmt: skip
"""The flow fields ntds reads in the sensor's process; the rest of NFStream's flow stays in the meter."""
_sent_values = attrgetter(*_SENT)


def _flow_reduce_ex(self, protocol):
    """How a finished flow travels from a meter to the sensor: only the fields ntds reads, as one tuple."""
    if _features is None:
        return object.__reduce_ex__(self, protocol)
    return _flow_from, (_sent_values(self),)


class SentFlow:
    """A finished flow in the sensor's process: the fields of `_SENT`, read as NFStream's flow's attributes
    (`records` and NFStream's streamer, which sets its id, read nothing else). Filled by one dict, where an
    NFlow's slots took a setattr each."""


def _flow_from(values: tuple) -> SentFlow:
    flow = SentFlow.__new__(SentFlow)
    flow.__dict__.update(zip(_SENT, values))
    return flow


CHANNEL_BATCH = 64
"""Finished flows a meter sends the sensor at once (fewer when its 10 ms scan finds the batch unfilled)."""


class _BatchChannel:
    """NFStream's channel from its meters to the streamer, a batch of flows at a time.

    NFStream puts every finished flow on a multiprocessing queue on its own (a lock, a semaphore, a feeder
    thread and two pipe writes per flow, and as many reads on the sensor's side): on short flows that cost the
    sensor's process more than the rest of its analysis. Here a meter sends its flows in lists of up to
    CHANNEL_BATCH, and at every one of its idle scans (every 10 ms of packet time, and on a silent interface
    every 10 ms of wall time) what it holds, so a flow waits at most that long; anything that is not a flow
    (the end of a meter, an error) first sends what is held, so order and the end are kept. The streamer's
    side hands the flows out one at a time, as NFStream expects."""

    def __init__(self, queue) -> None:
        self.queue = queue
        self.held: list = []
        self.inbox: collections.deque = collections.deque()

    def put(self, item) -> None:
        if type(item) is NFlow:
            self.held.append(item)
            if len(self.held) >= CHANNEL_BATCH:
                self.flush()
            return
        self.flush()
        self.queue.put(item)

    def flush(self) -> None:
        if self.held:
            batch, self.held = self.held, []
            self.queue.put(batch)

    def get(self, timeout: float | None = None):
        if self.inbox:
            return self.inbox.popleft()
        item = self.queue.get(timeout=timeout)
        if type(item) is list:
            self.inbox.extend(item)
            return self.inbox.popleft()
        return item

    def __getattr__(self, name: str):
        return getattr(self.queue, name)


class _BatchingContext:
    """The streamer's multiprocessing context, but its channel batches flows (same bound on flows in flight)."""

    def __init__(self, context) -> None:
        self._context = context

    def Queue(self, maxsize: int = 0) -> _BatchChannel:  # noqa: N802 - multiprocessing's name
        return _BatchChannel(self._context.Queue(maxsize=-(-maxsize // CHANNEL_BATCH) if maxsize > 0 else 0))

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def batched(streamer: nfstream.NFStreamer) -> nfstream.NFStreamer:
    """The streamer with its meters sending flows in batches (`_BatchChannel`)."""
    streamer._mp_context = _BatchingContext(streamer._mp_context)
    return streamer


_original_scan = nfstream.meter.meter_scan


def _scan(meter_tick, cache, idle_timeout, channel, *rest):
    """NFStream's idle scan, then the meter's held flows go out (every 10 ms)."""
    scanned = _original_scan(meter_tick, cache, idle_timeout, channel, *rest)
    if type(channel) is _BatchChannel:
        channel.flush()
    return scanned


_original_workflow = nfstream.streamer.meter_workflow


def _workflow(*args):
    """NFStream's meter process, which must never die in silence: NFStream's streamer would wait for it
    forever. An exception is reported on the channel as NFStream's own error event (the streamer then
    raises it), and the meter ends as if its capture had."""
    try:
        _original_workflow(*args)
    except BaseException as e:  # noqa: BLE001 - the process ends either way; the sensor must hear of it
        channel, root_idx = args[15], args[6]
        with contextlib.suppress(Exception):
            if root_idx == 0:
                channel.put(InternalError(NFEvent.ERROR, f"meter failed: {type(e).__name__}: {e}"))
            channel.put(None)
        raise


nfstream.meter.create_engine = _create_engine
nfstream.meter.meter_scan = _scan
nfstream.streamer.meter_workflow = _workflow
NFlow.__init__ = _flow_init
NFlow.update = _flow_update
NFlow.expire = _flow_expire
NFlow.__reduce_ex__ = _flow_reduce_ex
