"""Unbounded sources for live detection: a splittable DoFn that polls a follower (folder or Kafka).

One element per source. Its restriction is the follower's state (file cursors or partition
offsets) and the event clock: each poll claims the state after it, and between polls the DoFn
checkpoints (`defer_remainder`), so the runner holds the position, not the worker. The
watermark is the event clock's (newest record time minus the allowed lateness); records older
than it go to the dead letters. When its drain file appears (the input is complete), the DoFn
ends its restriction as soon as it has caught up (a poll finds nothing new): the watermark jumps
to the end of time and every open window closes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam import coders
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from beamlytics import schemas
from beamlytics.detectors.verdict import judge
from beamlytics.live.chunks import parse_chunk
from beamlytics.live.clock import EventClock
from beamlytics.live.follow import FolderFollower
from beamlytics.live.kafka import KafkaFollower, KafkaSpec, anomaly_messages
from beamlytics.parsers.base import Batch, Read, Rejected
from beamlytics.transforms.read import REJECTED_TAG

COUNTS_TAG = "counts"


@dataclass(frozen=True)
class LiveSource:
    """What to follow: folders of logs, or Kafka topics; `drain_file`, once it exists, ends the input."""

    table: str
    allowed_lateness_us: int
    folders: tuple[str, ...] = ()
    kafka: KafkaSpec | None = None
    poll_seconds: float = 1.0
    drain_file: str | None = None

    def follower(self, state: dict | None):
        if self.kafka is not None:
            return KafkaFollower(self.kafka, self.table, state)
        return FolderFollower(self.folders, self.table, state)

    def draining(self) -> bool:
        return bool(self.drain_file and os.path.exists(self.drain_file))


@dataclass(frozen=True)
class Position:
    """The restriction: the follower's state and the clock; `done` once the source has ended."""

    state: str  # JSON of the follower's state
    newest_us: int | None = None
    done: bool = False


class PositionCoder(coders.Coder):
    def encode(self, value: Position) -> bytes:
        return json.dumps([value.state, value.newest_us, value.done]).encode("utf-8")

    def decode(self, encoded: bytes) -> Position:
        state, newest, done = json.loads(encoded)
        return Position(state, newest, done)

    def is_deterministic(self) -> bool:
        return True


class PositionTracker(RestrictionTracker):
    """Claims whole positions, one per poll; splits only at a checkpoint (what was read / what follows)."""

    def __init__(self, position: Position):
        self._position = position
        self._claimed: Position | None = None
        self._finished = position.done

    def current_restriction(self) -> Position:
        return self._position

    def try_claim(self, position: Position) -> bool:
        if self._finished:
            return False
        self._claimed = position
        if position.done:  # the source ended: nothing remains after this poll
            self._finished = True
            self._position = position
        return True

    def try_split(self, fraction_of_remainder):
        if self._finished or fraction_of_remainder != 0:
            return None  # one source is one element: nothing to share with another worker
        resume = self._claimed or self._position
        self._finished = True
        self._position = Position(resume.state, resume.newest_us, done=True)
        return self._position, Position(resume.state, resume.newest_us)

    def check_done(self) -> None:
        if not self._finished and self._claimed is None:
            raise ValueError("the live source returned without claiming, checkpointing or ending its position")

    def current_progress(self) -> RestrictionProgress:
        return RestrictionProgress(fraction=1.0 if self._finished else 0.0)

    def is_bounded(self) -> bool:
        return False


class _PositionProvider(RestrictionProvider):
    def initial_restriction(self, element: LiveSource) -> Position:
        return Position("{}")

    def create_tracker(self, restriction: Position) -> PositionTracker:
        return PositionTracker(restriction)

    def restriction_size(self, element, restriction: Position) -> int:
        return 0 if restriction.done else 1

    def restriction_coder(self) -> coders.Coder:
        return PositionCoder()


class _Follow(beam.DoFn):
    """LiveSource → timestamped record batches; dead letters and (name, n) counts on their tags."""

    def __init__(self):
        self._followers: dict[Any, tuple[str, Any]] = {}

    def setup(self):
        self._followers = {}

    def teardown(self):
        for _, follower in self._followers.values():
            if hasattr(follower, "close"):
                follower.close()

    def _follower(self, source: LiveSource, state: str):
        # A follower keeps connections and sniffed kinds between polls; it is rebuilt from the restriction
        # whenever the restriction is not the one it last produced (a resumed or moved checkpoint).
        known = self._followers.get(source)
        if known is None or known[0] != state:
            if known is not None and hasattr(known[1], "close"):
                known[1].close()
            known = (state, source.follower(json.loads(state)))
            self._followers[source] = known
        return known[1]

    def process(self, source: LiveSource,
                tracker=beam.DoFn.RestrictionParam(_PositionProvider()),
                watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
        position = tracker.current_restriction()
        clock = EventClock(source.allowed_lateness_us, position.newest_us)
        follower = self._follower(source, position.state)
        draining = source.draining()
        chunks, rejected = follower.poll()
        # A drained source ends once a poll after the drain file appeared finds nothing new: caught up.
        stopping = draining and not chunks and not rejected and follower.caught_up()
        stamp = Timestamp(micros=clock.watermark_us or 0)
        batches, read, late = [], 0, 0
        for chunk in chunks:
            for item in parse_chunk(chunk, source.table):
                if isinstance(item, Batch):
                    on_time, dead = clock.admit(item.records, source.table)
                    rejected.extend(dead)
                    late += len(dead)
                    if on_time.num_rows:
                        batches.append(on_time)
                elif isinstance(item, Rejected):
                    rejected.append(item)
                elif isinstance(item, Read):
                    read += item.units
        clock.end_poll()
        state = json.dumps(follower.state(), sort_keys=True)
        if not tracker.try_claim(Position(state, clock.newest_us, done=stopping)):
            return
        self._followers[source] = (state, follower)
        for batch in batches:
            yield TimestampedValue(batch, stamp)
        if rejected:  # one table per poll: a flood of bad lines is a few files, not one per line
            table = pa.Table.from_pylist([item.as_row() for item in rejected], schema=schemas.REJECTED)
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, TimestampedValue(table, stamp))
        for name, count in (("read", read), ("rejected", len(rejected)), ("late", late)):
            if count:
                yield beam.pvalue.TaggedOutput(COUNTS_TAG, TimestampedValue((name, count), stamp))
        if stopping:
            return
        if clock.watermark_us is not None:
            watermark.set_watermark(Timestamp(micros=clock.watermark_us))
        tracker.defer_remainder(Duration(seconds=source.poll_seconds))


@dataclass
class FollowSource(beam.PTransform):
    """A live source → record batches (main), tables of dead letters (`rejected`), (name, n) counts (`counts`)."""

    source: LiveSource

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        return (
            pbegin
            | "Source" >> beam.Create([self.source])
            | "Follow" >> beam.ParDo(_Follow()).with_outputs(REJECTED_TAG, COUNTS_TAG, main="records")
        )


VERDICTS_TAG = "verdicts"


class _JudgePanes(beam.DoFn):
    """Score tables of closed windows → their verdicts (`verdicts` tag) and reported anomaly rows (main), judged
    against the baseline's population with batch `detect`'s `judge`.

    No state: a window's verdict depends on its own score rows and the fixed population alone, so judging each
    table of the scorer as it comes is judging the run's windows all at once, and the stage fuses with the
    scorer's (a second stateful stage after it stalled Prism)."""

    def __init__(self, baseline, settings):
        self.baseline, self.settings = baseline, settings
        self._population = None

    def setup(self):
        self._population = self.baseline.load().population(self.settings.min_records)

    def process(self, scores: pa.Table):
        verdicts, reported, _ = judge(scores, self._population, self.settings)
        if verdicts.num_rows:
            yield beam.pvalue.TaggedOutput(VERDICTS_TAG, verdicts)
        if reported.num_rows:
            yield reported


@dataclass
class JudgePanes(beam.PTransform):
    """Score tables → reported anomaly rows (main) and verdicts (`verdicts`), against a `LiveBaseline`'s
    population under `settings` (`VerdictSettings`)."""

    baseline: Any
    settings: Any

    def __post_init__(self):
        super().__init__()

    def expand(self, scores):
        return scores | "Judge" >> beam.ParDo(_JudgePanes(self.baseline, self.settings)).with_outputs(
            VERDICTS_TAG, main="reported")


class _SendAnomalies(beam.DoFn):
    """Tables of reported anomaly rows → one Kafka message each; a bundle ends only once the broker has them."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic
        self._producer = None

    def setup(self):
        from kafka import KafkaProducer  # the `live` extra

        # acks=all: a message counts as sent once the broker has it; the key picks its partition, so every
        # message about an endpoint stays in order.
        self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=20)

    def process(self, reported: pa.Table):
        for key, value in anomaly_messages(reported):
            self._producer.send(self.topic, key=key, value=value)
        yield reported.num_rows

    def finish_bundle(self):
        self._producer.flush()

    def teardown(self):
        if self._producer is not None:
            self._producer.close()


@dataclass
class SendAnomalies(beam.PTransform):
    """Tables of reported anomaly rows → JSON messages on a Kafka topic, for a SIEM; outputs the rows sent."""

    bootstrap: str
    topic: str

    def __post_init__(self):
        super().__init__()

    def expand(self, reported):
        return reported | "Send" >> beam.ParDo(_SendAnomalies(self.bootstrap, self.topic))
