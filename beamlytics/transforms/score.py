"""Per-endpoint scoring in event-time order, whatever order windows arrive in.

Input and output are Arrow tables: endpoint-window features in, score rows
(`schemas.ANOMALIES` columns) out. Two paths, with identical results (tests check it):
- `streaming=False` (bounded input): the tables are cut by a stable hash of the endpoint
  into shards, each shard is gathered and `endpoint.score_table` scores all its endpoints
  at once. Nothing waits in Beam state: on bounded input every window would wait until the
  end anyway, which is the same as grouping by endpoint and scoring the sorted series.
- `streaming=True` (unbounded input): one element per endpoint-window, keyed by endpoint,
  into a stateful DoFn. Each endpoint's windows wait in a bag until the watermark passes
  their end; an event-time timer that follows the earliest waiting window then scores the
  due ones oldest first; with an idle timeout, the same timer, once nothing waits, fires at
  the endpoint's expiry and clears its state. The detectors' state is plain data (JSON), so
  runners can checkpoint it and it reads the same on every runner.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from beamlytics import features, schemas
from beamlytics.detectors.endpoint import TRAIN_COLUMN, DetectorConfig, EndpointScorer, EndpointWindow, score_table
from beamlytics.detectors.population import CAPACITY, Population, merge_pool_maps, pools_of
from beamlytics.detectors.verdict import VerdictSettings, judge
from beamlytics.transforms.windows import DEFAULT_SHARDS


class JsonCoder(coders.Coder):
    """Detector state as JSON text: plain data that any runner can store and any reader can inspect."""

    def encode(self, value) -> bytes:
        return json.dumps(value, sort_keys=True).encode("utf-8")

    def decode(self, encoded: bytes):
        return json.loads(encoded.decode("utf-8"))

    def is_deterministic(self) -> bool:
        return True


def idle_expiry(window: EndpointWindow, idle_timeout_us: int) -> int:
    """When an endpoint whose newest window is `window` has been idle long enough to be forgotten: at least
    `idle_timeout_us` after the window's end, on the window grid, so that every window starting before it
    reaches the scorer before the watermark does (whether a window starts afresh depends on event time alone)."""
    length = window.window_end - window.window_start
    return window.window_end + -(-idle_timeout_us // length) * length


class _ScoreInEventTimeOrder(beam.DoFn):
    """Per endpoint: windows wait in `pending` until the watermark passes their end, then are scored oldest first.

    `pending` is bounded: a window reaches this DoFn only once the watermark has passed its end (fixed windows
    fire then), so it waits at most until the next watermark step, and the bag holds the windows closed by
    one step. With `idle_timeout_us`, an endpoint with no window for that long is forgotten (a timer clears
    its state), and a window starting at or after its expiry is scored by fresh detectors, as a new endpoint's.
    """

    PENDING = BagStateSpec("pending", coders.PickleCoder())
    TRAINING = BagStateSpec("training", coders.PickleCoder())
    DETECTORS = ReadModifyWriteStateSpec("detectors", JsonCoder())
    NEXT_FLUSH = ReadModifyWriteStateSpec("next_flush", coders.VarIntCoder())
    EXPIRES_AT = ReadModifyWriteStateSpec("expires_at", coders.VarIntCoder())
    # One event-time timer does both jobs (scoring due windows, forgetting an idle endpoint): one timer per
    # key to reason about, and no processing-time timer, whose firing would depend on the machine's clock.
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, config: DetectorConfig, idle_timeout_us: int | None = None):
        self.config = config
        self.idle_timeout_us = idle_timeout_us

    def process(
        self,
        element,
        pending=beam.DoFn.StateParam(PENDING),
        training=beam.DoFn.StateParam(TRAINING),
        next_flush=beam.DoFn.StateParam(NEXT_FLUSH),
        flush=beam.DoFn.TimerParam(FLUSH),
    ):
        _, window = element
        if window.train:
            training.add(window)
            return
        pending.add(window)
        due_at = window.window_end
        scheduled = next_flush.read()
        # Setting a timer costs more than the rest of this method: move it only when needed.
        if scheduled is None or due_at < scheduled:
            flush.set(Timestamp(micros=due_at))
            next_flush.write(due_at)

    @on_timer(FLUSH)
    def on_flush(
        self,
        fired_at=beam.DoFn.TimestampParam,
        pending=beam.DoFn.StateParam(PENDING),
        training=beam.DoFn.StateParam(TRAINING),
        detectors=beam.DoFn.StateParam(DETECTORS),
        next_flush=beam.DoFn.StateParam(NEXT_FLUSH),
        expires_at=beam.DoFn.StateParam(EXPIRES_AT),
        flush=beam.DoFn.TimerParam(FLUSH),
    ):
        watermark_us = fired_at.micros
        waiting = list(pending.read())
        due = sorted((w for w in waiting if w.window_end <= watermark_us), key=lambda w: w.window_start)
        later = [w for w in waiting if w.window_end > watermark_us]
        expiry = expires_at.read()
        if not due and not later:
            if expiry is not None and expiry <= watermark_us:  # idle since: forget the endpoint
                for state in (pending, training, detectors, next_flush, expires_at):
                    state.clear()
            return

        scorer = EndpointScorer(self.config, detectors.read())
        baseline = list(training.read())
        if baseline:
            scorer.fit(baseline)
            training.clear()
        rows = []
        for window in due:
            if expiry is not None and window.window_start >= expiry:
                scorer = EndpointScorer(self.config)  # back after its state expired: a new endpoint
            rows.extend(scorer.score(window))
            if self.idle_timeout_us is not None:
                expiry = idle_expiry(window, self.idle_timeout_us)
        if rows:
            yield pa.Table.from_pylist(rows, schema=schemas.ANOMALIES)
        detectors.write(scorer.state())
        if due and expiry is not None:
            expires_at.write(expiry)

        pending.clear()
        for window in later:
            pending.add(window)
        # Next: the earliest waiting window, else the expiry (a window arriving before it moves the timer).
        following = min(w.window_end for w in later) if later else expiry
        if following is not None:
            flush.set(Timestamp(micros=following))
            next_flush.write(following)
        else:
            next_flush.clear()


def mark_training(windows: pa.Table, train_until_us: int) -> pa.Table:
    """Windows ending by `train_until_us` become training windows."""
    early = pc.less_equal(windows.column("window_end"), pa.scalar(train_until_us, schemas.TIMESTAMP))
    column = windows.schema.get_field_index(TRAIN_COLUMN)
    return windows.set_column(column, windows.schema.field(column), pc.or_(windows.column(TRAIN_COLUMN), early))


def by_shard(windows: pa.Table, shards: int):
    """(shard, the table's rows of that shard's endpoints, packed)."""
    for shard, piece in features.split_table(windows, features.endpoint_shards(windows.column("key"), shards)).items():
        yield shard, features.Packed.of(piece)


def score_shard(shard_pieces, config: DetectorConfig) -> pa.Table:
    _, pieces = shard_pieces
    return score_table(pa.concat_tables([piece.table() for piece in pieces]), config)


def by_endpoint(windows: pa.Table):
    """(endpoint, window) for each row, stamped with the window's start."""
    for window in features.endpoint_windows(windows):
        yield TimestampedValue((window.endpoint, window), Timestamp(micros=window.window_start))


@dataclass
class ScoreEndpoints(beam.PTransform):
    """Tables of endpoint-window features → tables of score rows, one per (endpoint, window, feature).

    Windows marked for training (a baseline from an earlier run, or windows ending by
    `train_until_us`) calibrate the endpoint's detectors and are not judged.
    """

    config: DetectorConfig
    train_until_us: int | None = None
    streaming: bool = False
    shards: int = DEFAULT_SHARDS
    idle_timeout_us: int | None = None  # streaming: an endpoint's state is forgotten after this much idle time

    def __post_init__(self):
        super().__init__()

    def expand(self, windows):
        config, shards = self.config, self.shards
        if self.train_until_us is not None:
            windows = windows | "TrainingPeriod" >> beam.Map(mark_training, self.train_until_us)
        if self.streaming:
            return (
                windows
                # The key type tells Beam to encode keys as UTF-8: state must find an endpoint by the same bytes
                # on every worker, which a pickled key does not promise (Beam warns "may not be deterministic").
                | "ByEndpoint" >> beam.FlatMap(by_endpoint).with_output_types(Tuple[str, Any])
                | "Score" >> beam.ParDo(_ScoreInEventTimeOrder(config, self.idle_timeout_us))
            )
        return (
            windows
            | "ByShard" >> beam.FlatMap(by_shard, shards)
            | "Gather" >> beam.GroupByKey()
            | "Score" >> beam.Map(score_shard, config)
        )



class PoolPopulation(beam.CombineFn):
    """Tables of endpoint-windows → the run's `Population`: a bounded sample per (table, key kind, feature)
    that is the same whatever the order and sharding of its inputs."""

    def __init__(self, feature_names: tuple[str, ...], capacity: int = CAPACITY):
        self.feature_names = feature_names
        self.capacity = capacity

    def create_accumulator(self):
        return {}

    def add_input(self, pools, windows: pa.Table):
        return merge_pool_maps([pools, pools_of(windows, self.feature_names, self.capacity)], self.capacity)

    def merge_accumulators(self, accumulators):
        return merge_pool_maps(accumulators, self.capacity)

    def extract_output(self, pools) -> Population:
        return Population.fit(pools)


VERDICTS_TAG, REPORTED_TAG, COUNTS_TAG = "verdicts", "reported", "counts"


def judge_scores(scores: pa.Table, population: Population, settings: VerdictSettings):
    verdicts, reported, counts = judge(scores, population, settings)
    yield beam.pvalue.TaggedOutput(VERDICTS_TAG, verdicts)
    yield beam.pvalue.TaggedOutput(REPORTED_TAG, reported)
    for name, count in sorted(counts.items()):
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, (name, count))


@dataclass
class JudgeWindows(beam.PTransform):
    """Score tables → ranked verdicts, the reported anomaly rows and (name, count) pairs for the summary.

    Batch: the population of every endpoint-window of `windows` is pooled in one global combine and
    reaches the judges as a side input. With `windows` None (the streaming scorer, whose global
    combine would never fire on unbounded input) there is no population: windows whose own detector
    still calibrates are unjudged (`no_model`), a documented limitation.
    """

    settings: VerdictSettings
    feature_names: tuple[str, ...]
    windows: Any = None

    def __post_init__(self):
        super().__init__()

    def expand(self, scores):
        if self.windows is None:
            population = beam.pvalue.AsSingleton(scores.pipeline | "NoPopulation" >> beam.Create([Population({})]))
        else:
            population = beam.pvalue.AsSingleton(
                self.windows | "Population" >> beam.CombineGlobally(PoolPopulation(self.feature_names)))
        return scores | "Judge" >> beam.FlatMap(judge_scores, population, self.settings).with_outputs(
            VERDICTS_TAG, REPORTED_TAG, COUNTS_TAG)
