"""The Parquet archive: idempotent export, crash repeat, merges that never show a row twice or pull a file
from under a reader, retention, and a real `serve` process archiving while a report reads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
from test_transport import Site, run, wait

from aggregator import archive as archive_mod
from aggregator.archive import STATE_KEY, TABLES, Archive
from aggregator.store import Store
from ntds.wire import schema as wire

TODAY = date(2026, 11, 23)


def summary(minute: int, flows: int) -> dict:
    body = json.loads(json.dumps(wire.EXAMPLES["summary"]))
    body["interval_start"] = f"2026-11-23T{minute // 60:02d}:{minute % 60:02d}:00Z"
    body["flows"] = flows
    return body


def fill(store: Store, sensor: str, first_seq: int, n: int, minute0: int = 0) -> list[int]:
    flows = [first_seq + i for i in range(n)]
    store.store(
        [
            wire.decode(
                wire.encode(wire.Message("summary", sensor, first_seq + i, wire.now_iso(), summary(minute0 + i, f)))
            )
            for i, f in enumerate(flows)
        ]
    )
    return flows


def rows(archive: Archive, table: str, day: date = TODAY) -> list[dict]:
    out = []
    for f in archive.files(table, day, day):
        out += pq.read_table(f, schema=TABLES[table]).to_pylist()
    return out


def test_export_is_idempotent_and_a_crash_repeat_rewrites_the_same_files(tmp_path):
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    flows = fill(store, "tap-1", 1, 5)
    assert archive.export(store, today=TODAY) == 5
    assert archive.export(store, today=TODAY) == 0
    before = sorted(p.relative_to(archive.root) for p in archive.root.rglob("*.parquet"))
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == flows
    # A crash after the files were written but before the high-water mark moved: the batch repeats.
    store.set_state(STATE_KEY, 0)
    assert archive.export(store, today=TODAY) == 5
    assert sorted(p.relative_to(archive.root) for p in archive.root.rglob("*.parquet")) == before
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == flows
    # Every nested table got its rows: 4 traffic classes, 3 applications, 3 unanswered kinds per summary.
    assert len(rows(archive, "traffic")) == 20 and len(rows(archive, "applications")) == 15
    assert {r["class"] for r in rows(archive, "traffic")} == {"external", "local_service", "peer_to_peer", "other"}
    assert not list(archive.root.rglob(".*.tmp"))


def test_merge_keeps_rows_once_and_waits_for_readers(tmp_path):
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    flows = []
    for k in range(archive_mod.MERGE_AT - 1):
        flows += fill(store, "tap-1", 1 + 3 * k, 3, minute0=3 * k)
        archive.export(store, today=TODAY)
    with archive.reading():  # a report lists the files and reads them ...
        listed = archive.files("summaries", TODAY, TODAY)
        assert len(listed) == archive_mod.MERGE_AT - 1
        flows += fill(store, "tap-1", 100, 3, minute0=50)
        exporter = threading.Thread(target=archive.export, args=(store,), kwargs={"today": TODAY})
        exporter.start()  # ... while an export that would merge them waits for the report to finish
        time.sleep(0.3)
        assert exporter.is_alive()
        read = [r["flows"] for f in listed for r in pq.read_table(f).to_pylist()]
        assert len(read) == 3 * (archive_mod.MERGE_AT - 1)
    exporter.join(10)
    live = archive.files("summaries", TODAY, TODAY)
    assert len(live) == 1 and os.path.basename(live[0]).startswith("c-")
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == sorted(flows)
    assert not [p for p in archive.root.rglob("part-*.parquet") if "summaries" in p.parts]


def test_archive_reads_the_same_in_pandas_pyarrow_and_duckdb_at_any_moment(tmp_path):
    """Hive-partitioned reads of the folder as it is: no column clash, and no row twice, even while
    exports merge files underneath (the merge swaps folders atomically)."""
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    folder = str(archive.root / "summaries")
    fill(store, "tap/2", 1, 3)
    archive.export(store, today=TODAY)
    total, stop, seen = 3, threading.Event(), []

    def read_forever():
        while not stop.is_set():
            try:
                seen.append(len(ds.dataset(folder, format="parquet", partitioning="hive").to_table()))
            except FileNotFoundError:
                seen.append(None)  # listed, then swapped away: the reader retries, it never miscounts

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for k in range(3 * archive_mod.MERGE_AT):  # several merges happen while the reader reads
            fill(store, "tap/2", 10 + k, 1, minute0=10 + k)
            archive.export(store, today=TODAY)
            total += 1
    finally:
        stop.set()
        reader.join()
    counts = [n for n in seen if n is not None]
    assert counts and max(counts) <= total and min(counts) >= 3  # never a row twice
    frame = pd.read_parquet(folder)
    assert len(frame) == total and set(frame["sensor"]) == {"tap/2"}
    assert {int(h) for h in frame["hour"]} == {0} and {str(d) for d in frame["day"]} == {"2026-11-23"}
    query = f"SELECT COUNT(*) FROM read_parquet('{folder}/**/*.parquet', hive_partitioning=true)"
    assert duckdb.sql(query).fetchall()[0][0] == total
    table = ds.dataset(folder, format="parquet", partitioning="hive").to_table()
    assert len(table) == total
    assert sorted(table.column("flows").to_pylist()) == sorted(r["flows"] for r in rows(archive, "summaries"))


def test_finished_hours_are_merged_to_one_file_whatever_the_number_of_sensors(tmp_path):
    """Files per day are bounded by tables x hours, not by the fleet: 20 sensors' rows of one hour end in one
    file, a reader of some sensors keeps their rows only, and the archive still knows every sensor."""
    from aggregator.archive import only

    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    fill(store, "tap-1", 1, 2)
    archive.export(store, today=TODAY)
    fill(store, "tap-1", 3, 2, minute0=10)
    for k in range(19):
        fill(store, f"tap/{k}", 1, 2, minute0=5)  # ids that need quoting in a folder name, once
    fill(store, "tap-1", 5, 1, minute0=70)  # the next hour
    archive.export(store, today=date(2026, 11, 24))
    files = archive.files("summaries", TODAY, TODAY)
    assert len(files) == 2 and sorted(Path(f).parent.name for f in files) == ["hour=00", "hour=01"]
    assert len(rows(archive, "summaries")) == 5 + 19 * 2
    mine = [r for f in archive.files("summaries", TODAY, TODAY, ["tap-1"])
            for r in only(pq.read_table(f, schema=TABLES["summaries"]), ["tap-1"]).to_pylist()]  # fmt: skip
    assert sorted(r["flows"] for r in mine) == [1, 2, 3, 4, 5]
    assert archive.sensors() == sorted(["tap-1", *(f"tap/{k}" for k in range(19))])


def test_an_archive_written_before_the_hour_layout_is_still_read_merged_and_listed(tmp_path):
    """Per-sensor folders of 0.2 archives (sensor_id=ID) stay readable beside the new hour folders."""
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    fill(store, "tap-1", 1, 3)
    archive.export(store, today=TODAY)
    old = archive.root / "summaries" / "day=2026-11-23" / "sensor_id=tap-old"
    old.mkdir(parents=True)
    for f in (archive.root / "summaries" / "day=2026-11-23" / "hour=00").glob("*.parquet"):
        shutil.copy(f, old / f.name)
    assert len(rows(archive, "summaries")) == 6
    assert len(archive.files("summaries", TODAY, TODAY, ["tap-old"])) == 2  # its folder, and the shared hour
    assert "tap-old" in archive.sensors() and "tap-1" in archive.sensors()


def test_retention_counts_from_arrival_not_from_the_data_time(tmp_path):
    """An old capture replayed today (data from 2019) is kept for retention_days from its arrival."""
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    body = summary(0, 7)
    body["interval_start"] = "2019-03-01T10:00:00Z"
    store.store([wire.decode(wire.encode(wire.Message("summary", "tap-1", 1, wire.now_iso(), body, "s1")))])
    fill(store, "tap-1", 2, 3)
    archive.export(store, retention_days=30)
    assert len(rows(archive, "summaries", date(2019, 3, 1))) == 1 and store.count() == 4
    # 40 days later (files and stored messages aged by hand): everything has passed retention
    store.db.execute("UPDATE messages SET received = received - 40 * 86400")
    for f in archive.root.rglob("*.parquet"):
        os.utime(f, (f.stat().st_atime - 40 * 86400, f.stat().st_mtime - 40 * 86400))
    fill(store, "tap-1", 10, 1, minute0=30)  # a new message arrives: kept, archive and store
    archive.export(store, retention_days=30)
    assert rows(archive, "summaries", date(2019, 3, 1)) == []
    assert [r["seq"] for r in rows(archive, "summaries")] == [10] and store.count() == 1
    archive.export(store, retention_days=0)  # 0 keeps everything
    assert store.count() == 1


def test_an_archive_deleted_while_serving_is_exported_again(tmp_path):
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    flows = fill(store, "tap-1", 1, 4)
    archive.export(store, today=TODAY)
    shutil.rmtree(archive.root)
    flows += fill(store, "tap-1", 5, 2, minute0=10)
    assert archive.export(store, today=TODAY) == 6  # everything the store holds, not just the 2 new
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == sorted(flows)
    # an archive folder replaced by another one (its own id): the old tables are moved aside, not doubled
    (archive.root / ".archive-id").write_text("someone-elses\n")
    assert archive.export(store, today=TODAY) == 6
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == sorted(flows)
    assert list(archive.root.glob(".replaced-*-summaries"))


def test_serve_archives_while_running_and_at_shutdown(tmp_path):
    """A real serve process with a real sensor: the archive fills while serve runs, a report reads it
    meanwhile, and SIGTERM leaves every stored message archived."""
    s = Site(tmp_path)
    try:
        s.config.write_text(s.config.read_text() + "archive: archive\narchive_interval_s: 1\n")
        agg = s.aggregator()
        pub = s.replay(_sample())
        assert pub.wait(180) == 0, pub.stderr.read()
        db = tmp_path / "store.db"
        summaries = _count(db, "SELECT COUNT(*) FROM messages WHERE type='summary'")
        assert summaries > 0
        wait(lambda: _archived(tmp_path / "archive") >= summaries, 30, "the archive to catch up")
        out = tmp_path / "report"
        r = run("ntds-aggregator", "report", "weekly", "--week", "2026-W47", "-o", out, "--config", s.config)
        assert r.returncode == 0, r.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["overview"]["totals"]["flows"] == _count(
            db, "SELECT SUM(json_extract(body, '$.flows')) FROM messages WHERE type='summary'"
        )
        agg.send_signal(signal.SIGTERM)
        assert agg.wait(60) == 0
        assert _count(db, "SELECT value FROM state WHERE key='archived_id'") == _count(
            db, "SELECT MAX(id) FROM messages"
        )
    finally:
        s.stop()


def test_serve_stops_within_its_shutdown_export_and_the_next_start_archives_the_rest(tmp_path):
    """A backlog the final export may not finish: serve stops at once (shutdown_export_s: 0), says what it left,
    and the next start exports all of it, once."""
    s = Site(tmp_path)
    try:
        store = Store(s.store)
        flows = fill(store, "tap-1", 1, 1400)  # a minute each: one day
        store.close()
        s.config.write_text(s.config.read_text() + "archive: archive\narchive_interval_s: 3600\nshutdown_export_s: 0\n")
        agg = s.aggregator()
        t = time.monotonic()
        agg.send_signal(signal.SIGTERM)
        assert agg.wait(60) == 0
        assert time.monotonic() - t < 10
        log = (tmp_path / "aggregator.log").read_text()
        assert "1400 stored messages not archived yet: they go out at the next start" in log, log
        s.config.write_text(s.config.read_text().replace("archive_interval_s: 3600", "archive_interval_s: 1"))
        agg = s.aggregator()
        wait(lambda: _archived(tmp_path / "archive") >= len(flows), 60, "the next start's export")
        agg.send_signal(signal.SIGTERM)
        assert agg.wait(60) == 0
        assert sorted(r["flows"] for r in rows(Archive(tmp_path / "archive"), "summaries")) == flows
    finally:
        s.stop()


def _sample():
    from conftest import FIXTURES

    return FIXTURES.parent / "sample.pcap"


def _archived(root) -> int:
    return sum(
        pq.read_metadata(f).num_rows for f in Archive(root).files("summaries", date(2026, 1, 1), date(2027, 1, 1))
    )


def _count(db, sql) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
        return c.execute(sql).fetchone()[0] or 0


def test_many_exports_and_merges_never_lose_or_double_a_row(tmp_path, monkeypatch):
    """Random export sizes across tiers of merges (small MERGE_AT and MERGE_ROWS so every path runs), then the
    day finishes: after every export the archive holds exactly the stored rows."""
    import random

    monkeypatch.setattr(archive_mod, "MERGE_AT", 3)
    monkeypatch.setattr(archive_mod, "MERGE_ROWS", 40)
    rng = random.Random(7)
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    seq = {"tap-1": 1, "tap-2": 1}
    for _ in range(60):
        sensor = rng.choice(sorted(seq))
        n = rng.randint(1, 25)
        fill(store, sensor, seq[sensor], n, minute0=seq[sensor] % 1400)
        seq[sensor] += n
        archive.export(store, today=TODAY)
        got = sorted((r["sensor"], r["seq"]) for r in rows(archive, "summaries"))
        assert got == sorted((s, q) for s, last in seq.items() for q in range(1, last))
    archive.export(store, today=date(2026, 11, 25))  # the day is over: small files merged as far as allowed
    got = sorted((r["sensor"], r["seq"]) for r in rows(archive, "summaries"))
    assert got == sorted((s, q) for s, last in seq.items() for q in range(1, last))
    assert len(archive.files("summaries", TODAY, TODAY)) < 2 * sum(seq.values()) // 40 + 4


def test_an_export_told_to_stop_ends_after_its_batch_and_the_next_takes_the_rest(tmp_path, monkeypatch):
    """Shutdown waits for one batch, not a backlog: the high-water mark says how far it got, and nothing is lost
    or doubled when the next export (the next start) takes the rest."""
    monkeypatch.setattr(archive_mod, "BATCH", 10)
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    flows = fill(store, "tap-1", 1, 35)
    asked = []
    assert archive.export(store, today=TODAY, stop=lambda: asked.append(1) or len(asked) > 1) == 10
    assert store.state(STATE_KEY) == 10 and store.count_after(10) == 25
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == flows[:10]
    assert archive.export(store, today=TODAY) == 25
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == flows
