"""beamlytics' detectors inside Beam's own anomaly package (`apache_beam.ml.anomaly`, Beam ≥ 2.64).

- `SpotThreshold`: SPOT as a Beam `ThresholdFn`, labelling the scores of any Beam detector by the
  extreme-value tail of the scores seen so far (instead of a fixed cutoff or a quantile).
- `ValueScore`: a Beam `AnomalyDetector` whose score is the feature's value itself, so that
  `ValueScore(features=["bytes"], threshold_criterion=SpotThreshold())` is SPOT on the raw series.
- `BeamlyticsDetector`: one of our scalar detectors (gaussian, iqr, spot, dspot) as a Beam
  `AnomalyDetector`; its default threshold labels exactly the windows our detector calls anomalies.

The difference from `beamlytics detect`: Beam's transforms keep one model per key in the order
elements arrive (a runner does not promise event-time order), and they score each element; ours
sort each endpoint's windows by event time and keep one model per endpoint and feature, so the
same input gives the same verdicts on every runner. Poisson reads per-slot counts, which Beam's
one-value-per-feature rows cannot carry, so it is not offered here.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.ml.anomaly.base import AnomalyDetector, ThresholdFn
from apache_beam.ml.anomaly.specifiable import specifiable
from apache_beam.ml.anomaly.thresholds import FixedThreshold

from beamlytics.detectors.base import Detector, Status
from beamlytics.detectors.registry import DETECTORS
from beamlytics.detectors.spot import SpotDetector

# Our gaussian and iqr rules score a normal window 0 and an anomaly more than 0: the smallest
# positive float separates them under FixedThreshold's `score >= cutoff`.
_ANY_POSITIVE = math.nextafter(0.0, 1.0)


@specifiable
class SpotThreshold(ThresholdFn):
    """SPOT's anomaly threshold over the stream of scores (stateful).

    The first `n_init` finite scores calibrate the tail and are labelled `missing_label` (no
    threshold yet, as Beam labels a detector that is not ready); then a score beyond SPOT's
    threshold is an outlier and, as in our Spot, is not learnt. NaN scores get `missing_label`,
    None stays None, as Beam's own thresholds do.
    """

    def __init__(self, q: float = 1e-4, level: float = 0.98, n_init: int = 50, max_excess: int = 500,
                 tails: str = "up", **kwargs):
        super().__init__(**kwargs)
        self._spot = SpotDetector(q=q, level=level, n_init=n_init, max_excess=max_excess, tails=tails)

    @property
    def is_stateful(self) -> bool:
        return True

    @property
    def threshold(self) -> Optional[float]:
        """The upper anomaly threshold (the lower one when only the lower tail is watched); NaN while calibrating."""
        if self._spot.model is None:
            return float("nan")
        thresholds = self._spot.model.thresholds()
        return float(thresholds["up" if "up" in thresholds else "down"][1])

    def apply(self, score: Optional[float]) -> Optional[int]:
        if score is None:
            return None
        verdict = self._spot.observe(score)
        if verdict.status in (Status.MISSING, Status.CALIBRATING):
            return self._missing_label
        return self._outlier_label if verdict.is_anomaly else self._normal_label


def _single_value(row: beam.Row, who: str) -> float | None:
    values = list(row)
    if len(values) != 1:
        raise ValueError(f"{who} watches one feature, got {row}")
    return None if values[0] is None else float(values[0])


@specifiable
class ValueScore(AnomalyDetector):
    """The feature's value as its own score: lets a threshold such as SpotThreshold judge raw values."""

    def learn_one(self, x: beam.Row) -> None:
        """Nothing to learn: the threshold holds the state."""

    def score_one(self, x: beam.Row) -> Optional[float]:
        value = _single_value(x, "ValueScore")
        return None if value is None or math.isnan(value) else value


def alarm_cutoff(detector: Detector) -> float:
    """The score at and above which `detector`'s verdict is an anomaly.

    SPOT and DSPOT score −log10 P(beyond the value); a value is an anomaly when that probability is
    below q. Gaussian and iqr score 0 unless a limit is crossed.
    """
    if detector.name in ("spot", "dspot"):
        return -math.log10(detector.q)
    return _ANY_POSITIVE


@specifiable
class BeamlyticsDetector(AnomalyDetector):
    """A beamlytics scalar detector (`gaussian`, `iqr`, `spot`, `dspot` with its parameters) on one feature.

    Our detectors judge and learn in one step (`observe`), so `score_one` does both and
    `learn_one` does nothing: Beam's score-and-learn loop calls them in that order. The score is
    the verdict's (NaN while the detector calibrates, None for a missing value); the default
    threshold is `FixedThreshold(alarm_cutoff(...))`, which labels as outliers exactly the
    verdicts that are anomalies.
    """

    def __init__(self, detector: str = "gaussian", params: Optional[Mapping[str, Any]] = None, **kwargs):
        if detector not in DETECTORS or DETECTORS[detector].input_kind != "scalar":
            offered = sorted(name for name, kind in DETECTORS.items() if kind.input_kind == "scalar")
            raise ValueError(f"detector must be one of {', '.join(offered)}, got {detector!r}")
        self._detector = DETECTORS[detector](**dict(params or {}))
        kwargs.setdefault("threshold_criterion", FixedThreshold(alarm_cutoff(self._detector)))
        kwargs.setdefault("model_id", detector)
        super().__init__(**kwargs)

    def learn_one(self, x: beam.Row) -> None:
        """Learnt in `score_one` (see the class docstring)."""

    def score_one(self, x: beam.Row) -> Optional[float]:
        value = _single_value(x, "BeamlyticsDetector")
        verdict = self._detector.observe(math.nan if value is None else value)
        if verdict.status == Status.CALIBRATING:
            return float("nan")
        return None if verdict.score is None else float(verdict.score)
