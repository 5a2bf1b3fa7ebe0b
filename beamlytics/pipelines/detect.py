"""The `parse` and `detect` pipelines: wiring of the composite transforms, nothing else."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamlytics import baseline, features, schemas
from beamlytics.detectors.endpoint import DetectorConfig
from beamlytics.detectors.verdict import UNJUDGED_REASONS, VerdictSettings
from beamlytics.features import WindowSpec
from beamlytics.hunts.config import HuntConfig
from beamlytics.hunts.marks import finding_marks
from beamlytics.inputs import DayRange
from beamlytics.parsers import formats
from beamlytics.parsers.base import Rejected
from beamlytics.report import evidence
from beamlytics.transforms.hunt import HuntFindings
from beamlytics.transforms.read import REJECTED_TAG, ReadRecords
from beamlytics.transforms.score import JudgeShards, ShardResult
from beamlytics.transforms.windows import WindowFeatures, count_untimed
from beamlytics.transforms.progress import TallyCounts
from beamlytics.transforms.write import EmptyTableFile, SortedFolder, SummaryFile, WriteBatches, WriteOutputs

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
    _write_rejected_and_summary(read, output, {"table": settings.table, "skipped": reader.plan.skipped}, [],
                                results=[(read["records"], EmptyTableFile(directory, settings.table))])
    return reader.plan


def build_detect(pipeline: beam.Pipeline, settings: DetectSettings, output: str) -> formats.Plan:
    """Wire the detect pipeline; returns what reading will do (files to parse, skipped, rejected)."""
    reader = _read(settings.read)
    read = pipeline | "Read" >> reader
    spec = settings.spec
    records = read["records"]
    # For the incident report after the run: the records as parsed, before --query (as it always counted them).
    records | "KeepEvidence" >> beam.FlatMap(evidence.write_batch, evidence.folder_of(output),
                                             evidence.columns_for(spec),
                                             {path: index for index, path in enumerate(settings.read.inputs)})
    if settings.query:
        # Imported here: duckdb costs 0.2 CPU s to import in every process that unpickles this module's
        # functions (each worker of a multi-process run), and only --query needs it.
        from beamlytics.analytics.sql import query_batch

        records = records | "Query" >> beam.FlatMap(query_batch, settings.query, spec.table)
    # Windows are merged in the output shards: each shard's windows are then one table, scored, judged
    # and written where they were merged.
    windows = records | "Windows" >> WindowFeatures(spec, settings.windowing, settings.shards)
    rejected, counts, calibration = [read["rejected"]], [], None
    if settings.baseline:
        calibration = pipeline | "Baseline" >> ReadBaseline(settings.baseline, spec)
        rejected.append(calibration[REJECTED_TAG])
        counts.append(calibration[REJECTED_TAG]
                      | "CountBaselineRejected" >> beam.Map(lambda _: ("baseline_rejected", 1)))
        calibration = calibration.windows
    results = windows | "Judge" >> JudgeShards(settings.detector, settings.verdict, settings.shards,
                                                settings.train_until_us, calibration,
                                                _hunt_marks(records, settings))
    shards = settings.shards
    folders = [  # in the order of `_write_results`' tables
        SortedFolder(f"{output}/scores", schemas.SCORES, SCORE_ORDER, shards, "key"),
        SortedFolder(f"{output}/anomalies", schemas.ANOMALIES, SCORE_ORDER, shards, "key"),
        SortedFolder(f"{output}/verdicts", schemas.VERDICTS, VERDICT_ORDER, shards, "key"),
        SortedFolder(f"{output}/features", features.feature_schema(spec.table), SCORE_ORDER[:4], shards, "key"),
    ]
    results | "WriteResults" >> beam.FlatMap(_write_results, folders)
    counts += [
        windows | "CountWindows" >> TallyCounts(lambda table: [("windows", table.num_rows)]),
        results | "CountResults" >> TallyCounts(lambda result: result.counts),
        count_untimed(read["records"], spec),
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


def _write_results(result: ShardResult, folders: Sequence[SortedFolder]) -> list[str]:
    tables = ([result.scores], [result.reported], [result.verdicts], list(result.windows))
    return [folder.write_shard(result.shard, shard_tables) for folder, shard_tables in zip(folders, tables)]


def _read(settings: ReadSettings) -> ReadRecords:
    return ReadRecords(settings.inputs, settings.table, settings.format, settings.days, settings.parser_options)


def _write_rejected_and_summary(read, output: str, extra: Mapping[str, Any], counts: list,
                                zero_counts: Sequence[str] = (), rejected: Sequence = (),
                                results: Sequence[tuple[Any, Any]] = ()) -> None:
    """Write rejected/, summary.json and each (collection, output) of `results` in one grouping."""
    all_rejected = tuple(rejected) or (read["rejected"],)
    rejected_rows = all_rejected | "AllRejected" >> beam.Flatten()
    all_counts = (read["counts"], *counts) | "AllCounts" >> beam.Flatten()
    writes = [*results,
              (rejected_rows, SortedFolder(f"{output}/rejected", schemas.REJECTED, REJECTED_ORDER)),
              (all_counts, SummaryFile(f"{output}/summary.json", extra, zero_counts))]
    tuple(collection for collection, _ in writes) | "Write" >> WriteOutputs([where for _, where in writes])


def baseline_files(directory: str) -> list[str]:
    """The Parquet files of a features/ folder, on any Beam filesystem, sorted."""
    matched = FileSystems.match([f"{directory.rstrip('/')}/*.parquet"])[0].metadata_list
    return sorted(meta.path for meta in matched)


def _read_parquet(path: str) -> pa.Table:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return pq.read_table(pa.BufferReader(handle.read()))


def _baseline_file(path: str, spec: WindowSpec):
    windows = []
    for item in baseline.file_windows(functools.partial(_read_parquet, path), spec, path):
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
