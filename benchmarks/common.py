"""Timing and reporting shared by the benchmarks.

Every benchmark measures beamlytics and a reference in the same run on the same input and
prints the ratio, so figures stay comparable across machines.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DATA_DIR = Path(
    os.environ.get("BEAMLYTICS_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@dataclass
class Result:
    name: str  # what was measured, e.g. "zeek dns.log.gz -> Arrow"
    rate: float  # units per second
    unit: str  # e.g. "rows/s"
    reference_name: str | None = None
    reference_rate: float | None = None

    @property
    def ratio(self) -> float | None:
        if not self.reference_rate:
            return None
        return self.rate / self.reference_rate

    def line(self) -> str:
        text = f"{self.name:<48} {self.rate:>14,.0f} {self.unit}"
        if self.reference_rate:
            text += f"   vs {self.reference_name}: {self.reference_rate:,.0f} {self.unit}  ratio {self.ratio:.2f}x"
        return text


def best_seconds(function: Callable[[], object], repeat: int = 3) -> float:
    """Fastest of `repeat` timed calls: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def alternating(ours: Callable[[], object], reference: Callable[[], object], rounds: int = 3,
                clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """Fastest seconds of each of two calls, timed A B A B so that both see the same machine load.

    `clock=time.process_time` counts CPU seconds instead: on a crowded machine a short call can
    fit in one time slice while a longer one is preempted, which wall time charges to it."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for index, function in enumerate((ours, reference)):
            start = clock()
            function()
            best[index] = min(best[index], clock() - start)
    return best[0], best[1]
