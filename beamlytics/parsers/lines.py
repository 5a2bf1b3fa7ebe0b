"""Reading text logs in blocks of lines, shared by the line-based connectors (squid, tstat, bind).

Lines travel as Arrow string arrays a block at a time, so connectors match and convert
them with pyarrow compute kernels instead of Python work per line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.options_catalog import MAX_LINE_BYTES
from beamlytics.parsers.base import STREAM_ERRORS, Batch, Rejected, excerpt

BLOCK_BYTES = 1 << 20
# A read step: a decompressor that breaks part-way loses at most the step it broke in.
READ_BYTES = 64 << 10
OVERSIZED_EXCERPT_BYTES = 800


@dataclass(frozen=True)
class LineBlock:
    first: int  # 1-based number of the first line in `lines`
    lines: pa.Array  # strings, line terminators removed
    error: str | None = None  # set on the last block when the stream broke after `lines`
    oversized: tuple[tuple[int, bytes], ...] = ()  # (line number, first bytes) of lines too long, after `lines`
    oversized_reason: str = ""


@dataclass(frozen=True)
class LineStart:
    """Where a byte range of a line log begins: its first line's number and, for a log whose header
    line names its columns (Tstat), the last such line before the range (None: none yet)."""

    first_line: int = 1
    header: str | None = None


def _split_lines(data: bytes) -> pa.Array:
    """`data` (ending in a newline) as one Arrow string per line, without copying per line."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # Keep the line, mark the bad bytes: a stray byte must not cost the whole block.
        data = data.decode("utf-8", "replace").encode("utf-8")
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    offsets = np.concatenate(([0], ends + 1)).astype(np.int32)
    lines = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    return pc.utf8_rtrim(lines, characters="\r\n")


class LineReader:
    """Blocks of whole lines from a text stream, counting every line it delivers.

    A last line without newline counts. A line longer than `max_line_bytes` is not held:
    it is reported in `LineBlock.oversized` (and counted), and reading resumes after its
    newline. When the stream breaks, the lines before the damage are delivered and the
    last block carries the error.
    """

    def __init__(self, stream: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES, block_bytes: int = BLOCK_BYTES,
                 first_line: int = 1):
        self.stream = stream
        self.first_line = first_line
        self.max_line_bytes = max_line_bytes
        self.block_bytes = block_bytes
        self.delivered = 0  # lines handed out so far, oversized ones included
        self._read = getattr(stream, "read1", None) or stream.read

    def __iter__(self) -> Iterator[LineBlock]:
        number, carry, skipping = self.first_line, b"", None  # skipping: (line number, first bytes) of a line too long
        while True:
            data, ended, error = self._next_data(carry)
            carry = b""
            if skipping is not None:
                newline = data.find(b"\n")
                if newline < 0 and not ended and error is None:
                    continue  # still inside the line too long: drop what was read
                data = data[newline + 1:] if newline >= 0 else b""
                yield self._block(number, None, [skipping])
                number, skipping = number + 1, None
            if ended or error is not None:
                for block in self._blocks(number, data, final=True):
                    number += len(block.lines) + len(block.oversized)
                    yield block
                if error is not None:
                    yield LineBlock(number, pa.array([], pa.string()), f"input unreadable from here on: {error!r}")
                return
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            for block in self._blocks(number, data[:end], final=False):
                number += len(block.lines) + len(block.oversized)
                yield block
            if len(carry) > self.max_line_bytes:
                skipping, carry = (number, carry[:OVERSIZED_EXCERPT_BYTES]), b""

    def _next_data(self, carry: bytes) -> tuple[bytes, bool, BaseException | None]:
        """`carry` and about a block more, read in steps: the bytes, whether the stream ended, its error."""
        chunks, total = [carry], len(carry)
        try:
            while total < self.block_bytes:
                chunk = self._read(READ_BYTES)
                if not chunk:
                    return b"".join(chunks), True, None
                chunks.append(chunk)
                total += len(chunk)
        except STREAM_ERRORS as error:
            return b"".join(chunks), True, error
        return b"".join(chunks), False, None

    def _blocks(self, number: int, data: bytes, final: bool) -> Iterator[LineBlock]:
        """Whole lines of `data` as blocks, with the lines over the limit set apart."""
        if not data:
            return
        if final and not data.endswith(b"\n"):
            data += b"\n"
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        if not len(ends):
            return
        starts = np.concatenate(([0], ends[:-1] + 1))
        too_long = np.flatnonzero(ends - starts > self.max_line_bytes)
        first_line = 0
        for index in too_long.tolist():
            cut = int(starts[index])
            oversized = (number + index, data[cut: cut + OVERSIZED_EXCERPT_BYTES])
            lines = _split_lines(data[int(starts[first_line]):cut]) if index > first_line else None
            yield self._block(number + first_line, lines, [oversized])
            first_line = index + 1
        if first_line < len(ends):
            yield self._block(number + first_line, _split_lines(data[int(starts[first_line]):]), [])

    def _block(self, first: int, lines: pa.Array | None, oversized: list) -> LineBlock:
        lines = pa.array([], pa.string()) if lines is None else lines
        self.delivered += len(lines) + len(oversized)
        reason = f"line longer than {self.max_line_bytes} bytes: skipped to its end" if oversized else ""
        return LineBlock(first, lines, oversized=tuple(oversized), oversized_reason=reason)


def line_reader(stream: BinaryIO, options: Mapping[str, Any] | None = None, start: LineStart = LineStart()
                ) -> LineReader:
    """The `LineReader` for a parser, with the `max_line_bytes` option if given, numbering from `start`."""
    return LineReader(stream, int((options or {}).get("max_line_bytes") or MAX_LINE_BYTES),
                      first_line=start.first_line)


def rejected_lines(block: LineBlock, mask: pa.Array, reason: str, tool: str, source: str) -> list[Rejected]:
    """One `Rejected` per line of `block` where `mask` is true."""
    indices = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    lines = block.lines.take(pa.array(indices)).to_pylist()
    return [Rejected(source, block.first + int(i), reason, excerpt(line), tool) for i, line in zip(indices, lines)]


def broken_stream(block: LineBlock, tool: str, source: str) -> list[Rejected]:
    """The dead letters the reader itself found after `block`'s lines: lines too long, a broken stream."""
    dead = [Rejected(source, position, block.oversized_reason, excerpt(head), tool) for position, head in block.oversized]
    if block.error is not None:
        dead.append(Rejected(source, block.first + len(block.lines), block.error, "", tool, units=0))
    return dead


def blank_mask(lines: pa.Array) -> pa.Array:
    return pc.equal(pc.utf8_trim_whitespace(lines), "")


def null_dash(values: pa.Array) -> pa.Array:
    """Log tools write `-` for "no value": make it null."""
    return pc.if_else(pc.equal(values, "-"), pa.scalar(None, values.type), values)


def epoch_us(seconds_text: pa.Array, scale: float = 1e6) -> pa.Array:
    """Decimal epoch text (seconds, or ms with `scale=1e3`) as integer microseconds."""
    values = pc.cast(seconds_text, pa.float64()).to_numpy(zero_copy_only=False)
    return pa.array(np.round(values * scale).astype(np.int64))


def ip_mask(values: pa.Array) -> pa.Array:
    """True where a string looks like an IPv4 or IPv6 address (not a hostname)."""
    return pc.match_substring_regex(values, r"^(\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.%]*)$")


def zone_offset_us(zone: pa.Array) -> pa.Array:
    """An ISO 8601 zone suffix (`Z`, `+02:00`, `-0130`, or none = UTC) as an offset in us."""
    digits = pc.replace_substring(zone, ":", "")
    signed = pc.match_substring_regex(digits, r"^[+-]\d{4}$")
    padded = pc.if_else(signed, digits, "+0000")
    sign = pc.if_else(pc.starts_with(padded, "-"), -1, 1)
    hours = pc.cast(pc.utf8_slice_codeunits(padded, 1, 3), pa.int64())
    minutes = pc.cast(pc.utf8_slice_codeunits(padded, 3, 5), pa.int64())
    return pc.multiply(pc.multiply(sign, pc.add(pc.multiply(hours, 60), minutes)), 60_000_000)


def batches_of(table: str, columns: Mapping[str, Any], rows: int, units: int, batch_rows: int) -> Iterator[Batch]:
    """`columns` as Batches of at most `batch_rows` rows; the first carries the row-less units."""
    batch = schemas.batch_from_columns(schemas.TABLES[table], columns, rows)
    if rows == 0:
        if units:
            yield Batch(table, batch, units)
        return
    spare = units - rows
    for start in range(0, rows, batch_rows):
        part = batch.slice(start, batch_rows)
        yield Batch(table, part, part.num_rows + (spare if start == 0 else 0))
