"""Read and normalize: files of any supported tool → Arrow batches of one table.

Elements are `pyarrow.RecordBatch`es of up to `batch_rows` records, never one element per
record: a Beam element costs far more than an Arrow row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamlytics import schemas
from beamlytics.inputs import DayRange, file_size, unreadable_reason
from beamlytics.parsers import formats, limits, splits
from beamlytics.parsers.base import BATCH_ROWS, Read, Rejected
from beamlytics.transforms.progress import TallyCounts

REJECTED_TAG = "rejected"
RANGE_REJECTED_TAG = "range_rejected"  # a range's dead letters, ((file, reason kind), Rejected): limited per file later
COUNTS_TAG = "counts"
REJECTED_BY_REASON = "rejected_by_reason/"  # count names that WriteSummary gathers into one mapping


def open_stream(path: str) -> BinaryIO:
    """Raw bytes of a file on any Beam filesystem; decompression is decided by content later."""
    reason = unreadable_reason(path)
    if reason:
        raise OSError(reason)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def in_day_range(batch: pa.RecordBatch, table: str, days: DayRange) -> pa.RecordBatch:
    """Records whose event time falls in `days`; records without a time are kept."""
    start, end = days.micros()
    times = pc.cast(batch.column(schemas.EVENT_TIME_COLUMN[table]), pa.int64())
    keep = pc.is_null(times)
    inside = pc.is_valid(times)
    if start is not None:
        inside = pc.and_(inside, pc.greater_equal(times, start))
    if end is not None:
        inside = pc.and_(inside, pc.less(times, end))
    return batch.filter(pc.or_(keep, inside))


class _ParseSource(beam.DoFn):
    def __init__(self, table: str, days: DayRange, batch_rows: int, options: Mapping[str, Any]):
        self.table = table
        self.days = days
        self.batch_rows = batch_rows
        self.options = dict(options)

    def process(self, source):
        units, read = 0, None  # what the parser accounted for, and what its reader says it delivered
        for item in formats.parse_source(source, self.table, open_stream, self.batch_rows, self.options):
            if isinstance(item, Read):
                read = (read or 0) + item.units
                continue
            if isinstance(item, Rejected):
                units += item.units
                if isinstance(source, splits.SourceRange):
                    key = (source.source.path, limits.reason_kind(item.reason))
                    yield beam.pvalue.TaggedOutput(RANGE_REJECTED_TAG, (key, item))
                else:
                    yield from dead_letter_outputs(item)
                continue
            units += item.units
            yield beam.pvalue.TaggedOutput(COUNTS_TAG, ("parsed", item.units))
            records = item.records
            untimed = records.column(schemas.EVENT_TIME_COLUMN[self.table]).null_count
            if untimed:
                yield beam.pvalue.TaggedOutput(COUNTS_TAG, ("records_without_time", untimed))
            if self.days.bounded and records.num_rows:
                kept = in_day_range(records, self.table, self.days)
                yield beam.pvalue.TaggedOutput(COUNTS_TAG, ("out_of_day_range", records.num_rows - kept.num_rows))
                records = kept
            if records.num_rows:
                yield beam.pvalue.TaggedOutput(COUNTS_TAG, ("records", records.num_rows))
                yield records
        if read is None:  # a reader that does not count (or a parser that failed): nothing to check against
            yield beam.pvalue.TaggedOutput(COUNTS_TAG, ("sources_without_read_count", 1))
            read = units
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, ("read", read))
        if not isinstance(source, splits.SourceRange) or source.range.index == 0:  # a file counts once
            yield beam.pvalue.TaggedOutput(COUNTS_TAG, ("files_read", 1))  # progress: this file is done


def dead_letter_outputs(rejected: Rejected):
    """A dead letter's row and its summary counts, as tagged outputs."""
    yield beam.pvalue.TaggedOutput(REJECTED_TAG, rejected.as_row())
    for name, count in rejection_counts(rejected):
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, (name, count))


def file_dead_letters(kind_letters, per_reason: int):
    """The dead letters of one reason kind of a file read in ranges, limited per file (`limits.merge_ranges`)."""
    _, letters = kind_letters
    for rejected in limits.merge_ranges(letters, per_reason):
        yield from dead_letter_outputs(rejected)


def indexed_range(source_piece, max_line_bytes: int):
    """(path, range index, its `splits.RangeIndex`)."""
    source, piece = source_piece
    return piece.path, piece.index, splits.index_of(source, piece, open_stream, max_line_bytes)


def ranges_with_starts(source_pieces, indexes, max_line_bytes: int) -> list[splits.SourceRange]:
    """A split source's ranges, each with where it starts, from the indexes of every split file."""
    source, pieces = source_pieces
    own = {index: found for path, index, found in indexes if path == source.path}
    return splits.starts_of(source, pieces, own, open_stream, max_line_bytes)


def rejection_counts(rejected: Rejected) -> list[tuple[str, int]]:
    """The summary counts of one dead letter: units rejected, by reason kind, and the row itself."""
    counts = [("dead_letters", 1), ("rejected", rejected.units),
              (f"{REJECTED_BY_REASON}{limits.reason_kind(rejected.reason)}", rejected.units)]
    if rejected.units == 0:
        counts.append(("rejected_files", 1))
    return counts


@dataclass
class ReadRecords(beam.PTransform):
    """Files → `{"records": RecordBatches, "rejected": dead-letter rows, "counts": (name, n)}`.

    `paths` are files (see `inputs.expand_inputs` for folders, globs and day ranges).
    Every file is sniffed once while the pipeline is built, so `format="auto"` mixes tools
    freely; files of another table are skipped, unreadable ones are dead-lettered. After
    expansion `plan` holds what was decided, for the summary to name the skipped files.
    """

    paths: Sequence[str]
    table: str
    format: str = "auto"
    days: DayRange = DayRange()
    parser_options: Mapping[str, Any] = field(default_factory=dict)
    batch_rows: int = BATCH_ROWS

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        plan = self.plan = formats.plan(list(self.paths), self.table, self.format, open_stream)
        whole, split = [], []
        split_bytes = int(self.parser_options.get("split_bytes") or splits.SPLIT_BYTES)
        for source in plan.sources:
            pieces = (splits.splits_into(source, open_stream, file_size(source.path), split_bytes)
                      if isinstance(source, formats.Source) else [])
            if pieces:
                split.append((source, pieces))
            else:
                whole.append(source)
        sources = pbegin | "Sources" >> beam.Create(whole)
        if split:  # wired only when a file is big enough: small runs keep their few stages
            sources = (sources, self._ranges(pbegin, split)) | "WithRanges" >> beam.Flatten()
        parsed = (
            sources
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(_ParseSource(self.table, self.days, self.batch_rows, self.parser_options))
            .with_output_types(pa.RecordBatch)  # sized by `coders.ArrowElementCoder`, not pickled to be sized
            .with_outputs(REJECTED_TAG, COUNTS_TAG, RANGE_REJECTED_TAG, main="records")
        )
        parse_counts, parse_rejected = [parsed[COUNTS_TAG]], [parsed[REJECTED_TAG]]
        if split:
            per_reason = int(self.parser_options.get("dead_letters_per_reason") or limits.DEAD_LETTERS_PER_REASON)
            per_file = (
                parsed[RANGE_REJECTED_TAG]
                | "PerFileKind" >> beam.GroupByKey()
                | "LimitPerFile" >> beam.FlatMap(file_dead_letters, per_reason).with_outputs(REJECTED_TAG, COUNTS_TAG)
            )
            parse_counts.append(per_file[COUNTS_TAG])
            parse_rejected.append(per_file[REJECTED_TAG])
        unreadable = pbegin | "Unreadable" >> beam.Create([item.as_row() for item in plan.rejected])
        planning_counts = [("files", len(plan.sources)), ("skipped_files", len(plan.skipped)), ("parsed", 0),
                           ("records", 0), ("read", 0), ("rejected", 0), ("dead_letters", 0),
                           ("records_without_time", 0), ("files_read", 0)]
        planning_counts += [pair for item in plan.rejected for pair in rejection_counts(item)]
        if split:
            parse_counts = [parse_counts | "ParseCounts" >> beam.Flatten()]
        counts = (
            parse_counts[0] | "Progress" >> TallyCounts(),  # here, not after the Flatten: live while parsing
            pbegin | "PlanCounts" >> beam.Create(planning_counts),
        ) | "AllCounts" >> beam.Flatten()
        rejected = (*parse_rejected, unreadable) | "AllRejected" >> beam.Flatten()
        return {"records": parsed.records, "rejected": rejected, "counts": counts}

    def _ranges(self, pbegin, split: list):
        """The ranges of the big files, each with its start: ranges are indexed in parallel, then started."""
        max_line_bytes = int(self.parser_options.get("max_line_bytes") or splits.MAX_LINE_BYTES)
        indexes = (
            pbegin
            | "Ranges" >> beam.Create([(source, piece) for source, pieces in split for piece in pieces])
            | "Index" >> beam.Map(indexed_range, max_line_bytes)
        )
        return (
            pbegin
            | "SplitFiles" >> beam.Create(split)
            | "Starts" >> beam.FlatMap(ranges_with_starts, beam.pvalue.AsList(indexes), max_line_bytes)
        )

