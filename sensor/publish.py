"""`ntds-sensor publish`: score inputs and deliver the alerts to the aggregator, losing nothing.

Alerts go into the durable spool first, then out over the link; the command
returns once the aggregator has acknowledged everything (exit 0), or after
--wait seconds with the rest left in the spool for the next run (exit 3, with a
message). Run with no inputs, it only drains the spool.
"""

from __future__ import annotations

import sys
import time

from sensor import __version__
from sensor.alerts import COLUMNS, _chunks, scored_alerts
from sensor.baseline import Baseline
from sensor.errors import InputError
from sensor.flowfiles import kind_of, records_to_columns
from sensor.geo import GeoIP
from sensor.keys import load_pair, load_public
from sensor.link import Link
from sensor.meter import EXTRA_COLUMNS, FlowMeter
from sensor.spool import Spool
from sensor.summaries import Summariser
from sensor.traffic_classes import DEFAULT_LOCAL_NETWORKS, TrafficClasses

EXIT_SPOOLED = 3


def health_body(spool: Spool) -> dict:
    st = spool.stats()
    return {
        "packets_seen": 0,
        "packets_dropped": 0,
        "flows_active": 0,
        "spool_messages": st.messages,
        "spool_bytes": st.bytes,
        "spool_dropped": st.dropped,
    }


def _scored(path, profile: str, baseline: Baseline, min_tier: int, summariser: Summariser):
    """Alerts per chunk of one input; captures also feed the summaries (flow files cannot:
    they lack single-packet flows and IP byte counts)."""
    if kind_of(path) != "capture":
        for cols, times in _chunks(path, profile):
            yield scored_alerts(baseline, cols, times, min_tier)[1]
        return
    meter = FlowMeter(
        profile, single_packet_flows=True, on_warning=lambda m: print(f"ntds-sensor: warning: {m}", file=sys.stderr)
    )
    records = list(meter.read([path]))
    recorded = [r for r in records if r.features is not None]
    start = EXTRA_COLUMNS.index("flow_start_utc")
    tiers, found = scored_alerts(
        baseline, records_to_columns(recorded, COLUMNS), [r.extra[start] for r in recorded], min_tier
    )
    scored = iter(tiers.tolist())
    for r in records:
        summariser.add(r.traffic, None if r.features is None else next(scored))
    yield found


def publish_command(args) -> int:
    for p in args.inputs:
        kind_of(p)
        if not p.exists():
            raise InputError(f"{p}: no such file")
    if args.insecure:
        print("ntds-sensor: warning: --insecure: no encryption, no authentication", file=sys.stderr)
        keys = server = None
    else:
        if not args.key or not args.server_key:
            raise InputError("--key and --server-key are needed (or --insecure on loopback)")
        keys, server = load_pair(args.key), load_public(args.server_key)
    spool = Spool(args.spool, args.sensor_id, max_bytes=args.spool_limit_mb * 1024 * 1024)
    link = Link(spool, args.aggregator, client_keys=keys, server_public=server)
    try:
        if args.inputs:
            if not args.baseline:
                raise InputError("--baseline is needed to score inputs")
            baseline = Baseline.load(args.baseline, feature_profile=args.profile)
            hello = {
                "software": __version__,
                "baseline_id": f"{baseline.doc['built']} {baseline.method}",
                "feature_profile": args.profile,
            }
            spool.append([("hello", hello)])
            try:
                classes = TrafficClasses(args.local_net or DEFAULT_LOCAL_NETWORKS, args.local_server)
                summariser = Summariser(classes, GeoIP(args.geoip), args.interval)
            except ValueError as e:
                raise InputError(str(e)) from None
            for path in args.inputs:
                for found in _scored(path, args.profile, baseline, args.min_tier, summariser):
                    batch = [("alert", a) for a in found]
                    for i in range(0, len(batch), 500):
                        spool.append(batch[i : i + 500])
                        link.pump(0)
            spool.append([("summary", body) for body in summariser.close()])
        deadline = time.monotonic() + args.wait
        done = link.drain(args.wait)
        if args.inputs:
            # health last, so that it reports the backlog left after delivery
            spool.append([("health", health_body(spool))])
            done = link.drain(max(0.5, deadline - time.monotonic()))
    finally:
        link.close()
    left = spool.stats().messages
    spool.close()
    if not done:
        print(
            f"ntds-sensor: {left} messages not yet acknowledged remain in {args.spool}; the next run sends them",
            file=sys.stderr,
        )
        return EXIT_SPOOLED
    return 0
