"""Capture -> flow records: one NFStreamer, configured once, metering the features inside NFStream's meters.

The streamer settings map CICFlowMeter's flow rules onto NFStream (spec 5.1-5.2):
120 s active timeout measured from the flow start, no tunnel decoding; the FIN
rule and the single-packet filter are the feature step's (`ntds.flows.engine`). Every input is checked first
(`ntds.flows.captures`); a damaged file is metered up to the damage only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo

from nfstream import NFStreamer

from ntds.errors import InputError
from ntds.flows.captures import CaptureInfo, inspect_capture
from ntds.flows.clock import engine_ms
from ntds.flows.engine import CaptureControl, batched, packet_layout
from ntds.flows.features import CicFeatures, finalize
from ntds.flows.labels import dataset_label
from ntds.flows.profiles import FLOW_TIMEOUT_US, UNICAUCA, FeatureProfile, get_profile
from ntds.flows.traffic import FlowTraffic, inside
from ntds.times import iso_ms

EXTRA_COLUMNS: tuple[str, ...] = (
    "application_name",
    "application_category",
    "application_is_guessed",
    "application_confidence",
    "requested_server_name",
    "client_fingerprint",
    "server_fingerprint",
    "user_agent",
    "ip_version",
    "vlan_id",
    "flow_end_reason",
    "flow_start_utc",
)
"""Fields appended by `--extra`, after the 87 columns. Texts are nDPI's own; the
end reason is one of fin, rst, closed, active-timeout, idle-timeout, end-of-capture, evicted (the
sensor's flow table was full)."""


@dataclass(slots=True)
class FlowRecord:
    """One finished flow: the 87 columns (in `COLUMNS` order), the extra fields, and
    its traffic for the summaries. Single-packet flows, when asked for, have no
    columns (features and extra are None): CICFlowMeter does not record them."""

    features: tuple | None
    extra: tuple | None
    traffic: FlowTraffic


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class FlowMeter:
    """Turns capture files (or, later, an interface) into `FlowRecord`s.

    n_meters: NFStream meter processes (0 = one per spare core). Each 5-tuple is
    always handled by the same meter, so the records do not depend on it, only
    their order does.
    """

    def __init__(
        self,
        profile: str | FeatureProfile = "unicauca",
        *,
        n_meters: int = 1,
        bpf_filter: str | None = None,
        snapshot_length: int = 1536,
        capture_buffer_mb: int = 0,
        tz: tzinfo = UTC,
        on_warning: Callable[[str], None] | None = None,
        single_packet_flows: bool = False,
        control: CaptureControl | None = None,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        spare = max(1, _cpu_count() - 1)
        if n_meters < 0:
            raise ValueError("n_meters must be 0 (automatic) or positive")
        self.n_meters = spare if n_meters == 0 else min(n_meters, spare)
        self.bpf_filter = bpf_filter
        self.snapshot_length = snapshot_length
        self.capture_buffer_mb = capture_buffer_mb
        """Live capture: the kernel's buffer for packets not yet read, MiB (0: libpcap's default, 2 MiB)."""
        self.tz = tz
        self.on_warning = on_warning or (lambda message: None)
        self.single_packet_flows = single_packet_flows
        self.control = control
        """Stop switch, pacing, counters and the flow table bound shared with the meters; a plain one per
        read when not given (it still stops damaged files at their last intact record)."""

    def check(self, paths: Sequence[str | os.PathLike]) -> list[CaptureInfo]:
        """Inspect every input before any is read, so a bad last file fails fast."""
        if not paths:
            raise InputError("no capture files given")
        return [inspect_capture(p) for p in paths]

    def read(self, paths: Sequence[str | os.PathLike]) -> Iterator[FlowRecord]:
        """Meter the files in order as one stream: a flow may continue from one file into the next."""
        return self.read_checked(self.check(paths))

    def read_checked(self, infos: Sequence[CaptureInfo]) -> Iterator[FlowRecord]:
        """Meter files already inspected by `check`: a damaged one is read in place up to its last intact
        record (the meters stop there), never copied."""
        control = self.control or CaptureControl()
        control.limits = [info.packets if info.damaged else None for info in infos]
        for info in infos:
            if info.damaged:
                self.on_warning(f"{info.path}: {info.damage}; using the {info.packets} packets before it")
        records = 0
        for record in self._stream([str(info.path) for info in infos], control):
            records += 1
            yield record
        packets = sum(info.packets for info in infos)
        if packets and not records:
            self.on_warning(f"{packets} packets read but no flow in them (no IP traffic the meter can use)")

    def live(self, interface: str, slot: int = 0) -> Iterator[FlowRecord]:
        """Meter an interface until the capture is stopped (`ntds.flows.engine`)."""
        yield from self._stream([interface], self.control or CaptureControl(live=True), slot)

    def _streamer(self, source: str | list[str]) -> NFStreamer:
        return batched(
            NFStreamer(
                source=source,
                decode_tunnels=False,
                bpf_filter=self.bpf_filter,
                promiscuous_mode=True,
                snapshot_length=self.snapshot_length,
                idle_timeout=FLOW_TIMEOUT_US // 1_000_000,
                active_timeout=FLOW_TIMEOUT_US // 1_000_000,
                accounting_mode=1,  # IP-layer bytes for the summaries; the 87 columns count their own
                n_dissections=20,
                statistical_analysis=False,
                splt_analysis=0,
                n_meters=self.n_meters,
                max_nflows=0,
                performance_report=0,
                system_visibility_mode=0,
                socket_buffer_size=self.capture_buffer_mb << 20,
            )
        )

    def _stream(self, sources: list[str], control: CaptureControl, slot: int = 0) -> Iterator[FlowRecord]:
        source: str | list[str] = sources[0] if len(sources) == 1 else sources
        control.features = CicFeatures(self.profile, packet_layout(), self.tz, idle_timeout_ms=FLOW_TIMEOUT_US // 1000)
        control.install(slot)  # the meters fork when the streamer starts, and take it with them
        try:
            streamer = self._streamer(source)
            yield from records(streamer, self.on_warning, self.single_packet_flows, self.profile, self.tz)
        except ValueError as e:
            # NFStream reports libpcap's open errors (and bad BPF filters) as ValueError.
            raise InputError(f"{', '.join(sources)}: {e}") from None


def records(
    flows: Iterable,
    on_warning: Callable[[str], None],
    single_packet_flows: bool = False,
    profile: FeatureProfile = UNICAUCA,
    tz: tzinfo = UTC,
) -> Iterator[FlowRecord]:
    """NFStream flows carrying the meter's result -> FlowRecords (the 85 feature columns computed here, in the
    sensor's process, plus the two label columns)."""
    for flow in flows:
        state, end, opens, error, payload, rst, seen = flow.udps
        name, l7 = dataset_label(flow.application_name)
        if state is None:
            if error:
                where = f"{flow.src_ip}:{flow.src_port} -> {flow.dst_ip}:{flow.dst_port}"
                on_warning(f"flow {where} skipped: {error}")
            elif single_packet_flows:
                yield FlowRecord(None, None, _traffic(flow, name, opens, payload, rst, seen))
            continue
        yield FlowRecord(
            finalize(state, flow, profile, tz) + (l7, name),
            (
                flow.application_name,
                flow.application_category_name,
                int(flow.application_is_guessed),
                int(flow.application_confidence),
                flow.requested_server_name,
                flow.client_fingerprint,
                flow.server_fingerprint,
                flow.user_agent,
                flow.ip_version,
                flow.vlan_id,
                end,
                iso_utc(engine_ms(flow.bidirectional_first_seen_ms)),
            ),
            _traffic(flow, name, opens, payload, rst, seen),
        )


def _traffic(flow, application: str, opens: bool, payload: int, rst: bool, seen: tuple) -> FlowTraffic:
    flags, checkins, dns, icmp = inside(seen)
    return FlowTraffic(
        engine_ms(flow.bidirectional_first_seen_ms),
        flow.src_ip,
        flow.dst_ip,
        flow.src_port,
        flow.dst_port,
        flow.protocol,
        flow.src2dst_packets,
        flow.src2dst_bytes,
        flow.dst2src_packets,
        flow.dst2src_bytes,
        application,
        opens,
        engine_ms(flow.bidirectional_last_seen_ms),
        payload,
        rst,
        flow.requested_server_name or "",
        flags,
        dns,
        icmp,
        checkins,
    )


def iso_utc(ms: int) -> str:
    """ISO-8601 UTC time of a millisecond epoch; out-of-range clocks (fuzzed files) as raw ms."""
    try:
        return iso_ms(ms)
    except (ValueError, OverflowError, OSError):
        return f"@{ms}ms"
