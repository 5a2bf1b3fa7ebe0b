"""Tstat connector: log_tcp_complete, log_udp_complete, log_dns_complete, log_http_complete.

Tstat writes each log with a header line naming its columns (`#c_ip:1 c_port:2 ...`, or
`#31#c_ip:1 ...` where `31` is the bitmask of enabled optional column sets). Which columns a
file has depends on the Tstat version (2.x/3.x) and on the sets enabled, so the flow and DNS
logs are read by the names of *their own* header, never by fixed positions. A header line
met again later (files concatenated) switches to its columns. Data lines before any header
are rejected: without one their columns cannot be known.

What the fields mean (Tstat's own documentation and source):

* `log_tcp_complete` -> `named_flows`: `c_*` is the side that sent the SYN. Packets are
  `c_pkts_all`/`s_pkts_all`; bytes are `c_bytes_all`/`s_bytes_all`, the transport payload bytes
  including retransmissions, i.e. what crossed the wire above TCP. `first`/`last` are epoch
  milliseconds. The flow is named by `http_hostname`, else `c_tls_SNI`, else `fqdn` (the name
  Tstat's DNS cache matched to the server address), whichever of those columns exist
  (`name_source` "http_host", "sni", "dns"). `tcp_flags` lists S, A, F, R when either side
  sent SYN, ACK, FIN, RST segments (`*_syn_cnt`, `*_ack_cnt`, `*_fin_cnt`, `*_rst_cnt`);
  `conn_state` is Zeek's, read off the same counters per side (`_tcp_conn_state`).
* `log_udp_complete` -> `named_flows`: `c_first_abs` (ms) starts the flow; it ends at the later
  of `c_first_abs + c_durat` and `s_first_abs + s_durat` (durations in seconds;
  `s_first_abs` is 0 when the server never answered: `conn_state` S0, else SF). Named by `quic_SNI`,
  else `fqdn`.
* `log_dns_complete` -> `dns`: Tstat writes one `REQ` line per question, one `RESP` line per
  answer record and one `RESP_ERR` line per error response, all with `time` in ms. Lines of
  one transaction (same addresses, ports and `trans_id`) become one row: the request gives
  `query`, `req_class`, `req_type`, `req_time`; the responses give `answers`, `answer_types`,
  `answer_ttls`, `resp_code` and `resp_time`. A response whose request was not logged keeps
  its own time as `req_time` (as Zeek does) and the first answer's owner as `query`. Tstat's
  `flags` byte is CD|AD<<1|RA<<2|RD<<3|TC<<4|AA<<5 (QR is implied by RESP): the row shows the
  response's flags when there is one, else the request's. Tstat folds types it has no name for
  into `OTHER`: those become null. Transactions are held until `pair_seconds` (option,
  default 30) of log time have passed, then written.
* `log_http_complete` -> `http`: tab separated, one line per request (`method` in column 6) or
  response (`HTTP`), plus `REQ2`/`RES2` continuation lines carrying the rest of a header that
  was cut at a packet boundary (marked `[*]`). Tstat writes these lines without per-column
  names, in the layout of its `http.c`: request `c_ip c_port s_ip s_port time method host
  [fqdn] url referer user_agent [cookie dnt]`, response `... time HTTP status content_length
  content_type server range location [set_cookie]`. The optional `fqdn` column is present
  when the header mentions it, else when a request line has an odd field count (11 or 13).
  Responses are paired with the oldest unanswered request of the same connection (HTTP/1.1
  answers in order); a response without request keeps its own time as `req_time`.
"""
from __future__ import annotations

import re
from collections import deque
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.parsers.base import BATCH_ROWS, ParseItem, Read, Rejected, RowBuffer, excerpt
from beamlytics.schemas import flags_string
from beamlytics.parsers.lines import (
    LineBlock,
    LineReader,
    LineStart,
    batches_of,
    blank_mask,
    broken_stream,
    epoch_us,
    line_reader,
    null_dash,
    rejected_lines,
)

FORMAT = "tstat"
TABLES = {
    "log_tcp_complete": frozenset({"named_flows"}),
    "log_udp_complete": frozenset({"named_flows"}),
    "log_dns_complete": frozenset({"dns"}),
    "log_http_complete": frozenset({"http"}),
}
KIND_IN_NAME = re.compile(r"^(log_(?:tcp|udp|dns|http)_complete)(?:$|[._-])")
HEADER_PREFIX = re.compile(r"^#(?:\d+#)?")
# Columns whose presence in a header tells which log it is.
KIND_BY_COLUMNS = (
    ("log_tcp_complete", {"c_pkts_all", "first", "last"}),
    ("log_udp_complete", {"c_first_abs", "s_first_abs"}),
    ("log_dns_complete", {"entry", "trans_id", "query"}),
)
NUMBER = r"^-?\d{1,18}(\.\d+)?$"
PAIR_SECONDS = 30.0


def header_columns(line: str) -> dict[str, int] | None:
    """Column name -> 0-based index from a Tstat header line, or None if it is not one."""
    if not line.startswith("#"):
        return None
    columns = {}
    for position, token in enumerate(HEADER_PREFIX.sub("", line).split()):
        name, _, number = token.rpartition(":")
        if not name or number != str(position + 1):
            return None
        columns[name] = position
    return columns or None


def sniff(name: str, head: bytes) -> str | None:
    if head.startswith(b"#separator"):
        return None  # a Zeek log
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    columns = header_columns(first)
    if columns:
        for kind, needed in KIND_BY_COLUMNS:
            if needed <= set(columns):
                return kind
    named = KIND_IN_NAME.match(name)
    if named and (columns or first.startswith("#") or first.count("\t") >= 9):
        return named.group(1)
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
    if table not in TABLES.get(kind, ()):
        raise ValueError(f"tstat {kind!r} does not feed table {table!r}")
    pair_us = int(float((options or {}).get("pair_seconds", PAIR_SECONDS)) * 1e6)
    reader = line_reader(stream, options, start)
    if kind in ("log_tcp_complete", "log_udp_complete"):
        items = _parse_flows(source, reader, kind, batch_rows, start.header)
    elif kind == "log_dns_complete":
        items = _parse_lines(source, reader, _DnsPairing(source, batch_rows, pair_us))
    else:
        items = _parse_lines(source, reader, _HttpPairing(source, batch_rows, pair_us))
    return _then_read_count(items, source, reader)


def _then_read_count(items: Iterator[ParseItem], source: str, reader: LineReader) -> Iterator[ParseItem]:
    yield from items
    yield Read(source, reader.delivered)


# ----------------------------------------------------------------------------- flows


def _parse_flows(source: str, reader: LineReader, kind: str, batch_rows: int, header: str | None
                 ) -> Iterator[ParseItem]:
    columns = header_columns(header) if header is not None else None
    for block in reader:
        starts = pc.starts_with(block.lines, "#").to_numpy(zero_copy_only=False)
        cuts = [0, *np.flatnonzero(starts).tolist(), len(block.lines)]
        for start, stop in zip(cuts, cuts[1:]):
            header_units = 0
            if start < stop and starts[start]:
                columns = header_columns(block.lines[start].as_py()) or columns
                start, header_units = start + 1, 1  # a header (or comment) line: read, no row
            segment = LineBlock(block.first + start, block.lines.slice(start, stop - start))
            yield from _flow_segment(segment, columns, kind, source, batch_rows, header_units)
        yield from broken_stream(block, FORMAT, source)


def _flow_segment(
    block: LineBlock, columns: dict[str, int] | None, kind: str, source: str, batch_rows: int, header_units: int
) -> Iterator[ParseItem]:
    lines = block.lines
    blank = blank_mask(lines)
    if columns is None:
        yield from batches_of("named_flows", {}, 0, (pc.sum(blank).as_py() or 0) + header_units, batch_rows)
        yield from rejected_lines(block, pc.invert(blank), "data line before any Tstat header line", FORMAT, source)
        return
    parts = pc.split_pattern(lines, " ")
    good = pc.equal(pc.list_value_length(parts), len(columns)).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(good)
    table = _FlowColumns(parts, rows, columns)
    numeric_ok = table.numbers_valid(NUMERIC_COLUMNS[kind])
    rows, wrong_number = rows[numeric_ok], rows[~numeric_ok]
    table = _FlowColumns(parts, rows, columns)
    values = _tcp_flows(table) if kind == "log_tcp_complete" else _udp_flows(table)
    values.update(source_tool=[FORMAT] * len(rows), source_file=[source] * len(rows))
    values["source_pos"] = pa.array(rows + block.first, pa.int64())
    blank_np = blank.to_numpy(zero_copy_only=False)
    wrong_width = ~good & ~blank_np
    units = len(rows) + int(blank_np.sum()) + header_units
    yield from batches_of("named_flows", values, len(rows), units, batch_rows)
    reason = f"expected {len(columns)} space-separated fields, as the Tstat header says"
    yield from rejected_lines(block, pa.array(wrong_width), reason, FORMAT, source)
    number_bad = np.zeros(len(lines), bool)
    number_bad[wrong_number] = True
    yield from rejected_lines(block, pa.array(number_bad), "non-numeric value in a numeric Tstat column", FORMAT, source)


NUMERIC_COLUMNS = {
    "log_tcp_complete": ("c_port", "s_port", "c_pkts_all", "s_pkts_all", "c_bytes_all", "s_bytes_all", "first",
                         "last", "c_syn_cnt", "s_syn_cnt", "c_ack_cnt", "s_ack_cnt", "c_fin_cnt", "s_fin_cnt",
                         "c_rst_cnt", "s_rst_cnt"),
    "log_udp_complete": ("c_port", "s_port", "c_pkts_all", "s_pkts_all", "c_bytes_all", "s_bytes_all",
                         "c_first_abs", "s_first_abs", "c_durat", "s_durat"),
}


class _FlowColumns:
    """Named columns of the chosen `rows` of space-split lines (absent columns are null)."""

    def __init__(self, parts: pa.ListArray, rows: np.ndarray, columns: Mapping[str, int]):
        self._values = parts.values
        self._starts = parts.offsets.to_numpy()[rows]
        self._columns = columns
        self.rows = len(rows)

    def text(self, name: str) -> pa.Array:
        if name not in self._columns:
            return pa.nulls(self.rows, pa.string())
        return self._values.take(pa.array(self._starts + self._columns[name]))

    def number(self, name: str, kind: pa.DataType = pa.int64()) -> pa.Array:
        return pc.cast(pc.cast(self.text(name), pa.float64()), kind)

    def numbers_valid(self, names: tuple[str, ...]) -> np.ndarray:
        valid = np.ones(self.rows, bool)
        for name in names:
            if name in self._columns:
                valid &= pc.match_substring_regex(self.text(name), NUMBER).to_numpy(zero_copy_only=False)
        return valid

    def first_name(self, candidates: tuple[tuple[str, str], ...]) -> tuple[pa.Array, pa.Array]:
        """The first non-`-` value among `(column, source)` candidates, and its source."""
        name = pa.nulls(self.rows, pa.string())
        source = pa.nulls(self.rows, pa.string())
        for column, label in reversed(candidates):
            value = null_dash(self.text(column))
            source = pc.if_else(value.is_valid(), label, source)
            name = pc.coalesce(value, name)
        return name, source


def _endpoints(table: _FlowColumns, proto: str) -> dict[str, Any]:
    return {
        "c_ip": table.text("c_ip"),
        "c_port": table.number("c_port", pa.int32()),
        "s_ip": table.text("s_ip"),
        "s_port": table.number("s_port", pa.int32()),
        "proto": pa.array([proto] * table.rows, pa.string()),
        "c_pkt": table.number("c_pkts_all"),
        "s_pkt": table.number("s_pkts_all"),
        "c_bytes": table.number("c_bytes_all"),
        "s_bytes": table.number("s_bytes_all"),
    }


def _tcp_flows(table: _FlowColumns) -> dict[str, Any]:
    name, source = table.first_name((("http_hostname", "http_host"), ("c_tls_SNI", "sni"), ("fqdn", "dns")))
    return {
        **_endpoints(table, "tcp"),
        "name": name,
        "name_source": source,
        "tcp_flags": _tcp_flags(table),
        "conn_state": _tcp_conn_state(table),
        "time_start": epoch_us(table.text("first"), 1e3),
        "time_end": epoch_us(table.text("last"), 1e3),
    }


def _tcp_flags(table: _FlowColumns) -> pa.Array:
    letters = []
    for letter, counter in (("S", "syn"), ("A", "ack"), ("F", "fin"), ("R", "rst")):
        seen = pc.greater(pc.add(table.number(f"c_{counter}_cnt"), table.number(f"s_{counter}_cnt")), 0)
        letters.append(pc.if_else(pc.fill_null(seen, False), letter, ""))
    return pc.binary_join_element_wise(*letters, "")


def _tcp_conn_state(table: _FlowColumns) -> pa.Array:
    """Zeek's conn_state as far as Tstat's per-side SYN/FIN/RST counters show it; null without them.

    No SYN from the server: refused (REJ) if it reset, S0 if it sent nothing, else mid-stream (OTH).
    After a handshake: reset by the client (RSTO) or the server (RSTR), closed by both (SF), by the
    client only (S2) or the server only (S3), else still open (S1).
    """
    counters = {name: table.number(name) for name in
                ("c_syn_cnt", "s_syn_cnt", "c_fin_cnt", "s_fin_cnt", "c_rst_cnt", "s_rst_cnt", "s_pkts_all")}
    known = np.ones(table.rows, bool)
    sent = {}
    for name, values in counters.items():
        known &= pc.is_valid(values).to_numpy(zero_copy_only=False)
        sent[name] = pc.fill_null(pc.greater(values, 0), False).to_numpy(zero_copy_only=False)
    answered = sent["s_syn_cnt"]
    states = np.select(
        [~answered & sent["s_rst_cnt"], ~answered & ~sent["s_pkts_all"], ~answered,
         sent["c_rst_cnt"], sent["s_rst_cnt"], sent["c_fin_cnt"] & sent["s_fin_cnt"], sent["c_fin_cnt"],
         sent["s_fin_cnt"]],
        ["REJ", "S0", "OTH", "RSTO", "RSTR", "SF", "S2", "S3"], "S1")
    return pa.array(states, pa.string(), mask=~known)


def _udp_flows(table: _FlowColumns) -> dict[str, Any]:
    name, source = table.first_name((("quic_SNI", "sni"), ("fqdn", "dns")))
    start_ms = table.number("c_first_abs", pa.float64())
    client_end = pc.add(start_ms, pc.multiply(table.number("c_durat", pa.float64()), 1e3))
    server_first = table.number("s_first_abs", pa.float64())
    server_end = pc.add(server_first, pc.multiply(table.number("s_durat", pa.float64()), 1e3))
    answered = pc.fill_null(pc.greater(server_first, 0), False)
    end_ms = pc.max_element_wise(client_end, pc.if_else(answered, server_end, client_end))
    return {
        **_endpoints(table, "udp"),
        "name": name,
        "name_source": source,
        # As for captures: a reply makes a UDP flow SF, none leaves it S0.
        "conn_state": pc.if_else(answered, "SF", "S0"),
        "time_start": _ms_to_us(start_ms),
        "time_end": _ms_to_us(end_ms),
    }


def _ms_to_us(values: pa.Array) -> pa.Array:
    return pc.cast(pc.round(pc.multiply(values, 1e3)), pa.int64())


# ----------------------------------------------------------------------- dns and http


def _parse_lines(source: str, reader: LineReader, pairing: "_Pairing") -> Iterator[ParseItem]:
    """Feed every line to a stateful pairing; header and blank lines are units without rows."""
    for block in reader:
        for offset, line in enumerate(block.lines.to_pylist()):
            position = block.first + offset
            if not line.strip():
                pairing.rows.add_units()
            elif line.startswith("#"):
                pairing.header(line)
                pairing.rows.add_units()
            else:
                reason = pairing.line(position, line)
                if reason:
                    yield Rejected(source, position, reason, excerpt(line), FORMAT)
                else:
                    pairing.rows.add_units()
            batch = pairing.rows.take()
            if batch:
                yield batch
        yield from broken_stream(block, FORMAT, source)
    pairing.flush_older_than(None)
    batch = pairing.rows.flush()
    if batch:
        yield batch


class _Pairing:
    """Records waiting for the lines that complete them, oldest first, written once their
    event time is `pair_us` older than the newest line seen (or at the end of the file)."""

    def __init__(self, table: str, source: str, batch_rows: int, pair_us: int):
        self.rows = RowBuffer(table, FORMAT, source, batch_rows)
        self.pair_us = pair_us
        self.columns: dict[str, int] | None = None
        self._open: dict[Any, dict[str, Any]] = {}

    def header(self, line: str) -> None:
        self.columns = header_columns(line) or self.columns

    def line(self, position: int, line: str) -> str | None:
        """Read one data line; return why it was rejected, or None."""
        raise NotImplementedError

    def open_record(self, key: Any, record: dict[str, Any]) -> None:
        self.close(key)
        self._open[key] = record

    def record(self, key: Any) -> dict[str, Any] | None:
        return self._open.get(key)

    def close(self, key: Any) -> None:
        record = self._open.pop(key, None)
        if record is not None:
            self.rows.append(record.pop("source_pos"), **record)

    def flush_older_than(self, now_us: int | None) -> None:
        while self._open:
            key, oldest = next(iter(self._open.items()))
            if now_us is not None and oldest["req_time"] >= now_us - self.pair_us:
                return
            self.close(key)


TSTAT_RCODES = {"NO_ERROR": "NOERROR", "NOTIMPL": "NOTIMP", "UNKNOWN-ERROR": None}
DNS_FLAG_BITS = (("CD", 0), ("AD", 1), ("RA", 2), ("RD", 3), ("TC", 4), ("AA", 5))
DNS_COLUMNS = ("c_ip", "c_port", "s_ip", "s_port", "time", "entry", "trans_id", "query", "ttl", "class",
               "type", "answer", "flags")


def tstat_dns_flags(text: str, response: bool) -> str:
    """Tstat's flag byte (CD|AD<<1|RA<<2|RD<<3|TC<<4|AA<<5) as schema flag names."""
    value = int(text, 16)
    names = [name for name, bit in DNS_FLAG_BITS if value >> bit & 1]
    return flags_string(names + (["QR"] if response else []))


def _dns_name(text: str) -> str | None:
    if text in ("-", "--", ""):
        return None
    return text[:-1] if len(text) > 1 and text.endswith(".") else text


class _DnsPairing(_Pairing):
    def __init__(self, source: str, batch_rows: int, pair_us: int):
        super().__init__("dns", source, batch_rows, pair_us)

    def line(self, position: int, line: str) -> str | None:
        if self.columns is None:
            return "data line before any Tstat header line"
        fields = line.split(" ")
        if len(fields) != len(self.columns):
            return f"expected {len(self.columns)} space-separated fields, as the Tstat header says"
        if not set(DNS_COLUMNS) <= set(self.columns):
            return "Tstat header lacks a log_dns_complete column"
        value = {name: fields[self.columns[name]] for name in DNS_COLUMNS}
        try:
            when = round(float(value["time"]) * 1e3)
            key = (value["c_ip"], int(value["c_port"]), value["s_ip"], int(value["s_port"]), int(value["trans_id"], 16))
            int(value["flags"], 16)
        except ValueError:
            return "non-numeric time, port, trans_id or flags in a Tstat DNS line"
        if value["entry"] == "REQ":
            self._request(position, key, value, when)
        elif value["entry"] in ("RESP", "RESP_ERR"):
            self._response(position, key, value, when)
        else:
            return f"unknown Tstat DNS entry {value['entry']!r}"
        self.flush_older_than(when)
        return None

    def _request(self, position: int, key: tuple, value: dict[str, str], when: int) -> None:
        self.open_record(key, {
            **self._question(position, key, value, when),
            "flags": tstat_dns_flags(value["flags"], response=False),
        })

    def _question(self, position: int, key: tuple, value: dict[str, str], when: int) -> dict[str, Any]:
        c_ip, c_port, s_ip, s_port, trans_id = key
        return {
            "source_pos": position, "c_ip": c_ip, "c_port": c_port, "s_ip": s_ip, "s_port": s_port,
            "proto": "udp", "trans_id": trans_id, "query": _dns_name(value["query"]),
            "req_class": _known(value["class"]), "req_type": _known(value["type"]), "req_time": when,
        }

    def _response(self, position: int, key: tuple, value: dict[str, str], when: int) -> None:
        record = self.record(key)
        if record is None or (record.get("resp_time") not in (None, when)):
            record = self._question(position, key, value, when)
            if value["entry"] == "RESP":
                record["req_type"] = None  # an answer's type, not the question's
            self.open_record(key, record)
        record["resp_time"] = when
        record["flags"] = tstat_dns_flags(value["flags"], response=True)
        if value["entry"] == "RESP_ERR":
            record["resp_code"] = TSTAT_RCODES.get(value["answer"], value["answer"])
            return
        record["resp_code"] = "NOERROR"
        record.setdefault("answers", []).append(value["answer"].replace("\t", " "))
        record.setdefault("answer_types", []).append(_known(value["type"]))
        record.setdefault("answer_ttls", []).append(int(value["ttl"]) if value["ttl"].isdigit() else None)


def _known(mnemonic: str) -> str | None:
    """Tstat writes `OTHER` for types/classes it has no name for, `-` for none."""
    return None if mnemonic in ("OTHER", "-", "") else mnemonic


HTTP_RESPONSE_TAGS = ("HTTP", "RES2")
HTTP_METHOD = re.compile(r"^[A-Z]+$")


class _HttpPairing(_Pairing):
    def __init__(self, source: str, batch_rows: int, pair_us: int):
        super().__init__("http", source, batch_rows, pair_us)
        self._unanswered: dict[tuple, deque] = {}
        self._latest: dict[tuple, Any] = {}
        self._next_id = 0
        self._has_fqdn: bool | None = None

    def header(self, line: str) -> None:
        if "fqdn" in line or "dns" in line:
            self._has_fqdn = True

    def line(self, position: int, line: str) -> str | None:
        fields = line.split("\t")
        if len(fields) < 10:
            return "Tstat HTTP line with fewer than 10 tab-separated fields"
        try:
            flow = (fields[0], int(fields[1]), fields[2], int(fields[3]))
            when = round(float(fields[4]) * 1e6)
        except ValueError:
            return "non-numeric port or time in a Tstat HTTP line"
        tag = fields[5]
        if tag in HTTP_RESPONSE_TAGS:
            reason = self._response(position, flow, fields, when)
        elif tag == "REQ2" or HTTP_METHOD.match(tag):
            reason = self._request(position, flow, fields, when)
        else:
            reason = f"unknown Tstat HTTP line tag {tag!r}"
        if reason is None:
            self.flush_older_than(when)
        return reason

    def _request(self, position: int, flow: tuple, fields: list[str], when: int) -> str | None:
        has_fqdn = self._has_fqdn if self._has_fqdn is not None else len(fields) % 2 == 1
        rest = fields[8:] if has_fqdn else fields[7:]
        url, referrer, agent = (rest + ["-", "-", "-"])[:3]
        cookie = rest[3] if len(rest) > 3 else "-"
        if fields[5] == "REQ2":
            record = self.record(self._latest.get(("req", flow)))
            if record is None:
                return "Tstat REQ2 continuation line without a request before it"
            for column, fragment in (("path", url), ("referrer", referrer), ("user_agent", agent), ("req_cookie", cookie)):
                record[column] = _join_fragment(record.get(column), fragment)
            return None
        key = self._new_key()
        self.open_record(key, {
            "source_pos": position, "c_ip": flow[0], "c_port": flow[1], "s_ip": flow[2], "s_port": flow[3],
            "method": fields[5], "host": _value(fields[6]), "path": _value(url), "referrer": _value(referrer),
            "user_agent": _value(agent), "req_cookie": _value(cookie), "req_time": when,
        })
        self._unanswered.setdefault(flow, deque()).append(key)
        self._latest[("req", flow)] = key
        return None

    def _response(self, position: int, flow: tuple, fields: list[str], when: int) -> str | None:
        fields = fields + ["-"] * (13 - len(fields))
        if fields[5] == "RES2":
            record = self.record(self._latest.get(("resp", flow)))
            if record is None:
                return "Tstat RES2 continuation line without a response before it"
            record["set_cookie"] = _join_fragment(record.get("set_cookie"), fields[12])
            return None
        key = self._oldest_unanswered(flow)
        if key is None:
            key = self._new_key()
            self.open_record(key, {"source_pos": position, "c_ip": flow[0], "c_port": flow[1], "s_ip": flow[2],
                                   "s_port": flow[3], "req_time": when})
        record = self.record(key)
        status, length = fields[6], fields[7]
        record.update(
            status_code=int(status) if status.isdigit() else None,
            response_body_len=int(length) if length.isdigit() else None,
            content_type=_value(fields[8]), server=_value(fields[9]), content_range=_value(fields[10]),
            set_cookie=_value(fields[12]), resp_time=when,
        )
        self._latest[("resp", flow)] = key
        return None

    def _oldest_unanswered(self, flow: tuple) -> int | None:
        waiting = self._unanswered.get(flow)
        while waiting:
            key = waiting.popleft()
            if self.record(key) is not None:
                return key
        return None

    def _new_key(self) -> int:
        self._next_id += 1
        return self._next_id


def _value(text: str) -> str | None:
    return None if text in ("-", "") else text


TRUNCATED = "[*]"


def _join_fragment(before: str | None, fragment: str) -> str | None:
    """Join a header value cut at a packet boundary (`...[*]` + `[*]...`) with its rest."""
    if fragment in ("-", ""):
        return before
    if before and before.endswith(TRUNCATED) and fragment.startswith(TRUNCATED):
        return before[: -len(TRUNCATED)] + fragment[len(TRUNCATED):]
    return before or fragment
