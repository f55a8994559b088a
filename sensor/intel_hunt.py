"""The sensor's retro-hunt: indicators new to it, searched in its own flow records, past contacts sent as alerts.

The aggregator can only hunt what the fleet sent up (alerts and the flows
behind them, aggregator.retro_hunt). A sensor with `flow_records_dir` keeps
every flow it metered (rotated Parquet files, sensor.flow_records), with the
server name and fingerprints, so when it takes a new indicator set it searches
those files for the indicators that are new to it: those the set it ran before
did not have (every indicator, for its first set; `IntelSet.new_since`). Each contact is
an `intel` alert marked found later, grouped per local host and indicator,
sent like any other alert. It runs in a thread of its own, so capture and
detection go on; what it found is spooled by the pipeline's loop.

A past contact that also raised an alert the aggregator holds can be reported
by both hunts: each says where it looked (the sensor's alerts name its flow
records in their explanation).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ntds.flows.traffic import FlowTraffic
from ntds.intel.alerts import fold, intel_alert
from ntds.intel.matching import IntelSet
from ntds.times import parse_time
from ntds.wire.schema import MAX_FLOWS_BEHIND, in_time_range

log = logging.getLogger("ntds.sensor.intel")

COLUMNS = ["Source.IP", "Destination.IP", "Source.Port", "Destination.Port", "Protocol", "ProtocolName",
           "Flow.Duration", "Total.Fwd.Packets", "Total.Backward.Packets", "Total.Length.of.Fwd.Packets",
           "Total.Length.of.Bwd.Packets", "requested_server_name", "client_fingerprint", "server_fingerprint",
           "flow_start_utc"]  # fmt: skip


def hunt_files(files: list[Path], intel: IntelSet, now: float, baseline_id: str,
               local: Callable[[str], bool] | None = None, sensor: str = "") -> list[dict]:  # fmt: skip
    """Every flow of the Parquet flow records `files` matched against `intel`: grouped alerts, marked found later."""
    import pyarrow.parquet as pq

    groups: dict = {}
    for path in files:
        try:
            pf = pq.ParquetFile(path)
            batches = pf.iter_batches(columns=COLUMNS, batch_size=8192)
            for batch in batches:
                d = batch.to_pydict()
                keys = list(zip(d["Source.IP"], d["Destination.IP"], *(
                    [v or "" for v in d[c]] for c in ("requested_server_name", "client_fingerprint",
                                                      "server_fingerprint"))))  # fmt: skip
                for i, matches in enumerate(intel.match(keys, now)):
                    if not matches:
                        continue
                    t = _traffic(d, i)
                    if t is None:
                        continue
                    for m in matches:
                        seen = keys[i][("src_ip", "dst_ip", "server_name", "client_fingerprint",
                                        "server_fingerprint").index(m.field)]  # fmt: skip
                        a = intel_alert(t, intel.indicator(m.index), m.field, seen, baseline_id, None, local, now)
                        a["explanation"][-1]["text"] += f" (this sensor's flow records, {path.name})"
                        fold(groups, sensor, a, MAX_FLOWS_BEHIND)
        except (OSError, ValueError) as e:  # a file rotated away or damaged: the others are still searched
            log.warning("retro-hunt: cannot read %s: %s", path, e)
    return list(groups.values())


def _traffic(d: dict, i: int) -> FlowTraffic | None:
    try:
        start = int(parse_time(d["flow_start_utc"][i]).timestamp() * 1000)
    except (TypeError, ValueError, OverflowError):
        return None
    duration = d["Flow.Duration"][i]
    end = start + (int(duration / 1000) if duration is not None and np.isfinite(duration) and duration > 0 else 0)
    if not (in_time_range(start) and in_time_range(end)):
        return None
    return FlowTraffic(start, d["Source.IP"][i], d["Destination.IP"][i], int(d["Source.Port"][i]),
                       int(d["Destination.Port"][i]), int(d["Protocol"][i]), int(d["Total.Fwd.Packets"][i]),
                       int(d["Total.Length.of.Fwd.Packets"][i]), int(d["Total.Backward.Packets"][i]),
                       int(d["Total.Length.of.Bwd.Packets"][i]), str(d["ProtocolName"][i]), end_ms=end,
                       server_name=d["requested_server_name"][i] or "")  # fmt: skip


class RetroHunt(threading.Thread):
    """One hunt over the closed flow-record files, in the background; `take()` hands over what it found once."""

    def __init__(self, files: list[Path], intel: IntelSet, baseline_id: str, local: Callable[[str], bool] | None,
                 sensor: str) -> None:  # fmt: skip
        super().__init__(name="retro-hunt", daemon=True)
        self.args = (files, intel, baseline_id, local, sensor)
        self.found: list[dict] | None = None

    def run(self) -> None:
        files, intel, baseline_id, local, sensor = self.args
        t0 = time.monotonic()
        try:
            found = hunt_files(files, intel, time.time(), baseline_id, local, sensor)
        except Exception as e:  # noqa: BLE001 - a hunt that fails must never stop the sensor: one line
            log.error("retro-hunt over the flow records failed: %s: %s", type(e).__name__, e)
            found = []
        log.info("retro-hunt: %d new indicators over %d flow-record files in %.1f s: %d past contacts, %d alerts",
                 len(intel), len(files), time.monotonic() - t0, sum(a["count"] for a in found), len(found))  # fmt: skip
        self.found = found

    def take(self) -> list[dict]:
        found, self.found = self.found, []
        return found or []
