"""The Parquet archive: what reports read, on one machine or a Dask cluster, and what any Parquet reader
(pandas, pyarrow datasets, DuckDB) can open as it is.

Layout: ROOT/TABLE/day=YYYY-MM-DD/hour=HH/FILE.parquet, one folder per table,
UTC day and hour, every sensor's rows together (each row names its `sensor`),
so a week's report opens only that week's folders and the files a day holds
are bounded by tables x hours, not by the size of the fleet: an export batch
writes one file per (table, day, hour) it touches, and a finished hour's files
are merged into one. The day and hour are the data's own time (a summary's
interval, an alert's flow start), not the time it arrived. Readers that want
some sensors only filter rows on the `sensor` column (`files` lists every file
that may hold them). Archives written before 0.3 kept a folder per sensor
under each day (`sensor_id=ID`): those are still read, merged and expired.

Export is idempotent and crash-safe. Messages leave the SQLite store in `id`
order, in batches; a batch starting after id N writes `part-N.parquet` in every
folder it touches (temporary hidden name, fsync, rename) and only then moves
the store's high-water mark past it. A crash in between repeats the batch,
which rewrites the same names. Readers see only complete files.

Small files are merged (`c-A-B.parquet` holds the parts A..B), at most
MERGE_ROWS rows at a time, so export work and memory stay bounded however big
a day grows. A merge builds the folder's new content beside it (hard links for
the files it keeps) and swaps the two folders in one atomic rename
(renameat2 RENAME_EXCHANGE): any reader sees either the parts or the merged
file, never both. Our own reports hold a shared lock while they read, exports
an exclusive one, so a report never loses a file it listed.

The archive carries an id (`.archive-id`) that the store remembers: an archive
folder that was deleted or replaced is noticed at the next export, and
everything the store still holds is exported again. Retention counts from
arrival (a file's write time), never from the data's own time, so replaying an
old capture never deletes what was just acknowledged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

from aggregator.store import Store
from ntds.atomic import atomic_path
from ntds.errors import one_line
from ntds.wire.schema import MESSAGE_TYPES, TIERS, Message, upgrade_body

log = logging.getLogger("ntds.aggregator.archive")

BATCH = 5_000
"""Messages per export batch: a busy summary becomes a few hundred rows, so memory stays small."""
MERGE_AT = 8
"""Small files in one folder that trigger a merge (a finished day's small files are merged too)."""
MERGE_ROWS = 250_000
"""A file with this many rows is big enough: never merged again, so no merge holds more than this in memory."""
SHUTDOWN_EXPORT_S = 15.0
"""Longest final export at shutdown, seconds: with the rest of the stop, within systemd's 30 s (TimeoutStopSec)."""
STATE_KEY = "archived_id"
CONSUMER_MARKS = ("routed_id", "context_mark", "context_alert_mark")
"""State keys of the store's other readers that take messages after a mark (the outbox's routing, the context
merge, the alerts' context): the hot window deletes nothing they have not passed. Named here, not imported:
the archive knows the store, not the programs around it (tests/test_archive.py checks the names)."""
ARCHIVE_ID_KEY = "archive_id"

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
        ("last_seen", _T),
        ("kind", _S),
        ("signature", _S),
        ("count", _I),
        ("window_s", _I),
        ("flow_id", _S),
        ("community_id", _S),
        ("src_ip", _S),
        ("src_port", _I),
        ("dst_ip", _S),
        ("dst_port", _I),
        ("protocol", _I),
        ("application", _S),
        ("domain", _S),
        ("pattern", _S),
        ("baseline_id", _S),
        ("baseline", _S),
        ("score", pa.float64()),
        ("tier", _I),
        ("tier_label", _S),
        ("explanation", _S),
        ("features", _S),
    ),
    "population_samples": _schema(
        ("interval_start", _T),
        ("interval_s", _I),
        ("baseline_id", _S),
        ("application", _S),
        ("port_class", _S),
        ("flows", _I),
        ("k", _I),
        ("seen", pa.list_(_I)),
        ("tiers", pa.list_(_I)),
        ("axes", pa.list_(_I)),
    ),
    "population_histograms": _schema(
        ("interval_start", _T),
        ("interval_s", _I),
        ("baseline_id", _S),
        ("application", _S),
        ("port_class", _S),
        ("metric", _S),
        ("first_bin", _I),
        ("bins", pa.list_(_I)),
        ("non_finite", _I),
        ("sum", pa.float64()),
        ("sum_sq", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
    ),
    "health": _schema(
        ("created", _T),
        ("packets_seen", _I),
        ("packets_dropped", _I),
        ("flows_active", _I),
        ("flows_evicted", _I),
        ("flows_skipped", _I),
        ("detector_keys_evicted", _I),
        ("state", _S),
        ("spool_messages", _I),
        ("spool_bytes", _I),
        ("spool_dropped", _I),
    ),
}
"""Every archive table and its columns. Rows come from the message types' own `archive` flattening
(ntds.wire.schema); each keeps the (sensor, seq) of the message it came from; counters are the
summary's, bytes are IP bytes."""


PARTITION = "sensor_id="
"""The per-sensor folders of archives written before 0.3 (read, merged and expired as before)."""
HOUR = "hour="
SENSORS_FILE = ".sensors"
"""The sensors whose rows the archive holds (JSON list): `sensors` without reading every file."""


def _folder(root: Path, table: str, day: date, hour: int) -> Path:
    return root / table / f"day={day.isoformat()}" / f"{HOUR}{hour:02d}"


def _hour(folder: Path) -> int | None:
    """The hour of an hour folder; None for an older archive's sensor folder."""
    if folder.name.startswith(HOUR):
        with contextlib.suppress(ValueError):
            return int(folder.name[len(HOUR) :])
    return None


_NAME = re.compile(r"^(?:part-(\d+)|c-(\d+)-(\d+))\.parquet$")


def _span(name: str) -> tuple[int, int] | None:
    m = _NAME.match(name)
    if not m:
        return None
    if m.group(1):
        return int(m.group(1)), int(m.group(1))
    return int(m.group(2)), int(m.group(3))


def _live(folder: Path) -> tuple[list[Path], list[Path]]:
    """(live files, leftovers) of one folder: a part whose span lies inside a merged file's is a leftover
    (only a crash on a file system without atomic folder swaps can leave one; it is deleted, never read)."""
    live, shadowed = live_names([f.name for f in folder.iterdir()])
    return [folder / n for n in live], [folder / n for n in shadowed]


def live_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """`_live` on file names alone (a folder in an object store, aggregator.mirror): (live, shadowed)."""
    spans = {n: s for n in names if (s := _span(n))}
    merged = [(s, n) for n, s in spans.items() if n.startswith("c-")]
    live, shadowed = [], []
    for n, (a, b) in spans.items():
        covered = any(g != n and lo <= a and b <= hi for (lo, hi), g in merged)
        (shadowed if covered else live).append(n)
    return sorted(live), shadowed


def _write_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2); False where the system cannot."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


class Archive:
    """The archive folder: export from the store, merge, expire, and list files for readers."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextlib.contextmanager
    def _locked(self, shared: bool = False):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield

    def reading(self):
        """Hold while reading files listed by `files`: no export changes the folders meanwhile."""
        return self._locked(shared=True)

    def export(self, store: Store, retention_days: int | None = None, today: date | None = None,
               stop: Callable[[], bool] | None = None, store_days: int | None = None) -> int:  # fmt: skip
        """Move everything stored but not yet archived into Parquet; returns messages exported. Then expire
        what is past `retention_days`, delete from the store what is archived and past `store_days` (its hot
        window: `Store.forget_cold`), and merge small files.

        `stop` is asked between batches: once it says so, the export ends after the batch it wrote (each batch
        moves the high-water mark on its own) and leaves expiry, the hot window and merges to the next one: a
        shutdown waits for one batch, not for a backlog."""
        done = 0
        with self._locked():
            self._check_identity(store)
            last = store.state(STATE_KEY)
            while True:
                if stop is not None and stop():
                    return done
                batch = store.after(last, BATCH)
                if not batch:
                    break
                self._write_batch(batch)
                last = batch[-1][0]
                store.set_state(STATE_KEY, last)
                done += len(batch)
            if retention_days:  # before merging: a merge must not give rows past retention a newer file
                self._expire(store, retention_days, last)
            if store_days:
                self._cool(store, store_days, last, stop)
            self._merge(today, stop)
        return done

    @staticmethod
    def _cool(store: Store, store_days: int, exported_up_to: int, stop: Callable[[], bool] | None) -> None:
        """The store's hot window: what arrived over store_days ago leaves the store once the archive has it
        (its files are fsynced before the high-water mark moves) and every reader of the store has passed it."""
        up_to = exported_up_to
        for mark in CONSUMER_MARKS:
            seen = store.state(mark, None)
            if seen is not None:
                up_to = min(up_to, seen)
        gone = store.forget_cold(up_to, time.time() - store_days * 86400, stop=stop)
        if gone:
            log.info("hot window: %d archived messages that arrived over %d days ago left the store", gone, store_days)

    def _check_identity(self, store: Store) -> None:
        """Notice an archive folder that was deleted or replaced: export again everything the store holds."""
        marker = self.root / ".archive-id"
        mine = marker.read_text().strip() if marker.exists() else ""
        known = store.state(ARCHIVE_ID_KEY, "")
        if mine and mine == known:
            return
        exported = store.state(STATE_KEY)
        if mine and not known and not exported:
            store.set_state(ARCHIVE_ID_KEY, mine)  # a fresh store adopting an archive: nothing to redo
            return
        aside = [t for t in TABLES if (self.root / t).exists()]
        if exported or aside:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            for t in aside:  # data the store no longer vouches for: kept, hidden, never read twice
                (self.root / t).rename(self.root / f".replaced-{stamp}-{t}")
            log.warning(
                "%s is not the archive the store exported to (%s); exporting again the %d messages the store "
                "holds%s", self.root, "missing id" if not mine else "another id", store.count(),
                f", earlier folders moved aside as .replaced-{stamp}-*" if aside else "",
            )  # fmt: skip
        new = mine or uuid.uuid4().hex
        if not mine:
            with atomic_path(marker) as tmp:
                tmp.write_text(new + "\n")
        store.set_state(ARCHIVE_ID_KEY, new)
        store.set_state(STATE_KEY, 0)

    def _write_batch(self, batch: list) -> None:
        first = batch[0][0]
        groups: dict[tuple[str, date, int], list[dict]] = defaultdict(list)
        senders = set()
        for _, sensor, spool, seq, kind, created, body in batch:
            flatten = MESSAGE_TYPES[kind].archive
            if flatten is None:
                continue
            message = Message(kind, sensor, seq, created, upgrade_body(kind, json.loads(body)), spool)
            for table, t, row in flatten(message):
                groups[(table, t.date(), t.hour)].append(row)
                senders.add(sensor)
        for (table, day, hour), rows in groups.items():
            folder = _folder(self.root, table, day, hour)
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(pa.Table.from_pylist(rows, schema=TABLES[table]), folder / f"part-{first}.parquet")
        self._note_sensors(senders)

    def _note_sensors(self, senders: set[str]) -> None:
        known = set(self._noted_sensors())
        if senders - known:
            with atomic_path(self.root / SENSORS_FILE) as tmp:
                tmp.write_text(json.dumps(sorted(known | senders)))

    def _noted_sensors(self) -> list[str]:
        try:
            names = json.loads((self.root / SENSORS_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def _folders(self) -> Iterable[tuple[str, date, Path]]:
        for table in TABLES:
            for day_dir in sorted((self.root / table).glob("day=*")):
                try:
                    day = date.fromisoformat(day_dir.name[4:])
                except ValueError:
                    continue
                for old in day_dir.glob("sensor=*"):  # archives written before 0.2
                    old.rename(day_dir / (PARTITION + old.name[len("sensor=") :]))
                for folder in sorted(day_dir.glob(PARTITION + "*")):
                    yield table, day, folder
                for folder in sorted(day_dir.glob(HOUR + "*")):
                    if _hour(folder) is not None:
                        yield table, day, folder

    def _merge(self, today: date | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Size-tiered merges: MERGE_AT files of one size tier (rows within a factor of MERGE_AT) become one
        file of the next tier, so a row is rewritten a few times over its hour, never once per export. A
        finished hour's (an older archive's finished day's) small files are merged as far as MERGE_ROWS allows.
        `today` (tests) makes every hour of that day unfinished; by default the clock's hour decides."""
        now = datetime.now(UTC)
        for table, day, folder in self._folders():
            if stop is not None and stop():
                return  # merges only compact: the next export goes on with them
            live, leftovers = _live(folder)
            for f in leftovers:
                f.unlink(missing_ok=True)
            hour = _hour(folder)
            if today is not None or hour is None:
                finished = day < (today or now.date())
            else:
                finished = (day, hour) < (now.date(), now.hour)
            # Only runs of neighbouring files (by message id) are merged: the merged name's span then covers
            # exactly them, and no other file is ever taken for one of its parts.
            for run in self._runs(live, whole_day=finished):
                self._replace(folder, table, run)

    @staticmethod
    def _runs(live: list[Path], whole_day: bool) -> list[list[Path]]:
        files = sorted(live, key=lambda f: _span(f.name))
        rows = [pq.read_metadata(f).num_rows for f in files]
        tier = [int(math.log(max(n, 1), MERGE_AT)) if n < MERGE_ROWS else -1 for n in rows]
        runs, i = [], 0
        while i + MERGE_AT <= len(files):
            if tier[i] >= 0 and len(set(tier[i : i + MERGE_AT])) == 1:
                runs.append(files[i : i + MERGE_AT])
                i += MERGE_AT
            else:
                i += 1
        if runs or not whole_day:
            return runs
        run: list[Path] = []
        total = 0
        for f, n in zip(files, rows):
            if n < MERGE_ROWS and total + n <= MERGE_ROWS:
                run.append(f)
                total += n
                continue
            if len(run) > 1:
                runs.append(run)
            run, total = ([f], n) if n < MERGE_ROWS else ([], 0)
        if len(run) > 1:
            runs.append(run)
        return runs

    def _replace(self, folder: Path, table: str, parts: list[Path]) -> None:
        spans = [_span(f.name) for f in parts]
        name = f"c-{min(a for a, _ in spans)}-{max(b for _, b in spans)}.parquet"
        merged = pa.concat_tables([pq.read_table(f, schema=TABLES[table]) for f in parts])
        staging = self.root / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            for f in folder.iterdir():
                if f not in parts and not f.name.startswith("."):
                    os.link(f, staging / f.name)
            _write_atomic(merged, staging / name)
            newest = max(f.stat().st_mtime for f in parts)
            os.utime(staging / name, (newest, newest))  # retention: the merged rows arrived with the newest part
            if _exchange(staging, folder):
                return  # staging now holds the old parts: deleted below
            # No atomic swap on this system: the merged file goes in first, then the parts go
            # (a reader in between sees some rows twice; `files` never lists leftovers).
            os.replace(staging / name, folder / name)
            for f in parts:
                f.unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _expire(self, store: Store, retention_days: int, exported_up_to: int) -> None:
        """Delete what arrived more than retention_days ago: archive files by their write time (a merged file
        carries its newest part's), stored messages by their arrival."""
        cutoff = time.time() - retention_days * 86400
        for _, _, folder in list(self._folders()):
            for f in _live(folder)[0]:
                if f.stat().st_mtime < cutoff:
                    f.unlink(missing_ok=True)
            for empty in (folder, folder.parent):  # the hour's (or sensor's) folder, then the day's, once empty
                with contextlib.suppress(OSError):
                    empty.rmdir()
        gone = store.forget(exported_up_to, cutoff)
        if gone:
            log.info("retention: %d stored messages that arrived over %d days ago deleted", gone, retention_days)

    # -- readers ------------------------------------------------------------------------

    filesystem = None
    """What readers hand pyarrow with a listed file: None, the local disk (aggregator.mirror.RemoteArchive
    has its object store's)."""

    def days(self, table: str) -> list[date]:
        """The days of `table` with a folder."""
        out = []
        for d in (self.root / table).glob("day=*"):
            with contextlib.suppress(ValueError):
                out.append(date.fromisoformat(d.name[4:]))
        return sorted(out)

    def files(self, table: str, first: date, last: date, sensors: Iterable[str] | None = None) -> list[str]:
        """The live files of one table for days first..last (inclusive) that may hold rows of `sensors` (all
        by default). Hour folders hold every sensor's rows: a reader of some sensors filters on the `sensor`
        column (`only`); an older archive's sensor folders are chosen by name."""
        wanted = {quote(s, safe="") for s in sensors} if sensors else None
        out = []
        day = first
        while day <= last:
            day_dir = self.root / table / f"day={day.isoformat()}"
            if day_dir.is_dir():
                for folder in sorted(day_dir.glob(PARTITION + "*")):
                    if wanted is None or folder.name[len(PARTITION) :] in wanted:
                        out += [str(f) for f in _live(folder)[0]]
                for folder in sorted(day_dir.glob(HOUR + "*")):
                    if _hour(folder) is not None:
                        out += [str(f) for f in _live(folder)[0]]
            day += timedelta(days=1)
        return out

    def live_files(self) -> Iterable[tuple[str, Path]]:
        """Every live file, as (path relative to the root, path): what a mirror copies."""
        for table, _, folder in self._folders():
            for f in _live(folder)[0]:
                yield f"{table}/{folder.parent.name}/{folder.name}/{f.name}", f

    def sensors(self) -> list[str]:
        """Every sensor with rows in the archive (noted at export; an older archive's folder names too)."""
        legacy = {unquote(f.name[len(PARTITION) :]) for _, _, f in self._folders() if _hour(f) is None}
        return sorted(legacy | set(self._noted_sensors()))


def only(table: pa.Table, sensors: Iterable[str] | None) -> pa.Table:
    """The rows of `sensors` (all when None): what a reader of some sensors keeps of the files `files` lists."""
    if not sensors:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table["sensor"], value_set=pa.array(sorted(set(sensors)), pa.string())))


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
        self._deadline = float("inf")
        """Monotonic time after which an export stops between batches (set at shutdown)."""
        self.failure: str | None = None
        self.mirror = None
        """aggregator.mirror.Mirror, made at the first export when archive_mirror is set."""

    def run(self) -> None:
        try:
            while not self._stopping.wait(self.cfg.archive_interval_s):
                self.export_once(stop=self._stopping.is_set)
        except Exception as e:  # noqa: BLE001 - reported by serve, which stops the process
            self.failure = f"{type(e).__name__}: {e}"
            log.critical("archive export stopped: %s", self.failure)

    def export_once(self, stop: Callable[[], bool] | None = None) -> int:
        """One export; transient failures are logged and retried later, others raise."""
        try:
            store = Store(self.cfg.store)
        except (OSError, sqlite3.OperationalError) as e:
            log.error("archive export failed, will retry: %s", e)
            return 0
        try:
            n = self.archive.export(store, self.cfg.retention_days, stop=stop, store_days=self.cfg.store_days)
            if n:
                log.info("archived %d messages", n)
        except (OSError, pa.ArrowException, sqlite3.OperationalError) as e:
            log.error("archive export failed, will retry: %s", e)
            return 0
        finally:
            store.close()
        self._mirror()
        return n

    def _mirror(self) -> None:
        """Copy the archive to `archive_mirror`; a failure (the object store unreachable) is logged and the next
        round copies what this one did not."""
        if not self.cfg.archive_mirror:
            return
        try:
            if self.mirror is None:
                from aggregator.mirror import Mirror

                self.mirror = Mirror(self.cfg.archive_mirror, self.cfg.archive_mirror_name,
                                     self.cfg.archive_mirror_options)  # fmt: skip
            copied, removed = self.mirror.push(self.archive)
            if copied or removed:
                log.info("archive mirror: %d files copied, %d removed", copied, removed)
        except Exception as e:  # noqa: BLE001 - any backend's error: the local archive is whole, retry later
            log.error("archive mirror failed, will retry: %s", one_line(e))

    def stop(self, final_export: bool = True, within_s: float = SHUTDOWN_EXPORT_S) -> None:
        """Stop exporting: the export under way ends after its current batch; then, at most `within_s` more of
        export (a shutdown must finish inside systemd's stop timeout). What is left stays in the store and goes
        out at the next start: nothing is lost, the archive is only later."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=60)
        if final_export and self.failure is None:
            deadline = time.monotonic() + within_s
            try:
                self.export_once(stop=lambda: time.monotonic() > deadline)
            except Exception as e:  # noqa: BLE001 - the store is closing; what is not exported stays stored
                log.error("final archive export failed: %s", e)
            try:
                left = Store(self.cfg.store)
                behind = left.count_after(left.state(STATE_KEY))
                left.close()
            except (OSError, sqlite3.Error):
                behind = 0
            if behind:
                log.info("%d stored messages not archived yet: they go out at the next start", behind)
