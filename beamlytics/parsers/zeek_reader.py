"""Reading Zeek logs (ASCII TSV and JSON) into typed Arrow columns, in blocks.

The reader hands whole blocks of data lines to Arrow's C++ CSV / JSON readers and converts
the columns with `pyarrow.compute`, so a clean log never goes through Python line by line.
When Arrow refuses a block, a second, lenient read skips the lines with the wrong number
of fields and values that do not parse are found column by column; what even that cannot
place (broken JSON, bytes that are not UTF-8) is found by halving the block until the bad
lines stand alone. Each bad line becomes a `Rejected` with its exact line number, and the
clean rest keeps the fast path. How columns become canonical values: `zeek_columns`.
"""

from __future__ import annotations

import io
import itertools
import json
import lzma
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from beamlytics.parsers.base import Read, Rejected, excerpt
from beamlytics.parsers.zeek_columns import (
    Bad,
    arrow_type,
    json_column,
    text_column,
    unescape_bytes,
    unescape_text,
    value_kind,
)

SOURCE_TOOL = "zeek"

# Arrow parses a block on both cores; bigger blocks amortise the per-call overhead, smaller
# ones bound how much a bad line sends down the slow path.
BLOCK_BYTES = 8 << 20
ARROW_BLOCK_BYTES = 1 << 20
# read1 returns what one underlying read produced, so when a decompressor breaks only that
# last step is lost. Kept at io's default buffer size: a stream wrapped in a BufferedReader
# reads its raw stream in steps of that size, and a larger read1 would be one larger step.
READ_BYTES = io.DEFAULT_BUFFER_SIZE
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)
# Longer lines are rejected (a Zeek line is a record, never megabytes); a parser option raises it.
MAX_LINE_BYTES = 1 << 20

# Every Zeek record has its time; a row without one could not be placed in any window.
REQUIRED_FIELDS = ("ts",)

_TSV_PARSED_TYPES = {"micros": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}


@dataclass(frozen=True)
class Header:
    """The `#` header block of a Zeek TSV log, with Zeek's defaults until a line says otherwise."""

    separator: bytes = b"\t"
    set_separator: str = ","
    empty_field: str = "(empty)"
    unset_field: str = "-"
    path: str | None = None
    fields: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LogStart:
    """Where reading begins: the first line's number, the header in force, whether the log is JSON (None: as it looks)."""

    first_line: int = 1
    header: Header = Header()
    is_json: bool | None = None


@dataclass(frozen=True)
class Records:
    """Clean rows of one stretch of a log: Zeek field name -> canonical column."""

    columns: dict[str, pa.Array]
    positions: pa.Array  # 1-based line numbers, int64

    @property
    def num_rows(self) -> int:
        return len(self.positions)


# ---------------------------------------------------------------------------------------
# Header lines


def apply_header_line(header: Header, line: bytes) -> Header:
    """The header after one `#` line; `#separator` starts a new header block."""
    line = line.rstrip(b"\r\n")
    if line.startswith(b"#separator "):
        return Header(separator=unescape_bytes(line[len(b"#separator ") :]))
    key, _, value = line[1:].partition(header.separator)
    if key in (b"fields", b"types"):
        names = tuple(part.decode("utf-8", "backslashreplace") for part in value.split(header.separator))
        # A new #fields line starts a new layout: types of the old one no longer apply.
        return replace(header, fields=names, types=None) if key == b"fields" else replace(header, types=names)
    if key in (b"set_separator", b"empty_field", b"unset_field", b"path"):
        return replace(header, **{key.decode(): unescape_text(value.decode("utf-8", "backslashreplace"))})
    return header  # #open, #close, comments: not data and nothing to configure


# ---------------------------------------------------------------------------------------
# The byte stream, as blocks of whole lines


@dataclass(frozen=True)
class LineRun:
    data: bytes | bytearray  # whole lines, each ending in b"\n"
    first_line: int
    lines: int
    is_header: bool  # one `#` line, or a run of data lines


def line_runs(
    source: str, stream: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES, first_line: int = 1
) -> Iterator[LineRun | Rejected]:
    """Split a stream into `#` lines and runs of data lines, with their line numbers (the first is `first_line`).

    If the stream breaks (corrupt or truncated compression), the whole lines read before
    the damage are still yielded, then one `Rejected` for the rest of the file.
    """
    for block in _line_blocks(source, stream, max_line_bytes, first_line):
        if isinstance(block, Rejected):
            yield block
        else:
            yield from _split_header_lines(block)


def _line_blocks(source: str, stream: BinaryIO, max_line_bytes: int, first_line: int) -> Iterator[LineRun | Rejected]:
    """Blocks of about BLOCK_BYTES of whole lines (as data runs, `#` lines not yet split off).

    A line that outgrows `max_line_bytes` while it is carried to the next block is rejected
    and skipped to its newline: one endless line must not hold the memory or end the file.
    """
    readinto = getattr(stream, "readinto1", None) or stream.readinto
    tail, line = b"", first_line  # the unfinished line carried into the next block
    skipping = False  # inside a line already rejected as too long
    while True:
        block, ended, error = _fill_block(readinto, tail)
        if skipping:
            newline = block.find(b"\n")
            if newline < 0 and not ended and error is None:
                continue
            del block[: newline + 1 if newline >= 0 else len(block)]
            skipping, line = False, line + 1
        if ended and error is None:
            if block:
                block += b"" if block.endswith(b"\n") else b"\n"  # the last line may lack its newline
                yield LineRun(block, line, count_lines(block), is_header=False)
            return
        cut = block.rfind(b"\n") + 1
        tail = bytes(block[cut:])  # all of it when one line outgrows a block: read on
        if cut:
            del block[cut:]
            run = LineRun(block, line, count_lines(block), is_header=False)
            yield run
            line += run.lines
        if error is not None:
            reason = f"input unreadable from line {line} on: {type(error).__name__}: {error}"
            yield Rejected(source, line, reason, excerpt(tail), SOURCE_TOOL, units=0)
            return
        if len(tail) > max_line_bytes:
            reason = f"line longer than {max_line_bytes} bytes: skipped to its end"
            yield Rejected(source, line, reason, excerpt(tail), SOURCE_TOOL)
            tail, skipping = b"", True


def _fill_block(
    readinto: Callable[[memoryview], int | None], tail: bytes
) -> tuple[bytearray, bool, BaseException | None]:
    """`tail` and then up to BLOCK_BYTES from the stream, read in place (no piece copied twice).

    Returns the bytes, whether the stream ended before the block was full, and the error
    that ended it, if any.
    """
    block = bytearray(len(tail) + BLOCK_BYTES)
    block[: len(tail)] = tail
    filled, error, size = len(tail), None, len(block)
    with memoryview(block) as view:
        try:
            while filled < size:
                count = readinto(view[filled : filled + READ_BYTES])
                if not count:
                    break
                filled += count
        except READ_ERRORS as exc:
            # Its traceback would keep a view of `block` alive, and `block` is resized below.
            error = exc.with_traceback(None)
    ended = filled < size
    del block[filled:]
    return block, ended, error


def count_lines(data: bytes) -> int:
    # numpy counts newlines a few times faster than bytes.count
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A))


def _split_header_lines(block: LineRun) -> Iterator[LineRun]:
    data = block.data
    next_header = _next_header_line(data, 0)
    if next_header < 0:
        yield block
        return
    position, line = 0, block.first_line
    while position < len(data):
        if position == next_header:
            end = data.index(b"\n", position) + 1
            yield LineRun(bytes(data[position:end]), line, 1, is_header=True)
            line += 1
            next_header = _next_header_line(data, end)
        elif next_header < 0:
            # The run to the end of the block has the block's remaining lines (no recount);
            # a bytearray drops the lines before it in place, where slicing would copy the rest.
            if isinstance(data, bytearray):
                del data[:position]
            else:
                data = data[position:]
            yield LineRun(data, line, block.first_line + block.lines - line, is_header=False)
            return
        else:
            end = next_header
            run = LineRun(data[position:end], line, count_lines(data[position:end]), is_header=False)
            yield run
            line += run.lines
        position = end


def _next_header_line(data: bytes, start: int) -> int:
    """Offset of the next line starting with `#`, or -1.

    Searching for the single byte is a memchr, many times faster than for b"\\n#"; a `#`
    inside a line (a URI fragment) just costs one more step.
    """
    position = data.find(b"#", start)
    while position > 0 and data[position - 1] != 0x0A:
        position = data.find(b"#", position + 1)
    return position


# ---------------------------------------------------------------------------------------
# Arrow readers, with fallbacks that narrow bad input down to its lines

Explainer = Callable[[bytes], "str | None"]
# Reads a run in one go, skipping bad lines: the table and the 0-based indexes of the lines
# skipped, or None when it cannot tell which lines those were.
Salvager = Callable[[bytes, int], "tuple[pa.Table, list[int]] | None"]


# Which lines of a run could be records at all (a vectorised first look): numpy bools per line.
Screen = Callable[[bytes], np.ndarray]


@dataclass(frozen=True)
class Reader:
    read: Callable[[bytes], pa.Table]  # fast: fails, or miscounts, on any bad line
    explain: Explainer  # why one line is bad, when the reader's own message is not clear
    salvage: Salvager | None = None
    screen: Screen | None = None


@dataclass(frozen=True)
class CleanRows:
    table: pa.Table
    run: LineRun  # the lines the table was read from
    positions: np.ndarray  # the line number of each row (lines skipped as bad are not there)


_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError)


def read_clean(source: str, run: LineRun, reader: Reader, screened: bool = False) -> Iterator[CleanRows | Rejected]:
    """The rows of `run` that Arrow reads, and a `Rejected` for each line it does not.

    A run is clean when the fast read returns exactly one row per line. Otherwise the
    reader's screen sets apart the lines that cannot be records (wrong field count, empty)
    without Python work per good line, so a flood of bad lines costs no memory per line;
    then the salvage read (if any) skips the remaining bad lines in one pass; failing that,
    the run is halved until the bad lines stand alone.
    """
    try:
        table = reader.read(run.data)
        if table.num_rows == run.lines:
            yield CleanRows(table, run, np.arange(run.first_line, run.first_line + run.lines))
            return
        problem = f"reader returned {table.num_rows} rows for {run.lines} lines"
    except _READ_ERRORS as error:
        problem = f"unreadable: {error}"
    if reader.screen is not None and not screened:
        good = reader.screen(run.data)
        if not good.all():
            for piece in _set_apart(source, run, good, reader.explain, problem):
                if isinstance(piece, Rejected):
                    yield piece
                else:
                    yield from read_clean(source, piece, reader, screened=True)
            return
    salvaged = reader.salvage(run.data, run.lines) if reader.salvage is not None else None
    if salvaged is not None:
        table, skipped = salvaged
        lines = run.data.split(b"\n")
        for index in skipped:
            reason = reader.explain(lines[index]) or problem
            yield Rejected(source, run.first_line + index, reason, excerpt(bytes(lines[index])), SOURCE_TOOL)
        kept = np.setdiff1d(np.arange(run.lines), skipped)
        yield CleanRows(table, run, run.first_line + kept)
        return
    if run.lines == 1:
        reason = reader.explain(run.data) or problem
        yield Rejected(source, run.first_line, reason, excerpt(bytes(run.data.rstrip(b"\r\n"))), SOURCE_TOOL)
        return
    half = run.lines // 2
    middle = _nth_line_end(run.data, half)
    yield from read_clean(source, LineRun(run.data[:middle], run.first_line, half, False), reader, True)
    yield from read_clean(
        source, LineRun(run.data[middle:], run.first_line + half, run.lines - half, False), reader, True
    )


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and newline offset of every line of `data` (which ends in a newline)."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A)
    return np.concatenate(([0], ends[:-1] + 1)), ends


def _stretches(mask: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """(start, stop, value) of each stretch of equal values in `mask`."""
    cuts = [0, *(np.flatnonzero(np.diff(mask.astype(np.int8))) + 1).tolist(), len(mask)]
    for start, stop in zip(cuts, cuts[1:]):
        yield start, stop, bool(mask[start])


def _set_apart(
    source: str, run: LineRun, good: np.ndarray, explain: Explainer, problem: str
) -> Iterator[LineRun | Rejected]:
    """Stretches of `good` lines as runs; a `Rejected` for each other line, one for a stretch of empty lines."""
    starts, ends = _line_bounds(run.data)
    for start, stop, is_good in _stretches(good):
        if is_good:
            data = run.data[int(starts[start]) : int(ends[stop - 1]) + 1]
            yield LineRun(data, run.first_line + start, stop - start, is_header=False)
            continue
        empty = starts[start:stop] == ends[start:stop]
        for first, last, is_empty in _stretches(empty):
            position = run.first_line + start + first
            if is_empty:
                count = last - first
                reason = "empty line" if count == 1 else f"empty lines: {count} from here on"
                yield Rejected(source, position, reason, "", SOURCE_TOOL, units=count)
                continue
            for index in range(start + first, start + last):
                line = bytes(run.data[int(starts[index]) : int(ends[index])])
                yield Rejected(source, run.first_line + index, explain(line) or problem, excerpt(line), SOURCE_TOOL)


def _json_screen(data: bytes) -> np.ndarray:
    starts, ends = _line_bounds(data)
    return ends > starts


def _tsv_screen(separator: bytes, fields: int) -> Screen:
    def screen(data: bytes) -> np.ndarray:
        starts, ends = _line_bounds(data)
        separators = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == separator[0])
        counts = np.searchsorted(separators, ends) - np.searchsorted(separators, starts)
        return (counts == fields - 1) & (ends > starts)

    return screen


def _lines_with_stray_cr(data: bytes) -> list[int]:
    """Indexes of lines holding a carriage return other than a CRLF ending."""
    if b"\r" not in data:
        return []
    return [index for index, line in enumerate(data.split(b"\n")[:-1]) if b"\r" in line[:-1]]


def _nth_line_end(data: bytes, count: int) -> int:
    """Offset just past the `count`-th newline of `data`."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    return int(newlines[count - 1]) + 1


def tsv_reader(header: Header, wanted: Mapping[str, str]) -> Reader:
    """Read TSV data lines, materialising only the wanted columns present.

    Fast read: Arrow parses scalars itself (in C++, on all cores): times and intervals as
    float64 seconds, counts as int64, T/F as bool, and the unset marker as null in every
    column. Containers stay text, split later. A column whose `#types` entry is not the
    kind we expect (a script that logs `ts` as a string) is read as text.

    Salvage read, when a run fails: every column as text, on one thread, so that Arrow
    numbers the lines with the wrong number of fields as it skips them. Values that do
    not parse are then found column by column during conversion.
    """
    assert header.fields is not None
    fields = header.fields
    present = [name for name in fields if name in wanted]
    declared = dict(zip(fields, header.types)) if header.types and len(header.types) == len(fields) else {}

    def parsed_type(name: str) -> pa.DataType:
        kind = value_kind(wanted[name])
        if value_kind(declared.get(name, wanted[name])) != kind:
            return pa.string()
        return _TSV_PARSED_TYPES.get(kind, pa.string())

    def options(column_types: Mapping[str, pa.DataType], **parse: Any) -> tuple:
        return (
            pa_csv.ReadOptions(
                column_names=list(fields), use_threads=not parse, block_size=ARROW_BLOCK_BYTES
            ),
            pa_csv.ParseOptions(
                delimiter=header.separator.decode("latin-1"),
                quote_char=False,
                double_quote=False,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,  # an empty line is a bad line, not nothing
                **parse,
            ),
            pa_csv.ConvertOptions(
                column_types=column_types,
                include_columns=present,
                null_values=[header.unset_field],
                true_values=["T"],
                false_values=["F"],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )

    fast = options({name: parsed_type(name) for name in present})

    def read(data: bytes) -> pa.Table:
        return pa_csv.read_csv(pa.py_buffer(data), *fast)

    def salvage(data: bytes, lines: int) -> tuple[pa.Table, list[int]] | None:
        # Arrow ends a row at a lone carriage return too: set such lines aside first, or
        # its rows would no longer be our lines.
        split_by_cr, kept = _lines_with_stray_cr(data), None
        if split_by_cr:
            parts = data.split(b"\n")[:-1]
            kept = np.setdiff1d(np.arange(lines), split_by_cr)
            data = b"".join(parts[index] + b"\n" for index in kept)
        skipped: list[int | None] = []

        def skip(row: Any) -> str:
            skipped.append(row.number)
            return "skip"

        as_text = options({name: pa.string() for name in present}, invalid_row_handler=skip)
        try:
            table = pa_csv.read_csv(pa.py_buffer(data), *as_text)
        except _READ_ERRORS:
            return None
        if None in skipped or table.num_rows + len(skipped) + len(split_by_cr) != lines:
            return None
        indexes = [number - 1 for number in skipped]
        if kept is not None:
            indexes = sorted(split_by_cr + [int(kept[index]) for index in indexes])
        return table, indexes

    return Reader(read, tsv_explainer(header), salvage, _tsv_screen(header.separator, len(fields)))


def tsv_explainer(header: Header) -> Explainer:
    assert header.fields is not None
    expected = len(header.fields)

    def explain(line: bytes) -> str | None:
        body = line.rstrip(b"\r\n")
        if not body:
            return "empty line"
        count = body.count(header.separator) + 1
        if count != expected:
            return f"{count} fields where the #fields header has {expected}"
        if b"\r" in body:
            return "carriage return inside a line"
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"not valid UTF-8: {error}"
        return None

    return explain


def json_reader(data: bytes) -> pa.Table:
    # A block must hold at least one whole line; lines are short, but a single long one is
    # given a block of its own size.
    block_size = ARROW_BLOCK_BYTES if len(data) > ARROW_BLOCK_BYTES else len(data) + 1
    read_options = pa_json.ReadOptions(use_threads=True, block_size=block_size)
    return pa_json.read_json(pa.BufferReader(pa.py_buffer(data)), read_options=read_options)


def json_explainer(line: bytes) -> str | None:
    try:
        value = json.loads(line)
    except ValueError as error:
        return f"not JSON: {error}"
    if not isinstance(value, dict):
        return "not a JSON object"
    return None


JSON_READER = Reader(json_reader, json_explainer, screen=_json_screen)

# ---------------------------------------------------------------------------------------
# Whole logs


def read_log(
    source: str,
    stream: BinaryIO,
    wanted: Mapping[str, str],
    max_line_bytes: int = MAX_LINE_BYTES,
    start: LogStart = LogStart(),
) -> Iterator[Records | Rejected | Read]:
    """Read a Zeek TSV or JSON log: `Records` of the `wanted` fields (name -> Zeek type), and
    a `Rejected` for every line that cannot be read. Every data line ends up in exactly one;
    a `Read` with the number of data lines (TSV) or lines (JSON) delivered comes last.

    A wanted field the log does not have comes out as a column of nulls. A stream that is
    a range of a log (`splits`) gives `start`: its first line's number, the header in force
    there and whether the log is JSON, which the head of the log decided.
    """
    runs = line_runs(source, stream, max_line_bytes, start.first_line)
    first = next(runs, None)
    if first is None:
        yield Read(source, 0)
        return
    is_json = start.is_json
    if is_json is None:
        is_json = isinstance(first, LineRun) and first.data.startswith(b"{")
    delivered = 0

    def counted() -> Iterator[LineRun | Rejected]:
        nonlocal delivered
        for run in itertools.chain([first], runs):
            if isinstance(run, Rejected):
                delivered += run.units  # a line too long is delivered, as a dead letter
            elif is_json or not run.is_header:
                delivered += run.lines
            yield run

    if is_json:
        yield from _read_json_runs(source, counted(), wanted)
    else:
        yield from _read_tsv_runs(source, counted(), wanted, start.header)
    yield Read(source, delivered)


Converter = Callable[[pa.Array, str], "tuple[pa.Array, Bad]"]


def _read_tsv_runs(
    source: str, runs: Iterable[LineRun | Rejected], wanted: Mapping[str, str], header: Header
) -> Iterator[Records | Rejected]:
    reader: Reader | None = None
    for run in runs:
        if isinstance(run, Rejected):
            yield run
        elif run.is_header:
            header = apply_header_line(header, run.data)
            reader = None
        elif header.fields is None or len(header.separator) != 1:
            yield from _reject_each_line(source, run, "data line without a usable #separator/#fields header")
        else:
            reader = reader or tsv_reader(header, wanted)
            # One backslash search (a memchr) spares every string column its escape search.
            escapes = b"\\" in run.data

            def convert(
                raw: pa.Array, zeek_type: str, header: Header = header, escapes: bool = escapes
            ) -> tuple[pa.Array, Bad]:
                return text_column(raw, zeek_type, header.empty_field, header.set_separator, escapes)

            yield from _read_run(source, run, wanted, reader, convert)


def _read_json_runs(
    source: str, runs: Iterable[LineRun | Rejected], wanted: Mapping[str, str]
) -> Iterator[Records | Rejected]:
    for run in runs:
        if isinstance(run, Rejected):
            yield run
        elif run.is_header:
            yield from _reject_each_line(source, run, "not a JSON object")
        else:
            yield from _read_run(source, run, wanted, JSON_READER, json_column)


def _read_run(
    source: str, run: LineRun, wanted: Mapping[str, str], reader: Reader, convert: Converter
) -> Iterator[Records | Rejected]:
    for item in read_clean(source, run, reader):
        if isinstance(item, Rejected):
            yield item
        else:
            yield from _records(source, item, wanted, convert)


def _reject_each_line(source: str, run: LineRun, reason: str) -> Iterator[Rejected]:
    for offset, line in enumerate(run.data.splitlines()):
        yield Rejected(source, run.first_line + offset, reason, excerpt(bytes(line)), SOURCE_TOOL)


def _records(
    source: str, clean: CleanRows, wanted: Mapping[str, str], convert: Converter
) -> Iterator[Records | Rejected]:
    """Convert the wanted columns of a clean table; rows with an unreadable value are rejected."""
    table, rows = clean.table, clean.table.num_rows
    columns: dict[str, pa.Array] = {}
    problems: list[tuple[str, str, pa.Array, pa.Array]] = []  # field, type, raw, bad
    for name, zeek_type in wanted.items():
        if name in table.column_names:
            raw = table.column(name).combine_chunks()
            columns[name], bad = convert(raw, zeek_type)
        else:
            raw, columns[name], bad = pa.nulls(rows), pa.nulls(rows, arrow_type(zeek_type)), None
        if name in REQUIRED_FIELDS and columns[name].null_count:
            bad = columns[name].is_null()  # unset or unreadable alike
        if bad is not None:
            problems.append((name, zeek_type, raw, bad))
    positions = pa.array(clean.positions, pa.int64())
    if problems:
        good = yield from _reject_bad_rows(source, clean, problems)
        columns = {name: values.filter(good) for name, values in columns.items()}
        positions = positions.filter(good)
    if len(positions):
        yield Records(columns, positions)


def _reject_bad_rows(
    source: str, clean: CleanRows, problems: list[tuple[str, str, pa.Array, pa.Array]]
) -> Generator[Rejected, None, pa.Array]:
    """Reject each row with a bad value, naming the first one; returns the mask of good rows."""
    reasons: dict[int, str] = {}
    for name, zeek_type, raw, bad in problems:
        for row in np.flatnonzero(bad.to_numpy(zero_copy_only=False)):
            value = raw[int(row)].as_py()
            reason = (
                f"no value for {name}" if value is None else f"bad {zeek_type} value in {name}: {value!r}"
            )
            reasons.setdefault(int(row), reason)
    lines = clean.run.data.split(b"\n")
    for row in sorted(reasons):
        position = int(clean.positions[row])
        line = lines[position - clean.run.first_line]
        # Arrow reads an empty line as a row of empty values: say what it really was.
        reason = reasons[row] if line.strip() else "empty line"
        yield Rejected(source, position, reason, excerpt(bytes(line)), SOURCE_TOOL)
    good = np.ones(clean.table.num_rows, dtype=bool)
    good[list(reasons)] = False
    return pa.array(good)
