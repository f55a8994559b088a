"""Baselines that learn: mergeable statistics on the sensor, `baseline learn` on the aggregator.

The pieces in-process against independent computations (numpy quantiles, exact counts, the flows'
own `build`); then end to end with a real `serve` and real `ntds-sensor replay` processes on
127.0.0.1: week 1 replayed, `learn`, `promote`, the sensor activates it, week 2 judged by it, and the
learned baseline against `baseline build` on the same flows (the sensor's own flow records).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from aggregator.archive import TABLES
from aggregator.baseline_learn import candidate, group_stats
from ntds.detect.baseline import AXIS_INDEX, METRICS, Baseline, build, service_keys
from ntds.detect.detection import Scored
from ntds.detect.population import BIN_LOG1P, N_BINS, Histogram, Population, Sample
from ntds.detect.scoring import AXES, SCORERS, make_scorer
from ntds.wire.schema import MAX_FRAME, MESSAGE_TYPES, Message, WireError, decode, encode
from sensor.populations import PopulationStats
from tests.test_baseline_push import BASELINE, PushSite, baseline_ids
from tests.test_transport import run

TYPICAL_TOLERANCE = 0.03
"""Learned log1p medians within this of `build`'s: about one histogram bin (2.3%) plus the 0.1% sample step."""
SCALE_TOLERANCE = 0.15
"""Learned spreads within 15% of `build`'s (discrete axes, such as Down.Up.Ratio, are spread evenly inside a bin)."""
THRESHOLD_TOLERANCE = 0.05
"""Tier thresholds within 5% of `build`'s (plus 0.02 absolute for thresholds near 0)."""


def traffic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(apps, (n, 9) metrics, port class keys) of a mix of two applications with lognormal metrics."""
    apps = np.where(rng.random(n) < 0.7, "TLS", "DNS")
    scale = np.where(apps == "TLS", 1.0, 0.2)[:, None]
    M = rng.lognormal(np.log(np.array([1e3, 1e6, 5e4, 300, 1, 1e4, 200, 500, 1e5])) * scale, 0.8, (n, 9))
    M[:, list(METRICS).index("dnuprat")] = rng.integers(0, 4, n)  # a discrete axis
    port = np.where(apps == "TLS", 443, 53)
    return apps, M, service_keys(np.where(apps == "TLS", 6, 17), np.full(n, 40000), port)


def as_tables(bodies: list[dict]) -> tuple[pa.Table, pa.Table]:
    """The stats bodies through the wire (encode, decode) into the archive's two tables."""
    rows: dict[str, list] = {"population_histograms": [], "population_samples": []}
    for seq, body in enumerate(bodies, 1):
        frame = encode(Message("stats", "tap-01", seq, "2026-11-23T00:00:00Z", body, "0123456789abcdef"))
        assert len(frame) <= MAX_FRAME
        for table, _, row in MESSAGE_TYPES["stats"].archive(decode(frame)):
            rows[table].append(row)
    return tuple(pa.Table.from_pylist(rows[t], schema=TABLES[t]) for t in rows)


def collect(apps, M, classes, tiers, start_ms, interval_s: int = 3600) -> list[dict]:
    stats = PopulationStats(interval_s)
    for i in range(0, len(apps), 512):
        s = slice(i, i + 512)
        stats.add(Scored(start_ms[s], apps[s], classes[s], M[s], tiers[s]))
    return stats.close(None, "test")


# -- the pieces ----------------------------------------------------------------------------


def test_histograms_merge_exactly_and_read_quantiles_within_a_bin():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(8, 2, 30_000), [0.0, np.inf, np.nan]])
    whole, a, b = Histogram(), Histogram(), Histogram()
    whole.add_many(values)
    a.add_many(values[:10_000])
    b.add_many(values[10_000:])
    a.merge(b)
    assert np.array_equal(a.counts, whole.counts) and a.non_finite == whole.non_finite == 2
    assert (a.low, a.high) == (0.0, float(np.nanmax(values[np.isfinite(values)])))
    finite = values[np.isfinite(values)]
    assert a.total == pytest.approx(finite.sum()) and a.count == len(finite)
    logs = np.log1p(finite)
    for q in (0.25, 0.5, 0.75):
        assert abs(whole.quantile_log1p(q) - np.quantile(logs, q)) < BIN_LOG1P
    median = np.median(logs)
    assert abs(whole.mad_log1p(whole.quantile_log1p(0.5)) - np.median(np.abs(logs - median))) < BIN_LOG1P
    assert sum(whole.coarse(25)) == len(finite)


def test_the_priority_sample_estimates_any_count_without_bias():
    """However the sample was weighted, the flows it stands for add up to the true counts above any threshold
    of a score the sensor never computed (here the plain sum of the axes)."""
    rng = np.random.default_rng(5)
    n = 200_000
    X = rng.lognormal(3, 1, (n, len(AXES)))
    tiers = np.minimum(rng.geometric(0.6, n) - 1, 5)  # what some earlier baseline thought
    truth_score = np.log1p(X).sum(axis=1)
    pooled_axes, pooled_w = [], []
    for part in np.array_split(np.arange(n), 100):  # 100 intervals, each its own sample
        s = Sample()
        s.add_many(X[part], tiers[part], rng)
        assert np.bincount(s.tiers, minlength=6).max() == s.k and s.seen.sum() == len(part)
        pooled_axes.append(s.axes / 1000.0)
        pooled_w.append(s.stands_for())
    score = np.vstack(pooled_axes).sum(axis=1)
    w = np.concatenate(pooled_w)
    assert abs(w.sum() - n) / n < 0.02
    for t in np.quantile(truth_score, [0.5, 0.9, 0.99]):
        true = (truth_score > t).sum()
        assert abs(w[score > t].sum() - true) / true < 0.15, (t, true)


def test_stats_messages_stay_under_the_frame_limit_and_their_parts_add_up():
    """Many groups fill several messages; a group too big for one message (counts of 10**8 in every bin) is cut
    into parts; the archive rows add up to exactly what was counted."""
    rng = np.random.default_rng(9)
    n = 40_000
    M = 10 ** rng.uniform(0, 12, (n, len(METRICS)))
    apps = np.array([f"APP{i % 150}" for i in range(n)])
    classes = service_keys(np.full(n, 6), np.full(n, 40000), np.full(n, 443))
    bodies = collect(apps, M, classes, rng.integers(0, 6, n), np.zeros(n, dtype=np.int64))
    assert len(bodies) > 2
    groups = group_stats(*as_tables(bodies))
    assert sorted(groups.apps) == sorted(set(apps)) and groups.flows.sum() == n
    for j in range(len(METRICS)):
        direct = Histogram()
        direct.add_many(M[:, j])
        assert np.array_equal(groups.counts[:, j].sum(axis=0), direct.counts)
        assert groups.moments[:, j, 1].sum() == pytest.approx(M[:, j].sum())
    assert groups.sample_weight.sum() == pytest.approx(n, rel=1e-9)
    # one huge group
    stats = PopulationStats(3600)
    pop = Population(tuple(METRICS), AXIS_INDEX)
    pop.add_many(M[:1000], np.zeros(1000, dtype=int), rng)
    for h in pop.hists:
        h.counts[:] = 10**8
    pop.flows = N_BINS * 10**8
    stats._buckets[0] = {("HUGE", "*TCP/443*"): pop}
    bodies = stats.close(None, "test")
    assert len(bodies) > 1 and all(len(b["groups"]) == 1 for b in bodies)
    huge = group_stats(*as_tables(bodies))
    assert huge.flows.tolist() == [pop.flows] and (huge.counts == 10**8).all()


def test_stats_that_do_not_add_up_are_wire_errors():
    body = json.loads(json.dumps(MESSAGE_TYPES["stats"].example))
    g = body["groups"][0]
    bad = [
        g | {"metrics": g["metrics"] * 2},
        g | {"metrics": [g["metrics"][0] | {"metric": "colour"}]},
        g | {"metrics": [g["metrics"][0] | {"first_bin": 1199}]},
        g | {"metrics": [g["metrics"][0] | {"first_bin": 0, "bins": [-1200, 1]}]},
        g | {"metrics": [g["metrics"][0] | {"min": 500.0}]},
        g | {"sample": g["sample"] | {"tiers": [0]}},
        g | {"sample": g["sample"] | {"seen": [0, 1, 0, 0, 0, 0]}},
        g | {"sample": g["sample"] | {"tiers": [6, 0]}},
    ]
    for group in bad:
        m = Message("stats", "tap-01", 1, "2026-11-23T00:00:00Z", body | {"groups": [group]}, "0123456789abcdef")
        with pytest.raises(WireError):
            encode(m)


def test_every_scorer_learns_from_histograms_or_says_why_not():
    rng = np.random.default_rng(11)
    X = rng.lognormal(5, 1.5, (20_000, len(AXES)))
    X[:, 3] = rng.integers(0, 3, len(X))
    hists = []
    for j in range(len(AXES)):
        h = Histogram()
        h.add_many(X[:, j])
        hists.append(h)
    for name in SCORERS:
        scorer = make_scorer(name)
        if not scorer.LEARNS_FROM_HISTOGRAMS:
            with pytest.raises(ValueError, match="needs the flows themselves"):
                scorer.fit_histograms(hists)
            continue
        learned = scorer.fit_histograms(hists)
        exact = make_scorer(name).fit(X)
        assert np.allclose(np.log1p(learned.typical()), np.log1p(exact.typical()), atol=TYPICAL_TOLERANCE)
        a, _ = learned.score_many(X[:1000])
        b, _ = exact.score_many(X[:1000])
        assert np.allclose(a, b, rtol=SCALE_TOLERANCE, atol=0.05)


def close_to_build(learned: dict, built: dict, entries: list[str]) -> None:
    """The documented tolerance: typical values, spreads and the tiers each entry can claim."""
    for name in entries:
        lm, bm = learned["applications"][name], built["applications"][name]
        assert lm["count"] == bm["count"] and lm["max_tier"] == bm["max_tier"], name
        assert np.allclose(lm["model"]["log_median"], bm["model"]["log_median"], atol=TYPICAL_TOLERANCE), name
        assert np.allclose(lm["model"]["log_scale"], bm["model"]["log_scale"], rtol=SCALE_TOLERANCE), name
        k = max(bm["max_tier"], 1)
        assert np.allclose(lm["tiers"][:k], bm["tiers"][:k], rtol=THRESHOLD_TOLERANCE, atol=0.02), name


def test_learned_from_statistics_matches_build_on_the_same_flows():
    rng = np.random.default_rng(13)
    n = 60_000
    apps, M, classes = traffic(rng, n)
    s_apps, s_metrics, s_classes = traffic(rng, 5000)
    starter = Baseline(build(s_apps, s_metrics, classes=s_classes))
    tiers = starter.score(apps, M, classes).raw_tier
    start = np.sort(rng.integers(0, 7 * 86_400_000, n))  # a week of hourly intervals
    groups = group_stats(*as_tables(collect(apps, M, classes, tiers, start)))
    learned = candidate(groups, min_count=100, feature_profile="unicauca", inputs=[], extra_meta={})
    built = build(apps, M, classes=classes)
    assert set(learned["applications"]) == set(built["applications"])
    close_to_build(learned, built, list(built["applications"]))
    assert Baseline(learned).score(apps, M, classes).tier.shape == (n,)  # it loads and scores as a sensor's would


# -- end to end ----------------------------------------------------------------------------


class LearnSite(PushSite):
    """Campus traffic judged normally (alerts grouped, host detectors on), statistics every hour, flow records;
    with `every_flow` set, the transport tests' setting of one alert per scored flow (to count them)."""

    every_flow = False

    def sensor_config(self, key: str = "tap", spool: str = "spool") -> Path:
        path = super().sensor_config(key, spool)
        if self.every_flow:
            return path
        values = yaml.safe_load(path.read_text()) | {
            "min_alert_tier": 3, "min_flow_tier": 3, "alert_grouping": {}, "detectors": {},
            "summary_interval_s": 3600, "flow_records_dir": str(self.root / "records"),
        }  # fmt: skip
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
        return path


@pytest.fixture
def learn_site(tmp_path):
    s = LearnSite(tmp_path)
    with s.config.open("a") as fh:
        fh.write("archive_interval_s: 1\n")
    yield s
    s.stop()


def test_learn_promote_push_and_judge_the_next_week(learn_site, tmp_path):
    from pcaps import campus

    site = learn_site
    training = campus.write(tmp_path / "training.pcap", days=3, training=True)  # Sun 15 .. Tue 17 November
    agg = site.aggregator()
    first = site.replay(training)
    assert first.wait(180) == 0, first.stderr.read()
    with sqlite3.connect(site.store) as db:
        assert db.execute("SELECT COUNT(*) FROM messages WHERE type = 'stats'").fetchone()[0] > 0
    agg.terminate()
    assert agg.wait(60) == 0  # the final export puts every stored message in the archive

    # learn: Sunday and Monday learned, Tuesday held out and checked on
    cand = tmp_path / "learned.json"
    p = run("ntds-aggregator", "baseline", "learn", "--config", site.config, "--weeks", "1", "--until", "2026-11-17",
            "-o", cand, "--min-count", "30", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["learned"]["from"] == "2026-11-11" and out["learned"]["to"] == "2026-11-16"
    assert out["learned"]["held_out"] == ["2026-11-17", "2026-11-17"] and out["learned"]["sensors"] == ["tap-01"]
    checks = out["checks"]
    assert checks["enough_flows"]["passed"] is False  # a small campus: fewer than 10,000 flows
    assert checks["passed"] is False and out["promoted"] is None
    # nothing promoted: --promote refuses a candidate whose checks fail, and says so
    p = run("ntds-aggregator", "baseline", "learn", "--config", site.config, "--weeks", "1", "--until", "2026-11-17",
            "-o", tmp_path / "again.json", "--min-count", "30", "--promote")  # fmt: skip
    assert p.returncode == 1 and "not promoted: a check failed" in p.stderr and "enough flows" in p.stderr
    assert json.loads(run("ntds-aggregator", "baseline", "versions", "--json", "--config", site.config).stdout
                      or "null") is None  # fmt: skip

    # the candidate against `baseline build` on the same flows: the sensor's own flow records of those days
    doc = json.loads(cand.read_text())
    assert Baseline.load(cand).id == f"{doc['built']} robust"
    learned_all = group_stats_of(site, date(2026, 11, 11), date(2026, 11, 17))
    full = candidate(learned_all, min_count=30, feature_profile="unicauca", inputs=[], extra_meta={})
    built = tmp_path / "built.json"
    records = sorted(str(f) for f in (tmp_path / "records").glob("*.parquet"))
    p = run("ntds-aggregator", "baseline", "build", *records, "-o", built, "--min-count", "30")
    assert p.returncode == 0, p.stderr
    built_doc = json.loads(built.read_text())
    assert set(full["applications"]) == set(built_doc["applications"])
    close_to_build(full, built_doc, list(built_doc["applications"]))

    # the alert rate each would have produced: estimated from the statistics alone, and counted on the flow
    # records of the same days (a campus this small has fewer flows per tier and hour than the sample keeps, so
    # the estimate is the count, give or take a flow whose axes round across a threshold)
    p = run("ntds-aggregator", "baseline", "diff", BASELINE, cand, "--config", site.config, "--flows", *records,
            "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["statistics"]["days"] == ["2026-11-11", "2026-11-17"] and d["statistics"]["sensors"] == ["tap-01"]
    for which in ("current", "candidate"):
        estimated, counted = d["statistics"][which], d["flows"][which]
        assert estimated["scored"] == counted["scored"]
        assert all(abs(a - b) <= 1 for a, b in zip(estimated["at_least_tier"], counted["at_least_tier"])), (
            which, estimated, counted)  # fmt: skip

    # promote by hand; the running sensor gets it; week 2 is judged by it
    site.aggregator()
    p = site.promote(cand, "learned from the campus's first days")
    assert p.returncode == 0, p.stderr
    new_id = f"{doc['built']} robust"
    sensor = site.replay_realtime(site.flows(3))
    assert sensor.wait(120) == 0
    assert f"activated baseline {doc['built']}" in sensor.stderr.read()
    before = len(baseline_ids(site.store, "alert"))
    site.every_flow = True
    second = site.replay(site.flows(8))
    assert second.wait(120) == 0, second.stderr.read()
    week2 = baseline_ids(site.store, "alert")[before:]
    assert len(week2) == 8 and all(i == new_id for i in week2), week2
    stats_ids = {json.loads(b)["baseline_id"] for (b,) in sqlite3.connect(site.store).execute(
        "SELECT body FROM messages WHERE type = 'stats' ORDER BY id DESC LIMIT 1")}  # fmt: skip
    assert stats_ids == {new_id}  # and the statistics say which baseline weighted their samples


def group_stats_of(site: LearnSite, first: date, last: date):
    from aggregator.archive import Archive
    from aggregator.baseline_learn import read_groups

    groups, names = read_groups(Archive(site.root / "archive"), first, last, None)
    assert names == ["tap-01"]
    return groups


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "the archive holds no statistics yet"),
        (["--weeks", "0"], "a number of weeks from 1 to 520"),
        (["--until", "2026-02-30"], "a day as YYYY-MM-DD"),
        (["--profile", "nonsense"], "invalid choice"),
        (["--combine-sensors", "mean"], "invalid choice"),
    ],
)
def test_learn_bad_input_is_one_line(tmp_path, args, words):
    cfg = tmp_path / "aggregator.yaml"
    cfg.write_text(f"store: {tmp_path / 'store.db'}\narchive: {tmp_path / 'archive'}\n")
    p = run("ntds-aggregator", "baseline", "learn", "--config", cfg, "-o", tmp_path / "c.json", *args)
    assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "c.json").exists()
