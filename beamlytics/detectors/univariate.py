"""NetLytics' univariate rules, made online: mean ± kσ and the boxplot (IQR) fences.

NetLytics applied them once to a whole table; here each endpoint's series is judged window
by window against the windows before it, so a detection needs no second pass and the state
(a few numbers, or the recent values for the quartiles) fits in Beam state.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from beamlytics.detectors.base import Detector, Observation, SeriesVerdicts, Status, Verdict, json_number


class _OnlineRule(Detector):
    """What both rules share: calibration length, NaN handling, learning policy."""

    def __init__(self, n_init: int = 10, discard_anomalies: bool = True):
        if n_init < 2:
            raise ValueError("n_init must be at least 2: a spread needs two values")
        self.n_init = int(n_init)
        self.discard_anomalies = bool(discard_anomalies)

    def fit(self, history: Sequence[Observation]) -> None:
        for value in history:
            value = float(value)
            if not math.isnan(value):
                self._learn(value)

    def observe(self, value: Observation) -> Verdict:
        value = float(value)
        if math.isnan(value):
            return Verdict(Status.MISSING)
        if self._count() < self.n_init:
            self._learn(value)
            return Verdict(Status.CALIBRATING, evidence={"history": self._count()})
        low, high, evidence = self._limits()
        if value > high:
            verdict = Verdict(Status.ANOMALY, self._score(value, high), high, "up", evidence)
        elif value < low:
            verdict = Verdict(Status.ANOMALY, self._score(low, value), low, "down", evidence)
        else:
            verdict = Verdict(Status.NORMAL, 0.0, None, None, evidence)
        if not (verdict.is_anomaly and self.discard_anomalies):
            self._learn(value)
        return verdict


class Gaussian(_OnlineRule):
    """Anomaly when a value leaves mean ± k·σ of the accepted history (σ with ddof=1).

    The running mean and spread use Welford's update, so the state is three numbers
    however long the series.
    """

    name = "gaussian"

    def __init__(self, k: float = 3.0, n_init: int = 10, discard_anomalies: bool = True):
        super().__init__(n_init, discard_anomalies)
        self.k = float(k)
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "n_init": self.n_init, "discard_anomalies": self.discard_anomalies}

    def _count(self) -> int:
        return self.n

    def _learn(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0

    def _limits(self) -> tuple[float, float, dict[str, Any]]:
        std = self.std()
        evidence = {"mean": self.mean, "std": std, "n": self.n}
        return self.mean - self.k * std, self.mean + self.k * std, evidence

    def _score(self, outer: float, inner: float) -> float:
        """Distance from the mean in σ: how many standard deviations out the value is."""
        std = self.std()
        distance = abs(outer - inner) + self.k * std
        return distance / std if std > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**self.params(), "n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def score_series(cls, params, observations, train, starts, population=None) -> SeriesVerdicts:
        """`Detector.score_series` with every series stepped in lockstep by numpy.

        Step t updates the t-th window of all series still running, with the same float
        operations in the same order as `observe`, so verdicts and evidence are bit-identical.
        """
        if population is not None:
            return super().score_series(params, observations, train, starts, population)
        rule = cls(**params)
        values = np.asarray(observations, dtype=np.float64)
        train = np.asarray(train, dtype=bool)
        lengths = np.diff(np.append(starts, values.size))
        by_length = np.argsort(-lengths, kind="stable")  # the series still running at step t are a prefix
        firsts, lengths = np.asarray(starts)[by_length], lengths[by_length]
        n = np.zeros(len(firsts), dtype=np.int64)
        mean = np.zeros(len(firsts))
        m2 = np.zeros(len(firsts))
        verdicts = _LockstepVerdicts(values.size)
        running = len(firsts)
        for step in range(int(lengths[0]) if running else 0):
            while lengths[running - 1] <= step:
                running -= 1
            at = firsts[:running] + step
            x = values[at]
            seen = ~np.isnan(x)
            judging = ~train[at]
            calibrating = judging & seen & (n[:running] < rule.n_init)
            limits = np.flatnonzero(judging & seen & ~calibrating)
            learn = seen & ~judging | calibrating
            if limits.size:
                anomalous = verdicts.judge(rule, at[limits], x[limits], n[limits], mean[limits], m2[limits])
                accepted = ~anomalous if rule.discard_anomalies else np.ones(limits.size, dtype=bool)
                learn[limits[accepted]] = True
            verdicts.status[at[judging & ~seen]] = _MISSING
            learning = np.flatnonzero(learn)
            n[learning] += 1
            delta = x[learning] - mean[learning]
            mean[learning] += delta / n[learning]
            m2[learning] += delta * (x[learning] - mean[learning])
            verdicts.status[at[calibrating]] = _CALIBRATING
            verdicts.n[at[calibrating]] = n[:running][calibrating]
        return verdicts.columns(~train)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "Gaussian":
        detector = cls(state["k"], state["n_init"], state["discard_anomalies"])
        detector.n, detector.mean, detector.m2 = int(state["n"]), float(state["mean"]), float(state["m2"])
        return detector


_MISSING, _CALIBRATING, _NORMAL, _ANOMALY = range(4)
_STATUS_NAMES = pa.array([Status.MISSING, Status.CALIBRATING, Status.NORMAL, Status.ANOMALY])
_DIRECTION_NAMES = pa.array([None, "up", "down"], pa.string())


class _LockstepVerdicts:
    """What `Gaussian.score_series` found for each window, as arrays filled step by step."""

    def __init__(self, size: int):
        self.status = np.full(size, _MISSING, dtype=np.int8)
        self.direction = np.zeros(size, dtype=np.int8)
        self.score = np.zeros(size)
        self.threshold = np.full(size, np.nan)
        self.n = np.zeros(size, dtype=np.int64)  # history while calibrating, n of the evidence after
        self.mean = np.zeros(size)
        self.std = np.zeros(size)

    def judge(self, rule: "Gaussian", at, x, n, mean, m2) -> np.ndarray:
        """Record the verdicts of values `x` (at positions `at`) against series states; True where anomalous."""
        std = np.sqrt(m2 / (n - 1))
        spread = rule.k * std
        low, high = mean - spread, mean + spread
        up, down = x > high, x < low
        down &= ~up
        anomalous = up | down
        outer = np.where(up, x, low)
        inner = np.where(up, high, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(std > 0, (np.abs(outer - inner) + spread) / std, np.inf)
        self.status[at] = np.where(anomalous, _ANOMALY, _NORMAL)
        self.direction[at] = np.where(up, 1, np.where(down, 2, 0))
        self.score[at] = np.where(anomalous, score, 0.0)
        self.threshold[at] = np.where(up, high, np.where(down, low, np.nan))
        self.n[at], self.mean[at], self.std[at] = n, mean, std
        return anomalous

    def columns(self, keep: np.ndarray) -> SeriesVerdicts:
        status = self.status[keep]
        limited = status >= _NORMAL
        evidence = [
            f'{{"mean": {json_number(mean)}, "n": {n}, "std": {json_number(std)}}}' if code >= _NORMAL
            else f'{{"history": {n}}}' if code == _CALIBRATING else "{}"
            for code, n, mean, std in zip(status.tolist(), self.n[keep].tolist(), self.mean[keep].tolist(),
                                          self.std[keep].tolist())
        ]
        threshold = self.threshold[keep]
        return SeriesVerdicts(
            status=_STATUS_NAMES.take(pa.array(status)),
            score=pa.array(self.score[keep], mask=~limited),
            threshold=pa.array(threshold, mask=np.isnan(threshold)),
            direction=_DIRECTION_NAMES.take(pa.array(self.direction[keep])),
            evidence=pa.array(evidence, pa.string()),
        )


class BoxPlot(_OnlineRule):
    """Anomaly outside the fences [Q1 − k·IQR, Q3 + k·IQR] of the last `history` accepted values.

    Quartiles are numpy's default (linear) percentiles, as in NetLytics' pandas code.
    """

    name = "iqr"

    def __init__(self, k: float = 1.5, n_init: int = 10, history: int = 1000, discard_anomalies: bool = True):
        super().__init__(n_init, discard_anomalies)
        if history < n_init:
            raise ValueError("history must be at least n_init")
        self.k = float(k)
        self.history = int(history)
        self.values: list[float] = []

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "n_init": self.n_init, "history": self.history,
                "discard_anomalies": self.discard_anomalies}

    def _count(self) -> int:
        return len(self.values)

    def _learn(self, value: float) -> None:
        self.values.append(value)
        if len(self.values) > self.history:
            del self.values[0]

    def _limits(self) -> tuple[float, float, dict[str, Any]]:
        q1, q3 = np.percentile(self.values, [25.0, 75.0])
        iqr = float(q3 - q1)
        evidence = {"q1": float(q1), "q3": float(q3), "iqr": iqr, "n": len(self.values)}
        return float(q1) - self.k * iqr, float(q3) + self.k * iqr, evidence

    def _score(self, outer: float, inner: float) -> float:
        """Distance beyond the crossed fence, in IQRs."""
        q1, q3 = np.percentile(self.values, [25.0, 75.0])
        iqr = float(q3 - q1)
        return (outer - inner) / iqr if iqr > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**self.params(), "values": list(self.values)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "BoxPlot":
        detector = cls(state["k"], state["n_init"], state["history"], state["discard_anomalies"])
        detector.values = [float(v) for v in state["values"]]
        return detector
