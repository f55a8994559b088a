"""The store's hot window (store_days): archived messages leave the store after it, while reports and
learning, which read the archive, give the same numbers, and the alert manager keeps every alert not closed.
Nothing leaves the store before the archive and every reader of the store after a mark have it."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from aggregator import context
from aggregator.archive import CONSUMER_MARKS, Archive
from aggregator.baseline_learn import read_groups
from aggregator.broadcast import outbox
from aggregator.manager import Manager, QueueFilter
from aggregator.report.weekly import Week, compute
from aggregator.store import Store
from tests.week_scenario import WEEK, add_stats, build_archive

DAY = 86400
TODAY = date(2026, 11, 24)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The week's store and archive, built once (6 s); each test works on a copy."""
    folder = tmp_path_factory.mktemp("week")
    store, _, _ = build_archive(folder)
    store.close()
    return folder


@pytest.fixture
def site(built, tmp_path):
    def copy(_) -> tuple[Store, Archive]:
        shutil.copytree(built, tmp_path, dirs_exist_ok=True)
        return Store(tmp_path / "store.db"), Archive(tmp_path / "archive")

    return copy


def learned(archive: Archive) -> list:
    """What `baseline learn` reads of the week: every field of its groups, as plain lists."""
    groups, sensors = read_groups(archive, date(2026, 11, 16), date(2026, 11, 22), None)
    assert groups is not None and sensors == ["tap-stats"]
    return [(f.name, np.asarray(getattr(groups, f.name)).tolist()) for f in dataclasses.fields(groups)]


def ids(store: Store, where: str = "1") -> set[int]:
    return {i for (i,) in store.db.execute(f"SELECT id FROM messages WHERE {where}")}


def test_a_store_past_its_hot_window_serves_the_same_reports_learning_and_open_alerts(site, tmp_path):
    store, archive = site(tmp_path)
    add_stats(store, 12)
    archive.export(store, today=TODAY)
    alerts = sorted(ids(store, "type = 'alert'"))
    assert len(alerts) >= 6
    closed, acknowledged = alerts[: len(alerts) // 2], alerts[len(alerts) // 2 : len(alerts) // 2 + 2]
    store.db.executemany("UPDATE alerts SET status = 'closed' WHERE id = ?", [(i,) for i in closed])
    store.db.executemany("UPDATE alerts SET status = 'acknowledged' WHERE id = ?", [(i,) for i in acknowledged])
    store.db.execute("UPDATE messages SET received = received - 40 * ?", (DAY,))  # all arrived 40 days ago

    report = compute(archive, Week.parse(WEEK))
    groups = learned(archive)
    manager = Manager(store.db)
    queue = manager.alerts(QueueFilter(status="open", limit=10_000))
    everything = ids(store)
    newest = {i for (i,) in store.db.execute("SELECT MAX(id) FROM messages GROUP BY sensor, spool")}

    archive.export(store, today=TODAY, store_days=30)

    left = ids(store)
    assert left == (set(alerts) - set(closed)) | newest  # alerts not closed, and each spool's newest message
    assert len(left) < len(everything) / 5 and not ids(store, "type IN ('summary', 'stats')") - newest
    assert compute(archive, Week.parse(WEEK)) == report  # the archive still has every row
    assert learned(archive) == groups
    assert manager.alerts(QueueFilter(status="open", limit=10_000)) == queue  # the queue shows what it showed

    # inside the window nothing goes: a second export with a longer window deletes nothing more
    archive.export(store, today=TODAY, store_days=60)
    assert ids(store) == left


def test_nothing_leaves_the_store_before_the_archive_and_every_reader_have_it(site, tmp_path):
    store, archive = site(tmp_path)
    store.db.execute("UPDATE messages SET received = received - 40 * ?", (DAY,))
    everything = sorted(ids(store))
    quarter, middle = everything[len(everything) // 4], everything[len(everything) // 2]

    # archived, but the outbox has routed only up to a quarter: nothing past it goes
    store.set_state(outbox.ROUTED, quarter)
    archive.export(store, today=TODAY, store_days=30)
    assert {i for i in everything if i > quarter} <= ids(store)
    assert not ids(store, f"id <= {quarter} AND type != 'alert'") - _newest(store)

    # the outbox has routed everything, the archive has only up to the middle: nothing past it goes
    store.set_state(outbox.ROUTED, everything[-1])
    Archive._cool(store, 30, middle, None)
    assert {i for i in everything if i > middle} <= ids(store)
    assert not ids(store, f"id <= {middle} AND type != 'alert'") - _newest(store)


def _newest(store: Store) -> set[int]:
    return {i for (i,) in store.db.execute("SELECT MAX(id) FROM messages GROUP BY sensor, spool")}


def test_the_marks_the_hot_window_waits_for_are_the_readers_own():
    assert set(CONSUMER_MARKS) == {outbox.ROUTED, context.MARK, context.ALERT_MARK}


def test_alerts_a_notification_waits_for_stay(site, tmp_path):
    store, archive = site(tmp_path)
    store.db.executescript(outbox.SCHEMA)  # the outbox's tables, as serve makes them
    alert = min(ids(store, "type = 'alert'"))
    store.db.execute("UPDATE alerts SET status = 'closed'")
    store.db.execute("INSERT INTO notify_pending VALUES (1, ?)", (alert,))
    store.db.execute("UPDATE messages SET received = received - 40 * ?", (DAY,))
    archive.export(store, today=TODAY, store_days=30)
    assert alert in ids(store)
    with sqlite3.connect(tmp_path / "store.db") as db:  # and the store is a store another process can read
        assert db.execute("SELECT COUNT(*) FROM alerts WHERE id = ?", (alert,)).fetchone()[0] == 1
