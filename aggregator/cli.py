"""`ntds-aggregator`: the central side's command line.

Every error a user can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from aggregator import __version__
from sensor.errors import InputError
from sensor.profiles import PROFILES
from sensor.scoring import METHODS

PROG = "ntds-aggregator"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ntds aggregator")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    base = sub.add_parser("baseline", help="build per-application baselines")
    bsub = base.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    b = bsub.add_parser(
        "build",
        help="flow records (CSV/Parquet of the 87 columns, or captures) -> baseline file",
        description="Build a per-application baseline: population metrics, scorer parameters and rarity tier "
        "thresholds learned from the inputs. Sites should build theirs from their own traffic.",
    )
    b.add_argument("inputs", nargs="+", metavar="INPUT")
    b.add_argument("-o", "--output", required=True, help="baseline file to write (JSON)")
    b.add_argument("--method", choices=sorted(METHODS), default="robust", help="scoring method (default: robust)")
    b.add_argument("--combine", choices=("mean", "max"), help="how axis scores combine (default: per method)")
    b.add_argument("--min-count", type=int, default=100, help="flows an application needs for its own entry")
    b.add_argument(
        "--local-net", action="append", metavar="CIDR", help="local network (repeatable; default RFC 1918/4193)"
    )
    b.add_argument("--offsite-only", action="store_true", help="keep only flows with one local and one external end")
    b.add_argument("--profile", choices=sorted(PROFILES), default="unicauca", help="feature profile of the inputs")
    b.set_defaults(func=_baseline_build)

    pl = bsub.add_parser(
        "plots",
        help="histograms, radar plots and the metrics table of a baseline (or of flows)",
        description="Draw the notebook's figures: per application the 3x3 log-count histograms of the nine "
        "metrics and the radar plot of per-axis scores coloured by tier, plus metrics.txt (medians). INPUT is a "
        "baseline file, or flow records / captures from which a baseline is built first.",
    )
    pl.add_argument("inputs", nargs="+", metavar="INPUT")
    pl.add_argument("-o", "--output", required=True, help="folder for the PNG files and metrics.txt")
    pl.add_argument("--method", choices=sorted(METHODS), default="robust", help="when INPUT is flows (default: robust)")
    pl.add_argument("--min-count", type=int, default=100, help="when INPUT is flows")
    pl.add_argument("--profile", choices=sorted(PROFILES), default="unicauca", help="when INPUT is flows")
    pl.set_defaults(func=_baseline_plots)
    return parser


def _baseline_plots(args) -> int:
    import json
    from pathlib import Path

    from aggregator.plots import plot_all
    from sensor.baseline import Baseline

    first = Path(args.inputs[0])
    if len(args.inputs) == 1 and first.suffix.lower() == ".json":
        doc = Baseline.load(first).doc
    else:
        from aggregator.baseline_build import DEFAULT_LOCAL_NETS, collect, parse_nets
        from sensor.baseline import build

        paths = [Path(p) for p in args.inputs]
        apps, metrics, _ = collect(
            paths, args.profile, parse_nets(list(DEFAULT_LOCAL_NETS)), False, sys.stderr.isatty()
        )
        doc = build(apps, metrics, method=args.method, min_count=args.min_count, feature_profile=args.profile)
        json.dumps(doc)  # the same document a saved baseline would hold
    try:
        written = plot_all(doc, Path(args.output))
    except OSError as e:
        raise InputError(f"{args.output}: cannot write: {e.strerror or e}") from None
    print(f"{args.output}: {len(written)} files", file=sys.stderr)
    return 0


def _baseline_build(args) -> int:
    from aggregator.baseline_build import build_command

    if args.min_count < 1:
        raise InputError("--min-count must be at least 1")
    return build_command(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
