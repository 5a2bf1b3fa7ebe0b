"""Our SPOT as a threshold, and our detectors as detectors, inside Beam's AnomalyDetection transform:
the labels and thresholds must be those our own classes give when stepped over the same series."""
from __future__ import annotations

import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.anomaly.detectors.zscore import ZScore
from apache_beam.ml.anomaly.transforms import AnomalyDetection

from beamlytics.detectors.spot import ANOMALY, Spot
from beamlytics.transforms.beam_anomaly import BeamlyticsDetector, SpotThreshold, ValueScore, alarm_cutoff
from tests.conftest import collect

N_INIT = 60
Q = 1e-3


def heavy_tailed_series(size: int = 400, seed: int = 7) -> list[float]:
    rng = np.random.default_rng(seed)
    values = rng.pareto(3.0, size) * 100.0
    values[[150, 260, 330]] = [5000.0, 8000.0, 6500.0]
    return values.tolist()


def run_detection(values: list[float], detector) -> list[tuple[int, float | None, float | None, int | None]]:
    """(position, score, threshold, label) per element, in position order.

    Beam's models see elements in arrival order: the Create is not reshuffled so that order is the series'
    (on a distributed runner it need not be, the difference the guide describes).
    """
    def build(pipeline):
        rows = [beam.Row(t=t, x=v) for t, v in enumerate(values)]
        return (pipeline | beam.Create(rows, reshuffle=False) | AnomalyDetection(detector)
                | beam.Map(lambda result: (result.example.t, result.predictions[0].score,
                                           result.predictions[0].threshold, result.predictions[0].label)))
    return sorted(collect(build))


def reference_spot(values: list[float]) -> tuple[list[float], list[int]]:
    """Thresholds and labels of our Spot stepped by hand: fit on the first N_INIT, then step."""
    spot = Spot(Q, level=0.98)
    spot.fit(values[:N_INIT])
    thresholds, labels = [], []
    for value in values[N_INIT:]:
        thresholds.append(spot.anomaly_threshold)
        labels.append(1 if spot.step(value) == ANOMALY else 0)
    return thresholds, labels


def test_spot_threshold_in_beam_equals_our_spot():
    values = heavy_tailed_series()
    results = run_detection(values, ValueScore(features=["x"], threshold_criterion=SpotThreshold(q=Q, n_init=N_INIT)))
    assert [t for t, *_ in results] == list(range(len(values)))
    labels = [label for *_, label in results]
    assert labels[:N_INIT] == [-2] * N_INIT  # calibrating: Beam's "missing" label
    expected_thresholds, expected_labels = reference_spot(values)
    assert labels[N_INIT:] == expected_labels
    assert sum(expected_labels) >= 3  # the planted values are beyond the tail
    # Beam records the threshold after the score is applied: the one the next element is held to
    assert [threshold for _, _, threshold, _ in results[N_INIT:-1]] == pytest.approx(expected_thresholds[1:], rel=1e-12)


def test_spot_threshold_labels_a_beam_detector_scores():
    values = heavy_tailed_series(seed=11)
    results = run_detection(values, ZScore(features=["x"], threshold_criterion=SpotThreshold(q=Q, n_init=N_INIT)))
    scores = [score for _, score, _, _ in results]
    finite = [s for s in scores if s is not None and not math.isnan(s)]
    spot = Spot(Q, level=0.98)
    spot.fit(finite[:N_INIT])
    expected = [1 if spot.step(s) == ANOMALY else 0 for s in finite[N_INIT:]]
    labels = [label for _, score, _, label in results if score is not None and not math.isnan(score)]
    assert labels[N_INIT:] == expected


@pytest.mark.parametrize("name, params", [("gaussian", {"k": 3.0, "n_init": 20}), ("spot", {"q": Q, "n_init": N_INIT}),
                                          ("iqr", {"k": 1.5, "n_init": 20})])
def test_our_detector_in_beam_labels_our_anomalies(name, params):
    from beamlytics.detectors.registry import DETECTORS

    values = heavy_tailed_series(seed=3)
    results = run_detection(values, BeamlyticsDetector(name, params, features=["x"]))
    ours = DETECTORS[name](**params)
    verdicts = [ours.observe(v) for v in values]
    assert [label for *_, label in results] == [
        -2 if v.status == "calibrating" else int(v.is_anomaly) for v in verdicts]
    assert any(v.is_anomaly for v in verdicts)
    assert {threshold for _, _, threshold, _ in results} == {alarm_cutoff(ours)}


def test_gaussian_score_matches_hand_worked_case():
    # history 1..10, then 14 (mean 5.5, σ 3.03 with ddof 1: 2.81σ out, normal, learnt);
    # 20 against 1..10,14 (mean 6.273, σ 3.849) is 3.566σ out: an anomaly at k = 3
    detector = BeamlyticsDetector("gaussian", {"k": 3.0, "n_init": 10})
    for value in range(1, 11):
        assert math.isnan(detector.score_one(beam.Row(x=float(value))))
    assert detector.score_one(beam.Row(x=14.0)) == 0.0
    history = [*range(1, 11), 14]
    expected = (20 - np.mean(history)) / np.std(history, ddof=1)
    assert detector.score_one(beam.Row(x=20.0)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(3.566, abs=1e-3)


def test_rate_detector_refused():
    # Beam's specifiable classes run __init__ at first use, so the refusal comes then
    with pytest.raises(ValueError, match="gaussian"):
        BeamlyticsDetector("poisson").score_one(beam.Row(x=1.0))
