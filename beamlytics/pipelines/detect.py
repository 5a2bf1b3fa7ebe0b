"""The `parse` and `detect` pipelines: wiring of the composite transforms, nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamlytics import baseline, features, schemas
from beamlytics.analytics.sql import query_batch
from beamlytics.detectors.base import Status
from beamlytics.detectors.endpoint import DetectorConfig
from beamlytics.detectors.verdict import UNJUDGED_REASONS, VerdictSettings
from beamlytics.features import WindowSpec
from beamlytics.hunts.config import HuntConfig
from beamlytics.hunts.marks import finding_marks
from beamlytics.inputs import DayRange
from beamlytics.parsers import formats
from beamlytics.parsers.base import Rejected
from beamlytics.transforms.hunt import HuntFindings
from beamlytics.transforms.read import REJECTED_TAG, ReadRecords
from beamlytics.transforms.score import COUNTS_TAG, REPORTED_TAG, VERDICTS_TAG, JudgeWindows, ScoreEndpoints
from beamlytics.transforms.windows import WindowFeatures, count_untimed
from beamlytics.transforms.progress import TallyCounts
from beamlytics.transforms.write import (SortedFolder, WriteBatches, WriteSortedFolders, WriteSortedParquet, WriteSummary,
                                         parquet_bytes, write_file)

SCORE_ORDER = ("table", "key_kind", "key", "window_start", "feature")
VERDICT_ORDER = ("-score", "table", "key_kind", "key", "window_start")  # ranked: the most anomalous first
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
    verdict: VerdictSettings = VerdictSettings()
    query: str | None = None  # row-by-row SQL over the records first (table `netlytics`), as NetLytics' --query
    hunts: frozenset = frozenset()  # hunts whose findings are evidence in the verdicts (batch only)


def build_parse(pipeline: beam.Pipeline, settings: ReadSettings, output: str) -> formats.Plan:
    """Wire the parse pipeline; returns what reading will do (files to parse, skipped, rejected)."""
    reader = _read(settings)
    read = pipeline | "Read" >> reader
    directory = f"{output}/{settings.table}"
    read["records"] | "WriteRecords" >> WriteBatches(directory)
    (
        read["records"]
        | "RowCounts" >> beam.Map(lambda batch: batch.num_rows)
        | "Rows" >> beam.CombineGlobally(sum)
        | "WriteEmptyTable" >> beam.FlatMap(_write_empty_table, directory, settings.table)
    )
    _write_rejected_and_summary(read, output, {"table": settings.table, "skipped": reader.plan.skipped}, [])
    return reader.plan


def _write_empty_table(rows: int, directory: str, table: str) -> list[str]:
    """An empty table is still a table: a reader of `directory` finds its schema, not a missing folder."""
    if rows:
        return []
    return [write_file(f"{directory}/empty.parquet", parquet_bytes(schemas.TABLES[table].empty_table()))]


def build_detect(pipeline: beam.Pipeline, settings: DetectSettings, output: str) -> formats.Plan:
    """Wire the detect pipeline; returns what reading will do (files to parse, skipped, rejected)."""
    reader = _read(settings.read)
    read = pipeline | "Read" >> reader
    spec = settings.spec
    records = read["records"]
    if settings.query:
        records = records | "Query" >> beam.FlatMap(query_batch, settings.query, spec.table)
    windows = records | "Windows" >> WindowFeatures(spec, settings.windowing)
    to_score, rejected, counts = windows, [read["rejected"]], []
    if settings.baseline:
        calibration = pipeline | "Baseline" >> ReadBaseline(settings.baseline, spec)
        to_score = (windows, calibration.windows) | "WithBaseline" >> beam.Flatten()
        rejected.append(calibration[REJECTED_TAG])
        counts.append(calibration[REJECTED_TAG]
                      | "CountBaselineRejected" >> beam.Map(lambda _: ("baseline_rejected", 1)))
    scores = to_score | "Score" >> ScoreEndpoints(settings.detector, settings.train_until_us)
    judged = scores | "Verdicts" >> JudgeWindows(settings.verdict, settings.detector.features, windows,
                                                 _hunt_marks(records, settings))
    found = judged[REPORTED_TAG]

    shards = settings.shards
    (scores, found, judged[VERDICTS_TAG], windows) | "WriteResults" >> WriteSortedFolders([
        SortedFolder(f"{output}/scores", schemas.SCORES, SCORE_ORDER, shards, "key"),
        SortedFolder(f"{output}/anomalies", schemas.ANOMALIES, SCORE_ORDER, shards, "key"),
        SortedFolder(f"{output}/verdicts", schemas.VERDICTS, VERDICT_ORDER, shards, "key"),
        SortedFolder(f"{output}/features", features.feature_schema(spec.table), SCORE_ORDER[:4], shards, "key"),
    ])
    counts += [
        _tallied(windows, "Windows", lambda table: [("windows", table.num_rows)]),
        _tallied(found, "Anomalies", lambda table: [("anomalies", table.num_rows)]),
        _tallied(scores, "Scores", _score_counts),
        count_untimed(read["records"], spec),
        judged[COUNTS_TAG],
    ]
    extra = {"table": spec.table, "key": spec.key, "window_seconds": spec.window_us / 1e6,
             "detector": settings.detector.name, "calibration_windows": settings.detector.new_detector().n_init,
             "skipped": reader.plan.skipped, "alarm_rate": settings.verdict.alarm_rate,
             "min_records": settings.verdict.min_records, "allow_entries": len(settings.verdict.allow.entries),
             "hunts": sorted(settings.hunts)}
    _write_rejected_and_summary(read, output, extra, counts,
                                ("windows", "anomalies", "untimed", "scores", "calibrating", "baseline_rejected",
                                 "verdicts", "alarms", "allowed", "hunt_alarms",
                                 *(f"unjudged_{r}" for r in UNJUDGED_REASONS)),
                                rejected)
    return reader.plan


def _hunt_marks(records, settings: DetectSettings):
    """(key, window start, Mark) of every endpoint-window holding a hunt finding's records; None without hunts.

    The hunts run with their documented defaults (a UTC-day horizon) and the run's allow-list."""
    if not settings.hunts:
        return None
    found = records | "Hunts" >> HuntFindings(settings.spec.table, settings.hunts, HuntConfig(),
                                              settings.verdict.allow)
    return records | "HuntMarks" >> beam.FlatMap(finding_marks, settings.spec, beam.pvalue.AsList(found["findings"]))


def _tallied(elements, name: str, to_counts):
    """(name, n) pairs for the summary, tallied where they arise: progress reports see them live."""
    return elements | f"Count{name}" >> beam.FlatMap(to_counts) | f"Tally{name}" >> TallyCounts()


def _score_counts(scores: pa.Table) -> list[tuple[str, int]]:
    calibrating = pc.sum(pc.cast(pc.equal(scores.column("status"), Status.CALIBRATING), pa.int64())).as_py() or 0
    return [("scores", scores.num_rows), ("calibrating", calibrating)]


def _read(settings: ReadSettings) -> ReadRecords:
    return ReadRecords(settings.inputs, settings.table, settings.format, settings.days, settings.parser_options)


def _write_rejected_and_summary(read, output: str, extra: Mapping[str, Any], counts: list,
                                zero_counts: Sequence[str] = (), rejected: Sequence = ()) -> None:
    all_rejected = tuple(rejected) or (read["rejected"],)
    (
        all_rejected
        | "AllRejected" >> beam.Flatten()
        | "WriteRejected" >> WriteSortedParquet(f"{output}/rejected", schemas.REJECTED, REJECTED_ORDER)
    )
    pipeline = read["counts"].pipeline
    zeros = pipeline | "ZeroCounts" >> beam.Create([(name, 0) for name in zero_counts])
    (
        (read["counts"], zeros, *counts)
        | "AllCounts" >> beam.Flatten()
        | "Summary" >> WriteSummary(f"{output}/summary.json", extra)
    )


def baseline_files(directory: str) -> list[str]:
    """The Parquet files of a features/ folder, on any Beam filesystem, sorted."""
    matched = FileSystems.match([f"{directory.rstrip('/')}/*.parquet"])[0].metadata_list
    return sorted(meta.path for meta in matched)


def _baseline_file(path: str, spec: WindowSpec):
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(pa.BufferReader(handle.read()))
    except (OSError, pa.ArrowException) as error:
        items = [Rejected(path, 0, f"cannot read as Parquet: {error}", source_tool=baseline.SOURCE_TOOL)]
    else:
        items = baseline.baseline_windows(table, spec, path)
    windows = []
    for item in items:
        if isinstance(item, Rejected):
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, item.as_row())
        else:
            windows.append(item)
    if windows:
        yield features.table_of_windows(windows, spec.table)


@dataclass
class ReadBaseline(beam.PTransform):
    """Features of an earlier run (its `features/` folder) → tables of training windows, and rejected rows."""

    directory: str
    spec: WindowSpec

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(baseline_files(self.directory))
            | "AsTraining" >> beam.FlatMap(_baseline_file, self.spec).with_outputs(REJECTED_TAG, main="windows")
        )
