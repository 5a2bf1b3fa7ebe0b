"""Server name (SNI) and ALPN from a TLS ClientHello, read from the client's stream bytes.

Works on the reassembled client-to-server byte stream of a TCP connection: the
ClientHello may span several TCP segments and, rarely, several TLS records, so the
handshake fragments of consecutive handshake records are joined before decoding.
Every length is checked against what is there; garbage gives None, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass

_CONTENT_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_NAME_TYPE_HOST = 0
_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
# A ClientHello is at most 2^24 bytes by its length field; real ones are a few KiB
# (post-quantum key shares push them past one segment). Beyond this we stop waiting.
MAX_CLIENT_HELLO = 64 * 1024


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None
    alpn: tuple[str, ...]


def starts_like_handshake(data: bytes) -> bool:
    """True when `data` begins like a TLS handshake record (worth waiting for more bytes)."""
    head = data[:3]
    return head[:1] == b"\x16" and head[1:2] in (b"", b"\x03") and (len(head) < 3 or head[2] <= 4)


def _handshake_bytes(data: bytes) -> bytes | None:
    """The first handshake message, joined from consecutive handshake records.

    None while it is incomplete; ValueError when a record is not a handshake record.
    """
    fragments: list[bytes] = []
    have = 0
    needed = None
    offset = 0
    while offset + _RECORD_HEADER <= len(data):
        if data[offset] != _CONTENT_HANDSHAKE or data[offset + 1] != 3:
            raise ValueError("not a TLS handshake record")
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        fragment = data[offset + _RECORD_HEADER : offset + _RECORD_HEADER + length]
        fragments.append(fragment)
        have += len(fragment)
        offset += _RECORD_HEADER + length
        if needed is None and have >= _HANDSHAKE_HEADER:
            joined = b"".join(fragments)
            needed = _HANDSHAKE_HEADER + int.from_bytes(joined[1:4], "big")
        if needed is not None and have >= needed:
            return b"".join(fragments)[:needed]
        if len(fragment) < length:  # the record itself is cut short
            return None
    return None


class _Reader:
    """Bounds-checked cursor over a bytes object; any overrun raises IndexError."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        if self.end > len(data):
            raise IndexError("length beyond data")

    def take(self, size: int) -> bytes:
        if self.pos + size > self.end:
            raise IndexError("read beyond end")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> "_Reader":
        """A sub-reader over a length-prefixed vector, skipping it in this reader."""
        length = self.uint(length_size)
        sub = _Reader(self.data, self.pos, self.pos + length)
        self.take(length)
        return sub

    def remaining(self) -> int:
        return self.end - self.pos


def _server_name(extension: _Reader) -> str | None:
    names = extension.vector(2)
    while names.remaining():
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == _NAME_TYPE_HOST:
            return name.take(name.remaining()).decode("utf-8", "backslashreplace")
    return None


def _alpn(extension: _Reader) -> tuple[str, ...]:
    protocols = extension.vector(2)
    found = []
    while protocols.remaining():
        protocol = protocols.vector(1)
        found.append(protocol.take(protocol.remaining()).decode("utf-8", "backslashreplace"))
    return tuple(found)


def _decode_client_hello(message: bytes) -> ClientHello | None:
    reader = _Reader(message)
    if reader.uint(1) != _HANDSHAKE_CLIENT_HELLO:
        return None
    body = reader.vector(3)
    body.take(2 + 32)  # legacy_version, random
    body.vector(1)  # session id
    body.vector(2)  # cipher suites
    body.vector(1)  # compression methods
    if not body.remaining():  # extensions are optional (pre-TLS 1.2 clients)
        return ClientHello(None, ())
    extensions = body.vector(2)
    sni, alpn = None, ()
    while extensions.remaining():
        kind = extensions.uint(2)
        extension = extensions.vector(2)
        if kind == _EXT_SERVER_NAME and sni is None:
            sni = _server_name(extension)
        elif kind == _EXT_ALPN and not alpn:
            alpn = _alpn(extension)
    return ClientHello(sni, alpn)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of a client's TLS stream; None if absent, incomplete or garbled."""
    if not starts_like_handshake(data):
        return None
    try:
        message = _handshake_bytes(data[:MAX_CLIENT_HELLO])
        return None if message is None else _decode_client_hello(message)
    except (ValueError, IndexError):
        return None


def client_hello_sni(data: bytes) -> str | None:
    """Server name of the ClientHello starting `data`, or None (no ClientHello, no SNI, garbage)."""
    hello = parse_client_hello(data)
    return hello.sni if hello is not None else None


def client_hello_incomplete(data: bytes) -> bool:
    """True while `data` looks like the start of a handshake whose first message is not all there yet."""
    if not starts_like_handshake(data) or len(data) >= MAX_CLIENT_HELLO:
        return False
    try:
        return _handshake_bytes(data) is None
    except ValueError:
        return False
