"""The archive in an object store: `serve` mirrors it there, and reports and learning read it from there.

An aggregator's archive is a folder on its own disk (aggregator.archive), which Dask workers on other machines
cannot see. With `archive_mirror` set (an fsspec URL: s3://bucket/prefix on AWS, MinIO, Ceph or any
S3-compatible store, or gs://, az://, file://), `serve` copies the archive there after every export, under a
folder of its own (`source=NAME`, NAME being `archive_mirror_name`), so several aggregators can mirror into one
place. `RemoteArchive` reads every source of such a place as one archive, with the same `files`, `days`,
`sensors` and `reading` as a local `Archive`; the files it lists are paths on its `filesystem`, which
readers hand to pyarrow, and which Dask ships to its workers (fsspec filesystems pickle to their settings).

Objects are written whole (an object store shows an object complete or not at all), data files before the
list of sensors. A file the local archive no longer has (merged into a bigger one, or past retention) leaves
the store GRACE_S after the mirror first missed it, so a report that listed it a moment before still reads it;
until then a merged file shadows its parts exactly as it does on disk (`live_names`).
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from aggregator.archive import HOUR, PARTITION, SENSORS_FILE, TABLES, Archive, live_names
from ntds.errors import InputError

SOURCE = "source="
LISTING_S = 60.0
"""How long a reader reuses a table's listing (one report lists each table a few times)."""
GRACE_S = 900.0
"""Seconds a file the local archive dropped stays in the object store (a report longer than this that
listed it then fails on it, and says so; run it again)."""


def filesystem(url: str, options: dict | None = None):
    """(fsspec filesystem, path inside it) of an archive URL; InputError for a URL no installed fsspec backend
    opens. Listings are never cached: the mirror and other aggregators change them."""
    import fsspec.core

    try:
        fs, path = fsspec.core.url_to_fs(url, use_listings_cache=False, skip_instance_cache=True,
                                         **(options or {}))  # fmt: skip
    except (ImportError, ValueError, TypeError) as e:
        raise InputError(f"{url}: cannot open this archive location ({e})") from None
    return fs, path.rstrip("/")


class Mirror:
    """Copies one local archive to `URL/source=NAME/`: what is new or changed, and after GRACE_S removes
    what the archive no longer has."""

    def __init__(self, url: str, name: str, options: dict | None = None) -> None:
        self.fs, base = filesystem(url, options)
        self.base = f"{base}/{SOURCE}{name}"
        self.missing_since: dict[str, float] = {}

    def push(self, archive: Archive, now: float | None = None) -> tuple[int, int]:
        """One pass; returns (files copied, files removed). OSError (the store unreachable, a refusal) is the
        caller's to log: the next pass copies what this one did not."""
        now = time.time() if now is None else now
        with archive.reading():  # no merge swaps files while they are listed and copied
            local = dict(archive.live_files())
            remote = self._listing()
            copied = 0
            for rel, path in sorted(local.items()):
                if remote.get(rel) != path.stat().st_size:
                    self.fs.put_file(str(path), f"{self.base}/{rel}")
                    copied += 1
            sensors = archive.root / SENSORS_FILE
            if sensors.exists():  # after the data: a reader that sees a sensor named finds its rows
                self.fs.pipe_file(f"{self.base}/{SENSORS_FILE}", sensors.read_bytes())
        removed = 0
        for rel in sorted(set(remote) - set(local) - {SENSORS_FILE}):
            first = self.missing_since.setdefault(rel, now)
            if now - first >= GRACE_S:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(f"{self.base}/{rel}")
                self.missing_since.pop(rel, None)
                removed += 1
        for rel in set(self.missing_since) & set(local):  # back (a crash repeat rewrote it)
            self.missing_since.pop(rel)
        return copied, removed

    def _listing(self) -> dict[str, int]:
        """Every object under this source: path relative to it -> size."""
        try:
            found = self.fs.find(self.base, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.base.rstrip("/") + "/"
        return {k[len(prefix) :]: int(v.get("size") or 0) for k, v in found.items() if k.startswith(prefix)}


class RemoteArchive:
    """Every source of a mirrored archive, read as one archive (readers only: nothing writes here)."""

    def __init__(self, url: str, options: dict | None = None) -> None:
        self.root = url
        self.filesystem, self.base = filesystem(url, options)
        self._listings: dict[tuple[str, str], tuple[float, dict]] = {}
        if not self.sources():
            raise InputError(f"{url}: no mirrored archive there (no {SOURCE}NAME folder)")

    def sources(self) -> list[str]:
        cached = self._listings.get(("", ""))
        if cached is not None and time.monotonic() - cached[0] < LISTING_S:
            return cached[1]
        try:
            names = self.filesystem.ls(self.base, detail=False)
        except FileNotFoundError:
            names = []
        out = sorted(n.rstrip("/") for n in names if posixpath.basename(n.rstrip("/")).startswith(SOURCE))
        self._listings[("", "")] = (time.monotonic(), out)
        return out

    def reading(self):
        """Nothing to hold: a file leaves the store GRACE_S after the archive dropped it."""
        return contextlib.nullcontext()

    def files(self, table: str, first: date, last: date, sensors: Iterable[str] | None = None) -> list[str]:
        """As `Archive.files`, over every source."""
        from urllib.parse import quote

        wanted = {quote(s, safe="") for s in sensors} if sensors else None
        out: list[str] = []
        for source in self.sources():
            for (day, name), names in sorted(self._table(source, table).items()):
                if not first <= day <= last:
                    continue
                if name.startswith(PARTITION) and wanted is not None and name[len(PARTITION) :] not in wanted:
                    continue
                folder = f"{source}/{table}/day={day.isoformat()}/{name}"
                out += [f"{folder}/{n}" for n in live_names(names)[0]]
        return out

    def days(self, table: str) -> list[date]:
        """The days of `table` with a folder in any source."""
        return sorted({day for source in self.sources() for day, _ in self._table(source, table)})

    def sensors(self) -> list[str]:
        names: set[str] = set()
        for source in self.sources():
            with contextlib.suppress(FileNotFoundError, ValueError):
                noted = json.loads(self.filesystem.cat_file(f"{source}/{SENSORS_FILE}"))
                names |= {n for n in noted if isinstance(n, str)} if isinstance(noted, list) else set()
        return sorted(names)

    def _table(self, source: str, table: str) -> dict[tuple[date, str], list[str]]:
        """One source's files of one table, per (day, hour or sensor folder): one listing of the whole table
        (an object store lists a prefix in pages of a thousand), kept LISTING_S for the readers of one report."""
        if table not in TABLES:
            raise ValueError(f"no archive table {table!r}")
        key = (source, table)
        cached = self._listings.get(key)
        if cached is not None and time.monotonic() - cached[0] < LISTING_S:
            return cached[1]
        prefix = f"{source}/{table}/"
        try:
            found = self.filesystem.find(prefix)
        except FileNotFoundError:
            found = []
        out: dict[tuple[date, str], list[str]] = {}
        for path in found:
            parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
            if len(parts) != 3 or not parts[0].startswith("day="):
                continue
            try:
                day = date.fromisoformat(parts[0][4:])
            except ValueError:
                continue
            if parts[1].startswith((PARTITION, HOUR)):
                out.setdefault((day, parts[1]), []).append(parts[2])
        self._listings[key] = (time.monotonic(), out)
        return out


def open_archive(location: str | Path, options: dict | None = None) -> Archive | RemoteArchive:
    """A local archive folder, or a mirrored one at a URL (anything with "://", file:// included)."""
    if "://" in str(location):
        return RemoteArchive(str(location), options)
    return Archive(Path(location))
