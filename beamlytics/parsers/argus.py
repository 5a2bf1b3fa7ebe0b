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
  sent left of it and the destination's right of it (the logical OR per direction; Argus
  mailing list, "Field 'state' from Argus (ra)", 2018-05-10). `conn_state` is then Zeek's, read
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

import datetime as dt
import re
from typing import Any, BinaryIO, Iterator, Mapping

from beamlytics.parsers.base import BATCH_ROWS, ParseItem, Read, Rejected, RowBuffer, excerpt
from beamlytics.parsers.lines import LineStart, broken_stream, line_reader
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
DATE_TIME = re.compile(r"^(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")
EPOCH = re.compile(r"^\d{1,12}(\.\d{1,9})?$")
COUNT = re.compile(r"^\d{1,18}$")
DURATION = re.compile(r"^\d{1,12}(\.\d{1,9})?$")
PORT = re.compile(r"^(?:\d{1,5}|0x[0-9A-Fa-f]{1,4})$")
_EPOCH_DAY = dt.date(1970, 1, 1)


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
    rows = RowBuffer("named_flows", FORMAT, source, batch_rows)
    header = header_columns(start.header) if start.header is not None else None
    separator = _separator(start.header) if start.header is not None else ","
    for block in reader:
        for offset, line in enumerate(block.lines.to_pylist()):
            position = block.first + offset
            columns = header_columns(line) if "SrcAddr" in line else None
            if columns is not None:
                header, separator = columns, _separator(line)
                rows.add_units()
            elif not line.strip():
                rows.add_units()
            elif header is None:
                yield Rejected(source, position, "data line before any Argus header line", excerpt(line), FORMAT)
            else:
                record = flow_record(line.split(separator), header)
                if isinstance(record, str):
                    yield Rejected(source, position, record, excerpt(line), FORMAT)
                else:
                    rows.append(position, **record)
                    rows.add_units()
            batch = rows.take()
            if batch:
                yield batch
        yield from broken_stream(block, FORMAT, source)
    batch = rows.flush()
    if batch:
        yield batch
    yield Read(source, reader.delivered)


def flow_record(fields: list[str], columns: Mapping[str, int]) -> dict[str, Any] | str:
    """One `named_flows` record from the fields of a data line, or why it cannot be one."""
    if len(fields) != len(columns):
        return f"expected {len(columns)} fields, as the Argus header says"
    value = {name: fields[index].strip() for name, index in columns.items()}
    missing = [name for name in REQUIRED_COLUMNS if name not in value]
    if missing:
        return f"Argus header lacks the column {missing[0]}"
    proto = value["Proto"].lower()
    if proto in NON_IP_PROTOCOLS:
        return f"Argus {proto} record is not an IP flow"
    start_us = start_micros(value["StartTime"])
    if start_us is None:
        return "StartTime is neither YYYY/MM/DD hh:mm:ss[.ffffff] nor epoch seconds"
    if not DURATION.match(value["Dur"]):
        return "Dur is not a non-negative number of seconds"
    counts = {}
    for name in ("TotPkts", "TotBytes", "SrcBytes", "SrcPkts"):
        text = value.get(name)
        if text is None:
            continue
        if not COUNT.match(text):
            return f"{name} is not a non-negative integer"
        counts[name] = int(text)
    if counts["SrcBytes"] > counts["TotBytes"] or counts.get("SrcPkts", 0) > counts["TotPkts"]:
        return "SrcBytes or SrcPkts exceeds its total"
    ports = {}
    for name in ("Sport", "Dport"):
        text = value.get(name, "")
        if text and not PORT.match(text):
            return f"{name} is neither a decimal nor a 0x hexadecimal port"
        ports[name] = int(text, 0) if text else None
        if ports[name] is not None and ports[name] > 65535:
            return f"{name} is above 65535"
    c_pkt = counts.get("SrcPkts")
    s_pkt = counts["TotPkts"] - c_pkt if c_pkt is not None else None
    state, flags = flow_state(proto, value.get("State", ""), c_pkt, s_pkt)
    return {
        "c_ip": value["SrcAddr"], "c_port": ports["Sport"], "s_ip": value["DstAddr"], "s_port": ports["Dport"],
        "proto": proto, "c_pkt": c_pkt, "s_pkt": s_pkt,
        "c_bytes": counts["SrcBytes"], "s_bytes": counts["TotBytes"] - counts["SrcBytes"],
        "tcp_flags": flags, "conn_state": state,
        "time_start": start_us, "time_end": start_us + decimal_micros(value["Dur"]),
    }


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


def start_micros(text: str) -> int | None:
    """Microseconds since the epoch of `YYYY/MM/DD hh:mm:ss[.f]` (UTC) or epoch seconds; None if neither."""
    if EPOCH.match(text):
        return decimal_micros(text)
    match = DATE_TIME.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        days = (dt.date(year, month, day) - _EPOCH_DAY).days
        dt.time(hour, minute, second)
    except ValueError:
        return None
    fraction = (match.group(7) or "").ljust(6, "0")[:6]
    return ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + int(fraction)


def decimal_micros(text: str) -> int:
    """`12.345678` seconds as integer microseconds, exactly (no float rounding); digits past 6 are cut."""
    whole, _, fraction = text.partition(".")
    return int(whole) * 1_000_000 + int(fraction.ljust(6, "0")[:6])
