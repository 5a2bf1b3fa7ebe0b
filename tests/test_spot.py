"""SPOT / DSPOT: parity with libspot 3.1.0 at every step, plus checks that need no libspot.

References: libspot (the C implementation, as oracle only), scipy.stats.genpareto (GPD
quantile, tail probability and likelihood), hand-worked P² steps, statistics.fmean (the
moving average of DSPOT's de-drifted stream), and the paper's description of DSPOT.
"""
from __future__ import annotations

import json
import math
import statistics
import struct
import sys
from collections import Counter, deque
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from beamlytics.detectors import spot as spot_module
from beamlytics.detectors.base import Status
from beamlytics.detectors.spot import (
    ANOMALY, DATA_IS_NAN, EXCESS, NORMAL, BiSpot, DSpot, DSpotDetector, Spot, SpotDetector,
    p2_quantile)
from tests.conftest import shared_data, skip_or_fail_in_ci

REPO = Path(__file__).resolve().parents[1]
STATE = ("excess_threshold", "anomaly_threshold", "gamma", "sigma")
RNG_SEED = 20170813


REFITS = {"compiled": spot_module._fit_gpd_compiled, "numpy": spot_module._fit_gpd_numpy}


@pytest.fixture(scope="module", autouse=True, params=sorted(REFITS))
def refit_backend(request):
    """Every test runs on each refit: the C one setup.py builds and the numpy one used
    where it could not be built."""
    if request.param == "compiled" and spot_module._gpd is None:
        skip_or_fail_in_ci("beamlytics/detectors/_gpd.c is not built (pip install -e . builds it)")
    saved = spot_module._fit_gpd
    spot_module._fit_gpd = REFITS[request.param]
    yield request.param
    spot_module._fit_gpd = saved


def _tolerance() -> float:
    """How far from libspot's value ours may be: the compiled refit gives libspot's bits; the
    numpy path's vectorised log may round a last bit differently, which later refits carry on."""
    return 0.0 if spot_module._fit_gpd is spot_module._fit_gpd_compiled else 1e-9


def _libspot():
    return pytest.importorskip("libspot", reason="libspot 3.1.0 (the reference) is not installed")


def _same(ours: float, theirs: float, rel: float | None = None) -> bool:
    rel = _tolerance() if rel is None else rel
    if math.isnan(ours) or math.isnan(theirs):
        return math.isnan(ours) and math.isnan(theirs)
    if math.isinf(ours) or math.isinf(theirs):
        return ours == theirs
    return abs(ours - theirs) <= rel * max(abs(ours), abs(theirs)) or ours == theirs


def _assert_same_state(ours, theirs, where) -> None:
    for name in STATE:
        assert _same(getattr(ours, name), getattr(theirs, name)), (where, name, getattr(ours, name),
                                                                   getattr(theirs, name))
    assert (ours.n, ours.Nt) == (theirs.n, theirs.Nt), where


def _run_parity(calibration, stream, **settings_):
    """Step our Spot and libspot's side by side; compare code and state at every step."""
    libspot = _libspot()
    ours, theirs = Spot(**settings_), libspot.Spot(**settings_)
    ours.fit(calibration)
    theirs.fit([float(v) for v in calibration])
    _assert_same_state(ours, theirs, "fit")
    codes = Counter()
    for i, value in enumerate(stream):
        code = ours.step(value)
        assert code == theirs.step(float(value)), (i, value)
        _assert_same_state(ours, theirs, i)
        codes[code] += 1
        if i % 97 == 0:
            for p in (1e-2, 1e-4):
                assert _same(ours.quantile(p), theirs.quantile(p)), i
            assert _same(ours.probability(value), theirs.probability(float(value))), i
    assert ours.excesses() == theirs.excesses()
    return codes


# --- MAWI, the libspot example series ----------------------------------------------------

def _mawi(name: str) -> np.ndarray:
    return pd.read_csv(shared_data(f"spot/{name}"), usecols=["rSYN"])["rSYN"].to_numpy()


MAWI_SETTINGS = [
    dict(q=5e-4, level=0.99, max_excess=200),  # the libspot example
    dict(q=1e-4, level=0.98, max_excess=500),
    dict(q=1e-3, level=0.95, max_excess=25),  # a small buffer: it wraps many times
    dict(q=1e-3, low=True, level=0.98, max_excess=40),
    dict(q=1e-3, low=True, level=0.9, max_excess=500, discard_anomalies=False),
]


@pytest.mark.parametrize("settings_", MAWI_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_mawi_parity_with_libspot(settings_):
    codes = _run_parity(_mawi("mawi_170812_50_50.csv")[-2000:], _mawi("mawi_180812_50_50.csv"), **settings_)
    assert codes[EXCESS] > min(40, settings_["max_excess"])  # the tail was refitted many times


def test_mawi_parity_calibrated_on_the_whole_first_day():
    day17 = _mawi("mawi_170812_50_50.csv")
    calibration = day17[:15000]
    calibration = calibration[~np.isnan(calibration)]  # two gaps; Spot.fit refuses NaN
    codes = _run_parity(calibration, day17[15000:], q=1e-4, level=0.995, max_excess=60)
    assert codes[EXCESS] > 0


# --- generated streams -------------------------------------------------------------------

def _with_specials(values: np.ndarray, calibration) -> list[float]:
    """The stream with NaN, ±inf and values exactly at libspot's current thresholds mixed in."""
    libspot = _libspot()
    reference = libspot.Spot(q=1e-3, max_excess=40)
    reference.fit([float(v) for v in calibration])
    stream = []
    for i, value in enumerate(values.tolist()):
        stream.append(value)
        if i % 97 == 0:
            stream += [math.nan, math.inf, -math.inf]
        if i % 31 == 0:
            stream.append(reference.excess_threshold)
        if i % 53 == 0:
            stream.append(reference.anomaly_threshold)
        reference.step(value)
    return stream


def _generated():
    rng = np.random.default_rng(RNG_SEED)
    t = np.arange(4000)
    pareto = rng.pareto(2.5, 4000)
    stretches = np.concatenate([np.full(300, 1.0), rng.normal(size=700), np.full(500, 0.5),
                                rng.exponential(size=1500), np.full(1000, 2.0)])
    return {
        "gaussian": (rng.normal(size=4000), {}),
        "exponential": (rng.exponential(size=4000), {"max_excess": 60}),
        "pareto": (pareto, {"max_excess": 100}),
        "pareto-low": (-pareto, {"low": True, "max_excess": 100}),
        "drift": (np.sin(t / 200) * 3 + t / 1000 + rng.normal(scale=0.3, size=4000), {}),
        "constant-stretches": (stretches, {"max_excess": 50}),
        "ties": (np.round(rng.normal(size=4000) * 2), {"level": 0.9, "max_excess": 80}),
    }


@pytest.mark.parametrize("name", list(_generated()))
def test_generated_streams_parity_with_libspot(name):
    values, extra = _generated()[name]
    _run_parity(values[:800], values[800:], q=1e-3, **extra)


@pytest.mark.parametrize("extra", [{}, {"low": True}, {"discard_anomalies": False}], ids=str)
def test_nan_inf_and_values_exactly_at_the_thresholds_parity(extra):
    values = np.random.default_rng(RNG_SEED + 1).normal(size=2500)
    stream = _with_specials(values[500:], values[:500])
    codes = _run_parity(values[:500], stream, q=1e-3, max_excess=40, **extra)
    assert codes[DATA_IS_NAN] > 0


def test_capacity_one_and_zero_excess_tails_parity():
    values = np.random.default_rng(RNG_SEED + 2).normal(size=1500)
    _run_parity(values[:300], values[300:], q=1e-3, max_excess=1)
    zeros = [0.0] * 50 + [1.0] * 3 + [0.0] * 100
    _run_parity([0.0] * 20 + [1.0, 2.0, 3.0, 4.0, 5.0], zeros, q=1e-3, level=0.9, max_excess=10)


def test_before_fit_and_failed_fits_match_libspot():
    libspot = _libspot()
    ours, theirs = Spot(q=1e-3), libspot.Spot(q=1e-3)
    for value in (1.0, math.inf, -2.0, math.nan):
        assert ours.step(value) == theirs.step(value)
        _assert_same_state(ours, theirs, value)
    assert _same(ours.quantile(1e-3), theirs.quantile(1e-3))
    for bad in ([1.0, 2.0, 3.0], [1.0] * 100):  # too short for P²; constant: no tail
        with pytest.raises(RuntimeError):
            theirs.fit(bad)
        with pytest.raises(ValueError):
            ours.fit(bad)
        _assert_same_state(ours, theirs, bad)
    refit = np.random.default_rng(RNG_SEED + 3).normal(size=600)
    ours.fit(refit)
    theirs.fit(refit.tolist())
    _assert_same_state(ours, theirs, "refit")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 1)), min_size=20, max_size=200),
       st.lists(st.one_of(st.floats(-1e6, 1e6).map(lambda v: round(v, 1)),
                          st.sampled_from([math.nan, math.inf, -math.inf])), max_size=200),
       st.sampled_from([1, 3, 50]), st.booleans())
def test_fuzz_parity_with_libspot(calibration, stream, max_excess, low):
    libspot = _libspot()
    ours, theirs = Spot(1e-3, low=low, level=0.9, max_excess=max_excess), libspot.Spot(
        1e-3, low=low, level=0.9, max_excess=max_excess)
    try:
        theirs.fit(calibration)
    except RuntimeError:
        with pytest.raises(ValueError):
            ours.fit(calibration)
    else:
        ours.fit(calibration)
    _assert_same_state(ours, theirs, "fit")
    for value in stream:
        assert ours.step(value) == theirs.step(value)
        _assert_same_state(ours, theirs, value)


# --- checks that need no libspot ---------------------------------------------------------

# --- the batch path: Spot.steps ------------------------------------------------------------

def _steps_against_libspot(calibration, stream, **settings_):
    """Spot.steps over the whole stream against libspot stepped value by value."""
    libspot = _libspot()
    ours, theirs = Spot(**settings_), libspot.Spot(**settings_)
    ours.fit(calibration)
    theirs.fit([float(v) for v in calibration])
    codes = ours.steps(stream)
    assert codes.tolist() == [theirs.step(float(v)) for v in stream]
    _assert_same_state(ours, theirs, "after steps")
    assert ours.excesses() == theirs.excesses()
    return Counter(codes.tolist())


@pytest.mark.parametrize("settings_", MAWI_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_steps_on_mawi_are_libspot_value_by_value(settings_):
    codes = _steps_against_libspot(_mawi("mawi_170812_50_50.csv")[-2000:], _mawi("mawi_180812_50_50.csv"),
                                   **settings_)
    assert codes[EXCESS] > min(40, settings_["max_excess"])


@pytest.mark.parametrize("extra", [{}, {"low": True}, {"discard_anomalies": False}], ids=str)
def test_steps_with_nan_inf_and_values_at_the_thresholds(extra):
    values = np.random.default_rng(RNG_SEED + 1).normal(size=2500)
    stream = _with_specials(values[500:], values[:500])
    codes = _steps_against_libspot(values[:500], stream, q=1e-3, max_excess=40, **extra)
    assert codes[DATA_IS_NAN] > 0


@pytest.mark.parametrize("low", [False, True])
def test_steps_flags_values_short_of_the_excess_threshold_when_the_anomaly_threshold_is_below_it(low):
    # A long quiet run drives Nt/n below q; the next excess refits with a negative distance,
    # so the anomaly threshold lands below the excess threshold and ordinary values are anomalies.
    sign = -1.0 if low else 1.0
    rng = np.random.default_rng(RNG_SEED + 4)
    calibration = sign * rng.normal(size=400)
    libspot = _libspot()
    probe = libspot.Spot(q=0.09, low=low, level=0.9, max_excess=50)
    probe.fit(calibration.tolist())
    # exactly at the excess threshold: an excess (below the anomaly threshold) that refits
    stream = np.concatenate([np.full(3000, -sign * 5.0), [probe.excess_threshold], sign * rng.normal(size=400)])
    for value in stream[:3001].tolist():
        probe.step(value)
    assert sign * probe.anomaly_threshold < sign * probe.excess_threshold  # the case this test is about
    codes = _steps_against_libspot(calibration, stream, q=0.09, low=low, level=0.9, max_excess=50)
    assert codes[ANOMALY] > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 1)), min_size=20, max_size=200),
       st.lists(st.one_of(st.floats(-1e6, 1e6).map(lambda v: round(v, 1)),
                          st.sampled_from([math.nan, math.inf, -math.inf])), max_size=300),
       st.sampled_from([1, 3, 50]), st.booleans(), st.booleans())
def test_fuzz_steps_equal_step_by_step(calibration, stream, max_excess, low, discard):
    one, batch = (Spot(1e-3, low=low, discard_anomalies=discard, level=0.9, max_excess=max_excess)
                  for _ in range(2))
    try:
        one.fit(calibration)
    except ValueError:
        return
    batch.fit(calibration)
    assert batch.steps(stream).tolist() == [one.step(v) for v in stream]
    assert json.dumps(batch.to_dict()) == json.dumps(one.to_dict())


@pytest.mark.parametrize("quantile", [p2_quantile, spot_module._p2_quantile_python], ids=["default", "python"])
def test_p2_quantile_hand_worked(quantile):
    # five values: the markers are the sorted values and the middle one is the estimate
    assert quantile(0.5, [5.0, 1.0, 4.0, 2.0, 3.0]) == 3.0
    # 1..8, p = 0.5. At 8: positions [0,1,2,4,7], desired [0,1.75,3.5,5.25,7]. Marker 2
    # lags by 1.5: parabolic 3 + 1/3·(2·2/2 + 1·1/1) = 4; then marker 3 moves to 6.
    assert quantile(0.5, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == 4.0
    # 1..6: 6 only moves the top marker; nothing lags by a whole position yet
    assert quantile(0.5, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == 3.0
    assert math.isnan(quantile(0.98, [1.0, 2.0, 3.0, 4.0]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0.5, 0.02, 0.98, 0.999]),
       st.lists(st.one_of(st.floats(allow_nan=False, width=64), st.sampled_from([0.0, -0.0, 1.0, 2.0])),
                max_size=400))
def test_p2_quantile_compiled_gives_the_python_bits(p, values):
    """The compiled P² (_gpd.c) against the Python loop: ties, signed zeros, infinities, any order."""
    if spot_module._gpd is None:
        skip_or_fail_in_ci("beamlytics/detectors/_gpd.c is not built (pip install -e . builds it)")
    expected = spot_module._p2_quantile_python(p, values)
    found = spot_module._gpd.p2_quantile(p, np.asarray(values, dtype=np.float64))
    assert (math.isnan(expected) and math.isnan(found)) or struct.pack("<d", expected) == struct.pack("<d", found)


def test_p2_quantile_close_to_numpy_on_a_large_sample():
    values = np.random.default_rng(RNG_SEED).normal(size=20000)
    for p in (0.5, 0.9, 0.98):
        assert p2_quantile(p, values.tolist()) == pytest.approx(np.quantile(values, p), abs=0.03)


def _fitted_spot(low=False) -> Spot:
    values = np.random.default_rng(RNG_SEED).pareto(3.0, 5000)
    spot = Spot(1e-3, low=low, level=0.95)
    spot.fit(-values if low else values)
    return spot


@pytest.mark.parametrize("low", [False, True])
def test_quantile_and_probability_follow_scipy_genpareto(low):
    spot = _fitted_spot(low)
    share = spot.Nt / spot.n
    tail = stats.genpareto(c=spot.gamma, scale=spot.sigma)
    sign = -1.0 if low else 1.0
    for p in (1e-2, 1e-3, 1e-5):
        expected = spot.excess_threshold + sign * tail.isf(p / share)
        assert spot.quantile(p) == pytest.approx(expected, rel=1e-9)
    for distance in (0.1, 1.0, 3.0):
        z = spot.excess_threshold + sign * distance
        assert spot.probability(z) == pytest.approx(share * tail.sf(distance), rel=1e-9)


def test_exponential_tail_formula_when_gamma_is_zero():
    state = _fitted_spot().to_dict()
    state["gamma"] = 0.0
    spot = Spot.from_dict(state)
    share = spot.Nt / spot.n
    tail = stats.expon(scale=spot.sigma)
    assert spot.quantile(1e-4) == pytest.approx(spot.excess_threshold + tail.isf(1e-4 / share), rel=1e-9)
    assert spot.probability(spot.excess_threshold + 2.0) == pytest.approx(share * tail.sf(2.0), rel=1e-9)


def test_gpd_fit_is_the_maximum_likelihood_scipy_finds():
    spot = _fitted_spot()
    excesses = np.array(spot.excesses())
    ours = stats.genpareto.logpdf(excesses, c=spot.gamma, scale=spot.sigma).sum()
    c, _, scale = stats.genpareto.fit(excesses, floc=0.0)
    theirs = stats.genpareto.logpdf(excesses, c=c, scale=scale).sum()
    assert ours >= theirs - 1e-6 * abs(theirs)
    assert spot.gamma == pytest.approx(c, abs=1e-3)


def test_step_semantics_by_hand():
    spot = _fitted_spot()
    n, nt, thresholds = spot.n, spot.Nt, (spot.excess_threshold, spot.anomaly_threshold)
    assert spot.step(math.nan) == DATA_IS_NAN
    assert spot.step(math.inf) == ANOMALY
    assert spot.step(spot.anomaly_threshold + 1.0) == ANOMALY
    # NaN and anomalies change nothing, not even n
    assert (spot.n, spot.Nt, spot.excess_threshold, spot.anomaly_threshold) == (n, nt, *thresholds)
    assert spot.step(spot.excess_threshold - 1.0) == NORMAL
    assert (spot.n, spot.Nt) == (n + 1, nt)
    # exactly at the excess threshold is an excess (of 0); exactly at the anomaly one is not an anomaly
    assert spot.step(spot.excess_threshold) == EXCESS
    assert spot.excesses().count(0.0) == 1
    assert spot.step(spot.anomaly_threshold) == EXCESS
    assert (spot.n, spot.Nt) == (n + 3, nt + 2)


def test_unfitted_spot_counts_but_never_flags():
    spot = Spot(1e-3)
    assert [spot.step(v) for v in (1.0, 1e300, math.inf)] == [NORMAL] * 3
    assert (spot.n, spot.Nt) == (3, 0) and math.isnan(spot.anomaly_threshold)


def test_low_tail_mirrors_the_upper_tail():
    """From the same excess threshold, the lower tail of -x is the upper tail of x negated.
    (Only "from the same threshold": P² itself is not exactly symmetric.)"""
    values = np.random.default_rng(RNG_SEED).normal(size=3000)
    up = Spot(1e-3)
    up.fit(values[:500])
    mirrored = {**up.to_dict(), "low": True, "excess_threshold": -up.excess_threshold,
                "anomaly_threshold": -up.anomaly_threshold}
    down = Spot.from_dict(mirrored)
    for value in values[500:].tolist():
        assert up.step(value) == down.step(-value)
        assert (down.excess_threshold, down.anomaly_threshold) == (-up.excess_threshold, -up.anomaly_threshold)
    assert down.quantile(1e-5) == -up.quantile(1e-5)
    assert down.probability(-3.0) == up.probability(3.0)


@pytest.mark.parametrize("model", [
    Spot(1e-3, max_excess=30, discard_anomalies=False),
    BiSpot(1e-3, max_excess=30),
    DSpot(10, 1e-3, tails="both", max_excess=50),
], ids=["spot", "bispot", "dspot"])
def test_state_round_trips_through_json_mid_stream(model):
    values = _drifting(3000)
    values[1700:1700] = [math.inf, math.nan, -math.inf]
    model.fit(values[:500])
    for value in values[500:1500]:
        model.step(value)
    copy = type(model).from_dict(json.loads(json.dumps(model.to_dict(), allow_nan=False)))
    for value in values[1500:]:
        assert copy.step(value) == model.step(value)
    assert copy.to_dict() == model.to_dict()


def test_invalid_parameters_are_rejected():
    for kwargs in ({"q": 0.5}, {"q": 0.0}, {"q": 1e-3, "level": 1.0}, {"q": 1e-3, "max_excess": 0}):
        with pytest.raises(ValueError):
            Spot(**kwargs)
    with pytest.raises(ValueError):
        Spot(1e-3).fit([1.0, 2.0, math.nan, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError):
        SpotDetector(tails="sideways")


# --- two tails and DSPOT -----------------------------------------------------------------

def _reference_two_tails(libspot, calibration, **settings_):
    """libspot 1.x's up+down rule on two libspot 3 Spots: an alarm in either tail is
    learnt by neither; otherwise both tails step."""
    upper = libspot.Spot(low=False, **settings_)
    lower = libspot.Spot(low=True, **settings_)
    upper.fit(calibration)
    lower.fit(calibration)

    def step(value):
        if value > upper.anomaly_threshold:
            return ANOMALY, "up"
        if value < lower.anomaly_threshold:
            return ANOMALY, "down"
        up, down = upper.step(value), lower.step(value)
        direction = "up" if up == EXCESS else "down" if down == EXCESS else None
        return max(up, down), direction

    return upper, lower, step


def test_bispot_matches_two_libspot_spots():
    libspot = _libspot()
    values = np.random.default_rng(RNG_SEED).standard_t(4, size=4000).tolist()
    upper, lower, reference_step = _reference_two_tails(libspot, values[:600], q=1e-3, max_excess=80)
    bispot = BiSpot(1e-3, max_excess=80)
    bispot.fit(values[:600])
    directions = Counter()
    for value in values[600:]:
        code = bispot.step(value)
        assert (code, bispot.last_direction) == reference_step(value)
        directions[(code, bispot.last_direction)] += 1
        assert bispot.thresholds() == {"up": (upper.excess_threshold, upper.anomaly_threshold),
                                       "down": (lower.excess_threshold, lower.anomaly_threshold)}
    assert directions[(ANOMALY, "up")] and directions[(ANOMALY, "down")]


def _drifting(size=4000, seed=RNG_SEED):
    rng = np.random.default_rng(seed)
    values = np.linspace(0.0, 40.0, size) + rng.normal(scale=0.5, size=size)
    spikes = [i for i in (1500, 2600, 3300) if i < size]
    values[spikes] += 6.0  # local spikes, well inside the range the drift covers
    return values.tolist()


def _dedrifted_reference(libspot, values, depth, calibration_size, **settings_):
    """The paper's Algorithm 3 written out: libspot on x minus the mean of the last `depth`
    values that were not flagged."""
    residuals = [values[i] - statistics.fmean(values[i - depth:i]) for i in range(depth, calibration_size)]
    spot = libspot.Spot(**settings_)
    spot.fit(residuals)
    window = deque(values[calibration_size - depth:calibration_size], maxlen=depth)
    codes, thresholds = [], []
    for value in values[calibration_size:]:
        mean = statistics.fmean(window)
        thresholds.append(spot.anomaly_threshold + mean)
        code = spot.step(value - mean)
        if code != ANOMALY:
            window.append(value)
        codes.append(code)
    return codes, thresholds


@pytest.mark.parametrize("depth", [1, 10, 50])
def test_dspot_is_libspot_on_the_dedrifted_stream(depth):
    libspot = _libspot()
    values = _drifting()
    codes, thresholds = _dedrifted_reference(libspot, values, depth, 600, q=1e-3, max_excess=100)
    dspot = DSpot(depth, 1e-3, max_excess=100)
    dspot.fit(values[:600])
    for value, code, threshold in zip(values[600:], codes, thresholds):
        assert dspot.anomaly_threshold == pytest.approx(threshold, rel=1e-9)
        assert dspot.step(value) == code


def test_two_sided_dspot_matches_the_two_tailed_reference_on_the_dedrifted_stream():
    libspot = _libspot()
    values = _drifting()
    values[2000] -= 12.0
    depth = 10
    residuals = [values[i] - statistics.fmean(values[i - depth:i]) for i in range(depth, 600)]
    _, _, reference_step = _reference_two_tails(libspot, residuals, q=1e-3, max_excess=100)
    window = deque(values[600 - depth:600], maxlen=depth)
    dspot = DSpot(depth, 1e-3, tails="both", max_excess=100)
    dspot.fit(values[:600])
    seen = Counter()
    for value in values[600:]:
        expected = reference_step(value - statistics.fmean(window))
        assert (dspot.step(value), dspot.last_direction) == expected
        if expected[0] != ANOMALY:
            window.append(value)
        seen[expected] += 1
    assert seen[(ANOMALY, "up")] >= 3 and seen[(ANOMALY, "down")] >= 1


def test_dspot_follows_a_drift_that_spot_alarms_on():
    """The paper's point: under drift SPOT flags the whole climb, DSPOT only the spikes."""
    values = _drifting()
    spot, dspot = Spot(1e-3), DSpot(10, 1e-3)
    spot.fit(values[:600])
    dspot.fit(values[:600])
    spot_alarms = [i for i, v in enumerate(values[600:], 600) if spot.step(v) == ANOMALY]
    dspot_alarms = [i for i, v in enumerate(values[600:], 600) if dspot.step(v) == ANOMALY]
    assert len(spot_alarms) > 1000
    assert {1500, 2600, 3300} <= set(dspot_alarms) and len(dspot_alarms) < 20


def test_dspot_misuse_is_refused():
    with pytest.raises(RuntimeError):
        DSpot(10, 1e-3).step(1.0)  # no window to average yet
    with pytest.raises(ValueError):
        DSpot(10, 1e-3).fit([1.0] * 12)  # fewer than depth + 5 values
    with pytest.raises(AttributeError):
        DSpot(10, 1e-3, tails="both").anomaly_threshold
    with pytest.raises(ValueError):
        DSpot(3, 1e-3).fit([0.0, 1.0, 2.0, math.inf, 4.0, 5.0, 6.0, 7.0, 8.0])


def test_dspot_keeps_infinities_out_of_its_moving_average():
    dspot = DSpot(3, 1e-3, discard_anomalies=False)
    dspot.fit(_drifting(600))
    window = list(dspot.window)
    assert dspot.step(math.inf) == EXCESS and dspot.step(-math.inf) == NORMAL
    assert list(dspot.window) == window and math.isfinite(dspot.moving_average)


# --- pipeline adapters -------------------------------------------------------------------

def test_spot_detector_calibrates_then_judges_like_libspot():
    libspot = _libspot()
    values = np.random.default_rng(RNG_SEED).standard_t(3, size=3000).tolist()
    detector = SpotDetector(q=1e-3, n_init=400, max_excess=100)
    verdicts = [detector.observe(v) for v in values]
    assert {v.status for v in verdicts[:400]} == {Status.CALIBRATING}
    reference = libspot.Spot(1e-3, max_excess=100)
    reference.fit(values[:400])
    names = {NORMAL: Status.NORMAL, EXCESS: Status.EXCESS, ANOMALY: Status.ANOMALY}
    for value, verdict in zip(values[400:], verdicts[400:]):
        assert verdict.threshold == reference.anomaly_threshold
        assert verdict.evidence["up_excess_threshold"] == reference.excess_threshold
        assert (verdict.evidence["up_n"], verdict.evidence["up_Nt"]) == (reference.n, reference.Nt)
        share = reference.Nt / reference.n
        if value > reference.excess_threshold and math.isfinite(value):
            tail = share * stats.genpareto.sf(value - reference.excess_threshold,
                                              c=reference.gamma, scale=reference.sigma)
            assert verdict.evidence["probability"] == pytest.approx(tail, rel=1e-9, abs=1e-300)
            assert verdict.score == pytest.approx(-math.log10(max(tail, 5e-324)), rel=1e-9)
        assert verdict.status == names[reference.step(value)]
        assert verdict.direction == ("up" if verdict.status != Status.NORMAL else None)


def test_detector_never_flags_during_calibration_and_skips_nan():
    detector = SpotDetector(q=1e-3, n_init=20)
    statuses = [detector.observe(v).status for v in [1.0, math.nan, 1e9, math.inf] + [0.0] * 16]
    assert statuses[1] == Status.MISSING
    assert set(statuses) - {Status.MISSING} == {Status.CALIBRATING}
    assert detector.observe(math.nan).status == Status.MISSING


def test_constant_series_stays_calibrating_until_it_varies():
    detector = SpotDetector(q=1e-3, n_init=30)
    assert {detector.observe(5.0).status for _ in range(200)} == {Status.CALIBRATING}
    rng = np.random.default_rng(RNG_SEED)
    statuses = [detector.observe(v).status for v in (5.0 + rng.normal(size=400)).tolist()]
    assert Status.NORMAL in statuses
    assert detector.observe(1e6).status == Status.ANOMALY


@pytest.mark.parametrize("cls, extra", [(SpotDetector, {}), (DSpotDetector, {"depth": 5})])
def test_two_sided_detectors_report_the_tail_concerned(cls, extra):
    values = np.random.default_rng(RNG_SEED).normal(size=1200).tolist()
    detector = cls(q=1e-3, tails="both", n_init=200, **extra)
    detector.fit(values[:200])
    for value in values[200:]:
        detector.observe(value)
    up, down = detector.observe(40.0), detector.observe(-40.0)
    assert (up.status, up.direction, up.threshold) == (Status.ANOMALY, "up", up.evidence["up_anomaly_threshold"])
    assert (down.status, down.direction) == (Status.ANOMALY, "down")
    assert down.threshold == down.evidence["down_anomaly_threshold"]
    assert up.score > 10 and down.score > 10 and math.isfinite(up.score)
    assert detector.observe(math.inf).score == pytest.approx(-math.log10(5e-324))
    json.loads(up.evidence_json())


@pytest.mark.parametrize("cls, extra", [(SpotDetector, {"tails": "down"}),
                                        (DSpotDetector, {"tails": "both", "depth": 7}),
                                        (DSpotDetector, {"depth": 3, "discard_anomalies": False})])
def test_detector_state_round_trip_continues_identically(cls, extra):
    values = _drifting(2500)
    values[1200:1200] = [math.nan, math.inf, -math.inf]
    for cut in (150, 1000):  # mid-calibration and mid-stream
        detector = cls(q=1e-3, n_init=300, max_excess=60, **extra)
        assert json.loads(detector.params_json()) == detector.params()
        for value in values[:cut]:
            detector.observe(value)
        copy = cls.from_dict(json.loads(json.dumps(detector.to_dict(), allow_nan=False)))
        assert copy.params() == detector.params()
        for value in values[cut:]:
            ours, theirs = detector.observe(value), copy.observe(value)
            assert (ours.status, ours.score, ours.threshold, ours.direction) == (
                theirs.status, theirs.score, theirs.threshold, theirs.direction)
            assert ours.evidence_json() == theirs.evidence_json()


def test_dspot_detector_evidence_is_in_the_original_scale():
    values = _drifting()
    detector = DSpotDetector(q=1e-3, n_init=600, depth=10, max_excess=100)
    detector.fit(values[:600])
    window = deque(values[590:600], maxlen=10)
    for value in values[600:1500]:
        verdict = detector.observe(value)
        assert verdict.evidence["moving_average"] == pytest.approx(statistics.fmean(window), rel=1e-12)
        assert verdict.evidence["up_excess_threshold"] > verdict.evidence["moving_average"]
        if verdict.status != Status.ANOMALY:
            window.append(value)


# --- the example -------------------------------------------------------------------------

def test_example_alarm_count_equals_libspot(tmp_path, capsys, monkeypatch):
    libspot = _libspot()
    data = shared_data("spot")
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import mawi_spot

    output = tmp_path / "mawi.png"
    assert mawi_spot.main(["--data", str(data), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    reference = libspot.Spot(q=5e-4, low=False, level=0.99, max_excess=200)
    reference.fit(_mawi("mawi_170812_50_50.csv")[-2000:].tolist())
    alarms = sum(reference.step(v) == ANOMALY for v in _mawi("mawi_180812_50_50.csv").tolist())
    assert alarms > 0 and printed.startswith(f"{alarms} alarms")
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sys.modules.pop("mawi_spot", None)


def test_example_reports_missing_data_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import mawi_spot

    assert mawi_spot.main(["--data", str(tmp_path), "--output", str(tmp_path / "x.png")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: data file not found") and error.count("\n") == 1
    sys.modules.pop("mawi_spot", None)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.lists(st.floats(0.0, 1e6, allow_nan=False), max_size=60),
       st.lists(st.one_of(st.floats(1e-9, 1e9, allow_nan=False), st.sampled_from([1.0, 2.0, math.inf])),
                max_size=300))
def test_excesses_extend_is_push_after_push(capacity, before, values):
    """The compiled extend (SPOT's fit) leaves the buffer, cursor, sums, min and max bit for bit as pushes do."""
    if spot_module._gpd is None:
        skip_or_fail_in_ci("beamlytics/detectors/_gpd.c is not built (pip install -e . builds it)")
    pushed, extended = spot_module._Excesses(capacity), spot_module._Excesses(capacity)
    for excesses in (pushed, extended):
        for x in before:
            excesses.push(x)
    for x in values:
        pushed.push(x)
    extended.extend(np.array(values, dtype=np.float64))
    state = ("cursor", "filled", "total", "total_sq", "minimum", "maximum")
    assert repr([getattr(extended, name) for name in state]) == repr([getattr(pushed, name) for name in state])
    assert extended.buffer.tobytes() == pushed.buffer.tobytes()


def test_a_compiled_module_built_from_an_older_source_is_not_used():
    """A checkout updated without building again keeps an _gpd lacking newer functions: SPOT falls back to Python."""
    import types

    stale = types.ModuleType("_gpd")
    stale.fit = lambda *args: (0.0, 1.0)  # only the oldest function, as the first build of _gpd.c had
    assert spot_module._usable(stale) is None
    current = types.ModuleType("_gpd")
    current.fit = current.extend = current.p2_quantile = stale.fit
    assert spot_module._usable(current) is current
