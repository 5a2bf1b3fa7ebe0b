"""The robust statistics RITA scores with, and its bucketed score scale.

Quartiles follow the "median of halves" method (the median itself excluded from both halves
when the count is odd), which is what RITA's Go statistics package computes; with it a
series has the same skewness here as in RITA.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Thresholds (base, low, medium, high) map to these scores, linearly in between: RITA's
# interpolation of its threat categories, rescaled so that reaching "high" is 1.0.
BUCKET_SCORES = (0.25, 0.5, 0.75, 1.0)


def quartiles(values: np.ndarray) -> tuple[float, float, float]:
    ordered = np.sort(np.asarray(values, dtype=float))
    count = len(ordered)
    if count < 3:
        raise ValueError("quartiles need at least 3 values")
    half = count // 2
    lower, upper = ordered[:half], ordered[half + count % 2:]
    return float(np.median(lower)), float(np.median(ordered)), float(np.median(upper))


def bowley_skewness(values: np.ndarray, min_spread: float) -> float:
    """(Q1 + Q3 - 2·Q2) / (Q3 - Q1); 0 when the quartile spread is below `min_spread` or Q2 sits on a quartile."""
    q1, q2, q3 = quartiles(values)
    spread = q3 - q1
    if spread < min_spread or q2 == q1 or q2 == q3:
        return 0.0
    return (q1 + q3 - 2 * q2) / spread


def median_absolute_deviation(values: np.ndarray) -> tuple[float, float]:
    """(median, median of absolute deviations from it)."""
    array = np.asarray(values, dtype=float)
    median = float(np.median(array))
    return median, float(np.median(np.abs(array - median)))


def dispersion_score(values: np.ndarray, score_when_tiny: float) -> tuple[float, float]:
    """(MAD, score): 1 - MAD/median, floored at 0; `score_when_tiny` when the median is below 1."""
    median, mad = median_absolute_deviation(values)
    if median < 1:
        return mad, score_when_tiny
    return mad, max(0.0, (median - mad) / median)


def regularity_score(values: np.ndarray, score_when_tiny: float) -> tuple[float, float, float]:
    """(score, Bowley skewness, MAD): the mean of 1 - |skewness| and the dispersion score, as RITA combines them.

    A spread of quartiles under 10 (seconds or bytes) counts as none, as in RITA: jitter that
    small says nothing about the shape of the distribution.
    """
    skew = bowley_skewness(values, min_spread=10)
    mad, mad_score = dispersion_score(values, score_when_tiny)
    return round3(((1 - abs(skew)) + mad_score) / 2), skew, mad


def bucket_score(value: float, thresholds: Sequence[float]) -> float:
    """0 below the base threshold, then linear through `BUCKET_SCORES`, 1.0 at and beyond the high one."""
    if value < thresholds[0]:
        return 0.0
    for index in range(1, len(thresholds)):
        low, high = thresholds[index - 1], thresholds[index]
        if value < high:
            start, end = BUCKET_SCORES[index - 1], BUCKET_SCORES[index]
            return start + (value - low) / (high - low) * (end - start)
    return BUCKET_SCORES[-1]


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`'s own character distribution; 0 for empty text."""
    if not text:
        return 0.0
    total = len(text)
    return -sum(count / total * math.log2(count / total) for count in Counter(text).values())


def subdomain_measures(subdomains: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(length, entropy in thousandths of a bit per character) of each subdomain; 0 where there is none.

    Entropy is kept as an integer so that sums of it are exact whatever order batches merge in.
    """
    encoded = pc.dictionary_encode(subdomains)
    distinct = encoded.dictionary.to_pylist()
    lengths = pa.array([len(name) for name in distinct], pa.int64()).take(encoded.indices)
    entropy = pa.array([round(shannon_entropy(name.replace(".", "")) * 1000) for name in distinct],
                       pa.int64()).take(encoded.indices)
    return pc.fill_null(lengths, 0), pc.fill_null(entropy, 0)


def round3(value: float) -> float:
    """Scores are reported to three decimals, as RITA does; it also keeps them stable across platforms."""
    return round(value + 0.0, 3)
