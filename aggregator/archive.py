"""The Parquet archive: what reports read, on one machine or a Dask cluster.

Layout: ROOT/TABLE/day=YYYY-MM-DD/sensor=ID/FILE.parquet, one folder per table,
UTC day and sensor (the id percent-encoded), so a week's report opens only that
week's folders. The day is the data's own time (a summary's interval, an
alert's flow start), not the time it arrived.

Export is idempotent and crash-safe. Messages leave the SQLite store in `id`
order, in batches; a batch starting after id N writes `part-N.parquet` in every
folder it touches (temporary name, fsync, rename) and only then moves the
store's high-water mark past it. A crash in between repeats the batch, which
rewrites the same names. Readers see only complete files.

Small files are merged (`c-A-B.parquet` holds the parts A..B); the merged parts
stay on disk, shadowed, for a while so that a report that listed them can still
read them, and are deleted later. `live_files` hides shadowed files, so a
crash mid-merge never shows a row twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import shutil
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

from aggregator.store import Store
from ntds.atomic import atomic_path
from ntds.wire.schema import MESSAGE_TYPES, TIERS, Message

log = logging.getLogger("ntds.aggregator.archive")

BATCH = 50_000
MERGE_AT = 8
"""Files in one folder that trigger a merge (a finished day is merged down to one file)."""
KEEP_SHADOWED_S = 900
"""How long merged parts stay readable for reports that listed them before the merge."""
STATE_KEY = "archived_id"

_T = pa.timestamp("ms", tz="UTC")
_I = pa.int64()
_S = pa.string()


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([("sensor", _S), ("spool", _S), ("seq", _I), *fields])


TABLES: dict[str, pa.Schema] = {
    "summaries": _schema(
        ("interval_start", _T),
        ("interval_s", _I),
        ("flows", _I),
        ("packets", _I),
        ("bytes", _I),
        ("packets_seen", _I),
        ("packets_dropped", _I),
        ("flows_active", _I),
        ("pairs_omitted_flows", _I),
        ("pairs_omitted_bytes", _I),
    ),
    "traffic": _schema(
        ("interval_start", _T),
        ("class", _S),
        ("flows", _I),
        ("packets_up", _I),
        ("packets_down", _I),
        ("bytes_up", _I),
        ("bytes_down", _I),
    ),
    "applications": _schema(
        ("interval_start", _T),
        ("application", _S),
        ("flows", _I),
        ("bytes_up", _I),
        ("bytes_down", _I),
        *((f"tier{k}", _I) for k in range(TIERS)),
    ),
    "unanswered": _schema(("interval_start", _T), ("kind", _S), ("flows", _I), ("bytes", _I)),
    "peer_pairs": _schema(
        ("interval_start", _T),
        ("a", _S),
        ("b", _S),
        ("flows", _I),
        ("two_way", _I),
        ("one_way", _I),
        ("bytes_ab", _I),
        ("bytes_ba", _I),
    ),
    "countries": _schema(
        ("interval_start", _T),
        ("country", _S),
        ("flows", _I),
        ("bytes_in", _I),
        ("bytes_out", _I),
        ("max_tier", _I),
    ),
    "alerts": _schema(
        ("time", _T),
        ("flow_id", _S),
        ("src_ip", _S),
        ("src_port", _I),
        ("dst_ip", _S),
        ("dst_port", _I),
        ("protocol", _I),
        ("application", _S),
        ("baseline", _S),
        ("score", pa.float64()),
        ("tier", _I),
        ("tier_label", _S),
        ("explanation", _S),
    ),
    "health": _schema(
        ("created", _T),
        ("packets_seen", _I),
        ("packets_dropped", _I),
        ("flows_active", _I),
        ("flows_evicted", _I),
        ("flows_skipped", _I),
        ("state", _S),
        ("spool_messages", _I),
        ("spool_bytes", _I),
        ("spool_dropped", _I),
    ),
}
"""Every archive table and its columns. Rows come from the message types' own `archive` flattening
(ntds.wire.schema); each keeps the (sensor, seq) of the message it came from; counters are the
summary's, bytes are IP bytes."""


def _folder(root: Path, table: str, day: date, sensor: str) -> Path:
    return root / table / f"day={day.isoformat()}" / f"sensor={quote(sensor, safe='')}"


_NAME = re.compile(r"^(?:part-(\d+)|c-(\d+)-(\d+))\.parquet$")


def _span(name: str) -> tuple[int, int] | None:
    m = _NAME.match(name)
    if not m:
        return None
    if m.group(1):
        return int(m.group(1)), int(m.group(1))
    return int(m.group(2)), int(m.group(3))


def _live(folder: Path) -> tuple[list[Path], list[Path]]:
    """(live files, shadowed files) of one folder: a file whose span lies inside a merged file's is shadowed."""
    spans = {}
    for f in folder.iterdir():
        s = _span(f.name)
        if s:
            spans[f] = s
    merged = [(s, f) for f, s in spans.items() if f.name.startswith("c-")]
    live, shadowed = [], []
    for f, (a, b) in spans.items():
        covered = any(g != f and lo <= a and b <= hi for (lo, hi), g in merged)
        (shadowed if covered else live).append(f)
    return sorted(live), shadowed


def _write_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


class Archive:
    """The archive folder: export from the store, merge, expire, and list files for readers."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def export(self, store: Store, retention_days: int | None = None, today: date | None = None) -> int:
        """Move everything stored but not yet archived into Parquet; returns messages exported."""
        done = 0
        with self._locked():
            last = store.state(STATE_KEY)
            while True:
                batch = store.after(last, BATCH)
                if not batch:
                    break
                self._write_batch(batch)
                last = batch[-1][0]
                store.set_state(STATE_KEY, last)
                done += len(batch)
            self._merge(today or datetime.now(UTC).date())
            if retention_days:
                self._expire(store, retention_days, last, today or datetime.now(UTC).date())
        return done

    def _write_batch(self, batch: list) -> None:
        first = batch[0][0]
        groups: dict[tuple[str, date, str], list[dict]] = defaultdict(list)
        for _, sensor, spool, seq, kind, created, body in batch:
            flatten = MESSAGE_TYPES[kind].archive
            if flatten is None:
                continue
            for table, t, row in flatten(Message(kind, sensor, seq, created, json.loads(body), spool)):
                groups[(table, t.date(), sensor)].append(row)
        for (table, day, sensor), rows in groups.items():
            folder = _folder(self.root, table, day, sensor)
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(pa.Table.from_pylist(rows, schema=TABLES[table]), folder / f"part-{first}.parquet")

    def _folders(self) -> Iterable[tuple[str, date, Path]]:
        for table in TABLES:
            for day_dir in sorted((self.root / table).glob("day=*")):
                try:
                    day = date.fromisoformat(day_dir.name[4:])
                except ValueError:
                    continue
                for folder in sorted(day_dir.glob("sensor=*")):
                    yield table, day, folder

    def _merge(self, today: date) -> None:
        now = time.time()
        for table, day, folder in self._folders():
            live, shadowed = _live(folder)
            newest_merge = max((f.stat().st_mtime for f in live if f.name.startswith("c-")), default=0)
            if shadowed and now - newest_merge > KEEP_SHADOWED_S:
                for f in shadowed:
                    f.unlink(missing_ok=True)
            if len(live) >= MERGE_AT or (len(live) > 1 and day < today):
                spans = [_span(f.name) for f in live]
                merged = pa.concat_tables([pq.read_table(f, schema=TABLES[table]) for f in live])
                name = f"c-{min(a for a, _ in spans)}-{max(b for _, b in spans)}.parquet"
                _write_atomic(merged, folder / name)

    def _expire(self, store: Store, retention_days: int, exported_up_to: int, today: date) -> None:
        cutoff = today - timedelta(days=retention_days)
        for table in TABLES:
            for day_dir in (self.root / table).glob("day=*"):
                with contextlib.suppress(ValueError):
                    if date.fromisoformat(day_dir.name[4:]) < cutoff:
                        shutil.rmtree(day_dir, ignore_errors=True)
        gone = store.forget(exported_up_to, time.time() - retention_days * 86400)
        if gone:
            log.info("retention: %d stored messages older than %d days deleted", gone, retention_days)

    # -- readers ------------------------------------------------------------------------

    def files(self, table: str, first: date, last: date, sensors: Iterable[str] | None = None) -> list[str]:
        """The live files of one table for days first..last (inclusive), optionally some sensors only."""
        wanted = {quote(s, safe="") for s in sensors} if sensors else None
        out = []
        day = first
        while day <= last:
            day_dir = self.root / table / f"day={day.isoformat()}"
            if day_dir.is_dir():
                for folder in sorted(day_dir.glob("sensor=*")):
                    if wanted is None or folder.name[7:] in wanted:
                        out += [str(f) for f in _live(folder)[0]]
            day += timedelta(days=1)
        return out

    def sensors(self) -> list[str]:
        return sorted({unquote(f.name[7:]) for _, _, f in self._folders()})


class Archiver(threading.Thread):
    """`serve`'s background export: every archive_interval_s, and once more at shutdown.

    It has its own store connection (SQLite's WAL lets it read while the
    receiver writes). A failed export that can heal (a full disk, a busy
    store, no file descriptors left) is logged and retried next round: the
    messages stay in the store, so nothing is lost. Anything else (a corrupt
    store, a bug) ends the thread with `failure` set, and `serve` stops.
    """

    def __init__(self, cfg) -> None:
        super().__init__(name="archiver", daemon=True)
        self.cfg = cfg
        self.archive = Archive(cfg.archive)
        self._stopping = threading.Event()
        self.failure: str | None = None

    def run(self) -> None:
        try:
            while not self._stopping.wait(self.cfg.archive_interval_s):
                self.export_once()
        except Exception as e:  # noqa: BLE001 - reported by serve, which stops the process
            self.failure = f"{type(e).__name__}: {e}"
            log.critical("archive export stopped: %s", self.failure)

    def export_once(self) -> int:
        """One export; transient failures are logged and retried later, others raise."""
        try:
            store = Store(self.cfg.store)
        except (OSError, sqlite3.OperationalError) as e:
            log.error("archive export failed, will retry: %s", e)
            return 0
        try:
            n = self.archive.export(store, self.cfg.retention_days)
            if n:
                log.info("archived %d messages", n)
            return n
        except (OSError, pa.ArrowException, sqlite3.OperationalError) as e:
            log.error("archive export failed, will retry: %s", e)
            return 0
        finally:
            store.close()

    def stop(self, final_export: bool = True) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=60)
        if final_export and self.failure is None:
            try:
                self.export_once()
            except Exception as e:  # noqa: BLE001 - the store is closing; what is not exported stays stored
                log.error("final archive export failed: %s", e)
