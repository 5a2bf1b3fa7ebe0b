"""Outputs that are byte-identical on every run and every runner.

Rows are routed to a fixed number of shards by a stable hash, each shard is sorted on
columns that identify a row, and Parquet is written by pyarrow in one piece: nothing in
the files depends on bundle boundaries, worker count or arrival order.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beamlytics import features, ordering, schemas
from beamlytics.summary import explain

# Default output shards: one per this much input, so no worker writes (or sorts) more than
# a bounded share of a large run, and a small run still gets the single file it always had.
INPUT_BYTES_PER_SHARD = 16 << 20
MAX_DEFAULT_SHARDS = 64


def default_shards(input_bytes: int) -> int:
    """Output files per folder for a run reading `input_bytes`: 1 up to 16 MiB, one more per 16 MiB, at most 64."""
    return max(1, min(MAX_DEFAULT_SHARDS, -(-input_bytes // INPUT_BYTES_PER_SHARD)))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_file(path: str, data: bytes) -> str:
    with FileSystems.create(path) as handle:
        handle.write(data)
    return path


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`schema`'s columns of `table`, in its order, with its field types and flags."""
    return pa.Table.from_arrays([table.column(name) for name in schema.names], schema=schema)


def shard_pieces(element: pa.Table | Mapping[str, Any], schema: pa.Schema, column: str, shards: int):
    """(shard, rows of `element` in it), by a stable hash of `column`: a table is cut and packed, a dict row kept."""
    if not isinstance(element, pa.Table):
        yield features.stable_shard(element[column], shards), element
    elif element.num_rows:
        table = conformed(element, schema)
        for shard, piece in features.split_table(table, features.endpoint_shards(table.column(column), shards)).items():
            yield shard, features.Packed.of(piece)


@dataclass(frozen=True)
class SortedFolder:
    """Where and how `WriteOutputs` writes one collection: `directory/part-SSSSS-of-NNNNN.parquet`.

    Rows go to shards by a stable hash of `shard_column` (default: the first sort column). A sort
    column named `-name` sorts by `name`, largest first.
    """

    directory: str
    schema: pa.Schema
    sort_columns: Sequence[str]
    shards: int = 1
    shard_column: str | None = None

    def pieces(self, element, output: int):
        """((output, shard), rows of `element` in that shard)."""
        for shard, piece in shard_pieces(element, self.schema, self.shard_column or self.sort_columns[0], self.shards):
            yield (output, shard), piece

    def write_shard(self, shard: int, elements) -> str:
        """The shard's file, of `elements`: packed pieces, Arrow tables or dict rows, in any order."""
        elements = [element for element in elements if element is not None]
        rows = [row for row in elements if isinstance(row, Mapping)]
        table = pa.concat_tables([*(element.table() if isinstance(element, features.Packed)
                                    else conformed(element, self.schema)
                                    for element in elements if not isinstance(element, Mapping)),
                                  pa.Table.from_pylist(rows, schema=self.schema)])
        if table.num_rows:
            table = ordering.sorted_by(table, [
                (name[1:], "descending") if name.startswith("-") else (name, "ascending")
                for name in self.sort_columns])
        path = f"{self.directory}/part-{shard:05d}-of-{self.shards:05d}.parquet"
        return write_file(path, parquet_bytes(table.combine_chunks()))


@dataclass(frozen=True)
class SummaryFile:
    """`WriteOutputs`' summary.json at `path`: the (name, count) pairs summed, with `extra` fields and `notes`.

    Every name in `zero_counts` is in the file, 0 when nothing counted it. `read` (what the readers
    delivered) should equal `parsed + rejected` (units accounted for): `unaccounted` is the difference,
    non-zero only when a parser lost or double counted units. Counts named `rejected_by_reason/KIND`
    become one `rejected_by_reason` mapping. `notes` says why the result is empty, when it is (see
    `beamlytics.summary.explain`).
    """

    path: str
    extra: Mapping[str, Any]
    zero_counts: Sequence[str] = ()
    shards = 1

    def pieces(self, pair: tuple[str, int], output: int):
        yield (output, 0), pair

    def write_shard(self, shard: int, pairs) -> str:
        totals = dict.fromkeys(self.zero_counts, 0)
        for pair in pairs:
            if pair is not None:
                totals[pair[0]] = totals.get(pair[0], 0) + pair[1]
        summary = {**self.extra, **{name: count for name, count in totals.items() if "/" not in name}}
        summary["rejected_by_reason"] = {name.split("/", 1)[1]: count for name, count in totals.items()
                                         if name.startswith("rejected_by_reason/")}
        if "read" in summary:
            summary["unaccounted"] = summary["read"] - summary.get("parsed", 0) - summary.get("rejected", 0)
        summary["notes"] = explain(summary)
        return write_file(self.path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@dataclass(frozen=True)
class EmptyTableFile:
    """`WriteOutputs`' `directory/empty.parquet`, written only when the record batches it sees hold no rows:
    an empty table is still a table, and a reader of `directory` finds its schema, not a missing folder."""

    directory: str
    table: str
    shards = 1

    def pieces(self, batch: pa.RecordBatch, output: int):
        yield (output, 0), batch.num_rows

    def write_shard(self, shard: int, row_counts) -> str | None:
        if any(row_counts):
            return None
        return write_file(f"{self.directory}/empty.parquet", parquet_bytes(schemas.TABLES[self.table].empty_table()))


@dataclass
class WriteOutputs(beam.PTransform):
    """A tuple of collections, the i-th written by `outputs[i]` (a `SortedFolder`, `SummaryFile` or
    `EmptyTableFile`), every shard of every output written even when its collection is empty.

    One grouping for all outputs: each grouping is a stage barrier and a shuffle on every runner (and
    every transform costs start-up: Beam inspects each DoFn's signature many times), and the files
    do not depend on how they were grouped."""

    outputs: Sequence[SortedFolder | SummaryFile | EmptyTableFile]

    def __post_init__(self):
        super().__init__()

    def expand(self, collections):
        outputs = tuple(self.outputs)
        keyed = [elements | f"Shard{index}" >> beam.FlatMap(output.pieces, index)
                 for index, (elements, output) in enumerate(zip(collections, outputs))]
        # Not reshuffled: a handful of placeholders, and a reshuffle would add five stages.
        every_shard = collections[0].pipeline | "EveryShard" >> beam.Create(
            [((index, shard), None) for index, output in enumerate(outputs) for shard in range(output.shards)],
            reshuffle=False)
        return (
            (*keyed, every_shard)
            | "Flatten" >> beam.Flatten()
            | "Gather" >> beam.GroupByKey()
            | "Write" >> beam.MapTuple(lambda where, elements: outputs[where[0]].write_shard(where[1], elements))
        )


@dataclass
class WriteSortedParquet(beam.PTransform):
    """Arrow tables (or dict rows) → one `SortedFolder`."""

    directory: str
    schema: pa.Schema
    sort_columns: Sequence[str]
    shards: int = 1
    shard_column: str | None = None

    def __post_init__(self):
        super().__init__()

    def expand(self, rows):
        folder = SortedFolder(self.directory, self.schema, self.sort_columns, self.shards, self.shard_column)
        return (rows,) | "Folder" >> WriteOutputs([folder])


def batch_file_name(batch: pa.RecordBatch) -> str:
    """A name that is the same on every run: which file the rows came from, and where."""
    positions = batch.column("source_pos")
    identity = f"{batch.column('source_file')[0]}|{positions[0]}|{positions[-1]}|{batch.num_rows}"
    return hashlib.sha1(identity.encode("utf-8")).hexdigest()[:20] + ".parquet"


@dataclass
class WriteBatches(beam.PTransform):
    """RecordBatches → one Parquet file each under `directory`, for large record tables."""

    directory: str

    def __post_init__(self):
        super().__init__()

    def expand(self, batches):
        directory = self.directory
        return batches | "WriteBatch" >> beam.Map(
            lambda batch: write_file(f"{directory}/{batch_file_name(batch)}",
                                     parquet_bytes(pa.Table.from_batches([batch]))))


@dataclass
class WriteSummary(beam.PTransform):
    """(name, count) pairs → `path` as JSON, with `extra` fields and `notes` (see `SummaryFile`)."""

    path: str
    extra: Mapping[str, Any]

    def __post_init__(self):
        super().__init__()

    def expand(self, counts):
        return (counts,) | "Summary" >> WriteOutputs([SummaryFile(self.path, dict(self.extra))])
