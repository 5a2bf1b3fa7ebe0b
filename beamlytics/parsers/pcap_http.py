"""HTTP/1.x requests and responses from the TCP streams of a capture -> `http` rows.

Each TCP connection's two byte streams (reassembled by `packets.TcpReassembler`) go
through a small incremental HTTP/1.x message parser: header block, then a body skipped by
Content-Length, chunked transfer coding, or connection close. Responses are paired with
requests in order on each connection (HTTP/1.1 pipelining answers in order), giving one
`schemas.HTTP` row per request; a request whose response never came is kept with the
response columns null, and a response with no request (capture started mid-connection)
is kept with the request columns null.

A connection is HTTP when its client's first line is an HTTP request line; other TCP
traffic (TLS, SSH, ...) is silently ignored. Bytes on an HTTP connection
that do not parse give one `Rejected` (counted as the packet that brought them); that
direction then skips data up to the next line that starts like a message.

Bytes the capture lost (a content gap, see `packets.TcpReassembler`) are handled like
Zeek's HTTP analyzer does: a gap inside a body of known length, or of one read until
close, is skipped as body bytes and the message stays whole (its body length counts
them); a gap that swallows a message start costs that one
message (its request is kept without response, or a response is kept without its lost
request) and parsing resumes at the next start line after the hole. Each gap is a dead
letter "HTTP server stream: content gap of N bytes" (or client) at the packet after it,
with units 0: the packets themselves were read fine and count in the batches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from beamlytics.parsers import packets
from beamlytics.parsers.base import BATCH_ROWS, Batch, Rejected, RowBuffer, excerpt

SOURCE_TOOL = "pcap"
TABLE = "http"

# Longest header block accepted; real ones are a few KiB, so more is garbage or an attack.
MAX_HEADER_BYTES = 64 * 1024
# How much of a client's first bytes to wait for before deciding the connection is not HTTP.
MAX_FIRST_LINE = 8 * 1024

# The URI is the first token after the method, as tshark reads it, even when an attack puts
# spaces in it; HTTP/0.9-style lines without a version need a path-like URI, so that SMTP's
# "EHLO host" or FTP's "USER name" are not taken for HTTP.
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]{0,31}) (\S+)(?: [^\r\n]*)? HTTP/\d\.\d\Z")
_VERSIONLESS_REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]{0,31}) (/\S*)\Z")
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: .*)?\Z", re.S)
_METHOD_PREFIX = re.compile(rb"[A-Z][A-Z_-]{0,31}( |\Z)")
# Where a message may start again after garbage or a gap: a start line at a line start.
_REQUEST_RESTART = re.compile(rb"(?:\A|\n)([A-Z][A-Z_-]{0,31} \S+ HTTP/\d\.\d\r?\n)")
_RESPONSE_RESTART = re.compile(rb"(?:\A|\n)(HTTP/\d\.\d \d{3})")
_CHUNK_SIZE = re.compile(rb"\s*([0-9A-Fa-f]{1,16})\s*(?:;.*)?\Z", re.S)

_REQUEST_HEADERS = {
    b"host": "host",
    b"referer": "referrer",
    b"user-agent": "user_agent",
    b"cookie": "req_cookie",
}
_RESPONSE_HEADERS = {
    b"set-cookie": "set_cookie",
    b"content-type": "content_type",
    b"content-range": "content_range",
    b"server": "server",
}


class HttpError(ValueError):
    """Bytes at a message boundary of an HTTP connection that are not HTTP/1.x."""


class NotHttp(ValueError):
    """The client's first line is no HTTP request line: the connection speaks something else."""


@dataclass
class Message:
    """One parsed HTTP message: start line, the headers we keep, and its body length."""

    packet: int  # number of the packet holding its first byte
    ts_us: int
    method: str | None = None  # requests
    uri: str | None = None
    status: int | None = None  # responses
    fields: dict[str, str] = field(default_factory=dict)  # schema column -> header value
    body_len: int = 0
    complete: bool = False
    simple: bool = False  # an HTTP/0.9-style request line, without version


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _request_line(line: bytes) -> re.Match | None:
    return _REQUEST_LINE.match(line) or _VERSIONLESS_REQUEST_LINE.match(line)


def _split_header_block(block: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = block.split(b"\n")
    start = lines[0].rstrip(b"\r")
    headers = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise HttpError(f"malformed header line {_text(line[:60])!r}")
        headers.append((name.lower(), value.strip()))
    return start, headers


class MessageStream:
    """Incremental parser of one direction of an HTTP/1.x connection.

    `feed` takes the next contiguous stream bytes and returns the messages whose header
    block completed; a message's `body_len` and `complete` keep updating as its body
    arrives. A response's framing depends on the request it answers (HEAD), so the
    response side reads `requests_sent` (method and whether it was an HTTP/0.9-style
    request, oldest unanswered first): such a request is answered by a bare body.
    """

    def __init__(self, is_request: bool, requests_sent: list[tuple[str, bool]] | None = None):
        self.is_request = is_request
        self.requests_sent = requests_sent if requests_sent is not None else []
        self._buffer = bytearray()
        self._current: Message | None = None  # message whose body is being read
        self._body_left = 0  # bytes of the current body (or chunk) still to skip
        self._mode = "headers"  # headers | length | chunk_size | chunk_data | chunk_crlf | trailer | close
        self._start_packet = 0
        self._start_ts = 0
        self.messages = 0  # header blocks parsed so far
        self.resyncing = False  # after garbage or a gap: skip data up to a start line
        self.failure: str | None = None  # why the last `feed` stopped at garbage

    def feed(self, data: bytes, packet: int, ts_us: int) -> list[Message]:
        """Consume `data`, returning the messages whose headers completed.

        At bytes that are not HTTP, `failure` says why; the stream then drops what it held
        and skips data up to the next line that starts like a message. NotHttp is raised
        instead when the very first request line is not one.
        """
        self.failure = None
        found: list[Message] = []
        if self.resyncing:
            match = (_REQUEST_RESTART if self.is_request else _RESPONSE_RESTART).search(data)
            if match is None:
                return found
            data = data[match.start(1) :]
            self.resyncing = False
        try:
            self._consume(data, packet, ts_us, found)
        except HttpError as error:
            self.failure = str(error)
            self._lose_place()
        return found

    def _lose_place(self) -> None:
        self._buffer.clear()
        self._current, self._mode, self._body_left = None, "headers", 0
        self.resyncing = True

    def skip_gap(self, size: int) -> bool:
        """`size` bytes of this direction were lost; True when they held the start of a
        message we will never see (its headers lost, wholly or in part)."""
        if self.resyncing:
            return False  # already looking for a start line: nothing more is known lost
        mode = self._mode
        if mode == "close":
            self._current.body_len += size
            return False
        if mode in ("length", "chunk_data") and size < self._body_left:
            self._current.body_len += size
            self._body_left -= size
            return False
        lost_start = mode == "headers"
        if mode == "length":
            self._current.body_len += self._body_left
            lost_start = size > self._body_left  # the rest of the hole was the next message's start
        if self._current is not None:
            self._current.complete = True  # what we saw of it is all we will see
        self._lose_place()
        return lost_start

    def _consume(self, data: bytes, packet: int, ts_us: int, found: list[Message]) -> None:
        if not self._buffer and self._mode == "headers":
            self._start_packet, self._start_ts = packet, ts_us
        self._buffer += data
        while self._buffer:
            if self._mode == "headers":
                message = self._read_headers()
                if message is None:
                    break
                found.append(message)
                if self._buffer:
                    self._start_packet, self._start_ts = packet, ts_us
            elif not self._read_body():
                break
            if self._mode == "headers" and self._buffer:
                self._start_packet, self._start_ts = packet, ts_us

    def finish(self) -> None:
        """The connection ended: a body read until close is now complete."""
        if self._current is not None and self._mode == "close":
            self._current.complete = True
            self._current = None

    def _read_headers(self) -> Message | None:
        buffer = self._buffer
        # Tolerate stray CRLFs between messages (RFC 7230 3.5).
        while buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
            del buffer[: 2 if buffer[:1] == b"\r" else 1]
        if not buffer:
            return None
        if self._bare_response_due(buffer):
            self.requests_sent.pop(0)
            message = Message(self._start_packet, self._start_ts)
            self.messages += 1
            self._begin(message, "close", 0)
            return message
        self._check_start(buffer)
        end = buffer.find(b"\r\n\r\n")
        sep = 4
        if end < 0:
            end, sep = buffer.find(b"\n\n"), 2
        if end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise HttpError(f"no end of headers within {MAX_HEADER_BYTES} bytes")
            return None
        block = bytes(buffer[:end])
        del buffer[: end + sep]
        message = self._message_from_block(block)
        self.messages += 1
        self._start_body(message)
        return message

    def _bare_response_due(self, buffer: bytearray) -> bool:
        """Whether the server answers an HTTP/0.9-style request with a body and no status line."""
        return (
            not self.is_request
            and bool(self.requests_sent)
            and self.requests_sent[0][1]
            and not b"HTTP/".startswith(bytes(buffer[:5]))
        )

    def _check_start(self, buffer: bytearray) -> None:
        """Fail fast on bytes that cannot start a message, instead of waiting for a CRLF.

        Before the first request of a connection, failing means the connection is not
        HTTP at all (NotHttp); after it, the bytes are garbage (HttpError).
        """
        if self.is_request:
            probing = self.messages == 0
            ok = _METHOD_PREFIX.match(buffer[:33]) is not None
            if ok and probing:
                line_end = buffer.find(b"\n", 0, MAX_FIRST_LINE)
                if line_end >= 0:
                    ok = _request_line(bytes(buffer[:line_end]).rstrip(b"\r")) is not None
                else:
                    ok = len(buffer) < MAX_FIRST_LINE
            if not ok:
                raise (NotHttp if probing else HttpError)("not an HTTP request line")
        elif not (buffer.startswith(b"HTTP/") or b"HTTP/".startswith(buffer[:5])):
            raise HttpError("not an HTTP status line")

    def _message_from_block(self, block: bytes) -> Message:
        start, headers = _split_header_block(block)
        message = Message(self._start_packet, self._start_ts)
        if self.is_request:
            match = _request_line(start)
            if not match:
                raise HttpError(f"bad request line {_text(start[:80])!r}")
            message.method, message.uri = _text(match.group(1)), _text(match.group(2))
            message.simple = match.re is _VERSIONLESS_REQUEST_LINE
            wanted = _REQUEST_HEADERS
        else:
            match = _STATUS_LINE.match(start)
            if not match:
                raise HttpError(f"bad status line {_text(start[:80])!r}")
            message.status = int(match.group(3))
            wanted = _RESPONSE_HEADERS
        framing: dict[bytes, bytes] = {}
        for name, value in headers:
            column = wanted.get(name)
            if column is not None:
                # Repeated headers (Set-Cookie above all) are kept together, comma separated.
                old = message.fields.get(column)
                message.fields[column] = _text(value) if old is None else f"{old}, {_text(value)}"
            elif name in (b"content-length", b"transfer-encoding"):
                framing[name] = value
        self._framing = framing
        return message

    def _start_body(self, message: Message) -> None:
        framing = self._framing
        if not self.is_request:
            method = self.requests_sent.pop(0)[0] if self.requests_sent and message.status >= 200 else None
            if method == "HEAD" or message.status < 200 or message.status in (204, 304):
                self._finish_message(message)
                return
        else:
            self.requests_sent.append((message.method, message.simple))
        if b"chunked" in framing.get(b"transfer-encoding", b"").lower():
            self._begin(message, "chunk_size", 0)
        elif b"content-length" in framing:
            length = framing[b"content-length"].split(b",")[0].strip()
            if not length.isdigit():
                raise HttpError(f"bad Content-Length {_text(length[:30])!r}")
            self._begin(message, "length", int(length))
        elif self.is_request:
            self._finish_message(message)
        else:
            self._begin(message, "close", 0)

    def _begin(self, message: Message, mode: str, length: int) -> None:
        self._current, self._mode, self._body_left = message, mode, length
        if mode == "length" and length == 0:
            self._finish_message(message)

    def _finish_message(self, message: Message) -> None:
        message.complete = True
        self._current, self._mode, self._body_left = None, "headers", 0

    def _skip(self, limit: int) -> int:
        taken = min(limit, len(self._buffer))
        del self._buffer[:taken]
        return taken

    def _read_body(self) -> bool:
        """Advance through the body; False when more bytes are needed."""
        message, mode, buffer = self._current, self._mode, self._buffer
        if mode == "close":
            message.body_len += self._skip(len(buffer))
            return False
        if mode in ("length", "chunk_data"):
            taken = self._skip(self._body_left)
            message.body_len += taken
            self._body_left -= taken
            if self._body_left:
                return False
            if mode == "length":
                self._finish_message(message)
            else:
                self._mode = "chunk_crlf"
            return True
        line_end = buffer.find(b"\n")
        if line_end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise HttpError("chunk framing line too long")
            return False
        line = bytes(buffer[:line_end]).rstrip(b"\r")
        del buffer[: line_end + 1]
        if mode == "chunk_crlf":
            if line:
                raise HttpError("missing CRLF after chunk data")
            self._mode = "chunk_size"
        elif mode == "chunk_size":
            match = _CHUNK_SIZE.match(line)
            if not match:
                raise HttpError(f"bad chunk size {_text(line[:30])!r}")
            size = int(match.group(1), 16)
            self._mode, self._body_left = ("chunk_data", size) if size else ("trailer", 0)
        elif not line:  # empty line ends the trailer section
            self._finish_message(message)
        return True


@dataclass
class _Connection:
    client: tuple[str, int]
    server: tuple[str, int]
    requests: MessageStream
    responses: MessageStream
    pending: list[Message | None] = field(default_factory=list)  # requests not yet paired (None: lost in a gap)
    unanswered: list[Message] = field(default_factory=list)  # responses with headers, not yet emitted
    dead: bool = False  # not HTTP: ignore its bytes


def _row(connection: _Connection, request: Message | None, response: Message | None) -> dict[str, Any]:
    (c_ip, c_port), (s_ip, s_port) = connection.client, connection.server
    row: dict[str, Any] = {"c_ip": c_ip, "c_port": c_port, "s_ip": s_ip, "s_port": s_port}
    if request is not None:
        row.update(request.fields)
        row.update(method=request.method, path=request.uri, request_body_len=request.body_len,
                   req_time=request.ts_us)
    if response is not None:
        row.update(response.fields)
        row.update(status_code=response.status, response_body_len=response.body_len,
                   resp_time=response.ts_us)
    return row


class HttpTable:
    """HTTP connections of one capture, turning stream bytes into rows in `buffer`."""

    def __init__(self, buffer: RowBuffer, source: str):
        self.buffer = buffer
        self.source = source
        self.connections: dict[tuple, _Connection] = {}

    def connection(self, key: tuple, client: tuple[str, int], server: tuple[str, int]) -> _Connection:
        found = self.connections.get(key)
        if found is None:
            sent: list[tuple[str, bool]] = []
            found = _Connection(client, server, MessageStream(True, sent), MessageStream(False, sent))
            self.connections[key] = found
        return found

    def feed(self, connection: _Connection, from_client: bool, data: bytes, packet: int, ts_us: int
             ) -> Rejected | None:
        """Parse new stream bytes of one direction; a Rejected if they are not HTTP."""
        if connection.dead or not data:
            return None
        if not from_client and connection.requests.messages == 0:
            return None  # the server spoke first: not an HTTP/1.x exchange we follow
        stream = connection.requests if from_client else connection.responses
        try:
            messages = stream.feed(data, packet, ts_us)
        except NotHttp:
            connection.dead = True
            return None
        if from_client:
            connection.pending.extend(messages)
        else:
            connection.unanswered.extend(messages)
        self._emit_answered(connection)
        if stream.failure is None:
            return None
        if not from_client:
            self._lose_oldest_response(connection)
        return Rejected(self.source, packet, f"HTTP: {stream.failure}", excerpt(data), SOURCE_TOOL)

    def gap(self, connection: _Connection, from_client: bool, size: int, packet: packets.Packet) -> Rejected:
        """`size` bytes of one direction were lost before `packet`'s data; the dead letter."""
        stream = connection.requests if from_client else connection.responses
        lost_start = stream.skip_gap(size)
        self._emit_answered(connection)  # a body the hole ended first: its message is done
        if lost_start:
            if from_client:
                # Its response will still come: it pairs with a request we know nothing of.
                connection.pending.append(None)
                stream.requests_sent.append(("", False))
            else:
                self._lose_oldest_response(connection)
        return packets.content_gap(self.source, packet, size, f"HTTP {'client' if from_client else 'server'} stream")

    def _lose_oldest_response(self, connection: _Connection) -> None:
        """Garbage where a response should be (lost segments, capture started mid-body).

        The response being read, if any, ends here as it is; otherwise the oldest open
        request will never get its answer. Either way later responses still pair right.
        """
        request = connection.pending.pop(0) if connection.pending else None
        if connection.unanswered:
            response = connection.unanswered.pop(0)
        else:
            response = None
            if connection.responses.requests_sent:
                connection.responses.requests_sent.pop(0)
        if request is not None or response is not None:
            self._append(connection, request, response)

    def _emit_answered(self, connection: _Connection) -> None:
        """Emit request/response pairs whose response is complete, in request order."""
        while connection.unanswered and connection.unanswered[0].complete:
            response = connection.unanswered.pop(0)
            if response.status is not None and response.status < 200:  # interim 1xx answers do not end a request
                continue
            request = connection.pending.pop(0) if connection.pending else None
            self._append(connection, request, response)

    def _append(self, connection: _Connection, request: Message | None, response: Message | None) -> None:
        position = request.packet if request is not None else response.packet
        self.buffer.append(position, **_row(connection, request, response))

    def flush_connection(self, connection: _Connection) -> None:
        """The connection is over: emit what is left, complete or not."""
        connection.responses.finish()
        for response in connection.unanswered:
            response.complete = True
        self._emit_answered(connection)
        for request in connection.pending:
            if request is not None:
                self.buffer.append(request.packet, **_row(connection, request, None))
        connection.pending = []

    def flush_all(self) -> None:
        for connection in self.connections.values():
            if not connection.dead:
                self.flush_connection(connection)


_HOST_HEADER = re.compile(rb"\nhost:[ \t]*([^\r\n]*)", re.I)


def request_host(head: bytes) -> str | None:
    """Host header of the HTTP request whose whole header block starts `head`, else None."""
    line_end = head.find(b"\n")
    block_end = head.find(b"\r\n\r\n")
    if block_end < 0:
        block_end = head.find(b"\n\n")
    if line_end < 0 or block_end < 0 or not _request_line(head[:line_end].rstrip(b"\r")):
        return None
    match = _HOST_HEADER.search(head, line_end, block_end + 2)
    return _text(match.group(1).strip()) if match else None


def may_be_request_start(head: bytes) -> bool:
    """Whether `head` could be the beginning of an HTTP request (worth waiting for its headers)."""
    return _METHOD_PREFIX.match(head[:33]) is not None


def _connection_key(packet: packets.Packet) -> tuple:
    a, b = (packet.src, packet.sport), (packet.dst, packet.dport)
    return (a, b) if a <= b else (b, a)


def _on_packet(table: HttpTable, streams: packets.TcpReassembler, packet: packets.Packet) -> list[Rejected]:
    """Feed one TCP packet's new stream bytes to its connection's parser; its dead letters."""
    key = _connection_key(packet)
    connection = table.connections.get(key)
    if connection is not None and connection.dead:
        return []
    data = streams.feed(packet)
    rejected = []
    if data:
        if connection is None:
            sender, receiver = (packet.src, packet.sport), (packet.dst, packet.dport)
            # The side that sends the requests is the client, whichever spoke first.
            client, server = (receiver, sender) if data.startswith(b"HTTP/") else (sender, receiver)
            connection = table.connection(key, client, server)
        from_client = (packet.src, packet.sport) == connection.client
        # Only a connection known to speak HTTP (a request was read) has its holes reported.
        if streams.gap and connection.requests.messages:
            rejected.append(table.gap(connection, from_client, streams.gap, packet))
        garbage = table.feed(connection, from_client, data, packet.number, packet.ts_us)
        if garbage is not None:
            rejected.append(garbage)
    if connection is not None and packet.tcp_flags & (packets.FIN | packets.RST):
        from_server = (packet.src, packet.sport) == connection.server
        if packet.tcp_flags & packets.RST or from_server:
            table.flush_connection(connection)
            del table.connections[key]
    return rejected


def _datagram_request(table: HttpTable, packet: packets.Packet) -> None:
    """A request sent in one UDP datagram (SSDP's HTTPU, e.g. M-SEARCH): a row of its own."""
    if not may_be_request_start(packet.payload):
        return
    try:
        messages = MessageStream(True).feed(packet.payload, packet.number, packet.ts_us)
    except NotHttp:
        return  # some other protocol that happens to start with capitals
    client, server = (packet.src, packet.sport), (packet.dst, packet.dport)
    for message in messages:
        table.buffer.append(message.packet, **_row(_Connection(client, server, None, None), message, None))


def http_from_packets(
    source: str,
    items: Iterable[packets.Packet | Rejected | None],
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[Batch | Rejected]:
    """`http` batches from `packets.iter_packets` items; Rejected items pass through.

    A packet whose bytes break an HTTP connection is counted as that Rejected; every other
    record counts once in some Batch's units (content-gap dead letters carry no unit).
    """
    buffer = RowBuffer(TABLE, SOURCE_TOOL, source, batch_rows)
    table = HttpTable(buffer, source)
    streams = packets.TcpReassembler()
    for item in items:
        if item.__class__ is packets.Packet:
            rejected: list[Rejected] | tuple = ()
            if item.proto == packets.TCP:
                rejected = _on_packet(table, streams, item)
            elif item.proto == packets.UDP and item.payload:
                _datagram_request(table, item)
            yield from rejected
            if not any(dead_letter.units for dead_letter in rejected):
                buffer.add_units()
            batch = buffer.take()
            if batch is not None:
                yield batch
        elif item is None:
            buffer.add_units()
        else:
            yield item
    table.flush_all()
    last = buffer.flush()
    if last is not None:
        yield last
