"""`ntds-sensor`: the sensor's command line.

Every error a user can cause ends as one line on stderr and a non-zero exit;
a traceback means a bug in ntds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ntds import heap
from ntds.errors import ArgumentParser, InputError, WorkerFailed, one_line
from ntds.flows.profiles import PROFILES
from ntds.progress import Progress
from sensor import __version__

PROG = "ntds-sensor"
EXIT_INPUT = 2
EXIT_OUTPUT = 1


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return code


def cmd_features(args: argparse.Namespace) -> int:
    from ntds.flows.engine import CaptureControl
    from ntds.flows.meter import FlowMeter
    from ntds.flows.writers import CsvWriter, ParquetWriter

    try:
        tz = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        return _fail(f"unknown time zone {args.tz!r}", EXIT_INPUT)
    out = args.output
    if out is not None and out.suffix not in (".csv", ".parquet"):
        return _fail(f"{out}: output must end in .csv or .parquet", EXIT_INPUT)
    if args.max_flows < 0:
        return _fail("--max-flows must be 0 (no bound) or positive", EXIT_INPUT)
    control = CaptureControl(max_flows=args.max_flows) if args.max_flows else None
    meter = FlowMeter(args.profile, n_meters=args.n_meters, tz=tz, on_warning=_warn, control=control)
    try:
        infos = meter.check(args.pcaps)  # fail before creating any output
    except InputError as e:
        return _fail(str(e), EXIT_INPUT)
    progress = Progress("metering", unit=" flows", enabled=sys.stderr.isatty() and not args.quiet)
    summary: Counter[str] = Counter()
    writer = None
    n = 0
    try:
        if out is None:
            writer = CsvWriter(sys.stdout, args.extra)
        elif out.suffix == ".csv":
            writer = CsvWriter.to_file(out, args.extra)
        else:
            writer = ParquetWriter(out, args.extra)
        for rec in meter.read_checked(infos):
            writer.write(rec)
            summary[rec.features[-1]] += 1
            n += 1
            if not n & 255:
                progress.update(256)
        writer.close()
    except InputError as e:
        return _fail(str(e), EXIT_INPUT)
    except BrokenPipeError:
        raise
    except OSError as e:
        where = out if out is not None else "standard output"
        return _fail(f"{where}: cannot write: {e.strerror or e} ({n} flows written)", EXIT_OUTPUT)
    progress.update(n & 255)
    progress.close()
    if args.summary:
        print_summary(summary, n)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from sensor.score import score_command

    try:
        return score_command(args)
    except BrokenPipeError:
        raise
    except OSError as e:
        return _fail(f"{args.output or 'standard output'}: cannot write: {e.strerror or e}", EXIT_OUTPUT)


def cmd_detectors(args: argparse.Namespace) -> int:
    """Every host-level detector: what it finds, its options with defaults and meanings (sensor.yaml)."""
    import sys as _sys

    from ntds.detect.hosts import DETECTORS

    for kind, cls in DETECTORS.items():
        doc = (_sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{kind}: {doc}")
        for name, option in cls.OPTIONS.items():
            print(f"  {name}: {option.default!r}  # {option.meaning}")
    return 0


def print_summary(summary: Counter, total: int) -> None:
    """Per-application flow counts, most common first (on stderr, next to the data on stdout)."""
    print(f"{total} flows, {len(summary)} applications", file=sys.stderr)
    for name, count in summary.most_common():
        print(f"  {name:<24} {count:>8}  {100 * count / max(total, 1):6.2f}%", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="ntds network threat detection sensor")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    f = sub.add_parser(
        "features",
        help="capture files -> the 87 Unicauca/CICFlowMeter flow features",
        description="Meter capture files (pcap or pcapng, read in order as one stream) into the 87 "
        "flow-feature columns of the Unicauca '87 apps' data set. Time columns are in microseconds "
        "at millisecond precision.",
    )
    f.add_argument("pcaps", nargs="+", type=Path, metavar="PCAP")
    f.add_argument("-o", "--output", type=Path, help="write to OUT.csv or OUT.parquet (default: CSV on stdout)")
    f.add_argument(
        "--profile", choices=sorted(PROFILES), default="unicauca", help="feature profile (default: unicauca)"
    )
    f.add_argument("--extra", action="store_true", help="append nDPI details, IP version, VLAN, end reason, UTC start")
    f.add_argument("--tz", default="UTC", help="time zone of the Timestamp column (default: UTC)")
    f.add_argument("--n-meters", type=int, default=1, help="metering processes (0: one per spare core)")
    f.add_argument(
        "--max-flows", type=int, default=0, metavar="N",
        help="open flows per meter before the least recently seen are expired early (0: no bound; bounds memory)",
    )  # fmt: skip
    f.add_argument("--summary", action="store_true", help="print flows per application on stderr at the end")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    f.set_defaults(func=cmd_features)

    s = sub.add_parser(
        "score",
        help="run the sensor's detection over captures or flow files and print alerts",
        description="Judge every flow of the inputs (captures, metered first, or CSV/Parquet files of the 87 "
        "columns, read in order as one stream) exactly as `run` and `replay` do: rarity against the baseline, the "
        "host-level detectors, grouping. Alerts at or above the minimum tier are written as JSON lines.",
    )
    s.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    s.add_argument("--config", type=Path, help="sensor.yaml: its baseline, minimum tier, detectors, grouping and "
                   "local networks apply (flags below override)")  # fmt: skip
    s.add_argument("--baseline", type=Path, help="baseline file (from ntds-aggregator baseline build)")
    s.add_argument(
        "--min-tier",
        type=int,
        choices=range(0, 6),
        help="lowest tier written, flow and host-level alike (default: the config's, else 3 host-level, 4 flows)",
    )
    s.add_argument("--all", action="store_true", help="every scored flow on its own line, ungrouped (tier 0 up)")
    s.add_argument("-o", "--output", type=Path, help="write JSON lines here (default: stdout)")
    s.add_argument("--profile", choices=sorted(PROFILES), help="feature profile (default: unicauca, or the config's)")
    s.add_argument("--summary", action="store_true", help="print tiers, findings and the strongest alerts on stderr")
    s.add_argument("--workers", type=int, metavar="N", help="processes running the host-level detectors (0: none; "
                   "default: the config's analysis_workers, else the cores left beside the meter)")  # fmt: skip
    s.add_argument("--intel", type=Path, action="append", metavar="FILE",
                   help="match every flow against the indicators of FILE (plain list, CSV, Zeek intel, STIX 2.1, "
                   "MISP JSON); repeatable")  # fmt: skip
    s.add_argument("--intel-format", default="auto", choices=("auto", "plain", "csv", "zeek", "stix", "misp", "ntds"),
                   help="the indicator files' format (default: from each file's name and content)")  # fmt: skip
    s.set_defaults(func=cmd_score)

    k = sub.add_parser("keygen", help="write this sensor's CURVE key pair (secret file mode 0600)")
    k.add_argument("--out", required=True, type=Path, help="folder for NAME.key and NAME.key_secret")
    k.add_argument("--name", required=True, help="the sensor id (the aggregator binds the key to it)")
    k.set_defaults(func=cmd_keygen)

    r = sub.add_parser(
        "run",
        help="the sensor service: live capture on the configured interfaces",
        description="Capture, meter, score, summarise and publish until SIGTERM (which expires and sends every "
        "open flow first). SIGHUP reloads the baseline and the settings that allow it. Speaks systemd's notify "
        "protocol when NOTIFY_SOCKET is set.",
    )
    r.add_argument("--config", required=True, type=Path, help="sensor.yaml")
    r.add_argument("--interface", action="append", metavar="IFACE", help="override the configured interfaces")
    r.add_argument("--insecure", action="store_true", help="plain text, no keys (tests on loopback only)")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser(
        "replay",
        help="the same pipeline over capture files, published like a live sensor",
        description="Run the sensor pipeline over capture files (read in order as one stream) and publish to the "
        "aggregator. Exit 0 once everything is acknowledged; 3 if messages remain spooled for the next run.",
    )
    rp.add_argument("pcaps", nargs="*", type=Path, metavar="PCAP", help="default: the configured files")
    rp.add_argument("--config", required=True, type=Path, help="sensor.yaml")
    rp.add_argument("--pace", choices=("max", "realtime"), default="max", help="read speed (default: max)")
    rp.add_argument("--wait", type=float, default=60.0, help="seconds to wait for acknowledgements (default: 60)")
    rp.add_argument(
        "--serve-evidence", type=float, default=0.0, metavar="SECONDS",
        help="after the files, stay connected this long answering pcap jobs for the replay's alerts from the "
        "replayed files (ntds-aggregator pcap; SIGTERM ends it; default: 0)",
    )  # fmt: skip
    rp.add_argument("--insecure", action="store_true", help="plain text, no keys (tests on loopback only)")
    rp.set_defaults(func=cmd_replay)

    d = sub.add_parser("detectors", help="list the host-level detectors and their options (sensor.yaml detectors:)")
    d.set_defaults(func=cmd_detectors)

    cc = sub.add_parser("check-config", help="validate sensor.yaml and print the effective configuration")
    cc.add_argument("config", type=Path, metavar="FILE")
    cc.add_argument("--insecure", action="store_true", help="do not require the key files")
    cc.set_defaults(func=cmd_check_config)
    return parser


def _logging() -> None:
    from ntds.logs import setup

    setup(PROG)


def cmd_run(args: argparse.Namespace) -> int:
    return _pipeline(args, live=True)


def cmd_replay(args: argparse.Namespace) -> int:
    return _pipeline(args, live=False)


def _pipeline(args: argparse.Namespace, live: bool) -> int:
    """`run` and `replay`: the same pipeline, sources from the command line or the configuration."""
    from sensor.config import load
    from sensor.pipeline import Pipeline

    _logging()
    cfg = load(args.config, insecure=args.insecure)
    sources = (args.interface or cfg.interfaces) if live else (args.pcaps or cfg.files)
    if not sources:
        what = "no interfaces to capture on (setting 'interfaces')" if live else "no capture files (setting 'files')"
        raise InputError(f"{args.config}: {what}")
    if not live and not 0 <= args.serve_evidence <= 30 * 86400:
        raise InputError("--serve-evidence must be between 0 and 2592000 seconds")
    kwargs = (
        {"interfaces": sources}
        if live
        else {"files": sources, "pace": args.pace, "drain_s": args.wait, "serve_evidence_s": args.serve_evidence}
    )
    return Pipeline(cfg, insecure=args.insecure, progress=sys.stderr.isatty(), **kwargs).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    from ntds.detect.baseline import Baseline
    from sensor.config import load, missing_interfaces

    cfg = load(args.config, insecure=args.insecure)
    Baseline.load(cfg.baseline, feature_profile=cfg.feature_profile)
    missing = missing_interfaces(cfg.interfaces)
    if missing:
        raise InputError(
            f"{args.config}: setting 'interfaces' names {', '.join(missing)}, which this host does not have"
        )
    print(cfg.describe(), end="")
    print(f"{args.config}: valid", file=sys.stderr)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from ntds.wire.keys import generate

    public, secret = generate(args.out, args.name)
    print(f"wrote {public} (copy it to the aggregator's allow-list) and {secret} (mode 600)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    heap.settle()
    try:
        return args.func(args)
    except InputError as e:
        return _fail(str(e), EXIT_INPUT)
    except WorkerFailed as e:
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
