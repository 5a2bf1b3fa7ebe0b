"""A DNS message decoder (RFC 1035 wire format) that fails politely.

`decode(message)` returns a `DnsMessage` with the header, the questions and the answer
section, or raises `ValueError` saying what is wrong. Authority and additional sections
are not decoded (nothing downstream uses them), so an odd EDNS option or a damaged
additional record never costs us the query and its answers.

Names and record data are rendered as tshark shows them, so results can be compared with
it field by field: names as dot-joined labels ("<Root>" for the root), printable ASCII as
is and other bytes escaped like tshark's format_text (\\ooo octal for control bytes, UTF-8
for the rest), TTLs unsigned. One deliberate difference: addresses are printed the way
the packet layer prints them (RFC 5952, `packets.address_text`), so that an AAAA answer
and the c_ip/s_ip of a later flow compare equal as strings.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from beamlytics import schemas
from beamlytics.parsers.packets import address_text

QR, AA, TC, RD, RA, Z, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0040, 0x0020, 0x0010
FLAG_BITS = (("QR", QR), ("AA", AA), ("TC", TC), ("RD", RD), ("RA", RA), ("Z", Z), ("AD", AD), ("CD", CD))
ROOT = "<Root>"

# Enough for any legal name (at most 127 labels): more jumps than that means a pointer loop.
_MAX_POINTER_JUMPS = 128
_MAX_NAME_BYTES = 255
_HEADER = struct.Struct(">HHHHHH")
_RR_FIXED = struct.Struct(">HHIH")
_QUESTION_FIXED = struct.Struct(">HH")


@dataclass(slots=True)
class Question:
    name: str
    qtype: int
    qclass: int


@dataclass(slots=True)
class Answer:
    name: str
    rtype: int
    rclass: int
    ttl: int
    data: str  # rdata rendered as text (see `render_rdata`)

    @property
    def type_name(self) -> str:
        return schemas.type_name(self.rtype)


@dataclass(slots=True)
class DnsMessage:
    trans_id: int
    flags: int  # the 16-bit header flags word: QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode
    questions: list[Question] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & QR)

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0x0F

    def flag_names(self) -> list[str]:
        return [name for name, bit in FLAG_BITS if self.flags & bit]


def decode(message: bytes) -> DnsMessage:
    """Decode header, questions and answers of one DNS message; ValueError if malformed."""
    if len(message) < 12:
        raise ValueError(f"DNS message of {len(message)} bytes is shorter than its header")
    trans_id, flags, question_count, answer_count, _, _ = _HEADER.unpack_from(message)
    result = DnsMessage(trans_id, flags)
    position = 12
    for _ in range(question_count):
        name, position = read_name(message, position)
        if position + 4 > len(message):
            raise ValueError("question runs past the end of the message")
        qtype, qclass = _QUESTION_FIXED.unpack_from(message, position)
        position += 4
        result.questions.append(Question(name, qtype, qclass))
    for _ in range(answer_count):
        name, position = read_name(message, position)
        if position + 10 > len(message):
            raise ValueError("answer record runs past the end of the message")
        rtype, rclass, ttl, length = _RR_FIXED.unpack_from(message, position)
        position += 10
        if position + length > len(message):
            raise ValueError(f"answer data of {length} bytes runs past the end of the message")
        try:
            data = render_rdata(message, position, length, rtype)
        except ValueError:
            # Damaged record data loses only its rendering, not the message.
            data = _generic(message[position : position + length])
        position += length
        result.answers.append(Answer(name, rtype, rclass, ttl, data))
    return result


def read_name(message: bytes, position: int) -> tuple[str, int]:
    """The (possibly compressed) name at `position` and the position just after it."""
    labels = []
    name_bytes = 0
    after = -1  # where the name ends in place: set at the first compression pointer
    jumps = 0
    size = len(message)
    while True:
        if position >= size:
            raise ValueError("name runs past the end of the message")
        length = message[position]
        if length == 0:
            position += 1
            break
        if length >= 0xC0:
            if position + 1 >= size:
                raise ValueError("compression pointer runs past the end of the message")
            if after < 0:
                after = position + 2
            jumps += 1
            if jumps > _MAX_POINTER_JUMPS:
                raise ValueError("compression pointer loop")
            position = ((length & 0x3F) << 8) | message[position + 1]
            continue
        if length >= 0x40:
            raise ValueError(f"unsupported label type 0x{length & 0xC0:02x}")
        name_bytes += length + 1
        if name_bytes > _MAX_NAME_BYTES:
            raise ValueError("name longer than 255 bytes")
        end = position + 1 + length
        if end > size:
            raise ValueError("label runs past the end of the message")
        labels.append(message[position + 1 : end])
        position = end
    return (_label_text(b".".join(labels)) if labels else ROOT), (after if after >= 0 else position)


_NEEDS_ESCAPE = re.compile(rb"[^\x20-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _label_text(raw: bytes) -> str:
    if not _NEEDS_ESCAPE.search(raw):
        return raw.decode("ascii")
    text = raw.decode("utf-8", "replace")
    return _CONTROL.sub(lambda match: _C_ESCAPES.get(match[0], f"\\{ord(match[0]):03o}"), text)


def _character_strings(data: bytes) -> list[str]:
    strings, position = [], 0
    while position < len(data):
        end = position + 1 + data[position]
        if end > len(data):
            raise ValueError("character-string runs past its record")
        strings.append(_label_text(data[position + 1 : end]))
        position = end
    return strings


def _names(message: bytes, position: int, end: int, count: int) -> tuple[list[str], int]:
    """`count` names in a record's data ending at `end`, and the position after them."""
    names = []
    for _ in range(count):
        name, position = read_name(message, position)
        names.append(name)
    if position > end:
        raise ValueError("name runs past its record")
    return names, position


def render_rdata(message: bytes, position: int, length: int, rtype: int) -> str:
    """Record data as text: addresses, names, "pref exchange" for MX, zone-file style for SOA
    and SRV, TXT strings joined by a space, RFC 3597 `\\# len hex` for everything else."""
    end = position + length
    data = message[position:end]
    if (rtype == 1 and length == 4) or (rtype == 28 and length == 16):
        return address_text(data)
    if rtype in (2, 5, 12, 39):  # NS, CNAME, PTR, DNAME
        return _names(message, position, end, 1)[0][0]
    if rtype == 15 and length >= 3:  # MX
        (preference,) = struct.unpack_from(">H", message, position)
        return f"{preference} {_names(message, position + 2, end, 1)[0][0]}"
    if rtype == 6:  # SOA
        (mname, rname), after_names = _names(message, position, end, 2)
        if after_names + 20 > end:
            raise ValueError("SOA record too short")
        numbers = struct.unpack_from(">IIIII", message, after_names)
        return " ".join([mname, rname, *map(str, numbers)])
    if rtype == 33 and length >= 7:  # SRV
        priority, weight, port = struct.unpack_from(">HHH", message, position)
        return f"{priority} {weight} {port} {_names(message, position + 6, end, 1)[0][0]}"
    if rtype in (16, 99):  # TXT, SPF
        return " ".join(_character_strings(data))
    return _generic(data)


def _generic(data: bytes) -> str:
    return f"\\# {len(data)} {data.hex()}" if data else "\\# 0"
