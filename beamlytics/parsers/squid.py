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
* `user` is `%un` (the authenticated or ident user; `-` is null); `cache_result` is the
  result code before the slash (`TCP_MISS` of `TCP_MISS/200`), or of `%Ss:%Sh` on combined
  lines that carry it.
* `response_body_len` is `%<st`, the bytes Squid sent to the client (headers included).
* `named_flows` gets one flow per request: client -> peer, named by the URL's host
  (`name_source = "squid_url"`), `s_bytes = %<st`, from `req_time` to `resp_time`.

Every line is one unit: parsed lines (with a row) and blank lines (without) are counted in the
batches, every other line is a `Rejected` with its line number.
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
    epoch_us,
    ip_mask,
    line_reader,
    null_dash,
    rejected_lines,
    zone_offset_us,
)

FORMAT = "squid"
TABLES = {"access": frozenset({"http", "named_flows"})}


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
    text = head.decode("utf-8", "replace").splitlines()
    if len(text) > 1 and not head.endswith(b"\n"):
        text = text[:-1]  # the head may end mid-line (a full head, or a file cut short)
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
    start: LineStart = LineStart(),
) -> Iterator[ParseItem]:
    if table not in TABLES["access"]:
        raise ValueError(f"squid access logs feed {sorted(TABLES['access'])}, not {table!r}")
    reader = line_reader(stream, options, start)
    for block in reader:
        yield from _parse_block(block, table, source, batch_rows)
        yield from broken_stream(block, FORMAT, source)
    yield Read(source, reader.delivered)


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
    code = match.field("code")
    return {
        "c_ip": match.field("client"),
        "user": null_dash(match.field("user")),
        "cache_result": pc.if_else(pc.equal(code, ""), pa.scalar(None, pa.string()), code),
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
        "user": fields["user"],
        "cache_result": fields["cache_result"],
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
