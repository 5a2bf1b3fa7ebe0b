"""NetLytics' univariate rules, made online: mean ± kσ and the boxplot (IQR) fences.

NetLytics applied them once to a whole table; here each endpoint's series is judged window
by window against the windows before it, so a detection needs no second pass and the state
(a few numbers, or the recent values for the quartiles) fits in Beam state.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    def score_features(cls, params, columns, train, starts, population=None) -> list[SeriesVerdicts]:
        """`Detector.score_features` with every series of every feature stepped in lockstep by numpy.

        Step t updates the t-th window of all series still running, with the same float
        operations in the same order as `observe`, so verdicts and evidence are bit-identical.
        """
        if population is not None:
            return super().score_features(params, columns, train, starts, population)
        rule = cls(**params)
        values = np.column_stack([np.asarray(column, dtype=np.float64) for column in columns])  # windows x features
        train = np.asarray(train, dtype=bool)
        lengths = np.diff(np.append(starts, len(values)))
        by_length = np.argsort(-lengths, kind="stable")  # the series still running at step t are a prefix
        firsts, lengths = np.asarray(starts)[by_length], lengths[by_length]
        n = np.zeros((len(firsts), values.shape[1]), dtype=np.int64)
        mean = np.zeros(n.shape)
        m2 = np.zeros(n.shape)
        verdicts = _LockstepVerdicts(values.shape)
        running = len(firsts)
        for step in range(int(lengths[0]) if running else 0):
            while lengths[running - 1] <= step:
                running -= 1
            at = firsts[:running] + step
            x = values[at]
            seen = ~np.isnan(x)
            judging = ~train[at][:, None]
            calibrating = judging & seen & (n[:running] < rule.n_init)
            learn = (seen & ~judging) | calibrating
            rows, features = np.nonzero(judging & seen & ~calibrating)
            if rows.size:
                anomalous = verdicts.judge(rule, at[rows], features, x[rows, features], n[rows, features],
                                           mean[rows, features], m2[rows, features])
                accepted = ~anomalous if rule.discard_anomalies else slice(None)
                learn[rows[accepted], features[accepted]] = True
            rows, features = np.nonzero(learn)
            n[rows, features] += 1
            delta = x[rows, features] - mean[rows, features]
            mean[rows, features] += delta / n[rows, features]
            m2[rows, features] += delta * (x[rows, features] - mean[rows, features])
            rows, features = np.nonzero(calibrating)
            verdicts.status[at[rows], features] = _CALIBRATING
            verdicts.n[at[rows], features] = n[rows, features]
        return [verdicts.columns(~train, feature) for feature in range(values.shape[1])]

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "Gaussian":
        detector = cls(state["k"], state["n_init"], state["discard_anomalies"])
        detector.n, detector.mean, detector.m2 = int(state["n"]), float(state["mean"]), float(state["m2"])
        return detector


_MISSING, _CALIBRATING, _NORMAL, _ANOMALY = range(4)
# Plain lists, made Arrow per call: a module-level `pa.array` imports pandas, 0.25 s of every `--help`.
_STATUS_NAMES = [Status.MISSING, Status.CALIBRATING, Status.NORMAL, Status.ANOMALY]
_DIRECTION_NAMES = [None, "up", "down"]


class _LockstepVerdicts:
    """What `Gaussian.score_features` found for each (window, feature), as arrays filled step by step.

    Windows never reached stay MISSING: NaN values, and training windows (dropped at the end).
    """

    def __init__(self, shape: tuple[int, int]):
        self.status = np.full(shape, _MISSING, dtype=np.int8)
        self.direction = np.zeros(shape, dtype=np.int8)
        self.score = np.zeros(shape)
        self.threshold = np.full(shape, np.nan)
        self.n = np.zeros(shape, dtype=np.int64)  # history while calibrating, n of the evidence after
        self.mean = np.zeros(shape)
        self.std = np.zeros(shape)

    def judge(self, rule: "Gaussian", at, features, x, n, mean, m2) -> np.ndarray:
        """Record the verdicts of values `x` (windows `at`, features `features`) against their series'
        states; True where anomalous."""
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
        self.status[at, features] = np.where(anomalous, _ANOMALY, _NORMAL)
        self.direction[at, features] = np.where(up, 1, np.where(down, 2, 0))
        self.score[at, features] = np.where(anomalous, score, 0.0)
        self.threshold[at, features] = np.where(up, high, np.where(down, low, np.nan))
        self.n[at, features], self.mean[at, features], self.std[at, features] = n, mean, std
        return anomalous

    def columns(self, keep: np.ndarray, feature: int) -> SeriesVerdicts:
        status = self.status[keep, feature]
        limited = status >= _NORMAL
        threshold = self.threshold[keep, feature]
        return SeriesVerdicts(
            status=pa.array(_STATUS_NAMES, pa.string()).take(pa.array(status)),
            score=pa.array(self.score[keep, feature], mask=~limited),
            threshold=pa.array(threshold, mask=np.isnan(threshold)),
            direction=pa.array(_DIRECTION_NAMES, pa.string()).take(pa.array(self.direction[keep, feature])),
            evidence=_gaussian_evidence(status, self.n[keep, feature], self.mean[keep, feature],
                                        self.std[keep, feature]),
        )


def _gaussian_evidence(status: np.ndarray, n: np.ndarray, mean: np.ndarray, std: np.ndarray) -> pa.Array:
    """`Verdict.evidence_json` of each window's Gaussian evidence, written once per distinct (n, mean, std) by
    Arrow over whole columns (a Python %-format per row cost 3 µs, most of scoring a large run). Series of
    counts and ratios repeat their states: 4 of the 5 benchmark features had 4,000-15,000 distinct states in
    831,737 judged windows (docs/benchmarks.md). States are told apart by their bits, so 0.0 and -0.0 and
    NaNs of any payload keep their own texts."""
    limited = np.flatnonzero(status >= _NORMAL)
    states = np.empty((limited.size, 3), dtype=np.int64)
    states[:, 0] = n[limited]
    states[:, 1] = mean[limited].view(np.int64)
    states[:, 2] = std[limited].view(np.int64)
    # Each state as 24 bytes, so that one hash pass finds the distinct ones.
    encoded = pc.dictionary_encode(pa.Array.from_buffers(pa.binary(24), limited.size, [None, pa.py_buffer(states)]))
    distinct = np.frombuffer(encoded.dictionary.buffers()[1] or b"", dtype=np.int64,
                             count=3 * len(encoded.dictionary)).reshape(-1, 3)
    texts = pc.binary_join_element_wise(
        '{"mean": ', _float_texts(distinct[:, 1].view(np.float64)), ', "n": ',
        pc.cast(pa.array(distinct[:, 0]), pa.string()), ', "std": ', _float_texts(distinct[:, 2].view(np.float64)),
        "}", "")
    calibrating = np.flatnonzero(status == _CALIBRATING)
    histories, of_history = np.unique(n[calibrating], return_inverse=True)
    texts = pa.concat_arrays([
        texts, pc.binary_join_element_wise('{"history": ', pc.cast(pa.array(histories), pa.string()), "}", ""),
        pa.array(["{}"], pa.string())])
    index = np.full(status.size, len(texts) - 1, dtype=np.int64)
    index[limited] = encoded.indices.to_numpy()
    index[calibrating] = len(distinct) + of_history
    return texts.take(pa.array(index))


def _float_texts(values: np.ndarray) -> pa.Array:
    """`json_number` of every value. Arrow writes the same shortest digits as repr, in the same plain
    notation for 1e-4 <= |x| < 1e9 once a whole number gets its ".0" (checked against repr on millions
    of values, powers of ten and their neighbours); the rest, rare here, are written by json_number."""
    texts = pc.cast(pa.array(values), pa.string())
    texts = pc.if_else(pc.match_substring(texts, "."), texts, pc.binary_join_element_wise(texts, ".0", ""))
    size = np.abs(values)
    other = ~(((size >= 1e-4) & (size < 1e9)) | (size == 0))
    if other.any():
        texts = pc.replace_with_mask(texts, pa.array(other),
                                     pa.array([json_number(value) for value in values[other].tolist()], pa.string()))
    return texts


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
        self.values: list[float] = []  # oldest first: what leaves the history next
        self._ordered: list[float] = []  # the same values sorted, for the quartiles

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "n_init": self.n_init, "history": self.history,
                "discard_anomalies": self.discard_anomalies}

    def _count(self) -> int:
        return len(self.values)

    def _learn(self, value: float) -> None:
        self.values.append(value)
        bisect.insort(self._ordered, value)
        if len(self.values) > self.history:
            del self._ordered[bisect.bisect_left(self._ordered, self.values[0])]
            del self.values[0]

    def _quartiles(self) -> tuple[float, float]:
        return _percentile(self._ordered, 0.25), _percentile(self._ordered, 0.75)

    def _limits(self) -> tuple[float, float, dict[str, Any]]:
        q1, q3 = self._quartiles()
        iqr = q3 - q1
        evidence = {"q1": q1, "q3": q3, "iqr": iqr, "n": len(self.values)}
        return q1 - self.k * iqr, q3 + self.k * iqr, evidence

    def _score(self, outer: float, inner: float) -> float:
        """Distance beyond the crossed fence, in IQRs."""
        q1, q3 = self._quartiles()
        iqr = q3 - q1
        return (outer - inner) / iqr if iqr > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**self.params(), "values": list(self.values)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "BoxPlot":
        detector = cls(state["k"], state["n_init"], state["history"], state["discard_anomalies"])
        detector.values = [float(v) for v in state["values"]]
        detector._ordered = sorted(detector.values)
        return detector


def _percentile(ordered: list[float], fraction: float) -> float:
    """`np.percentile(values, 100 * fraction)` (its default, linear method) of the sorted `values`,
    with numpy's own float operations in its order, so the same bits at a fraction of the cost."""
    position = (len(ordered) - 1) * fraction
    below = math.floor(position)
    gamma = position - below
    low, high = ordered[below], ordered[min(below + 1, len(ordered) - 1)]
    difference = high - low
    if gamma >= 0.5:  # numpy interpolates from the nearer end
        return high - difference * (1 - gamma)
    return low + difference * gamma
