"""Event-time tumbling windows: Arrow batches → one `EndpointWindow` per endpoint and window.

Two ways to place records in windows, with identical results (tests check it):
- `windowing="key"` (default): the window start is part of the grouping key, in the global
  window. On the local FnApiRunner this is an order of magnitude faster than Beam windows
  for many small windows (see docs/benchmarks.md).
- `windowing="beam"`: `WindowInto(FixedWindows)` and a per-window combine: what an
  unbounded source wants, where watermarks and triggers decide when a window is complete.
Either way the output carries the window start as its event timestamp and sits in the
global window, ready for the per-endpoint stateful scoring.
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp

from beamlytics import features
from beamlytics.detectors.endpoint import EndpointWindow
from beamlytics.features import WINDOWINGS, WindowAggregate, WindowSpec

class MergeAggregates(beam.CombineFn):
    def create_accumulator(self) -> WindowAggregate:
        return WindowAggregate()

    def add_input(self, accumulator: WindowAggregate, partial: WindowAggregate) -> WindowAggregate:
        return accumulator.merge(partial)

    def merge_accumulators(self, accumulators) -> WindowAggregate:
        merged = WindowAggregate()
        for accumulator in accumulators:
            merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator: WindowAggregate) -> WindowAggregate:
        return accumulator


def endpoint_window(spec: WindowSpec, key: str, start_us: int, aggregate: WindowAggregate) -> EndpointWindow:
    return EndpointWindow(
        table=spec.table,
        key_kind=spec.key,
        key=key,
        window_start=start_us,
        window_end=start_us + spec.window_us,
        records=aggregate.records,
        features=features.finalize(aggregate, spec),
        slot_counts=tuple(features.slot_vector(aggregate, spec)) if spec.slot_us else None,
    )


def _timestamped(window: EndpointWindow) -> beam_window.TimestampedValue:
    return beam_window.TimestampedValue(window, Timestamp(micros=window.window_start))


class _FromBeamWindow(beam.DoFn):
    def __init__(self, spec: WindowSpec):
        self.spec = spec

    def process(self, element, window=beam.DoFn.WindowParam):
        key, aggregate = element
        yield endpoint_window(self.spec, key, window.start.micros, aggregate)


@dataclass
class WindowFeatures(beam.PTransform):
    """RecordBatches of `spec.table` → `EndpointWindow`s (features of each endpoint-window)."""

    spec: WindowSpec
    windowing: str = "key"

    def __post_init__(self):
        super().__init__()
        if self.windowing not in WINDOWINGS:
            raise ValueError(f"windowing must be one of {WINDOWINGS}")

    def expand(self, batches):
        spec = self.spec
        partials = batches | "Partials" >> beam.FlatMap(features.partial_aggregates, spec)
        if self.windowing == "key":
            windows = (
                partials
                | "KeyByWindow" >> beam.Map(lambda p: ((p[0], p[1]), p[2]))
                | "Merge" >> beam.CombinePerKey(MergeAggregates())
                | "Features" >> beam.MapTuple(lambda key_start, agg: endpoint_window(spec, *key_start, agg))
            )
        else:
            windows = (
                partials
                | "EventTime" >> beam.Map(
                    lambda p: beam_window.TimestampedValue((p[0], p[2]), Timestamp(micros=p[1])))
                | "Tumbling" >> beam.WindowInto(beam_window.FixedWindows(spec.window_us / 1e6))
                | "Merge" >> beam.CombinePerKey(MergeAggregates())
                | "Features" >> beam.ParDo(_FromBeamWindow(spec))
                | "Unwindow" >> beam.WindowInto(beam_window.GlobalWindows())
            )
        return windows | "Stamp" >> beam.Map(_timestamped)


def count_untimed(batches, spec: WindowSpec):
    """("untimed", n) for records that have no event time or no endpoint key."""
    return batches | "Untimed" >> beam.Map(lambda batch: ("untimed", features.untimed_records(batch, spec)))
