"""`ntds-aggregator`: the central side's command line.

Every error a user can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

from aggregator import __version__
from ntds.detect.scoring import SCORERS
from ntds.errors import ArgumentParser, InputError, one_line
from ntds.flows.profiles import PROFILES

PROG = "ntds-aggregator"


ARCHIVE_HELP = (
    "read this archive instead of the configured one: a folder, or the URL an aggregator mirrors to "
    "(archive_mirror: s3://bucket/prefix), read with archive_mirror_options"
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="ntds aggregator")
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
    b.add_argument("--method", choices=sorted(SCORERS), default="robust", help="scoring method (default: robust)")
    b.add_argument("--combine", choices=("mean", "max"), help="how axis scores combine (default: per method)")
    b.add_argument("--min-count", type=int, default=100, help="flows an application needs for its own entry")
    b.add_argument(
        "--local-net",
        action="append",
        metavar="CIDR",
        help="local network (repeatable; default: the sensor's)",
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
    pl.add_argument("--method", choices=sorted(SCORERS), default="robust", help="when INPUT is flows (default: robust)")
    pl.add_argument("--min-count", type=int, default=100, help="when INPUT is flows")
    pl.add_argument("--profile", choices=sorted(PROFILES), default="unicauca", help="when INPUT is flows")
    pl.set_defaults(func=_baseline_plots)

    bk = bsub.add_parser("keygen", help="write the Ed25519 key pair baselines are signed with",
                         description="baseline-signing.key (secret, mode 0600: aggregator.yaml baseline_signing_key) "
                         "and baseline-signing.pub (every sensor's baseline_key).")  # fmt: skip
    bk.add_argument("--out", required=True, help="folder for the two files")
    bk.set_defaults(func=_baseline_keygen)
    pr = bsub.add_parser(
        "promote", help="sign a baseline and make it the active version; serve pushes it to every sensor",
        description="Check FILE as a sensor loads it, sign it with baseline_signing_key, keep it as a new version "
        "(with its inputs, the checks and your note) and make it active. `serve` pushes the active version to "
        "each sensor that runs another one (at its next hello or health message).",
    )  # fmt: skip
    pr.add_argument("file", help="baseline file (from `baseline build`)")
    pr.add_argument("--note", default="", help="why: kept with the version")
    pr.add_argument("--config", required=True, help="aggregator.yaml")
    pr.set_defaults(func=_baseline_versions)
    rb = bsub.add_parser("rollback", help="make an earlier version active again (default: the one before)")
    rb.add_argument("--to", type=int, metavar="VERSION", help="this version (see `baseline versions`)")
    rb.add_argument("--config", required=True, help="aggregator.yaml")
    rb.set_defaults(func=_baseline_versions)
    df = bsub.add_parser(
        "diff", help="what a candidate baseline changes against the current one",
        description="Entries new and gone, flow counts, the typical value of each axis and the tier 3 threshold "
        "per entry; axes that moved more than 2x are named. In words, or --json.",
    )  # fmt: skip
    df.add_argument("current", help="the baseline in use (a file; `baseline versions` lists the promoted ones)")
    df.add_argument("candidate", help="the candidate baseline file")
    df.add_argument("--flows", nargs="+", metavar="FILE", help="flow records or captures both baselines score: the "
                    "alert rate each would have produced")  # fmt: skip
    df.add_argument("--config", help="aggregator.yaml: estimate the alert rate each would have produced on the newest "
                    "week of the sensors' statistics in the archive (no flow files needed)")  # fmt: skip
    df.add_argument("--json", action="store_true", help="the whole comparison as one JSON object")
    df.set_defaults(func=_baseline_diff)
    le = bsub.add_parser(
        "learn", help="a candidate baseline from the sensors' statistics in the archive (no flows needed)",
        description="Add up the stats messages of the last --weeks weeks (up to --until, default the newest day "
        "with statistics) from every sensor (or --sensor ...), learn a candidate from all but the newest week "
        "(held out), and check it on the held-out week (README: Baselines that learn). With --promote, or "
        "baseline_auto_promote: yes, the candidate is promoted when every check passes.",
    )  # fmt: skip
    le.add_argument("--config", required=True, help="aggregator.yaml")
    le.add_argument("-o", "--output", required=True, help="candidate baseline file to write (JSON)")
    le.add_argument("--weeks", type=_weeks, default=4, help="weeks of statistics to use (default 4)")
    le.add_argument("--until", type=_day, metavar="YYYY-MM-DD", help="the last day (default: newest statistics)")
    le.add_argument("--sensor", nargs="+", metavar="ID", help="only these sensors' statistics (default: every one)")
    le.add_argument("--min-count", type=int, default=100, help="flows an application needs for its own entry")
    le.add_argument("--profile", choices=sorted(PROFILES), default=None,
                    help="feature profile (default: the active baseline's, else unicauca)")  # fmt: skip
    le.add_argument("--combine-sensors", choices=("median", "pooled"), default="median",
                    help="median (default): each sensor fitted on its own, the weighted median of the sensors (a "
                    "minority of sensors cannot steer it); pooled: every sensor's statistics added up (exact, "
                    "but one sensor can move the tail)")  # fmt: skip
    le.add_argument("--promote", action="store_true", help="promote the candidate if every check passes")
    le.add_argument("--note", default="", help="why: kept with the version if it is promoted")
    le.add_argument("--json", action="store_true", help="what was learned and checked, as one JSON object")
    le.add_argument("--archive", metavar="FOLDER|URL", help=ARCHIVE_HELP)
    le.set_defaults(func=_baseline_learn)
    vs = bsub.add_parser("versions", help="every promoted version, newest first; * marks the active one")
    vs.add_argument("--json", action="store_true", help="JSON lines")
    vs.add_argument("--config", required=True, help="aggregator.yaml")
    vs.set_defaults(func=_baseline_versions)

    _intel_parser(sub)

    k = sub.add_parser("keygen", help="write the aggregator's CURVE key pair (secret file mode 0600)")
    k.add_argument("--out", required=True, help="folder for NAME.key and NAME.key_secret")
    k.add_argument("--name", default="server", help="key name (default: server)")
    k.set_defaults(func=_keygen)

    sv = sub.add_parser("serve", help="receive, store and acknowledge what sensors send")
    sv.add_argument("--config", required=True, help="aggregator.yaml")
    sv.add_argument("--insecure", action="store_true", help="plain text, no keys (tests on loopback only)")
    sv.set_defaults(func=_serve)

    ar = sub.add_parser("archive", help="export stored messages into the Parquet archive now (serve does it too)")
    ar.add_argument("--config", required=True, help="aggregator.yaml")
    ar.set_defaults(func=_archive)

    rp = sub.add_parser("report", help="build reports from the archive")
    rsub = rp.add_subparsers(dest="report_command", required=True, metavar="KIND")
    w = rsub.add_parser(
        "weekly",
        help="one ISO week (UTC): report.html, report.json and CSV tables",
        description="Build the weekly report with Dask: in-process by default, on a Dask distributed cluster with "
        "--scheduler (its workers must see the archive at the same path, or read it from an object store: "
        "--archive URL). New messages are archived first.",
    )
    w.add_argument("--config", required=True, help="aggregator.yaml")
    w.add_argument("--week", help="ISO week such as 2026-W47 (default: the last complete week)")
    w.add_argument("--sensor", action="append", metavar="ID", help="only these sensors (repeatable)")
    w.add_argument("-o", "--output", help="output folder (default: report-WEEK)")
    w.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="Dask distributed scheduler address")
    w.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to try to reach the scheduler (default 10)")  # fmt: skip
    w.add_argument("--archive", metavar="FOLDER|URL", help=ARCHIVE_HELP + " (nothing is exported first)")
    w.set_defaults(func=_report_weekly)

    al = sub.add_parser("alerts", help="list stored alerts")
    al.add_argument("--config", required=True, help="aggregator.yaml")
    al.add_argument("--since", help="flow start at or after this time (ISO-8601, e.g. 2026-11-16 or 2026-11-16T08:00Z)")
    al.add_argument("--min-tier", type=int, default=0, metavar="K", help="only tier K and rarer (0-5)")
    al.add_argument("--sensor", help="only this sensor")
    al.add_argument("--json", action="store_true", help="one JSON object per alert")
    al.add_argument("--limit", type=int, default=1000, metavar="N",
                    help="the newest N alerts that match (default 1000; 0: every one)")  # fmt: skip
    al.set_defaults(func=_alerts)

    pc = sub.add_parser(
        "pcap",
        help="fetch the packets behind an alert (or of a host in a time range) from the sensor that saw them",
        description="Ask the sensor for the packets (over its link, by a pcap job that `serve` sends it; a sensor "
        "that is offline gets it when it is back), wait for them and write them as a pcap file. Packets come from "
        "those the sensor kept for the alert, its packet ring, or the files it replayed: the same bytes and times.",
    )
    pc.add_argument("alert", nargs="?", type=int, metavar="ALERT_ID", help="the alert's id (ntds-aggregator alerts)")
    pc.add_argument("--config", required=True, help="aggregator.yaml")
    pc.add_argument("-o", "--output", required=True, help="pcap file to write")
    pc.add_argument("--sensor", help="without ALERT_ID: the sensor to ask")
    pc.add_argument("--host", help="without ALERT_ID: packets from or to this address")
    pc.add_argument("--peer", default="", help="only packets between host and this address")
    pc.add_argument("--since", help="without ALERT_ID: from this time (ISO-8601)")
    pc.add_argument("--until", help="without ALERT_ID: to this time (ISO-8601)")
    pc.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                    help="how long to wait for the sensor (default 120; the job stays open after)")  # fmt: skip
    pc.set_defaults(func=_pcap)

    ui = sub.add_parser(
        "ui",
        help="the alert manager: web UI, JSON API and Prometheus metrics on ui_listen",
        description="Serve the alert manager (queue, alerts, hosts, sensors, silences, reports, deliveries, audit "
        "log; /api/...; /metrics) from the store, on ui_listen (127.0.0.1:8080 by default). Accounts: "
        "`ntds-aggregator user`.",
    )
    ui.add_argument("--config", required=True, help="aggregator.yaml")
    ui.set_defaults(func=_ui)

    us = sub.add_parser("user", help="alert manager accounts: add, list, remove, passwd, token, unlock")
    usub = us.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    ua = usub.add_parser("add", help="add an operator (password from --password-file, a prompt, or stdin)")
    ua.add_argument("name")
    ua.add_argument("--role", choices=("viewer", "analyst"), default="viewer", help="default: viewer (read-only)")
    ua.add_argument("--password-file", help="file holding the password (first line)")
    ua.add_argument("--one-time", action="store_true",
                    help="generate a password that works for one login within ui_login's one_time_hours (24), "
                    "print it")  # fmt: skip
    ua.add_argument("--no-packets", action="store_true",
                    help="an analyst who may not download packets (analysts may, viewers never)")  # fmt: skip
    upk = usub.add_parser("packets", help="allow or deny an analyst downloading packets (viewers never may)")
    upk.add_argument("name")
    upk.add_argument("allowed", choices=("yes", "no"))
    up = usub.add_parser("passwd", help="set an operator's password (ends their sessions and API tokens)")
    up.add_argument("name")
    up.add_argument("--password-file", help="file holding the password (first line)")
    ur = usub.add_parser("remove", help="remove an operator and their sessions and tokens")
    ur.add_argument("name")
    usub.add_parser("list", help="list operators and roles")
    ut = usub.add_parser("token", help="print a new API token for scripts (Authorization: Bearer TOKEN); it ends "
                         "after --days or when the user's password changes")  # fmt: skip
    ut.add_argument("name")
    ut.add_argument("--days", type=int, default=365, help="valid for this many days, 1 to 3650 (default: 365)")
    ul = usub.add_parser("unlock", help="lift the lock failed logins put on an account")
    ul.add_argument("name")
    for parser_ in (ua, up, ur, ut, upk, ul, usub.choices["list"]):
        parser_.add_argument("--config", required=True, help="aggregator.yaml")
    us.set_defaults(func=_user)

    dv = sub.add_parser(
        "deliveries", help="broadcast deliveries: list them, retry parked ones, park or drop stuck ones",
        description="list; retry [ID ...] (parked ones again, default every one); park ID ... (take pending ones "
        "out of the queue as failed: retry sends them again); drop ID ... (give pending or parked ones up for good, "
        "kept in the list as dropped). A running serve sees the change at once.",
    )  # fmt: skip
    dv.add_argument("action", nargs="?", choices=("list", "retry", "park", "drop"), default="list")
    dv.add_argument("ids", nargs="*", type=int, metavar="ID", help="retry: these (default: every failed one); "
                    "park, drop: these (required)")  # fmt: skip
    dv.add_argument("--config", required=True, help="aggregator.yaml")
    dv.add_argument("--status", choices=("pending", "delivered", "failed", "dropped"), help="list: only this status")
    dv.add_argument("--json", action="store_true", help="list: one JSON object per delivery")
    dv.set_defaults(func=_deliveries)

    se = sub.add_parser("sensors", help="list sensors: status, last seen, backlog, drops, quota refusals")
    se.add_argument("--config", required=True, help="aggregator.yaml")
    se.add_argument("--json", action="store_true", help="one JSON object per sensor")
    se.set_defaults(func=_sensors)

    pv = sub.add_parser(
        "prevalence", help="external destinations: how many local hosts reached them, at how many sites, since when"
    )
    pv.add_argument("destination", nargs="?", help="an address, domain, server name or fingerprint (default: the "
                    "rarest and newest destinations)")  # fmt: skip
    pv.add_argument("--config", required=True, help="aggregator.yaml")
    pv.add_argument("--kind", choices=("address", "domain", "server_name", "client_fingerprint"),
                    help="only this kind of destination")  # fmt: skip
    pv.add_argument("--limit", type=int, default=50, help="destinations listed without DESTINATION (default 50)")
    pv.add_argument("--json", action="store_true", help="one JSON object per destination")
    pv.set_defaults(func=_prevalence)
    return parser


def _baseline_keygen(args) -> int:
    from ntds.wire.signing import generate

    public, secret = generate(args.out)
    print(f"wrote {secret} (secret: aggregator.yaml baseline_signing_key) and {public} (sensor.yaml baseline_key)",
          file=sys.stderr)  # fmt: skip
    return 0


def _baseline_versions(args) -> int:
    import json

    from aggregator import baselines
    from aggregator.config import load
    from aggregator.store import open_store
    from ntds.logs import printable

    cfg = load(args.config, insecure=True)
    open_store(cfg.store, create=True).close()
    db = baselines.connect(cfg.store)
    try:
        if args.baseline_command == "promote":
            v = baselines.promote(db, Path(args.file), cfg.baseline_signing_key, args.note, by=_operator())
            print(f"version {v['version']} ({v['baseline_id']}) is active; serve pushes it to every sensor",
                  file=sys.stderr)  # fmt: skip
        elif args.baseline_command == "rollback":
            v = baselines.rollback(db, args.to, cfg.baseline_signing_key)
            print(f"version {v['version']} ({v['baseline_id']}) is active again; serve pushes it to every sensor",
                  file=sys.stderr)  # fmt: skip
        else:
            for v in baselines.versions(db):
                if args.json:
                    print(json.dumps(v))
                    continue
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(v["promoted"]))
                mark = "*" if v["active"] else " "
                print(f"{mark} {v['version']:>4}  {when}  {printable(v['baseline_id'], 60)}  {v['entries']} entries  "
                      f"{printable(v['promoted_by'], 20)}  {printable(v['note'], 200)}")  # fmt: skip
    finally:
        db.close()
    return 0


def _intel_parser(sub) -> None:
    from ntds.intel.formats import FORMATS
    from ntds.intel.indicators import TYPES

    it = sub.add_parser("intel", help="threat intelligence: known-bad indicators matched on every sensor")
    isub = it.add_subparsers(dest="intel_command", required=True)
    ad = isub.add_parser(
        "add", help="load indicator files, sign the set, retro-hunt the new ones",
        description="Read each FILE (plain list, CSV, Zeek intel, STIX 2.1 bundle, MISP JSON export; the format from "
        "its name and content unless --format), store its indicators (a value already stored from the same source "
        "takes the new confidence and expiry), sign the set of indicators not yet expired with "
        "baseline_signing_key (serve pushes it to every sensor), and retro-hunt the new ones over the alerts the "
        "fleet already sent. A file that cannot be read is one line and a non-zero exit, and nothing is stored; a "
        "bad row is counted and named, and the rest is stored.",
    )  # fmt: skip
    ad.add_argument("files", nargs="+", metavar="FILE")
    ad.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    ad.add_argument("--source", help="the source every indicator is credited to (default: the file's own, else its "
                    "name)")  # fmt: skip
    ad.add_argument("--confidence", type=int, choices=range(0, 101), metavar="0-100",
                    help="confidence for every indicator (default: the file's own, else 50)")  # fmt: skip
    ad.add_argument("--days", type=float, help="expire each indicator this many days from now (default: the file's "
                    "own expiry, else never)")  # fmt: skip
    ad.add_argument("--no-hunt", action="store_true", help="do not retro-hunt the new indicators now")
    ad.add_argument("--config", required=True, help="aggregator.yaml")
    ls = isub.add_parser("list", help="the stored indicators (not yet expired unless --expired)")
    ls.add_argument("--type", choices=sorted(TYPES))
    ls.add_argument("--source")
    ls.add_argument("--expired", action="store_true", help="expired ones too")
    ls.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    ls.add_argument("--sets", action="store_true", help="the signed sets instead, newest first")
    ls.add_argument("--json", action="store_true", help="JSON lines")
    ls.add_argument("--config", required=True, help="aggregator.yaml")
    for name, what in (("remove", "delete indicators"), ("expire", "end indicators now (or --at): they stay listed "
                                                                     "and stop matching")):  # fmt: skip
        rm = isub.add_parser(name, help=f"{what}; the set is signed anew")
        rm.add_argument("values", nargs="*", metavar="VALUE", help="indicator values (any type, any source)")
        rm.add_argument("--source", help="every indicator of this source")
        rm.add_argument("--type", choices=sorted(TYPES), help="only of this type")
        if name == "expire":
            rm.add_argument("--at", metavar="TIME", help="ISO-8601 time (default: now)")
        rm.add_argument("--config", required=True, help="aggregator.yaml")
    it.set_defaults(func=_intel)


def _intel(args) -> int:
    from aggregator.intel_cli import run

    return run(args)


def _weeks(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 520:
        raise argparse.ArgumentTypeError("a number of weeks from 1 to 520")
    return int(text)


def _day(text: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a day as YYYY-MM-DD") from None


def _baseline_learn(args) -> int:
    import json

    from aggregator import baselines
    from aggregator.archive import Archive
    from aggregator.baseline_learn import learn, words
    from aggregator.config import load
    from aggregator.mirror import open_archive
    from aggregator.store import open_store
    from ntds.detect.baseline import save

    cfg = load(args.config, insecure=True)
    open_store(cfg.store, create=True).close()
    db = baselines.connect(cfg.store)
    try:
        current = baselines.active(db)
        active = baselines.check(current.content, f"active version {current.version}") if current else None
        profile = args.profile or (active.profile if active else "unicauca")
        archive = open_archive(args.archive, cfg.archive_mirror_options) if args.archive else Archive(cfg.archive)
        try:
            doc, checks, sp = learn(archive, weeks=args.weeks, until=args.until, sensors=args.sensor,
                                    min_count=args.min_count, feature_profile=profile, active=active,
                                    fleet=args.combine_sensors)  # fmt: skip
        except ValueError as e:  # statistics no scorer can be fitted on (empty histograms): the archive's fault
            raise InputError(f"{archive.root}: cannot learn from these statistics: {e}") from None
        except OSError as e:
            raise InputError(f"{archive.root}: cannot read the archive: {e.strerror or e}") from None
        out = Path(args.output)
        try:
            save(doc, out)
        except OSError as e:
            raise InputError(f"{out}: cannot write the candidate: {e.strerror or e}") from None
        learned = doc["learned"]
        promoted = None
        wanted = args.promote or cfg.baseline_auto_promote == "yes"
        if wanted and checks["passed"]:
            note = args.note or f"learned from {learned['from']}..{learned['to']}, checked on the held-out week"
            promoted = baselines.promote(db, out, cfg.baseline_signing_key, note, by=_operator(),
                                         learned_checks=checks)  # fmt: skip
    finally:
        db.close()
    if args.json:
        print(json.dumps({"candidate": str(out), "learned": learned, "entries": len(doc["applications"]),
                          "flows": doc["counts"]["flows"], "checks": checks,
                          "promoted": promoted and promoted["version"]}, indent=1))  # fmt: skip
    else:
        held = learned["held_out"]
        print(f"wrote {out}: {len(doc['applications'])} entries learned from {doc['counts']['flows']:,} flows of "
              f"{', '.join(learned['sensors'])}, {learned['from']}..{learned['to']}"
              + (f"; held out {held[0]}..{held[1]}" if held else "; nothing held out (under a day of statistics)"),
              file=sys.stderr)  # fmt: skip
        for line in words(checks):
            print(f"  {line}", file=sys.stderr)
        if promoted:
            print(f"version {promoted['version']} ({promoted['baseline_id']}) is active; serve pushes it to every "
                  "sensor", file=sys.stderr)  # fmt: skip
        elif wanted:
            print("not promoted: a check failed (the candidate is kept; `baseline promote` overrides)", file=sys.stderr)
    return 1 if wanted and not promoted else 0


def _baseline_diff(args) -> int:
    import json

    from aggregator.baseline_diff import diff, words
    from ntds.logs import printable

    archive = None
    if args.config:
        from aggregator.archive import Archive
        from aggregator.config import load

        archive = Archive(load(args.config, insecure=True).archive)
    d = diff(Path(args.current), Path(args.candidate), [Path(f) for f in args.flows or []], archive)
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        for line in words(d):
            print(printable(line, 10_000))
    return 0


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _keygen(args) -> int:
    from ntds.wire.keys import generate

    public, secret = generate(args.out, args.name)
    print(f"wrote {public} (give it to the sensors) and {secret} (mode 600, keep it here)", file=sys.stderr)
    return 0


def _serve(args) -> int:
    from aggregator.config import load
    from aggregator.serve import Server
    from ntds.logs import setup

    setup(PROG)
    cfg = load(args.config, insecure=args.insecure)
    if args.insecure:
        print(f"{PROG}: warning: --insecure: no encryption, no authentication", file=sys.stderr)
    return Server(cfg, insecure=args.insecure).run()


def _open_store(config: str):
    from aggregator.config import load
    from aggregator.store import open_store

    cfg = load(config, insecure=True)
    return cfg, open_store(cfg.store)


def _archive(args) -> int:
    from aggregator.archive import Archive

    cfg, store = _open_store(args.config)
    try:
        n = Archive(cfg.archive).export(store, cfg.retention_days, store_days=cfg.store_days)
    except OSError as e:
        raise InputError(f"{cfg.archive}: cannot write the archive: {e.strerror or e}") from None
    finally:
        store.close()
    print(f"{cfg.archive}: {n} messages archived", file=sys.stderr)
    return 0


def _report_weekly(args) -> int:
    import contextlib
    import time

    from aggregator.archive import Archive
    from aggregator.mirror import open_archive
    from aggregator.report.page import write
    from aggregator.report.weekly import Week, compute

    week = Week.parse(args.week) if args.week else Week.previous_complete()
    cfg, store = _open_store(args.config)
    try:
        if args.archive:  # a mirror, or another aggregator's archive: read as it is
            archive = open_archive(args.archive, cfg.archive_mirror_options)
            dated = 0
        else:
            archive = Archive(cfg.archive)
            archive.export(store, cfg.retention_days, store_days=cfg.store_days)
            dated = store.count_dated(week.start_s, week.end_s)
    except OSError as e:
        where = args.archive or cfg.archive
        raise InputError(f"{where}: cannot read or write the archive: {e.strerror or e}") from None
    finally:
        store.close()
    if args.sensor:
        try:
            unknown = sorted(set(args.sensor) - set(archive.sensors()))
        except OSError as e:
            raise InputError(f"{archive.root}: cannot read the archive: {e.strerror or e}") from None
        if unknown:
            raise InputError(f"--sensor {', '.join(unknown)}: no data from such a sensor in {archive.root}")
    client = contextlib.nullcontext()
    if args.scheduler:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout=f"{max(0.1, min(args.scheduler_timeout, 3600.0))}s")
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {args.scheduler}: cannot connect: {e}") from None
    started = time.monotonic()
    print(f"{PROG}: computing {week} ...", file=sys.stderr)
    with client, archive.reading():
        report = compute(archive, week, args.sensor)
    _promotions(cfg.store, report["overview"]["baselines"])
    _news(cfg, report, week, args.sensor)
    t = report["overview"]["totals"]
    if not t["flows"] and not t["alerts"] and dated and not args.sensor:
        print(
            f"{PROG}: warning: {week}: the archive has no data for this week, but the store holds {dated:,} "
            f"messages dated in it (deleted from the archive by retention, or not exported yet)",
            file=sys.stderr,
        )
    html = write(report, args.output or f"report-{week}", cfg.site_country)
    took = time.monotonic() - started
    print(
        f"{PROG}: {week}: {len(report['overview']['sensors'])} sensors, {t['flows']:,} flows, "
        f"{t['alerts']:,} alerts ({took:.1f} s)",
        file=sys.stderr,
    )
    print(html)
    return 0


def _news(cfg, report: dict, week, sensors: list[str] | None) -> None:
    """The week's notices and new destinations, from the store's context tables (brought up to date first)."""
    import sqlite3

    from aggregator.context import ContextOptions
    from aggregator.report import news

    try:
        db = sqlite3.connect(cfg.store, isolation_level=None, timeout=30)
        try:
            news.fill(report, db, ContextOptions.of(cfg), week.start_s, week.end_s, sensors)
        finally:
            db.close()
    except sqlite3.Error as e:
        print(f"{PROG}: warning: new behaviour left out: the store cannot be read ({e})", file=sys.stderr)


def _promotions(store: Path, used: list[dict]) -> None:
    """Why each baseline was in use: the version, time, operator and note it was promoted with (if it was)."""
    import sqlite3
    from datetime import UTC, datetime

    from aggregator import baselines
    from ntds.times import iso

    known: dict[str, dict] = {}
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'baselines'").fetchone():
                known = {v["baseline_id"]: v for v in reversed(baselines.versions(db))}
        finally:
            db.close()
    except sqlite3.Error:
        pass  # the report is made from the archive; a store it cannot read only leaves "why" blank
    for row in used:
        v = known.get(row["baseline_id"])
        row["version"] = v["version"] if v else None
        row["promoted"] = iso(datetime.fromtimestamp(v["promoted"], UTC), "seconds") if v else ""
        row["promoted_by"] = v["promoted_by"] if v else ""
        row["note"] = v["note"] if v else ""


def _catch_up(store, options) -> None:
    """Merge what serve's context thread has not merged yet; a store this user cannot write is read as it is."""
    import sqlite3

    from aggregator import context

    try:
        context.catch_up(store.db, options)
    except sqlite3.OperationalError as e:
        context.ensure_readable(store.db)
        print(f"{PROG}: note: reading context as merged so far ({e})", file=sys.stderr)


def _prevalence(args) -> int:
    import json

    from aggregator import context, prevalence
    from ntds import prevalence as sketches
    from ntds.logs import printable

    if not 1 <= args.limit <= 100_000:
        raise InputError("--limit must be between 1 and 100000")
    cfg, store = _open_store(args.config)
    options = context.ContextOptions.of(cfg)
    try:
        _catch_up(store, options)
        if args.destination is not None:
            text = args.destination.strip()
            if not text or len(text) > 256:
                raise InputError("a destination is an address, a name or a fingerprint of 1 to 256 characters")
            kinds = (args.kind,) if args.kind else sketches.kind_of(text)
            looked = (prevalence.lookup(store.db, options.sites, k, sketches.normal_key(k, text)) for k in kinds)
            found = [p for p in looked if p is not None]
            if not found:
                raise InputError(f"{printable(text, 80)}: no sensor has reported a local host reaching it")
        else:
            kinds = (args.kind,) if args.kind else sketches.KINDS
            found = prevalence.listing(store.db, options.sites, kinds, args.limit)
        omitted = store.db.execute("SELECT sensor, destinations, hosts FROM context_omitted ORDER BY sensor").fetchall()
    finally:
        store.close()
    for sensor, destinations, hosts in omitted:  # counts are lower bounds where a sensor hit its caps
        print(printable(f"{PROG}: note: sensor {sensor} counted {destinations:,} flows to destinations beyond "
                        f"context_max_destinations and {hosts:,} of hosts beyond context_max_hosts (not in these "
                        "counts)", 400), file=sys.stderr)  # fmt: skip
    for p in found:
        if args.json:
            print(json.dumps(p.as_dict()))
        else:
            print(
                printable(
                    f"{sketches.KIND_WORDS[p.kind]:<18} {p.key}  {prevalence.words(p)}  (last seen "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(p.last_seen))}, {p.flows:,} flows)",
                    1000,
                )
            )
    if not args.json:
        print(f"{len(found)} destinations", file=sys.stderr)
    return 0


def _alerts(args) -> int:
    import json

    from ntds.detect.alerts import summary_line
    from ntds.detect.scoring import TIER_LABELS
    from ntds.logs import printable

    if not 0 <= args.min_tier < len(TIER_LABELS):
        raise InputError(f"--min-tier must be 0..{len(TIER_LABELS) - 1}")
    since = _time_option("--since", args.since) if args.since else None
    from aggregator import context

    if not 0 <= args.limit <= 10**9:
        raise InputError("--limit must be 0 (every alert) or a positive number")
    cfg, store = _open_store(args.config)
    try:
        rows = store.alerts(sensor=args.sensor, since=since, min_tier=args.min_tier, limit=args.limit)
        total = store.count_alerts(sensor=args.sensor, since=since, min_tier=args.min_tier) if args.limit else len(rows)
        _catch_up(store, context.ContextOptions.of(cfg))
        ids = [r[0] for r in rows]
        judged = {}
        for k in range(0, len(ids), 500):
            chunk = ids[k : k + 500]
            judged |= {i: (w, m, t) for i, w, m, t in store.db.execute(
                f"SELECT alert_id, words, modifier, tier_after FROM alert_context WHERE alert_id IN "
                f"({','.join('?' * len(chunk))})", chunk)}  # fmt: skip
    finally:
        store.close()
    shown = 0
    for alert_id, sensor, seq, a in rows:
        shown += 1
        words, modifier, tier = judged.get(alert_id, ("", "", a["tier"]))
        if args.json:
            extra = {"prevalence": {"words": words, "modifier": modifier, "tier": tier}} if words else {}
            print(json.dumps({"id": alert_id, "sensor": sensor, "seq": seq} | a | extra))
        else:
            why = "; ".join(e.get("text") or e["axis"] for e in a["explanation"])
            context_words = f"; {words} ({modifier})" if words else ""
            print(printable(f"{alert_id}  {sensor}  {summary_line(a)}  ({why}{context_words})", 1000))
    if not args.json:
        more = f" (the newest {shown:,} of {total:,}; --limit 0 for every one)" if total > shown else ""
        print(f"{shown} alerts{more}", file=sys.stderr)
    elif total > shown:
        print(f"the newest {shown:,} of {total:,} alerts; --limit 0 for every one", file=sys.stderr)
    return 0


def _pcap(args) -> int:
    import shutil
    from datetime import UTC, datetime

    from aggregator import evidence
    from ntds.logs import printable

    if not 0 < args.timeout <= 86400:
        raise InputError("--timeout must be between 0 and 86400 seconds")
    by_host = (args.sensor, args.host, args.since, args.until)
    if args.alert is None and not all(by_host):
        raise InputError("give an ALERT_ID, or --sensor, --host, --since and --until")
    if args.alert is not None and any(by_host):
        raise InputError("give an ALERT_ID or --sensor/--host/--since/--until, not both")
    _, store = _open_store(args.config)
    db = store.db
    try:
        user = f"cli:{os.environ.get('USER', '') or os.getuid()}"
        if args.alert is not None:
            job_id = evidence.request_for_alert(db, args.alert, user)
        else:
            iso = lambda flag, t: datetime.fromtimestamp(_time_option(flag, t), UTC).isoformat()  # noqa: E731
            sel = {"host": args.host, "peer": args.peer, "host_port": 0, "peer_port": 0, "protocol": 0,
                   "since": iso("--since", args.since), "until": iso("--until", args.until)}  # fmt: skip
            job_id = evidence.request_for_host(db, args.sensor, sel, user)
        j = evidence.job(db, job_id)
        print(f"pcap job {job_id}: asking sensor {printable(j['sensor'])} for the packets of "
              f"{printable(j['spec']['host'])} from {j['spec']['since']} to {j['spec']['until']}",
              file=sys.stderr)  # fmt: skip
        shown = [""]

        def progress(j: dict) -> None:
            state = f"{j['state']}" + (f" ({j.get('received', 0)}/{j['parts']} parts)" if j["parts"] else "")
            if state != shown[0]:
                shown[0] = state
                print(f"pcap job {job_id}: {state}", file=sys.stderr)

        j = evidence.wait(db, job_id, args.timeout, progress)
    finally:
        store.close()
    if j["state"] == "failed":
        raise InputError(f"pcap job {job_id}: sensor {j['sensor']} could not serve it: {j['error']}")
    if j["state"] != "done":
        print(f"{PROG}: error: pcap job {job_id} is still {j['state']} after {args.timeout:g} s (is sensor "
              f"{printable(j['sensor'])} connected?); it stays open: run the same command again to collect it",
              file=sys.stderr)  # fmt: skip
        return 3
    try:
        shutil.copyfile(j["file"], args.output)
    except OSError as e:
        raise InputError(f"{args.output}: cannot write: {e.strerror or e}") from None
    cut = (
        f" (of {j['packets_total']:,} matching: cut at the sensor's size cap)"
        if j["packets_total"] > j["packets"]
        else ""
    )
    print(f"{args.output}: {j['packets']:,} packets{cut}, {j['bytes']:,} bytes, from the sensor's {j['source']} "
          f"(sha256 {j['sha256']})", file=sys.stderr)  # fmt: skip
    return 0


def _time_option(flag: str, text: str) -> float:
    """An ISO-8601 time (a date alone is midnight UTC) as seconds since the epoch, in the valid range."""
    from datetime import UTC, datetime

    from ntds.wire.schema import TIME_MAX, TIME_MIN

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t
        t = t.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InputError(f"{flag} {text!r}: expected ISO-8601 such as 2026-11-16T08:00Z") from None
    if not TIME_MIN <= t <= TIME_MAX:
        raise InputError(f"{flag} {text!r}: outside {TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d}")
    return t.timestamp()


def _sensors(args) -> int:
    import json
    import time

    from aggregator.sensors import describe
    from ntds.logs import printable

    _, store = _open_store(args.config)
    try:
        now = time.time()
        rows = [describe(r, now) for r in store.sensors()]
    finally:
        store.close()
    keys = ("sensor", "status", "last_seen", "age_s", "backlog", "drops", "baseline", "spool_restarts",
            "stored_today_bytes", "refused", "refused_bytes", "refused_last", "refused_why", "over_quota",
            "intel_serial", "intel_indicators", "intel_refused")  # fmt: skip
    if args.json:
        for r in rows:
            print(json.dumps({k: r[k] for k in keys}))
        return 0
    print(f"{'sensor':<16}{'status':<9}{'last seen (UTC)':<22}{'quota':<11}{'MB today':>9}{'refused':>10}"
          f"{'backlog':>9}{'drops':>8}")  # fmt: skip
    for r in rows:
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["last_seen"]))
        backlog = "-" if r["backlog"] is None else r["backlog"]
        drops = "-" if r["drops"] is None else r["drops"]
        quota = f"over({r['refused_why']})" if r["over_quota"] else "ok"
        print(f"{printable(r['sensor'], 15):<16}{r['status']:<9}{seen:<22}{quota:<11}"
              f"{r['stored_today_bytes'] / 1e6:>9.1f}{r['refused']:>10}{backlog:>9}{drops:>8}")  # fmt: skip
    return 0


def _ui(args) -> int:
    from aggregator.config import load
    from aggregator.store import open_store
    from aggregator.ui.app import serve
    from ntds.logs import setup

    setup(PROG)
    cfg = load(args.config, insecure=True)
    open_store(cfg.store, create=True).close()  # the schema exists before the first page asks
    import logging

    logging.getLogger("ntds.aggregator").info("alert manager on http://%s/", cfg.ui_listen)
    serve(cfg)
    return 0


def _password(path: str | None, prompt: str) -> str:
    import getpass

    if path:
        try:
            return open(path, encoding="utf-8").readline().rstrip("\n")  # noqa: SIM115
        except OSError as e:
            raise InputError(f"{path}: cannot read the password: {e.strerror or e}") from None
    if sys.stdin.isatty():
        first, second = getpass.getpass(prompt), getpass.getpass("again: ")
        if first != second:
            raise InputError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def _user(args) -> int:
    from aggregator.config import load
    from aggregator.manager import Manager, connect
    from aggregator.store import open_store

    cfg = load(args.config, insecure=True)
    try:
        open_store(cfg.store, create=True).close()
        m = Manager(connect(cfg.store), cfg.login_policy)
    except sqlite3.OperationalError as e:
        raise InputError(_store_problem(e)) from None
    try:
        _user_command(args, m)
    except sqlite3.OperationalError as e:
        raise InputError(_store_problem(e)) from None
    finally:
        m.db.close()
    return 0


def _store_problem(e: sqlite3.OperationalError) -> str:
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return "the store's disk is full: nothing was changed"
    return f"the store cannot be written: {one_line(e)}"


def _user_command(args, m) -> None:
    import secrets

    if args.user_command == "add":
        if args.one_time:
            password = secrets.token_urlsafe(18)
            m.add_user(args.name, args.role, password, one_time=True, packets=not args.no_packets)
            print(password)
            print(f"the one-time password works for one login within {m.policy.one_time_hours:g} hours",
                  file=sys.stderr)  # fmt: skip
        else:
            m.add_user(args.name, args.role, _password(args.password_file, f"password for {args.name}: "),
                       packets=not args.no_packets)  # fmt: skip
        print(f"added {args.name} ({args.role})", file=sys.stderr)
    elif args.user_command == "passwd":
        m.set_password(args.name, _password(args.password_file, f"new password for {args.name}: "))
        print(f"password of {args.name} changed; their sessions and API tokens are ended", file=sys.stderr)
    elif args.user_command == "remove":
        m.remove_user(args.name)
        print(f"removed {args.name}", file=sys.stderr)
    elif args.user_command == "token":
        print(m.api_token(args.name, args.days))
        print(f"valid {args.days} days or until {args.name}'s password changes", file=sys.stderr)
    elif args.user_command == "unlock":
        n = m.unlock(args.name)
        print(f"{args.name}: {'unlocked' if n else 'was not locked'}", file=sys.stderr)
    elif args.user_command == "packets":
        m.set_packets(args.name, args.allowed == "yes")
        print(f"{args.name} may {'' if args.allowed == 'yes' else 'not '}download packets", file=sys.stderr)
    else:
        for u in m.users():
            print(f"{u['name']}\t{u['role']}" + ("\tpackets" if u["packets"] else ""))


def _deliveries(args) -> int:
    import json

    from aggregator.broadcast.outbox import deliveries, drop, park, retry
    from aggregator.manager import connect

    if args.action in ("park", "drop") and not args.ids:
        raise InputError(f"deliveries {args.action} needs the ids of the deliveries (see: deliveries --status pending)")
    cfg, store = _open_store(args.config)
    store.close()
    db = connect(cfg.store)
    try:
        if args.action == "retry":
            n = retry(db, args.ids or None)
            print(f"{n} deliveries queued again", file=sys.stderr)
            return 0
        if args.action in ("park", "drop"):
            n = (park if args.action == "park" else drop)(db, args.ids)
            done = "parked as failed (retry sends them again)" if args.action == "park" else "dropped"
            if n < len(args.ids):
                state = "pending" if args.action == "park" else "pending or failed"
                raise InputError(f"{n} of {len(args.ids)} deliveries {done}; the other {len(args.ids) - n} are not "
                                 f"{state} deliveries")  # fmt: skip
            print(f"{n} of {len(args.ids)} deliveries {done}", file=sys.stderr)
            return 0
        rows = deliveries(db, args.status)
    finally:
        db.close()
    for d in rows:
        if args.json:
            print(json.dumps(d))
        else:
            print(f"{d['id']}\t{d['receiver']}\t{d['status']}\t{d['attempts']} attempts\t{d['alerts']} alerts\t"
                  f"{d['last_error']}")  # fmt: skip
    if not args.json:
        failed = sum(1 for d in rows if d["status"] == "failed")
        print(f"{len(rows)} deliveries" + (f", {failed} failed (retry with: deliveries retry)" if failed else ""),
              file=sys.stderr)  # fmt: skip
    return 0


def _baseline_plots(args) -> int:
    from pathlib import Path

    from aggregator.baseline_plots import plot_all
    from ntds.detect.baseline import Baseline

    first = Path(args.inputs[0])
    if len(args.inputs) == 1 and first.suffix.lower() == ".json":
        doc = Baseline.load(first).doc
    else:
        from aggregator.baseline_build import collect, local_networks

        paths = [Path(p) for p in args.inputs]
        got = collect(paths, args.profile, local_networks(None), False, sys.stderr.isatty())
        if len(got.apps) == 0:
            raise InputError("no scorable flows to plot (answered, with payload for TCP)")
        doc = got.build(method=args.method, min_count=args.min_count, feature_profile=args.profile)
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
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except sqlite3.DatabaseError as e:  # a corrupt or unreadable store, met while reading it
        print(f"{PROG}: error: the store cannot be read: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
