"""Scorers, tiers and the baseline file, checked against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ntds.detect.baseline import (
    ALL_TRAFFIC,
    AXIS_INDEX,
    METRICS,
    Baseline,
    build,
    class_name,
    entry_kind,
    save,
    service_keys,
    supported_tier,
)
from ntds.detect.scoring import AXES, SCORERS, PseudoSigma, RobustLog, Scorer, make_scorer, tier_of, tier_thresholds
from ntds.errors import InputError


def test_pseudo_sigma_by_hand():
    # axis 0: values 1,1,1,4,10 -> mode 1, max-mode 9, mode-min 0 -> pseudo-sigma 9/6 = 1.5
    # axis 1: values 5,2,5,8,5 -> mode 5, pos 3, neg 3 -> mean 3 / 6 = 0.5
    # axes 2..6: constant 7 -> no spread
    X = np.full((5, 7), 7.0)
    X[:, 0] = [1, 1, 1, 4, 10]
    X[:, 1] = [5, 2, 5, 8, 5]
    ps = PseudoSigma(combine="mean").fit(X)
    assert ps.mode_[:2].tolist() == [1.0, 5.0]
    assert ps.sigma_[:2].tolist() == [1.5, 0.5]
    x = np.array([4.0, 6.0, 7, 7, 7, 7, 9])
    combined, per_axis = ps.score_one(x)
    # |4-1|/1.5 = 2, |6-5|/0.5 = 2, constant axes 0, a new value on a constant axis = 5 + 1
    assert per_axis.tolist() == [2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 6.0]
    assert combined == pytest.approx((2 + 2 + 6) / 7)
    assert PseudoSigma(combine="max").fit(X).score_one(x)[0] == 6.0


def test_pseudo_sigma_mode_ties_take_the_smallest():
    X = np.tile(np.array([[3.0, 1, 1, 1, 1, 1, 1]]), (4, 1))
    X[:2, 0] = 2.0  # 2 and 3 twice each
    assert PseudoSigma().fit(X).mode_[0] == 2.0


def test_robust_by_hand():
    X = np.zeros((5, 7))
    X[:, 1] = [0, 1, 3, 7, 15]  # log1p: 0, ln2, ln4, ln8, ln16 -> median ln4, |dev| = ln4, ln2, 0, ln2, ln4
    r = RobustLog().fit(X)
    assert r.median_[1] == pytest.approx(math.log(4))
    assert r.scale_[1] == pytest.approx(1.4826 * math.log(2))
    assert r.scale_[0] == RobustLog.MIN_SCALE  # constant axis: the floor
    _, per_axis = r.score_one([0, 63, 0, 0, 0, 0, 0])  # log1p(63) = ln 64 = 3 ln 4... deviation ln16
    assert per_axis[1] == pytest.approx(math.log(16) / (1.4826 * math.log(2)))
    assert r.typical()[1] == pytest.approx(3.0)


@pytest.mark.parametrize("cls", list(SCORERS.values()), ids=list(SCORERS))
def test_batch_equals_one_by_one_and_learn_one_equals_fit(cls):
    rng = np.random.default_rng(7)
    X = rng.lognormal(3, 1, size=(300, 7)).round(1)
    batch = cls().fit(X)
    scores, per_axis = batch.score_many(X[:50])
    for i in range(50):
        s, pa = batch.score_one(X[i])
        assert s == scores[i] and (pa == per_axis[i]).all()
    streamed = cls()
    for row in X:
        streamed.learn_one(row)
    assert (streamed.score_many(X[:50])[0] == scores).all()


def test_tier_thresholds_calibrated_on_a_large_population():
    rng = np.random.default_rng(1)
    scores = rng.exponential(1.0, 1_000_000)
    t = tier_thresholds(scores)
    fresh = rng.exponential(1.0, 1_000_000)
    tiers = tier_of(fresh, t)
    for k in range(1, 5):
        share = (tiers >= k).mean()
        assert 0.5 * 10**-k <= share <= 2 * 10**-k, (k, share)
    # k = 5 rests on the 10 largest of a million: close to the exponential quantile -ln(1e-5)
    assert t[4] == pytest.approx(-math.log(1e-5), rel=0.15)


def test_tiers_are_monotone_in_score():
    rng = np.random.default_rng(3)
    t = tier_thresholds(rng.lognormal(0, 1, 5000))
    assert all(t[i] <= t[i + 1] for i in range(4))
    s = np.sort(rng.lognormal(0, 1.5, 10000))
    tiers = tier_of(s, t)
    assert (np.diff(tiers) >= 0).all()
    assert tiers[0] == 0 and tiers[-1] >= 3


def _doc(method="robust", profile="unicauca"):
    rng = np.random.default_rng(11)
    n = 4000
    apps = np.array(["WEB"] * 3000 + ["DNS"] * 990 + ["RARE"] * 10)
    M = rng.lognormal(5, 1, size=(n, len(METRICS)))
    return build(apps, M, method=method, min_count=100, feature_profile=profile)


def _web(doc: dict, **changes) -> dict:
    """The document with the WEB entry changed."""
    return {**doc, "applications": {**doc["applications"], "WEB": {**doc["applications"]["WEB"], **changes}}}


def test_unseen_and_rare_applications_use_all_traffic(tmp_path):
    doc = _doc()
    assert set(doc["applications"]) == {"WEB", "DNS", ALL_TRAFFIC}
    assert [r["application"] for r in doc["ranking"]] == ["WEB", "DNS", "RARE"]
    assert doc["ranking"][0]["share_pct"] == 75.0 and doc["ranking"][0]["inv_likelihood"] == 1
    assert doc["ranking"][-1]["cumulative_pct"] == pytest.approx(100.0)
    save(doc, tmp_path / "b.json")
    b = Baseline.load(tmp_path / "b.json", "unicauca")
    M = np.full((3, len(METRICS)), 150.0)
    scored = b.score(["WEB", "RARE", "NEVER-SEEN"], M)
    assert scored.entry == ["WEB", ALL_TRAFFIC, ALL_TRAFFIC]
    # the same flow scores the same against the all-traffic entry whatever its name
    assert scored.score[1] == scored.score[2]


def test_explanation_names_the_most_unusual_axis(tmp_path):
    save(_doc(), tmp_path / "b.json")
    b = Baseline.load(tmp_path / "b.json")
    x = np.exp(np.full(len(METRICS), 5.0))
    x[list(METRICS).index("duration")] = 1e9  # far beyond anything seen
    scored = b.score(["WEB"], x[None, :])
    expl = b.explain("WEB", x[AXIS_INDEX], scored.per_axis[0])
    assert expl[0]["axis"] == "duration" and expl[0]["value"] == 1e9
    assert expl[0]["score"] == pytest.approx(scored.per_axis[0][AXES.index("duration")], abs=1e-4)
    assert expl[0]["text"].startswith("duration 16.7 min, typically ")  # 1e9 µs = 1,000 s, in words
    # 3,000 WEB flows show a 1 in 100 event, not rarer: the far tier is capped there, and said so
    assert scored.tier[0] == 2 == supported_tier(3000) and scored.capped[0]


def test_supported_tier_by_hand():
    # tier k needs MIN_EXCEEDANCES (5) x 10**k flows
    assert [supported_tier(n) for n in (0, 49, 50, 499, 500, 4999, 5000, 49_999, 50_000, 500_000, 10**9)] == [
        0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5]  # fmt: skip


def test_fallback_entries_are_fitted_on_the_flows_they_judge(tmp_path):
    """application -> port class -> all traffic, each fitted on exactly the flows it will judge."""
    rng = np.random.default_rng(4)
    big = ["WEB"] * 3000 + ["DNS"] * 2000
    rare = [f"RARE{i}" for i in range(600)]  # 600 applications of one flow each, all on TCP/445
    odd = [f"ODD{i}" for i in range(150)]  # and 150 on ports of their own
    apps = np.array(big + rare + odd)
    n = len(apps)
    proto = np.full(n, 6)
    sport = rng.integers(40000, 60000, n)
    dport = np.concatenate([np.full(3000, 443), np.full(2000, 53), np.full(600, 445), rng.integers(1024, 30000, 150)])
    proto[3000:5000] = 17
    M = rng.lognormal(5, 1, size=(n, len(METRICS)))
    doc = build(apps, M, classes=service_keys(proto, sport, dport), min_count=100)
    entries = doc["applications"]
    assert set(entries) == {"WEB", "DNS", "*TCP/445*", ALL_TRAFFIC}
    assert entries["*TCP/445*"]["count"] == 600 and entries[ALL_TRAFFIC]["count"] == 150
    for name, rows in (("*TCP/445*", slice(5000, 5600)), (ALL_TRAFFIC, slice(5600, n))):
        assert entries[name]["model"] == RobustLog().fit(M[rows][:, AXIS_INDEX]).params()
    save(doc, tmp_path / "b.json")
    b = Baseline.load(tmp_path / "b.json")
    classes = service_keys([6, 6, 6, 17, 6], [50000, 50000, 445, 50000, 50000], [443, 445, 50123, 9999, 8081])
    got = b.entries(["WEB", "NEW", "NEW", "NEW", "DNS"], classes)
    # a known application keeps its own entry; unseen ones on 445 (either direction) go to the port class
    assert got == ["WEB", "*TCP/445*", "*TCP/445*", ALL_TRAFFIC, "DNS"]
    assert entry_kind("*TCP/445*") == "port class TCP/445" and class_name(int(classes[1])) == "*TCP/445*"


def test_tiers_hold_on_held_out_traffic():
    """Calibration measured on flows the baseline never saw: the share of a fresh sample at tier k or above
    stays near 1 in 10**k where the entry supports tier k, and nothing is claimed beyond."""
    rng = np.random.default_rng(8)
    train = rng.lognormal(5, 1, size=(60_000, len(METRICS)))
    held_out = rng.lognormal(5, 1, size=(400_000, len(METRICS)))
    doc = build(np.array(["A"] * len(train)), train, min_count=100)
    b = Baseline(doc)
    assert doc["applications"]["A"]["max_tier"] == 4
    tiers = b.score(np.array(["A"] * len(held_out)), held_out).tier
    for k in (1, 2, 3):
        share = float((tiers >= k).mean())
        assert 10.0**-k / 2 <= share <= 10.0**-k * 2, (k, share)
    assert int((tiers >= 5).sum()) == 0


def test_version_1_baselines_still_load(tmp_path):
    doc = _doc()
    doc["version"] = 1
    for e in doc["applications"].values():
        e.pop("max_tier"), e.pop("judges")
    save(doc, tmp_path / "v1.json")
    b = Baseline.load(tmp_path / "v1.json")
    assert b.caps["WEB"] == supported_tier(3000) and b.class_keys == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: "not json {", "invalid JSON"),
        (lambda d: json.dumps(d).replace('"count": 3000', '"count": ' + "9" * 400), "more than 20 digits"),
        (lambda d: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (lambda d: json.dumps(_web(d, model={"log_median": [1.0] * 6, "log_scale": [1.0] * 7})), "log_median"),
        (lambda d: json.dumps(_web(d, model={"log_median": [1.0] * 7, "log_scale": [0.0] * 7})), "positive"),
        (lambda d: json.dumps(_web(d, model={"log_median": [1.0] * 7})), "model parameters"),
        (lambda d: json.dumps(_web(d, tiers=[0, 0, 0, 0, 0])), "rarest must be above 0"),
        (lambda d: json.dumps(_web(d, tiers=[1, 2, 3, 4])), "expected 5"),
        (lambda d: json.dumps(d).replace('"count": 3000', '"count": NaN'), "non-finite"),
        (lambda d: json.dumps(_web(d, count=-5)), "count"),
        (lambda d: json.dumps({**d, "method": "magic"}), "method 'magic'"),
        (lambda d: json.dumps({"format": "something-else"}), "not an ntds baseline"),
        (lambda d: json.dumps({**d, "version": 99}), "version 99"),
        (lambda d: json.dumps({**d, "feature_profile": "corrected"}), "feature profile 'corrected'"),
        (lambda d: json.dumps({**d, "applications": {"WEB": d["applications"]["WEB"]}}), "corrupt baseline"),
        (
            lambda d: json.dumps(
                {
                    **d,
                    "applications": {
                        **d["applications"],
                        "WEB": {**d["applications"]["WEB"], "tiers": [3, 2, 1, 0, 0]},
                    },
                }
            ),
            "corrupt baseline",
        ),
    ],
)
def test_bad_baselines_are_refused_with_one_line(tmp_path, mutate, message):
    p = tmp_path / "bad.json"
    p.write_text(mutate(_doc()))
    with pytest.raises(InputError) as e:
        Baseline.load(p, feature_profile="unicauca")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_baseline_file_is_plain_json_without_nan(tmp_path):
    rng = np.random.default_rng(5)
    M = rng.lognormal(5, 1, size=(500, len(METRICS)))
    M[:10, 0] = np.inf  # zero-duration flows: Flow.Bytes.s is Infinity
    doc = build(np.array(["A"] * 500), M, min_count=10)
    save(doc, tmp_path / "b.json")
    text = (tmp_path / "b.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["applications"]["A"]["metrics"]["flowrate"]["non_finite"] == 10


@pytest.mark.parametrize("name", list(SCORERS))
def test_every_registered_scorer_keeps_the_contract(name):
    """A new scorer is tested by registering it: the contract holds for every entry of SCORERS."""
    cls = SCORERS[name]
    assert issubclass(cls, Scorer) and cls.name == name
    rng = np.random.default_rng(11)
    X = rng.lognormal(4, 1.2, size=(2000, len(AXES))).round(1)
    scorer = make_scorer(name).fit(X)
    scores, per_axis = scorer.score_many(X)
    assert scores.shape == (len(X),) and per_axis.shape == X.shape
    assert np.isfinite(scores).all() and (per_axis >= 0).all()
    assert scorer.typical().shape == (len(AXES),)
    # flows far outside the population score higher than the population's own median flow
    far = np.full((1, len(AXES)), X.max() * 100)
    assert scorer.score_many(far)[0][0] > np.median(scores)
    # parameters round-trip through JSON exactly
    again = cls(combine=scorer.combine).load(json.loads(json.dumps(scorer.params())))
    s2, pa2 = again.score_many(X)
    assert np.array_equal(s2, scores) and np.array_equal(pa2, per_axis)
    # learn_one then score equals fit on the same flows
    online = cls()
    for row in X[:100]:
        online.learn_one(row)
    assert np.allclose(online.score_many(X[:10])[0], cls().fit(X[:100]).score_many(X[:10])[0])
    with pytest.raises(ValueError):
        cls().score_many(X[:1])  # nothing learned yet
