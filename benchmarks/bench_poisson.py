"""Windows scored per second by PoissonDetector.observe (30 one-second slots per window),
against the method written plainly on scipy (poisson.pmf, jensenshannon) in the same run."""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import poisson

from benchmarks.common import Result, best_seconds
from beamlytics.detectors.poisson import PoissonDetector

WINDOWS = 3000
SLOTS = 30


def plain_scipy_window_score(window, lam, beta, seconds):
    """The seed notebook's analyze_window, straightforwardly on scipy: the reference."""
    x = np.asarray(window)
    max_count = max(int(x.max()), int(3 * lam) + 5)
    d_x = np.histogram(x, bins=np.arange(max_count + 2))[0] / len(x)
    d_y = poisson.pmf(np.arange(max_count + 1), lam)
    d_y = d_y / d_y.sum()
    divergence = jensenshannon(d_x + 1e-12, d_y + 1e-12) ** 2
    delta = (x.mean() - lam) / max(lam, 1)
    z = (x.mean() - lam) / math.sqrt(max(lam, 1) / seconds)
    sigma = max(1.0, x.std())
    eta = sum(1 - math.exp(-(u**2) / (2 * sigma**2)) for u in (divergence, delta, z)) / 3
    return eta, -math.tanh(2 * (eta - beta))


def windows(seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    rates = rng.choice([0.5, 3.0, 20.0], size=WINDOWS)
    return [list(rng.poisson(rate, SLOTS)) for rate in rates]


def run() -> list[Result]:
    data = windows()

    def detector_pass():
        detector = PoissonDetector(n_init=1)
        detector.fit(data[:1])  # a fixed λ, like the reference, so both score every window
        for window in data:
            detector.observe(window)

    def reference_pass():
        for window in data:
            plain_scipy_window_score(window, 3.0, 0.3, SLOTS)

    ours = best_seconds(detector_pass)
    reference = best_seconds(reference_pass)
    return [Result("PoissonDetector.observe (30 slots/window)", WINDOWS / ours, "windows/s",
                   "plain scipy analyze_window", WINDOWS / reference)]


if __name__ == "__main__":
    for result in run():
        print(result.line())
