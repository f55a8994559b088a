"""`ntds-aggregator baseline build`: flow records in, one baseline file out.

Inputs are CSV or Parquet files of the 87 columns (the Unicauca Kaggle CSV
itself, streamed) or captures, metered here with the sensor's own meter.
"""

from __future__ import annotations

import ipaddress
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from sensor import baseline as bl
from sensor.errors import InputError
from sensor.flowfiles import kind_of, read_flow_table, records_to_columns
from sensor.meter import FlowMeter

DEFAULT_LOCAL_NETS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
COLUMNS = ["ProtocolName", "Source.IP", "Destination.IP", *bl.METRIC_COLUMNS]


def parse_nets(cidrs: list[str]) -> list:
    nets = []
    for c in cidrs:
        try:
            nets.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            raise InputError(f"--local-net {c!r}: not a network in CIDR notation") from None
    return nets


def is_local_fn(nets):
    @lru_cache(maxsize=1 << 18)
    def is_local(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in n for n in nets if n.version == ip.version)

    return is_local


class _Bar:
    """tqdm on a terminal, silence elsewhere."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)
        self.last = 0

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(max(0, done - self.last))
            self.last = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def collect(paths: list[Path], profile: str, local_nets: list, offsite_only: bool, progress: bool):
    """(applications, (n, 9) metrics, flows read) over every input, filtered as asked.

    Application names are kept as integer codes while reading (a 3.6-million-row
    data set would otherwise hold 3.6 million strings), then turned back into names.
    """
    is_local = is_local_fn(local_nets)
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
            bar = _Bar(path.stat().st_size, path.name, progress)
            chunks = read_flow_table(path, COLUMNS, bar)
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
    nets = parse_nets(args.local_net or list(DEFAULT_LOCAL_NETS))
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
