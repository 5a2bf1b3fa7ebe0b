"""Squid access.log connector: native and common/combined lines -> `http` and `named_flows`.

Squid's native format (`%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt`) is read
by one regular expression over whole lines, so padded columns (`%6tr`), IPv6 or hostname
clients, CONNECT `host:port` URLs, old `DIRECT/` and new `HIER_DIRECT/` hierarchy codes, `-`
peers and a multi-word MIME type all parse. Lines that are not native are tried as Squid's
`common`/`combined` logformats (Apache style, optionally followed by `%Ss:%Sh`), line by line,
so a log whose format was switched mid-file still reads.

Field meanings, as Squid defines them:

* Squid writes a native line when the transaction *ends*: `%ts` is the completion time and
  `%tr` the elapsed milliseconds, so `req_time = ts - elapsed` and `resp_time = ts`. Common and
  combined lines carry a single `[%tl]` time: it becomes `req_time` and `resp_time` stays null.
* `c_ip` is the client exactly as logged: Squid logs a hostname there when `log_fqdn` is on,
  and the record keeps that name rather than being dropped.
* `s_ip` is the peer Squid fetched from (`%<a`) when that is an IP address; a cache hit
  (`NONE/-`) or a parent proxy named by hostname leaves it null.
* `host`/`s_port`/`path` come from the URL: `s_port` is the explicit port or the scheme's
  default (http 80, https 443, ftp 21); a CONNECT URL `host:port` gives no path.
* `status_code` 000 (no reply was received) becomes null, as does any `-` field.
* `response_body_len` is `%<st`, the bytes Squid sent to the client (headers included).
* `named_flows` gets one flow per request: client -> peer, named by the URL's host
  (`name_source = "squid_url"`), `s_bytes = %<st`, from `req_time` to `resp_time`.

Every line is one unit: parsed lines (with a row) and blank lines (without) are counted in the
batches, every other line is a `Rejected` with its line number.
"""
from __future__ import annotations

import lzma
import re
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.parsers.base import BATCH_ROWS, Batch, ParseItem, Rejected, excerpt

FORMAT = "squid"
TABLES = {"access": frozenset({"http", "named_flows"})}

# --------------------------------------------------------------------------------------
# Text-line reading shared by the line-based connectors (squid, tstat, bind).
# --------------------------------------------------------------------------------------

BLOCK_BYTES = 1 << 20
# A "line" longer than this is not text from a logging tool: stop rather than buffer it all.
MAX_LINE_BYTES = 16 << 20
# What a broken compressed stream raises part-way through.
STREAM_ERRORS = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error)


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


# --------------------------------------------------------------------------------------
# Squid
# --------------------------------------------------------------------------------------

NATIVE = (
    r"^\s*(?P<ts>\d{1,12}(?:\.\d{1,9})?)\s+(?P<elapsed>-?\d{1,12})\s+(?P<client>\S+)"
    r"\s+(?P<code>[^\s/]+)/(?P<status>\d{1,3})\s+(?P<bytes>\d{1,18})\s+(?P<method>\S+)\s+(?P<url>\S+)"
    r"\s+(?P<user>\S+)\s+(?P<hier>[^\s/]+)/(?P<peer>\S+)(?:\s+(?P<mime>.*?))?\s*$"
)
COMBINED = (
    r"^\s*(?P<client>\S+)\s+\S+\s+(?P<user>\S+)\s+\[(?P<when>\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2})"
    r"(?:\.\d+)?\s+(?P<tz>[+-]\d{4})\]\s+\"(?P<method>[A-Za-z_-]+)\s+(?P<url>\S+)(?:\s+[^\"]*)?\"\s+"
    r"(?P<status>\d{1,3})\s+(?P<bytes>\d{1,18}|-)"
    r"(?:\s+\"(?P<referrer>(?:[^\"\\]|\\.)*)\"\s+\"(?P<ua>(?:[^\"\\]|\\.)*)\")?"
    r"(?:\s+(?P<code>[A-Z_]+):(?P<hier>\S+))?\s*$"
)
URL = (
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9_+.-]*)://)?(?:[^/?#@]*@)?"
    r"(?:\[(?P<host6>[^\]]*)\]|(?P<host>[^/?#:]*))(?::(?P<port>\d{1,5}))?(?P<path>.*)$"
)
DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}
NAME_HINT = re.compile(r"(access|squid)", re.IGNORECASE)


def sniff(name: str, head: bytes) -> str | None:
    """"access" when most of the first lines are Squid native lines (or, for a file named
    like an access log, common/combined lines)."""
    if b"\x00" in head[:4096]:
        return None
    text = head.decode("utf-8", "replace").splitlines()
    if len(head) == 65536 and text:
        text = text[:-1]  # the head may end mid-line
    lines = [line for line in text[:50] if line.strip()]
    if not lines:
        return None
    native = sum(1 for line in lines if _NATIVE_PY.match(line))
    if native * 2 > len(lines):
        return "access"
    combined = sum(1 for line in lines if _COMBINED_PY.match(line))
    if NAME_HINT.search(name) and (native + combined) * 2 > len(lines):
        return "access"
    return None


# Python's `re` reads the same patterns for sniffing a handful of lines.
_NATIVE_PY = re.compile(NATIVE)
_COMBINED_PY = re.compile(COMBINED)


def parse(
    source: str,
    stream: BinaryIO,
    kind: str,
    table: str,
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[ParseItem]:
    if table not in TABLES["access"]:
        raise ValueError(f"squid access logs feed {sorted(TABLES['access'])}, not {table!r}")
    for block in line_blocks(stream):
        yield from _parse_block(block, table, source, batch_rows)
        yield from broken_stream(block, FORMAT, source)


def _parse_block(block: LineBlock, table: str, source: str, batch_rows: int) -> Iterator[ParseItem]:
    lines = block.lines
    blank = blank_mask(lines)
    native = pc.extract_regex(lines, NATIVE)
    is_native = native.is_valid()
    combined = pc.extract_regex(lines, COMBINED)
    is_combined = pc.and_(combined.is_valid(), pc.invert(is_native))
    bad = pc.invert(pc.or_(pc.or_(is_native, is_combined), blank))

    parts = [_native_fields(native.filter(is_native)), _combined_fields(combined.filter(is_combined))]
    positions = [_positions(block, is_native), _positions(block, is_combined)]
    columns = {name: pa.concat_arrays([part[name] for part in parts]) for name in parts[0]}
    columns["source_pos"] = pa.concat_arrays(positions)
    order = pc.sort_indices(columns["source_pos"])  # keep file order across the two formats
    columns = {name: values.take(order) for name, values in columns.items()}

    rows = len(order)
    table_columns = _http_columns(columns) if table == "http" else _flow_columns(columns)
    table_columns.update(source_tool=[FORMAT] * rows, source_file=[source] * rows, source_pos=columns["source_pos"])
    units = len(lines) - pc.sum(bad).as_py() if len(lines) else 0
    yield from batches_of(table, table_columns, rows, units, batch_rows)
    yield from rejected_lines(block, bad, "not a Squid native, common or combined access.log line", FORMAT, source)


def _positions(block: LineBlock, mask: pa.Array) -> pa.Array:
    return pa.array(np.flatnonzero(mask.to_numpy(zero_copy_only=False)) + block.first, pa.int64())


def _native_fields(match: pa.StructArray) -> dict[str, pa.Array]:
    end_us = epoch_us(match.field("ts"))
    elapsed_us = pc.multiply(pc.cast(match.field("elapsed"), pa.int64()), 1000)
    return {
        **_request_fields(match),
        "req_time": pc.subtract(end_us, elapsed_us),
        "resp_time": end_us,
        "peer": null_dash(match.field("peer")),
        "mime": null_dash(pc.if_else(pc.equal(match.field("mime"), ""), "-", match.field("mime"))),
        "referrer": pa.nulls(len(match), pa.string()),
        "user_agent": pa.nulls(len(match), pa.string()),
    }


def _combined_fields(match: pa.StructArray) -> dict[str, pa.Array]:
    local = pc.strptime(match.field("when"), format="%d/%b/%Y:%H:%M:%S", unit="us")
    req_us = pc.subtract(pc.cast(local, pa.int64()), zone_offset_us(match.field("tz")))
    referrer, user_agent = match.field("referrer"), match.field("ua")
    return {
        **_request_fields(match),
        "req_time": req_us,
        "resp_time": pa.nulls(len(match), pa.int64()),
        "peer": pa.nulls(len(match), pa.string()),
        "mime": pa.nulls(len(match), pa.string()),
        "referrer": null_dash(pc.if_else(pc.equal(referrer, ""), "-", referrer)),
        "user_agent": null_dash(pc.if_else(pc.equal(user_agent, ""), "-", user_agent)),
    }


def _request_fields(match: pa.StructArray) -> dict[str, pa.Array]:
    """Fields both formats share: client, method, URL parts, status and size."""
    url = pc.extract_regex(match.field("url"), URL)
    scheme = pc.utf8_lower(url.field("scheme"))
    host = pc.if_else(pc.equal(url.field("host6"), ""), url.field("host"), url.field("host6"))
    explicit_port = pc.if_else(pc.equal(url.field("port"), ""), pa.scalar(None, pa.string()), url.field("port"))
    default_port = pc.cast(_lookup(scheme, DEFAULT_PORTS), pa.string())
    status = pc.cast(match.field("status"), pa.int64())
    size = null_dash(match.field("bytes"))
    return {
        "c_ip": match.field("client"),
        "method": null_dash(match.field("method")),
        "host": pc.if_else(pc.equal(host, ""), pa.scalar(None, pa.string()), host),
        "s_port": pc.cast(pc.coalesce(explicit_port, default_port), pa.int32()),
        "path": pc.if_else(pc.equal(url.field("path"), ""), pa.scalar(None, pa.string()), url.field("path")),
        "status_code": pc.if_else(pc.equal(status, 0), pa.scalar(None, pa.int64()), status),
        "bytes": pc.cast(size, pa.int64()),
    }


def _lookup(keys: pa.Array, mapping: Mapping[str, int]) -> pa.Array:
    """Map string keys to ints through a small dict, null where absent (vectorized)."""
    names = list(mapping)
    index = pc.index_in(keys, value_set=pa.array(names, pa.string()))
    return pc.take(pa.array([mapping[name] for name in names], pa.int64()), index)


def _http_columns(fields: Mapping[str, pa.Array]) -> dict[str, Any]:
    peer = fields["peer"]
    return {
        "c_ip": fields["c_ip"],
        "s_ip": pc.if_else(ip_mask(peer), peer, pa.scalar(None, pa.string())),
        "s_port": fields["s_port"],
        "method": fields["method"],
        "host": fields["host"],
        "path": fields["path"],
        "referrer": fields["referrer"],
        "user_agent": fields["user_agent"],
        "status_code": fields["status_code"],
        "content_type": fields["mime"],
        "response_body_len": fields["bytes"],
        "req_time": fields["req_time"],
        "resp_time": fields["resp_time"],
    }


def _flow_columns(fields: Mapping[str, pa.Array]) -> dict[str, Any]:
    peer, host = fields["peer"], fields["host"]
    rows = len(host)
    return {
        "c_ip": fields["c_ip"],
        "s_ip": pc.if_else(ip_mask(peer), peer, pa.scalar(None, pa.string())),
        "s_port": fields["s_port"],
        "proto": pa.array(["tcp"] * rows, pa.string()),
        "name": host,
        "name_source": pc.if_else(host.is_valid(), "squid_url", pa.scalar(None, pa.string())),
        "s_bytes": fields["bytes"],
        "time_start": fields["req_time"],
        "time_end": pc.coalesce(fields["resp_time"], fields["req_time"]),
    }
