"""`ntds-aggregator intel add|list|remove|expire`: what the operator types, and the lines they read back.

Every file is read before anything is stored, so a bad file (one line each,
exit 2) leaves the store as it was; bad rows are counted and named (the first
20 per file) and the rest is stored. Each change signs a new set for the
sensors, when `baseline_signing_key` is configured, and `add` retro-hunts the
new indicators (aggregator.retro_hunt).
"""

from __future__ import annotations

import json
import sys
import time

from aggregator import intel
from ntds.errors import InputError, one_line
from ntds.logs import printable
from ntds.times import parse_time


def _say(line: str) -> None:
    print(printable(line, 1000), file=sys.stderr)


def run(args) -> int:
    from aggregator.config import load
    from aggregator.store import open_store

    cfg = load(args.config, insecure=True)
    open_store(cfg.store, create=True).close()
    db = intel.connect(cfg.store)
    try:
        return {"add": _add, "list": _list, "remove": _change, "expire": _change}[args.intel_command](args, cfg, db)
    finally:
        db.close()


def _add(args, cfg, db) -> int:
    from ntds.intel.formats import Defaults, describe, load

    expires = time.time() + args.days * 86400 if args.days else 0.0
    loaded, failed = [], 0
    for f in args.files:
        d = Defaults(source=args.source or "", confidence=args.confidence, expires=expires,
                     fixed_source=bool(args.source), fixed_confidence=args.confidence is not None)  # fmt: skip
        try:
            got = load(f, args.format, d)
        except InputError as e:
            print(f"ntds-aggregator: error: {one_line(e)}", file=sys.stderr)
            failed += 1
            continue
        for line in describe(f, got):
            _say(line)
        loaded.append(got)
    if failed:
        _say(f"{failed} of {len(args.files)} files could not be read: nothing stored")
        return 2
    inds = [i for g in loaded for i in g.indicators]
    if expires:  # --days: the command line's expiry wins over the file's
        inds = [type(i)(i.type, i.value, i.source, i.confidence, i.added, expires) for i in inds]
    new, updated = intel.add(db, inds)
    _say(f"stored {new} new indicators, {updated} updated")
    _sign(db, cfg, f"add {', '.join(map(str, args.files))}"[:2000])
    if new and not args.no_hunt:
        from aggregator.retro_hunt import hunt

        for line in hunt(cfg.store):
            _say(line)
    return 0


def _sign(db, cfg, note: str) -> None:
    signed = intel.sign(db, cfg.baseline_signing_key, note)
    if signed is None:
        _say(
            f"not signed: baseline_signing_key ({cfg.baseline_signing_key}) is not set or not made yet, so no "
            "sensor gets these indicators (`ntds-aggregator baseline keygen`, then any intel change signs the set)"
        )
    else:
        _say(f"signed set {signed.serial}: {signed.indicators} indicators; serve pushes it to every sensor")


def _list(args, cfg, db) -> int:
    if args.sets:
        for s in intel.sets(db):
            if args.json:
                print(json.dumps(s))
            else:
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(s["signed"]))
                print(f"{s['serial']:>5}  {when}  {s['indicators']} indicators  {printable(s['note'], 200)}")
        return 0
    for r in intel.listing(db, args.type, args.source, args.expired, args.limit):
        if args.json:
            print(json.dumps(r))
            continue
        added = time.strftime("%Y-%m-%d", time.gmtime(r["added"]))
        ends = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["expires"])) if r["expires"] else "never"
        mark = " " if r["active"] else "x"
        print(f"{mark} {r['type']:<12} {printable(r['value'], 80):<40} {printable(r['source'], 40):<20} "
              f"{r['confidence']:>3}  added {added}  expires {ends}")  # fmt: skip
    return 0


def _change(args, cfg, db) -> int:
    if args.intel_command == "remove":
        n = intel.remove(db, args.values, args.source, args.type)
        _say(f"removed {n} indicators")
    else:
        at = None
        if args.at:
            try:
                at = parse_time(args.at if "T" in args.at else args.at + "T00:00:00Z").timestamp()
            except (ValueError, OverflowError):
                raise InputError(f"--at {args.at!r}: not an ISO-8601 time") from None
        n = intel.expire(db, args.values, args.source, args.type, at)
        _say(f"expired {n} indicators")
    if n == 0:
        _say("nothing matched: the set is unchanged")
        return 1
    _sign(db, cfg, f"{args.intel_command} {' '.join(args.values)} {args.source or ''}".strip()[:2000])
    return 0
