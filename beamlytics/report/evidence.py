"""The records behind incidents, kept by the detect pipeline for the report it writes afterwards.

Each incident names its records' peers, names, ports and positions in the inputs. The report used
to parse every input again, on one core in the launcher, to find them; the workers already hold
the parsed records, so each batch's few columns that the tally reads are written once, as
LZ4-compressed Arrow IPC (about a tenth of the parse's CPU time), into a folder of the staging
output. The report reads them back in the inputs' order and removes the folder before the run's
files are listed in its manifest: the finished output holds exactly what it held before.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.ipc as ipc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamlytics import features, schemas

FOLDER = ".beamlytics-evidence"
_WRITE_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


def folder_of(output: str) -> str:
    return f"{output.rstrip('/')}/{FOLDER}"


def columns_for(spec: features.WindowSpec) -> list[str]:
    """The record columns `incidents.tally_records` reads for `spec`'s incidents, in the table's order."""
    key = "query" if spec.key_column == features.DOMAIN_KEY else spec.key_column
    wanted = {key, schemas.EVENT_TIME_COLUMN[spec.table], spec.peer_column, features.NAME_COLUMN[spec.table],
              "s_port", "source_file", "source_pos"}
    if spec.table == "http":
        wanted |= {"user_agent", "c_ip"}  # the run's clients per user agent
    return [name for name in schemas.TABLES[spec.table].names if name in wanted]


def file_name(batch: pa.RecordBatch, input_order: Mapping[str, int]) -> str:
    """A name that sorts batches as the inputs are listed, then by position, and is the same on a retry.

    Two batches never start at the same record of the same file, so the name is unique."""
    source, position = batch.column("source_file")[0].as_py(), batch.column("source_pos")[0].as_py()
    return f"{input_order.get(source, len(input_order)):06d}-{position or 0:020d}.arrow"


def write_batch(batch: pa.RecordBatch, folder: str, columns: Sequence[str],
                input_order: Mapping[str, int]) -> tuple:
    """Keep `batch`'s `columns` in `folder`; nothing goes on down the pipeline."""
    if batch.num_rows:
        kept, sink = batch.select(columns), pa.BufferOutputStream()
        with ipc.new_file(sink, kept.schema, options=_WRITE_OPTIONS) as writer:
            writer.write_batch(kept)
        with FileSystems.create(f"{folder}/{file_name(batch, input_order)}",
                                compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(sink.getvalue().to_pybytes())
    return ()


def kept_files(output: str) -> list[str]:
    """The kept batches of a staging output, in the inputs' order; none in a finished or older output."""
    matched = FileSystems.match([f"{folder_of(output)}/*.arrow"])[0].metadata_list
    return sorted(meta.path for meta in matched)


def batches(files: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The kept records, one file in memory at a time."""
    for path in files:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            reader = ipc.open_file(pa.BufferReader(handle.read()))
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)


def remove(output: str) -> None:
    """Remove the kept records: they were this run's scratch, not one of its outputs."""
    folder = folder_of(output)
    if "://" in folder:  # object stores have no folders: each object goes
        files = kept_files(output)
        if files:
            FileSystems.delete(files)
    elif FileSystems.exists(folder):
        # The folder at once: Beam deletes a list of files by matching each as a pattern (0.25 s at 4 M records).
        FileSystems.delete([folder])
