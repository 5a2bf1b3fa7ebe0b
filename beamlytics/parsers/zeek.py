"""Zeek (and Bro 2.x) logs: dns.log and http.log to the dns/http tables, conn.log to named flows.

Both of Zeek's renderings are read: the ASCII TSV log, always by its own `#` headers
(layouts differ between Bro 2.x and Zeek 6/7, extra columns are common, a header block may
start again mid-file), and the JSON log (one object per line, `ts` as epoch seconds or ISO
8601). How lines become columns is in `zeek_reader` (values: `zeek_columns`), how
columns become our tables in `zeek_tables`, and how flows are named from the ssl/http/dns
logs in `zeek_flows`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

from beamlytics.parsers.base import BATCH_ROWS, Batch, Read, Rejected
from beamlytics.parsers.zeek_flows import (  # noqa: F401  (public API of this format)
    FlowNamer,
    NamedFlowGroup,
    named_flow_groups,
    parse_named_flows,
)
from beamlytics.parsers.zeek_reader import MAX_LINE_BYTES, Header, LogStart, apply_header_line, read_log
from beamlytics.parsers.zeek_tables import (
    CONN_FIELDS,
    DNS_FIELDS,
    HTTP_FIELDS,
    dns_batch,
    http_batch,
    table_batches,
)

FORMAT = "zeek"
TABLES = {"dns": frozenset({"dns"}), "http": frozenset({"http"}), "conn": frozenset({"named_flows"})}

_JSON_ZEEK_KEYS = ("uid", "id.orig_h", "_path")
# Fields only one kind of log has, for logs that do not say their kind (no `#path`/`_path`).
# JSON leaves unset fields out, so each kind is told by any one of several; sip.log shares
# http's request fields but has a call_id.
_KIND_FIELDS = (
    ("dns", {"trans_id", "qtype", "qtype_name", "rcode_name"}, set()),
    ("http", {"trans_depth", "request_body_len", "resp_mime_types"}, {"call_id"}),
    ("conn", {"conn_state", "orig_ip_bytes", "missed_bytes"}, set()),
    ("ssl", {"cipher", "server_name", "established"}, set()),
)
_KIND_IN_NAME = re.compile(r"(?:^|[^a-z])(dns|http|conn|ssl)(?:[^a-z]|$)")
# A damaged first record should not hide what the next ones show.
_JSON_LINES_TRIED = 5


def sniff(name: str, head: bytes) -> str | None:
    """The log kind (`dns`, `conn`, `ssl`, ...) of a Zeek TSV or JSON log, else None."""
    lines = head.split(b"\n")
    header = _tsv_header(lines)
    if header is not None:
        return header.path or _kind_from_fields(header.fields or ()) or _kind_from_name(name)
    for line in lines[:_JSON_LINES_TRIED]:
        record = _first_json_object(line)
        if record is not None and "ts" in record and any(key in record for key in _JSON_ZEEK_KEYS):
            path = record.get("_path")
            return path if isinstance(path, str) and path else _kind_from_fields(record) or _kind_from_name(name)
    return None


def _kind_from_fields(fields: Iterable[str]) -> str | None:
    names = set(fields)
    for kind, telling, excluded in _KIND_FIELDS:
        if names & telling and not names & excluded:
            return kind
    return None


def _tsv_header(lines: list[bytes]) -> Header | None:
    """The header of the leading `#` lines, if they include Zeek's `#separator` line."""
    header, seen_separator = Header(), False
    for line in lines:
        if not line.startswith(b"#"):
            break
        seen_separator |= line.startswith(b"#separator ")
        header = apply_header_line(header, line)
    return header if seen_separator else None


def _first_json_object(line: bytes) -> dict[str, Any] | None:
    if not line.lstrip().startswith(b"{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _kind_from_name(name: str) -> str:
    """`dns.04:00:00-05:00:00.log.gz` -> `dns`; `zeekjson_dns.log` -> `dns`."""
    base = name.rsplit("/", 1)[-1]
    mentioned = _KIND_IN_NAME.search(base.lower())
    return mentioned.group(1) if mentioned else base.split(".", 1)[0]


def parse(
    source: str,
    stream: BinaryIO,
    kind: str,
    table: str,
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
    start: LogStart = LogStart(),
) -> Iterator[Batch | Rejected | Read]:
    """Rows of `table` from one decompressed Zeek log of `kind` (or a range of it, from `start`);
    option `max_line_bytes` caps a line.

    A conn.log on its own gives flows without names: name them with `named_flow_groups`
    and `parse_named_flows`, which read the ssl/http/dns logs beside it.
    """
    if table not in TABLES.get(kind, ()):
        raise ValueError(f"a zeek {kind!r} log does not feed the {table!r} table")
    if kind == "conn":
        fields, convert = CONN_FIELDS, FlowNamer.empty().name
    elif kind == "dns":
        fields, convert = DNS_FIELDS, dns_batch
    else:
        fields, convert = HTTP_FIELDS, http_batch
    max_line_bytes = int((options or {}).get("max_line_bytes") or MAX_LINE_BYTES)
    yield from table_batches(table, source, read_log(source, stream, fields, max_line_bytes, start), convert, batch_rows)
