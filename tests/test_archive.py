"""The Parquet archive: idempotent export, crash repeat, merges that never show a row twice or pull a file
from under a reader, retention, and a real `serve` process archiving while a report reads."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from datetime import date

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


def test_merge_keeps_rows_once_and_listed_files_readable(tmp_path, monkeypatch):
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    flows = []
    for k in range(archive_mod.MERGE_AT - 1):
        flows += fill(store, "tap-1", 1 + 3 * k, 3, minute0=3 * k)
        archive.export(store, today=TODAY)
    listed = archive.files("summaries", TODAY, TODAY)  # a report lists the files ...
    assert len(listed) == archive_mod.MERGE_AT - 1
    flows += fill(store, "tap-1", 100, 3, minute0=50)
    archive.export(store, today=TODAY)  # ... the export merges them ...
    live = archive.files("summaries", TODAY, TODAY)
    assert len(live) == 1 and os.path.basename(live[0]).startswith("c-")
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == sorted(flows)
    read_late = [r["flows"] for f in listed for r in pq.read_table(f).to_pylist()]  # ... and it still reads them
    assert len(read_late) == 3 * (archive_mod.MERGE_AT - 1)
    # Shadowed parts go once the grace time has passed.
    monkeypatch.setattr(archive_mod, "KEEP_SHADOWED_S", 0)
    time.sleep(0.01)
    archive.export(store, today=TODAY)
    assert not any(os.path.exists(f) for f in listed)
    assert sorted(r["flows"] for r in rows(archive, "summaries")) == sorted(flows)


def test_finished_days_are_merged_to_one_file_per_sensor(tmp_path):
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    fill(store, "tap-1", 1, 2)
    archive.export(store, today=TODAY)
    fill(store, "tap-1", 3, 2, minute0=10)
    fill(store, "tap/2", 1, 2)  # an id that needs quoting in a folder name
    archive.export(store, today=date(2026, 11, 24))
    assert len(archive.files("summaries", TODAY, TODAY, ["tap-1"])) == 1
    assert [r["sensor"] for r in rows(archive, "summaries") if r["sensor"] != "tap-1"] == ["tap/2", "tap/2"]
    assert archive.sensors() == ["tap-1", "tap/2"]


def test_retention_deletes_old_days_and_old_stored_messages(tmp_path):
    store, archive = Store(tmp_path / "s.db"), Archive(tmp_path / "a")
    fill(store, "tap-1", 1, 3)
    archive.export(store, retention_days=0, today=date(2027, 6, 1))  # 0: keep everything
    assert len(rows(archive, "summaries")) == 3 and store.count() == 3
    store.db.execute("UPDATE messages SET received = received - 40 * 86400")
    archive.export(store, retention_days=30, today=date(2027, 6, 1))
    assert rows(archive, "summaries") == [] and store.count() == 0
    fill(store, "tap-1", 4, 1)  # newer messages are kept
    archive.export(store, retention_days=30, today=TODAY)
    assert len(rows(archive, "summaries")) == 1 and store.count() == 1


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
