"""Live counts of a running pipeline, for progress reports.

`(name, n)` count pairs (the ones that end in summary.json) also feed Beam counters, which
runners report from any worker process, and a tally of this process, which the in-process
DirectRunner updates while its single `run()` call blocks and reports no metrics until done.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Iterable, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE = "beamlytics"

_local_lock = threading.Lock()
_local_counts: collections.Counter = collections.Counter()


def local_counts() -> dict[str, int]:
    with _local_lock:
        return dict(_local_counts)


def reset_local_counts() -> None:
    with _local_lock:
        _local_counts.clear()


def result_counts(result) -> dict[str, int]:
    """The beamlytics counters of a PipelineResult, committed where the runner has them, else attempted."""
    counts = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + (value or 0)
    return counts


def count(name: str, amount: int = 1) -> None:
    """Count from inside a DoFn that is not a `TallyCounts` step (a stateful scorer's timer): its Beam counter
    and this process's tally, as `TallyCounts` does."""
    Metrics.counter(NAMESPACE, name).inc(amount)
    with _local_lock:
        _local_counts[name] += amount


def merged_counts(result=None) -> Mapping[str, int]:
    """The larger of this process's tally and the runner's counters, per count."""
    counts = local_counts()
    if result is not None:
        for name, value in result_counts(result).items():
            counts[name] = max(counts.get(name, 0), value)
    return counts


class _Tally(beam.DoFn):
    def __init__(self, of: Callable[[Any], Iterable[tuple[str, int]]] | None):
        self.of = of
        self.counters = {}

    def process(self, element):
        for pair in self.of(element) if self.of else (element,):
            name, amount = pair
            if name not in self.counters:
                self.counters[name] = Metrics.counter(NAMESPACE, name)
            self.counters[name].inc(amount)
            with _local_lock:
                _local_counts[name] += amount
            yield pair


class TallyCounts(beam.PTransform):
    """`(name, n)` pairs, unchanged, counted on the way through; with `of`, the pairs `of(element)` gives
    for each element (in the same step: every step costs Beam start-up)."""

    def __init__(self, of: Callable[[Any], Iterable[tuple[str, int]]] | None = None):
        super().__init__()
        self.of = of

    def expand(self, elements):
        return elements | "Tally" >> beam.ParDo(_Tally(self.of))
