"""The one small interface through which the pipeline hosts detectors.

A detector watches one series: one feature of one endpoint, window after window, in
event-time order. Its whole state is plain data (`to_dict()` gives JSON-safe dicts and
lists), so a runner can checkpoint it in Beam state and a later run can start from it.
No Beam here.
"""
from __future__ import annotations

import json
import math
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa

Observation = Union[float, Sequence[float]]


class Status:
    CALIBRATING = "calibrating"  # not enough history yet: scored, but never an anomaly
    NORMAL = "normal"
    EXCESS = "excess"  # in the tail the detector models, below the alarm level (SPOT)
    ANOMALY = "anomaly"
    MISSING = "missing"  # NaN observation: nothing to judge


@dataclass(frozen=True)
class Verdict:
    status: str
    score: float | None = None  # larger is more anomalous; scale is the detector's own
    threshold: float | None = None  # the limit the value was held against
    direction: str | None = None  # "up" or "down" when a limit was crossed
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_anomaly(self) -> bool:
        return self.status == Status.ANOMALY

    def evidence_json(self) -> str:
        return json.dumps(_json_safe(self.evidence), sort_keys=True, allow_nan=False)


@dataclass(frozen=True)
class SeriesVerdicts:
    """Verdicts of many windows as Arrow columns, one entry per judged window."""

    status: pa.Array
    score: pa.Array
    threshold: pa.Array
    direction: pa.Array
    evidence: pa.Array  # JSON text, as `Verdict.evidence_json`

    @classmethod
    def of(cls, verdicts: Iterable[Verdict]) -> "SeriesVerdicts":
        verdicts = list(verdicts)
        return cls(
            pa.array([v.status for v in verdicts], pa.string()),
            pa.array([v.score for v in verdicts], pa.float64()),
            pa.array([v.threshold for v in verdicts], pa.float64()),
            pa.array([v.direction for v in verdicts], pa.string()),
            pa.array([v.evidence_json() for v in verdicts], pa.string()),
        )

    @classmethod
    def of_judgements(cls, judgements: Iterable[tuple]) -> "SeriesVerdicts":
        """Verdicts given as (status, score, threshold, direction, evidence) tuples, the evidence flat
        (`flat_evidence_json`): what a detector that judges without a Verdict object per window hands over."""
        rows = list(judgements)
        return cls(
            pa.array([row[0] for row in rows], pa.string()),
            pa.array([row[1] for row in rows], pa.float64()),
            pa.array([row[2] for row in rows], pa.float64()),
            pa.array([row[3] for row in rows], pa.string()),
            pa.array([flat_evidence_json(row[4]) for row in rows], pa.string()),
        )


def json_number(value: float) -> str:
    """A float as `Verdict.evidence_json` writes it (non-finite values as strings)."""
    return repr(value) if math.isfinite(value) else f'"{value!r}"'


# Per set of evidence keys (in insertion order): the JSON text as a %-template with the keys
# sorted, and what picks the values in that order.
_FLAT_TEMPLATES: dict[tuple[str, ...], tuple[str, Callable[[Mapping[str, Any]], tuple]]] = {}


def flat_evidence_json(evidence: Mapping[str, float | int]) -> str:
    """`Verdict.evidence_json` of evidence whose values are all Python floats and ints (no bool,
    no numpy scalar): the text from a template cached per set of keys, since %r writes such values
    as json.dumps does. A detector's evidence comes in a handful of key sets. Non-finite values (a
    sum that is not finite has one) take Verdict's way, which writes them as strings."""
    keys = tuple(evidence)
    if len(keys) < 2:  # itemgetter of one key gives a value, not a tuple
        return json.dumps(_json_safe(evidence), sort_keys=True, allow_nan=False)
    if keys not in _FLAT_TEMPLATES:
        ordered = sorted(keys)
        _FLAT_TEMPLATES[keys] = ("{" + ", ".join(f'"{key}": %r' for key in ordered) + "}",
                                 operator.itemgetter(*ordered))
    template, values_of = _FLAT_TEMPLATES[keys]
    values = values_of(evidence)
    if math.isfinite(sum(values)):
        return template % values
    return json.dumps(_json_safe(evidence), sort_keys=True, allow_nan=False)


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: render them as strings so evidence stays valid JSON."""
    kind = type(value)  # exact built-in types first: the abstract checks below cost most of an evidence row
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if kind is int or kind is str or kind is bool or value is None:
        return value
    if kind is dict:
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return _json_safe(value.item())
    return value


class Detector(ABC):
    """One online detector for one series.

    `observe` judges a window against what was learned before it and then learns from it
    (or not, as the detector's own rules say). `fit` learns from a baseline without judging.
    Subclasses keep their constructor parameters JSON-safe: `params()` is written next to
    every anomaly, and `from_dict(to_dict())` must continue the series identically.
    """

    name: ClassVar[str]
    # What `observe` takes: "scalar" (the feature's value in the window) or "slots"
    # (the per-slot record counts of the window, for rate models).
    input_kind: ClassVar[str] = "scalar"

    @abstractmethod
    def params(self) -> dict[str, Any]: ...

    @abstractmethod
    def fit(self, history: Sequence[Observation]) -> None: ...

    @abstractmethod
    def observe(self, value: Observation) -> Verdict: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "Detector": ...

    def params_json(self) -> str:
        return json.dumps(_json_safe(self.params()), sort_keys=True)

    @classmethod
    def score_series(cls, params: Mapping[str, Any], observations: Sequence[Observation], train: np.ndarray,
                     starts: np.ndarray, population: Mapping[str, Any] | None = None) -> SeriesVerdicts:
        """Many series at once: series i is `observations[starts[i]:starts[i + 1]]`, in event-time order.

        Each series' `train` entries come first: they calibrate a fresh detector (`fit`) and get no
        verdict; the others are judged one by one (`observe`). Returns the verdicts of the judged
        entries, in order. Subclasses vectorise this where their math allows, with identical results.
        `population` is reserved for a model fitted over all endpoints of the same kind (issue 9):
        no detector takes one yet.
        """
        if population is not None:
            raise ValueError(f"the {cls.name} detector takes no population model")
        bounds = [*starts.tolist(), len(observations)]
        verdicts = []
        for first, end in zip(bounds[:-1], bounds[1:]):
            detector, judged = cls._calibrated(params, observations, train, first, end)
            verdicts.extend(detector.observe(value) for value in observations[judged:end])
        return SeriesVerdicts.of(verdicts)

    @classmethod
    def _calibrated(cls, params: Mapping[str, Any], observations: Sequence[Observation], train: np.ndarray,
                    first: int, end: int) -> tuple["Detector", int]:
        """A fresh detector fitted on the leading `train` entries of `observations[first:end]`, and the
        position of the first entry to judge."""
        detector = cls(**params)
        judged = first
        while judged < end and train[judged]:
            judged += 1
        if judged > first:
            detector.fit(observations[first:judged])
        return detector, judged

    @classmethod
    def score_features(cls, params: Mapping[str, Any], columns: Sequence[Sequence[Observation]], train: np.ndarray,
                       starts: np.ndarray, population: Mapping[str, Any] | None = None) -> list[SeriesVerdicts]:
        """`score_series` of each feature's column of observations (the same windows, series and training)."""
        return [cls.score_series(params, observations, train, starts, population) for observations in columns]
