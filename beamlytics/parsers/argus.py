"""Argus connector: bidirectional flow records as `ra` prints them (`.binetflow`, CTU-13 style).

`ra -c , -s stime dur proto saddr sport dir daddr dport state ...` (or `-c '\t'`) writes one
line per flow under a header line naming the columns, e.g.
`StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,sTos,dTos,TotPkts,TotBytes,SrcBytes,SrcPkts,Label`.
Columns are read by the names of *that* header (comma- or tab-separated, as its first line
shows), never by position; a header line met again later (files concatenated) switches to
its columns, and data lines before any header are rejected.

What the fields mean (ra(1), argus(8)):

* `SrcAddr`/`Sport` is the side Argus took for the flow's originator -> `c_ip`/`c_port`.
  `Dir` only says how sure Argus was of that (`->`, `<->`, `<?>`...); the sides are never swapped.
* Ports are decimal, or hexadecimal (`0x0303`) where Argus prints ICMP type and code in them.
* `TotPkts`/`TotBytes` count both directions, `SrcPkts`/`SrcBytes` the originator's (IP
  lengths, as the capture flows count them): the responder's are the difference.
* `StartTime` is `YYYY/MM/DD hh:mm:ss[.ffffff]` (ra's default, read as UTC: the text has
  no zone) or epoch seconds (`ra -u`); the flow ends `Dur` seconds later.
* `State` with an underscore (`ra -Z b`, e.g. `FSPA_FSRPA`) lists the TCP flags the source
  sent left of it and the destination's right of it (the logical OR per direction; argus-info
  mailing list, "Field 'state' from Argus (ra)", 2018-05-10,
  https://pairlist1.pair.net/pipermail/argus/2018-May/011093.html). `conn_state` is then Zeek's, read
  off those flags exactly as for capture flows (`pcap_flows.conn_state`), with PSH standing in
  for "sent payload" (Argus keeps no per-side payload count). `tcp_flags` is the union.
* A `State` that is already Zeek's vocabulary (`S0`, `SF`, ...) is kept. Argus' own summary
  states (argus(8), ra(1) "-z") are mapped: over TCP `REQ` (connection requested, no
  answer) -> S0, `EST`/`CON` (established, connected) -> S1, `FIN`/`CLO` (finished, closed)
  -> SF. Over UDP, as for captures, a flow with packets both ways is SF and one without S0
  (Argus' `CON` vs `INT`/`REQ`); ICMP (`ECO`, `URP`...) and other protocols are OTH, as in
  Zeek. TCP states that say nothing of the outcome (`RST`, `TIM`, ...) leave `conn_state`
  null: the features then judge from the responder's packets.
* Argus' own records and non-IP flows (`man`, `arp`, `rarp`, `llc`) are rejected: they are
  not IP flows. `Label`, `sTos`, `dTos` and any other column are not read.
"""
from __future__ import annotations

import re
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.parsers.base import BATCH_ROWS, ParseItem, Read, Rejected, excerpt
from beamlytics.parsers.lines import (
    LineBlock, LineStart, batches_of, blank_mask, broken_stream, line_reader, rejected_lines,
)
from beamlytics.parsers.pcap_flows import TCP, UDP, conn_state as capture_conn_state, flag_letters, summary_side

FORMAT = "argus"
KIND = "binetflow"
TABLES = {KIND: frozenset({"named_flows"})}

REQUIRED_COLUMNS = ("StartTime", "Dur", "Proto", "SrcAddr", "DstAddr", "TotPkts", "TotBytes", "SrcBytes")
# Header names that tell an Argus flow header from any other CSV.
SIGNATURE_COLUMNS = frozenset({"StartTime", "Proto", "SrcAddr", "DstAddr"})
NON_IP_PROTOCOLS = frozenset({"man", "arp", "rarp", "llc"})
PROTOCOL_NUMBERS = {"tcp": TCP, "udp": UDP}
ZEEK_STATES = frozenset({"S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"})
TCP_SUMMARY_STATES = {"REQ": "S0", "EST": "S1", "CON": "S1", "FIN": "SF", "CLO": "SF"}
# Argus' -Z letters, mapped on the capture flows' flag bits; printed in the capture flows' order.
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}
FLAG_STATE = re.compile(r"^([FSRPAUEC]*)_([FSRPAUEC]*)$")


def header_columns(line: str) -> dict[str, int] | None:
    """Column name -> index of an Argus header line (comma- or tab-separated), else None."""
    names = [name.strip() for name in line.lstrip("\ufeff").split(_separator(line))]
    if not SIGNATURE_COLUMNS <= set(names):
        return None
    return {name: index for index, name in enumerate(names)}


def _separator(line: str) -> str:
    return "\t" if "\t" in line else ","


def sniff(name: str, head: bytes) -> str | None:
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    return KIND if header_columns(first) else None


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
        raise ValueError(f"argus {kind!r} does not feed table {table!r}")
    reader = line_reader(stream, options, start)
    header = None  # Argus files are read whole (not split into ranges): the header is their own
    for block in reader:
        lines = block.lines
        maybe = np.flatnonzero(pc.fill_null(pc.match_substring(lines, "SrcAddr"), False).to_numpy(zero_copy_only=False))
        headers = {int(i): found for i in maybe if (found := _header(lines[int(i)].as_py())) is not None}
        cuts = sorted({0, *headers, len(lines)})
        for first, stop in zip(cuts, cuts[1:]):
            header_units = 0
            if first in headers:
                header, first, header_units = headers[first], first + 1, 1
            segment = LineBlock(block.first + first, lines.slice(first, stop - first))
            yield from _segment(segment, header, source, batch_rows, header_units)
        yield from broken_stream(block, FORMAT, source)
    yield Read(source, reader.delivered)


def _header(line: str) -> tuple[dict[str, int], str] | None:
    columns = header_columns(line)
    return None if columns is None else (columns, _separator(line))


def _segment(block: LineBlock, header: tuple[dict[str, int], str] | None, source: str, batch_rows: int,
             header_units: int) -> Iterator[ParseItem]:
    """The rows of data lines under one header, and a dead letter for each line that is not one."""
    blank = blank_mask(block.lines).to_numpy(zero_copy_only=False)
    if header is None:
        yield from batches_of("named_flows", {}, 0, int(blank.sum()) + header_units, batch_rows)
        yield from rejected_lines(block, pa.array(~blank), "data line before any Argus header line", FORMAT, source)
        return
    columns, separator = header
    parts = pc.split_pattern(block.lines, separator)
    fits = pc.equal(pc.list_value_length(parts), len(columns)).to_numpy(zero_copy_only=False) & ~blank
    reasons = np.full(len(blank), None, object)
    reasons[~fits & ~blank] = f"expected {len(columns)} fields, as the Argus header says"
    rows = np.flatnonzero(fits)
    values, why = _flows(_Fields(parts, rows, columns))
    reasons[rows] = why
    kept = rows[_unset(why)]
    values = {name: value.filter(pa.array(_unset(why))) for name, value in values.items()}
    values.update(source_tool=pa.array([FORMAT] * len(kept)), source_file=pa.array([source] * len(kept)),
                  source_pos=pa.array(kept + block.first, pa.int64()))
    yield from batches_of("named_flows", values, len(kept), len(kept) + int(blank.sum()) + header_units, batch_rows)
    for i in np.flatnonzero(~_unset(reasons)).tolist():
        yield Rejected(source, block.first + i, reasons[i], excerpt(block.lines[i].as_py()), FORMAT)


def _unset(values: np.ndarray) -> np.ndarray:
    """Where an object array of reasons holds none."""
    return np.equal(values, None)


class _Fields:
    """The named, whitespace-trimmed fields of the chosen `rows` of split lines."""

    def __init__(self, parts: pa.ListArray, rows: np.ndarray, columns: Mapping[str, int]):
        self._values = parts.values
        self._starts = parts.offsets.to_numpy()[rows]
        self.columns = columns
        self.rows = len(rows)

    def text(self, name: str) -> pa.Array | None:
        if name not in self.columns:
            return None
        return pc.utf8_trim_whitespace(self._values.take(pa.array(self._starts + self.columns[name])))


START_TIME = r"^(?:(?P<date>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})|(?P<epoch>\d{1,12}))(?:\.(?P<fraction>\d{1,9}))?$"
DECIMAL = r"^(?P<whole>\d{1,12})(?:\.(?P<fraction>\d{1,9}))?$"
COUNT = r"^\d{1,18}$"
DECIMAL_PORT, HEX_PORT = r"^\d{1,5}$", r"^0x[0-9A-Fa-f]{1,4}$"


class _Reasons:
    """The first reason each row fails for, in the order the checks are made."""

    def __init__(self, rows: int):
        self.why = np.full(rows, None, object)

    def check(self, bad: pa.Array | np.ndarray, reason: str) -> None:
        bad = bad.to_numpy(zero_copy_only=False) if isinstance(bad, (pa.Array, pa.ChunkedArray)) else bad
        self.why[bad & _unset(self.why)] = reason


def _flows(fields: _Fields) -> tuple[dict[str, pa.Array], np.ndarray]:
    """`named_flows` columns of every row, and why each row cannot be a flow (None where it can)."""
    reasons = _Reasons(fields.rows)
    missing = [name for name in REQUIRED_COLUMNS if name not in fields.columns]
    if missing:
        reasons.check(np.ones(fields.rows, bool), f"Argus header lacks the column {missing[0]}")
        return {}, reasons.why
    proto = pc.utf8_lower(fields.text("Proto"))
    for name in sorted(NON_IP_PROTOCOLS):
        reasons.check(pc.equal(proto, name), f"Argus {name} record is not an IP flow")
    start_us = _start_micros(fields.text("StartTime"))
    reasons.check(pc.is_null(start_us), "StartTime is neither YYYY/MM/DD hh:mm:ss[.ffffff] nor epoch seconds")
    duration_us = _decimal_micros(fields.text("Dur"))
    reasons.check(pc.is_null(duration_us), "Dur is not a non-negative number of seconds")
    counts = {}
    for name in ("TotPkts", "TotBytes", "SrcBytes", "SrcPkts"):
        text = fields.text(name)
        if text is not None:
            valid = pc.match_substring_regex(text, COUNT)
            reasons.check(pc.invert(valid), f"{name} is not a non-negative integer")
            counts[name] = pc.cast(pc.if_else(valid, text, pa.scalar(None, pa.string())), pa.int64())
    c_pkt = counts.get("SrcPkts", pa.nulls(fields.rows, pa.int64()))
    exceeds = pc.or_(pc.greater(counts["SrcBytes"], counts["TotBytes"]), pc.greater(c_pkt, counts["TotPkts"]))
    reasons.check(pc.fill_null(exceeds, False), "SrcBytes or SrcPkts exceeds its total")
    ports = {}
    for name in ("Sport", "Dport"):
        ports[name], malformed = _ports(fields.text(name), fields.rows)
        reasons.check(malformed, f"{name} is neither a decimal nor a 0x hexadecimal port")
        reasons.check(pc.fill_null(pc.greater(ports[name], 65535), False), f"{name} is above 65535")
    s_pkt = pc.subtract(counts["TotPkts"], c_pkt)
    state = fields.text("State")
    state, flags = _states(proto, state if state is not None else pa.array([""] * fields.rows), c_pkt, s_pkt)
    return {
        "c_ip": fields.text("SrcAddr"), "c_port": ports["Sport"], "s_ip": fields.text("DstAddr"),
        "s_port": ports["Dport"], "proto": proto, "c_pkt": c_pkt, "s_pkt": s_pkt, "c_bytes": counts["SrcBytes"],
        "s_bytes": pc.subtract(counts["TotBytes"], counts["SrcBytes"]), "tcp_flags": flags, "conn_state": state,
        "time_start": start_us, "time_end": pc.add(start_us, duration_us),
    }, reasons.why


def _start_micros(text: pa.Array) -> pa.Array:
    """Microseconds since the epoch of `YYYY/MM/DD hh:mm:ss[.f]` (UTC) or epoch seconds; null if neither."""
    parts = pc.extract_regex(text, START_TIME)
    dated = pc.strptime(pc.struct_field(parts, "date"), format="%Y/%m/%d %H:%M:%S", unit="s", error_is_null=True)
    epoch = pc.struct_field(parts, "epoch")
    seconds = pc.coalesce(pc.cast(dated, pa.int64()),
                          pc.cast(pc.if_else(pc.equal(epoch, ""), pa.scalar(None, pa.string()), epoch), pa.int64()))
    return pc.add(pc.multiply(seconds, 1_000_000), _fraction_micros(pc.struct_field(parts, "fraction")))


def _decimal_micros(text: pa.Array) -> pa.Array:
    """`12.345678` seconds as integer microseconds, exactly (no float rounding; digits past 6 cut); null if not one."""
    parts = pc.extract_regex(text, DECIMAL)
    whole = pc.cast(pc.struct_field(parts, "whole"), pa.int64())
    return pc.add(pc.multiply(whole, 1_000_000), _fraction_micros(pc.struct_field(parts, "fraction")))


def _fraction_micros(digits: pa.Array) -> pa.Array:
    return pc.cast(pc.utf8_slice_codeunits(pc.utf8_rpad(digits, 6, "0"), 0, 6), pa.int64())


def _ports(text: pa.Array | None, rows: int) -> tuple[pa.Array, np.ndarray]:
    """Port numbers (decimal, or `0x` hexadecimal as Argus prints ICMP type and code; empty: null), and
    where the text is neither."""
    if text is None:
        return pa.nulls(rows, pa.int32()), np.zeros(rows, bool)
    decimal = pc.match_substring_regex(text, DECIMAL_PORT).to_numpy(zero_copy_only=False)
    hexadecimal = pc.match_substring_regex(text, HEX_PORT).to_numpy(zero_copy_only=False)
    empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
    values = np.zeros(rows, np.int64)
    values[decimal] = pc.cast(text.filter(pa.array(decimal)), pa.int64()).to_numpy()
    values[hexadecimal] = [int(value, 16) for value in text.filter(pa.array(hexadecimal)).to_pylist()]
    known = decimal | hexadecimal
    return pa.array(values, pa.int64(), mask=~known), ~known & ~empty


def _states(proto: pa.Array, state: pa.Array, c_pkt: pa.Array, s_pkt: pa.Array) -> tuple[pa.Array, pa.Array]:
    """`flow_state` of every row, computed once per distinct (protocol, State, who sent packets)."""
    sent = [pc.fill_null(pc.cast(pc.cast(pc.greater(packets, 0), pa.int8()), pa.string()), "-")
            for packets in (c_pkt, s_pkt)]
    keys = pc.binary_join_element_wise(pc.fill_null(proto, ""), state, *sent, "\t")
    distinct = pc.unique(keys)
    found = [flow_state(*_state_arguments(key)) for key in distinct.to_pylist()]
    index = pc.index_in(keys, value_set=distinct)
    return (pc.take(pa.array([f[0] for f in found], pa.string()), index),
            pc.take(pa.array([f[1] for f in found], pa.string()), index))


def _state_arguments(key: str) -> tuple[str, str, int | None, int | None]:
    proto, state, client, server = key.split("\t")
    return proto, state, None if client == "-" else int(client), None if server == "-" else int(server)


def flow_state(proto: str, state: str, c_pkt: int | None, s_pkt: int | None) -> tuple[str | None, str | None]:
    """(Zeek conn_state, TCP flags of both sides) of an Argus State (see the module docstring)."""
    if state in ZEEK_STATES:
        return state, None
    flagged = FLAG_STATE.match(state)
    if flagged and proto == "tcp":
        client, server = (_flag_mask(letters) for letters in flagged.groups())
        state = capture_conn_state(TCP, summary_side(client, c_pkt), summary_side(server, s_pkt))
        return state, flag_letters(client | server)
    if proto == "tcp":
        return TCP_SUMMARY_STATES.get(state), None
    if proto == "udp" and s_pkt is None:
        return None, None
    return capture_conn_state(PROTOCOL_NUMBERS.get(proto, 0), 0, summary_side(0, s_pkt)), None


def _flag_mask(letters: str) -> int:
    mask = 0
    for letter in letters:
        mask |= FLAG_BITS[letter]
    return mask
