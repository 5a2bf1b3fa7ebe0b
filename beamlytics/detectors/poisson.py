"""The Poisson/KL fuzzy traffic score: how far one window's per-slot counts are from Poisson(λ).

For an endpoint with learned rate λ (records per slot) and a window of per-slot counts X:

- D: Jensen–Shannon divergence (natural log, so in [0, ln 2]) between the histogram of X and
  the Poisson(λ) pmf, both over 0..max(max(X), int(3λ) + 5). It is the divergence, i.e. the
  square of what `scipy.spatial.distance.jensenshannon` returns.
- Δ = (X̄ − λ) / max(λ, 1): the relative change of the mean rate.
- Z = (X̄ − λ) / sqrt(max(λ, 1) / s): the mean's z-score, s = number of slots in the window
  (the seed notebook's "seconds in window", since it used 1-s slots).
- Each of D, Δ, Z is turned into a membership f = exp(−u² / (2σ²)), σ = max(1, std(X)),
  and η = mean(1 − f) is the window's fuzzy anomaly degree in [0, 1); C2 = −tanh(2(η − β))
  is positive when the window looks healthy (η < β) and feeds the health models (`health`).

Edge cases, all finite: λ = 0 puts all Poisson mass at 0 and uses 1 in place of λ in the
denominators of Δ and Z; a single-slot window has std 0, so σ = 1; an all-zero window is
an ordinary window whose histogram is all at 0 (D = 0, η = 0 when λ = 0).

`PoissonDetector` hosts the score in the pipeline: λ from a baseline (`fit`) or online, and
all five health models updated every window; the chosen one decides the anomaly.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from beamlytics.detectors.base import Detector, SeriesVerdicts, Status, Verdict
from beamlytics.detectors.health import HEALTH_MODELS, HealthModel, health_model_from_dict, make_health_model

# Added to both distributions before renormalising, as in the seed notebook, so that the
# divergence never takes the log of an empty bin.
SMOOTHING = 1e-12


def _slot_counts(current_window: Sequence[float]) -> np.ndarray:
    """The window as int64 counts; a ValueError for anything that is not a count."""
    values = np.asarray(current_window)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("a window needs a non-empty 1-D sequence of per-slot counts")
    if values.dtype.kind not in "iu":  # floats (or worse) must hold whole numbers
        values = values.astype(np.float64)
        if not np.all(np.isfinite(values)) or np.any(values != np.floor(values)):
            raise ValueError("per-slot counts must be finite non-negative integers")
    counts = values.astype(np.int64)
    if counts.min() < 0:
        raise ValueError("per-slot counts must be finite non-negative integers")
    return counts


def poisson_distribution(lam: float, max_count: int) -> np.ndarray:
    """Poisson(λ) pmf over 0..max_count, normalised to sum to 1 on that range.

    Works in log space and drops the constant e^−λ (it cancels in the normalisation), so a
    large λ does not underflow to an all-zero vector.
    """
    return _poisson_rows(np.array([float(lam)]), np.array([max_count]), max_count + 1)[0]


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in nats of two distributions, each smoothed and renormalised."""
    return float(_js_rows(np.atleast_2d(p), np.atleast_2d(q), np.ones((1, np.size(p)), dtype=bool))[0])


def analyze_window(
    current_window: Sequence[float], lambda_endpoint: float, beta: float, seconds_in_window: float
) -> dict[str, float]:
    """Score one window of per-slot counts against Poisson(lambda_endpoint).

    `seconds_in_window` is the number of slots the mean X̄ is taken over (with 1-s slots,
    the window length in seconds). Returns D, Delta, Z, eta, C2, fD, fDelta, fZ.
    """
    lam = float(lambda_endpoint)
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be finite and non-negative, got {lambda_endpoint!r}")
    if not seconds_in_window > 0:
        raise ValueError("seconds_in_window must be positive")
    return _score_counts(_slot_counts(current_window), lam, beta, seconds_in_window)


def _score_counts(counts: np.ndarray, lam: float, beta: float, slots: float) -> dict[str, float]:
    scores = score_windows(counts[None, :], np.array([lam]), beta, slots)
    return {name: float(column[0]) for name, column in scores.items()}


SCORE_NAMES = ("D", "Delta", "Z", "eta", "C2", "fD", "fDelta", "fZ")


# Cells (windows × histogram bins) scored at once: one window with a huge count must not pad a whole batch.
BATCH_CELLS = 1 << 21


def score_windows(counts: np.ndarray, lam: np.ndarray, beta: float, slots: float) -> dict[str, np.ndarray]:
    """`analyze_window` of many windows at once: row i of `counts` (windows × slots, non-negative
    int64) against λ = `lam[i]`, every window over `slots` slots. Returns one array per score.

    Rows are padded to the widest histogram of their batch, and every sum runs left to right over
    a row (`np.cumsum`), so padding adds exact zeros at the end: a window's scores are the same
    bits whatever else is in the batch, and the same as `analyze_window` gives it alone. Batches
    group windows of similar histogram width, `BATCH_CELLS` cells at most (a window alone if wider).
    """
    lam = np.asarray(lam, dtype=np.float64)
    max_count = np.maximum(counts.max(axis=1), (3 * lam).astype(np.int64) + 5)
    if counts.shape[0] * (int(max_count.max()) + 1) <= BATCH_CELLS:
        return _score_batch(counts, lam, max_count, beta, slots)
    order = np.argsort(max_count, kind="stable")
    scores = {name: np.empty(counts.shape[0]) for name in SCORE_NAMES}
    first = 0
    while first < order.size:
        # widths grow along `order`: the batch's last row is its widest
        end = first + 1
        while end < order.size and (end + 1 - first) * (int(max_count[order[end]]) + 1) <= BATCH_CELLS:
            end += 1
        rows = order[first:end]
        for name, column in _score_batch(counts[rows], lam[rows], max_count[rows], beta, slots).items():
            scores[name][rows] = column
        first = end
    return scores


def _score_batch(counts: np.ndarray, lam: np.ndarray, max_count: np.ndarray, beta: float,
                 slots: float) -> dict[str, np.ndarray]:
    width = int(max_count.max()) + 1
    rows = np.arange(counts.shape[0])
    histogram = np.bincount((counts + (rows * width)[:, None]).ravel(), minlength=rows.size * width)
    histogram = histogram.reshape(rows.size, width) / counts.shape[1]
    in_range = np.arange(width)[None, :] <= max_count[:, None]
    divergence = _js_rows(histogram, _poisson_rows(lam, max_count, width), in_range)

    # Mean and spread from the histogram just built: cheaper than passes over the slots.
    values = np.arange(width, dtype=np.float64)
    mean = _row_sums(values * histogram)
    std = np.sqrt(_row_sums((values - mean[:, None]) ** 2 * histogram))
    rate_floor = np.maximum(lam, 1.0)  # λ = 0 (or below one per slot) must not divide by ~0
    delta = (mean - lam) / rate_floor
    z = (mean - lam) / np.sqrt(rate_floor / slots)

    two_variance = 2.0 * np.maximum(1.0, std) ** 2
    f_d = np.exp(-(divergence**2) / two_variance)
    f_delta = np.exp(-(delta**2) / two_variance)
    f_z = np.exp(-(z**2) / two_variance)
    eta = ((1.0 - f_d) + (1.0 - f_delta) + (1.0 - f_z)) / 3.0
    return dict(zip(SCORE_NAMES, (divergence, delta, z, eta, -np.tanh(2.0 * (eta - beta)), f_d, f_delta, f_z)))


def _row_sums(matrix: np.ndarray) -> np.ndarray:
    """Each row summed strictly left to right: trailing zeros cannot change the bits."""
    return np.cumsum(matrix, axis=1)[:, -1]


def _poisson_rows(lam: np.ndarray, max_count: np.ndarray, width: int) -> np.ndarray:
    """Row i: the Poisson(λ_i) pmf over 0..max_count[i], normalised on that range, zeros after."""
    from scipy.special import gammaln  # here, not at the top: scipy (and the pandas it imports) cost `--help` 0.4 s

    k = np.arange(width, dtype=np.float64)
    in_range = k[None, :] <= max_count[:, None]
    silent = lam == 0  # all mass at 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_weights = k[None, :] * np.log(np.where(silent, 1.0, lam))[:, None] - gammaln(k + 1.0)[None, :]
    log_weights = np.where(in_range, log_weights, -np.inf)
    weights = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
    weights[silent] = k == 0
    return weights / _row_sums(weights)[:, None]


def _js_rows(p: np.ndarray, q: np.ndarray, in_range: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in nats of each row pair, smoothed and renormalised over the row's range."""
    p = np.where(in_range, p + SMOOTHING, 0.0)
    p /= _row_sums(p)[:, None]
    q = np.where(in_range, q + SMOOTHING, 0.0)
    q /= _row_sums(q)[:, None]
    m = np.where(in_range, 0.5 * (p + q), 1.0)
    return 0.5 * _row_sums(p * np.log(np.where(in_range, p / m, 1.0))) + \
        0.5 * _row_sums(q * np.log(np.where(in_range, q / m, 1.0)))


class PoissonDetector(Detector):
    """Per-endpoint Poisson rate model judged through a health indicator.

    `observe` takes one endpoint-window's per-slot record counts (slot length
    `slot_seconds`, applied by the pipeline) and scores it with `analyze_window` against λ
    learned from earlier windows. All five health models move every window, so one run can
    compare them; the one named by `health_model` decides: ANOMALY when its Ra < `ra_threshold`.

    Where λ comes from:
    - `fit(baseline windows)`: λ = mean count per slot over the baseline, then fixed (the seed
      notebook's TrafficLearner). No calibration.
    - otherwise online: λ = mean count per slot over the windows learned so far. The first
      `n_init` windows are only learned (CALIBRATING, health untouched); after that a window
      teaches λ only if its own η is below `learn_below`. So a burst does not raise λ even in
      the windows before the health indicator has fallen, and β (which only moves the health
      models) can be varied without changing λ. The price: a lasting change of level stays
      anomalous until the detector is re-baselined.

    Defaults, from simulated Poisson traffic (30 one-second slots per window): the η of
    ordinary windows stays mostly below 0.3 down to λ ≈ 1 per slot, while sustained bursts of
    3x and more score about 0.35 and up, hence β = 0.3 and learn_below = 0.3. A healthy
    endpoint's sigmoid Ra sits near 0.97; `ra_threshold` 0.7 is crossed after one window with
    η above about 0.51, or two with η above about 0.45. The health model lags
    by design: after a strong burst has driven Ra near 0, the first normal window lifts it
    only to about 0.6, so the window right after a burst can still be flagged.
    """

    name = "poisson"
    input_kind = "slots"

    def __init__(
        self,
        beta: float = 0.3,
        health_model: str = "sigmoid",
        ra_threshold: float = 0.7,
        slot_seconds: float = 1.0,
        n_init: int = 5,
        learn_below: float = 0.3,
        sigmoid_alpha: float = 3.063,
        logistic_gamma: float = 0.2,
        exponential_k: float = 0.5,
        recovery_gamma: float = 0.02,
        recovery_delta: float = 0.2,
        kalman_q: float = 0.005,
        kalman_r: float = 0.05,
        kalman_k: float = 3.0,
        kalman_p0: float = 0.1,
    ):
        if health_model not in HEALTH_MODELS:
            raise ValueError(f"unknown health model {health_model!r}; known: {sorted(HEALTH_MODELS)}")
        if n_init < 1:
            raise ValueError("n_init must be at least 1: λ needs a window to start from")
        if not slot_seconds > 0:
            raise ValueError("slot_seconds must be positive")
        self.beta = float(beta)
        self.health_model = health_model
        self.ra_threshold = float(ra_threshold)
        self.slot_seconds = float(slot_seconds)
        self.n_init = int(n_init)
        self.learn_below = float(learn_below)
        self.sigmoid_alpha = float(sigmoid_alpha)
        self.logistic_gamma = float(logistic_gamma)
        self.exponential_k = float(exponential_k)
        self.recovery_gamma = float(recovery_gamma)
        self.recovery_delta = float(recovery_delta)
        self.kalman_q = float(kalman_q)
        self.kalman_r = float(kalman_r)
        self.kalman_k = float(kalman_k)
        self.kalman_p0 = float(kalman_p0)
        # λ = total_count / total_slots over the learned windows.
        self.total_count = 0
        self.total_slots = 0
        self.windows_learned = 0
        self.baseline = False  # True once `fit` has fixed λ
        self.health: dict[str, HealthModel] = self._fresh_health_models()

    def _fresh_health_models(self) -> dict[str, HealthModel]:
        options = {
            "sigmoid": {"alpha": self.sigmoid_alpha, "beta": self.beta},
            "logistic": {"gamma": self.logistic_gamma},
            "exponential": {"k": self.exponential_k},
            "recovery": {"gamma": self.recovery_gamma, "delta": self.recovery_delta, "beta": self.beta},
            "kalman": {"q": self.kalman_q, "r": self.kalman_r, "k": self.kalman_k, "p0": self.kalman_p0},
        }
        return {name: make_health_model(name, **options[name]) for name in HEALTH_MODELS}

    def params(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "health_model": self.health_model,
            "ra_threshold": self.ra_threshold,
            "slot_seconds": self.slot_seconds,
            "n_init": self.n_init,
            "learn_below": self.learn_below,
            "sigmoid_alpha": self.sigmoid_alpha,
            "logistic_gamma": self.logistic_gamma,
            "exponential_k": self.exponential_k,
            "recovery_gamma": self.recovery_gamma,
            "recovery_delta": self.recovery_delta,
            "kalman_q": self.kalman_q,
            "kalman_r": self.kalman_r,
            "kalman_k": self.kalman_k,
            "kalman_p0": self.kalman_p0,
        }

    @property
    def rate(self) -> float | None:
        """λ in records per slot, or None before any window was learned."""
        return self.total_count / self.total_slots if self.total_slots else None

    def fit(self, history: Sequence[Sequence[float]]) -> None:
        """Fix λ from baseline windows of normal traffic; an empty baseline changes nothing."""
        windows = [_slot_counts(window) for window in history]
        if not windows:
            return
        self.total_count = int(sum(int(window.sum()) for window in windows))
        self.total_slots = int(sum(window.size for window in windows))
        self.windows_learned = len(windows)
        self.baseline = True

    def _learn(self, total: int, slots: int) -> None:
        self.total_count += total
        self.total_slots += slots
        self.windows_learned += 1

    def observe(self, value: Sequence[float]) -> Verdict:
        if len(value) == 0:
            return Verdict(Status.MISSING)
        counts = _slot_counts(value)
        lam = self.rate
        scores = _score_counts(counts, lam, self.beta, counts.size) if lam is not None else None
        return Verdict(*self._judge(int(counts.sum()), counts.size, lam, scores))

    def _judge(self, total: int, slots: int, lam: float | None, scores: Mapping[str, float] | None
               ) -> tuple[str, float | None, float, str | None, dict[str, Any]]:
        """The fields of the Verdict (status, score, threshold, direction, evidence) on a window of
        `total` records in `slots` slots, already scored against λ (None before any window was
        learned), and learning from it."""
        mean = total / slots  # np.mean's bits: an integer sum is exact in a double
        if not self.baseline and self.windows_learned < self.n_init:
            self._learn(total, slots)
            evidence = self._evidence(mean, lam, scores) if scores else {"windows": self.windows_learned}
            return Status.CALIBRATING, scores["eta"] if scores else None, self.ra_threshold, None, evidence

        eta, c2 = scores["eta"], scores["C2"]
        for model in self.health.values():
            model.update(eta, c2)
        if not self.baseline and eta < self.learn_below:
            self._learn(total, slots)
        status = Status.ANOMALY if self.health[self.health_model].ra < self.ra_threshold else Status.NORMAL
        return status, eta, self.ra_threshold, _direction(mean, lam), self._evidence(mean, lam, scores)

    @classmethod
    def score_series(cls, params, observations, train, starts, population=None) -> SeriesVerdicts:
        """`Detector.score_series` with the t-th windows of all series scored in one `score_windows` call.

        λ and health stay per series and move window by window exactly as in `observe`; only the
        scoring of a window against its series' λ is batched, with the same bits (see `score_windows`).
        Verdicts go straight into the columns (`SeriesVerdicts.of_judgements`).
        """
        if population is not None:
            return super().score_series(params, observations, train, starts, population)
        ends = [*starts.tolist()[1:], len(observations)]
        series = [cls._calibrated(params, observations, train, first, end) for first, end in zip(starts.tolist(), ends)]
        verdicts: dict[int, tuple] = {}  # window -> `_judge`'s fields
        running = [index for index, (_, judged) in enumerate(series) if judged < ends[index]]
        step = 0
        while running:
            by_size: dict[int, list[tuple[PoissonDetector, int]]] = {}
            for index in running:
                detector, judged = series[index]
                at = judged + step
                size = len(observations[at])
                if size == 0:
                    verdicts[at] = _MISSING
                elif detector.rate is None:
                    counts = _slot_counts(observations[at])
                    verdicts[at] = detector._judge(int(counts.sum()), counts.size, None, None)
                else:
                    by_size.setdefault(size, []).append((detector, at))
            for size, windows in by_size.items():
                counts = _slot_count_rows([observations[at] for _, at in windows])
                rates = [detector.rate for detector, _ in windows]
                scores = score_windows(counts, np.array(rates), windows[0][0].beta, size)
                rows = zip(*(scores[name].tolist() for name in SCORE_NAMES))
                for (detector, at), lam, total, row in zip(windows, rates, counts.sum(axis=1).tolist(), rows):
                    verdicts[at] = detector._judge(total, size, lam, dict(zip(SCORE_NAMES, row)))
            step += 1
            running = [index for index in running if series[index][1] + step < ends[index]]
        return SeriesVerdicts.of_judgements(verdicts[at] for at in sorted(verdicts))

    def _evidence(self, mean: float, lam: float, scores: Mapping[str, float]) -> dict[str, float]:
        evidence = {"lambda": lam, "mean": mean, **scores, "Ra": self.health[self.health_model].ra}
        for name, model in self.health.items():
            evidence[_HEALTH_KEYS[name]] = model.ra
        return evidence

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.params(),
            "total_count": self.total_count,
            "total_slots": self.total_slots,
            "windows_learned": self.windows_learned,
            "baseline": self.baseline,
            "health": {name: model.to_dict() for name, model in self.health.items()},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "PoissonDetector":
        detector = cls(**{key: state[key] for key in cls().params()})
        detector.total_count = int(state["total_count"])
        detector.total_slots = int(state["total_slots"])
        detector.windows_learned = int(state["windows_learned"])
        detector.baseline = bool(state["baseline"])
        detector.health = {
            name: health_model_from_dict(name, model_state) for name, model_state in state["health"].items()
        }
        return detector


_HEALTH_KEYS = {name: f"Ra_{name}" for name in HEALTH_MODELS}
_MISSING = (Status.MISSING, None, None, None, {})


def _slot_count_rows(windows: Sequence[Sequence[float]]) -> np.ndarray:
    """`_slot_counts` of windows of one size at once, as the rows of an int64 matrix."""
    values = np.asarray(windows)
    if values.ndim != 2:  # some window is not a flat sequence: let it raise its own error
        return np.stack([_slot_counts(window) for window in windows])
    return _slot_counts(values.ravel()).reshape(values.shape)


def _direction(mean: float, lam: float) -> str | None:
    if mean > lam:
        return "up"
    if mean < lam:
        return "down"
    return None
