"""The `parse` and `detect` pipelines: wiring of the composite transforms, nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import apache_beam as beam

from beamlytics import features, schemas
from beamlytics.detectors.endpoint import DetectorConfig
from beamlytics.features import WindowSpec
from beamlytics.inputs import DayRange
from beamlytics.transforms.read import ReadRecords
from beamlytics.transforms.score import ScoreEndpoints, anomalies
from beamlytics.transforms.windows import WindowFeatures, count_untimed
from beamlytics.transforms.write import WriteBatches, WriteSortedParquet, WriteSummary

OUTPUTS = ("anomalies", "features", "scores", "rejected", "summary.json", *schemas.TABLES)
SCORE_ORDER = ("table", "key_kind", "key", "window_start", "feature")
REJECTED_ORDER = ("source_file", "position", "reason", "excerpt", "source_tool")


@dataclass
class ReadSettings:
    inputs: Sequence[str]  # files, already expanded
    table: str
    format: str = "auto"
    days: DayRange = DayRange()
    parser_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class DetectSettings:
    read: ReadSettings
    spec: WindowSpec
    detector: DetectorConfig
    windowing: str = "key"
    baseline: str | None = None  # features/ folder of an earlier run, to calibrate on
    train_until_us: int | None = None
    shards: int = 1


def build_parse(pipeline: beam.Pipeline, settings: ReadSettings, output: str) -> None:
    read = pipeline | "Read" >> _read(settings)
    read["records"] | "WriteRecords" >> WriteBatches(f"{output}/{settings.table}")
    _write_rejected_and_summary(read, output, {"table": settings.table}, [])


def build_detect(pipeline: beam.Pipeline, settings: DetectSettings, output: str) -> None:
    read = pipeline | "Read" >> _read(settings.read)
    spec = settings.spec
    windows = read["records"] | "Windows" >> WindowFeatures(spec, settings.windowing)
    to_score = windows
    if settings.baseline:
        baseline = pipeline | "Baseline" >> ReadBaseline(settings.baseline, spec)
        to_score = (windows, baseline) | "WithBaseline" >> beam.Flatten()
    scores = to_score | "Score" >> ScoreEndpoints(settings.detector, settings.train_until_us)
    found = anomalies(scores)

    shards = settings.shards
    scores | "WriteScores" >> WriteSortedParquet(f"{output}/scores", schemas.SCORES, SCORE_ORDER, shards, "key")
    found | "WriteAnomalies" >> WriteSortedParquet(
        f"{output}/anomalies", schemas.ANOMALIES, SCORE_ORDER, shards, "key")
    windows | "WriteFeatures" >> WriteSortedParquet(
        f"{output}/features", features.feature_schema(spec.table), SCORE_ORDER[:4], shards, "key")
    counts = [
        windows | "CountWindows" >> beam.Map(lambda table: ("windows", table.num_rows)),
        found | "CountAnomalies" >> beam.Map(lambda table: ("anomalies", table.num_rows)),
        count_untimed(read["records"], spec),
    ]
    extra = {"table": spec.table, "key": spec.key, "window_seconds": spec.window_us / 1e6,
             "detector": settings.detector.name}
    _write_rejected_and_summary(read, output, extra, counts, ("windows", "anomalies", "untimed"))


def _read(settings: ReadSettings) -> ReadRecords:
    return ReadRecords(settings.inputs, settings.table, settings.format, settings.days, settings.parser_options)


def _write_rejected_and_summary(read, output: str, extra: Mapping[str, Any], counts: list,
                                zero_counts: Sequence[str] = ()) -> None:
    read["rejected"] | "WriteRejected" >> WriteSortedParquet(f"{output}/rejected", schemas.REJECTED, REJECTED_ORDER)
    pipeline = read["counts"].pipeline
    zeros = pipeline | "ZeroCounts" >> beam.Create([(name, 0) for name in zero_counts])
    (
        (read["counts"], zeros, *counts)
        | "AllCounts" >> beam.Flatten()
        | "Summary" >> WriteSummary(f"{output}/summary.json", extra)
    )


@dataclass
class ReadBaseline(beam.PTransform):
    """Features of an earlier run (its `features/` folder) → tables of training windows."""

    directory: str
    spec: WindowSpec

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        spec = self.spec
        return (
            pbegin
            | "ReadFeatures" >> beam.io.ReadFromParquetBatched(f"{self.directory.rstrip('/')}/*.parquet")
            | "AsTraining" >> beam.Map(features.training_windows, spec)
        )

