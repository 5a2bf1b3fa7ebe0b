"""Per-endpoint stateful scoring, in event-time order, whatever order windows arrive in.

Each endpoint's windows wait in a bag until the watermark passes their end; an event-time
timer then scores the due ones oldest first. The detectors' state is plain data (JSON), so
runners can checkpoint it and it reads the same on every runner.

Two timer policies, with identical results:
- `streaming=False` (bounded input): one timer per endpoint at the end of time. The
  watermark reaches it once all input is in, and the endpoint's windows are sorted and
  scored in one pass. A timer per window would re-read the whole bag at every firing.
- `streaming=True`: the timer follows the earliest waiting window, so windows are scored
  as soon as the watermark passes them, as an unbounded source needs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Tuple

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from beamlytics.detectors.base import Status
from beamlytics.detectors.endpoint import DetectorConfig, EndpointScorer

END_OF_TIME_US = GlobalWindow().max_timestamp().micros


class JsonCoder(coders.Coder):
    """Detector state as JSON text: plain data that any runner can store and any reader can inspect."""

    def encode(self, value) -> bytes:
        return json.dumps(value, sort_keys=True).encode("utf-8")

    def decode(self, encoded: bytes):
        return json.loads(encoded.decode("utf-8"))

    def is_deterministic(self) -> bool:
        return True


class _ScoreInEventTimeOrder(beam.DoFn):
    PENDING = BagStateSpec("pending", coders.PickleCoder())
    TRAINING = BagStateSpec("training", coders.PickleCoder())
    DETECTORS = ReadModifyWriteStateSpec("detectors", JsonCoder())
    NEXT_FLUSH = ReadModifyWriteStateSpec("next_flush", coders.VarIntCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, config: DetectorConfig, streaming: bool):
        self.config = config
        self.streaming = streaming

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
        due_at = window.window_end if self.streaming else END_OF_TIME_US
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
        flush=beam.DoFn.TimerParam(FLUSH),
    ):
        watermark_us = fired_at.micros
        waiting = list(pending.read())
        due = sorted((w for w in waiting if w.window_end <= watermark_us), key=lambda w: w.window_start)
        later = [w for w in waiting if w.window_end > watermark_us]

        scorer = EndpointScorer(self.config, detectors.read())
        baseline = list(training.read())
        if baseline:
            scorer.fit(baseline)
            training.clear()
        for window in due:
            yield from scorer.score(window)
        detectors.write(scorer.state())

        pending.clear()
        for window in later:
            pending.add(window)
        if later:
            earliest = min(w.window_end for w in later)
            flush.set(Timestamp(micros=earliest))
            next_flush.write(earliest)
        else:
            next_flush.clear()


@dataclass
class ScoreEndpoints(beam.PTransform):
    """`EndpointWindow`s → one score row per (endpoint, window, feature) (`schemas.ANOMALIES` columns).

    Windows flagged `train=True` (a baseline from an earlier run, or windows ending by
    `train_until_us`) calibrate the endpoint's detectors and are not judged.
    """

    config: DetectorConfig
    train_until_us: int | None = None
    streaming: bool = False

    def __post_init__(self):
        super().__init__()

    def expand(self, windows):
        train_until = self.train_until_us
        if train_until is not None:
            windows = windows | "TrainingPeriod" >> beam.Map(
                lambda w: w._replace(train=True) if w.window_end <= train_until else w)
        return (
            windows
            # The key type tells Beam to encode keys as UTF-8: state must find an endpoint by the same bytes
            # on every worker, which a pickled key does not promise (Beam warns "may not be deterministic").
            | "ByEndpoint" >> beam.Map(lambda w: (w.endpoint, w)).with_output_types(Tuple[str, Any])
            | "Score" >> beam.ParDo(_ScoreInEventTimeOrder(self.config, self.streaming))
        )


def anomalies(scores):
    return scores | "Anomalies" >> beam.Filter(lambda row: row["status"] == Status.ANOMALY)

