"""`ntds-sensor score`: flows in (captures or flow files), alerts out, one JSON object per line.

The same `Detection` as `run` and `replay` (per-flow rarity, host-level
detectors, grouping and budget), in one pass over the inputs in order, so a
capture scored here gives the alerts its replay sent. With `--config` the
sensor's own settings apply (baseline, minimum tier, detectors, grouping,
local networks); without, the defaults.

Flow files (the 87 columns) carry no single-packet flows, no server names and
no IP byte counts, so host-level detectors see less of them than of a capture:
scans of unanswered probes and DNS names are only visible in captures.

`--intel FILE` (any indicator format, ntds.intel.formats) matches every flow
against those indicators as a sensor matches the aggregator's pushed set, so a
capture can be triaged without an aggregator; a bad row is counted and named on
stderr, the rest is used. A flow file written with its extra columns
(`features --extra`, the sensor's flow records) is matched on its server names
and fingerprints too; without them, on addresses only.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ntds.detect.alerts import summary_line
from ntds.detect.baseline import Baseline
from ntds.detect.detection import Detection, observed
from ntds.detect.grouping import GroupingOptions
from ntds.detect.scoring import TIER_LABELS
from ntds.detect.workers import cores_left
from ntds.errors import InputError
from ntds.flows.columns import COLUMNS as FLOW_COLUMNS
from ntds.flows.files import kind_of, read_flow_table, table_time
from ntds.flows.meter import EXTRA_COLUMNS, FlowMeter
from ntds.flows.traffic import FlowTraffic
from ntds.logs import printable
from ntds.networks import DEFAULT_LOCAL_NETWORKS, matcher
from ntds.times import parse_time
from ntds.wire.schema import TIME_MAX, TIME_MIN, in_time_range

CHUNK = 4096


class _Recorded:
    """A flow read from a flow file written with its extra columns (`features --extra`, the sensor's flow records):
    the server name and fingerprints indicators are matched on come with it (the host-level detectors still see
    the flow as any flow file's, so their results do not depend on how the file was written)."""

    __slots__ = ("extra", "features", "traffic")

    def __init__(self, features: tuple, traffic: FlowTraffic, extra: tuple) -> None:
        self.features, self.traffic, self.extra = features, traffic, extra


def _extra_columns(path: Path) -> list[str]:
    """The extra columns (ntds.flows.meter.EXTRA_COLUMNS) a flow file has."""
    if kind_of(path) == "csv":
        with open(path, "rb") as fh:
            names = fh.readline().decode("utf-8", "replace").strip().split(",")
    else:
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception:  # noqa: BLE001 - not Parquet: read_flow_table says so in one line
            return []
    return [c for c in EXTRA_COLUMNS if c in names]


def _table_records(path: Path, skipped: list[int]) -> Iterator[list]:
    """Chunks of a flow file as records Detection reads (87 columns and the traffic they imply, and the extra
    columns where the file has them)."""
    extras = _extra_columns(path)
    for cols in read_flow_table(path, list(FLOW_COLUMNS) + extras):
        n = len(cols["Flow.ID"])
        rows = list(zip(*(cols[c] for c in FLOW_COLUMNS)))
        out = []
        for i in range(n):
            t = table_time(cols["Timestamp"][i])
            if t is None:
                skipped[0] += 1
                continue
            start = int(parse_time(t).timestamp() * 1000)
            duration_ms = int(max(float(cols["Flow.Duration"][i]), 0.0) / 1000) if np.isfinite(
                float(cols["Flow.Duration"][i])) else 0  # fmt: skip
            fwd_payload = int(cols["Total.Length.of.Fwd.Packets"][i])
            bwd_payload = int(cols["Total.Length.of.Bwd.Packets"][i])
            traffic = FlowTraffic(
                start_ms=start,
                src_ip=str(cols["Source.IP"][i]),
                dst_ip=str(cols["Destination.IP"][i]),
                src_port=int(cols["Source.Port"][i]),
                dst_port=int(cols["Destination.Port"][i]),
                protocol=int(cols["Protocol"][i]),
                packets_fwd=int(cols["Total.Fwd.Packets"][i]),
                bytes_fwd=fwd_payload + max(int(cols["Fwd.Header.Length"][i]), 0),
                packets_bwd=int(cols["Total.Backward.Packets"][i]),
                bytes_bwd=bwd_payload + max(int(cols["Bwd.Header.Length"][i]), 0),
                application=str(cols["ProtocolName"][i]),
                end_ms=start + duration_ms,
                payload=fwd_payload + bwd_payload,
                rst=float(cols["RST.Flag.Count"][i]) > 0,
            )
            if extras:
                out.append(_Recorded(rows[i], traffic, tuple(_text(cols, c, i) for c in EXTRA_COLUMNS)))
            else:
                out.append(observed(rows[i], traffic))
        yield out


def _text(cols: dict, name: str, i: int) -> str:
    """A text extra column's value ("" where the file has no such column or the value is missing)."""
    if name not in cols:
        return ""
    v = cols[name][i]
    return v if isinstance(v, str) else ""


def _capture_records(path: Path, profile: str, skipped: list[int]) -> Iterator[list]:
    meter = FlowMeter(
        profile,
        single_packet_flows=True,
        on_warning=lambda m: print(printable(f"ntds-sensor: warning: {m}", 1000), file=sys.stderr),
    )
    batch = []
    for r in meter.read([path]):
        if not (in_time_range(r.traffic.start_ms) and in_time_range(r.traffic.end_ms)):
            skipped[0] += 1
            continue
        batch.append(r)
        if len(batch) >= CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _settings(args):
    """(baseline path, profile, (host-level, flow) min tiers, detectors, grouping, local matcher, analysis workers)
    from --config and the flags; --min-tier sets both tiers."""
    detectors, grouping, nets = {}, GroupingOptions(), list(DEFAULT_LOCAL_NETWORKS)
    baseline, profile, min_tier = args.baseline, args.profile, args.min_tier
    workers = args.workers
    tiers = (3, 4)
    if args.config is not None:
        from sensor.config import load as load_config

        cfg = load_config(args.config, insecure=True)
        detectors, grouping, nets = cfg.detectors, cfg.grouping, cfg.local_networks
        baseline = baseline or cfg.baseline
        profile = profile or cfg.feature_profile
        tiers = (cfg.min_alert_tier, cfg.min_flow_tier)
        workers = cfg.analysis_workers if workers is None else workers
    if workers is not None and not -1 <= workers <= 64:
        raise InputError(f"--workers {workers}: give 0 to 64 (-1: the cores left beside the meter)")
    if workers is None or workers < 0:
        workers = cores_left(1)
    if baseline is None:
        raise InputError("give --baseline (or --config with a sensor.yaml naming one)")
    if min_tier is not None:
        tiers = (min_tier, min_tier)
    if args.all:  # every scored flow on its own line: no grouping, no budget
        tiers, grouping = (0, 0), GroupingOptions(group_wait_s=0, group_interval_s=0, budget_per_hour=2**62)
    return baseline, profile or "unicauca", tiers, detectors, grouping, matcher(nets), workers


def score_command(args) -> int:
    for p in args.inputs:
        kind_of(p)
        if not p.exists():
            raise InputError(f"{p}: no such file")
    baseline_path, profile, (min_tier, min_flow_tier), detectors, grouping, local, workers = _settings(args)
    baseline = Baseline.load(baseline_path, feature_profile=profile)
    intel = load_intel(args.intel or [], getattr(args, "intel_format", "auto"))
    detection = Detection(baseline, min_tier=min_tier, min_flow_tier=min_flow_tier, detectors=detectors,
                          grouping=grouping, local=local, intel=intel, workers=workers)  # fmt: skip
    tiers = [0] * len(TIER_LABELS)
    skipped = [0]
    top: list[tuple[int, float, int, dict]] = []
    written = 0
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115

    def emit(alerts: list[dict]) -> None:
        nonlocal written
        for alert in alerts:
            written += 1
            out.write(json.dumps(alert, allow_nan=False) + "\n")
            if args.summary:
                heapq.heappush(top, (alert["tier"], alert["score"], -written, alert))
                if len(top) > 10:
                    heapq.heappop(top)

    def judged(begun) -> None:
        judged = detection.end(begun)
        for t in judged.tiers:
            if t is not None:
                tiers[t] += 1
        emit(judged.alerts)

    try:
        begun = None
        for path in args.inputs:
            chunks = (
                _capture_records(path, profile, skipped)
                if kind_of(path) == "capture"
                else _table_records(path, skipped)
            )
            for records in chunks:  # the next chunk is read while the workers judge this one
                if begun is not None:
                    judged(begun)
                begun = detection.begin(records)
        if begun is not None:
            judged(begun)
        emit(detection.close())
    finally:
        detection.stop()
        if out is not sys.stdout:
            out.close()
    if skipped[0]:
        print(f"ntds-sensor: warning: {skipped[0]} flows skipped: their time is outside "
              f"{TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d} (a bogus capture clock)", file=sys.stderr)  # fmt: skip
    if args.summary:
        print_summary(tiers, detection, written, [a for *_, a in sorted(top, key=lambda x: x[:3], reverse=True)])
    return 0


def load_intel(paths: list[Path], fmt: str = "auto"):
    """The indicator files as one set (None for none), each file's counts and bad rows on stderr."""
    if not paths:
        return None
    from ntds.intel.formats import describe, load
    from ntds.intel.matching import IntelSet

    indicators = []
    for p in paths:
        loaded = load(p, fmt)
        for line in describe(p, loaded):
            print(printable(f"ntds-sensor: {line}", 1000), file=sys.stderr)
        indicators += loaded.indicators
    return IntelSet(indicators)


def print_summary(tiers: list[int], detection: Detection, written: int, top: list[dict]) -> None:
    """Scored flows per tier, host-level findings, and the strongest alerts in words, on stderr."""
    print(f"{sum(tiers)} flows scored against the baseline", file=sys.stderr)
    for k, n in enumerate(tiers):
        print(f"  tier {k} ({TIER_LABELS[k]}): {n}", file=sys.stderr)
    findings = ", ".join(f"{k} {n}" for k, n in sorted(detection.stats.findings.items())) or "none"
    print(f"host-level findings before grouping: {findings}", file=sys.stderr)
    print(f"{written} alerts written; the strongest:", file=sys.stderr)
    for a in top:
        print(printable("  " + summary_line(a), 1000), file=sys.stderr)
