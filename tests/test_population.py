"""The population prior: pooled endpoint-windows, their GPD tail, and verdicts from a first window."""
import heapq
import math
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from beamlytics import features
from beamlytics.detectors.endpoint import DetectorConfig, EndpointWindow, score_table
from beamlytics.detectors.population import FeatureTail, Pool, Population, merge_pools, pools_of
from beamlytics.detectors.spot import tail_probability
from beamlytics.detectors.verdict import ALARM, POPULATION, VerdictSettings, judge
from beamlytics.transforms.score import JudgeShards
from tests.conftest import collect

MINUTE = 60_000_000
T0 = 1_700_000_000_000_000


def exponential_pool(size=20_000, scale=10.0):
    """Evenly spaced quantiles of an exponential distribution: its tail is known in closed form."""
    return -scale * np.log1p(-(np.arange(size) + 0.5) / size)


def test_tail_matches_the_exponential_it_was_drawn_from():
    tail = FeatureTail.fit(exponential_pool())
    for x in (50.0, 60.0, 80.0):
        assert tail.probabilities(np.array([x]))[0] == pytest.approx(math.exp(-x / 10.0), rel=0.15)
    assert tail.threshold(1e-4) == pytest.approx(-10.0 * math.log(1e-4), rel=0.05)


def test_tail_parameters_agree_with_scipy_maximum_likelihood():
    values = exponential_pool(5_000, 3.0) ** 1.3  # a heavier-than-exponential tail: γ > 0
    tail = FeatureTail.fit(values)
    excesses = values[values > tail.spot.excess_threshold] - tail.spot.excess_threshold
    gamma, _, sigma = stats.genpareto.fit(excesses, floc=0.0)
    assert tail.spot.gamma == pytest.approx(gamma, abs=0.02)
    assert tail.spot.sigma == pytest.approx(sigma, rel=0.03)
    assert tail.spot.Nt == excesses.size


def test_tail_probabilities_of_repeated_values_are_the_gpd_of_each():
    tail = FeatureTail.fit(exponential_pool())
    rng = np.random.default_rng(9)
    observed = np.concatenate([rng.integers(0, 120, 3_000).astype(float), [np.nan, np.inf, -np.inf, 1e308]])
    rng.shuffle(observed)
    threshold = tail.spot.excess_threshold
    expected = [math.nan if not math.isfinite(x) else
                tail_probability(tail.spot, x) if x > threshold else
                float(np.count_nonzero(tail.values >= x)) / tail.values.size for x in observed.tolist()]
    assert sum(x > threshold for x in observed.tolist()) > 500
    np.testing.assert_array_equal(tail.probabilities(observed), expected)


def test_body_probability_is_the_share_of_the_pool_at_or_above():
    values = np.concatenate([np.zeros(900), np.arange(1.0, 101.0)])  # 1,000 windows, 90 % zero
    tail = FeatureTail.fit(values)
    body = tail.probabilities(np.array([0.0, 1.0, 5.0]))
    assert body.tolist() == [1.0, 100 / 1000, 96 / 1000]


def test_too_small_or_constant_pools_have_no_model_and_say_why():
    assert "too small" in FeatureTail.fit(range(50)).reason
    constant = FeatureTail.fit([4.0] * 500)
    assert constant.spot is None and "no upper tail" in constant.reason
    assert math.isnan(constant.probabilities(np.array([9.0]))[0])


def windows_table(hosts=120, minutes=20, seed=1, newcomer_records=None):
    """Benign hosts with their own Poisson rates; optionally a new host with one busy window at the end."""
    rng = np.random.default_rng(seed)
    rates = rng.lognormal(3.0, 0.4, size=hosts)
    windows = []
    for host, rate in enumerate(rates):
        for minute in range(minutes):
            records = int(rng.poisson(rate)) + 1
            names = int(rng.binomial(records, 0.3)) + 1
            windows.append(EndpointWindow("dns", "c_ip", f"10.0.{host // 250}.{host % 250}", T0 + minute * MINUTE,
                                          T0 + (minute + 1) * MINUTE, records,
                                          {"records": records, "distinct_names": names, "nxdomain_ratio": 0.0}))
    if newcomer_records is not None:
        windows.append(EndpointWindow("dns", "c_ip", "10.9.9.9", T0 + (minutes - 1) * MINUTE, T0 + minutes * MINUTE,
                                      newcomer_records, {"records": newcomer_records, "distinct_names": newcomer_records,
                                                         "nxdomain_ratio": 0.9}))
    table = features.table_of_windows(windows, "dns")
    return table.take(np.random.default_rng(seed + 1).permutation(table.num_rows))


CONFIG = DetectorConfig("gaussian", {}, ("records", "distinct_names"))


def test_a_host_seen_in_one_window_only_is_judged_by_the_population():
    windows = windows_table(newcomer_records=2_000)
    population = Population.of_windows(windows, CONFIG.features)
    verdicts, reported, _ = judge(score_table(windows, CONFIG), population, VerdictSettings(alarm_rate=0.001))
    newcomer = [row for row in verdicts.to_pylist() if row["key"] == "10.9.9.9"]
    assert len(newcomer) == 1 and newcomer[0]["status"] == ALARM
    # The verdict's p: Σ 1 / p of the population tails' p, referred to the statistic's own tail fitted on every
    # window's, each computed here row by row from the windows (not from the pools).
    tails = {name: population.tail("dns", "c_ip", name) for name in CONFIG.features}
    def terms(row):
        return {name: 1.0 / max(tails[name].probabilities(np.array([float(row[name])]))[0], 1e-300)
                for name in CONFIG.features}
    statistics = FeatureTail.fit([sum(terms(row).values()) for row in windows.to_pylist()])
    own = terms({"records": 2_000, "distinct_names": 2_000})
    assert newcomer[0]["p_value"] == pytest.approx(statistics.probabilities(np.array([sum(own.values())]))[0],
                                                   rel=1e-9)
    # Fired: the fewest of its strongest features whose terms reach the statistic's threshold at the rate.
    limit, fired, total = statistics.threshold(0.001), [], 0.0
    for name in sorted(own, key=own.get, reverse=True):
        if fired and total >= limit:
            break
        fired.append(name)
        total += own[name]
    assert newcomer[0]["features_fired"] == fired
    assert all(item["judged_by"] == POPULATION for item in newcomer[0]["evidence"])
    # The pool's median, not the newcomer's own (it has none), is what it is compared with.
    assert newcomer[0]["evidence"][0]["expected"] == pytest.approx(
        np.median(windows.column(newcomer[0]["evidence"][0]["feature"]).to_numpy()))
    assert {row["detector"] for row in reported.to_pylist() if row["key"] == "10.9.9.9"} == {POPULATION}


def test_pools_are_the_same_in_any_order_and_sharding():
    windows = windows_table(hosts=150, minutes=20)
    capacity = 500  # < 3,000 windows: the bounded sample, not the exact pool, is under test
    whole = pools_of(windows, CONFIG.features, capacity)
    order = list(range(windows.num_rows))
    random.Random(7).shuffle(order)
    shuffled = windows.take(pa.array(order))
    pieces = [pools_of(shuffled.slice(start, 375), CONFIG.features, capacity) for start in range(0, 3000, 375)]
    for key, pool in whole.items():
        assert merge_pools([piece[key] for piece in pieces[::-1]], capacity) == pool
    assert all(len(pool) == capacity for pool in whole.values())


def test_pools_keep_the_smallest_hash_value_pairs_with_equal_hashes_ordered_by_value():
    rng = np.random.default_rng(4)
    hashes = rng.integers(0, 1 << 63, 400, dtype=np.uint64)
    values = rng.normal(size=400)
    pool = Pool(hashes, values)
    for pools, capacity in (([pool], 120), ([pool, pool], 150), ([pool, Pool(hashes[:50], values[50:100])], 90)):
        entries = [(int(h), float(v)) for part in pools for h, v in zip(part.hashes, part.values)]
        expected = heapq.nsmallest(capacity, entries)
        merged = merge_pools(pools, capacity)
        assert list(zip(merged.hashes.tolist(), merged.values.tolist())) == expected
    windows = windows_table(hosts=20, minutes=10)
    once = pools_of(windows, CONFIG.features, 150)
    twice = pools_of(pa.concat_tables([windows] * 2), CONFIG.features, 150)
    for key, pool in once.items():  # each window twice: every hash equal to another one
        entries = [(int(h), float(v)) for h, v in zip(pool.hashes, pool.values)] * 2
        assert list(zip(twice[key].hashes.tolist(), twice[key].values.tolist())) == heapq.nsmallest(150, entries)


def run_verdicts(tables, shards):
    def build(pipeline):
        windows = pipeline | beam.Create(tables, reshuffle=False)
        return (windows | JudgeShards(CONFIG, VerdictSettings(), shards)
                | beam.Map(lambda result: result.verdicts))

    rows = [row for table in collect(build) for row in table.to_pylist()]
    return sorted(rows, key=lambda row: (row["key"], row["window_start"]))


def test_pipeline_verdicts_match_the_plain_functions_in_any_order_and_with_1_or_8_shards():
    windows = windows_table(hosts=40, minutes=15, newcomer_records=900)
    expected, _, _ = judge(score_table(windows, CONFIG),
                           Population.of_windows(windows, CONFIG.features, VerdictSettings().min_records),
                           VerdictSettings())
    expected = sorted(expected.to_pylist(), key=lambda row: (row["key"], row["window_start"]))
    in_pieces = [windows.slice(start, 100) for start in range(0, windows.num_rows, 100)]
    assert run_verdicts(in_pieces, 1) == expected
    assert run_verdicts(in_pieces[::-1], 8) == expected
