"""The Poisson/KL score over many windows at once, against batch numpy computing the same η.

The reference is what a data engineer would write for a table of windows: one matrix of
per-slot counts, histograms, Poisson pmfs (scipy.stats) and the Jensen–Shannon divergence as
masked numpy reductions, every window against its own λ. It is checked to give the same η.
Measured A B A B in one process, each timing the faster of its runs:
- `score_windows`: the same work as the reference (scores of every window against a given λ);
- `PoissonDetector.score_series`: the whole detector on the same windows cut into endpoint series
  (λ learned online, five health models, verdicts with evidence JSON), still against the reference.

    python -m benchmarks.bench_poisson
"""
from __future__ import annotations

import numpy as np
from scipy.stats import poisson

from benchmarks.common import Result, alternating
from beamlytics.detectors.poisson import PoissonDetector, score_windows

WINDOWS = 20_000
SLOTS = 30
SERIES_LENGTH = 100  # windows per endpoint in the detector pass
BETA = 0.3


def batch_numpy_eta(counts: np.ndarray, lam: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """η and C2 of every row of `counts` against λ = `lam[row]`, in plain batch numpy: the reference."""
    windows, slots = counts.shape
    top = np.maximum(counts.max(axis=1), (3 * lam).astype(int) + 5)
    bins = np.arange(top.max() + 1)
    inside = bins[None, :] <= top[:, None]
    histogram = (counts[:, :, None] == bins[None, None, :]).sum(axis=1) / slots
    pmf = np.where(inside, poisson.pmf(bins[None, :], lam[:, None]), 0.0)
    pmf /= pmf.sum(axis=1, keepdims=True)
    p = np.where(inside, histogram + 1e-12, 0.0)
    q = np.where(inside, pmf + 1e-12, 0.0)
    p /= p.sum(axis=1, keepdims=True)
    q /= q.sum(axis=1, keepdims=True)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = lambda a: np.where(inside, a * np.log(a / m), 0.0).sum(axis=1)  # noqa: E731
        divergence = (kl(p) + kl(q)) / 2
    mean = counts.mean(axis=1)
    sigma = np.maximum(1.0, counts.std(axis=1))
    delta = (mean - lam) / np.maximum(lam, 1)
    z = (mean - lam) / np.sqrt(np.maximum(lam, 1) / slots)
    eta = sum(1 - np.exp(-(u**2) / (2 * sigma**2)) for u in (divergence, delta, z)) / 3
    return eta, -np.tanh(2 * (eta - beta))


def windows(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-slot counts of endpoints at 0.5, 3 or 20 records per slot, and each window's rate."""
    rng = np.random.default_rng(seed)
    rates = np.repeat(rng.choice([0.5, 3.0, 20.0], size=WINDOWS // SERIES_LENGTH), SERIES_LENGTH)
    return rng.poisson(rates[:, None], (WINDOWS, SLOTS)), rates


def run() -> list[Result]:
    counts, rates = windows()
    ours = score_windows(counts, rates, BETA, SLOTS)
    eta, c2 = batch_numpy_eta(counts, rates, BETA)
    if not (np.allclose(ours["eta"], eta, rtol=1e-9, atol=1e-12) and np.allclose(ours["C2"], c2, rtol=1e-9)):
        raise AssertionError("score_windows and the batch numpy reference disagree on η")

    observations = counts.tolist()
    train = np.zeros(WINDOWS, dtype=bool)
    starts = np.arange(0, WINDOWS, SERIES_LENGTH)
    kernel, reference = alternating(lambda: score_windows(counts, rates, BETA, SLOTS),
                                    lambda: batch_numpy_eta(counts, rates, BETA))
    detector, reference_again = alternating(lambda: PoissonDetector.score_series({}, observations, train, starts),
                                            lambda: batch_numpy_eta(counts, rates, BETA))
    name = f"({SLOTS} slots/window, λ 0.5-20)"
    return [
        Result(f"poisson score_windows {name}", WINDOWS / kernel, "windows/s",
               "batch numpy η", WINDOWS / reference),
        Result(f"PoissonDetector.score_series {name}", WINDOWS / detector, "windows/s",
               "batch numpy η", WINDOWS / reference_again),
    ]


if __name__ == "__main__":
    for result in run():
        print(result.line())
