"""The `dns` table from captures: one row per DNS query with its response.

DNS is recognised by port (53 DNS, 5353 mDNS, 5355 LLMNR, either side) over UDP and TCP;
over TCP the byte stream is reassembled and cut at the 2-byte length prefixes, so several
messages in one segment and one message across segments both work.

Queries and responses are matched on (client, client port, server, server port, proto,
transaction id) and the query name, oldest query first. What ends up in a row:

* answered query: the query's packet is `source_pos` and gives `req_time`; the response
  gives `resp_time`, `resp_code`, `flags` (the response's header flags) and the answers;
* unanswered query (no response within `dns_timeout` seconds of capture time, default 30,
  or by the end of the capture): response columns null, `flags` are the query's;
* response whose query was not seen (capture started late, or mDNS answers sent to a
  multicast group rather than back to the asker): one row from the response alone, with
  `req_time` = the response's time, so the row still falls in the right window, and
  `resp_time` null because no latency can be measured. Such rows are the ones with a
  `resp_code` but no `resp_time`.

A packet on a DNS port whose message does not decode becomes a `Rejected` (position =
packet number); over TCP, the packet that completed the bad message is the one rejected.
Every capture record is counted once: as a unit of some Batch, or as a Rejected.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from beamlytics import schemas
from beamlytics.parsers import dns_wire
from beamlytics.parsers.base import BATCH_ROWS, Batch, Rejected, RowBuffer, excerpt
from beamlytics.parsers.packets import FIN, RST, SOURCE_TOOL, SYN, TCP, UDP, Packet, TcpReassembler, content_gap

DNS_PORTS = frozenset((53, 5353, 5355))
DEFAULT_TIMEOUT_S = 30
# Unanswered queries kept waiting at most; beyond that the oldest is written out as unanswered.
MAX_PENDING = 200_000
_PROTO_NAMES = {TCP: "tcp", UDP: "udp"}


@dataclass(slots=True)
class _Query:
    packet: Packet
    message: dns_wire.DnsMessage
    name: str | None
    answered: bool = False


def dns_from_packets(
    source: str,
    items: Iterable[Packet | Rejected | None],
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[Batch | Rejected]:
    """`Batch`es of `schemas.DNS` rows and `Rejected`s from the items of `iter_packets`."""
    timeout_us = int(float((options or {}).get("dns_timeout", DEFAULT_TIMEOUT_S)) * 1_000_000)
    rows = RowBuffer("dns", SOURCE_TOOL, source, batch_rows)
    matcher = _Matcher(rows, timeout_us)
    payloads = DnsPayloads()
    for item in items:
        if item is None:
            rows.add_units()
        elif isinstance(item, Rejected):
            yield item
        else:
            matcher.expire(item.ts_us)
            rejected = _handle_packet(source, item, matcher, payloads)
            if payloads.gap:
                yield content_gap(source, item, payloads.gap, "DNS over TCP stream (rest of it skipped)")
            if rejected is None:
                rows.add_units()
            else:
                yield rejected
        batch = rows.take()
        if batch is not None:
            yield batch
    for _ in matcher.drain():
        batch = rows.take()
        if batch is not None:
            yield batch
    batch = rows.flush()
    if batch is not None:
        yield batch


def _handle_packet(source: str, packet: Packet, matcher: "_Matcher", payloads: "DnsPayloads") -> Rejected | None:
    problems = []
    for raw in payloads.feed(packet):
        try:
            message = dns_wire.decode(raw)
        except ValueError as error:
            problems.append((str(error), raw))
            continue
        matcher.add(packet, message)
    if not problems:
        return None
    reason, raw = problems[0]
    return Rejected(source, packet.number, f"undecodable DNS message: {reason}", excerpt(raw.hex()), SOURCE_TOOL)


class DnsPayloads:
    """The raw DNS messages each packet completes: its payload for UDP on a DNS port; for
    TCP, whole messages cut from the reassembled stream at their 2-byte length prefixes
    (RFC 1035 4.2.2), so a segment may complete none, one or several.

    After a content gap the length prefixes can no longer be found: that direction is
    skipped until a new connection (SYN) starts on it, and `gap` tells the caller how many
    bytes were lost before the packet just fed.
    """

    def __init__(self) -> None:
        self.reassembler = TcpReassembler()
        self.buffers: dict[tuple, bytearray] = {}
        self.lost: dict[tuple, None] = {}  # directions skipped since a content gap, oldest first
        self.gap = 0

    def feed(self, packet: Packet) -> list[bytes]:
        self.gap = 0
        if packet.sport not in DNS_PORTS and packet.dport not in DNS_PORTS:
            return []
        if packet.proto == UDP:
            return [packet.payload]
        if packet.proto != TCP:
            return []
        key = (packet.src, packet.sport, packet.dst, packet.dport)
        data = self.reassembler.feed(packet)
        if packet.tcp_flags & SYN:
            self.lost.pop(key, None)
        if self.reassembler.gap and key not in self.lost:
            self.gap = self.reassembler.gap
            self.lost[key] = None
            self.buffers.pop(key, None)
            if len(self.lost) > MAX_PENDING:
                del self.lost[next(iter(self.lost))]
        if key in self.lost:
            if packet.tcp_flags & (FIN | RST):
                del self.lost[key]
            return []
        buffer = self.buffers.setdefault(key, bytearray())
        buffer += data
        messages = []
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            messages.append(bytes(buffer[2 : 2 + length]))
            del buffer[: 2 + length]
        if packet.tcp_flags & (FIN | RST) or not buffer:
            del self.buffers[key]
        elif len(self.buffers) > MAX_PENDING:
            del self.buffers[next(iter(self.buffers))]
        return messages


class _Matcher:
    """Pairs queries with responses and writes one row per query (or lone response)."""

    def __init__(self, rows: RowBuffer, timeout_us: int):
        self.rows = rows
        self.timeout_us = timeout_us
        self.pending: dict[tuple, list[_Query]] = {}
        self.by_age: deque[tuple[tuple, _Query]] = deque()

    def add(self, packet: Packet, message: dns_wire.DnsMessage) -> None:
        name = message.questions[0].name if message.questions else None
        if message.is_response:
            key = (packet.dst, packet.dport, packet.src, packet.sport, packet.proto, message.trans_id)
            query = self._take(key, name)
            self._write(query, packet, message)
            return
        key = (packet.src, packet.sport, packet.dst, packet.dport, packet.proto, message.trans_id)
        query = _Query(packet, message, name)
        self.pending.setdefault(key, []).append(query)
        self.by_age.append((key, query))
        if len(self.by_age) > MAX_PENDING:
            self._expire_oldest()

    def _take(self, key: tuple, name: str | None) -> _Query | None:
        waiting = self.pending.get(key)
        if not waiting:
            return None
        for index, query in enumerate(waiting):
            # A response without a question (allowed for some opcodes) matches on the id alone.
            if name is None or query.name is None or query.name.lower() == name.lower():
                del waiting[index]
                if not waiting:
                    del self.pending[key]
                query.answered = True
                return query
        return None

    def expire(self, now_us: int) -> None:
        """Write out queries that have waited longer than the timeout."""
        by_age = self.by_age
        while by_age and (by_age[0][1].answered or by_age[0][1].packet.ts_us < now_us - self.timeout_us):
            self._expire_oldest()

    def drain(self) -> Iterator[None]:
        """Write out every query still waiting (end of capture), one step at a time so the
        caller can cut batches in between."""
        while self.by_age:
            self._expire_oldest()
            yield None

    def _expire_oldest(self) -> None:
        key, query = self.by_age.popleft()
        if query.answered:
            return
        waiting = self.pending[key]
        waiting.remove(query)
        if not waiting:
            del self.pending[key]
        self._write(query, None, None)

    def _write(self, query: _Query | None, response: Packet | None, answer: dns_wire.DnsMessage | None) -> None:
        """One row from a query and/or its response (at least one of the two is given)."""
        if query is not None:
            first, asked = query.packet, query.message
            client, server = (first.src, first.sport), (first.dst, first.dport)
        else:
            first, asked = response, answer
            client, server = (first.dst, first.dport), (first.src, first.sport)
        header = answer if answer is not None else asked
        question = _first_question(asked) or (_first_question(answer) if answer is not None else None)
        values: dict[str, Any] = {
            "c_ip": client[0],
            "c_port": client[1],
            "s_ip": server[0],
            "s_port": server[1],
            "proto": _PROTO_NAMES[first.proto],
            "trans_id": asked.trans_id,
            "flags": schemas.flags_string(header.flag_names()),
            "req_time": first.ts_us,
        }
        if question is not None:
            values["query"] = question.name
            values["req_class"] = schemas.class_name(question.qclass)
            values["req_type"] = schemas.type_name(question.qtype)
        if answer is not None:
            values["resp_code"] = schemas.rcode_name(answer.rcode)
            values["answers"] = [record.data for record in answer.answers]
            values["answer_types"] = [schemas.type_name(record.rtype) for record in answer.answers]
            values["answer_ttls"] = [record.ttl for record in answer.answers]
            if query is not None:
                values["resp_time"] = response.ts_us
        self.rows.append(first.number, **values)


def _first_question(message: dns_wire.DnsMessage) -> dns_wire.Question | None:
    return message.questions[0] if message.questions else None
