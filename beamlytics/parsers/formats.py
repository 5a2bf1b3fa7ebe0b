"""The input formats beamlytics reads, and how a list of files becomes parse work.

`plan` looks at the head of every file once, decides its format and log kind, and keeps
the files that feed the requested table; `parse_source` then reads one planned source and
never raises, whatever the bytes: a parser failure becomes a dead-letter entry for the rest
of that file, and the run goes on.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Union

from beamlytics.parsers import argus, bind, limits, nfstream_flows, pcap, splits, squid, suricata, tstat, validate, zeek
from beamlytics.parsers.base import (
    BATCH_ROWS, STREAM_ERRORS, Batch, ParseItem, Rejected, decompressed, excerpt, read_head,
)
from beamlytics.parsers.limits import DEAD_LETTERS_PER_REASON

# Captures first: their magic numbers are unambiguous. Then the line formats, the ones
# with self-describing headers before the ones recognised by the shape of a line.
SNIFF_ORDER = (pcap, zeek, suricata, tstat, argus, bind, squid)
# nfstream reads the same captures as pcap, so it is never sniffed: only `--format nfstream` chooses it.
FORMATS = {module.FORMAT: module for module in (*SNIFF_ORDER, nfstream_flows)}

OpenStream = Callable[[str], BinaryIO]


@dataclass(frozen=True)
class Source:
    """One file to parse, with the format and log kind its head showed."""

    path: str
    format: str
    kind: str


PlannedSource = Union[Source, "zeek.NamedFlowGroup", "splits.SourceRange"]


@dataclass
class Plan:
    sources: list  # of PlannedSource, in a deterministic order
    rejected: list[Rejected]  # files that could not be opened or recognised
    skipped: dict[str, str]  # recognised files that feed another table, sorted by path -> why


def tables_of(fmt: str) -> set[str]:
    return set().union(*FORMATS[fmt].TABLES.values())


def identify(name: str, head: bytes, fmt: str = "auto") -> tuple[str, str] | None:
    """(format, kind) of a file, from its base name and first decompressed bytes."""
    candidates = SNIFF_ORDER if fmt == "auto" else (FORMATS[fmt],)
    for module in candidates:
        kind = module.sniff(name, head)
        if kind is not None:
            return module.FORMAT, kind
    return None


def plan(paths: list[str], table: str, fmt: str, open_stream: OpenStream) -> Plan:
    sources: list = []
    rejected: list[Rejected] = []
    skipped: dict[str, str] = {}
    zeek_logs: list[tuple[str, str]] = []
    for path in paths:
        try:
            with open_stream(path) as raw:
                head = read_head(decompressed(raw))
        except STREAM_ERRORS as error:
            rejected.append(Rejected(path, 0, f"cannot open: {error}", source_tool=fmt, units=0))
            continue
        identified = identify(os.path.basename(path), head, fmt)
        if identified is None:
            reason = "unrecognised format" if fmt == "auto" else f"not a {fmt} file"
            rejected.append(Rejected(path, 0, reason, excerpt(head), fmt, units=0))
            continue
        file_format, kind = identified
        if file_format == "zeek" and table == "named_flows":
            zeek_logs.append((path, kind))  # conn.log is named with the ssl/http/dns logs beside it
        elif table in FORMATS[file_format].TABLES.get(kind, ()):
            sources.append(Source(path, file_format, kind))
        else:
            feeds = sorted(FORMATS[file_format].TABLES.get(kind, ()))
            skipped[path] = (f"{file_format} {kind} feeds {', '.join(feeds)}, not {table}" if feeds
                             else f"{file_format} {kind} gives no {table} records")
    groups = zeek.named_flow_groups(zeek_logs) if zeek_logs else []
    grouped = {path for group in groups for path in _group_paths(group)}
    skipped.update((path, f"zeek {kind} log without the logs it names flows with")
                   for path, kind in zeek_logs if path not in grouped)
    return Plan(sources + groups, rejected, dict(sorted(skipped.items())))


def _group_paths(group: "zeek.NamedFlowGroup") -> list[str]:
    return [path for field in dataclasses.fields(group) for path in getattr(group, field.name)]


def source_name(source: PlannedSource) -> str:
    if isinstance(source, splits.SourceRange):
        return source.source.path
    return source.path if isinstance(source, Source) else _group_paths(source)[0]


def parse_source(
    source: PlannedSource,
    table: str,
    open_stream: OpenStream,
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[ParseItem]:
    """Parse one planned source; a parser that fails mid-file costs the rest of that file only.

    Every record is checked (`validate.checked`); dead letters beyond a per-file, per-reason
    limit are counted in one dead letter instead of listed (`limits.DeadLetterLimit`).
    """
    options = options or {}
    times = validate.time_range(options)
    dead_letters = limits.DeadLetterLimit(int(options.get("dead_letters_per_reason") or DEAD_LETTERS_PER_REASON))
    if isinstance(source, (Source, splits.SourceRange)):
        tool = source_format(source)
        items = _parse_file(source, table, open_stream, batch_rows, options)
    else:
        tool = zeek.FORMAT
        max_line_bytes = int(options.get("max_line_bytes") or zeek.MAX_LINE_BYTES)
        items = zeek.parse_named_flows(source, lambda path: _decompressed(open_stream(path), options), batch_rows,
                                       max_line_bytes)
    try:
        for item in items:
            for checked in validate.checked(item, times) if isinstance(item, Batch) else (item,):
                if isinstance(checked, Rejected):
                    if not checked.source_tool:
                        checked = dataclasses.replace(checked, source_tool=tool)
                    if not dead_letters.admit(checked):
                        continue
                yield checked
    except Exception as error:  # a parser bug must not end the run: report it as this file's failure
        yield Rejected(source_name(source), 0, f"parser failed: {type(error).__name__}: {error}", "", tool, units=0)
    yield from dead_letters.rest()


def _decompressed(raw: BinaryIO, options: Mapping[str, Any]) -> BinaryIO:
    return limits.bounded_decompressed(raw, float(options.get("max_decompression_ratio") or limits.MAX_DECOMPRESSION_RATIO))


def source_format(source: Source | splits.SourceRange) -> str:
    return source.source.format if isinstance(source, splits.SourceRange) else source.format


def _parse_file(planned: Source | splits.SourceRange, table: str, open_stream: OpenStream, batch_rows: int,
                options: Mapping[str, Any]) -> Iterator[ParseItem]:
    source = planned.source if isinstance(planned, splits.SourceRange) else planned
    # The file may have been replaced since it was planned: parse it only as what it is now.
    with open_stream(source.path) as raw:
        head = read_head(decompressed(raw))
    now = identify(os.path.basename(source.path), head, source.format)
    if now != (source.format, source.kind):
        found = f"a {now[0]} {now[1]} log" if now else "not recognised"
        reason = f"file changed since it was planned as a {source.format} {source.kind} log: now {found}"
        yield Rejected(source.path, 0, reason, excerpt(head), source.format, units=0)
        return
    parse = FORMATS[source.format].parse
    with open_stream(source.path) as raw:
        if isinstance(planned, splits.SourceRange):  # planned as uncompressed: read as bytes from the range on
            yield from parse(source.path, splits.open_range(raw, planned.range), source.kind, table,
                             batch_rows=batch_rows, options=options, start=planned.start)
            return
        yield from parse(source.path, _decompressed(raw, options), source.kind, table, batch_rows=batch_rows,
                         options=options)


def parse_paths(paths: list[str], table: str, fmt: str = "auto",
                options: Mapping[str, Any] | None = None) -> Iterator[ParseItem]:
    """Everything in `paths` for `table`, without Beam: for scripts, notebooks and tests."""
    opener = lambda path: open(path, "rb")  # noqa: E731 - the one local opener
    planned = plan(paths, table, fmt, opener)
    yield from planned.rejected
    for source in planned.sources:
        yield from parse_source(source, table, opener, options=options)


__all__ = ["Batch", "FORMATS", "Plan", "Rejected", "Source", "identify", "parse_paths", "parse_source", "plan"]
