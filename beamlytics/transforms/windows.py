"""Event-time tumbling windows: Arrow batches → Arrow tables of endpoint-window features.

A bundle's batches, joined up to `JOIN_ROWS` rows, become partial aggregates (Arrow tables),
cut by a stable hash of the endpoint into `shards`; each shard's partials merge into one table
of features, one row per endpoint-window (`features.window_table_schema`). Beam moves a few
tables per joined batch, never one object per endpoint-window.

Two ways to place records in windows, with identical results (tests check it):
- `windowing="key"` (default): the window start is a column of the partials, grouped per
  shard in the global window. On the local FnApiRunner this was 3.1x faster than Beam
  windows with 93 k endpoint-windows (docs/benchmarks.md).
- `windowing="beam"`: partials cut per window too, `WindowInto(FixedWindows)` and a combine
  per shard and window: what an unbounded source wants, where watermarks and triggers decide
  when a window is complete. The tables come out in the global window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from beamlytics import features
from beamlytics.features import WINDOWINGS, WindowPartials, WindowSpec

# Shards of endpoints: units of parallel merging and scoring. More than a local run has
# workers; each costs only a few elements per input batch.
DEFAULT_SHARDS = 8
# Partials kept per accumulator before they are merged: bounds memory, amortises merges.
_MERGE_EVERY = 16
# Rows of parsed batches joined before they become partials (the no-Beam path joins as many).
JOIN_ROWS = 1 << 17
# Typed, so that Beam sizes the partials by their tables' bytes (`coders.ArrowElementCoder`), not by pickling them.
_SHARD_PARTIALS = Tuple[int, WindowPartials]


class MergePartials(beam.CombineFn):
    """Partials of one shard (and window) → its table of endpoint-window features."""

    def __init__(self, spec: WindowSpec):
        self.spec = spec

    def create_accumulator(self) -> list[WindowPartials]:
        return []

    def add_input(self, accumulator: list[WindowPartials], part: WindowPartials) -> list[WindowPartials]:
        accumulator.append(part)
        return _compacted(accumulator)

    def merge_accumulators(self, accumulators) -> list[WindowPartials]:
        return _compacted([part for accumulator in accumulators for part in accumulator])

    def extract_output(self, accumulator: list[WindowPartials]):
        if not accumulator:
            return features.window_table_schema(self.spec.table).empty_table()
        return features.window_table(features.merge_partials(accumulator), self.spec)


def _compacted(parts: list[WindowPartials]) -> list[WindowPartials]:
    return [features.merge_partials(parts)] if len(parts) >= _MERGE_EVERY else parts


class _JoinedPartials(beam.DoFn):
    """A bundle's batches joined into batches of about `JOIN_ROWS` rows, each made into partials.

    The parsers' 10,000-row batches cost Acero ~10 ms a group-by each, and cutting each batch's partials
    into shards hashed its endpoints again (docs/benchmarks.md); the partials merge associatively, so
    joining changes no feature. Subclasses' `took` says what each (shard, partials) of a joined batch
    becomes: outputs now, or kept until the bundle ends.
    """

    def __init__(self, spec: WindowSpec, shards: int):
        self.spec = spec
        self.shards = shards

    def start_bundle(self):
        self.batches: list = []
        self.rows = 0

    def process(self, batch):
        self.batches.append(batch)
        self.rows += batch.num_rows
        if self.rows >= JOIN_ROWS:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        joined = features.coalesced_batches(self.batches, JOIN_ROWS)
        self.batches, self.rows = [], 0
        for batch in joined:
            for shard, part in sharded_partials(batch, self.spec, self.shards):
                yield from self.took(shard, part)


class _MergedPerBundle(_JoinedPartials):
    """Batches → (shard, partials of the whole bundle): few, compact elements to group.

    The same pre-merge as a lifted `CombinePerKey`, without its cost: on the local runner
    the lifted combine held several times the partials' size in memory.
    """

    def start_bundle(self):
        super().start_bundle()
        self.waiting: dict[int, list[WindowPartials]] = {}

    def took(self, shard: int, part: WindowPartials):
        self.waiting[shard] = _compacted([*self.waiting.get(shard, []), part])
        return []

    def finish_bundle(self):
        yield from super().finish_bundle()
        for shard in sorted(self.waiting):
            yield GlobalWindows.windowed_value((shard, features.merge_partials(self.waiting[shard])))
        self.waiting = {}


class _WindowedPartials(_JoinedPartials):
    """Batches → (shard, partials of one window), stamped with the window's start for `WindowInto`."""

    def took(self, shard: int, part: WindowPartials):
        for start, piece in features.split_partials(part, features.window_labels).items():
            yield GlobalWindows.windowed_value((shard, piece), timestamp=Timestamp(micros=start))


def shard_features(shard_parts, spec: WindowSpec):
    """(shard, its partials) → the shard's table of endpoint-window features."""
    _, parts = shard_parts
    return features.window_table(features.merge_partials(list(parts)), spec)


def sharded_partials(batch, spec: WindowSpec, shards: int):
    """(shard, partials) of one batch."""
    part = features.partial_windows(batch, spec)
    if part is not None:
        yield from features.split_by_shard(part, shards).items()


@dataclass
class WindowFeatures(beam.PTransform):
    """RecordBatches of `spec.table` → Arrow tables of endpoint-window features, one per shard (and window)."""

    spec: WindowSpec
    windowing: str = "key"
    shards: int = DEFAULT_SHARDS

    def __post_init__(self):
        super().__init__()
        if self.windowing not in WINDOWINGS:
            raise ValueError(f"windowing must be one of {WINDOWINGS}")

    def expand(self, batches):
        spec, shards = self.spec, self.shards
        if self.windowing == "key":
            return (
                batches
                | "Partials" >> beam.ParDo(_MergedPerBundle(spec, shards)).with_output_types(_SHARD_PARTIALS)
                | "Gather" >> beam.GroupByKey()
                | "Features" >> beam.Map(shard_features, spec).with_output_types(pa.Table)
            )
        return (
            batches
            | "Partials" >> beam.ParDo(_WindowedPartials(spec, shards)).with_output_types(_SHARD_PARTIALS)
            | "Tumbling" >> beam.WindowInto(beam_window.FixedWindows(spec.window_us / 1e6))
            | "Merge" >> beam.CombinePerKey(MergePartials(spec))
            | "Tables" >> beam.Values().with_output_types(pa.Table)
            | "Unwindow" >> beam.WindowInto(beam_window.GlobalWindows())
        )


def count_untimed(batches, spec: WindowSpec):
    """("untimed", n) for records that have no event time or no endpoint key."""
    return batches | "Untimed" >> beam.Map(lambda batch: ("untimed", features.untimed_records(batch, spec)))
