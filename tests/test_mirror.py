"""The archive in an S3-compatible object store: a real one (moto's server, started on 127.0.0.1), written by
`Mirror` as `serve` does and read back by `RemoteArchive` as reports, learning and Dask workers do. The
numbers must be those of the local archive; two aggregators mirroring into one place read as one archive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aggregator.archive import Archive
from aggregator.baseline_learn import read_groups
from aggregator.mirror import GRACE_S, Mirror, RemoteArchive, open_archive
from aggregator.report.weekly import Week, compute
from aggregator.store import Store
from ntds.errors import InputError
from ntds.wire import schema as wire
from tests.week_scenario import WEEK, add_stats

BIN = Path(sys.executable).parent
BUCKET = "ntds-archive"
TODAY = date(2026, 11, 24)
KEYS = {"key": "ntds-test", "secret": "ntds-test-secret"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on loopback, a bucket in it, and the options that reach it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEYS["key"], "AWS_SECRET_ACCESS_KEY": KEYS["secret"]}
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)  # noqa: S310 - loopback only
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    options = {"endpoint_url": endpoint, **KEYS}
    from aggregator.mirror import filesystem

    fs, _ = filesystem(f"s3://{BUCKET}", options)
    fs.mkdir(BUCKET)
    yield options
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Four sensors, six hours of summaries, alerts and statistics: quick to read through the object store."""
    folder = tmp_path_factory.mktemp("small")
    store = Store(folder / "store.db")
    messages = []
    for k, sensor in enumerate(("tap-a", "tap-b", "tap-c", "tap-d")):
        for i in range(12):
            summary = json.loads(json.dumps(wire.EXAMPLES["summary"]))
            summary["interval_start"] = f"2026-11-{17 + k % 2}T{i // 2:02d}:{30 * (i % 2):02d}:00Z"
            summary["flows"] = 10 * k + i
            alert = dict(wire.EXAMPLES["alert"], first_seen=f"2026-11-18T0{i % 6}:00:00Z",
                         last_seen=f"2026-11-18T0{i % 6}:01:00Z", src_ip=f"10.1.{k}.{i}")  # fmt: skip
            for kind, body in (("summary", summary), ("alert", alert)):
                m = wire.Message(kind, sensor, len(messages) + 1, wire.now_iso(), body)
                messages.append(wire.decode(wire.encode(m)))
    store.store(messages)
    add_stats(store, 6)
    Archive(folder / "archive").export(store, today=TODAY)
    store.close()
    return folder


def learned(archive) -> list:
    groups, sensors = read_groups(archive, date(2026, 11, 16), date(2026, 11, 22), None)
    return [sensors, [(k, v.tolist()) for k, v in vars(groups).items()]]


def test_a_mirrored_archive_reads_as_the_local_one(s3, small):
    archive = Archive(small / "archive")
    mirror = Mirror(f"s3://{BUCKET}/one", "agg-1", s3)
    copied, removed = mirror.push(archive)
    assert copied == len(list(archive.live_files())) > 10 and removed == 0
    assert mirror.push(archive) == (0, 0)  # nothing changed, nothing copied

    remote = open_archive(f"s3://{BUCKET}/one", s3)
    assert isinstance(remote, RemoteArchive)
    assert remote.sensors() == archive.sensors()
    assert remote.days("summaries") == archive.days("summaries")
    local = compute(archive, Week.parse(WEEK))
    assert local["overview"]["totals"]["flows"] > 0 and local["alerts"]["alerts_per_tier"][3] > 0
    assert compute(remote, Week.parse(WEEK)) == local
    assert learned(remote) == learned(archive)


def rows(archive, table: str) -> list:
    """Every row of a table in the week, in a fixed order, as the readers see them."""
    from aggregator.archive import TABLES

    files = archive.files(table, date(2026, 11, 16), date(2026, 11, 22))
    frames = [pq.read_table(f, schema=TABLES[table], filesystem=archive.filesystem).to_pylist() for f in files]
    return sorted((r for f in frames for r in f), key=repr)


def test_dask_workers_in_other_processes_read_the_mirror(s3, small):
    from distributed import Client, LocalCluster

    from aggregator.report.query import Query

    archive = Archive(small / "archive")
    Mirror(f"s3://{BUCKET}/dask", "agg-1", s3).push(archive)
    remote = RemoteArchive(f"s3://{BUCKET}/dask", s3)
    local = {t: Query(archive, Week.parse(WEEK)).frame(t).compute() for t in ("summaries", "alerts")}
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster):  # the worker is another process: it gets the filesystem by pickle
        for table, frame in local.items():
            got = Query(remote, Week.parse(WEEK)).frame(table).compute()
            assert len(got) == len(frame) > 0
            assert sorted(map(repr, got.to_dict("records"))) == sorted(map(repr, frame.to_dict("records")))


def split_store(source: Path, folder: Path, sensors: list[str]) -> Archive:
    """An aggregator that received only these sensors: its own store and archive."""
    whole = Store(source / "store.db")
    marks = ",".join("?" * len(sensors))
    found = whole.db.execute(
        f"SELECT type, sensor, seq, created, body, spool FROM messages WHERE sensor IN ({marks}) ORDER BY id", sensors
    ).fetchall()
    whole.close()
    folder.mkdir(parents=True, exist_ok=True)
    store = Store(folder / "store.db")
    store.store([wire.Message(t, s, q, c, json.loads(b), sp) for t, s, q, c, b, sp in found])
    archive = Archive(folder / "archive")
    archive.export(store, today=TODAY)
    store.close()
    return archive


def test_two_aggregators_mirroring_to_one_place_read_as_one_archive(s3, small, tmp_path):
    whole = Archive(small / "archive")
    sensors = whole.sensors()
    first = split_store(small, tmp_path / "a", sensors[:2])
    second = split_store(small, tmp_path / "b", sensors[2:])
    Mirror(f"s3://{BUCKET}/fleet", "agg-a", s3).push(first)
    Mirror(f"s3://{BUCKET}/fleet", "agg-b", s3).push(second)
    remote = RemoteArchive(f"s3://{BUCKET}/fleet", s3)
    assert [s.rsplit("/", 1)[1] for s in remote.sources()] == ["source=agg-a", "source=agg-b"]
    assert remote.sensors() == sensors
    for table in ("summaries", "alerts", "population_samples"):
        assert rows(remote, table) == rows(whole, table)
    assert compute(remote, Week.parse(WEEK)) == compute(whole, Week.parse(WEEK))


def test_files_the_archive_dropped_leave_the_mirror_after_the_grace(s3, small, tmp_path):
    shutil.copytree(small / "archive", tmp_path / "archive")
    archive = Archive(tmp_path / "archive")
    mirror = Mirror(f"s3://{BUCKET}/grace", "agg-1", s3)
    mirror.push(archive, now=1000.0)
    remote = RemoteArchive(f"s3://{BUCKET}/grace", s3)
    before = rows(remote, "summaries")
    victim = Path(archive.files("summaries", date(2026, 11, 16), date(2026, 11, 22))[0])
    victim.unlink()  # as a merge or retention would
    assert mirror.push(archive, now=1001.0) == (0, 0)  # still there for a report that listed it
    assert mirror.push(archive, now=1000.0 + GRACE_S + 1) == (0, 1)
    remote = RemoteArchive(f"s3://{BUCKET}/grace", s3)  # a new reader: no listing kept from before
    after = rows(remote, "summaries")
    assert after == rows(archive, "summaries") and len(after) < len(before)


def test_a_location_that_is_no_archive_is_one_clear_error(s3):
    with pytest.raises(InputError, match="no mirrored archive there"):
        RemoteArchive(f"s3://{BUCKET}/nothing-here", s3)
    with pytest.raises(InputError, match="cannot open this archive location"):
        open_archive("nosuchprotocol://x/y")


def test_report_and_learn_read_a_mirror_from_the_command_line(s3, small, tmp_path):
    archive = Archive(small / "archive")
    Mirror(f"s3://{BUCKET}/cli", "agg-1", s3).push(archive)
    shutil.copy(small / "store.db", tmp_path / "store.db")  # this aggregator's own store (news, promotions)
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        f"store: {tmp_path / 'store.db'}\narchive: {tmp_path / 'archive'}\narchive_mirror_options: {json.dumps(s3)}\n"
    )
    agg = str(BIN / "ntds-aggregator")
    out = tmp_path / "report"
    run = subprocess.run([agg, "report", "weekly", "--config", str(config), "--week", WEEK, "-o", str(out),
                          "--archive", f"s3://{BUCKET}/cli"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    local = compute(archive, Week.parse(WEEK))
    got = json.loads((out / "report.json").read_text())
    assert got["overview"]["totals"] == json.loads(json.dumps(local["overview"]["totals"]))
    assert got["overview"]["totals"]["flows"] > 0
    learn = subprocess.run([agg, "baseline", "learn", "--config", str(config), "-o", str(tmp_path / "cand.json"),
                            "--weeks", "1", "--until", "2026-11-22", "--archive", f"s3://{BUCKET}/cli", "--json"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    # the example statistics carry empty histograms: learning refuses them in one line, having read them
    assert learn.returncode != 0 and "Traceback" not in learn.stderr, learn.stderr
    assert "cannot learn from these statistics" in learn.stderr and len(learn.stderr.strip().splitlines()) == 1
    bad = subprocess.run([agg, "report", "weekly", "--config", str(config), "--week", WEEK, "-o", str(out),
                          "--archive", f"s3://{BUCKET}/none"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
