"""`ntds-aggregator baseline build`: flow records in, one baseline file out.

Inputs are CSV or Parquet files of the 87 columns (the Unicauca Kaggle CSV
itself, streamed) or captures, metered here with the sensor's own meter.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from ntds.detect import baseline as bl
from ntds.errors import InputError
from ntds.flows.files import kind_of, read_flow_table, records_to_columns
from ntds.flows.meter import FlowMeter
from ntds.networks import DEFAULT_LOCAL_NETWORKS, contains, parse_networks
from ntds.progress import Progress

COLUMNS = ["ProtocolName", "Source.IP", "Destination.IP", *bl.METRIC_COLUMNS]


def local_networks(cidrs: list[str] | None) -> list:
    """--local-net values (default: ntds.networks' defaults, the same as the sensor's)."""
    try:
        return parse_networks(cidrs or DEFAULT_LOCAL_NETWORKS, "--local-net")
    except ValueError as e:
        raise InputError(str(e)) from None


def collect(paths: list[Path], profile: str, local_nets: list, offsite_only: bool, progress: bool):
    """(applications, (n, 9) metrics, flows read) over every input, filtered as asked.

    Application names are kept as integer codes while reading (a 3.6-million-row
    data set would otherwise hold 3.6 million strings), then turned back into names.
    """
    is_local = lru_cache(maxsize=1 << 18)(lambda address: contains(local_nets, address))
    names: dict[str, int] = {}
    code_parts, metric_parts = [], []
    read = 0
    for path in paths:
        kind = kind_of(path)
        if kind == "capture":
            meter = FlowMeter(profile, on_warning=lambda m: print(f"ntds-aggregator: warning: {m}", file=sys.stderr))
            chunks = [records_to_columns(list(meter.read([path])), COLUMNS)]
            bar = None
        else:
            bar = Progress(path.name, total=path.stat().st_size, unit="B", unit_scale=True, enabled=progress)
            chunks = read_flow_table(path, COLUMNS, bar.to)
        for cols in chunks:
            n = len(cols["ProtocolName"])
            read += n
            keep = np.ones(n, dtype=bool)
            if offsite_only:
                src = np.fromiter((is_local(a) for a in cols["Source.IP"].astype(str)), bool, n)
                dst = np.fromiter((is_local(a) for a in cols["Destination.IP"].astype(str)), bool, n)
                keep = src != dst
            apps = cols["ProtocolName"][keep]
            uniq, inverse = np.unique(apps.astype(str), return_inverse=True)
            lookup = np.array([names.setdefault(str(u), len(names)) for u in uniq], dtype=np.int32)
            code_parts.append(lookup[inverse] if len(uniq) else np.empty(0, np.int32))
            metric_parts.append(bl.metrics_matrix({c: cols[c][keep] for c in bl.METRIC_COLUMNS}))
        if bar is not None:
            bar.close()
    if not code_parts:
        return np.array([], dtype=str), np.empty((0, len(bl.METRICS))), read
    by_code = np.array(list(names), dtype=object)
    return by_code[np.concatenate(code_parts)], np.vstack(metric_parts), read


def build_command(args) -> int:
    paths = [Path(p) for p in args.inputs]
    for p in paths:
        kind_of(p)
        if not p.exists():
            raise InputError(f"{p}: no such file")
    nets = local_networks(args.local_net)
    terminal = sys.stderr.isatty()
    apps, metrics, read = collect(paths, args.profile, nets, args.offsite_only, terminal)
    if len(apps) == 0:
        raise InputError("no flows left to build a baseline from" + (" (--offsite-only)" if args.offsite_only else ""))
    if terminal:
        print(f"fitting {len(np.unique(apps))} applications on {len(apps)} flows", file=sys.stderr)
    doc = bl.build(
        apps,
        metrics,
        method=args.method,
        combine=args.combine,
        min_count=args.min_count,
        feature_profile=args.profile,
        inputs=[str(p) for p in paths],
        extra_meta={
            "local_networks": [str(n) for n in nets],
            "offsite_only": bool(args.offsite_only),
            "flows_read": read,
        },
    )
    try:
        bl.save(doc, Path(args.output))
    except OSError as e:
        raise InputError(f"{args.output}: cannot write: {e.strerror or e}") from None
    modelled = doc["counts"]["modelled"]
    print(
        f"{args.output}: {len(apps)} flows of {read} read, {doc['counts']['applications']} applications "
        f"({modelled} with their own entry, the rest scored against all traffic), method {args.method}",
        file=sys.stderr,
    )
    return 0
