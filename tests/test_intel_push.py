"""Indicators on the aggregator (`intel add|list|remove|expire`), signed, pushed to sensors over the link, matched
live; retro-hunted over what the fleet already reported.

End to end with a real `serve` (CURVE) and real `ntds-sensor replay` processes on 127.0.0.1 (the site of
tests/test_baseline_push.py); the sensor's checks also in-process on real encoded messages."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from aggregator import intel as agg_intel
from ntds.intel.indicators import Indicator
from ntds.intel.matching import read_set, write_set
from ntds.wire import schema as wire
from ntds.wire import signing
from sensor.intel_updates import PUSHED, IntelUpdates, Refused
from tests.test_baseline_push import PushSite
from tests.test_transport import run

SERVER = "10.1.0.53"  # the server every flow of Site.flows() goes to (tests/synthetic.udp_flows)
CLIENT = "10.1.0.10"


@pytest.fixture
def push_site(tmp_path):
    s = PushSite(tmp_path)
    yield s
    s.stop()


def intel(site: PushSite, *args) -> object:
    return run("ntds-aggregator", "intel", *args, "--config", site.config)


def rows(store: Path, sql: str, *args) -> list:
    with sqlite3.connect(store) as db:
        return db.execute(sql, args).fetchall()


def bodies(store: Path, kind: str) -> list[dict]:
    return [json.loads(b) for (b,) in rows(store, "SELECT body FROM messages WHERE type = ? ORDER BY id", kind)]


# -- the command line ---------------------------------------------------------------------------


def test_add_list_expire_remove_and_every_change_is_signed(push_site, tmp_path):
    site = push_site
    plain = tmp_path / "feed.txt"
    plain.write_text("# C2\n203.0.113.9\nevil.example\nnot a thing\n")
    csv = tmp_path / "feed.csv"
    csv.write_text("indicator,type,source,confidence\n198.51.100.0/24,net,abuse.ch,90\n203.0.113.9,ip,abuse.ch,80\n")
    p = intel(site, "add", plain, csv)
    assert p.returncode == 0, p.stderr
    assert "feed.txt: 2 indicators; 1 bad rows left out" in p.stderr and "feed.txt:4" in p.stderr
    assert "stored 4 new indicators" in p.stderr and "signed set 1: 4 indicators" in p.stderr
    listed = [json.loads(x) for x in intel(site, "list", "--json").stdout.splitlines()]
    assert sorted((r["type"], r["value"], r["source"], r["confidence"]) for r in listed) == [
        ("domain", "evil.example", "feed.txt", 50), ("ip", "203.0.113.9", "abuse.ch", 80),
        ("ip", "203.0.113.9", "feed.txt", 50), ("net", "198.51.100.0/24", "abuse.ch", 90)]  # fmt: skip
    # the same again with a new confidence: updated, first added kept, a new set signed
    added = {r["value"]: r["added"] for r in listed}
    p = intel(site, "add", plain, "--confidence", "95")
    assert "stored 0 new indicators, 2 updated" in p.stderr and "signed set 2" in p.stderr
    again = {(r["value"], r["source"]): r for r in map(json.loads, intel(site, "list", "--json").stdout.splitlines())}
    assert again[("evil.example", "feed.txt")]["confidence"] == 95
    assert again[("evil.example", "feed.txt")]["added"] == added["evil.example"]
    # a bad file: one line, a non-zero exit, nothing stored (the good file given with it neither)
    bad = tmp_path / "bundle.json"
    bad.write_text('{"type": "bundle", "objects": [')
    good = tmp_path / "more.txt"
    good.write_text("192.0.2.1\n")
    p = intel(site, "add", good, bad)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    (line,) = [line for line in p.stderr.splitlines() if "bundle.json" in line]
    assert line.startswith(f"ntds-aggregator: error: {bad}: not JSON")
    assert "192.0.2.1" not in intel(site, "list").stdout
    # expire: still listed with --expired, gone from the signed set; remove: gone
    p = intel(site, "expire", "203.0.113.9", "--source", "abuse.ch")
    assert p.returncode == 0 and "expired 1 indicators" in p.stderr and "signed set 3: 3 indicators" in p.stderr
    assert "203.0.113.9" in intel(site, "list", "--expired", "--source", "abuse.ch").stdout
    assert "abuse.ch" not in [ln for ln in intel(site, "list").stdout.splitlines() if "203.0.113.9" in ln][0]
    p = intel(site, "remove", "--source", "abuse.ch")
    assert p.returncode == 0 and "removed 2 indicators" in p.stderr and "signed set 4: 2 indicators" in p.stderr
    assert intel(site, "remove", "nothing.example").returncode == 1
    # the newest set is the active indicators, signed under a grant the sensors' key verifies
    db = agg_intel.connect(site.store)
    newest = agg_intel.newest(db)
    db.close()
    key = signing.load_verify_key(site.root / "sign" / "baseline-signing.pub")
    grant = signing.verify_intel_grant(newest.grant, newest.signature, key)
    assert grant.serial == 4 and grant.sha256 == hashlib.sha256(newest.content).hexdigest()
    assert sorted(i.value for i in read_set(newest.content.decode())) == ["203.0.113.9", "evil.example"]
    assert [s["serial"] for s in map(json.loads, intel(site, "list", "--sets", "--json").stdout.splitlines())] == [
        4, 3, 2, 1]  # fmt: skip


def test_without_a_signing_key_indicators_are_stored_but_not_pushed(tmp_path):
    from tests.test_transport import Site

    site = Site(tmp_path)
    f = tmp_path / "f.txt"
    f.write_text("203.0.113.9\n")
    p = run("ntds-aggregator", "intel", "add", f, "--config", site.config)
    assert p.returncode == 0 and "not signed: baseline_signing_key" in p.stderr
    assert rows(site.store, "SELECT COUNT(*) FROM intel_sets") == [(0,)]


# -- end to end: retro-hunt, push, live match, offline sensor, tampered set ----------------------------------------


def test_retro_hunt_then_push_then_live_matches(push_site, tmp_path):
    """A contact made before the indicator existed is found by the retro-hunt; the set reaches the sensor, which
    matches what follows and says which set it runs."""
    site = push_site
    site.aggregator()
    before = site.replay(site.flows(4))
    assert before.wait(120) == 0, before.stderr.read()
    assert not [b for b in bodies(site.store, "alert") if b["kind"] == "intel"]
    f = tmp_path / "c2.csv"
    f.write_text(f"indicator,type,source,confidence\n{SERVER},ip,test feed,85\n")
    p = intel(site, "add", f)
    assert p.returncode == 0, p.stderr
    assert "retro-hunt: 1 new indicators over 4 stored alerts: 4 past contacts found, stored as 1 alerts" in p.stderr
    (found,) = [b for b in bodies(site.store, "alert") if b["kind"] == "intel"]
    assert found["intel"][0] | {"added": 0} == {"type": "ip", "value": SERVER, "source": "test feed",
                                                "confidence": 85, "added": 0, "expires": 0, "matched": "dst_ip",
                                                "found_later": 1}  # fmt: skip
    assert found["src_ip"] == CLIENT and found["dst_ip"] == SERVER and found["tier"] == 5 and found["count"] == 4
    assert "found later" in found["signature"] and len(found["flows"]) == 4
    assert wire.parse_time(found["first_seen"]).timestamp() < found["intel"][0]["added"]  # seen before it was added
    assert rows(site.store, "SELECT sensor, kind, src_ip FROM alerts WHERE kind = 'intel'") == [
        ("tap-01", "intel", CLIENT)
    ]  # the alert manager's index has it
    assert "retro-hunt" not in intel(site, "add", f).stderr  # hunted once
    # live: the sensor gets set 1 at its hello and matches every flow after it
    s = site.replay_realtime(site.flows(6))
    assert s.wait(120) == 0
    log = s.stderr.read()
    assert "matching indicator set 2 (1 indicators" in log, log
    live = [b for b in bodies(site.store, "alert") if b["kind"] == "intel" and not b["intel"][0]["found_later"]]
    assert live and all(b["src_ip"] == CLIENT and b["intel"][0]["matched"] == "dst_ip" for b in live)
    assert bodies(site.store, "hello")[-1]["intel_serial"] == 2
    health = bodies(site.store, "health")[-1]
    assert (health["intel_serial"], health["intel_indicators"], health["intel_refused"]) == (2, 1, 0)
    assert (tmp_path / "spool" / PUSHED).exists()


def test_an_offline_sensor_gets_the_current_set_and_a_tampered_one_is_refused(push_site, tmp_path):
    site = push_site
    f = tmp_path / "one.txt"
    f.write_text(f"{SERVER}\n")
    assert intel(site, "add", f).returncode == 0
    agg = site.aggregator()
    s = site.replay_realtime(site.flows(3))
    assert s.wait(120) == 0 and "matching indicator set 1" in s.stderr.read()
    # while the sensor is away, the set changes twice
    g = tmp_path / "two.txt"
    g.write_text("evil.example\n")
    assert intel(site, "add", g).returncode == 0
    assert intel(site, "expire", SERVER).returncode == 0
    s = site.replay_realtime(site.flows(3))
    assert s.wait(120) == 0
    log = s.stderr.read()
    assert "matching indicator set 3 (1 indicators" in log, log
    assert bodies(site.store, "hello")[-2]["intel_serial"] == 1  # it started with the set it kept
    assert bodies(site.store, "hello")[-1]["intel_serial"] == 3
    # someone with write access to the store puts their own set under the newest grant's signature
    agg.terminate()
    agg.wait(30)
    evil = write_set([Indicator("ip", CLIENT, "mallory", 100)])
    (serial, text, signature) = rows(site.store, "SELECT serial, grant_text, signature FROM intel_sets "
                                                 "ORDER BY serial DESC LIMIT 1")[0]  # fmt: skip
    forged = signing.IntelGrant(serial + 1, hashlib.sha256(evil).hexdigest(), 1).text()
    import zlib

    with sqlite3.connect(site.store) as db:
        db.execute(
            "INSERT INTO intel_sets VALUES (?, ?, ?, 1, ?, ?, ?, 'evil')",
            (serial + 1, hashlib.sha256(evil).hexdigest(), zlib.compress(evil), forged, signature, time.time()),
        )
    site.aggregator()
    s = site.replay_realtime(site.flows(3))
    assert s.wait(120) == 0
    log = s.stderr.read()
    assert "refused the indicator set the aggregator pushed (set 4)" in log and "signature does not match" in log
    assert "Traceback" not in log
    health = bodies(site.store, "health")[-1]
    assert health["intel_refused"] >= 1 and health["intel_serial"] == 3
    (row,) = [json.loads(x) for x in run("ntds-aggregator", "sensors", "--json", "--config", site.config).stdout
              .splitlines()]  # fmt: skip
    assert (row["intel_serial"], row["intel_indicators"]) == (3, 1) and row["intel_refused"] >= 1
    assert not [b for b in bodies(site.store, "alert") if b["kind"] == "intel" and b["intel"][0]["source"] == "mallory"]


# -- the sensor's checks, in-process on real encoded messages ------------------------------------------------


@pytest.fixture
def keys(tmp_path):
    public, secret = signing.generate(tmp_path / "sign")
    return signing.load_signing_key(secret), public


def parts(content: bytes, key, serial: int = 1, to: str = "*", sensor: str = "tap-01") -> list[wire.Message]:
    grant = signing.IntelGrant(serial, hashlib.sha256(content).hexdigest(), 1, to, wire.now_iso()).text()
    msgs = wire.intel_parts(sensor, serial, content, 1, grant, signing.sign(grant.encode(), key))
    return [wire.decode(wire.encode(m)) for m in msgs]


def push(updates: IntelUpdates, msgs: list[wire.Message]):
    got = None
    for m in msgs:
        got = updates.take(m)
    return got


def test_a_large_set_in_many_parts_is_assembled_verified_and_kept(tmp_path, keys):
    secret, public = keys
    inds = [Indicator("ip", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"s{i % 7}", i % 101) for i in range(60000)]
    content = write_set(inds)
    msgs = parts(content, secret)
    assert len(msgs) >= 3 and all(len(wire.encode(m)) <= wire.MAX_FRAME for m in msgs)
    updates = IntelUpdates(public, tmp_path)
    got = push(updates, list(reversed(msgs)))  # any order
    assert got is not None and len(got) == 60000 and updates.serial == 1
    assert (tmp_path / PUSHED).read_bytes() == content
    again = IntelUpdates(public, tmp_path)
    assert len(again.stored()) == 60000 and again.serial == 1
    (tmp_path / PUSHED).write_bytes(content + b"ip\t10.9.9.9\t0\t50\t0\t0\n")  # changed on disk: not used
    assert IntelUpdates(public, tmp_path).stored() is None


@pytest.mark.parametrize("damage", ["signature", "sha", "no key", "other key", "grant edited", "baseline grant",
                                    "not a set", "other sensor", "replayed"])  # fmt: skip
def test_damaged_or_replayed_sets_are_refused_and_counted(tmp_path, keys, damage):
    secret, public = keys
    content = write_set([Indicator("ip", "203.0.113.9", "a", 90)])
    key_file: Path | str = public
    updates = IntelUpdates(public, tmp_path)
    if damage == "replayed":
        assert push(updates, parts(write_set([Indicator("ip", "1.1.1.1", "a")]), secret, serial=2)) is not None
    msgs = parts(
        b"hello" if damage == "not a set" else content, secret, to="tap-02" if damage == "other sensor" else "*"
    )
    body = dict(msgs[0].body)
    if damage == "signature":
        body["signature"] = signing.sign(b"x", secret)
    elif damage == "sha":
        body["sha256"] = "0" * 64
    elif damage == "grant edited":  # the serial raised in a grant signed for serial 1
        body["grant"] = body["grant"].replace('"serial":1', '"serial":9')
    elif damage == "baseline grant":  # a baseline's grant, properly signed, is not an indicator set's
        g = signing.Grant(5, 5, body["sha256"], "b").text()
        body["grant"], body["signature"] = g, signing.sign(g.encode(), secret)
    if damage in ("no key", "other key"):
        key_file = "" if damage == "no key" else signing.generate(tmp_path / "other")[0]
        updates = IntelUpdates(key_file, tmp_path)
    before = updates.refused
    with pytest.raises(Refused):
        updates.take(wire.Message("intel", "tap-01", 1, msgs[0].created, body))
    assert updates.refused == before + 1
    assert updates.serial == (2 if damage == "replayed" else 0)


class RecordsSite(PushSite):
    """A site whose sensor keeps its flow records (sensor.flow_records)."""

    def sensor_config(self, key: str = "tap", spool: str = "spool") -> Path:
        path = super().sensor_config(key, spool)
        with path.open("a") as fh:
            fh.write(f"flow_records_dir: {json.dumps(str(self.root / 'records'))}\n")
        return path


def test_a_sensor_hunts_its_flow_records_for_indicators_new_to_it(tmp_path):
    """A contact made before the sensor had the indicator, found in its own flow records when the set arrives
    (the aggregator's own hunt is left out, --no-hunt, so only the sensor can find it)."""
    site = RecordsSite(tmp_path)
    try:
        site.aggregator()
        first = site.replay(site.flows(4))
        assert first.wait(120) == 0, first.stderr.read()
        assert len(list((tmp_path / "records").glob("flows-*.parquet"))) == 1
        f = tmp_path / "c2.txt"
        f.write_text(f"{SERVER}\n")
        p = intel(site, "add", f, "--no-hunt")
        assert p.returncode == 0 and "retro-hunt" not in p.stderr
        s = site.replay_realtime(site.flows(3))
        assert s.wait(120) == 0
        log = s.stderr.read()
        assert "retro-hunt: 1 new indicators over 1 flow-record files" in log and "4 past contacts, 1 alerts" in log
        (found,) = [b for b in bodies(site.store, "alert") if b["kind"] == "intel" and b["intel"][0]["found_later"]]
        assert found["count"] == 4 and found["src_ip"] == CLIENT and found["dst_ip"] == SERVER
        assert "flow records" in found["explanation"][-1]["text"] and len(found["flows"]) == 4
        assert [b for b in bodies(site.store, "alert") if b["kind"] == "intel" and not b["intel"][0]["found_later"]]
    finally:
        site.stop()


def test_a_set_too_large_for_one_push_is_refused_before_it_is_signed(tmp_path, keys, monkeypatch):
    """ZeroMQ drops what exceeds a peer's queue, so a set that would not arrive whole is never signed."""
    _, public = keys
    db = agg_intel.connect(tmp_path / "store.db")
    agg_intel.add(db, [Indicator("ip", "203.0.113.9", "a")])
    assert agg_intel.sign(db, tmp_path / "sign" / signing.SECRET_NAME).serial == 1
    monkeypatch.setattr(agg_intel, "PUSH_MAX_PARTS", 0)
    with pytest.raises(agg_intel.InputError, match="more than one push carries"):
        agg_intel.sign(db, tmp_path / "sign" / signing.SECRET_NAME)
    assert [s["serial"] for s in agg_intel.sets(db)] == [1]
    db.close()
