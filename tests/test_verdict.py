"""One ranked verdict per endpoint-window: the combined score, its gates, the alarm budget, allow-lists."""
import bisect
import dataclasses
import json
import math
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.detectors.endpoint import DetectorConfig, score_table
from beamlytics.detectors.population import (COMBINATION_RULES, FeatureTail, Population, combination_terms,
                                             feature_p_reaching, pools_of, rule_terms)
from beamlytics.detectors.verdict import (ALARM, NO_MODEL, NORMAL, OWN_HISTORY, TOO_FEW_RECORDS, UNJUDGED,
                                          VerdictSettings, combined_p, judge, score_of,
                                          scores_of)
from beamlytics.hunts.allow import AllowList, AllowListError
from beamlytics.pipelines import cli
from tests.test_population import CONFIG, windows_table

T0 = 1_700_000_000_000_000


def test_combined_p_is_the_bonferroni_corrected_minimum_by_hand():
    assert combined_p(np.array([0.01, 0.2, math.nan])) == pytest.approx(0.02)  # 2 judged features × 0.01
    assert combined_p(np.array([0.6, 0.9])) == 1.0
    assert math.isnan(combined_p(np.array([math.nan])))
    assert score_of(0.02) == pytest.approx(1.69897, abs=1e-5)


def test_score_is_finite_and_monotone_in_every_feature():
    assert math.isfinite(score_of(combined_p(np.array([0.0, 0.5])))) and score_of(0.0) == pytest.approx(323.306, 1e-3)
    rng = np.random.default_rng(5)
    for _ in range(500):
        p = rng.random(4) ** 8
        lower = p.copy()
        lower[rng.integers(4)] *= rng.random()
        assert score_of(combined_p(lower)) >= score_of(combined_p(p))


def test_scores_of_many_p_are_score_of_each_bit_for_bit():
    """libm's −log10 per value is the reference: subnormals, exact powers of ten, 0, 1, repeats, any order."""
    rng = np.random.default_rng(14)
    p = np.concatenate([
        rng.random(20_000) ** rng.uniform(1, 400, 20_000),  # down to ~1e-300
        np.ldexp(1.0, -rng.integers(1023, 1075, 2_000)),  # subnormals down to 5e-324
        10.0 ** -np.arange(0, 324.0), [0.0, -0.0, 1.0, 5e-324, 2.5e-324, 1e-323],
        rng.choice(np.array([0.5, 0.005, 1e-3]), 3_000),  # repeats
    ])
    rng.shuffle(p)
    assert [value.hex() for value in scores_of(p).tolist()] == [score_of(value).hex() for value in p.tolist()]
    assert scores_of(np.empty(0)).shape == (0,)


def score_rows(rows):
    base = {"table": "dns", "key_kind": "c_ip", "window_end": 0, "direction": None, "threshold": None,
            "params": "{}", "score": None}
    full = [{**base, **row, "window_end": row["window_start"] + 60_000_000} for row in rows]
    return pa.Table.from_pylist(full, schema=schemas.ANOMALIES)


POPULATION = Population({("dns", "c_ip", "records"): FeatureTail.fit(np.arange(1000.0))})


def row(key, value, status="calibrating", detector="gaussian", records=50, evidence="{}", start=T0):
    return {"key": key, "feature": "records", "value": value, "status": status, "detector": detector,
            "records": records, "evidence": evidence, "window_start": start}


def test_the_own_detector_takes_over_once_calibrated():
    verdicts, _, _ = judge(score_rows([
        row("a", 900.0),  # calibrating: the population says p = 100/1000 (its body: a plain share)
        row("b", 900.0, status="normal"),  # gaussian calibrated, calls it normal: not fired
        row("c", 900.0, status="anomaly"),  # gaussian calibrated, anomalous: the population's p
        row("d", 900.0, status="excess", detector="spot", evidence=json.dumps({"probability": 1e-5})),
        row("e", 999.5, status="excess", detector="spot", evidence=json.dumps({"probability": 0.3})),
    ]), POPULATION, VerdictSettings(alarm_rate=0.15))
    by_key = {v["key"]: v for v in verdicts.to_pylist()}
    assert by_key["a"]["p_value"] == pytest.approx(100 / 1000) and by_key["a"]["status"] == ALARM
    assert by_key["b"]["p_value"] == 1.0 and by_key["b"]["status"] == NORMAL
    assert by_key["c"]["p_value"] == pytest.approx(100 / 1000)
    # spot: extreme for its own tail (1e-5) and its peers (0.1) at once: the larger p
    assert by_key["d"]["p_value"] == pytest.approx(100 / 1000) and by_key["d"]["evidence"][0]["judged_by"] == OWN_HISTORY
    assert by_key["e"]["p_value"] == pytest.approx(0.3)  # extreme among peers, usual for itself: not an alarm


def test_small_windows_and_windows_nobody_can_judge_are_counted_with_the_reason():
    verdicts, reported, counts = judge(score_rows([row("a", 999.0, records=2), row("b", 5.0)]), Population({}),
                                       VerdictSettings())
    by_key = {v["key"]: v for v in verdicts.to_pylist()}
    assert (by_key["a"]["status"], by_key["a"]["reason"]) == (UNJUDGED, TOO_FEW_RECORDS)
    # No population (the streaming scorer) and a calibrating own detector: nothing can judge it.
    assert (by_key["b"]["status"], by_key["b"]["reason"]) == (UNJUDGED, NO_MODEL)
    assert counts["unjudged_too_few_records"] == 1 and counts["unjudged_no_model"] == 1 and reported.num_rows == 0


def test_alarm_rate_on_a_generated_benign_background_stays_within_budget():
    windows = windows_table(hosts=300, minutes=30, seed=11)
    config = DetectorConfig("gaussian", {}, ("records", "distinct_names"))
    verdicts, _, counts = judge(score_table(windows, config), Population.of_windows(windows, config.features),
                                VerdictSettings())
    judged = counts["verdicts"] - counts["unjudged_too_few_records"] - counts["unjudged_no_model"]
    assert judged == 9000
    assert counts["alarms"] / judged <= 0.005
    loose, _, loose_counts = judge(score_table(windows, config), Population.of_windows(windows, config.features),
                                   VerdictSettings(alarm_rate=0.05))
    assert loose_counts["alarms"] > counts["alarms"]  # the trade: a higher rate flags more


@pytest.mark.parametrize("entry, key, feature, allowed", [
    ("10.0.0.5", "10.0.0.5", "records", True),
    ("10.0.0.0/24", "10.0.0.77", "records", True),
    ("10.0.0.0/24", "10.0.1.77", "records", False),
    ("2001:db8::/32", "2001:db8::1", "records", True),
    ("example.com", "example.com", "records", True),
    ("*.example.com", "example.com", "records", True),  # the wildcard includes the apex
    ("*.example.com", "a.b.example.com", "records", True),
    ("*.example.com", "badexample.com", "records", False),
    ("10.0.0.5 records", "10.0.0.5", "records", True),  # a (host, feature) pair
    ("10.0.0.5 records", "10.0.0.5", "distinct_names", False),
])
def test_allow_list_entries(entry, key, feature, allowed):
    assert AllowList.parse([entry]).suppresses_endpoint(key, feature) is allowed


def test_allowed_alarms_are_verdicts_but_not_reported():
    rows = score_rows([row("10.0.0.5", 999.0), row("10.0.0.6", 999.0)])
    settings = VerdictSettings(alarm_rate=0.01, allow=AllowList.parse(["10.0.0.5 records"]))
    verdicts, reported, counts = judge(rows, POPULATION, settings)
    assert {v["key"]: v["allowed"] for v in verdicts.to_pylist()} == {"10.0.0.5": True, "10.0.0.6": False}
    assert reported.column("key").to_pylist() == ["10.0.0.6"]
    assert (counts["alarms"], counts["allowed"]) == (1, 1)


def test_bad_allow_list_or_alarm_rate_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "allow.txt"
    bad.write_text("10.0.0.5 nonsense\n")
    logs = tmp_path / "dns.log"
    logs.write_text("")
    for extra in (["--allow", str(bad)], ["--alarm-rate", "0"]):
        assert cli.main(["detect", "--table", "dns", "--output", str(tmp_path / "out"), *extra, str(logs)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("beamlytics detect: error:")
    with pytest.raises(AllowListError):
        AllowList.parse(["10.0.0.5 nonsense"])


# The combined statistic: Σ 1 / p (m over the harmonic mean p-value), calibrated on the population's own windows.

def two_feature_windows(a, b, start=T0):
    """One dns c_ip endpoint-window per (a, b) pair, features `records` = a and `distinct_names` = b."""
    return pa.table({
        "table": ["dns"] * len(a), "key_kind": ["c_ip"] * len(a), "key": [f"h{i}" for i in range(len(a))],
        "window_start": pa.array([start] * len(a), pa.timestamp("us", tz="UTC")),
        "records": np.asarray(a, float), "distinct_names": np.asarray(b, float)})


def rows_for(window_values, records=50):
    return score_rows([{**row(key, value, records=records), "feature": feature}
                       for key, values in window_values.items() for feature, value in values.items()])


def test_fully_dependent_features_pay_no_bonferroni_factor_by_hand():
    # Two copies of one feature over 1,000 windows: 0, 1, ..., 999. The window at 900 has p = 100/1000 on each
    # (the share at or above it); its statistic 1/0.1 + 1/0.1 = 20 is reached by exactly the 100 population windows
    # at 900 or more (the statistic rises with the value), so its p is 0.1, where Bonferroni would give 0.2.
    values = np.arange(1000.0)
    population = Population.of_windows(two_feature_windows(values, values), ("records", "distinct_names"))
    verdicts, _, _ = judge(rows_for({"x": {"records": 900.0, "distinct_names": 900.0}}), population,
                           VerdictSettings(alarm_rate=0.15))
    assert verdicts.column("p_value").to_pylist() == [pytest.approx(0.1)]
    assert verdicts.column("status").to_pylist() == [ALARM]


def test_independent_features_are_referred_to_the_joint_population_by_hand():
    # A 100 × 100 grid: every (i, j) once, the two features exactly independent. The window (80, 80) has
    # p = 20/100 on each, so its statistic is 1/0.2 + 1/0.2 = 10; a population window (x, y), x = 100 − i and
    # y = 100 − j its p in hundredths, has 100/x + 100/y. Those above 10 number 2,355, those at least 10 2,362 (the
    # 7 ties 100/x + 100/y = 10 compare floating sums, either way); only the values 98 and 99 lie in SPOT's tail
    # (p smaller than their share), and every pair with one of them is counted either way (x ≤ 2: 100/x ≥ 50).
    # Fisher's −2 Σ ln p would count the pairs x · y ≤ 400 instead (1,602): it ranks a window middling on both
    # features higher, this statistic one extreme on either.
    i, j = np.divmod(np.arange(10_000), 100)
    population = Population.of_windows(two_feature_windows(i, j), ("records", "distinct_names"))
    assert population.tail("dns", "c_ip", "records").probabilities(np.array([80.0]))[0] == pytest.approx(0.2)
    assert population.tail("dns", "c_ip", "records").spot.excess_threshold > 97.0
    verdicts, _, _ = judge(rows_for({"x": {"records": 80.0, "distinct_names": 80.0}}), population,
                           VerdictSettings(alarm_rate=0.01))
    above = sum(1 for x in range(1, 101) for y in range(1, 101) if 100 * (x + y) > 10 * x * y)
    at_least = sum(1 for x in range(1, 101) for y in range(1, 101) if 100 * (x + y) >= 10 * x * y)
    assert (above, at_least) == (2355, 2362)
    assert above / 10_000 <= verdicts.column("p_value")[0].as_py() <= at_least / 10_000
    assert verdicts.column("status").to_pylist() == [NORMAL]


@pytest.mark.parametrize("rule", COMBINATION_RULES)
@pytest.mark.parametrize("alarm_rate, min_records", [(0.005, 0), (0.02, 0), (0.02, 20)])
def test_alarm_share_of_unseen_benign_windows_is_the_budget_within_binomial_error(alarm_rate, min_records, rule):
    # Correlated features (distinct names are a share of records, hosts of different rates), one window per host
    # so every window is judged by the population; calibrated on one draw, judged on another of the same traffic.
    # With --min-records 20 about half the windows are not judged: the share is of those judged.
    config = DetectorConfig("gaussian", {}, ("records", "distinct_names"))
    calibration = windows_table(hosts=6000, minutes=1, seed=21)
    fresh = windows_table(hosts=6000, minutes=1, seed=22)
    population = dataclasses.replace(Population.of_windows(calibration, config.features, min_records), rule=rule)
    _, _, counts = judge(score_table(fresh, config), population,
                         VerdictSettings(alarm_rate=alarm_rate, min_records=min_records))
    judged = counts["verdicts"] - counts["unjudged_too_few_records"] - counts["unjudged_no_model"]
    assert judged == int((fresh.column("records").to_numpy() >= min_records).sum()) > 2000
    sigma = math.sqrt(alarm_rate * (1 - alarm_rate) / judged)
    assert abs(counts["alarms"] / judged - alarm_rate) <= 4 * sigma


def test_the_population_is_of_the_judged_windows_only_by_hand():
    # 1,500 windows: 500 of 1 or 2 records, which --min-records 3 leaves unjudged, and 1,000 of 3, 4, ..., 1002.
    # A window of 903 records is at or below 100 of the judged ones (903..1002; SPOT's tail starts near the 98th
    # percentile, 982): p = 100 / 1000 among the windows a verdict judges, where pooling all 1,500 said 100 / 1500.
    records = np.r_[np.repeat([1.0, 2.0], 250), np.arange(3.0, 1003.0)]
    windows = two_feature_windows(records, records)
    assert [len(pool) for pool in pools_of(windows, ("records",), min_records=3).values()] == [1000]
    assert [len(pool) for pool in pools_of(windows, ("records",)).values()] == [1500]
    window = rows_for({"x": {"records": 903.0}}, records=903)
    for min_records, expected in ((3, 100 / 1000), (0, 100 / 1500)):
        population = Population.of_windows(windows, ("records",), min_records)
        verdicts, _, _ = judge(window, population, VerdictSettings(alarm_rate=0.09, min_records=min_records))
        assert verdicts.column("p_value").to_pylist() == [pytest.approx(expected)]
        assert verdicts.column("status").to_pylist() == [NORMAL if min_records else ALARM]


@pytest.mark.parametrize("rule", COMBINATION_RULES)
def test_combined_verdicts_are_the_same_in_shuffled_order(rule):
    config = DetectorConfig("gaussian", {}, ("records", "distinct_names", "nxdomain_ratio"))
    windows = windows_table(hosts=200, minutes=12, seed=8, newcomer_records=700)
    order = np.random.default_rng(9).permutation(windows.num_rows)
    shuffled = windows.take(pa.array(order))

    def verdict_rows(table):
        population = dataclasses.replace(Population.of_windows(table, config.features), rule=rule)
        verdicts, reported, _ = judge(score_table(table, config), population, VerdictSettings(alarm_rate=0.01))
        assert verdicts.column("status").to_pylist().count(ALARM) > 0
        return (sorted(verdicts.to_pylist(), key=lambda v: (v["key"], v["window_start"])),
                sorted(reported.to_pylist(), key=lambda v: (v["key"], v["window_start"], v["feature"])))

    assert verdict_rows(windows) == verdict_rows(shuffled)


def test_combined_p_falls_with_the_statistic_and_its_score_stays_finite():
    i, j = np.divmod(np.arange(10_000), 100)
    calibration = Population.of_windows(two_feature_windows(i, j), ("records", "distinct_names")).combined("dns", "c_ip")
    statistics = np.linspace(0.0, 3000.0, 30_001)  # the body, SPOT's tail, and p = 0 (−2 ln 5e-324 ≈ 1489 a feature)
    p = calibration.probabilities(statistics)
    assert np.all(np.diff(p) <= 0) and p[0] == 1.0
    assert all(math.isfinite(score_of(x)) for x in p)
    # The features that fired are the fewest strongest reaching the alarm threshold: one extreme feature alone.
    verdicts, reported, _ = judge(rows_for({"x": {"records": 1e9, "distinct_names": 50.0}}),
                                  Population.of_windows(two_feature_windows(i, j), ("records", "distinct_names")),
                                  VerdictSettings(alarm_rate=0.001))
    assert verdicts.column("features_fired").to_pylist() == [["records"]]
    assert math.isfinite(verdicts.column("score")[0].as_py()) and reported.column("feature").to_pylist() == ["records"]


def test_combination_terms_and_their_inverse_by_hand():
    p = np.array([1.0, 0.5, 0.01, 0.0, math.nan])
    # harmonic: 1 / p (p = 0 floored at 1e-300); fisher: −2 ln p (ln 0.5 = −0.693147..., ln 0.01 = −4.605170...).
    harmonic = combination_terms(p, "harmonic")
    assert harmonic[[0, 1, 2, 4]].tolist() == [1.0, 2.0, 100.0, 0.0] and harmonic[3] == pytest.approx(1e300)
    fisher = combination_terms(p, "fisher")
    assert fisher[:3] == pytest.approx([0.0, 1.3862944, 9.2103404])
    assert fisher[3] == pytest.approx(-2.0 * math.log(5e-324)) and fisher[4] == 0.0
    # The feature p whose term alone reaches a statistic: 1/40 for 40; e^−(9.21/2) = 0.01 for Fisher's 9.2103.
    assert feature_p_reaching(40.0, "harmonic") == 0.025
    assert feature_p_reaching(-2.0 * math.log(0.01), "fisher") == pytest.approx(0.01)
    assert feature_p_reaching(0.5, "harmonic") == 1.0  # every p's term (≥ 1) reaches it
    with pytest.raises(ValueError):
        combination_terms(p, "cauchy")


def test_one_extreme_feature_outranks_two_middling_ones_under_the_harmonic_rule_not_fishers():
    # Over the same 100 × 100 grid (values 0..99, SPOT's tail above 97): a window with p = (3/100, 1) against one
    # with p = (10/100, 10/100). Harmonic sums 1/0.03 + 1 = 34.3 against 20, so the first is the more extreme;
    # Fisher's −2 ln p sums 7.01 against 9.21: the second.
    i, j = np.divmod(np.arange(10_000), 100)
    grid = two_feature_windows(i, j)
    windows = {"one": {"records": 97.0, "distinct_names": 0.0}, "two": {"records": 90.0, "distinct_names": 90.0}}
    p_of = {}
    for rule in ("harmonic", "fisher"):
        population = dataclasses.replace(Population.of_windows(grid, ("records", "distinct_names")), rule=rule)
        verdicts, _, _ = judge(rows_for(windows), population, VerdictSettings(alarm_rate=0.01))
        p_of[rule] = dict(zip(verdicts.column("key").to_pylist(), verdicts.column("p_value").to_pylist()))
    assert p_of["harmonic"]["one"] < p_of["harmonic"]["two"]
    assert p_of["fisher"]["one"] > p_of["fisher"]["two"]


def test_the_omnibus_p_refers_the_smaller_of_the_two_rules_p_to_the_population_by_hand():
    # The 100 × 100 grid again; a feature's p is its share at or above (x / 100, x = 100 − value), but SPOT's for
    # the values 98 and 99, which lie beyond its excess threshold. The reference works with exact fractions and
    # lists over the 10,000 windows, without the code's sums or tails: each window's harmonic p (the share of
    # windows whose Σ 1/p is at least its own) and Fisher p (the share whose product of p's is at most its own),
    # the smaller of the two, and the omnibus p, the share of windows whose smaller p is at most the window's.
    # Bounds: windows whose smaller p equals the window's compare floating sums in the code, either way.
    i, j = np.divmod(np.arange(10_000), 100)
    population = Population.of_windows(two_feature_windows(i, j), ("records", "distinct_names"))
    p_of_value = {value: Fraction(100 - value, 100) for value in range(98)}
    tail = population.tail("dns", "c_ip", "records")
    assert tail.spot.excess_threshold > 97.0
    p_of_value.update(zip((98, 99), map(Fraction, tail.probabilities(np.array([98.0, 99.0])).tolist())))
    pairs = [(a, b) for a in range(100) for b in range(100)]
    harmonic = sorted(1 / p_of_value[a] + 1 / p_of_value[b] for a, b in pairs)
    product = sorted(p_of_value[a] * p_of_value[b] for a, b in pairs)

    def rule_p(a, b):
        at_least = len(harmonic) - bisect.bisect_left(harmonic, 1 / p_of_value[a] + 1 / p_of_value[b])
        share_h = Fraction(at_least, 10_000)
        share_f = Fraction(bisect.bisect_right(product, p_of_value[a] * p_of_value[b]), 10_000)
        return share_h, share_f

    smaller = sorted(min(rule_p(a, b)) for a, b in pairs)
    # One extreme feature (97: p = 3/100; 0: p = 1), where the harmonic p is the smaller; two middling (90, 90: p =
    # 1/10 each), where Fisher's is.
    windows = {"one": (97, 0), "two": (90, 90)}
    p_of = {}
    for rule in COMBINATION_RULES:
        verdicts, _, _ = judge(rows_for({key: {"records": float(a), "distinct_names": float(b)}
                                         for key, (a, b) in windows.items()}),
                               dataclasses.replace(population, rule=rule), VerdictSettings(alarm_rate=0.01))
        p_of[rule] = dict(zip(verdicts.column("key").to_pylist(), verdicts.column("p_value").to_pylist()))
    for key, (a, b) in windows.items():
        share_h, share_f = rule_p(a, b)
        assert p_of["harmonic"][key] == pytest.approx(float(share_h))
        low, high = (bisect.bisect_left(smaller, min(share_h, share_f)),
                     bisect.bisect_right(smaller, min(share_h, share_f)))
        assert low / 10_000 <= p_of["omnibus"][key] <= high / 10_000
        # Choosing the better test costs: more than the smaller p, less than the union bound, twice it.
        smallest = min(p_of["harmonic"][key], p_of["fisher"][key])
        assert smallest < p_of["omnibus"][key] < 2 * float(min(share_h, share_f))
    assert (p_of["harmonic"]["one"] < p_of["fisher"]["one"]) and (p_of["fisher"]["two"] < p_of["harmonic"]["two"])
    assert (low, high) == (613, 618)  # "two": 0.0613–0.0618, its Fisher p 0.0508 (the product 1/100)


def test_the_omnibus_p_is_monotone_finite_and_its_single_feature_limit_is_where_one_feature_alarms():
    i, j = np.divmod(np.arange(10_000), 100)
    population = dataclasses.replace(Population.of_windows(two_feature_windows(i, j), ("records", "distinct_names")),
                                     rule="omnibus")
    calibration = population.combined("dns", "c_ip")

    def window_p(p):
        return calibration.probabilities(calibration.statistic(rule_terms(p, "omnibus").sum(axis=0, keepdims=True)))[0]

    rng = np.random.default_rng(23)
    for _ in range(300):
        p = rng.random(2) ** rng.uniform(1, 60)
        lower = p.copy()
        lower[rng.integers(2)] *= rng.random()
        assert window_p(lower) <= window_p(p) and math.isfinite(score_of(window_p(lower)))
    assert math.isfinite(score_of(window_p(np.array([0.0, 0.0]))))
    for alarm_rate in (0.001, 0.005, 0.01):
        reaching = calibration.feature_p_alarming(alarm_rate)
        assert window_p(np.array([reaching * 0.999])) <= alarm_rate < window_p(np.array([reaching * 1.001]))
    # One extreme feature fires alone, as under the sum rules.
    verdicts, reported, _ = judge(rows_for({"x": {"records": 1e9, "distinct_names": 50.0}}), population,
                                  VerdictSettings(alarm_rate=0.001))
    assert verdicts.column("features_fired").to_pylist() == [["records"]]
    assert reported.column("feature").to_pylist() == ["records"]
