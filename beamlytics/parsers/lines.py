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
from beamlytics.parsers.base import STREAM_ERRORS, Batch, Rejected, excerpt

BLOCK_BYTES = 1 << 20
# A "line" longer than this is not text from a logging tool: stop rather than buffer it all.
MAX_LINE_BYTES = 16 << 20


@dataclass(frozen=True)
class LineBlock:
    first: int  # 1-based number of the first line in `lines`
    lines: pa.Array  # strings, line terminators removed
    error: str | None = None  # set on the last block when the stream broke after `lines`


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


def line_blocks(stream: BinaryIO, block_bytes: int = BLOCK_BYTES) -> Iterator[LineBlock]:
    """Read a text stream in blocks of whole lines; a last line without newline counts."""
    number, carry = 1, b""
    while True:
        try:
            chunk = stream.read(block_bytes)
        except STREAM_ERRORS as error:
            yield LineBlock(number, pa.array([], pa.string()), f"input unreadable from here on: {error!r}")
            return
        if not chunk:
            break
        data = carry + chunk
        end = data.rfind(b"\n") + 1
        carry = data[end:]
        if len(carry) > MAX_LINE_BYTES:
            yield LineBlock(number, pa.array([], pa.string()), "line longer than 16 MiB: not a text log")
            return
        if end:
            lines = _split_lines(data[:end])
            yield LineBlock(number, lines)
            number += len(lines)
    if carry:
        yield LineBlock(number, _split_lines(carry + b"\n"))


def rejected_lines(block: LineBlock, mask: pa.Array, reason: str, tool: str, source: str) -> list[Rejected]:
    """One `Rejected` per line of `block` where `mask` is true."""
    indices = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    lines = block.lines.take(pa.array(indices)).to_pylist()
    return [Rejected(source, block.first + int(i), reason, excerpt(line), tool) for i, line in zip(indices, lines)]


def broken_stream(block: LineBlock, tool: str, source: str) -> list[Rejected]:
    """The dead letter for the unreadable rest of a file, if the stream broke."""
    if block.error is None:
        return []
    return [Rejected(source, block.first + len(block.lines), block.error, "", tool)]


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
