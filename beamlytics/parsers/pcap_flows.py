"""A flow table over a capture's packets -> `named_flows` rows, like nfstream's flows.

A flow is the bidirectional 5-tuple (addresses, ports, IP protocol; ports are 0 for ICMP
and other portless protocols). Its client is the sender of its first packet, except that a
TCP flow first seen on a SYN+ACK belongs to the SYN's sender, the SYN+ACK's receiver.
Packets and bytes are counted each way at the IP level (IP total length, as nfstream's
`accounting_mode=1`). Like nfstream, a packet ends its flow and starts a new one when it
comes `idle_timeout` or more after the flow's last packet, or `active_timeout` or more
after its first; TCP FIN/RST do not end a flow (nfstream does not either).

`tcp_flags` lists the flags seen in either direction as letters in bit order:
F (FIN) S (SYN) R (RST) P (PSH) A (ACK) U (URG) E (ECE) C (CWR), e.g. "FSPA".

`conn_state` is Zeek's conn.log vocabulary, derived (`conn_state`) as Zeek's own
`Conn::conn_state` does from each side's final TCP state, with the states read off the
flags each side sent: RST -> reset, else FIN -> closed, else established once the SYN and
the SYN+ACK were both seen, else SYN sent, else "partial" (traffic without a SYN) or
inactive (sent nothing). Hence S0 (SYN, no reply), REJ (SYN answered by RST), S1
(established, open), SF (established and closed by both), S2/S3 (one side closed),
RSTO/RSTR (originator/responder reset an established or answered connection), RSTOS0,
RSTRH, SH, SHR (half-open variants) and OTH (mid-stream). UDP is SF with traffic both
ways, else S0; other protocols are OTH, as in Zeek. What packets cannot show (a SYN lost
by the capture, a state Zeek infers from sequence numbers) is not guessed.

A flow is named, in order of preference, by the server name of the TLS ClientHello that
opens its client's stream ("sni"), by the Host header of its first HTTP request
("http_host"), or by the query whose DNS answer (seen earlier in the capture) gave the
server address, asked by the same client if any, else by any client ("dns").

Flows are emitted when they expire (sorted by first packet within one expiry sweep) and
at the end of the capture (sorted by first packet), so the output order is deterministic.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

from beamlytics.parsers import dns_wire, pcap_http, tls
from beamlytics.parsers.base import BATCH_ROWS, Batch, Rejected, RowBuffer
from beamlytics.parsers.packets import Packet, TcpReassembler

SOURCE_TOOL = "pcap"
TABLE = "named_flows"

DEFAULT_ACTIVE_TIMEOUT = 1800  # seconds, nfstream's default
DEFAULT_IDLE_TIMEOUT = 120  # seconds, nfstream's default

TCP, UDP = 6, 17
_SYN = 0x02
_SYN_ACK = 0x12
_FLAG_LETTERS = "FSRPAUEC"  # bit 0 (FIN) .. bit 7 (CWR)
# Flags bitmask -> letters, computed once rather than per flow.
_FLAG_TEXT = tuple(
    "".join(letter for bit, letter in enumerate(_FLAG_LETTERS) if mask >> bit & 1) for mask in range(256)
)
_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 2: "igmp", 47: "gre", 50: "esp", 132: "sctp"}

# How much of a client's stream to look at for a ClientHello or request headers.
_PROBE_BYTES = 16 * 1024
_PROBE_PACKETS = 16
_DNS_PORT = 53
_ADDRESS_TYPES = (1, 28)  # A, AAAA


def proto_name(proto: int) -> str:
    return _PROTO_NAMES.get(proto, str(proto))


# Bits above the 8 TCP flags in a side's flag mask: it sent a packet, and one with payload.
_SENT, _DATA = 0x100, 0x200
_SENT_DATA = _SENT | _DATA
_FIN, _RST, _PSH, _ACK = 0x01, 0x04, 0x08, 0x10
# A side's final TCP state, as in Zeek's endpoint states.
_INACTIVE, _PARTIAL, _SYN_SENT, _ESTABLISHED, _CLOSED, _RESET = range(6)


def _endpoint_state(flags: int, handshake: bool) -> int:
    if flags & _RST:
        return _RESET
    if flags & _FIN:
        return _CLOSED
    if handshake:
        return _ESTABLISHED
    if flags & _SYN:
        return _SYN_SENT  # Zeek's SYN_SENT for the originator, SYN_ACK_SENT for the responder
    return _PARTIAL if flags & _SENT else _INACTIVE


def conn_state(proto: int, client_flags: int, server_flags: int) -> str:
    """Zeek's conn_state from the flags each side sent (see the module docstring)."""
    if proto == UDP:
        return "SF" if server_flags & _SENT else "S0"
    if proto != TCP:
        return "OTH"
    handshake = bool(client_flags & server_flags & _SYN)
    orig, resp = _endpoint_state(client_flags, handshake), _endpoint_state(server_flags, handshake)
    orig_inactive, resp_inactive = orig in (_INACTIVE, _PARTIAL), resp in (_INACTIVE, _PARTIAL)
    if resp == _RESET:
        no_data = not (client_flags | server_flags) & _DATA
        if orig == _SYN_SENT or (orig == _RESET and no_data):
            return "REJ"
        return "RSTRH" if orig_inactive else "RSTR"
    if orig == _RESET:
        if not resp_inactive:
            return "RSTO"
        # Zeek's history ^S[^HAFGIQ]*R: a SYN, then a reset with no ACK, FIN or data between.
        return "RSTOS0" if client_flags & _SYN and not client_flags & (_ACK | _FIN | _DATA) else "OTH"
    if orig == _CLOSED and resp == _CLOSED:
        return "SF"
    if orig == _CLOSED:
        return "SH" if resp_inactive else "S2"
    if resp == _CLOSED:
        return "SHR" if orig_inactive else "S3"
    if orig == _SYN_SENT and resp == _INACTIVE:
        return "S0"
    if orig == _ESTABLISHED and resp == _ESTABLISHED:
        return "S1"
    return "OTH"


def summary_side(flags: int, packets: int | None) -> int:
    """A side's mask for `conn_state` from a flow summary's TCP flags and packet count (Argus, Suricata).

    It sent if it sent packets or flags. Summaries keep no per-side payload count: PSH, set on the
    segments that carry data, stands in for it.
    """
    return flags | (_SENT if packets or flags else 0) | (_DATA if flags & _PSH else 0)


def flag_letters(flags: int) -> str:
    """TCP flags as letters in bit order, e.g. 0x13 -> "FSA"."""
    return _FLAG_TEXT[flags & 0xFF]


class Flow:
    """Mutable state of one flow; slots keep the per-packet updates cheap."""

    __slots__ = (
        "c_ip", "c_port", "s_ip", "s_port", "proto", "first_number", "first_us", "last_us",
        "c_pkt", "s_pkt", "c_bytes", "s_bytes", "c_flags", "s_flags", "name", "name_source", "dns_name",
        "probe", "probe_packets", "keys", "metrics",
    )

    def __init__(self, packet: Packet, client_sent: bool):
        if client_sent:
            self.c_ip, self.c_port, self.s_ip, self.s_port = packet.src, packet.sport, packet.dst, packet.dport
        else:
            self.c_ip, self.c_port, self.s_ip, self.s_port = packet.dst, packet.dport, packet.src, packet.sport
        self.proto = packet.proto
        self.first_number = packet.number
        self.first_us = self.last_us = packet.ts_us
        self.c_pkt = self.s_pkt = self.c_bytes = self.s_bytes = 0
        self.c_flags = self.s_flags = 0  # TCP flags each side sent, with _SENT and _DATA
        self.name = self.name_source = self.dns_name = None
        self.probe: bytes | None = b"" if packet.proto == TCP else None  # client stream bytes so far
        self.probe_packets = 0
        self.keys: tuple = ()
        self.metrics: list | None = None  # per-flow state of FlowTable.metrics, in their order

    def row(self) -> dict[str, Any]:
        name, source = self.name, self.name_source
        if name is None and self.dns_name is not None:
            name, source = self.dns_name, "dns"
        return {
            "c_ip": self.c_ip, "c_port": self.c_port, "s_ip": self.s_ip, "s_port": self.s_port,
            "proto": proto_name(self.proto), "name": name, "name_source": source,
            "c_pkt": self.c_pkt, "s_pkt": self.s_pkt, "c_bytes": self.c_bytes, "s_bytes": self.s_bytes,
            "tcp_flags": _FLAG_TEXT[(self.c_flags | self.s_flags) & 0xFF] if self.proto == TCP else None,
            "conn_state": conn_state(self.proto, self.c_flags, self.s_flags),
            "time_start": self.first_us, "time_end": self.last_us,
        }


def name_from_client_stream(data: bytes) -> tuple[str | None, str | None, bool]:
    """(name, name_source, decided) from the first bytes a client sent on a TCP connection.

    `decided` is False while more bytes could still reveal a name.
    """
    if tls.starts_like_handshake(data):
        if tls.client_hello_incomplete(data):
            return None, None, False
        sni = tls.client_hello_sni(data)
        return sni, ("sni" if sni else None), True
    if pcap_http.may_be_request_start(data):
        host = pcap_http.request_host(data)
        if host:
            return host, "http_host", True
        headers_done = b"\r\n\r\n" in data or b"\n\n" in data
        return None, None, headers_done
    return None, None, True


class DnsNames:
    """Server addresses learnt from DNS answers: (client, address) -> name and address -> name."""

    def __init__(self) -> None:
        self.by_client: dict[tuple[str, str], str] = {}
        self.by_address: dict[str, str] = {}

    def learn(self, packet: Packet) -> None:
        try:
            message = dns_wire.decode(packet.payload)
        except ValueError:
            return  # not our business here: the dns table reports bad DNS
        if not message.is_response or not message.questions:
            return
        query = message.questions[0].name
        for answer in message.answers:
            if answer.rtype in _ADDRESS_TYPES:
                self.by_client[(packet.dst, answer.data)] = query
                self.by_address[answer.data] = query

    def name(self, client: str, server: str) -> str | None:
        found = self.by_client.get((client, server))
        return found if found is not None else self.by_address.get(server)


class FlowTable:
    """Bidirectional flows keyed by both directions' 5-tuples, with nfstream's timeouts."""

    def __init__(self, active_timeout: float, idle_timeout: float, metrics: Sequence[Any] = ()):
        self.metrics = tuple(metrics)  # flow_stats.FlowMetric objects, told of every packet of every flow
        self.active_us = int(active_timeout * 1_000_000)
        self.idle_us = int(idle_timeout * 1_000_000)
        # An expiry sweep every quarter idle timeout bounds memory without scanning per packet.
        self.sweep_us = max(self.idle_us // 4, 1000)
        self.next_sweep_us = 0  # capture times are never negative: the first packet sweeps (an empty table)
        self.flows: dict[tuple, tuple[Flow, bool]] = {}  # directional key -> (flow, sent by client)
        self.dns = DnsNames()
        self.streams = TcpReassembler()

    def add(self, packet: Packet, expired: list[Flow]) -> None:
        """Account `packet` to its flow; flows that end on the way are appended to `expired`."""
        # Packet fields and table attributes are read into locals once: this runs per packet.
        ts, sport, proto = packet.ts_us, packet.sport, packet.proto
        payload, tcp_flags = packet.payload, packet.tcp_flags
        if ts >= self.next_sweep_us:
            self._sweep(ts, expired)
        key = (packet.src, sport, packet.dst, packet.dport, proto)
        entry = self.flows.get(key)
        metrics = self.metrics
        if entry is not None:
            flow, from_client = entry
            if ts - flow.last_us >= self.idle_us or ts - flow.first_us >= self.active_us:
                self._remove(flow)
                expired.append(flow)
                entry = None
        if entry is None:
            flow, from_client = self._new(packet, key)
            if metrics:
                flow.metrics = [metric.on_init(packet, from_client) for metric in metrics]
        elif metrics:
            for metric, state in zip(metrics, flow.metrics):
                metric.on_update(state, packet, from_client)
        sent = tcp_flags | (_SENT_DATA if payload else _SENT)
        if from_client:
            flow.c_pkt += 1
            flow.c_bytes += packet.ip_bytes
            flow.c_flags |= sent
            # The SYN too, so that the reassembler knows where the client's stream starts.
            if flow.probe is not None and (payload or tcp_flags & _SYN):
                self._probe(flow, packet)
        else:
            flow.s_pkt += 1
            flow.s_bytes += packet.ip_bytes
            flow.s_flags |= sent
        if ts > flow.last_us:
            flow.last_us = ts
        if sport == _DNS_PORT and proto == UDP and payload:
            self.dns.learn(packet)

    def _new(self, packet: Packet, key: tuple) -> tuple[Flow, bool]:
        from_client = not (packet.proto == TCP and packet.tcp_flags & _SYN_ACK == _SYN_ACK)
        flow = Flow(packet, from_client)
        flow.dns_name = self.dns.name(flow.c_ip, flow.s_ip)
        reverse = (packet.dst, packet.dport, packet.src, packet.sport, packet.proto)
        flow.keys = (key, reverse)
        self.flows[key] = (flow, from_client)
        if reverse != key:  # a host talking to itself on one port has one key only
            self.flows[reverse] = (flow, not from_client)
        return flow, from_client

    def _probe(self, flow: Flow, packet: Packet) -> None:
        """Look at the client's first stream bytes for a ClientHello or an HTTP request."""
        data = self.streams.feed(packet)
        if self.streams.gap:
            flow.probe = None  # the hello or request is cut by a hole: what it named so far stands
            return
        if not data:
            return
        flow.probe += data
        flow.probe_packets += 1
        name, source, decided = name_from_client_stream(flow.probe)
        if name is not None:
            flow.name, flow.name_source = name, source
        if decided or len(flow.probe) >= _PROBE_BYTES or flow.probe_packets >= _PROBE_PACKETS:
            flow.probe = None

    def _remove(self, flow: Flow) -> None:
        for key in flow.keys:
            self.flows.pop(key, None)

    def _sweep(self, now_us: int, expired: list[Flow]) -> None:
        self.next_sweep_us = now_us + self.sweep_us
        idle = {id(flow): flow for flow, _ in self.flows.values() if now_us - flow.last_us >= self.idle_us}
        for flow in sorted(idle.values(), key=_first_packet):
            self._remove(flow)
            expired.append(flow)

    def drain(self) -> list[Flow]:
        """All flows still open, by first packet: the capture has ended."""
        remaining = {id(flow): flow for flow, _ in self.flows.values()}
        self.flows.clear()
        return sorted(remaining.values(), key=_first_packet)


def _first_packet(flow: Flow) -> int:
    return flow.first_number


def flows_from_packets(
    source: str,
    items: Iterable[Packet | Rejected | None],
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[Batch | Rejected]:
    """`named_flows` batches from `packets.iter_packets` items; Rejected items pass through.

    Options: `active_timeout` and `idle_timeout` in seconds (nfstream's defaults).
    """
    buffer = RowBuffer(TABLE, SOURCE_TOOL, source, batch_rows)
    for item in expired_flows(items, flow_table(options)):
        if item.__class__ is list:
            yield from _emit(buffer, item)
        elif item.__class__ is int:
            buffer.add_units(item)
        else:
            yield item
    last = buffer.flush()
    if last is not None:
        yield last


def flow_table(options: Mapping[str, Any] | None, metrics: Sequence[Any] = ()) -> FlowTable:
    options = options or {}
    return FlowTable(
        float(options.get("active_timeout", DEFAULT_ACTIVE_TIMEOUT)),
        float(options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)),
        metrics,
    )


def expired_flows(items: Iterable[Packet | Rejected | None], table: FlowTable) -> Iterator[list[Flow] | int | Rejected]:
    """The flows of `items` as they end (lists, in emission order), each list preceded by the count
    of input units read up to it; Rejected items pass through. The end of input ends every flow."""
    expired: list[Flow] = []
    units = 0
    add = table.add
    for item in items:
        if item.__class__ is Packet:
            units += 1
            add(item, expired)
            if expired:
                yield units
                units = 0
                yield expired
                expired = []
        elif item is None:  # non-IP frame or fragment held for reassembly: read fine, no flow
            units += 1
        else:
            yield item
    yield units
    expired.extend(table.drain())
    yield expired


def _emit(buffer: RowBuffer, expired: list[Flow]) -> Iterator[Batch]:
    for flow in expired:
        buffer.append(flow.first_number, **flow.row())
        batch = buffer.take()
        if batch is not None:
            yield batch
