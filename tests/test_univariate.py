"""The online gaussian and boxplot rules, checked against numpy on hand-made series."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamlytics.detectors.base import Status
from beamlytics.detectors.univariate import BoxPlot, Gaussian, _percentile


def reference_gaussian(series, k, n_init):
    """Judge each value against numpy's mean/std (ddof=1) of the values accepted before it."""
    accepted, verdicts = [], []
    for value in series:
        if len(accepted) < n_init:
            verdicts.append(Status.CALIBRATING)
            accepted.append(value)
            continue
        mean, std = np.mean(accepted), np.std(accepted, ddof=1)
        anomalous = value > mean + k * std or value < mean - k * std
        verdicts.append(Status.ANOMALY if anomalous else Status.NORMAL)
        if not anomalous:
            accepted.append(value)
    return verdicts


def reference_boxplot(series, k, n_init, history):
    accepted, verdicts = [], []
    for value in series:
        if len(accepted) < n_init:
            verdicts.append(Status.CALIBRATING)
            accepted = (accepted + [value])[-history:]
            continue
        q1, q3 = np.percentile(accepted, [25, 75])
        anomalous = value > q3 + k * (q3 - q1) or value < q1 - k * (q3 - q1)
        verdicts.append(Status.ANOMALY if anomalous else Status.NORMAL)
        if not anomalous:
            accepted = (accepted + [value])[-history:]
    return verdicts


def series_with_outliers(seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(100, 10, size=400)
    values[[50, 120, 121, 300]] = [180, 20, 175, 300]
    return values.tolist()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gaussian_matches_numpy(seed):
    series = series_with_outliers(seed)
    detector = Gaussian(k=3, n_init=20)
    assert [detector.observe(v).status for v in series] == reference_gaussian(series, 3, 20)
    accepted = [v for v, s in zip(series, reference_gaussian(series, 3, 20)) if s != Status.ANOMALY]
    assert detector.mean == pytest.approx(np.mean(accepted), rel=1e-12)
    assert detector.std() == pytest.approx(np.std(accepted, ddof=1), rel=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_boxplot_matches_numpy(seed):
    series = series_with_outliers(seed)
    detector = BoxPlot(k=1.5, n_init=20, history=100)
    assert [detector.observe(v).status for v in series] == reference_boxplot(series, 1.5, 20, 100)


def test_gaussian_hand_worked_case():
    detector = Gaussian(k=2, n_init=4)
    for value in [10, 12, 14, 16]:  # mean 13, sample std sqrt(20/3) = 2.582
        assert detector.observe(value).status == Status.CALIBRATING
    upper = 13 + 2 * math.sqrt(20 / 3)
    verdict = detector.observe(18.2)
    assert verdict.status == Status.ANOMALY and verdict.direction == "up"
    assert verdict.threshold == pytest.approx(upper)
    assert verdict.score == pytest.approx((18.2 - 13) / math.sqrt(20 / 3))
    assert detector.observe(8.0).status == Status.NORMAL  # 13 - 2σ = 7.84
    # 8 was accepted: [10, 12, 14, 16, 8] has mean 12 and σ = sqrt(10), so the lower limit is 5.68
    assert detector.observe(5.0).direction == "down"


def test_boxplot_hand_worked_case():
    detector = BoxPlot(k=1.5, n_init=5, history=5)
    for value in [1, 2, 3, 4, 5]:  # Q1 2, Q3 4, IQR 2 → fences -1 and 7
        detector.observe(value)
    assert detector.observe(7.0).status == Status.NORMAL  # on the fence is not beyond it
    # 7 was accepted and the oldest value (1) left the history: [2,3,4,5,7] → Q1 3, Q3 5, fences 0 and 8
    verdict = detector.observe(8.5)
    assert (verdict.status, verdict.threshold, verdict.score) == (Status.ANOMALY, 8.0, pytest.approx(0.25))


def test_nan_is_missing_and_not_learned():
    detector = Gaussian(n_init=2)
    assert detector.observe(float("nan")).status == Status.MISSING
    assert detector.n == 0


@pytest.mark.parametrize("cls", [Gaussian, BoxPlot])
def test_state_round_trip_continues_identically(cls):
    series = series_with_outliers(5)
    whole, first = cls(n_init=15), cls(n_init=15)
    expected = [whole.observe(v) for v in series]
    got = [first.observe(v) for v in series[:200]]
    rebuilt = cls.from_dict(json.loads(json.dumps(first.to_dict())))
    got += [rebuilt.observe(v) for v in series[200:]]
    assert got == expected


def test_fit_is_learning_without_judging():
    fitted = Gaussian(n_init=3)
    fitted.fit([1.0, 2.0, 3.0, float("nan")])
    assert fitted.observe(2.5).status == Status.NORMAL
    assert fitted.n == 4


def ragged_series(seed):
    """Series of many lengths with spikes both ways, flat stretches, NaNs and leading training entries."""
    rng = np.random.default_rng(seed)
    values, train, starts = [], [], []
    for length in rng.integers(1, 60, size=40):
        starts.append(len(values))
        series = rng.normal(10.0, 2.0, size=length)
        series[rng.random(length) < 0.05] *= rng.choice([-4.0, 6.0])
        if rng.random() < 0.2:
            series[:] = 3.0  # flat: σ = 0, so every departure scores inf
            series[-1] = 4.0
        series[rng.random(length) < 0.03] = np.nan
        values.extend(series)
        training = int(rng.integers(0, length // 2 + 1))
        train.extend([True] * training + [False] * (length - training))
    return np.array(values), np.array(train), np.array(starts)


@pytest.mark.parametrize("discard", [True, False])
def test_gaussian_lockstep_series_equal_window_by_window(discard):
    values, train, starts = ragged_series(seed=5)
    params = {"k": 2.0, "n_init": 4, "discard_anomalies": discard}
    lockstep = Gaussian.score_features(params, [values, values[::-1]], train, starts)
    one_by_one = [Gaussian.score_series(params, column, train, starts) for column in (values, values[::-1])]
    assert lockstep == one_by_one
    statuses = set(lockstep[0].status.to_pylist())
    assert statuses == {"anomaly", "normal", "calibrating", "missing"}
    assert float("inf") in lockstep[0].score.to_pylist()


def test_no_detector_takes_a_population_model_yet():
    values, train, starts = ragged_series(seed=6)
    with pytest.raises(ValueError, match="gaussian detector takes no population model"):
        Gaussian.score_features({"n_init": 4}, [values], train, starts, population={"pooled": []})
    with pytest.raises(ValueError, match="iqr detector takes no population model"):
        BoxPlot.score_features({"n_init": 4}, [values], train, starts, population={"pooled": []})


# --- the boxplot's quartiles without numpy ------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(st.floats(allow_nan=False, width=64), st.integers(-5, 5).map(float)),
                       min_size=2, max_size=60),
       fraction=st.sampled_from([0.25, 0.75]))
def test_quartile_is_numpys_percentile_bit_for_bit(values, fraction):
    expected = np.percentile(values, 100 * fraction)
    got = _percentile(sorted(values), fraction)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_boxplot_evidence_is_numpys_through_a_sliding_history():
    """Each verdict's quartiles equal np.percentile of the last `history` accepted values, as plain numbers."""
    rng = np.random.default_rng(4)
    series = np.round(rng.gamma(2.0, 3.0, 600), 1).tolist() + [90.0, 95.0]  # ties, then two outliers
    detector, accepted = BoxPlot(k=1.5, n_init=10, history=50), []
    for value in series:
        verdict = detector.observe(value)
        if verdict.status != Status.CALIBRATING:
            q1, q3 = np.percentile(accepted[-50:], [25.0, 75.0])
            assert json.loads(verdict.evidence_json()) == {"q1": q1, "q3": q3, "iqr": q3 - q1, "n": len(accepted[-50:])}
        if verdict.status != Status.ANOMALY:
            accepted.append(value)
    assert verdict.status == Status.ANOMALY


def test_gaussian_lockstep_evidence_with_non_finite_mean_and_spread():
    """Values near the float limit overflow Welford's sums: evidence then writes σ (or the mean) as a string.

    Hand-worked, first series: after 1e200, -1e200, 1e200 the mean is 1e200 / 3 and m2 overflowed
    (2e400), so σ is inf; the second series overflows the mean itself (1e308 - (-1e308))."""
    values = np.array([1e200, -1e200, 1e200, 0.5, 1e308, -1e308, 1e308, 2.0, 1.0, 2.0, 3.0, 4.0])
    train, starts = np.zeros(len(values), dtype=bool), np.array([0, 4, 8])
    params = {"k": 3.0, "n_init": 3}
    with np.errstate(over="ignore", invalid="ignore"):
        lockstep = Gaussian.score_features(params, [values], train, starts)
        assert lockstep == [Gaussian.score_series(params, values, train, starts)]
    evidence = lockstep[0].evidence.to_pylist()
    assert evidence[3] == f'{{"mean": {1e200 / 3!r}, "n": 3, "std": "inf"}}'
    assert evidence[7] == '{"mean": "nan", "n": 3, "std": "nan"}'
    assert evidence[11] == '{"mean": 2.0, "n": 3, "std": 1.0}'  # 1, 2, 3 learnt


def test_float_texts_write_what_json_number_writes():
    """Arrow's float-to-text is used only where its notation is repr's; every boundary of that range,
    whole numbers, non-finite values and random magnitudes are checked against json_number."""
    from beamlytics.detectors.base import json_number
    from beamlytics.detectors.univariate import _float_texts
    powers = 10.0 ** np.arange(-8, 18)
    rng = np.random.default_rng(3)
    values = np.concatenate([
        powers, -powers, np.nextafter(powers, 0), np.nextafter(powers, np.inf), 9.999999 * powers,
        [0.0, -0.0, 1.0, 3.0, 0.1, 1 / 3, np.nan, np.inf, -np.inf, 5e-324],
        rng.uniform(-1, 1, 20_000) * 10.0 ** rng.uniform(-7, 17, 20_000),
        np.round(rng.uniform(0, 1e9, 2_000))])
    assert _float_texts(values).to_pylist() == [json_number(value) for value in values.tolist()]


def test_gaussian_evidence_of_repeated_states_is_each_windows_own():
    """Evidence is written once per distinct (n, mean, σ): each window must still get its own text, as
    `Verdict.evidence_json` writes it, also where states differ only in a sign of zero or a NaN's payload."""
    from beamlytics.detectors.base import Verdict
    from beamlytics.detectors.univariate import _gaussian_evidence
    rng = np.random.default_rng(11)
    other_nan = np.frombuffer(np.int64(0x7FF8000000000001).tobytes(), dtype=np.float64)[0]
    choices = np.array([0.0, -0.0, 1.0, 2.5, 1 / 3, 1e-300, 1e300, np.nan, other_nan, np.inf, -np.inf, 5e-324])
    size = 6000
    status = rng.integers(0, 4, size).astype(np.int8)  # missing, calibrating, normal, anomaly
    n = rng.integers(1, 5, size)
    mean, std = rng.choice(choices, size), rng.choice(choices[:6], size)
    texts = _gaussian_evidence(status, n, mean, std).to_pylist()
    for row, text in enumerate(texts):
        if status[row] >= 2:
            evidence = {"mean": float(mean[row]), "std": float(std[row]), "n": int(n[row])}
        else:
            evidence = {"history": int(n[row])} if status[row] == 1 else {}
        assert text == Verdict(Status.NORMAL, evidence=evidence).evidence_json(), row
    assert {'{"mean": 0.0, "n": 1, "std": -0.0}', '{"mean": -0.0, "n": 1, "std": 0.0}'} <= set(texts)
    assert _gaussian_evidence(status[:0], n[:0], mean[:0], std[:0]).to_pylist() == []
