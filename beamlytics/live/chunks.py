"""Chunks of complete log lines from a live source, and their parsing into table batches.

A chunk is what one poll of one source delivered: complete lines of one Zeek log kind, with
the position each line has in its source (a line number in a file, an offset in a Kafka
partition), so that every row and every dead letter names where it came from.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from beamlytics.parsers import zeek
from beamlytics.parsers.base import Batch, Read, Rejected


@dataclass(frozen=True)
class Chunk:
    source: str  # file path, or kafka://topic/partition
    kind: str  # Zeek log kind: dns, http
    data: bytes  # complete lines, each ending in b"\n"
    positions: tuple[int, ...]  # the source position of each line of `data`
    header: bytes = b""  # a TSV log's `#` header lines, which say what the columns of `data` are

    @property
    def lines(self) -> int:
        return len(self.positions)


def parse_chunk(chunk: Chunk, table: str) -> Iterator[Batch | Rejected | Read]:
    """The parser's items for `chunk`, positions in the source's terms (line number, Kafka offset)."""
    header_lines = chunk.header.count(b"\n")
    positions = np.asarray((0,) * header_lines + chunk.positions, dtype=np.int64)

    def source_position(line: int) -> int:
        return int(positions[line - 1]) if 0 < line <= len(positions) else 0

    for item in zeek.parse(chunk.source, io.BytesIO(chunk.header + chunk.data), chunk.kind, table):
        if isinstance(item, Batch):
            records = item.records
            column = records.schema.get_field_index("source_pos")
            lines = records.column(column).to_numpy(zero_copy_only=False)
            moved = pa.array(positions[lines - 1], pa.int64())
            yield Batch(item.table, records.set_column(column, records.schema.field(column), moved), item.units)
        elif isinstance(item, Rejected):
            yield Rejected(item.source, source_position(item.position), item.reason, item.excerpt, item.source_tool,
                           item.units)
        else:
            yield Read(item.source, max(item.units - header_lines, 0))
