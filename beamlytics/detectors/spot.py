"""SPOT and DSPOT: thresholds from the tail of the data (Siffer et al., KDD 2017).

SPOT models the excesses of a series over a high quantile `t` with a generalised Pareto
distribution (GPD) and sets the anomaly threshold `z_q` so that P(X > z_q) = q. Every value
above `t` (an "excess") refits the GPD; a value above `z_q` is an anomaly and, by default,
is not learnt. DSPOT runs SPOT on the value minus the moving average of the last `depth`
accepted values, so a slow drift does not raise alarms.

`Spot` reproduces libspot 3.1.0 step by step (same codes; thresholds equal to ~1e-12):
its P² estimate of the initial threshold, its choice between the method of moments and
Grimshaw's maximum likelihood by log-likelihood, its Brent root search and bounds, its
circular excess buffer and the order in which it sums. Where libspot's numeric code would
divide by zero or take the log of a negative number, the helpers below return what C
returns (±inf, NaN) instead of raising, so degenerate tails behave the same here.

Deviations from libspot, all on misuse: `max_excess` must be at least 1 (libspot accepts 0
and writes out of bounds) and `fit` refuses NaN values (libspot lets them corrupt the P²
markers). Nothing here imports Beam; every model's state is plain JSON-safe data.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from beamlytics.detectors.base import Detector, Observation, SeriesVerdicts, Status, Verdict

try:
    from beamlytics.detectors import _gpd
except ImportError:  # a source tree setup.py has not built, or a machine without a C compiler
    _gpd = None


def _usable(compiled):
    """The compiled module, or None where it was built from an older _gpd.c (a checkout updated without building
    again) and lacks a function: the Python paths give the same bits."""
    return compiled if all(hasattr(compiled, name) for name in ("fit", "extend", "p2_quantile")) else None


_gpd = _usable(_gpd)

_running_sum = np.add.accumulate

# Step codes, as libspot's.
NORMAL = 0
EXCESS = 1
ANOMALY = 2
# libspot returns minus its ERR_DATA_IS_NAN code when asked to judge NaN.
DATA_IS_NAN = -1005

TAILS = ("up", "down", "both")

_BRENT_EPSILON = 2.0e-8  # libspot's root tolerance, also its bound offset
_BRENT_MAX_ITERATIONS = 200
_SMALLEST_PROBABILITY = 5e-324  # keeps −log10(p) finite for "impossible" values


# --- C arithmetic -----------------------------------------------------------------------
# Python raises where C returns inf or NaN; these keep libspot's results on degenerate tails.

def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0.0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _log(x: float) -> float:
    if x > 0.0 or x != x:
        return math.log(x)
    return -math.inf if x == 0.0 else math.nan


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _pow(base: float, exponent: float) -> float:
    try:
        return math.pow(base, exponent)
    except (ValueError, OverflowError, ZeroDivisionError):
        with np.errstate(all="ignore"):
            return float(np.power(base, exponent))


def _sequential_sum(values: np.ndarray) -> float:
    """values[0] + values[1] + ... in that order, as libspot's loops add.

    numpy's own `sum` adds pairwise, which rounds differently; a running sum does not.
    Overwrites `values` with its running sums.
    """
    return float(_running_sum(values, out=values)[-1]) if values.size else 0.0


def _encode(value: float) -> float | str:
    """JSON has no NaN or infinity: keep them as the strings float() reads back."""
    value = float(value)
    return value if math.isfinite(value) else repr(value)


# --- P² quantile ------------------------------------------------------------------------

def p2_quantile(p: float, values: Sequence[float]) -> float:
    """The P² estimate (Jain & Chlamtac 1985) of the p-quantile, as libspot computes it.

    NaN for fewer than 5 values (libspot's convention: no estimate).
    """
    if _gpd is None:
        return _p2_quantile_python(p, np.asarray(values, dtype=np.float64).tolist())
    return _gpd.p2_quantile(float(p), np.ascontiguousarray(values, dtype=np.float64))


def _p2_quantile_python(p: float, values: Sequence[float]) -> float:
    """`p2_quantile` where _gpd.c is not built: one Python step per value."""
    if len(values) < 5:
        return math.nan
    heights = sorted(float(v) for v in values[:5])
    positions = [0.0, 1.0, 2.0, 3.0, 4.0]
    desired = [0.0, 2.0 * p, 4.0 * p, 2.0 + 2.0 * p, 4.0]
    increments = [0.0, p / 2.0, p, (p + 1.0) / 2.0, 1.0]
    for index in range(5, len(values)):
        x = float(values[index])
        cell = _p2_cell(heights, x)
        for i in range(cell + 1, 5):
            positions[i] += 1.0
        for i in range(1, 4):
            desired[i] += increments[i]
        for i in range(1, 4):
            _p2_adjust(heights, positions, i, desired[i] - positions[i])
    return heights[2]


def _p2_cell(heights: list[float], x: float) -> int:
    """Index k of the cell [heights[k], heights[k+1]] that x falls in; an x outside all
    cells becomes the new lowest or highest marker."""
    if x < heights[0]:
        heights[0] = x
        return 0
    if x > heights[4]:
        heights[4] = x
        return 3
    cell = 1
    while x > heights[cell]:
        cell += 1
    return cell - 1


def _p2_adjust(heights: list[float], positions: list[float], i: int, drift: float) -> None:
    """Move marker i one position towards where it should be, if it lags by a whole step."""
    if not ((drift >= 1.0 and positions[i + 1] - positions[i] > 1.0)
            or (drift <= -1.0 and positions[i - 1] - positions[i] < -1.0)):
        return
    d = 1 if drift > 0 else -1
    h, n = heights, positions
    height = h[i] + (d / (n[i + 1] - n[i - 1])) * (
        (n[i] - n[i - 1] + d) * (h[i + 1] - h[i]) / (n[i + 1] - n[i])
        + (n[i + 1] - n[i] - d) * (h[i] - h[i - 1]) / (n[i] - n[i - 1]))
    if not (h[i - 1] < height < h[i + 1]):  # the parabola overshot: fall back to linear
        height = h[i] + d * (h[i + d] - h[i]) / (n[i + d] - n[i])
    heights[i] = height
    positions[i] += d


# --- Excesses: a circular buffer with running statistics --------------------------------

class _Excesses:
    """The last `capacity` excesses, in buffer order, with their sum, sum of squares, min, max.

    Sums are updated by adding the new value and subtracting the overwritten one; when the
    overwritten value was the min or the max they are recomputed from the buffer (libspot's
    scheme, which also bounds the rounding drift).
    """

    def __init__(self, capacity: int):
        self.buffer = np.zeros(capacity)
        self._scratch = np.empty((2, capacity + 1))
        self.cursor = 0
        self.filled = False
        self.total = 0.0
        self.total_sq = 0.0
        self.minimum = math.nan
        self.maximum = math.nan

    @property
    def size(self) -> int:
        return self.buffer.size if self.filled else self.cursor

    def values(self) -> np.ndarray:
        return self.buffer if self.filled else self.buffer[: self.cursor]

    def push(self, x: float) -> None:
        overwritten = float(self.buffer[self.cursor]) if self.filled else math.nan
        self.buffer[self.cursor] = x
        self.cursor += 1
        if self.cursor == self.buffer.size:
            self.cursor = 0
            self.filled = True
        self.total += x
        self.total_sq += x * x
        first = self.size == 1
        if first or x < self.minimum:
            self.minimum = x
        if first or x > self.maximum:
            self.maximum = x
        if overwritten == overwritten:
            self.total -= overwritten
            self.total_sq -= overwritten * overwritten
            if overwritten <= self.minimum or overwritten >= self.maximum:
                self._recompute()

    def extend(self, values: np.ndarray) -> None:
        """`push` of each of `values` (float64) in turn."""
        if _gpd is None:
            for x in values.tolist():
                self.push(x)
            return
        (self.cursor, self.filled, self.total, self.total_sq, self.minimum, self.maximum) = _gpd.extend(
            self.buffer, np.ascontiguousarray(values, dtype=np.float64), self.cursor, self.filled, self.total,
            self.total_sq, self.minimum, self.maximum)

    def _recompute(self) -> None:
        values = self.values()
        self.total = _sequential_sum(values.copy())
        self.total_sq = _sequential_sum(values * values)
        self.minimum = float(values.min())
        self.maximum = float(values.max())

    # The sums below run several times per refit: they write into two scratch rows (one
    # slot longer than the buffer, for a sum's starting value) instead of allocating.

    def _one_plus_scaled(self, x: float) -> np.ndarray:
        """1 + x·e for each stored excess e, in buffer order, in slots 1.. of scratch row 0."""
        scaled = self._scratch[0, 1: self.size + 1]
        np.multiply(self.values(), x, out=scaled)
        return np.add(scaled, 1.0, out=scaled)

    def sum_log_one_plus(self, x: float, start: float = 0.0, factor: float = 1.0) -> float:
        """start + Σ factor·log(1 + x·e), added in buffer order after `start`."""
        terms = self._one_plus_scaled(x)
        np.log(terms, out=terms)
        if factor != 1.0:
            np.multiply(terms, factor, out=terms)
        self._scratch[0, 0] = start
        return _sequential_sum(self._scratch[0, : self.size + 1])

    def grimshaw_sums(self, x: float) -> tuple[float, float]:
        """Σ 1/(1 + x·e) and Σ log(1 + x·e) over the stored excesses."""
        scaled = self._one_plus_scaled(x)
        inverses = np.divide(1.0, scaled, out=self._scratch[1, : self.size])
        logs = np.log(scaled, out=scaled)
        return _sequential_sum(inverses), _sequential_sum(logs)

    def mean(self) -> float:
        return _div(self.total, float(self.size))

    def variance(self) -> float:
        mean = self.mean()
        return _div(self.total_sq, float(self.size)) - mean * mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": [_encode(v) for v in self.values().tolist()],
            "capacity": int(self.buffer.size),
            "cursor": self.cursor,
            "filled": self.filled,
            "total": _encode(self.total),
            "total_sq": _encode(self.total_sq),
            "minimum": _encode(self.minimum),
            "maximum": _encode(self.maximum),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "_Excesses":
        excesses = cls(int(state["capacity"]))
        values = [float(v) for v in state["values"]]
        excesses.buffer[: len(values)] = values
        excesses.cursor = int(state["cursor"])
        excesses.filled = bool(state["filled"])
        excesses.total = float(state["total"])
        excesses.total_sq = float(state["total_sq"])
        excesses.minimum = float(state["minimum"])
        excesses.maximum = float(state["maximum"])
        return excesses


# --- GPD fit ----------------------------------------------------------------------------

def _log_likelihood(excesses: _Excesses, gamma: float, sigma: float) -> float:
    size = float(excesses.size)
    if gamma == 0.0:
        return -size * _log(sigma) - _div(excesses.total, sigma)
    shape = 1.0 + _div(1.0, gamma)
    return excesses.sum_log_one_plus(_div(gamma, sigma), start=-size * _log(sigma), factor=-shape)


def _method_of_moments(excesses: _Excesses) -> tuple[float, float, float]:
    mean = excesses.mean()
    ratio = _div(mean * mean, excesses.variance())
    gamma = 0.5 * (1.0 - ratio)
    sigma = 0.5 * mean * (1.0 + ratio)
    return gamma, sigma, _log_likelihood(excesses, gamma, sigma)


def _grimshaw(excesses: _Excesses) -> tuple[float, float, float]:
    """Maximum likelihood by Grimshaw's trick: the roots of one function of x = γ/σ.

    x = 0 (the exponential) is always a candidate; Brent looks for one negative and one
    positive root in libspot's bounds; the candidate with the highest likelihood wins.
    """
    count = float(excesses.size)
    if count == 0.0:
        # every bound is NaN, so libspot's searches fail and x = 0 gives σ = NaN
        return 0.0, math.nan, math.nan

    def w(x: float) -> float:
        inverse_sum, log_sum = excesses.grimshaw_sums(x)
        return (inverse_sum / count) * (1.0 + log_sum / count) - 1.0

    def candidate(x: float) -> tuple[float, float, float]:
        if x == 0.0:
            gamma, sigma = 0.0, excesses.mean()
        else:
            gamma = (1.0 + excesses.sum_log_one_plus(x) / count) - 1.0
            sigma = _div(gamma, x)
        return gamma, sigma, _log_likelihood(excesses, gamma, sigma)

    minimum, maximum, mean = excesses.minimum, excesses.maximum, excesses.mean()
    half_over_max = _div(0.5, maximum)
    epsilon = math.nan if half_over_max != half_over_max else min(_BRENT_EPSILON, half_over_max)
    roots = [
        _brent(w, _div(-1.0, maximum) + epsilon, -epsilon),
        _brent(w, epsilon, _div(2.0 * (mean - minimum), minimum * minimum)),
    ]
    best = candidate(0.0)
    for root in roots:
        if root is not None:
            fitted = candidate(root)
            if fitted[2] > best[2]:
                best = fitted
    return best


def _fit_gpd_numpy(excesses: _Excesses) -> tuple[float, float]:
    """γ and σ of the estimator with the highest log-likelihood (the first if undefined)."""
    with np.errstate(all="ignore"):
        best = None
        for estimator in (_method_of_moments, _grimshaw):
            gamma, sigma, likelihood = estimator(excesses)
            if best is None or best[2] != best[2] or likelihood > best[2]:
                best = (gamma, sigma, likelihood)
    return float(best[0]), float(best[1])


def _fit_gpd_compiled(excesses: _Excesses) -> tuple[float, float]:
    """`_fit_gpd_numpy` in C (_gpd.c): the same operations in the same order, one loop a pass."""
    return _gpd.fit(excesses.values(), excesses.total, excesses.total_sq, excesses.minimum,
                    excesses.maximum)


# The numpy path is what runs where setup.py could not compile _gpd.c (it builds it optionally).
_fit_gpd = _fit_gpd_numpy if _gpd is None else _fit_gpd_compiled


def _brent(function: Callable[[float], float], a: float, b: float,
           tolerance: float = _BRENT_EPSILON) -> float | None:
    """A root of `function` in [a, b] by Brent's method (the Numerical Recipes variant
    libspot uses), or None when the ends do not bracket one or it does not converge."""
    a, b = float(a), float(b)
    fa, fb = function(a), function(b)
    if (fa > 0.0 and fb > 0.0) or (fa < 0.0 and fb < 0.0):
        return None
    c, fc = b, fb
    d = e = 0.0
    for _ in range(_BRENT_MAX_ITERATIONS):
        if (fb > 0.0 and fc > 0.0) or (fb < 0.0 and fc < 0.0):
            c, fc = a, fa
            e = d = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        bound = 2.0 * _BRENT_EPSILON * abs(b) + 0.5 * tolerance
        middle = 0.5 * (c - b)
        if abs(middle) <= bound or fb == 0.0:
            return float(b)
        if abs(e) >= bound and abs(fa) > abs(fb):
            d, e = _brent_interpolate(a, b, c, fa, fb, fc, d, e, middle, bound)
        else:
            d = e = middle
        a, fa = b, fb
        b = b + (d if abs(d) > bound else (abs(bound) if middle >= 0.0 else -abs(bound)))
        fb = function(b)
    return None


def _brent_interpolate(a, b, c, fa, fb, fc, d, e, middle, bound):
    """Next (step, previous step): inverse quadratic (or secant) step if it stays in
    bounds and shrinks fast enough, else bisection."""
    s = fb / fa
    if a == c:
        p = 2.0 * middle * s
        q = 1.0 - s
    else:
        q = fa / fc
        r = fb / fc
        p = s * (2.0 * middle * q * (q - r) - (b - a) * (r - 1.0))
        q = (q - 1.0) * (r - 1.0) * (s - 1.0)
    if p > 0.0:
        q = -q
    p = abs(p)
    limit_interpolation = 3.0 * middle * q - abs(bound * q)
    limit_previous = abs(e * q)
    limit = limit_interpolation if limit_interpolation < limit_previous else limit_previous
    if 2.0 * p < limit:
        return p / q, d
    return middle, middle


# --- SPOT -------------------------------------------------------------------------------

class Spot:
    """One tail of SPOT with libspot 3.x semantics.

    `step(x)` returns NORMAL, EXCESS (x is at or beyond the excess threshold: the GPD is
    refitted and the anomaly threshold moves) or ANOMALY (x strictly beyond the anomaly
    threshold: with `discard_anomalies`, nothing is learnt, not even n). NaN returns
    DATA_IS_NAN and changes nothing. Before `fit` the thresholds are NaN and every value
    is NORMAL (but counted in n), as in libspot. `low=True` watches the lower tail.
    """

    def __init__(self, q: float, low: bool = False, discard_anomalies: bool = True,
                 level: float = 0.98, max_excess: int = 500):
        if not 0.0 <= level < 1.0:
            raise ValueError("level must be in [0, 1), close to 1")
        if not 0.0 < q < 1.0 - level:
            raise ValueError("q must be in (0, 1 - level)")
        if max_excess < 1:
            raise ValueError("max_excess must be at least 1")
        self.q = float(q)
        self.low = bool(low)
        self.discard_anomalies = bool(discard_anomalies)
        self.level = float(level)
        self.max_excess = int(max_excess)
        self._sign = -1.0 if self.low else 1.0  # mirrors the lower tail onto the upper one
        self.n = 0
        self.Nt = 0
        self.excess_threshold = math.nan
        self.anomaly_threshold = math.nan
        self.gamma = math.nan
        self.sigma = math.nan
        self._excesses = _Excesses(self.max_excess)

    @property
    def direction(self) -> str:
        return "down" if self.low else "up"

    @property
    def last_direction(self) -> str:
        return self.direction

    def tails(self) -> list[tuple[str, "Spot"]]:
        return [(self.direction, self)]

    def thresholds(self) -> dict[str, tuple[float, float]]:
        return {self.direction: (self.excess_threshold, self.anomaly_threshold)}

    def excesses(self) -> list[float]:
        """The stored excesses in buffer order (libspot's `excesses()`)."""
        return self._excesses.values().tolist()

    def fit(self, values: Iterable[float]) -> None:
        """Initial thresholds from a calibration sample (at least 5 values, no NaN).

        As in libspot, n restarts at len(values) and Nt at 0, but excesses already stored
        stay in the buffer. Raises ValueError when a threshold comes out NaN.
        """
        data = np.asarray(list(values), dtype=float).ravel()
        if np.isnan(data).any():
            raise ValueError("fit values must not contain NaN")
        self.Nt = 0
        self.n = int(data.size)
        threshold = p2_quantile(1.0 - self.level if self.low else self.level, data)
        if math.isnan(threshold):
            raise ValueError("The excess threshold has not been initialized")
        self.excess_threshold = threshold
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, not an excess, as in C
            excesses = self._sign * (data - threshold)
            excesses = excesses[excesses > 0]
        self.Nt += int(excesses.size)
        self._excesses.extend(excesses)
        self._refit()
        if math.isnan(self.anomaly_threshold):
            raise ValueError("The anomaly threshold has not been initialized")

    def step(self, x: float) -> int:
        x = float(x)
        if x != x:
            return DATA_IS_NAN
        if self.discard_anomalies and self._sign * (x - self.anomaly_threshold) > 0.0:
            return ANOMALY
        self.n += 1
        excess = self._sign * (x - self.excess_threshold)
        if excess >= 0.0:
            self.Nt += 1
            self._excesses.push(excess)
            self._refit()
            return EXCESS
        return NORMAL

    def steps(self, values: Iterable[float]) -> np.ndarray:
        """`step` of each value in turn, the codes as an array: the same codes and the same
        state after as stepping one by one. A value short of the excess threshold only counts
        in n (the thresholds move only on excesses), so such runs are judged in bulk and only
        excesses, NaN and the rest go through `step`."""
        data = np.asarray(values, dtype=float).ravel()
        codes = np.full(data.size, NORMAL, dtype=np.int64)
        signed = self._sign * data
        with np.errstate(invalid="ignore"):  # NaN thresholds (before fit) judge nothing: NORMAL
            stepped = np.isnan(data) | (self._sign * (data - self.excess_threshold) >= 0.0)
        short = signed[~stepped]
        farthest_short = float(short.max()) if short.size else -math.inf
        start = 0
        for index in np.flatnonzero(stepped).tolist() + [data.size]:
            if start < index:
                self._count_short(signed[start:index], codes[start:index], farthest_short)
            if index < data.size:
                codes[index] = self.step(data[index])
            start = index + 1
        return codes

    def _count_short(self, signed: np.ndarray, codes: np.ndarray, farthest: float) -> None:
        """Values short of the excess threshold (signed towards the tail): each is NORMAL, or
        ANOMALY when beyond the anomaly threshold (possible only if that lies below the excess
        threshold, which `farthest`, the largest such value of the whole batch, rules out)."""
        limit = self._sign * self.anomaly_threshold
        if self.discard_anomalies and farthest > limit:
            beyond = signed > limit
            codes[beyond] = ANOMALY
            self.n += signed.size - int(np.count_nonzero(beyond))
        else:
            self.n += signed.size

    def _refit(self) -> None:
        self.gamma, self.sigma = _fit_gpd(self._excesses)
        self.anomaly_threshold = self.quantile(self.q)

    def quantile(self, p: float) -> float:
        """The value z with P(X beyond z) = p under the current model."""
        share = _div(float(self.Nt), float(self.n))
        ratio = _div(float(p), share)
        if self.gamma == 0.0:
            distance = -self.sigma * _log(ratio)
        else:
            distance = _div(self.sigma, self.gamma) * (_pow(ratio, -self.gamma) - 1.0)
        return self.excess_threshold + self._sign * distance

    def probability(self, z: float) -> float:
        """P(X beyond z) under the current model (the GPD formula, unclamped, as libspot)."""
        return self._probability_at(self._sign * (float(z) - self.excess_threshold))

    def _probability_at(self, distance: float) -> float:
        """`probability` of the value `distance` beyond the excess threshold, towards the tail."""
        share = _div(float(self.Nt), float(self.n))
        if self.gamma == 0.0:
            return share * _exp(_div(-distance, self.sigma))
        reach = 1.0 + distance * _div(self.gamma, self.sigma)
        return share * _pow(reach, _div(-1.0, self.gamma))

    def to_dict(self) -> dict[str, Any]:
        return {
            "q": self.q, "low": self.low, "discard_anomalies": self.discard_anomalies,
            "level": self.level, "max_excess": self.max_excess,
            "n": self.n, "Nt": self.Nt,
            "excess_threshold": _encode(self.excess_threshold),
            "anomaly_threshold": _encode(self.anomaly_threshold),
            "gamma": _encode(self.gamma), "sigma": _encode(self.sigma),
            "excesses": self._excesses.to_dict(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "Spot":
        spot = cls(state["q"], low=state["low"], discard_anomalies=state["discard_anomalies"],
                   level=state["level"], max_excess=state["max_excess"])
        spot.n, spot.Nt = int(state["n"]), int(state["Nt"])
        spot.excess_threshold = float(state["excess_threshold"])
        spot.anomaly_threshold = float(state["anomaly_threshold"])
        spot.gamma, spot.sigma = float(state["gamma"]), float(state["sigma"])
        spot._excesses = _Excesses.from_dict(state["excesses"])
        return spot


class BiSpot:
    """Both tails at once (libspot 1.x `up=True, down=True`): an upper and a lower Spot.

    A value beyond either anomaly threshold is an ANOMALY and (with `discard_anomalies`)
    neither tail learns it; otherwise both tails step, so they count the same n.
    `last_direction` tells which tail the last EXCESS or ANOMALY came from.
    """

    def __init__(self, q: float, discard_anomalies: bool = True, level: float = 0.98,
                 max_excess: int = 500):
        self.upper = Spot(q, False, discard_anomalies, level, max_excess)
        self.lower = Spot(q, True, discard_anomalies, level, max_excess)
        self.last_direction: str | None = None

    @property
    def discard_anomalies(self) -> bool:
        return self.upper.discard_anomalies

    def tails(self) -> list[tuple[str, Spot]]:
        return [("up", self.upper), ("down", self.lower)]

    def thresholds(self) -> dict[str, tuple[float, float]]:
        return {**self.upper.thresholds(), **self.lower.thresholds()}

    def fit(self, values: Iterable[float]) -> None:
        values = list(values)
        self.upper.fit(values)
        self.lower.fit(values)

    def step(self, x: float) -> int:
        x = float(x)
        if x != x:
            return DATA_IS_NAN
        self.last_direction = None
        if self.discard_anomalies:
            if x > self.upper.anomaly_threshold:
                self.last_direction = "up"
                return ANOMALY
            if x < self.lower.anomaly_threshold:
                self.last_direction = "down"
                return ANOMALY
        up, down = self.upper.step(x), self.lower.step(x)
        if up == EXCESS:
            self.last_direction = "up"
        elif down == EXCESS:
            self.last_direction = "down"
        return max(up, down)

    def to_dict(self) -> dict[str, Any]:
        return {"upper": self.upper.to_dict(), "lower": self.lower.to_dict(),
                "last_direction": self.last_direction}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "BiSpot":
        upper = Spot.from_dict(state["upper"])
        bispot = cls(upper.q, upper.discard_anomalies, upper.level, upper.max_excess)
        bispot.upper, bispot.lower = upper, Spot.from_dict(state["lower"])
        bispot.last_direction = state["last_direction"]
        return bispot


def spot_for_tails(tails: str, q: float, discard_anomalies: bool = True, level: float = 0.98,
                   max_excess: int = 500) -> Spot | BiSpot:
    """A one-tailed Spot for "up" or "down", a BiSpot for "both"."""
    if tails not in TAILS:
        raise ValueError(f"tails must be one of {TAILS}, not {tails!r}")
    if tails == "both":
        return BiSpot(q, discard_anomalies, level, max_excess)
    return Spot(q, tails == "down", discard_anomalies, level, max_excess)


def _model_from_dict(state: Mapping[str, Any]) -> Spot | BiSpot:
    return BiSpot.from_dict(state) if "upper" in state else Spot.from_dict(state)


def _mean(values: Iterable[float]) -> float:
    """Exactly rounded mean: the same value whatever the order or Python version."""
    values = list(values)
    try:
        total = math.fsum(values)
    except OverflowError:  # only near the largest doubles: let it be ±inf, as a float sum is
        with np.errstate(over="ignore"):
            total = float(np.sum(values))
    return total / len(values)


class DSpot:
    """Drift-aware SPOT (the paper's Algorithm 3): SPOT on x minus the moving average of
    the last `depth` accepted values (those not flagged ANOMALY).

    ±inf never enters the moving average (it would poison it for `depth` steps, or for
    good once both signs are in); `fit` wants finite values.

    Thresholds and `thresholds()` are in the original scale: local threshold + current
    moving average, i.e. the limits the next value will be held against.
    """

    def __init__(self, depth: int, q: float, tails: str = "up", discard_anomalies: bool = True,
                 level: float = 0.98, max_excess: int = 500):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = int(depth)
        self.tails_option = tails
        self.model = spot_for_tails(tails, q, discard_anomalies, level, max_excess)
        self.window: deque[float] = deque(maxlen=self.depth)
        self.moving_average = math.nan

    @property
    def last_direction(self) -> str | None:
        return self.model.last_direction

    def tails(self) -> list[tuple[str, Spot]]:
        return self.model.tails()

    def thresholds(self) -> dict[str, tuple[float, float]]:
        return {direction: (excess + self.moving_average, anomaly + self.moving_average)
                for direction, (excess, anomaly) in self.model.thresholds().items()}

    @property
    def excess_threshold(self) -> float:
        return self._one_tail().excess_threshold + self.moving_average

    @property
    def anomaly_threshold(self) -> float:
        return self._one_tail().anomaly_threshold + self.moving_average

    def _one_tail(self) -> Spot:
        if not isinstance(self.model, Spot):
            raise AttributeError("a two-sided DSpot has two thresholds: use thresholds()")
        return self.model

    def fit(self, values: Iterable[float]) -> None:
        """The first `depth` values seed the window; the rest, each minus the mean of the
        `depth` values before it, calibrate the SPOT model."""
        data = [float(v) for v in values]
        if not all(math.isfinite(v) for v in data):
            raise ValueError("DSpot.fit values must be finite")
        if len(data) < self.depth + 5:
            raise ValueError(f"DSpot.fit needs at least depth + 5 = {self.depth + 5} values")
        residuals = [data[i] - _mean(data[i - self.depth:i]) for i in range(self.depth, len(data))]
        self.model.fit(residuals)
        self.window = deque(data[-self.depth:], maxlen=self.depth)
        self.moving_average = _mean(self.window)

    def step(self, x: float) -> int:
        x = float(x)
        if x != x:
            return DATA_IS_NAN
        if len(self.window) < self.depth:
            raise RuntimeError("DSpot.step needs fit() first: the moving average has no window")
        code = self.model.step(x - self.moving_average)
        if code != ANOMALY and math.isfinite(x):
            self.window.append(x)
            self.moving_average = _mean(self.window)
        return code

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "tails": self.tails_option, "model": self.model.to_dict(),
                "window": [_encode(v) for v in self.window]}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "DSpot":
        model = _model_from_dict(state["model"])
        first = model.tails()[0][1]
        dspot = cls(state["depth"], first.q, state["tails"], first.discard_anomalies,
                    first.level, first.max_excess)
        dspot.model = model
        dspot.window = deque((float(v) for v in state["window"]), maxlen=dspot.depth)
        dspot.moving_average = _mean(dspot.window) if dspot.window else math.nan
        return dspot


# --- Pipeline adapters ------------------------------------------------------------------

_STATUS = {NORMAL: Status.NORMAL, EXCESS: Status.EXCESS, ANOMALY: Status.ANOMALY,
           DATA_IS_NAN: Status.MISSING}


def tail_probability(spot: Spot, value: float, offset: float = 0.0) -> float:
    """P(X beyond value) for scoring: the GPD formula clamped to [0, 1], 0 past the end of
    a bounded (γ < 0) tail and 1 on the far side where the formula no longer applies."""
    distance = spot._sign * (value - offset - spot.excess_threshold)
    if spot.gamma != 0.0 and not 1.0 + distance * _div(spot.gamma, spot.sigma) > 0.0:
        return 0.0 if distance > 0.0 else 1.0
    return min(spot._probability_at(distance), 1.0)


def _score(probability: float) -> float | None:
    if probability != probability:
        return None
    return -math.log10(max(probability, _SMALLEST_PROBABILITY))


# Evidence keys of each tail, in `_evidence`'s order.
_TAIL_KEYS = {direction: tuple(f"{direction}_{name}" for name in (
    "excess_threshold", "anomaly_threshold", "gamma", "sigma", "n", "Nt")) for direction in ("up", "down")}

class _SpotAdapter(Detector):
    """What SpotDetector and DSpotDetector share: calibration, verdicts, state."""

    input_kind = "scalar"

    def __init__(self, q: float, level: float, max_excess: int, n_init: int, tails: str,
                 discard_anomalies: bool):
        self.q = float(q)
        self.level = float(level)
        self.max_excess = int(max_excess)
        self.n_init = int(n_init)
        self.tails = str(tails)
        self.discard_anomalies = bool(discard_anomalies)
        self._new_model()  # validates the parameters now rather than at the first fit
        self.model: Spot | BiSpot | DSpot | None = None
        self.calibration: list[float] = []

    def params(self) -> dict[str, Any]:
        return {"q": self.q, "level": self.level, "max_excess": self.max_excess,
                "n_init": self.n_init, "tails": self.tails,
                "discard_anomalies": self.discard_anomalies}

    def _new_model(self) -> Spot | BiSpot | DSpot:
        raise NotImplementedError

    def _offset(self) -> float:
        """What the tails' thresholds are relative to (0, or DSPOT's moving average)."""
        return 0.0

    def fit(self, history: Sequence[Observation]) -> None:
        """Calibrate on a baseline. Non-finite values are left out. If the baseline cannot
        give finite thresholds (too short, constant), the detector keeps calibrating."""
        self.model = None
        self.calibration = [v for v in (float(x) for x in history) if math.isfinite(v)]
        self._try_fit()

    def _try_fit(self) -> None:
        model = self._new_model()
        try:
            model.fit(self.calibration)
        except ValueError:
            self._keep_newest()
            return
        if all(math.isfinite(a) for _, a in model.thresholds().values()):
            self.model, self.calibration = model, []
        else:
            self._keep_newest()

    def _keep_newest(self) -> None:
        """After a failed fit, keep n_init - 1 values: the next observation retries."""
        self.calibration = self.calibration[max(0, len(self.calibration) - self.n_init + 1):]

    def observe(self, value: Observation) -> Verdict:
        return Verdict(*self._judge(float(value)))

    @classmethod
    def score_series(cls, params: Mapping[str, Any], observations: Sequence[Observation], train: np.ndarray,
                     starts: np.ndarray, population: Mapping[str, Any] | None = None) -> SeriesVerdicts:
        """`Detector.score_series` without a Verdict per window: each judgement goes straight into
        the columns (`SeriesVerdicts.of_judgements`)."""
        if population is not None:
            return super().score_series(params, observations, train, starts, population)
        judgements = []
        bounds = [*starts.tolist(), len(observations)]
        for first, end in zip(bounds[:-1], bounds[1:]):
            detector, judged = cls._calibrated(params, observations, train, first, end)
            judgements.extend(map(detector._judge, map(float, observations[judged:end])))
        return SeriesVerdicts.of_judgements(judgements)

    def _judge(self, value: float) -> tuple[str, float | None, float | None, str | None, dict[str, Any]]:
        """The fields of the value's Verdict (status, score, threshold, direction, evidence), then
        the model learns from it."""
        if value != value:
            return Status.MISSING, None, None, None, {}
        if self.model is None:
            return self._calibrate(value)
        offset = self._offset()
        evidence, probabilities = self._evidence(value, offset)
        code = self.model.step(value)
        direction = self.model.last_direction if code != NORMAL else None
        concerned = direction or min(probabilities, key=probabilities.__getitem__)
        probability = evidence["probability"] = probabilities[concerned]
        return (_STATUS[code], _score(probability), evidence[_TAIL_KEYS[concerned][1]], direction,
                evidence)

    def _calibrate(self, value: float) -> tuple[str, None, None, None, dict[str, Any]]:
        if math.isfinite(value):
            self.calibration.append(value)
            if len(self.calibration) >= self.n_init:
                self._try_fit()
        return Status.CALIBRATING, None, None, None, {"value": value, "calibration": len(self.calibration)}

    def _evidence(self, value: float, offset: float) -> tuple[dict[str, Any], dict[str, float]]:
        """The model the value is judged by (before it learns from it)."""
        evidence: dict[str, Any] = {"value": value}
        probabilities = {}
        for direction, spot in self.model.tails():
            excess, anomaly, gamma, sigma, n, nt = _TAIL_KEYS[direction]
            evidence[excess] = spot.excess_threshold + offset
            evidence[anomaly] = spot.anomaly_threshold + offset
            evidence[gamma] = spot.gamma
            evidence[sigma] = spot.sigma
            evidence[n] = spot.n
            evidence[nt] = spot.Nt
            probabilities[direction] = tail_probability(spot, value, offset)
        return evidence, probabilities

    def to_dict(self) -> dict[str, Any]:
        return {**self.params(), "calibration": list(self.calibration),
                "model": None if self.model is None else self.model.to_dict()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "_SpotAdapter":
        detector = cls(**{key: state[key] for key in cls._param_names()})
        detector.calibration = [float(v) for v in state["calibration"]]
        if state["model"] is not None:
            detector.model = detector._restore_model(state["model"])
        return detector

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return ("q", "level", "max_excess", "n_init", "tails", "discard_anomalies")

    @staticmethod
    def _restore_model(state: Mapping[str, Any]) -> Spot | BiSpot | DSpot:
        return _model_from_dict(state)


class SpotDetector(_SpotAdapter):
    """SPOT on one feature's series: "up", "down" or "both" tails."""

    name = "spot"

    def __init__(self, *, q: float = 1e-4, level: float = 0.98, max_excess: int = 500,
                 n_init: int = 50, tails: str = "up", discard_anomalies: bool = True):
        if n_init < 5:
            raise ValueError("n_init must be at least 5 (the P² quantile needs 5 values)")
        super().__init__(q, level, max_excess, n_init, tails, discard_anomalies)

    def _new_model(self) -> Spot | BiSpot:
        return spot_for_tails(self.tails, self.q, self.discard_anomalies, self.level, self.max_excess)


class DSpotDetector(_SpotAdapter):
    """DSPOT on one feature's series: SPOT around a moving average of `depth` values."""

    name = "dspot"

    def __init__(self, *, q: float = 1e-4, level: float = 0.98, max_excess: int = 500,
                 n_init: int = 50, tails: str = "up", discard_anomalies: bool = True,
                 depth: int = 10):
        self.depth = int(depth)
        if n_init < self.depth + 5:
            raise ValueError("n_init must be at least depth + 5")
        super().__init__(q, level, max_excess, n_init, tails, discard_anomalies)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "depth": self.depth}

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return super()._param_names() + ("depth",)

    def _new_model(self) -> DSpot:
        return DSpot(self.depth, self.q, self.tails, self.discard_anomalies, self.level, self.max_excess)

    def _offset(self) -> float:
        return self.model.moving_average

    def _evidence(self, value: float, offset: float) -> tuple[dict[str, Any], dict[str, float]]:
        evidence, probabilities = super()._evidence(value, offset)
        evidence["moving_average"] = offset
        return evidence, probabilities

    @staticmethod
    def _restore_model(state: Mapping[str, Any]) -> DSpot:
        return DSpot.from_dict(state)
