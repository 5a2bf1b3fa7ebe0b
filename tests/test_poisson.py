"""The Poisson/KL window score against scipy, and PoissonDetector's learning and verdicts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy, poisson

from beamlytics.detectors.base import Status
from beamlytics.detectors import poisson as poisson_module
from beamlytics.detectors.base import SeriesVerdicts
from beamlytics.detectors.poisson import PoissonDetector, analyze_window, score_windows

KEYS = ["D", "Delta", "Z", "eta", "C2", "fD", "fDelta", "fZ"]


def reference_window_score(window, lam, beta, seconds):
    """The method written out plainly on top of scipy."""
    x = np.asarray(window)
    max_count = max(int(x.max()), int(3 * lam) + 5)
    bins = np.arange(max_count + 2)  # edges: one bin per count 0..max_count
    d_x = np.histogram(x, bins=bins)[0] / len(x)
    d_y = poisson.pmf(np.arange(max_count + 1), lam)
    d_y = d_y / d_y.sum()
    # scipy's jensenshannon renormalises its inputs and returns the square root of the divergence.
    divergence = jensenshannon(d_x + 1e-12, d_y + 1e-12) ** 2
    mean = x.mean()
    delta = (mean - lam) / max(lam, 1)
    z = (mean - lam) / math.sqrt(max(lam, 1) / seconds)
    sigma = max(1.0, np.std(x))
    f = {name: math.exp(-(u**2) / (2 * sigma**2)) for name, u in (("fD", divergence), ("fDelta", delta), ("fZ", z))}
    eta = sum(1 - value for value in f.values()) / 3
    return {"D": divergence, "Delta": delta, "Z": z, "eta": eta, "C2": -math.tanh(2 * (eta - beta)), **f}


def assert_scores_match(got, expected):
    assert sorted(got) == sorted(KEYS)
    for key in KEYS:
        assert math.isfinite(got[key]), key
        assert got[key] == pytest.approx(expected[key], rel=1e-7, abs=1e-9), key


WINDOWS = {
    "ordinary": ([2, 0, 3, 1, 4, 2, 2, 5, 1, 0], 2.0, 0.3, 10),
    "burst": ([2, 9, 30, 28, 1, 0], 1.5, 0.5, 6),
    "lambda zero": ([0, 1, 0, 0, 3], 0.0, 0.3, 5),
    "lambda zero, all zero": ([0, 0, 0, 0], 0.0, 0.5, 4),
    "all zero, positive lambda": ([0] * 30, 2.5, 0.3, 30),
    "single slot": ([7], 3.0, 0.3, 1),
    "lambda below one": ([0, 1, 0, 0, 0, 2], 0.4, 0.3, 6),
    "large lambda": (list(range(780, 810)), 800.0, 0.3, 30),
}


@pytest.mark.parametrize("case", WINDOWS.values(), ids=WINDOWS.keys())
def test_window_score_matches_scipy(case):
    window, lam, beta, seconds = case
    assert_scores_match(analyze_window(window, lam, beta, seconds), reference_window_score(window, lam, beta, seconds))


def test_divergence_is_the_mean_of_the_two_kl_terms():
    window, lam = [0, 0, 5, 6, 1], 1.0
    d_x = np.bincount(window, minlength=9) / 5 + 1e-12
    d_y = poisson.pmf(np.arange(9), lam) + 1e-12
    p, q = d_x / d_x.sum(), d_y / d_y.sum()
    m = (p + q) / 2
    assert analyze_window(window, lam, 0.3, 5)["D"] == pytest.approx(0.5 * entropy(p, m) + 0.5 * entropy(q, m), rel=1e-9)


def test_hand_worked_single_slot_against_lambda_zero():
    # X = [4], λ = 0: the histogram is all at 4, Poisson(0) all at 0, so D ≈ ln 2;
    # Δ = 4/1 = 4, Z = 4/sqrt(1/1) = 4, σ = 1 (one slot has std 0).
    scores = analyze_window([4], 0.0, 0.5, 1)
    assert scores["D"] == pytest.approx(math.log(2), abs=1e-9)
    assert (scores["Delta"], scores["Z"]) == (4.0, 4.0)
    f_d = math.exp(-math.log(2) ** 2 / 2)
    assert scores["fDelta"] == scores["fZ"] == pytest.approx(math.exp(-8))
    eta = ((1 - f_d) + 2 * (1 - math.exp(-8))) / 3
    assert scores["eta"] == pytest.approx(eta, abs=1e-9)
    assert scores["C2"] == pytest.approx(-math.tanh(2 * (eta - 0.5)), abs=1e-9)


def test_hand_worked_silence_matching_lambda_zero_is_perfectly_normal():
    scores = analyze_window([0, 0, 0], 0.0, 0.3, 3)
    assert scores["D"] == pytest.approx(0.0, abs=1e-9)
    assert (scores["Delta"], scores["Z"], scores["eta"]) == (0.0, 0.0, pytest.approx(0.0, abs=1e-12))
    assert scores["C2"] == pytest.approx(math.tanh(0.6))


@pytest.mark.parametrize(
    "window, lam, seconds",
    [([], 1.0, 1), ([1, -1], 1.0, 2), ([1.5, 2], 1.0, 2), ([1, float("nan")], 1.0, 2), ([1], -1.0, 1),
     ([1], float("nan"), 1), ([1], 1.0, 0)],
)
def test_invalid_windows_are_refused(window, lam, seconds):
    with pytest.raises(ValueError):
        analyze_window(window, lam, 0.3, seconds)


@settings(max_examples=200, deadline=None)
@given(
    window=st.lists(st.integers(0, 60), min_size=1, max_size=40),
    lam=st.one_of(st.just(0.0), st.floats(0.01, 50.0)),
    beta=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
)
def test_window_score_matches_scipy_on_random_windows(window, lam, beta):
    scores = analyze_window(window, lam, beta, len(window))
    assert_scores_match(scores, reference_window_score(window, lam, beta, len(window)))
    assert 0.0 <= scores["eta"] < 1.0


# --- the detector ---------------------------------------------------------------------


def observe_all(detector, windows):
    return [detector.observe(list(window)) for window in windows]


def test_calibration_then_lambda_is_the_mean_per_slot_of_the_learned_windows():
    windows = [[1, 2, 3], [0, 0, 2, 2], [5], [1, 1, 1]]
    detector = PoissonDetector(n_init=3)
    verdicts = observe_all(detector, windows)
    assert [v.status for v in verdicts[:3]] == [Status.CALIBRATING] * 3
    assert verdicts[0].score is None  # nothing to compare the first window with
    assert verdicts[1].evidence["lambda"] == pytest.approx(6 / 3)
    assert verdicts[3].status in (Status.NORMAL, Status.ANOMALY)
    assert verdicts[3].evidence["lambda"] == pytest.approx(15 / 8)
    assert verdicts[3].evidence["mean"] == 1.0
    assert verdicts[3].score == pytest.approx(reference_window_score([1, 1, 1], 15 / 8, 0.3, 3)["eta"])


def test_a_window_above_learn_below_does_not_teach_lambda():
    detector = PoissonDetector(n_init=2)
    observe_all(detector, [[2, 2, 2, 2], [2, 2, 2, 2]])
    burst = detector.observe([40, 40, 40, 40])
    assert burst.score >= detector.learn_below
    normal = detector.observe([2, 2, 2, 2])
    assert normal.evidence["lambda"] == 2.0  # the burst did not move λ
    assert detector.observe([2, 2, 2, 2]).evidence["lambda"] == 2.0


def test_fit_fixes_lambda_from_the_baseline_without_calibration():
    detector = PoissonDetector(n_init=10)
    detector.fit([[1, 2, 3], [4]])
    verdicts = observe_all(detector, [[2, 2], [1, 1]])
    assert [v.evidence["lambda"] for v in verdicts] == [2.5, 2.5]
    assert Status.CALIBRATING not in [v.status for v in verdicts]


def test_verdict_fields_and_evidence():
    detector = PoissonDetector(n_init=1, health_model="kalman", ra_threshold=0.75)
    detector.observe([3, 3, 3])
    up = detector.observe([9, 9, 9])
    expected = reference_window_score([9, 9, 9], 3.0, 0.3, 3)
    assert up.direction == "up" and up.threshold == 0.75 and up.score == pytest.approx(expected["eta"])
    assert set(up.evidence) == {"lambda", "mean", *KEYS, "Ra", "Ra_sigmoid", "Ra_logistic", "Ra_exponential",
                                "Ra_recovery", "Ra_kalman"}
    assert up.evidence["Ra"] == up.evidence["Ra_kalman"]
    assert up.evidence["Ra_logistic"] == 1.0
    assert up.evidence["Ra_sigmoid"] == pytest.approx(1 / (1 + math.exp(-3.063 * (1 + expected["C2"] - 0.3))))
    assert up.is_anomaly == (up.evidence["Ra_kalman"] < 0.75)
    json.loads(up.evidence_json())
    assert detector.observe([0, 0, 0]).direction == "down"
    assert detector.observe([]).status == Status.MISSING


def test_unknown_health_model_is_refused():
    with pytest.raises(ValueError, match="unknown health model"):
        PoissonDetector(health_model="linear")


def test_state_round_trips_and_continues_identically():
    rng = np.random.default_rng(7)
    windows = [rng.poisson(4 if i != 8 else 30, 30) for i in range(14)]
    original = PoissonDetector(n_init=3, health_model="recovery")
    observe_all(original, windows[:9])
    state = json.loads(json.dumps(original.to_dict()))
    restored = PoissonDetector.from_dict(state)
    assert restored.to_dict() == original.to_dict()
    assert observe_all(restored, windows[9:]) == observe_all(original, windows[9:])
    assert json.loads(original.params_json())["health_model"] == "recovery"


BURST = range(20, 24)


def burst_run(seed, rate=2.0, factor=5, windows=40, slots=30):
    """Flagged window indices for one endpoint: Poisson(rate) per slot, rate×factor in BURST."""
    rng = np.random.default_rng(seed)
    detector = PoissonDetector()
    return [
        index
        for index in range(windows)
        if detector.observe(list(rng.poisson(rate * (factor if index in BURST else 1), slots))).is_anomaly
    ]


def test_injected_burst_is_flagged_in_its_windows_and_not_elsewhere():
    """Over 30 seeds, with the default settings: every burst window from the second on is
    flagged, nothing before the burst nor from two windows after it is. The burst's first
    window and the window right after it depend on the draw (the health indicator lags)."""
    runs = [burst_run(seed) for seed in range(30)]
    assert all(set(flagged) <= {*BURST, BURST[-1] + 1} for flagged in runs)
    assert all(set(BURST[1:]) <= set(flagged) for flagged in runs)
    assert sum(BURST[0] in flagged for flagged in runs) >= 15
    assert sum(BURST[-1] + 1 in flagged for flagged in runs) <= 6


# --- many windows at once ---------------------------------------------------------------


def test_batch_scores_are_each_window_scored_alone_bit_for_bit(monkeypatch):
    # Rates from silent to large, and one window with a huge count that pads any batch it joins.
    rng = np.random.default_rng(3)
    lam = np.array([0.0, 0.4, 2.5, 20.0, 800.0, 3.0, 1.0])
    counts = np.stack([rng.poisson(rate, 30) for rate in lam])
    counts[5, 7] = 5000
    for cells in (poisson_module.BATCH_CELLS, 200):  # one batch; then batches split by histogram width
        monkeypatch.setattr(poisson_module, "BATCH_CELLS", cells)
        batch = score_windows(counts, lam, 0.3, 30)
        for row, rate in enumerate(lam):
            alone = analyze_window(counts[row], rate, 0.3, 30)
            assert {name: batch[name][row] for name in KEYS} == alone
            assert_scores_match(alone, reference_window_score(counts[row], rate, 0.3, 30))


def series_one_by_one(params, observations, train, starts):
    """What the batch path must equal: one detector per series, fit on its training windows, then observe."""
    verdicts = []
    for first, end in zip(starts, [*starts[1:], len(observations)]):
        detector = PoissonDetector(**params)
        judged = first
        while judged < end and train[judged]:
            judged += 1
        if judged > first:
            detector.fit(observations[first:judged])
        verdicts.extend(detector.observe(window) for window in observations[judged:end])
    return SeriesVerdicts.of(verdicts)


@pytest.mark.parametrize("params", [{}, {"n_init": 2, "health_model": "kalman"}, {"beta": 0.2, "health_model": "recovery", "ra_threshold": 0.95}])
def test_series_scored_in_lockstep_equal_each_series_observed_alone(params):
    rng = np.random.default_rng(11)
    observations, train, starts = [], [], []
    for series, length in enumerate([25, 1, 9, 2, 40, 3]):  # uneven lengths; series 3 is training only
        starts.append(len(observations))
        rate = [0.0, 0.5, 3.0, 1.0, 8.0, 2.0][series]
        for index in range(length):
            burst = 6 if 15 <= index < 19 else 1
            observations.append([] if index == 8 else list(rng.poisson(rate * burst, 20 if series != 2 else 7)))
            train.append(series == 3 or (series == 4 and index < 6))
    train, starts = np.array(train), np.array(starts)
    got = PoissonDetector.score_series(params, observations, train, starts)
    expected = series_one_by_one(params, observations, train, starts)
    assert got == expected
    assert "anomaly" in got.status.to_pylist()
