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

    k = sub.add_parser("keygen", help="write the aggregator's CURVE key pair (secret file mode 0600)")
    k.add_argument("--out", required=True, help="folder for NAME.key and NAME.key_secret")
    k.add_argument("--name", default="server", help="key name (default: server)")
    k.set_defaults(func=_keygen)

    sv = sub.add_parser("serve", help="receive, store and acknowledge what sensors send")
    sv.add_argument("--config", required=True, help="aggregator.yaml")
    sv.add_argument("--insecure", action="store_true", help="plain text, no keys (tests on loopback only)")
    sv.set_defaults(func=_serve)

    se = sub.add_parser("sensors", help="list sensors: status, last seen, backlog, drops")
    se.add_argument("--config", required=True, help="aggregator.yaml")
    se.add_argument("--json", action="store_true", help="one JSON object per sensor")
    se.set_defaults(func=_sensors)
    return parser


def _keygen(args) -> int:
    from sensor.keys import generate

    public, secret = generate(args.out, args.name)
    print(f"wrote {public} (give it to the sensors) and {secret} (mode 600, keep it here)", file=sys.stderr)
    return 0


def _serve(args) -> int:
    import logging
    import signal

    from aggregator.config import load
    from aggregator.receiver import Receiver
    from aggregator.store import Store
    from sensor.keys import load_pair

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load(args.config, insecure=args.insecure)
    insecure = args.insecure
    if insecure:
        print(f"{PROG}: warning: --insecure: no encryption, no authentication", file=sys.stderr)
    secret = None if insecure else load_pair(cfg.server_key)
    store = Store(cfg.store)
    try:
        receiver = Receiver(
            cfg.endpoint, store, server_secret=secret, allow_folder=None if insecure else cfg.allow_list
        )
    except Exception as e:  # zmq errors on bind name the endpoint problem
        raise InputError(f"{cfg.endpoint}: cannot listen: {e}") from None
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    logging.getLogger("ntds.aggregator").info(
        "listening on %s (%s)", receiver.endpoint, "plain" if insecure else "CURVE"
    )
    try:
        receiver.serve(lambda: bool(stopping))
    finally:
        receiver.close()
        store.close()
    return 0


def _sensors(args) -> int:
    import json
    import time

    from aggregator.config import load
    from aggregator.store import Store

    cfg = load(args.config)
    if not cfg.store.exists():
        raise InputError(f"{cfg.store}: no store yet (has serve run?)")
    rows = Store(cfg.store).sensors()
    now = time.time()
    for r in rows:
        health = r["health"] or {}
        r["status"] = "online" if now - r["last_seen"] < 180 else "silent"
        r["backlog"] = health.get("spool_messages")
        r["drops"] = sum((health.get("spool_dropped") or {}).values()) if health else None
    if args.json:
        for r in rows:
            print(json.dumps({k: r[k] for k in ("sensor", "status", "last_seen", "backlog", "drops")}))
        return 0
    print(f"{'sensor':<16}{'status':<8}{'last seen (UTC)':<22}{'backlog':>9}{'drops':>8}")
    for r in rows:
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["last_seen"]))
        backlog = "-" if r["backlog"] is None else r["backlog"]
        drops = "-" if r["drops"] is None else r["drops"]
        print(f"{r['sensor']:<16}{r['status']:<8}{seen:<22}{backlog:>9}{drops:>8}")
    return 0


def _baseline_plots(args) -> int:
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
