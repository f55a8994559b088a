"""`ntds-aggregator baseline build`: flow records in, one baseline file out.

Inputs are CSV or Parquet files of the 87 columns (the Unicauca Kaggle CSV
itself, streamed) or captures, metered here with the sensor's own meter.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ntds.detect import baseline as bl
from ntds.errors import InputError
from ntds.flows.files import kind_of, read_flow_table, records_to_columns
from ntds.flows.meter import FlowMeter
from ntds.networks import DEFAULT_LOCAL_NETWORKS, contains, parse_networks
from ntds.progress import Progress

COLUMNS = list(dict.fromkeys(["ProtocolName", "Source.IP", "Destination.IP", *bl.SCORABLE_COLUMNS,
                               *bl.METRIC_COLUMNS]))  # fmt: skip


def local_networks(cidrs: list[str] | None) -> list:
    """--local-net values (default: ntds.networks' defaults, the same as the sensor's)."""
    try:
        return parse_networks(cidrs or DEFAULT_LOCAL_NETWORKS, "--local-net")
    except ValueError as e:
        raise InputError(str(e)) from None


@dataclass
class Collected:
    """What a build needs of its inputs: the scorable flows' applications, metrics and port classes, and
    every flow's application for the ranking."""

    apps: np.ndarray
    metrics: np.ndarray
    classes: np.ndarray
    counts: dict[str, int]
    read: int

    def build(self, **options) -> dict:
        return bl.build(self.apps, self.metrics, classes=self.classes, counts=self.counts, **options)


def collect(paths: list[Path], profile: str, local_nets: list, offsite_only: bool, progress: bool) -> Collected:
    """Every input's flows, filtered as asked (--offsite-only), scorable ones kept for fitting.

    Application names are kept as integer codes while reading (a 3.6-million-row
    data set would otherwise hold 3.6 million strings), then turned back into names.
    """
    is_local = lru_cache(maxsize=1 << 18)(lambda address: contains(local_nets, address))
    names: dict[str, int] = {}
    code_parts, metric_parts, class_parts = [], [], []
    counts: Counter = Counter()
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
            all_apps, all_n = np.unique(cols["ProtocolName"][keep].astype(str), return_counts=True)
            counts.update(dict(zip(all_apps.tolist(), all_n.tolist())))
            keep &= bl.scorable_columns(cols)
            apps = cols["ProtocolName"][keep]
            uniq, inverse = np.unique(apps.astype(str), return_inverse=True)
            lookup = np.array([names.setdefault(str(u), len(names)) for u in uniq], dtype=np.int32)
            code_parts.append(lookup[inverse] if len(uniq) else np.empty(0, np.int32))
            metric_parts.append(bl.metrics_matrix({c: cols[c][keep] for c in bl.METRIC_COLUMNS}))
            class_parts.append(bl.service_keys(*(cols[c][keep] for c in ("Protocol", "Source.Port",
                                                                          "Destination.Port"))))  # fmt: skip
        if bar is not None:
            bar.close()
    if not code_parts:
        return Collected(np.array([], dtype=str), np.empty((0, len(bl.METRICS))), np.empty(0, np.int64), {}, read)
    by_code = np.array(list(names), dtype=object)
    return Collected(
        by_code[np.concatenate(code_parts)], np.vstack(metric_parts), np.concatenate(class_parts), dict(counts), read
    )


def build_command(args) -> int:
    paths = [Path(p) for p in args.inputs]
    for p in paths:
        kind_of(p)
        if not p.exists():
            raise InputError(f"{p}: no such file")
    nets = local_networks(args.local_net)
    terminal = sys.stderr.isatty()
    got = collect(paths, args.profile, nets, args.offsite_only, terminal)
    read = got.read
    if len(got.apps) == 0:
        raise InputError(
            "no scorable flows to build a baseline from (answered, with payload for TCP)"
            + (" (--offsite-only)" if args.offsite_only else "")
        )
    if terminal:
        print(f"fitting {len(np.unique(got.apps))} applications on {len(got.apps)} flows", file=sys.stderr)
    doc = got.build(
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
    c = doc["counts"]
    capped = sum(1 for e in doc["applications"].values() if e["max_tier"] < 5)
    print(
        f"{args.output}: fitted on {c['flows']} scorable flows of {read} read; {c['applications']} applications, "
        f"{c['modelled']} with their own entry, {c['port_classes']} port classes, the rest judged as all traffic; "
        f"{capped} of {len(doc['applications'])} entries too small for tier 5 are capped (see max_tier); "
        f"method {args.method}",
        file=sys.stderr,
    )
    return 0
