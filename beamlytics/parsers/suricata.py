"""Suricata connector: the `flow` events of an EVE JSON log (`eve.json`) -> `named_flows`.

EVE writes one JSON object per line; `event_type` says what it is. A `flow` event is one
bidirectional flow, logged when Suricata ends it (timeout, or at shutdown), so after the
app-layer events of the same flow (same `flow_id`). What the fields mean (Suricata's "EVE
JSON Format" documentation):

* `src_ip`/`src_port` is the flow's client (the side that sent its first packet),
  `dest_ip`/`dest_port` its server; `proto` (`TCP`, `UDP`, `ICMP`, ...) is lower-cased.
  ICMP flows carry `icmp_type`/`icmp_code` instead of ports: they are left null.
* `flow.pkts_toserver`/`bytes_toserver` are the client's, `pkts_toclient`/`bytes_toclient` the
  server's (bytes at the IP level, headers included, as the capture flows count them);
  `flow.start`/`flow.end` are ISO 8601 with a zone offset (without one: UTC).
* `tcp.tcp_flags_ts`/`tcp_flags_tc` are the TCP flags seen to the server and to the client, as a
  hex byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...). `conn_state` is Zeek's, read
  off them exactly as for capture flows (`pcap_flows.conn_state`; PSH stands in for "sent
  payload"); `tcp_flags` their union. UDP is SF with packets both ways, else S0; other
  protocols OTH, as in Zeek. A TCP flow without `tcp` flags has a null `conn_state`.
* A flow is named by the TLS SNI (`tls.sni`, "sni"), else the HTTP Host (`http.hostname`,
  "http_host"), of an app-layer event logged before it with the same `flow_id`. Names wait
  for their flow event in a table of at most `MAX_PENDING_NAMES` flows (the oldest goes first),
  so a log that never closes its flows cannot grow memory without bound.
* Every other event type (`alert`, `dns`, `fileinfo`, `stats`, `netflow` - one direction of a
  flow, which the `flow` event already counts - ...) is read and gives no row. A line that is
  not a JSON object, or a flow event without its addresses, counters or times, is rejected.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from typing import Any, BinaryIO, Iterator, Mapping

from beamlytics.parsers.base import BATCH_ROWS, ParseItem, Read, Rejected, RowBuffer, excerpt
from beamlytics.parsers.lines import LineStart, broken_stream, line_reader
from beamlytics.parsers.pcap_flows import TCP, UDP, conn_state as capture_conn_state, flag_letters, summary_side

FORMAT = "suricata"
KIND = "eve"
TABLES = {KIND: frozenset({"named_flows"})}
MAX_PENDING_NAMES = 100_000
PROTOCOL_NUMBERS = {"tcp": TCP, "udp": UDP}
PORTLESS = frozenset({"icmp", "ipv6-icmp", "icmpv6"})
COUNTERS = ("pkts_toserver", "pkts_toclient", "bytes_toserver", "bytes_toclient")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MICROSECOND = dt.timedelta(microseconds=1)


def sniff(name: str, head: bytes) -> str | None:
    first = head.split(b"\n", 1)[0]
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):
        return None
    return KIND if isinstance(record, dict) and "event_type" in record and "timestamp" in record else None


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
        raise ValueError(f"suricata {kind!r} does not feed table {table!r}")
    reader = line_reader(stream, options, start)
    rows = RowBuffer("named_flows", FORMAT, source, batch_rows)
    names = FlowNames()
    for block in reader:
        for offset, line in enumerate(block.lines.to_pylist()):
            position = block.first + offset
            reason = _read_line(line, position, rows, names)
            if reason:
                yield Rejected(source, position, reason, excerpt(line), FORMAT)
            else:
                rows.add_units()
            batch = rows.take()
            if batch:
                yield batch
        yield from broken_stream(block, FORMAT, source)
    batch = rows.flush()
    if batch:
        yield batch
    yield Read(source, reader.delivered)


def _read_line(line: str, position: int, rows: RowBuffer, names: "FlowNames") -> str | None:
    """Read one line into `rows` or `names`; why it was rejected, or None."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return "not a JSON object"
    if not isinstance(event, dict):
        return "not a JSON object"
    if event.get("event_type") != "flow":
        names.note(event)
        return None
    record = flow_record(event)
    if isinstance(record, str):
        return record
    name, name_source = names.take(event.get("flow_id"))
    rows.append(position, **record, name=name, name_source=name_source)
    return None


class FlowNames:
    """flow_id -> (name, source) from app-layer events, held until the flow's own event."""

    def __init__(self, limit: int = MAX_PENDING_NAMES):
        self.limit = limit
        self._names: OrderedDict[Any, tuple[str, str]] = OrderedDict()

    def note(self, event: dict) -> None:
        flow_id = event.get("flow_id")
        if not isinstance(flow_id, int):
            return
        name = _text(_field(event, "tls", "sni"))
        found = (name, "sni") if name else None
        host = _text(_field(event, "http", "hostname"))
        if found is None and host:
            found = (host, "http_host")
        if found is None or self._names.get(flow_id, ("", ""))[1] == "sni":
            return  # the SNI, once seen, outranks a Host header
        self._names[flow_id] = found
        if len(self._names) > self.limit:
            self._names.popitem(last=False)

    def take(self, flow_id: Any) -> tuple[str | None, str | None]:
        return self._names.pop(flow_id, (None, None)) if isinstance(flow_id, int) else (None, None)


def flow_record(event: dict) -> dict[str, Any] | str:
    """The `named_flows` columns of a `flow` event, or why it cannot be one."""
    flow = event.get("flow")
    if not isinstance(flow, dict):
        return "flow event without its flow object"
    c_ip, s_ip, proto = (_text(event.get(name)) for name in ("src_ip", "dest_ip", "proto"))
    if not (c_ip and s_ip and proto):
        return "flow event without src_ip, dest_ip or proto"
    proto = proto.lower()
    counts = [flow.get(name) for name in COUNTERS]
    if not all(_count(value) for value in counts):
        return "flow counters (pkts/bytes to server/client) missing or not non-negative integers"
    start_us, end_us = _micros(flow.get("start")), _micros(flow.get("end"))
    if start_us is None or end_us is None:
        return "flow start or end is not an ISO 8601 time"
    ports = [None if proto in PORTLESS else event.get(name) for name in ("src_port", "dest_port")]
    if not all(port is None or (_count(port) and port <= 65535) for port in ports):
        return "src_port or dest_port is not a port number"
    c_pkt, s_pkt, c_bytes, s_bytes = counts
    state, flags = flow_state(proto, event.get("tcp"), c_pkt, s_pkt)
    return {"c_ip": c_ip, "c_port": ports[0], "s_ip": s_ip, "s_port": ports[1], "proto": proto,
            "c_pkt": c_pkt, "s_pkt": s_pkt, "c_bytes": c_bytes, "s_bytes": s_bytes,
            "tcp_flags": flags, "conn_state": state, "time_start": start_us, "time_end": end_us}


def flow_state(proto: str, tcp: Any, c_pkt: int, s_pkt: int) -> tuple[str | None, str | None]:
    """(Zeek conn_state, TCP flags of both sides) of a flow event (see the module docstring)."""
    if proto != "tcp":
        return capture_conn_state(PROTOCOL_NUMBERS.get(proto, 0), 0, summary_side(0, s_pkt)), None
    sides = [_hex_byte(_field({"tcp": tcp}, "tcp", name)) for name in ("tcp_flags_ts", "tcp_flags_tc")]
    if None in sides:
        return None, None
    client, server = sides
    state = capture_conn_state(TCP, summary_side(client, c_pkt), summary_side(server, s_pkt))
    return state, flag_letters(client | server)


def _field(event: dict, section: str, name: str) -> Any:
    part = event.get(section)
    return part.get(name) if isinstance(part, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def _hex_byte(value: Any) -> int | None:
    if not isinstance(value, str) or not 1 <= len(value) <= 2:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def _micros(value: Any) -> int | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - _EPOCH) // _ONE_MICROSECOND
