"""SPOT step rate: beamlytics' Spot against libspot 3.1.0 on the same stream.

The stream is Gaussian noise with the model calibrated so that about 2% of the steps are
excesses (each one refits the GPD over up to `max_excess` stored excesses, the costly
part); the rest only compare against two thresholds. The observed excess share is part of
the printed name so the figures can be compared with the same mix. Both sides run in this
process, timed A B A B in CPU seconds (best of 7): the machine is shared.

    python -m benchmarks.bench_spot
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import Result, alternating, best_seconds
from beamlytics.detectors.spot import EXCESS, Spot, SpotDetector

SETTINGS = {"q": 1e-4, "level": 0.98, "max_excess": 500}
CALIBRATION = 5_000
STEPS = 50_000


def _stream() -> tuple[list[float], list[float]]:
    values = np.random.default_rng(2017).normal(size=CALIBRATION + STEPS).tolist()
    return values[:CALIBRATION], values[CALIBRATION:]


def _stepper(factory, calibration, stream):
    def run():
        spot = factory(**SETTINGS)
        spot.fit(calibration)
        step = spot.step
        return [step(x) for x in stream]
    return run


def _batch(calibration, stream):
    def run():
        spot = Spot(**SETTINGS)
        spot.fit(calibration)
        return spot.steps(stream)
    return run


def _observer(calibration, stream):
    def run():
        detector = SpotDetector(**SETTINGS, n_init=CALIBRATION)
        detector.fit(calibration)
        observe = detector.observe
        return [observe(x) for x in stream]
    return run


def run() -> list[Result]:
    calibration, stream = _stream()
    ours = _stepper(Spot, calibration, stream)
    share = float(np.mean(np.array(ours()) == EXCESS))
    try:
        import libspot  # the reference, never a dependency of beamlytics
    except ImportError:
        libspot = None
    label = f"({share:.1%} excesses, max_excess {SETTINGS['max_excess']})"
    observer = _observer(calibration, stream)
    if libspot is None:
        return [Result(f"Spot.steps {label}", len(stream) / best_seconds(_batch(calibration, np.asarray(stream))),
                       "steps/s"),
                Result(f"Spot.step {label}", len(stream) / best_seconds(ours), "steps/s"),
                Result(f"SpotDetector.observe {label}", len(stream) / best_seconds(observer), "steps/s")]
    reference = _stepper(libspot.Spot, calibration, stream)
    results = []
    batch = _batch(calibration, np.asarray(stream))
    for name, function in ((f"Spot.steps {label}", batch), (f"Spot.step {label}", ours),
                           (f"SpotDetector.observe {label}", observer)):
        our_seconds, reference_seconds = alternating(function, reference, rounds=7, clock=time.process_time)
        results.append(Result(name, len(stream) / our_seconds, "steps/s", "libspot.Spot.step",
                              len(stream) / reference_seconds))
    return results


if __name__ == "__main__":
    for result in run():
        print(result.line())
