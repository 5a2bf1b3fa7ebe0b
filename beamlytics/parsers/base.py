"""The contract every parser keeps, and the pieces they share.

Each input format is one module in this package (zeek, squid, tstat, argus, suricata, bind, pcap) with:

    FORMAT: str                          # "zeek", "squid", ...
    TABLES: dict[str, frozenset[str]]    # log kind -> tables that kind feeds
    sniff(name: str, head: bytes) -> str | None
        # the log kind ("dns", "access", "log_tcp_complete", "pcap", ...) when `head` (the
        # first 64 KiB, decompressed) of the file called `name` (base name) is this format
    parse(source: str, stream: BinaryIO, kind: str, table: str,
          batch_rows: int = BATCH_ROWS, options: Mapping[str, Any] | None = None
          ) -> Iterator[Batch | Rejected]

`parse` is a generator that reads one input (an already decompressed binary stream; `source` names it for
provenance), yields `Batch`es of `schemas.TABLES[table]` rows, and yields a `Rejected` for
every line, packet or rest-of-file it cannot read. It never raises for bad input. Each input
unit (a data line, a packet, a JSON record) is accounted for exactly once: in some
`Batch.units` if it was read fine (whether or not it produced a row of `table`), or in the
`units` of a `Rejected` (1 for a bad line or packet; 0 for a whole-file or rest-of-stream
rejection, which stands for units the reader never delivered).

Separately, the low-level reader (line blocks, the capture reader) counts the units it
delivered and the parser yields that count as a `Read` once, last. The pipeline checks
`read == parsed + rejected units` against it: a parser that drops or double-counts a unit
shows up in the summary instead of vanishing.

`formats.parse_source` wraps every parser: it re-checks the file's kind, validates each
record (`validate`: time range, addresses, canonical address text) and lists at most a
fixed number of dead letters per reason kind and file (`limits`). Options the line
readers and that wrapper take: `max_line_bytes`, `max_decompression_ratio`, `time_range`
("FROM..TO"), `dead_letters_per_reason`; BIND also takes `year` and `timezone`.

Parsers import no Beam, so unit tests and other tools can call them directly.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Union

import pyarrow as pa

from beamlytics import schemas

BATCH_ROWS = 10_000
# What a damaged compressed stream raises part-way through (zlib.error is not an OSError).
STREAM_ERRORS = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error)
EXCERPT_CHARS = 200
HEAD_BYTES = 65536  # what the sniffers see of a file
HEAD_STEP_BYTES = 4096


@dataclass(frozen=True)
class Batch:
    table: str
    records: pa.RecordBatch
    units: int  # input lines/packets consumed that were read fine, with or without a row


@dataclass(frozen=True)
class Rejected:
    source: str
    position: int  # 1-based line or packet number; 0 when the whole file is unreadable
    reason: str
    excerpt: str = ""
    source_tool: str = ""
    units: int = 1  # input units this dead letter stands for (0: whole file, rest of a stream)

    def as_row(self) -> dict[str, Any]:
        return {
            "source_tool": self.source_tool,
            "source_file": self.source,
            "position": self.position,
            "reason": self.reason,
            "excerpt": self.excerpt,
        }


@dataclass(frozen=True)
class Read:
    """How many input units the reader itself delivered from `source`: the parser's last item."""

    source: str
    units: int


ParseItem = Union[Batch, Rejected, Read]


def excerpt(raw: bytes | str) -> str:
    """A short, printable piece of a bad input unit for the dead-letter record."""
    if isinstance(raw, bytes):
        raw = raw[: EXCERPT_CHARS * 4].decode("utf-8", "backslashreplace")
    return raw[:EXCERPT_CHARS]


class RowBuffer:
    """Collects rows column by column and hands out full `Batch`es.

    Parsers append plain Python values per column (timestamps as integer microseconds
    since the epoch) and call `add_units` for every input unit they consumed; `take`
    returns a batch when `batch_rows` rows are waiting, `flush` returns what is left.
    """

    def __init__(self, table: str, source_tool: str, source_file: str, batch_rows: int = BATCH_ROWS):
        self.table = table
        self.schema = schemas.TABLES[table]
        self.batch_rows = batch_rows
        self.source_tool = source_tool
        self.source_file = source_file
        self._columns: dict[str, list] = {name: [] for name in self.schema.names}
        self._rows = 0
        self._units = 0

    def append(self, position: int, **values: Any) -> None:
        columns = self._columns
        for name, column in columns.items():
            column.append(values.get(name))
        columns["source_tool"][-1] = self.source_tool
        columns["source_file"][-1] = self.source_file
        columns["source_pos"][-1] = position
        self._rows += 1

    def add_units(self, count: int = 1) -> None:
        self._units += count

    def take(self) -> Batch | None:
        return self.flush() if self._rows >= self.batch_rows else None

    def flush(self) -> Batch | None:
        if self._rows == 0 and self._units == 0:
            return None
        batch = schemas.batch_from_columns(self.schema, self._columns, self._rows)
        result = Batch(self.table, batch, self._units)
        self._columns = {name: [] for name in self.schema.names}
        self._rows = 0
        self._units = 0
        return result


_MAGIC = (
    (b"\x1f\x8b", lambda stream: gzip.GzipFile(fileobj=stream)),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


def decompressed(stream: BinaryIO) -> BinaryIO:
    """Wrap `stream` in the decompressor its first bytes call for (gzip, bzip2, xz).

    Compression is recognised by content, not by name: rotated logs are often
    compressed without a matching suffix. `limits.bounded_decompressed` adds a bomb limit.
    """
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)
    head = buffered.peek(6)[:6]
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            # The decompressor buffers on its own: another buffer on top would swallow the
            # last good bytes of a stream that breaks part-way.
            return opener(buffered)
    return buffered


def open_input(path: str, opener: Callable[[str], BinaryIO] | None = None) -> BinaryIO:
    """Open a local path (or, with `opener`, any filesystem path) decompressed."""
    raw = opener(path) if opener is not None else open(path, "rb")
    return decompressed(raw)


def read_head(stream: BinaryIO, size: int = HEAD_BYTES) -> bytes:
    """First `size` decompressed bytes of a stream, or what could be read before an error.

    Read in small steps: a decompressor that breaks inside one read loses all that read
    would have returned, and the head of a damaged file is what tells its format.
    """
    read = getattr(stream, "read1", None) or stream.read
    chunks, total = [], 0
    try:
        while total < size:
            chunk = read(min(size - total, HEAD_STEP_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except STREAM_ERRORS:
        pass
    return b"".join(chunks)
