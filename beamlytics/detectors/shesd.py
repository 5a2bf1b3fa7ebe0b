"""S-H-ESD: Seasonal Hybrid ESD, Twitter's AnomalyDetection (Hochenbaum, Vallis, Kejariwal 2017).

A whole series at once, not an online detector: the series is decomposed (STL), its seasonal
component and its median are removed, and the generalised ESD test (Rosner 1983) is run on the
remainder. "Hybrid" replaces ESD's mean and standard deviation by the median and the median
absolute deviation, so the anomalies themselves do not mask each other.

The decomposition is R's `stl(x, s.window = "periodic", robust = TRUE)`, which Twitter's package
calls, through statsmodels' STL: a seasonal loess of degree 0 over a window longer than the
series (what "periodic" means in R), R's robust iterations (1 inner, 15 outer), and then, as R
does for a periodic fit, each phase's seasonal value replaced by its mean over the cycles.

Two corrections to what NetLytics did: the MAD is scaled by 1.4826 so it estimates σ for normal
data (Twitter's R `mad` does this), and a MAD of 0 (more than half of the remainders equal, as in
sparse count series) does not divide by zero: the spread falls back to the mean absolute
deviation from the median scaled by √(π/2), and only a remainder that is all equal ends the test.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

MAD_TO_SIGMA = 1.4826  # 1 / Φ⁻¹(3/4): the MAD of normal data times this is σ
MEAN_DEVIATION_TO_SIGMA = math.sqrt(math.pi / 2.0)  # E|X - μ| = σ·√(2/π) for normal data
DIRECTIONS = ("both", "pos", "neg")
# Auto-detected periods need a clear autocorrelation peak; below this the series is not seasonal.
_MIN_SEASONAL_AUTOCORRELATION = 0.3


def s_h_esd(values, period: int | None = None, alpha: float = 0.025, hybrid: bool = True,
            max_anoms: float = 0.49, direction: str = "both") -> np.ndarray:
    """Boolean mask of the anomalies of `values` (NaN is never an anomaly).

    `period` is the number of observations per season (7 for daily data with a weekly cycle);
    None detects it from the autocorrelation (`detect_period`), and a series shorter than two
    periods is tested without decomposition. `max_anoms` bounds the anomalies as a share of the
    (finite) observations, as Twitter's `max_anoms`; `direction` is "both", "pos" or "neg".
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    if not 0.0 < max_anoms < 0.5:
        raise ValueError("max_anoms must be in (0, 0.5): ESD needs a majority of normal values")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
    mask = np.zeros(values.size, dtype=bool)
    finite = np.isfinite(values)
    if finite.sum() < 3:
        return mask
    remainder = seasonal_remainder(values, period)
    positions = np.flatnonzero(finite)
    flagged = esd_outliers(remainder[positions], alpha=alpha, hybrid=hybrid,
                           max_outliers=int(positions.size * max_anoms), direction=direction)
    mask[positions[flagged]] = True
    return mask


def seasonal_remainder(values: np.ndarray, period: int | None) -> np.ndarray:
    """values − seasonal − median(values), Twitter's remainder; NaN where values are NaN.

    Gaps are filled by linear interpolation for the decomposition only.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    filled = np.interp(np.arange(values.size), np.flatnonzero(finite), values[finite])
    if period is None:
        period = detect_period(filled)
    seasonal = np.zeros(values.size)
    if period is not None and period >= 2 and values.size >= 2 * period + 1:
        seasonal = periodic_stl_seasonal(filled, int(period))
    remainder = values - seasonal - np.median(values[finite])
    remainder[~finite] = np.nan
    return remainder


def periodic_stl_seasonal(values: np.ndarray, period: int) -> np.ndarray:
    """The seasonal component of R's `stl(x, period, s.window = "periodic", robust = TRUE)`."""
    from statsmodels.tsa.seasonal import STL

    size = values.size
    seasonal_window = 10 * size + 1  # R's value for "periodic"; odd, as STL requires
    trend_window = _next_odd(math.ceil(1.5 * period / (1.0 - 1.5 / seasonal_window)))
    # R takes the next odd number from the period; statsmodels wants one above it (9, not 7, for a week).
    low_pass_window = _next_odd(period + 1)
    # R's loess jumps (a tenth of each window): smoothing at every tenth point and interpolating
    # between them changes the result, so they are set as R sets them, not left at 1.
    fit = STL(values, period=period, seasonal=seasonal_window, trend=trend_window, low_pass=low_pass_window,
              seasonal_deg=0, trend_deg=1, low_pass_deg=1, robust=True,
              seasonal_jump=math.ceil(seasonal_window / 10), trend_jump=math.ceil(trend_window / 10),
              low_pass_jump=math.ceil(low_pass_window / 10)).fit(inner_iter=1, outer_iter=15)
    seasonal = np.asarray(fit.seasonal, dtype=np.float64)
    phase = np.arange(size) % period
    phase_means = np.bincount(phase, weights=seasonal, minlength=period) / np.bincount(phase, minlength=period)
    return phase_means[phase]


def _next_odd(value: int) -> int:
    value = int(value)
    return value if value % 2 else value + 1


def detect_period(values: np.ndarray, max_period: int | None = None) -> int | None:
    """The lag (≥ 2) of the highest local peak of the autocorrelation of the series less its
    least-squares line, if that peak reaches 0.3 and the series holds two such periods; None
    when not seasonal. The line is removed because a trend makes every short lag look periodic.
    """
    values = np.asarray(values, dtype=np.float64)
    max_period = max_period or values.size // 2
    if values.size < 6 or max_period < 2:
        return None
    steps = np.arange(values.size, dtype=np.float64)
    slope, intercept = np.polyfit(steps, values, 1)
    centred = values - (slope * steps + intercept)
    centred -= centred.mean()
    energy = float(centred @ centred)
    if energy <= 1e-12 * max(1.0, float(values @ values)):
        return None
    lags = np.arange(1, min(max_period, centred.size - 1) + 1)
    acf = np.array([float(centred[lag:] @ centred[:-lag]) / energy for lag in lags])
    peaks = [i for i in range(1, acf.size - 1) if acf[i] >= acf[i - 1] and acf[i] > acf[i + 1]]
    if not peaks:
        return None
    best = max(peaks, key=lambda i: (acf[i], -i))
    return int(lags[best]) if acf[best] >= _MIN_SEASONAL_AUTOCORRELATION else None


def esd_outliers(values: np.ndarray, alpha: float, hybrid: bool, max_outliers: int,
                 direction: str = "both") -> np.ndarray:
    """Positions of the generalised-ESD outliers of `values` (all finite), most extreme first.

    Step i removes the value farthest from the centre (median or mean) in units of the spread
    (scaled MAD or standard deviation) and compares that statistic with Rosner's critical value
    λ_i; the outliers are the values removed up to the last step whose statistic exceeded λ_i.
    """
    remaining = np.asarray(values, dtype=np.float64).copy()
    index = np.arange(remaining.size)
    n = remaining.size
    removed: list[int] = []
    outliers = 0
    one_tail = direction != "both"
    for step in range(1, max_outliers + 1):
        if n - step - 1 < 1:
            break
        centre, spread = _centre_and_spread(remaining, hybrid)
        if spread == 0.0:
            break  # all remaining values equal: nothing stands out any more
        deviation = remaining - centre
        if direction == "neg":
            deviation = -deviation
        elif direction == "both":
            deviation = np.abs(deviation)
        farthest = int(np.argmax(deviation))
        statistic = deviation[farthest] / spread
        removed.append(int(index[farthest]))
        remaining = np.delete(remaining, farthest)
        index = np.delete(index, farthest)
        tail = alpha / (n - step + 1) if one_tail else alpha / (2.0 * (n - step + 1))
        t = stats.t.ppf(1.0 - tail, n - step - 1)
        critical = t * (n - step) / math.sqrt((n - step - 1 + t * t) * (n - step + 1))
        if statistic > critical:
            outliers = step
    return np.asarray(removed[:outliers], dtype=np.int64)


def _centre_and_spread(values: np.ndarray, hybrid: bool) -> tuple[float, float]:
    if not hybrid:
        return float(values.mean()), float(values.std(ddof=1))
    median = float(np.median(values))
    absolute = np.abs(values - median)
    mad = float(np.median(absolute)) * MAD_TO_SIGMA
    if mad > 0.0:
        return median, mad
    return median, float(absolute.mean()) * MEAN_DEVIATION_TO_SIGMA
