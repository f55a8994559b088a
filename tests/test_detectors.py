"""Host-level detectors: the contract every registered one keeps, and each one on its scenario and near misses.

Scenarios are real captures (tests/detection_week.py writes the frames) metered by the
sensor's own meter (NFStream) and judged by the sensor's own `Detection`:
a few days of an ordinary campus with every planted attack, each from its own
host. Each detector must name its attacker, and no host-level alert may name
the campus's ordinary hosts: the busy client, the peer-to-peer client, the
discovery broadcasters, the monitoring station, the nightly backup, the hosts
polling the update server.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ntds.detect.baseline import Baseline
from ntds.detect.detection import Detection
from ntds.detect.grouping import Grouper, GroupingOptions
from ntds.detect.hosts import DETECTORS
from ntds.detect.hosts.beacon import beacon_score, bowley
from ntds.detect.hosts.dns import registered_domain
from ntds.flows.meter import FlowMeter
from ntds.flows.traffic import FlowTraffic
from tests import detection_week as campus

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "config" / "baseline.json"
BIN = Path(sys.executable).parent


def _flow(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=80, proto=6, t=0, **kw) -> FlowTraffic:
    values = dict(start_ms=t, src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, protocol=proto,
                  packets_fwd=1, bytes_fwd=60, packets_bwd=0, bytes_bwd=0, application="Unknown", end_ms=t)  # fmt: skip
    return FlowTraffic(**(values | kw))


# -- the contract ---------------------------------------------------------------------------------


def _random_flow(rng: random.Random, t: int) -> FlowTraffic:
    proto = rng.choice((6, 17, 1))
    answered = rng.random() < 0.5
    return _flow(
        src=f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        dst=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        sport=rng.randrange(1024, 65536), dport=rng.choice((53, 22, 443, rng.randrange(1, 65536))), proto=proto,
        t=t, end_ms=t + 50,
        packets_fwd=rng.randint(1, 50), bytes_fwd=rng.randint(40, 10**7), packets_bwd=answered * rng.randint(1, 50),
        bytes_bwd=answered * rng.randint(40, 10**6), payload=rng.randint(0, 5000), application=rng.choice(
            ("DNS", "TLS", "Unknown", "HTTP")), server_name=f"{rng.getrandbits(40):x}.example.com",
    )  # fmt: skip


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_every_registered_detector_keeps_the_contract(kind):
    cls = DETECTORS[kind]
    assert cls.kind == kind
    assert sys.modules[cls.__module__].__doc__, "a detector's module says why it works the way it does"
    assert cls.OPTIONS and all(o.meaning for o in cls.OPTIONS.values())
    with pytest.raises(ValueError, match="unknown option"):
        cls(no_such_option=1)
    for name, option in cls.OPTIONS.items():
        bad = "x" if not isinstance(option.default, str) else 1
        with pytest.raises(ValueError, match=name):
            cls(**{name: bad})
    # bounded memory: a flood of random sources with every table at its smallest never grows past the caps
    small = {k: 100 for k, o in cls.OPTIONS.items() if o.low == 100}
    assert small, "every detector bounds its tables with an option"
    a, b = cls(**small), cls(**small)
    rng = random.Random(5)
    found_a, found_b = [], []
    for i in range(20_000):
        flow = _random_flow(rng, i * 10)
        found_a += a.findings(flow)
        b.learn_one(flow)
        got = b.score_one(flow)
        found_b += [got] if got is not None else []
        assert all(len(t) <= t.limit for t in a.tables)
    assert a.evicted > 0 and a.size <= sum(t.limit for t in a.tables)
    assert [f.__dict__ for f in found_a] == [f.__dict__ for f in found_b]  # findings = learn_one + score_one
    for f in found_a:
        assert f.kind == kind and 1 <= f.tier <= 5 and f.signature and f.facts


def test_detector_options_come_from_the_sensor_config(tmp_path):
    from sensor.config import load

    cfg = tmp_path / "sensor.yaml"
    base = f"sensor_id: t\nbaseline: {BASELINE}\nsensor_key: k\nserver_key: k\n"
    cfg.write_text(base + "detectors:\n  port-scan: {ports: 40}\n  beacon: {enabled: false}\n")
    c = load(cfg, insecure=True)
    d = Detection(Baseline.load(BASELINE), detectors=c.detectors)
    kinds = [x.kind for x in d.detectors]
    assert "beacon" not in kinds and next(x for x in d.detectors if x.kind == "port-scan").ports == 40
    for text, message in (
        ("detectors:\n  port-scan: {portz: 4}\n", "unknown option 'portz'"),
        ("detectors:\n  nope: {}\n", "unknown detector 'nope'"),
        ("detectors:\n  port-scan: {ports: -3}\n", "port-scan.ports must be at least"),
        ("detectors: [1, 2]\n", "must be a mapping"),
        ("alert_grouping: {group_wait: 5}\n", "unknown key 'group_wait'"),
    ):
        cfg.write_text(base + text)
        p = subprocess.run([str(BIN / "ntds-sensor"), "check-config", str(cfg), "--insecure"], capture_output=True,
                           text=True)  # fmt: skip
        assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


# -- building blocks against hand computations ------------------------------------------------------


def test_brute_force_window_holds_exactly_the_attempts_it_should():
    """Attempts arrive a little out of start order (flows end at different times); the window keeps each one
    until a later flow's window has passed it, and at most the newest MAX_ATTEMPTS. Checked against a direct
    computation over the whole sequence, so a window that leaks, forgets or double-counts fails."""
    from ntds.detect.hosts.bruteforce import MAX_ATTEMPTS

    rng = random.Random(7)
    for count, window_s, spread_ms in ((3000, 600, 7_200_000), (MAX_ATTEMPTS + 900, 600, 300_000)):
        d = DETECTORS["brute-force"](window_s=window_s)
        starts = sorted(rng.randrange(spread_ms) for _ in range(count))
        starts = [t + rng.randrange(-30_000, 30_000) for t in starts]  # arrival order: roughly by start
        for t in starts:
            d.learn_one(_flow(dport=22, t=t, end_ms=t + 2000, opens=True, packets_bwd=3, bytes_bwd=300, payload=90))
        horizons = [t - window_s * 1000 for t in starts]
        later_max, kept = -(10**18), []
        for i in range(count - 1, -1, -1):  # an attempt survives every later flow's window edge
            later_max = max(later_max, horizons[i])
            if starts[i] >= later_max:
                kept.append(starts[i])
        want = sorted(kept)[-MAX_ATTEMPTS:]
        a = d.keys.rows[("10.0.0.1", "10.0.0.2", 22, 6)]
        assert a.times == want and len(a.sizes) == len(want) and a.first_ms == want[0]


def test_beacon_score_by_hand():
    # a metronome: equal gaps and sizes -> skew 0, MAD 0 -> 1.0 each; size smallness 1 - 100/65535
    score, parts = beacon_score([0, 10, 20, 30, 40, 50], [100] * 6)
    assert parts["ts"] == 1.0 and parts["ds"] == pytest.approx((1 + 1 + 1 - 100 / 65535) / 3)
    assert score == pytest.approx((1 + parts["ds"]) / 2)
    # Bowley skewness of 1, 2, 3, 10: quartiles (inclusive) 1.75, 2.5, 4.75 -> (4.75 + 1.75 - 5) / 3 = 0.5
    assert bowley([1, 2, 3, 10]) == pytest.approx(0.5)
    # random gaps score far lower than a jittered period
    rng = random.Random(1)
    times = [0]
    for _ in range(40):
        times.append(times[-1] + int(rng.expovariate(1 / 300_000)))
    jittered = [k * 300_000 + rng.randint(-60_000, 60_000) for k in range(40)]
    assert beacon_score(times, [500] * 41)[1]["ts"] < 0.6 < beacon_score(sorted(jittered), [500] * 40)[1]["ts"]


def test_regularity_by_hand_and_against_chance():
    from ntds.detect.hosts.evidence import binomial_tail, chance_in_band, regularity

    # a Poisson process puts 2**-0.5 - 2**-1.5 of its gaps within +-50% of their median (exponential quartiles)
    assert chance_in_band(1, 0.5) == pytest.approx(2**-0.5 - 2**-1.5)
    assert binomial_tail(3, 3, 0.5) == pytest.approx(0.125) and binomial_tail(0, 5, 0.3) == 1.0
    rng = random.Random(3)

    def series(gap, n=30, start=0.0):
        t, out = start, []
        for _ in range(n):
            out.append(int(t))
            t += gap()
        return out

    # a timer with +-50% jitter (Empire, Sliver) and Cobalt Strike's "up to 50% shorter": regular in 30 check-ins
    assert regularity(series(lambda: 60_000 * rng.uniform(0.5, 1.5))).regular()
    assert regularity(series(lambda: 60_000 * rng.uniform(0.5, 1.0))).regular()
    # two connections per check-in (a GET, then a POST a moment later): regular at lag 2
    starts = series(lambda: 4000 * rng.uniform(0.85, 1.15), 35)
    pairs = sorted(t + d for t in starts for d in (0, rng.randint(50, 1500)))
    assert regularity(pairs).lag == 2 and regularity(pairs).regular()
    # independent arrivals of the same rate, and bursty ones, are not; nor a few back-to-back jobs a night
    misses = [regularity(series(lambda: rng.expovariate(1 / 60_000), 60)).regular() for _ in range(200)]
    assert sum(misses) == 0
    assert not regularity(series(lambda: rng.lognormvariate(9, 1.5), 60)).regular()
    nights = sorted(d * 86_400_000 + k * 6650 for d in range(4) for k in range(6))
    assert regularity(nights).share > 0.8 and not regularity(nights).regular()


def _checkins(src, dst, dport, gaps_ms, proto=6, app="HTTP", fwd=420, dur=300, t0=1_794_787_200_000):
    t = t0
    for g in gaps_ms:
        yield _flow(src=src, dst=dst, sport=40000 + (t // 1000) % 20000, dport=dport, proto=proto, t=t,
                    end_ms=t + dur, packets_fwd=5, bytes_fwd=fwd, packets_bwd=5, bytes_bwd=900, payload=700,
                    application=app)  # fmt: skip
        t += g


def _judge(flows) -> list:
    detectors = [DETECTORS["beacon"](), DETECTORS["brute-force"]()]
    return [f for flow in flows for d in detectors for f in d.findings(flow)]


def test_polling_within_minutes_is_a_beacon_on_tcp_udp_and_quic_and_never_brute_force():
    rng = random.Random(4)
    cases = ((6, 80, "HTTP", 0.2, 25), (6, 8443, "TLS", 0.5, 60), (17, 443, "QUIC", 0.3, 30),
             (17, 9999, "Unknown", 0.5, 60))  # fmt: skip
    for proto, port, app, jitter, within in cases:  # every 5 s, +-20-50%, for under 7 minutes
        gaps = [int(5000 * rng.uniform(1 - jitter, 1 + jitter)) for _ in range(80)]
        found = _judge(_checkins("10.0.0.5", "198.51.100.9", port, gaps, proto=proto, app=app))
        kinds = {f.kind for f in found}
        assert kinds == {"beacon"}, (proto, port, kinds)
        first = next(f for f in found if f.kind == "beacon")
        assert first.tier >= 3 and first.count <= within, (proto, port, first.count)
        assert "check-in every" in first.facts[0]["text"] and "s" in first.facts[0]["text"]
        if proto == 6:
            assert any(x["what"] == "brute force" for x in first.facts)  # mentions the other story, and why not


def test_what_is_regular_by_principle_is_no_beacon():
    """DNS, NTP and DoH by protocol, the site's own servers (a monitoring station's polls), popular destinations."""
    gaps = [5000] * 60
    assert _judge(_checkins("10.0.0.5", "9.9.9.9", 443, gaps, app="DoH_DoT")) == []
    assert _judge(_checkins("10.0.0.5", "8.8.8.8", 53, gaps, proto=17, app="GOOGLE")) == []  # DNS by its port
    assert _judge(_checkins("10.0.0.5", "162.159.200.1", 123, gaps, proto=17, app="Unknown")) == []
    polls = _judge(_checkins("10.0.0.5", "10.0.0.80", 8080, gaps))  # polling a server of the site
    assert "beacon" not in {f.kind for f in polls}
    beacon = DETECTORS["beacon"]()
    everyone = [f for k in range(8) for f in _checkins(f"10.0.1.{k}", "203.0.113.7", 443, gaps[:30], app="TLS",
                                                        t0=1_794_787_200_000 + k * 300)]  # fmt: skip
    for f in sorted(everyone, key=lambda f: f.start_ms):  # eight hosts poll one telemetry server: popular
        assert beacon.findings(f) == []


def test_brute_force_needs_evidence_of_authentication():
    rng = random.Random(5)
    gaps = [int(rng.uniform(1500, 2500)) for _ in range(150)]
    # repeated short, similar exchanges with an outside server that logs no one in: not brute force
    found = _judge(_checkins("10.0.0.5", "198.51.100.9", 8443, gaps, app="TLS"))
    assert "brute-force" not in {f.kind for f in found}
    # the same to a server of the site (a login form): brute force
    assert "brute-force" in {f.kind for f in _judge(_checkins("10.0.0.5", "10.0.0.80", 80, gaps))}
    # to SSH, by port or by nDPI's name on another port, even from outside and as regular as a metronome
    for port, app in ((22, "Unknown"), (2222, "SSH")):
        found = _judge(_checkins("203.0.113.5", "10.0.0.22", port, [10_000] * 40, app=app, dur=2000))
        assert {f.kind for f in found} == {"brute-force"}, (port, app)
        assert any("also regular like a beacon" in x["text"] for f in found for x in f.facts)
    # identical lookups: UDP, or DNS over TCP, are never logins
    assert _judge(_checkins("10.0.0.5", "10.0.0.53", 53, [100] * 300, proto=17, app="DNS")) == []
    assert _judge(_checkins("10.0.0.5", "10.0.0.53", 53, [100] * 300, proto=6, app="DNS")) == []


def test_registered_domain_uses_the_public_suffix_list():
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"
    assert registered_domain("x.y.github.io") == "y.github.io"  # a private suffix of the list
    assert registered_domain("4.3.2.1.in-addr.arpa") == "" and registered_domain("printer.local") == ""
    assert registered_domain("co.uk") == ""


def test_grouping_folds_repeats_escalates_at_once_and_keeps_to_the_budget():
    def alert(host, tier=3, t="2026-11-16T08:00:00Z", kind="flow", pattern="445 volume low"):
        return {"kind": kind, "src_ip": host, "application": "SMB", "pattern": pattern, "tier": tier, "score": tier,
                "count": 1, "first_seen": t, "last_seen": t, "baseline_id": "b", "signature": "s"}  # fmt: skip

    g = Grouper(GroupingOptions(group_wait_s=60, group_interval_s=3600, budget_per_hour=3))
    out = []
    for k in range(17):  # 17 identical knocks of one host within a minute: one alert, count 17
        out += g.add(alert("10.0.0.9"), 1000 + k * 1000)
        out += g.advance(1000 + k * 1000)
    assert out == []
    out += g.advance(62_000)
    assert [(a["src_ip"], a["count"]) for a in out] == [("10.0.0.9", 17)]
    # a repeat of a higher tier goes out with the next step of the clock, not an hour later
    g.add(alert("10.0.0.9", tier=5), 70_000)
    assert [(a["tier"], a["count"]) for a in g.advance(70_001)] == [(5, 1)]
    # the third alert of the hour is the last one sent; the rest are summarised in one overflow alert
    sent = []
    for k in range(6):
        g.add(alert(f"10.0.1.{k}"), 80_000)
    sent = g.advance(200_000)
    assert len(sent) == 1
    out = g.advance(3_600_000 + 1)  # the next hour: the overflow of the last one
    assert [a["kind"] for a in out] == ["overflow"] and out[0]["count"] == 5
    assert "5 more alerts in 5 groups" in out[0]["signature"]
    off = Grouper(GroupingOptions(group_wait_s=0, group_interval_s=0, budget_per_hour=100))
    assert len(off.add(alert("a"), 1) + off.add(alert("a"), 1)) == 2  # both waits 0: no grouping


# -- scenarios on real captures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def campus_batches(tmp_path_factory) -> list[list]:
    """Four days of a 30-host campus with every planted attack, metered once, in the sensor's batches."""
    path, _ = campus.week(tmp_path_factory.mktemp("campus") / "campus.pcap", hosts=30, days=4, seed=3)
    records = list(FlowMeter("unicauca", single_packet_flows=True).read([path]))
    return [records[i : i + 512] for i in range(0, len(records), 512)]


def _judged(batches: list[list], detection: Detection, switch=None) -> tuple[list[dict], list]:
    """Every alert and every flow's tier of the batches; `switch(detection)` is called halfway."""
    alerts, tiers = [], []
    for k, batch in enumerate(batches):
        if switch is not None and k == len(batches) // 2:
            switch(detection)
        judged = detection.process(batch)
        alerts += judged.alerts
        tiers += judged.tiers
    return alerts + detection.close(), tiers


@pytest.fixture(scope="module")
def campus_alerts(campus_batches) -> tuple[list[dict], Detection]:
    """The campus week judged once, in the sensor's own process."""
    detection = Detection(Baseline.load(BASELINE))
    return _judged(campus_batches, detection)[0], detection


@pytest.mark.parametrize("workers", [1, 3])
def test_analysis_workers_find_exactly_what_one_process_finds(campus_batches, campus_alerts, workers):
    """Each detector's rows live in one worker (its route), and findings come back in flow order: the alerts,
    tiers and counts of N workers are those of the sensor's process alone, every planted attack included.
    Three workers split the routes unevenly, so a detector whose state crossed routes would differ here."""
    alerts, alone = campus_alerts
    detection = Detection(Baseline.load(BASELINE), workers=workers)
    try:
        got, tiers = _judged(campus_batches, detection)
        assert json.dumps(got) == json.dumps(alerts)
        assert detection.stats.findings == alone.stats.findings and sum(alone.stats.findings.values()) >= 20
        assert tiers == _judged(campus_batches, Detection(Baseline.load(BASELINE)))[1]
        assert len({a["kind"] for a in got}) >= 8
        assert detection.evicted == alone.evicted
    finally:
        detection.stop()


def test_new_local_networks_reach_the_workers_from_the_next_batch(campus_batches):
    """SIGHUP's local networks: the workers' detectors switch at the same flow as the sensor's own would."""
    from sensor.traffic_classes import TrafficClasses

    def switch(d: Detection) -> None:
        d.set_local(TrafficClasses(["10.20.1.0/24"]).is_local)  # what the sensor's SIGHUP hands over

    one = _judged(campus_batches, Detection(Baseline.load(BASELINE)), switch)[0]
    detection = Detection(Baseline.load(BASELINE), workers=2)
    try:
        assert json.dumps(_judged(campus_batches, detection, switch)[0]) == json.dumps(one)
    finally:
        detection.stop()
    before = _judged(campus_batches, Detection(Baseline.load(BASELINE)))[0]
    assert json.dumps(one) != json.dumps(before)  # the switch changed something, so the comparison means something


@pytest.mark.parametrize("attack", campus.ATTACKS, ids=[a.name for a in campus.ATTACKS])
def test_each_attack_is_found_and_names_its_host(campus_alerts, attack):
    alerts, _ = campus_alerts
    kinds = {a["kind"] for a in alerts if a["src_ip"] == attack.host}
    assert attack.kind in kinds, (attack.name, kinds)
    mine = [a for a in alerts if a["kind"] == attack.kind and a["src_ip"] == attack.host]
    a = mine[0]
    assert 3 <= a["tier"] <= 5 and a["count"] >= 1 and a["explanation"] and a["baseline"] == "detector"
    assert all(e["text"] for e in a["explanation"])
    assert a["first_seen"] <= a["last_seen"]


def test_ordinary_hosts_raise_no_host_level_alert(campus_alerts):
    """The near misses: the busy client, the peer-to-peer client, the discovery broadcasters, the monitoring
    station, the nightly backup and every host polling the update server stay quiet."""
    alerts, detection = campus_alerts
    attackers = {a.host for a in campus.ATTACKS}
    victims = {campus.FILES, campus.MAIL, campus.GIT, campus.INTRANET}
    wrong = [
        (a["kind"], a["src_ip"], a["signature"])
        for a in alerts
        if a["kind"] != "flow" and a["src_ip"] not in attackers and a["src_ip"] not in victims
    ]
    assert wrong == []
    # and the attacks' findings were really made on metered flows of the whole capture
    assert detection.stats.findings["port-scan"] >= 2 and detection.stats.scored > 1000


def test_offline_score_equals_what_a_replay_would_send(tmp_path):
    """`ntds-sensor score` runs the same detection in one pass: the capture in two halves gives the same alerts
    as in one piece (the grouping runs on the flows' clock, not on how the input was chunked)."""
    cap = campus.Capture(seed=9)
    campus.scan_resets(cap, campus.START + 3600)
    campus.http_brute_force(cap, campus.START + 7200)
    campus.dns_tunnel(cap, campus.START + 9000)
    path = cap.write(tmp_path / "attacks.pcap")
    out = tmp_path / "alerts.jsonl"
    p = subprocess.run([str(BIN / "ntds-sensor"), "score", str(path), "--baseline", str(BASELINE), "-o", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    detection = Detection(Baseline.load(BASELINE))
    records = list(FlowMeter("unicauca", single_packet_flows=True).read([path]))
    again = []
    for k in range(0, len(records), 7):  # odd batch sizes
        again += detection.process(records[k : k + 7]).alerts
    again += detection.close()
    assert alerts == again
    assert {(a["kind"], a["src_ip"]) for a in alerts} >= {
        ("port-scan", "10.20.1.30"), ("brute-force", "10.20.1.32"), ("dns-tunnel", "10.20.1.34")}  # fmt: skip
