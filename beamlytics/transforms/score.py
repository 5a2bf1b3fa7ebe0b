"""Per-endpoint scoring in event-time order, whatever order windows arrive in.

Input and output are Arrow tables: endpoint-window features in, score rows
(`schemas.ANOMALIES` columns) out. Two paths, with identical results (tests check it):
- `streaming=False` (bounded input): the tables are cut by a stable hash of the endpoint
  into shards, each shard is gathered and `endpoint.score_table` scores all its endpoints
  at once. Nothing waits in Beam state: on bounded input every window would wait until the
  end anyway, which is the same as grouping by endpoint and scoring the sorted series.
- `streaming=True` (unbounded input): one element per endpoint-window, keyed by endpoint,
  into a stateful DoFn. Each endpoint's windows wait in a bag until the watermark passes
  their end; an event-time timer that follows the latest waiting window then scores the
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
from beamlytics.detectors.base import Status
from beamlytics.detectors.population import CAPACITY, FeatureTail, Population, merge_pools, pools_of
from beamlytics.detectors.verdict import VerdictSettings, judge
from beamlytics.hunts.marks import strongest
from beamlytics.transforms import progress
from beamlytics.transforms.coders import ArrowElementCoder
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


# Counters of the streaming scorer: endpoints whose detectors started afresh, and endpoints whose state an idle
# timeout cleared; their difference is the endpoints the scorer holds state for.
ENDPOINTS_STARTED, ENDPOINTS_FORGOTTEN = "endpoints_started", "endpoints_forgotten"


class _ScoreInEventTimeOrder(beam.DoFn):
    """Per endpoint: windows wait in `pending` until the watermark passes their end, then are scored oldest first.

    `pending` is bounded: a window reaches this DoFn only once the watermark has passed its end (fixed windows
    fire then), so it waits at most until the next watermark step, and the bag holds the windows closed by
    one step. The timer follows the latest waiting window's end: once the watermark passes it, every waiting
    window is complete (any earlier one of the endpoint, in flight, holds the watermark back), so one firing
    scores them all. Following the earliest instead cost one firing, and one read and rewrite of the bag, per
    window: quadratic in a watermark step, which a backlog (a replay, a restart, a drain file present at the
    start) makes thousands of windows long. With `idle_timeout_us`, an endpoint with no window for that long is forgotten (a timer clears
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

    def __init__(self, config: DetectorConfig, idle_timeout_us: int | None = None, baseline=None):
        self.config = config
        self.idle_timeout_us = idle_timeout_us
        self.baseline = baseline  # a `live.baseline.LiveBaseline`: calibrates each endpoint's fresh detectors
        self._calibration: dict[str, list[EndpointWindow]] = {}

    def setup(self):
        # Read here, not carried in the pipeline: a day's features would make every bundle's DoFn that large.
        self._calibration = self.baseline.load().by_endpoint() if self.baseline is not None else {}

    def _fresh_scorer(self, endpoint: str) -> EndpointScorer:
        """New detectors for `endpoint`, calibrated on its baseline windows first, as batch `detect --baseline`."""
        progress.count(ENDPOINTS_STARTED)
        scorer = EndpointScorer(self.config)
        if endpoint in self._calibration:
            scorer.fit(self._calibration[endpoint])
        return scorer

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
        scheduled = next_flush.read()  # None: the timer waits for the expiry, or for nothing
        # Setting a timer costs more than the rest of this method: move it only when needed.
        if scheduled is None or due_at > scheduled:
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
                progress.count(ENDPOINTS_FORGOTTEN)
            return

        known = detectors.read()
        endpoint = (due or later)[0].endpoint
        scorer = EndpointScorer(self.config, known) if known is not None else self._fresh_scorer(endpoint)
        baseline = list(training.read())
        if baseline:
            scorer.fit(baseline)
            training.clear()
        rows = []
        for window in due:
            if expiry is not None and window.window_start >= expiry:
                progress.count(ENDPOINTS_FORGOTTEN)  # back after its state expired: a new endpoint
                scorer = self._fresh_scorer(endpoint)
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
        # Next: the latest waiting window, else the expiry (a window arriving before it moves the timer).
        if later:
            following = max(w.window_end for w in later)
            flush.set(Timestamp(micros=following))
            next_flush.write(following)
        else:
            if expiry is not None:
                flush.set(Timestamp(micros=expiry))
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
    baseline: Any = None  # streaming: a `live.baseline.LiveBaseline` whose windows calibrate fresh detectors

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
                | "Score" >> beam.ParDo(_ScoreInEventTimeOrder(config, self.idle_timeout_us, self.baseline))
            )
        return (
            windows
            | "ByShard" >> beam.FlatMap(by_shard, shards)
            | "Gather" >> beam.GroupByKey()
            | "Score" >> beam.Map(score_shard, config)
        )



@dataclass(frozen=True)
class ShardResult:
    """What batch `detect` makes of one shard of endpoints, written by the worker that made it."""

    shard: int
    windows: tuple[pa.Table, ...]  # the run's endpoint-windows (not calibration ones)
    scores: pa.Table  # `schemas.ANOMALIES` rows
    verdicts: pa.Table
    reported: pa.Table  # the fired features' rows of reported alarms
    counts: tuple[tuple[str, int], ...]


# Sized by its tables' bytes: Beam's size sample pickled shard results, which never leave the judging step.
coders.registry.register_coder(ShardResult, ArrowElementCoder)


def tagged_by_shard(windows: pa.Table, shards: int, written: bool):
    """(shard, (written, the rows of that shard's endpoints, packed)): `written` for the run's own windows."""
    for shard, packed in by_shard(windows, shards):
        yield shard, (written, packed)


def judged_shard(shard: int, pieces, config: DetectorConfig, population: Population,
                 settings: VerdictSettings, marks=None) -> ShardResult:
    """A shard's windows scored and judged against the run's population and the hunts' `marks`
    (the strongest `Mark` per (key, window start µs), `beamlytics.hunts.marks.strongest`)."""
    tagged = [(written, packed.table()) for written, packed in (piece for piece in pieces if piece is not None)]
    scores = (score_table(pa.concat_tables([table for _, table in tagged]), config) if tagged
              else schemas.ANOMALIES.empty_table())
    verdicts, reported, counts = judge(scores, population, settings, marks)
    calibrating = pc.sum(pc.cast(pc.equal(scores.column("status"), Status.CALIBRATING), pa.int64())).as_py() or 0
    counts = {**counts, "scores": scores.num_rows, "calibrating": calibrating, "anomalies": reported.num_rows}
    return ShardResult(shard, tuple(table for written, table in tagged if written), scores, verdicts, reported,
                       tuple(sorted(counts.items())))


def population_of(windows, feature_names: tuple[str, ...], min_records: int):
    """The run's `Population` of its windows of at least `min_records` records (those judged), a side input.
    Pooled per (table, key kind, feature), each pool merged and its tail fitted on whichever worker holds that
    key: only the fitted tails meet, not one worker merging every pool."""
    tails = (
        windows
        | "Pools" >> beam.FlatMap(lambda table: pools_of(table, feature_names, min_records=min_records).items())
        | "MergePools" >> beam.CombinePerKey(MergePools())
        | "FitTails" >> beam.MapTuple(lambda key, pool: (key, FeatureTail.of_pool(pool)))
    )
    return beam.pvalue.AsDict(tails)


class MergePools(beam.CombineFn):
    """Pools of one (table, key kind, feature) → the bounded sample `merge_pools` keeps: the same in any order."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity

    def create_accumulator(self):
        return merge_pools([], self.capacity)

    def add_input(self, pool, more):
        return merge_pools([pool, more], self.capacity)

    def merge_accumulators(self, pools):
        return merge_pools(pools, self.capacity)

    def extract_output(self, pool):
        return pool


class _JudgeShard(beam.DoFn):
    """(shard, pieces) → its `ShardResult`, against the population of the side input `tails`.

    A `Population` fits its combined tail when first asked: built per shard, it was fitted once per shard (37
    times at 4 M records, 2.8 of 31 s beyond the plain stages; docs/benchmarks.md). The Python SDK hands every
    element of a bundle the same side-input objects, so the population (and the hunts' strongest marks) are
    built again only when a side input is another object; holding them keeps `is` from matching a new one.
    """

    def __init__(self, config: DetectorConfig, settings: VerdictSettings):
        self.config = config
        self.settings = settings
        self._of = None  # ((tails, marks), (population, strongest marks)) of the last side inputs

    def process(self, shard_pieces, tails, marks):
        if self._of is None or self._of[0][0] is not tails or self._of[0][1] is not marks:
            self._of = ((tails, marks), (Population(dict(sorted(tails.items()))), strongest(marks)))
        population, strongest_marks = self._of[1]
        shard, pieces = shard_pieces
        yield judged_shard(shard, pieces, self.config, population, self.settings, strongest_marks)


@dataclass
class JudgeShards(beam.PTransform):
    """Batch: tables of endpoint-windows → one `ShardResult` per shard of endpoints, every shard even when empty.

    The windows of each shard are gathered once, scored by `ScoreEndpoints`' rule and judged
    against the population of every judged endpoint-window of `windows` (a side input). Whoever
    consumes the results in the same step (the writers) gets the tables where they were made:
    score rows, by far the largest data of a run, never cross to another worker. Shards are
    cut by the writers' rule (`features.stable_shard` of the endpoint), so one result is one
    output file per folder. `calibration` windows (an earlier run's) calibrate and are not written.
    `marks`, the hunts' (key, window start, `Mark`) triples when hunts run (`beamlytics.hunts.marks`),
    reach the judges as a side input too.
    """

    config: DetectorConfig
    settings: VerdictSettings
    shards: int
    train_until_us: int | None = None
    calibration: Any = None
    marks: Any = None

    def __post_init__(self):
        super().__init__()

    def expand(self, windows):
        config, settings, shards = self.config, self.settings, self.shards
        population = population_of(windows, config.features, settings.min_records)
        marks = beam.pvalue.AsList(self.marks if self.marks is not None else
                                   windows.pipeline | "NoHunts" >> beam.Create([]))
        run = windows
        if self.train_until_us is not None:
            run = run | "TrainingPeriod" >> beam.Map(mark_training, self.train_until_us)
        keyed = [run | "ByShard" >> beam.FlatMap(tagged_by_shard, shards, True)]
        if self.calibration is not None:
            keyed.append(self.calibration | "CalibrationByShard" >> beam.FlatMap(tagged_by_shard, shards, False))
        every_shard = windows.pipeline | "EveryShard" >> beam.Create([(shard, None) for shard in range(shards)],
                                                                     reshuffle=False)
        return (
            (*keyed, every_shard)
            | "Together" >> beam.Flatten()
            | "Gather" >> beam.GroupByKey()
            | "Judge" >> beam.ParDo(_JudgeShard(config, settings), population, marks).with_output_types(ShardResult)
        )
