"""One sensor cannot steer the fleet's learned baseline (issue 23, item 1).

Three sensors send two weeks of hourly `stats` (the traffic mix of tests/test_learning.py, 250 scored flows an
hour each, weighted by an active baseline built on separate clean flows); every message goes through the wire
codec into a real store and is exported to the Parquet archive, and `learn` reads it as `baseline learn` does.
In the poisoned fleets one sensor (tap-c) also counts five made-up TLS flows an hour (3% of its TLS flows)
into its statistics as if it had seen them, in honest-looking messages:

- narrow: copies of a planted attack (a bulk upload that a clean fleet's candidate puts at tier 4), so that
  the attack looks common;
- wide: every metric drawn over ten decades, which inflates the tail that tier thresholds are read from;
- heavy: the narrow one at sixty made-up flows an hour (a quarter of its TLS flows), claimed as seen.

Measured: the planted attack's tier under the candidate learned from each fleet, sensors combined by median
(the default) and pooled (how `learn` combined them before); then each check that must refuse a poisoned
candidate with one line, and accept a clean one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aggregator.archive import Archive
from aggregator.baseline_learn import bounded_weights, learn, weighted_median, words
from aggregator.store import Store
from ntds.detect.baseline import AXIS_INDEX, METRICS, Baseline, build, service_keys
from ntds.detect.detection import Scored
from ntds.detect.scoring import AXES, tier_of
from ntds.wire import schema as wire
from sensor.populations import PopulationStats
from tests.test_learning import traffic
from tests.test_transport import run

SENSORS = ("tap-a", "tap-b", "tap-c")
POISONED = "tap-c"
START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
WEEKS = 2
HOURS = WEEKS * 7 * 24
PER_HOUR = 250
JUNK_PER_HOUR = 5
LAST_DAY = (START + timedelta(hours=HOURS - 1)).date()
TLS_CLASS = int(service_keys(np.array([6]), np.array([40000]), np.array([443]))[0])
ATTACK_SHAPE = {"duration": 1.0, "volume": 1.0, "pktlenvar": 1.0, "fwdpktlen": 1.0}


def active_baseline() -> Baseline:
    """What the sensors run and the checks compare with: built on 200,000 separate clean flows."""
    apps, M, classes = traffic(np.random.default_rng(1), 200_000)
    return Baseline(build(apps, M, classes=classes, min_count=100), "active")


def sensor_messages(name: str, active: Baseline, junk: np.ndarray | None) -> list[wire.Message]:
    """Two weeks of one sensor's stats messages, through the wire codec. `junk`: (n, 9) metrics of made-up TLS
    flows, spread evenly over the hours and counted exactly as seen flows are."""
    rng = np.random.default_rng(SENSORS.index(name) + 10)
    counts = rng.poisson(PER_HOUR, HOURS)
    apps, M, classes = traffic(rng, int(counts.sum()))
    t0 = int(START.timestamp() * 1000)
    start = t0 + np.repeat(np.arange(HOURS) * 3_600_000, counts) + rng.integers(0, 3_600_000, len(apps))
    if junk is not None:
        hour = np.arange(len(junk)) * HOURS // len(junk)
        apps = np.concatenate([apps, np.full(len(junk), "TLS")])
        M = np.vstack([M, junk])
        classes = np.concatenate([classes, np.full(len(junk), TLS_CLASS)])
        start = np.concatenate([start, t0 + hour * 3_600_000 + 1_800_000])
    order = np.argsort(start, kind="stable")
    apps, M, classes, start = apps[order], M[order], classes[order], start[order]
    tiers = active.score(apps, M, classes).raw_tier
    collector = PopulationStats(3600, seed=SENSORS.index(name))
    for i in range(0, len(apps), 5000):
        s = slice(i, i + 5000)
        collector.add(Scored(start[s], apps[s], classes[s], M[s], tiers[s]))
    bodies = collector.close(None, active.id)
    return [wire.decode(wire.encode(wire.Message("stats", name, seq, wire.now_iso(), body, f"spool-{name}")))
            for seq, body in enumerate(bodies, 1)]  # fmt: skip


def fleet_archive(root: Path, active: Baseline, junk: np.ndarray | None) -> Archive:
    root.mkdir(parents=True)
    store = Store(root / "store.db")
    for name in SENSORS:
        store.store(sensor_messages(name, active, junk if name == POISONED else None))
    archive = Archive(root / "archive")
    archive.export(store, today=date.today())
    store.close()
    return archive


def learned(archive: Archive, active: Baseline, fleet: str = "median") -> tuple[dict, dict]:
    doc, checks, _ = learn(archive, weeks=WEEKS, until=LAST_DAY, sensors=None, min_count=100,
                           feature_profile="unicauca", active=active, fleet=fleet)  # fmt: skip
    return doc, checks


def attack_of(doc: dict) -> np.ndarray:
    """The planted attack's nine metrics: the TLS entry's typical flow moved along ATTACK_SHAPE until this
    candidate scores it in the middle of tier 4 (between its tier 4 and tier 5 thresholds)."""
    b = Baseline(doc, "clean")
    scorer, thresholds = b.scorers["TLS"], b.tiers["TLS"]
    base = np.log1p(scorer.typical())
    u = np.array([ATTACK_SHAPE.get(a, 0.0) for a in AXES])
    target = (thresholds[3] + thresholds[4]) / 2
    lo, hi = 0.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if scorer.score_many(np.expm1(base + mid * u)[None])[0][0] < target else (lo, mid)
    M = np.full(len(METRICS), 100.0)
    M[AXIS_INDEX] = np.expm1(base + hi * u)
    return M


def tier_of_attack(doc: dict, attack: np.ndarray) -> int:
    return int(Baseline(doc, "candidate").score(np.array(["TLS"]), attack[None], np.array([TLS_CLASS])).tier[0])


@pytest.fixture(scope="module")
def fleets(tmp_path_factory):
    """The clean fleet's archive and candidate, the planted attack, and the poisoned fleets' archives."""
    root = tmp_path_factory.mktemp("fleets")
    active = active_baseline()
    clean = fleet_archive(root / "clean", active, None)
    clean_doc, clean_checks = learned(clean, active)
    attack = attack_of(clean_doc)
    rng = np.random.default_rng(99)
    n = JUNK_PER_HOUR * HOURS
    narrow = attack * rng.lognormal(0.0, 0.02, (n, len(METRICS)))
    wide = 10 ** rng.uniform(0, 10, (n, len(METRICS)))
    heavy = attack * rng.lognormal(0.0, 0.02, (12 * n, len(METRICS)))
    return {
        "active": active,
        "attack": attack,
        "clean": (clean, clean_doc, clean_checks),
        "narrow": fleet_archive(root / "narrow", active, narrow),
        "wide": fleet_archive(root / "wide", active, wide),
        "heavy": fleet_archive(root / "heavy", active, heavy),
    }


def test_weighted_median_and_bounded_weights():
    assert weighted_median(np.array([1.0, 2.0, 100.0]), np.ones(3)) == 2.0
    assert weighted_median(np.array([1.0, 3.0]), np.ones(2)) == 2.0  # two sensors: neither outvotes the other
    assert weighted_median(np.array([1.0, 2.0, 100.0]), np.array([1.0, 1.0, 5.0])) == 100.0
    # a sensor that claims a million times the others' flows counts as one typical sensor
    w = bounded_weights(np.array([1000.0, 1200.0, 1e9]))
    assert w.tolist() == [1000.0, 1200.0, 1200.0]
    assert weighted_median(np.array([1.0, 2.0, 100.0]), w) == 2.0
    cols = weighted_median(np.array([[1.0, 10.0], [2.0, 30.0], [9.0, 20.0]]), np.ones(3))
    assert cols.tolist() == [2.0, 20.0]


def test_the_clean_fleet_learns_a_candidate_that_passes_every_check(fleets):
    _, doc, checks = fleets["clean"]
    assert tier_of_attack(doc, fleets["attack"]) == 4  # by construction
    assert doc["learned"]["sensors"] == list(SENSORS) and doc["learned"]["sensors_combined_by"] == "median"
    assert checks["passed"], words(checks)
    assert checks["leave_one_sensor_out"]["passed"] and len(checks["leave_one_sensor_out"]["sensors"]) == 3
    assert checks["canaries"]["canaries"] >= 6 and not checks["canaries"]["failed"]
    assert checks["alert_rate"]["passed"] and not checks["alert_rate"]["off"]


@pytest.mark.parametrize("variant", ["narrow", "wide", "heavy"])
def test_one_poisoned_sensor_cannot_move_the_planted_attack(fleets, variant, capsys):
    """The planted attack's tier under each fleet's candidate: the clean fleet's, the poisoned fleet's combined
    by median (what `learn` does now) and pooled (what it did before)."""
    attack = fleets["attack"]
    clean = tier_of_attack(fleets["clean"][1], attack)
    robust = tier_of_attack(learned(fleets[variant], fleets["active"])[0], attack)
    pooled = tier_of_attack(learned(fleets[variant], fleets["active"], "pooled")[0], attack)
    with capsys.disabled():
        print(f"\n{variant}: planted attack at tier {clean} (clean fleet), {robust} (poisoned, median), "
              f"{pooled} (poisoned, pooled)")  # fmt: skip
    assert clean == 4
    assert robust == clean
    assert pooled <= clean - 2  # the poisoning is real: pooling lets one sensor hide the attack


@pytest.mark.parametrize("variant", ["narrow", "wide"])
def test_each_check_refuses_a_poisoned_candidate_in_one_line(fleets, variant):
    """The candidate pooled from the poisoned fleet passes what `learn` checked before (enough flows, calibration
    on a held-out week from the same sensors, no increase of the alert rate), and is refused by each new check."""
    _, checks = learned(fleets[variant], fleets["active"], "pooled")
    lines = words(checks)
    assert checks["enough_flows"]["passed"] and checks["calibration"]["passed"], lines
    assert checks["passed"] is False
    ar = checks["alert_rate"]
    assert ar["candidate_per_10000"] < ar["active_per_10000"] / 2, ar  # a drop, not an increase
    lo, ca = checks["leave_one_sensor_out"], checks["canaries"]
    assert not ar["passed"] and not lo["passed"] and not ca["passed"]
    assert lo["worst"]["sensor"] == POISONED
    assert ca["failed"] and all(f["candidate_tier"] < f["tier"] - 1 for f in ca["failed"])
    failed = [line for line in lines if line.endswith("FAILED")]
    assert len(failed) == 3, lines
    assert failed[0].startswith("flows at tier 3+") and "tap-a alone" in failed[0]  # an honest sensor's drop
    assert failed[1].startswith("leave one sensor out") and f"furthest {POISONED}" in failed[1]
    assert failed[2].startswith("canaries:") and "fell" in failed[2]


@pytest.mark.parametrize("variant", ["narrow", "wide"])
def test_the_median_candidate_of_a_poisoned_fleet_keeps_its_canaries_and_alert_rate(fleets, variant):
    """Combined by median, the poisoned fleet's candidate alerts as the active baseline does and scores every
    canary at its tier; leave-one-sensor-out still names the sensor that disagrees, so it is not promoted
    without a look."""
    _, checks = learned(fleets[variant], fleets["active"])
    assert checks["canaries"]["passed"] and checks["alert_rate"]["passed"], words(checks)
    assert not checks["leave_one_sensor_out"]["passed"]
    assert checks["leave_one_sensor_out"]["worst"]["sensor"] == POISONED


def test_learn_refuses_to_promote_a_poisoned_fleet(fleets, tmp_path):
    """`baseline learn --promote` on the narrow fleet (no active version: only leave-one-sensor-out can tell):
    exit 1, one line naming the sensor, nothing promoted."""
    archive = fleets["narrow"]
    cfg = tmp_path / "aggregator.yaml"
    cfg.write_text(f"store: {tmp_path / 'store.db'}\narchive: {archive.root}\n")
    p = run("ntds-aggregator", "baseline", "learn", "--config", cfg, "-o", tmp_path / "c.json", "--weeks", "2",
            "--until", LAST_DAY.isoformat(), "--promote")  # fmt: skip
    assert p.returncode == 1, p.stderr
    lines = [line.strip() for line in p.stderr.splitlines()]
    assert "not promoted: a check failed (the candidate is kept; `baseline promote` overrides)" in lines
    [line] = [x for x in lines if x.startswith("leave one sensor out")]
    assert f"furthest {POISONED}" in line and line.endswith("FAILED")
    assert (tmp_path / "c.json").exists()


def test_canaries_are_aimed_at_their_tier_by_the_active_baseline(fleets):
    from aggregator.baseline_learn import canaries

    active = fleets["active"]
    cs = canaries(active)
    assert {c["tier"] for c in cs} == {3, 4} and {c["entry"] for c in cs} >= {"TLS", "DNS"}
    for c in cs:
        s, _ = active.scorers[c["entry"]].score_many(np.array([c["axes"]]))
        assert int(tier_of(s, active.tiers[c["entry"]])[0]) == c["tier"]


def test_fleet_thresholds_read_only_the_tail_yet_match_every_position():
    """`fleet_thresholds` computes the fleet's share only from where some sensor's share falls to TAIL_FROM; the
    thresholds equal those from the weighted median at every position (ties, uneven sensors and weights)."""
    from aggregator.baseline_learn import fleet_thresholds
    from ntds.detect.scoring import MIN_EXCEEDANCES, _thresholds

    def everywhere(scores, weight, sensor, sensor_weight):
        order = np.argsort(scores, kind="stable")
        s, w, k = scores[order], weight[order], sensor[order]
        own = np.bincount(k, weights=w, minlength=len(sensor_weight))
        share = np.zeros((len(sensor_weight), len(s)))
        share[k, np.arange(len(s))] = w / own[k]
        p = weighted_median(np.cumsum(share[:, ::-1], axis=1)[:, ::-1], sensor_weight)
        strictly_above = np.append(p[1:], 0.0)

        def direct(q):
            i = int(np.argmax(strictly_above <= q))
            ok = sensor_weight.sum() * q >= MIN_EXCEEDANCES and len(s) - 1 - i >= MIN_EXCEEDANCES
            return float(s[i]) if ok else None

        return _thresholds(s[p > 0], p[p > 0], direct)

    rng = np.random.default_rng(4)
    for _ in range(20):
        sizes = rng.integers(1, 3000, rng.integers(2, 7))
        sensor = np.repeat(np.arange(len(sizes)), sizes)
        scores = np.round(rng.exponential(1.5, len(sensor)) * rng.choice([1, 5], len(sensor), p=[0.95, 0.05]), 1)
        weight = rng.choice([1.0, 10.0, 100.0], len(sensor))
        sensor_weight = bounded_weights(sizes * 7.0)
        got = fleet_thresholds(scores, weight, sensor, sensor_weight)
        assert got == everywhere(scores, weight, sensor, sensor_weight)
