"""Hosting detectors for one endpoint: one detector per scored feature, state as plain data.

The Beam DoFn that keys by endpoint keeps only `EndpointScorer.state()` in Beam state and
hands windows here in event-time order; everything that decides a score lives here, where
tests reach it without a pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple

from beamlytics.detectors.base import Detector, Verdict
from beamlytics.detectors.registry import DETECTORS


class EndpointWindow(NamedTuple):
    """The features of one endpoint in one window: what detectors see."""

    table: str
    key_kind: str
    key: str
    window_start: int  # µs since the epoch, UTC
    window_end: int
    records: int
    features: Mapping[str, float]
    slot_counts: tuple[int, ...] | None = None  # only when a rate detector needs them
    train: bool = False  # baseline or training-period window: learn from it, do not judge it

    @property
    def endpoint(self) -> str:
        return f"{self.table}|{self.key_kind}|{self.key}"


@dataclass(frozen=True)
class DetectorConfig:
    """Which detector, with which parameters, on which features."""

    name: str
    params: Mapping[str, Any]
    features: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.name not in DETECTORS:
            raise ValueError(f"unknown detector {self.name!r}; choose from {', '.join(sorted(DETECTORS))}")
        if self.detector_class.input_kind == "slots" and self.features != ("records",):
            raise ValueError(f"the {self.name} detector models record rates: its only feature is 'records'")
        self.new_detector()  # bad parameters fail here, while the pipeline is being built

    @property
    def detector_class(self) -> type[Detector]:
        return DETECTORS[self.name]

    def new_detector(self) -> Detector:
        return self.detector_class(**self.params)

    def params_json(self) -> str:
        return self.new_detector().params_json()


class EndpointScorer:
    def __init__(self, config: DetectorConfig, state: Mapping[str, Any] | None = None):
        self.config = config
        cls = config.detector_class
        state = state or {}
        self.params_json = config.params_json()  # constructor parameters: the same for every row
        self.detectors: dict[str, Detector] = {
            feature: cls.from_dict(state[feature]) if feature in state else config.new_detector()
            for feature in config.features
        }

    def state(self) -> dict[str, Any]:
        return {feature: detector.to_dict() for feature, detector in self.detectors.items()}

    def _observation(self, window: EndpointWindow, feature: str) -> Any:
        if self.config.detector_class.input_kind == "slots":
            return list(window.slot_counts or ())
        return window.features[feature]

    def fit(self, windows: Iterable[EndpointWindow]) -> None:
        ordered = sorted(windows, key=lambda w: w.window_start)
        for feature, detector in self.detectors.items():
            detector.fit([self._observation(window, feature) for window in ordered])

    def score(self, window: EndpointWindow) -> list[dict[str, Any]]:
        """One row per feature (schemas.ANOMALIES columns), anomalous or not."""
        rows = []
        for feature, detector in self.detectors.items():
            verdict = detector.observe(self._observation(window, feature))
            rows.append(self._row(window, feature, verdict))
        return rows

    def _row(self, window: EndpointWindow, feature: str, verdict: Verdict) -> dict[str, Any]:
        return {
            "table": window.table,
            "key_kind": window.key_kind,
            "key": window.key,
            "feature": feature,
            "window_start": window.window_start,
            "window_end": window.window_end,
            "value": float(window.features[feature]),
            "detector": self.config.name,
            "status": verdict.status,
            "score": verdict.score,
            "threshold": verdict.threshold,
            "direction": verdict.direction,
            "evidence": verdict.evidence_json(),
            "params": self.params_json,
            "records": window.records,
        }
