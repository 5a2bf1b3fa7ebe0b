"""Big line files read as byte ranges, in parallel, with the same records and dead letters as one read.

A range `[start, end)` owns the lines that *start* in it: its reader skips to the first line
start at or after `start` and reads on past `end` to finish its last line. Line numbers stay
file-absolute and a Zeek or Tstat range reads under the header in force where it begins, so a
range needs what came before it. That is a cheap first pass per range (`index_range`,
`index_lines`: how many lines it holds and the `#` lines that change the header), folded over
the earlier ranges by `range_start` / `line_start`; no range ever reads the bytes of another.

Zeek, Squid, BIND and Tstat's flow logs split. Tstat's DNS and HTTP logs do not: a row there
pairs lines of one transaction (a request and its answers) that a cut could part. Only
uncompressed files split (a compressed stream cannot be entered in the middle).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Mapping

from beamlytics.parsers import tstat
from beamlytics.parsers.base import Rejected, decompressed
from beamlytics.parsers.lines import LineStart
from beamlytics.parsers.zeek_reader import MAX_LINE_BYTES, Header, LineRun, LogStart, apply_header_line, line_runs

# Bytes per range: big enough that a range's fixed cost (one more open, one seek, the index
# pass at memory speed) is noise beside parsing it, small enough that a 5 GB log spreads wide.
SPLIT_BYTES = 32 << 20
SPLITTABLE_FORMATS = ("zeek", "squid", "bind", "tstat")
PAIRED_KINDS = {("tstat", "log_dns_complete"), ("tstat", "log_http_complete")}
_SCAN_BYTES = 1 << 20
# The `#` lines that change a Zeek header other than `#separator` (which starts a new one).
_HEADER_KEYS = (b"fields", b"types", b"set_separator", b"empty_field", b"unset_field", b"path")


@dataclass(frozen=True)
class ByteRange:
    path: str
    index: int  # 0 for the range at the head of the file
    start: int
    end: int  # exclusive; the file's size for the last range


def byte_ranges(path: str, size: int, split_bytes: int = SPLIT_BYTES) -> list[ByteRange]:
    """`path`'s `size` bytes cut into ranges of about `split_bytes`; one range for a small file."""
    count = max(1, -(-size // split_bytes))
    cuts = [size * part // count for part in range(count + 1)]
    return [ByteRange(path, index, start, end) for index, (start, end) in enumerate(zip(cuts, cuts[1:]))]


class RangeReader(io.RawIOBase):
    """The bytes of the lines of a seekable `stream` that start in `[start, end)`."""

    def __init__(self, stream: BinaryIO, start: int, end: int):
        super().__init__()
        self._stream = stream
        self._end = end
        self._position = self._first_line_start(start)
        self._done = self._position >= end
        if not self._done:
            stream.seek(self._position)

    def _first_line_start(self, start: int) -> int:
        """The first line start at or after `start`, or `end` when no line starts in the range."""
        if start == 0:
            return 0
        self._stream.seek(start - 1)
        position = start - 1
        while position < self._end:
            chunk = self._stream.read(min(_SCAN_BYTES, self._end - position))
            if not chunk:
                break
            newline = chunk.find(b"\n")
            if newline >= 0:
                return position + newline + 1
            position += len(chunk)
        return self._end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._done:
            return 0
        data = self._stream.read(len(buffer))
        if not data:
            self._done = True
            return 0
        # The last line is the one holding byte end-1: stop after the first newline from there.
        newline = data.find(b"\n", max(0, self._end - 1 - self._position))
        if newline >= 0:
            data, self._done = data[: newline + 1], True
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


def open_range(stream: BinaryIO, piece: ByteRange) -> io.BufferedReader:
    return io.BufferedReader(RangeReader(stream, piece.start, piece.end))


@dataclass(frozen=True)
class RangeIndex:
    """What a range passes on to the ranges after it."""

    lines: int  # lines starting in the range, as the Zeek reader numbers them
    separator_line: bytes | None = None  # its last `#separator` line: the header starts over there
    header_lines: tuple[bytes, ...] = ()  # `#` lines after that one which may change the header, in order


def index_range(source: str, stream: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES) -> RangeIndex:
    """Count the lines of a range's stream and keep its header lines, compacted.

    Which `#` line sets which field depends on the separator in force, unknown until the
    earlier ranges are indexed; but a line can only set `key` if it reads `#key` followed by
    the separator or nothing. So the last line per (key, byte after it) is all a later range
    needs: at most a few hundred lines however many a hostile file holds.
    """
    lines, separator, latest = 0, None, {}
    for run in line_runs(source, stream, max_line_bytes):
        if isinstance(run, Rejected):
            lines += run.units  # a line too long is numbered; a broken stream holds no line
            continue
        if run.is_header:
            line = bytes(run.data).rstrip(b"\r\n")
            if line.startswith(b"#separator "):
                separator, latest = line, {}
            else:
                key = next((key for key in _HEADER_KEYS if line.startswith(b"#" + key)), None)
                if key is not None:
                    latest[key, line[1 + len(key): 2 + len(key)]] = (lines, line)
        lines += run.lines
    ordered = tuple(line for _, line in sorted(latest.values()))
    return RangeIndex(lines, separator, ordered)


def index_lines(source: str, stream: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES,
                is_header: Callable[[str], bool] | None = None) -> RangeIndex:
    """Count the lines of a line log's range as `lines.LineReader` numbers them, keeping the last `#` line
    that `is_header` takes for a header (the one in force after the range)."""
    lines, header = 0, None
    for run in line_runs(source, stream, max_line_bytes):
        if isinstance(run, Rejected):
            lines += run.units
            continue
        # A `#` line over the limit is rejected by the parser's reader, never read as a header.
        if run.is_header and is_header is not None and len(run.data) - 1 <= max_line_bytes:
            line = bytes(run.data).rstrip(b"\r\n")
            if is_header(line.decode("utf-8", "replace")):
                header = line
        lines += run.lines
    return RangeIndex(lines, header_lines=(header,) if header is not None else ())


def line_start(earlier: list[RangeIndex]) -> LineStart:
    """The start of a line log's range after `earlier` (the indexes of all ranges before it, in file order)."""
    header, line = None, 1
    for index in earlier:
        header = index.header_lines[-1] if index.header_lines else header
        line += index.lines
    return LineStart(line, header.decode("utf-8", "replace") if header is not None else None)


def range_start(earlier: list[RangeIndex], is_json: bool) -> LogStart:
    """The start of the range after `earlier` (the indexes of all ranges before it, in file order)."""
    header, line = Header(), 1
    for index in earlier:
        if index.separator_line is not None:
            header = apply_header_line(header, index.separator_line)
        for header_line in index.header_lines:
            header = apply_header_line(header, header_line)
        line += index.lines
    return LogStart(line, header, is_json)


def is_json_log(stream: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES) -> bool:
    """Whether the Zeek reader takes the log that `stream` starts as JSON (it looks at the first line only)."""
    first = next(line_runs("", stream, max_line_bytes), None)
    return isinstance(first, LineRun) and bytes(first.data[:1]) == b"{"


@dataclass(frozen=True)
class SourceRange:
    """A planned source's range, and where it starts (`range_start`): a parse unit like a whole file."""

    source: Any  # formats.Source
    range: ByteRange
    start: LogStart | LineStart


def splits_into(source: Any, open_stream: Callable[[str], BinaryIO], size: int, split_bytes: int = SPLIT_BYTES
                ) -> list[ByteRange]:
    """The ranges a planned `formats.Source` of `size` bytes is read in; none when it is read whole."""
    fmt = getattr(source, "format", None)
    if fmt not in SPLITTABLE_FORMATS or (fmt, source.kind) in PAIRED_KINDS or size <= split_bytes:
        return []
    with open_stream(source.path) as raw:
        if not isinstance(decompressed(raw), io.BufferedReader):
            return []  # compressed: one stream from its head
    return byte_ranges(source.path, size, split_bytes)


def index_of(source: Any, piece: ByteRange, open_stream: Callable[[str], BinaryIO],
             max_line_bytes: int = MAX_LINE_BYTES) -> RangeIndex:
    """The index of one range of a planned `formats.Source`."""
    with open_stream(piece.path) as raw:
        stream = open_range(raw, piece)
        if source.format == "zeek":
            return index_range(piece.path, stream, max_line_bytes)
        is_header = _is_tstat_header if source.format == "tstat" else None
        return index_lines(piece.path, stream, max_line_bytes, is_header)


def _is_tstat_header(line: str) -> bool:
    return tstat.header_columns(line) is not None


def starts_of(source: Any, pieces: list[ByteRange], indexes: Mapping[int, RangeIndex],
              open_stream: Callable[[str], BinaryIO], max_line_bytes: int = MAX_LINE_BYTES) -> list[SourceRange]:
    """Each range of `source` with its start, from the `indexes` of its ranges (by range index)."""
    ordered = [indexes[piece.index] for piece in pieces]
    if source.format != "zeek":
        return [SourceRange(source, piece, line_start(ordered[: piece.index])) for piece in pieces]
    with open_stream(source.path) as raw:
        is_json = is_json_log(raw, max_line_bytes)
    return [SourceRange(source, piece, range_start(ordered[: piece.index], is_json)) for piece in pieces]
