"""The one small interface through which the pipeline hosts detectors.

A detector watches one series: one feature of one endpoint, window after window, in
event-time order. Its whole state is plain data (`to_dict()` gives JSON-safe dicts and
lists), so a runner can checkpoint it in Beam state and a later run can start from it.
No Beam here.
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence, Union

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


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: render them as strings so evidence stays valid JSON."""
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
