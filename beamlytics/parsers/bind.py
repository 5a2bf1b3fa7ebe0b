"""BIND 9 query-log connector: `queries` category lines -> `dns`.

One regular expression reads every generation of the line `log_query()` writes (whole
blocks at a time, through Arrow's RE2):

    [time] [queries: ][info: ]client [@0x7f..] 10.0.0.1#5353 [(qname)]: [view v: ]query:
        qname IN A +E(0)K (10.0.0.53) [ECS ...]

BIND 9.9 has no `(qname)`, 9.10+ adds it, 9.11+ adds `@0x...` (the client object), views add
`view name:`; pre-9.3 lines have no flags and no server address. The time prefix may be
BIND's own (`02-May-2023 13:33:40.299`, `print-time yes`), ISO 8601 (`print-time iso8601`,
with `Z` for `iso8601-utc`), syslog's (`May  2 13:33:40`, written by syslog, so no year) or
absent (`print-time no`).

Assumptions, since the log does not say:

* Times without a zone are local times of the zone in the option `timezone` (an IANA name,
  `--timezone`; default UTC). Run BIND with `print-time iso8601-utc` to be exact.
* Syslog-style times have no year: it comes from the option `year` (`--year`; default None,
  which leaves `req_time` null rather than guessing from a clock or a file date; the summary
  counts such records as `records_without_time`).

Field mapping: `c_ip`/`c_port` from `client IP#port`; `s_ip` from the address in parentheses
after the flags (the local address the query arrived on); `query`, `req_class`, `req_type` as
written (BIND already uses mnemonics and RFC 3597 `TYPEnnn`). The flag field is
`[+-]` (recursion desired), then `S` signed, `E(n)` EDNS version n, `T` TCP, `D` DNSSEC OK,
`C` checking disabled, `V`/`K` cookie. Only RD and CD are DNS header flags: `flags` is "RD",
"CD", "RD CD" or "" (null when the line has no flag field); `T` gives `proto` = "tcp", else
"udp". The other letters describe EDNS options, not header flags, and have no column. A
query log has no responses: every response field is null.

Lines of a mixed log that are not query lines (other categories, `query-errors`, startup
messages) are read fine but give no row: they count as units. A line that is neither a BIND
log line nor a query line, or a query line that does not parse, is rejected.
"""
from __future__ import annotations

import re
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.parsers.base import BATCH_ROWS, ParseItem, Read
from beamlytics.parsers.lines import (
    LineBlock,
    LineStart,
    batches_of,
    blank_mask,
    broken_stream,
    line_reader,
    rejected_lines,
    zone_offset_us,
)

FORMAT = "bind"
TABLES = {"queries": frozenset({"dns"})}

QUERY = (
    r"^(?P<prefix>.*?)\bclient (?:@0x[0-9A-Fa-f]+ )?(?P<c_ip>[^\s#]+)#(?P<c_port>\d{1,5})"
    r"(?: \([^)]*\))?: (?:view [^:]+: )?query: (?P<query>\S+) (?P<qclass>\S+) (?P<qtype>\S+)"
    r"(?: (?P<flags>[-+][A-Z()0-9]*))?(?: \((?P<s_ip>[^)\s]*)\))?(?: \[ECS [^\]]*\])?\s*$"
)
BIND_TIME = r"^(?P<when>\d{2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}:\d{2})(?P<frac>\.\d{1,6})?"
ISO_TIME = r"^(?P<when>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?P<frac>\.\d{1,6})?(?P<tz>Z|[+-]\d{2}:?\d{2})?"
SYSLOG_TIME = r"^(?P<mon>[A-Za-z]{3}) +(?P<day>\d{1,2}) (?P<hms>\d{2}:\d{2}:\d{2})(?P<frac>\.\d{1,6})?"
# A line BIND wrote that is not a query: starts with one of its time stamps or a
# `category: severity:` prefix.
BIND_LINE = (
    r"^(\d{2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}|[A-Za-z]{3} +\d{1,2} \d{2}:\d{2}"
    r"|[a-z-]+: (critical|error|warning|notice|info|debug \d+|dynamic):)"
)
NAME_HINT = re.compile(r"(bind|named|quer)", re.IGNORECASE)
_QUERY_PY = re.compile(QUERY)


def sniff(name: str, head: bytes) -> str | None:
    """"queries" when query lines are found in the head (most lines, or any for a file named
    like a BIND log)."""
    if head.startswith(b"#"):
        return None
    text = head.decode("utf-8", "replace").splitlines()
    if len(text) > 1 and not head.endswith(b"\n"):
        text = text[:-1]  # the head may end mid-line (a full head, or a file cut short)
    lines = [line for line in text[:200] if line.strip()]
    queries = sum(1 for line in lines if _QUERY_PY.match(line))
    if queries and (queries * 2 > len(lines) or NAME_HINT.search(name)):
        return "queries"
    return None


def parse(
    source: str,
    stream: BinaryIO,
    kind: str,
    table: str,
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
    start: LineStart = LineStart(),
) -> Iterator[ParseItem]:
    if table != "dns":
        raise ValueError(f"BIND query logs feed 'dns', not {table!r}")
    year = (options or {}).get("year")
    timezone = (options or {}).get("timezone") or None
    reader = line_reader(stream, options, start)
    for block in reader:
        yield from _parse_block(block, source, batch_rows, year, timezone)
        yield from broken_stream(block, FORMAT, source)
    yield Read(source, reader.delivered)


def _parse_block(block: LineBlock, source: str, batch_rows: int, year: int | None,
                 timezone: str | None) -> Iterator[ParseItem]:
    lines = block.lines
    match = pc.extract_regex(lines, QUERY)
    is_query = match.is_valid()
    mentions_query = pc.match_substring(lines, "query: ")
    other_bind = pc.and_(pc.invert(mentions_query), pc.match_substring_regex(lines, BIND_LINE))
    fine = pc.or_(pc.or_(is_query, other_bind), blank_mask(lines))
    malformed = pc.and_(pc.invert(fine), mentions_query)
    foreign = pc.and_(pc.invert(fine), pc.invert(mentions_query))

    rows = match.filter(is_query)
    columns = _dns_columns(rows, year, timezone)
    count = len(rows)
    positions = np.flatnonzero(is_query.to_numpy(zero_copy_only=False)) + block.first
    columns.update(source_tool=[FORMAT] * count, source_file=[source] * count, source_pos=pa.array(positions))
    units = pc.sum(fine).as_py() or 0
    yield from batches_of("dns", columns, count, units, batch_rows)
    dead = rejected_lines(block, malformed, "BIND query line that does not parse", FORMAT, source)
    dead += rejected_lines(block, foreign, "not a BIND log line", FORMAT, source)
    yield from sorted(dead, key=lambda rejected: rejected.position)


def _dns_columns(rows: pa.StructArray, year: int | None, timezone: str | None) -> dict[str, Any]:
    flags = rows.field("flags")
    has_flags = pc.not_equal(flags, "")
    letters = pc.replace_substring_regex(flags, r"E\(\d+\)", "E")  # the EDNS version is no flag
    recursion = pc.starts_with(flags, "+")
    checking_disabled = pc.match_substring(pc.utf8_slice_codeunits(letters, 1), "C")
    header_flags = pc.binary_join_element_wise(
        pc.if_else(recursion, "RD", ""), pc.if_else(checking_disabled, "CD", ""), " "
    )
    tcp = pc.match_substring(letters, "T")
    s_ip = rows.field("s_ip")
    return {
        "c_ip": rows.field("c_ip"),
        "c_port": pc.cast(rows.field("c_port"), pa.int32()),
        "s_ip": pc.if_else(pc.equal(s_ip, ""), pa.scalar(None, pa.string()), s_ip),
        "proto": pc.if_else(has_flags, pc.if_else(tcp, "tcp", "udp"), pa.scalar(None, pa.string())),
        "query": rows.field("query"),
        "req_class": rows.field("qclass"),
        "req_type": rows.field("qtype"),
        "flags": pc.if_else(has_flags, pc.utf8_trim(header_flags, " "), pa.scalar(None, pa.string())),
        "req_time": _times(rows.field("prefix"), year, timezone),
    }


def _times(prefix: pa.Array, year: int | None, timezone: str | None) -> pa.Array:
    """Microseconds since the epoch from whichever time stamp starts the line, else null."""
    bind = pc.extract_regex(prefix, BIND_TIME)
    iso = pc.extract_regex(prefix, ISO_TIME)
    iso_zone = iso.field("tz")
    iso_local = _local_us(iso.field("when"), "%Y-%m-%dT%H:%M:%S", iso.field("frac"), timezone)
    iso_zoned = pc.subtract(_local_us(iso.field("when"), "%Y-%m-%dT%H:%M:%S", iso.field("frac"), None),
                            zone_offset_us(iso_zone))
    candidates = [
        _local_us(bind.field("when"), "%d-%b-%Y %H:%M:%S", bind.field("frac"), timezone),
        pc.if_else(pc.equal(iso_zone, ""), iso_local, iso_zoned),
    ]
    if year is not None:
        syslog = pc.extract_regex(prefix, SYSLOG_TIME)
        when = pc.binary_join_element_wise(
            str(int(year)), syslog.field("mon"), syslog.field("day"), syslog.field("hms"), " "
        )
        candidates.append(_local_us(when, "%Y %b %d %H:%M:%S", syslog.field("frac"), timezone))
    return pc.coalesce(*candidates)


def _local_us(text: pa.Array, layout: str, fraction: pa.Array, timezone: str | None) -> pa.Array:
    """Parse `text` with `layout` (null where it does not fit) as a time in `timezone` (None: UTC)
    and add the decimal fraction."""
    whole = pc.strptime(text, format=layout, unit="us", error_is_null=True)
    if timezone is not None:
        # A local time that occurs twice (or never) at a DST change: the earlier reading.
        whole = pc.assume_timezone(whole, timezone=timezone, ambiguous="earliest", nonexistent="earliest")
    fraction_us = pc.cast(pc.round(pc.multiply(
        pc.cast(pc.binary_join_element_wise("0", fraction, ""), pa.float64()), 1e6)), pa.int64())
    return pc.add(pc.cast(whole, pa.int64()), fraction_us)
