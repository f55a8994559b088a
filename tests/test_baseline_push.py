"""Baselines promoted on the aggregator, signed, pushed over the ZeroMQ link, and checked by the sensor.

End to end with a real `serve` (CURVE) and real `ntds-sensor replay` processes on 127.0.0.1; the pieces
(assembly, signature, profile, truncation) also in-process on real encoded messages."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from aggregator.baselines import REREAD_S
from ntds.wire import schema as wire
from ntds.wire import signing
from sensor.baseline_updates import PUSHED, BaselineUpdates, Refused
from tests.conftest import ROOT
from tests.test_transport import Site, run

BASELINE = ROOT / "config" / "baseline.json"


def variant(path: Path, built: str, profile: str | None = None) -> Path:
    """The starter baseline under another build time (so another id), optionally claiming another profile."""
    doc = json.loads(BASELINE.read_text())
    doc["built"] = built
    if profile:
        doc["feature_profile"] = profile
    path.write_text(json.dumps(doc))
    return path


def baseline_ids(store: Path, kind: str) -> list[str]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT body FROM messages WHERE type = ? ORDER BY id", (kind,)).fetchall()
    return [json.loads(b)["baseline_id"] for (b,) in rows]


class PushSite(Site):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        run("ntds-aggregator", "baseline", "keygen", "--out", root / "sign", check=True)
        with self.config.open("a") as fh:
            fh.write("baseline_signing_key: sign/baseline-signing.key\narchive: archive\n")

    def sensor_config(self, key: str = "tap", spool: str = "spool") -> Path:
        path = super().sensor_config(key, spool)
        with path.open("a") as fh:
            fh.write(f"baseline_key: {json.dumps(str(self.root / 'sign' / 'baseline-signing.pub'))}\n")
            fh.write("health_interval_s: 1\n")
        return path

    def promote(self, path: Path, note: str = "") -> subprocess.CompletedProcess:
        return run("ntds-aggregator", "baseline", "promote", path, "--note", note, "--config", self.config)

    def replay_realtime(self, capture: Path, spool: str = "spool") -> subprocess.Popen:
        return self.replay(capture, "tap", spool, 60, "--pace", "realtime")


@pytest.fixture
def push_site(tmp_path):
    s = PushSite(tmp_path)
    yield s
    s.stop()


def test_promoted_baseline_reaches_the_sensor_and_judges_what_follows(push_site, tmp_path):
    site = push_site
    old_id = json.loads(BASELINE.read_text())["built"]
    site.aggregator()
    # week 1 with the configured baseline
    first = site.replay(site.flows(5))
    assert first.wait(120) == 0, first.stderr.read()
    assert {i.split()[0] for i in baseline_ids(site.store, "alert")} == {old_id}
    # a new version, promoted: listed, signed, active
    cand = variant(tmp_path / "cand.json", "2026-11-24T01:00:00Z")
    p = site.promote(cand, "learned from week 1")
    assert p.returncode == 0, p.stderr
    listed = run("ntds-aggregator", "baseline", "versions", "--json", "--config", site.config).stdout.splitlines()
    (v1,) = [json.loads(x) for x in listed]
    assert v1["active"] and v1["note"] == "learned from week 1" and v1["baseline_id"].startswith("2026-11-24T01")
    # the running sensor is told at its next hello or health, verifies, swaps, and says so
    sensor = site.replay_realtime(site.flows(8))
    assert sensor.wait(120) == 0
    log = sensor.stderr.read()
    assert "activated baseline 2026-11-24T01:00:00Z" in log, log
    assert (tmp_path / "spool" / PUSHED).exists()
    assert baseline_ids(site.store, "hello")[-1].startswith("2026-11-24T01")
    assert baseline_ids(site.store, "health")[-1].startswith("2026-11-24T01")
    # week 2: every alert carries the new id (the pushed baseline outlives the restart)
    before = len(baseline_ids(site.store, "alert"))
    second = site.replay(site.flows(6))
    assert second.wait(120) == 0, second.stderr.read()
    week2 = baseline_ids(site.store, "alert")[before:]
    assert len(week2) == 6 and all(i.startswith("2026-11-24T01") for i in week2), week2
    # the weekly report says which baseline judged the sensor's alerts, when, and why it was promoted
    out = tmp_path / "report"
    p = run("ntds-aggregator", "report", "weekly", "--week", "2026-W47", "-o", out, "--config", site.config)
    assert p.returncode == 0, p.stderr
    used = json.loads((out / "report.json").read_text())["overview"]["baselines"]
    counted: dict[str, int] = {}
    for i in baseline_ids(site.store, "alert"):
        counted[i] = counted.get(i, 0) + 1
    assert {u["baseline_id"]: u["alerts"] for u in used} == counted
    (new,) = [u for u in used if u["baseline_id"].startswith("2026-11-24T01")]
    assert new["version"] == 1 and new["note"] == "learned from week 1"
    assert "learned from week 1" in (out / "report.html").read_text()
    # (the sensor above was not running at the promotion either: it got the baseline when it connected, as
    # tests/test_learning.py's sensor gets a learned one)


def test_tampered_or_other_profile_baselines_are_refused_and_the_old_one_kept(push_site, tmp_path):
    site = push_site
    good = variant(tmp_path / "good.json", "2026-11-24T02:00:00Z")
    assert site.promote(good).returncode == 0
    agg = site.aggregator()
    s = site.replay_realtime(site.flows(3))
    assert s.wait(120) == 0 and "activated baseline 2026-11-24T02" in s.stderr.read()
    agg.terminate()
    agg.wait(30)
    # someone with write access to the store makes another file active under the good one's signature
    evil = variant(tmp_path / "evil.json", "2026-11-24T03:00:00Z").read_bytes()
    forged = signing.Grant(2, 2, hashlib.sha256(evil).hexdigest(), "2026-11-24T03:00:00Z robust").text()
    with sqlite3.connect(site.store) as db:
        db.execute("UPDATE baselines SET active = 0")
        db.execute("INSERT INTO baselines (baseline_id, sha256, content, signature, feature_profile, method, entries, "
                   "inputs, checks, note, promoted, promoted_by, active, serial, grant_text, grant_signature) SELECT "
                   "'2026-11-24T03:00:00Z robust', sha256, ?, signature, feature_profile, method, entries, inputs, "
                   "checks, 'evil', promoted, 'mallory', 1, 2, ?, grant_signature FROM baselines WHERE version = 1",
                   (evil, forged))  # fmt: skip
    site.aggregator()
    s = site.replay_realtime(site.flows(4))
    assert s.wait(120) == 0
    log = s.stderr.read()
    assert "refused the baseline the aggregator pushed" in log and "signature does not match" in log, log
    assert "Traceback" not in log
    assert all(i.startswith("2026-11-24T02") for i in baseline_ids(site.store, "alert")[-4:])
    refused = [json.loads(b) for (b,) in sqlite3.connect(site.store).execute(
        "SELECT body FROM messages WHERE type = 'health' ORDER BY id DESC LIMIT 1")]  # fmt: skip
    assert refused[0]["baselines_refused"] >= 1 and refused[0]["baseline_id"].startswith("2026-11-24T02")
    # properly signed, but for the other feature profile: refused by the sensor too
    with sqlite3.connect(site.store) as db:
        db.execute("DELETE FROM baselines WHERE baseline_id LIKE '2026-11-24T03%'")
    other = variant(tmp_path / "other.json", "2026-11-24T04:00:00Z", profile="corrected")
    assert site.promote(other).returncode == 0
    time.sleep(2 * REREAD_S)  # the pusher looks for a new active version every REREAD_S
    s = site.replay_realtime(site.flows(3), spool="spool")
    assert s.wait(120) == 0
    log = s.stderr.read()
    assert "feature profile 'corrected'" in log, log
    # and rollback makes the earlier version active again
    p = run("ntds-aggregator", "baseline", "rollback", "--config", site.config)
    assert p.returncode == 0 and "is active again" in p.stderr
    listed = [json.loads(x) for x in run("ntds-aggregator", "baseline", "versions", "--json", "--config",
                                         site.config).stdout.splitlines()]  # fmt: skip
    assert [v["baseline_id"][:16] for v in listed if v["active"]] == ["2026-11-24T02:00"]


def test_promote_refuses_bad_files_and_keys_in_one_line(push_site, tmp_path):
    site = push_site
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "ntds-baseline", "version": 2, "applications": ')
    p = site.promote(bad)
    assert p.returncode != 0 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "bad.json" in p.stderr
    (tmp_path / "sign" / "baseline-signing.key").chmod(0o644)
    p = site.promote(variant(tmp_path / "ok.json", "2026-11-24T05:00:00Z"))
    assert p.returncode != 0 and "readable by others" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run("ntds-aggregator", "baseline", "rollback", "--config", site.config)
    assert p.returncode != 0 and "no baseline has been promoted" in p.stderr


# -- the sensor's checks, in-process on real encoded messages ------------------------------------


@pytest.fixture
def keys(tmp_path):
    public, secret = signing.generate(tmp_path / "sign")
    return signing.load_signing_key(secret), public


def parts(
    content: bytes, key, sensor: str = "tap-01", serial: int = 1, version: int = 1, rollback: bool = False,
    to: str = "*",
) -> list[wire.Message]:  # fmt: skip
    grant = signing.Grant(serial, version, hashlib.sha256(content).hexdigest(), "b-id", rollback, to, wire.now_iso())
    msgs = wire.baseline_parts(sensor, serial, "b-id", content, *signing.sign_grant(grant, key))
    return [wire.decode(wire.encode(m)) for m in msgs]  # through the strict codec, as the link delivers them


def test_a_push_in_many_parts_is_assembled_verified_and_kept(tmp_path, keys):
    secret, public = keys
    doc = json.loads(BASELINE.read_text())
    doc["inputs"] = [secrets.token_hex(32) for _ in range(4000)]  # random text: compresses only to half
    content = json.dumps(doc).encode()
    msgs = parts(content, secret)
    assert len(msgs) >= 3 and all(len(wire.encode(m)) <= wire.MAX_FRAME for m in msgs)
    updates = BaselineUpdates(public, "unicauca", tmp_path)
    got = [updates.take(m) for m in reversed(msgs)]  # any order
    assert got[-1] is not None and got[-1].id == json.loads(BASELINE.read_text())["built"] + " robust"
    assert (tmp_path / PUSHED).read_bytes() == content
    again = BaselineUpdates(public, "unicauca", tmp_path).stored()
    assert again is not None and again.id == got[-1].id
    # the file on disk changed afterwards: ignored at the next start, the configured baseline is used
    (tmp_path / PUSHED).write_bytes(content + b"\n")
    assert BaselineUpdates(public, "unicauca", tmp_path).stored() is None


@pytest.mark.parametrize(
    "damage",
    ["signature", "truncated", "not base64", "sha", "no key", "other key", "other format version", "unversioned",
     "grant edited", "grant not json"],
)  # fmt: skip
def test_damaged_pushes_are_refused_and_counted(tmp_path, keys, damage):
    secret, public = keys
    content = BASELINE.read_bytes()
    if damage == "other format version":  # correctly signed, but a format this sensor does not read
        content = json.dumps(json.loads(content) | {"version": 99}).encode()
    m = parts(content, secret)[0]
    body = dict(m.body)
    key_file: Path | str = public
    if damage == "signature":
        body["signature"] = signing.sign(content + b"x", secret)
    elif damage == "truncated":
        body["data"] = base64.b64encode(base64.b64decode(body["data"])[:-100]).decode()
    elif damage == "not base64":
        body["data"] = "%%%" + body["data"][3:]
    elif damage == "sha":
        body["sha256"] = "0" * 64
    elif damage == "no key":
        key_file = ""
    elif damage == "unversioned":  # what an aggregator before grants sent: a signature over the bare file
        body["grant"], body["signature"] = "", signing.sign(content, secret)
    elif damage == "grant edited":  # a grant taken from an older push, its serial raised
        body["grant"] = body["grant"].replace('"serial":1,', '"serial":7,')
    elif damage == "grant not json":
        body["grant"] = "{not json"
        body["signature"] = signing.sign(body["grant"].encode(), secret)
    else:
        other_public, _ = signing.generate(tmp_path / "other")
        key_file = other_public
    updates = BaselineUpdates(key_file, "unicauca", tmp_path)
    with pytest.raises(Refused):
        updates.take(wire.Message("baseline", "tap-01", 1, m.created, body))
    assert updates.refused == 1 and not (tmp_path / PUSHED).exists()


def test_versions_only_go_forward_unless_signed_as_a_rollback(tmp_path, keys):
    """The grant's serial and version, checked on real encoded messages, and kept across a restart."""
    secret, public = keys
    doc = json.loads(BASELINE.read_text())
    old, new = BASELINE.read_bytes(), json.dumps(doc | {"built": "2026-11-24T09:00:00Z"}).encode()

    def push(updates: BaselineUpdates, content: bytes | list[wire.Message], **grant):
        got = None
        for m in parts(content, secret, **grant) if isinstance(content, bytes) else content:
            got = updates.take(m)
        return got

    updates = BaselineUpdates(public, "unicauca", tmp_path)
    assert push(updates, old, serial=1, version=1) is not None
    second = parts(new, secret, serial=2, version=2)
    assert push(updates, second).id.startswith("2026-11-24T09")
    refusals = {
        "replayed": dict(serial=1, version=1),  # the old version's own grant, pushed again
        "not signed as a rollback": dict(serial=3, version=1),  # newer serial, older version, no rollback
        "signed for sensor 'tap-99'": dict(serial=3, version=3, to="tap-99"),
    }
    for why, grant in refusals.items():
        with pytest.raises(Refused, match=why):
            push(updates, old, **grant)
    assert updates.refused == 3 and (tmp_path / PUSHED).read_bytes() == new
    assert json.loads((tmp_path / (PUSHED + ".grant")).read_text())["grant"] == second[0].body["grant"]
    assert push(updates, second) is not None  # the very grant it runs: taken again (after a fall back)
    with pytest.raises(Refused, match="replayed"):  # the same serial signed again for something else
        push(updates, new, serial=2, version=2)
    # a restart keeps what it runs and the serial it holds
    again = BaselineUpdates(public, "unicauca", tmp_path)
    assert again.stored().id.startswith("2026-11-24T09") and again.running.serial == 2
    with pytest.raises(Refused, match="replayed"):
        push(again, old, serial=1, version=1)
    # a rollback, signed as one, is taken; the older grants stay refused
    assert push(again, old, serial=3, version=1, rollback=True).id == doc["built"] + " robust"
    with pytest.raises(Refused, match="replayed"):
        push(BaselineUpdates(public, "unicauca", tmp_path), new, serial=2, version=2)


def test_a_baseline_kept_before_grants_is_used_until_a_granted_push(tmp_path, keys):
    secret, public = keys
    content = BASELINE.read_bytes()
    (tmp_path / PUSHED).write_bytes(content)
    (tmp_path / (PUSHED + ".sig")).write_text(signing.sign(content, secret) + "\n")
    updates = BaselineUpdates(public, "unicauca", tmp_path)
    assert updates.stored() is not None and updates.running is None
    new = json.dumps(json.loads(content) | {"built": "2026-11-24T10:00:00Z"}).encode()
    got = None
    for m in parts(new, secret, serial=1, version=1):
        got = updates.take(m)
    assert got is not None and not (tmp_path / (PUSHED + ".sig")).exists()
    assert BaselineUpdates(public, "unicauca", tmp_path).stored().id.startswith("2026-11-24T10")


# -- a downgrade by whoever holds the aggregator's CURVE key but not the signing key ------------------------


class Impostor(threading.Thread):
    """A ROUTER on the aggregator's endpoint with the aggregator's CURVE secret key (no signing key): it
    acknowledges everything, keeps what the sensor says, and pushes an old version's stored, signed parts under
    a new version number at every hello and health."""

    def __init__(self, site: PushSite, ctx: zmq.Context, push: list[wire.Message]) -> None:
        super().__init__(daemon=True)
        from ntds.wire.keys import load_pair

        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.curve_server = True
        self.socket.curve_publickey, self.socket.curve_secretkey = load_pair(site.root / "agg" / "server.key_secret")
        end = time.monotonic() + 10
        while True:  # the port is the one just closed (by the aggregator, or the last impostor's socket)
            try:
                self.socket.bind(site.endpoint)
                break
            except zmq.ZMQError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        self.push = [wire.encode(m) for m in push]
        self.heard: list[wire.Message] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if not self.socket.poll(100):
                continue
            identity, frame = self.socket.recv_multipart()
            m = wire.decode(frame)
            self.heard.append(m)
            self.socket.send_multipart([identity, wire.encode(wire.ack(m.sensor, m.spool, [m.seq]))])
            if m.type in ("hello", "health"):
                for part in self.push:
                    self.socket.send_multipart([identity, part])

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        self.socket.close(linger=0)

    def said(self, kind: str) -> list[dict]:
        return [m.body for m in self.heard if m.type == kind]


def test_an_old_signed_version_pushed_as_new_is_refused_across_restarts(push_site, tmp_path, zmq_context):
    site = push_site
    v1 = variant(tmp_path / "v1.json", "2026-11-24T06:00:00Z")
    v2 = variant(tmp_path / "v2.json", "2026-11-24T07:00:00Z")
    assert site.promote(v1).returncode == 0 and site.promote(v2).returncode == 0
    agg = site.aggregator()
    s = site.replay_realtime(site.flows(3))
    assert s.wait(120) == 0
    assert "activated baseline 2026-11-24T07:00:00Z" in s.stderr.read()
    agg.terminate()
    assert agg.wait(30) == 0
    # what the store keeps of version 1, signed, pushed as version 99
    with sqlite3.connect(site.store) as db:
        content, text, signature, file_signature = db.execute(
            "SELECT content, grant_text, grant_signature, signature FROM baselines WHERE version = 1"
        ).fetchone()
    attacks = {
        "replayed": wire.baseline_parts("tap-01", 99, "2026-11-24T06:00:00Z robust", content, text, signature),
        "signed without a version": wire.baseline_parts(
            "tap-01", 99, "2026-11-24T06:00:00Z robust", content, "", file_signature
        ),
    }
    for why, push in attacks.items():
        for run_no in range(2):  # the second run is the sensor restarted: it still runs version 2 and refuses
            impostor = Impostor(site, zmq_context, push)
            impostor.start()
            try:
                s = site.replay_realtime(site.flows(3))
                assert s.wait(120) == 0
                log = s.stderr.read()
            finally:
                impostor.stop()
            assert "refused the baseline the aggregator pushed" in log and why in log, log
            assert "activated" not in log and "Traceback" not in log, log
            hellos, healths = impostor.said("hello"), impostor.said("health")
            assert hellos and all(h["baseline_id"].startswith("2026-11-24T07") for h in hellos), (why, run_no)
            assert healths and all(h["baseline_id"].startswith("2026-11-24T07") for h in healths)
            assert healths[-1]["baselines_refused"] >= 1, healths[-1]
        alerts = baseline_ids(site.store, "alert")
        assert alerts and all(i.startswith("2026-11-24T07") for i in alerts[-3:])
    # the signing key's holder rolls back: signed as a rollback, the sensor takes it and keeps it
    p = run("ntds-aggregator", "baseline", "rollback", "--config", site.config)
    assert p.returncode == 0 and "version 1 (2026-11-24T06:00:00Z robust) is active again" in p.stderr, p.stderr
    listed = [json.loads(x) for x in run("ntds-aggregator", "baseline", "versions", "--json", "--config",
                                         site.config).stdout.splitlines()]  # fmt: skip
    assert [(v["version"], v["serial"]) for v in listed if v["active"]] == [(1, 3)]
    site.aggregator()
    s = site.replay_realtime(site.flows(3))
    assert s.wait(120) == 0
    assert "activated baseline 2026-11-24T06:00:00Z" in s.stderr.read()
    s = site.replay(site.flows(4))  # restarted: runs the rolled-back version from the start
    assert s.wait(120) == 0, s.stderr.read()
    assert all(i.startswith("2026-11-24T06") for i in baseline_ids(site.store, "alert")[-4:])
    assert baseline_ids(site.store, "hello")[-1].startswith("2026-11-24T06")


def test_a_version_promoted_before_grants_is_not_pushed_until_signed_anew(tmp_path, keys, caplog):
    """A store from before grants: its table gains the columns, its version is not pushed (sensors would refuse
    it) and `serve` says how to fix it in one line; `rollback --to` the active version signs it anew."""
    from aggregator import baselines
    from aggregator.baselines import Pusher

    secret, public = keys
    content = BASELINE.read_bytes()
    store = tmp_path / "store.db"
    old_schema = (
        "CREATE TABLE baselines (version INTEGER PRIMARY KEY AUTOINCREMENT, baseline_id TEXT NOT NULL, sha256 TEXT "
        "NOT NULL, content BLOB NOT NULL, signature TEXT NOT NULL, feature_profile TEXT NOT NULL, method TEXT NOT "
        "NULL, entries INTEGER NOT NULL, inputs TEXT NOT NULL, checks TEXT NOT NULL, note TEXT NOT NULL, promoted "
        "REAL NOT NULL, promoted_by TEXT NOT NULL, active INTEGER NOT NULL DEFAULT 0)"
    )
    row = (hashlib.sha256(content).hexdigest(), content, signing.sign(content, secret))
    with sqlite3.connect(store) as db:  # the table as the aggregator before grants made it
        db.execute(old_schema)
        db.execute(
            "INSERT INTO baselines VALUES (1, 'old robust', ?, ?, ?, 'unicauca', 'robust', 1, '[]', '{}', '', 0, "
            "'cli', 1)",
            row,
        )
    hello = wire.Message("hello", "tap-01", 1, wire.now_iso(), wire.EXAMPLES["hello"], "abc")
    pusher = Pusher(store)
    try:
        with caplog.at_level("ERROR", logger="ntds.aggregator.baselines"):
            assert pusher.offer(hello) == [] and pusher.offer(hello) == []
        told = [r.getMessage() for r in caplog.records if "signed before versions" in r.getMessage()]
        assert len(told) == 1 and "baseline rollback --to 1" in told[0], told
        db = baselines.connect(store)
        v = baselines.rollback(db, 1, tmp_path / "sign" / signing.SECRET_NAME)
        db.close()
        assert v["serial"] == 1 and v["active"]
        time.sleep(REREAD_S * 1.5)
        pushed = [wire.decode(wire.encode(m)) for m in pusher.offer(hello)]
        assert pushed and pushed[0].seq == 1
    finally:
        pusher.close()
    updates = BaselineUpdates(public, "unicauca", tmp_path)
    got = [updates.take(m) for m in pushed][-1]
    assert got is not None and updates.running.serial == 1 and not updates.running.rollback
