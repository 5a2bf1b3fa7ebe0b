"""The packet layer: capture records in, decoded IP packets out.

`PacketReader` (or `iter_packets`) reads a pcap or pcapng stream and yields exactly one
item per capture record, so callers can keep the unit contract of `parsers.base` (read =
parsed + rejected) without knowing anything about link layers:

* a `Packet` (addresses, ports, TCP flags, transport payload),
* a `Rejected` (units 1) for a record that cannot be decoded or whose header is absurd,
* `None` for a well-formed frame that carries no IP datagram for us (ARP, LLDP, STP...)
  or an IP fragment held until its datagram is complete;

and, where the file cannot be read any further, one last `Rejected` with units 0 for
the rest of it (cut short, broken compression) with the byte offset and the reason.

The readers are our own (struct over the raw bytes) rather than dpkt's: they are faster,
handle every pcapng interface's own link type and clock resolution, and turn every kind
of damage into a `Rejected` instead of an exception. A record or block whose length
fields lie costs that record only: the reader looks ahead (a bounded window, whatever the
lengths claim) for the next plausible record header, or well-framed pcapng block, and
goes on from there. Times outside 1970-9999 are rejected per packet.

`TcpReassembler` turns TCP segments into in-order byte streams per direction, so that
DNS-over-TCP and HTTP parsers see whole messages however the sender cut them.
"""
from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from beamlytics.parsers.base import STREAM_ERRORS, Rejected, excerpt

SOURCE_TOOL = "pcap"


@dataclass(slots=True)
class Packet:
    number: int  # 1-based record number in the capture file
    ts_us: int  # capture time, microseconds since the epoch (UTC)
    src: str  # IP source as `address_text` prints it (RFC 5952 for IPv6)
    dst: str
    proto: int  # IP protocol after IPv6 extension headers
    sport: int  # 0 for protocols without ports
    dport: int
    tcp_flags: int  # FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128; 0 otherwise
    tcp_seq: int  # 0 for non-TCP
    ip_bytes: int  # IP total length of the datagram as sent (header + payload)
    payload: bytes  # transport payload; the whole reassembled payload for fragments
    tcp_ack: int = 0  # acknowledgement number; 0 for non-TCP


class BadPacket(ValueError):
    """A record whose bytes do not decode; its message becomes the Rejected reason."""


TCP, UDP = 6, 17
FIN, SYN, RST, ACK = 1, 2, 4, 16

# Largest record we accept: libpcap's own limit (256 KiB) unless the file's snap length
# says more, and never so much that a corrupt length field makes us allocate gigabytes.
_MIN_RECORD_LIMIT = 262_144
_MAX_RECORD_LIMIT = 16 << 20
# Capture times we accept, in microseconds since the epoch: 1970 to the end of year 9999,
# what every datetime library (and Arrow's conversion to Python) can represent.
_MAX_TS_US = 253_402_300_800_000_000
# How far past a damaged record we look for the next plausible one before giving up on the
# rest of the file (smaller without a good record's time to go by: the scan is slower).
_RESYNC_WINDOW = 4 << 20
_BLIND_RESYNC_WINDOW = 64 << 10
_READ_CHUNK = 1 << 20

# ---------------------------------------------------------------------------------------
# Capture file readers: yield (number, ts_us, linktype, frame) tuples or a Rejected.
# ---------------------------------------------------------------------------------------

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # microsecond, little-endian (as written on x86)
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanosecond
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_BYTE_ORDER_MAGIC = {b"\x1a\x2b\x3c\x4d": ">", b"\x4d\x3c\x2b\x1a": "<"}
# The upper bits of a pcap link type field carry FCS information (pcap-linktype(7)).
_LINKTYPE_MASK = 0x03FF_FFFF


def capture_format(head: bytes) -> str | None:
    """"pcap" or "pcapng" when `head` starts like such a file, else None.

    A pcapng file cut short before its byte-order magic still counts: a capture that
    breaks early is read (and its damage dead-lettered) as a capture, not dismissed as
    an unknown format.
    """
    if head[:4] in _PCAP_MAGIC:
        return "pcap"
    if head[:4] == _PCAPNG_SHB and (len(head) < 12 or head[8:12] in _BYTE_ORDER_MAGIC):
        return "pcapng"
    return None


def _rejected(source: str, position: int, reason: str, raw: bytes = b"", units: int = 1) -> Rejected:
    return Rejected(source, position, reason, excerpt(raw.hex()) if raw else "", SOURCE_TOOL, units)


class _Input:
    """A capture stream read in pieces, surviving a compressed stream that breaks.

    `data[pos:]` are the bytes not consumed yet. `ensure(n)` reads until n of them are
    there or the stream ends. A decompressor failing part-way (truncated gzip, corrupt
    bzip2) ends the stream like EOF, keeping every byte it delivered, and `damage` says
    what broke; `read1` takes what the decompressor has ready, so no decoded bytes sit in
    a half-filled read when the error comes.
    """

    def __init__(self, stream: BinaryIO, head: bytes):
        self._read = getattr(stream, "read1", stream.read)
        self.data = head
        self.pos = 0
        self._base = 0  # file offset of data[0]
        self.ended = False
        self.damage = ""

    @property
    def offset(self) -> int:
        return self._base + self.pos

    @property
    def available(self) -> int:
        return len(self.data) - self.pos

    def ensure(self, size: int) -> bool:
        while len(self.data) - self.pos < size and not self.ended:
            try:
                chunk = self._read(max(_READ_CHUNK, size - self.available))
            except STREAM_ERRORS as error:
                self.damage = f"{type(error).__name__}: {error}"
                chunk = b""
            if not chunk:
                self.ended = True
                break
            self._base += self.pos
            self.data = self.data[self.pos :] + chunk
            self.pos = 0
        return len(self.data) - self.pos >= size

    def rest_lost(self, source: str, position: int, what: str) -> Rejected | None:
        """The dead letter for a stream that stopped inside `what` or broke; None at a clean end.

        It stands for records the reader never delivered (units 0). A stream that broke
        exactly between records is reported too: its rest is lost all the same.
        """
        if self.available:
            reason = f"file ends inside {what} at byte {self.offset}"
        elif self.damage:
            reason = f"stream broken at byte {self.offset}"
        else:
            return None
        if self.damage:
            reason += f" ({self.damage})"
        return _rejected(source, position, reason + ": rest of file unreadable", self.data[self.pos : self.pos + 64], 0)


class _PcapLayout:
    """The record header of one classic pcap file, and what a plausible one looks like."""

    def __init__(self, endian: str, ns_per_tick: int, snaplen: int):
        self.endian = endian
        self.header = struct.Struct(endian + "IIII")
        self.ticks_per_second = 1_000_000_000 // ns_per_tick
        self.limit = min(max(snaplen, _MIN_RECORD_LIMIT), _MAX_RECORD_LIMIT)

    def sane(self, data: bytes, at: int) -> bool:
        _, fraction, caplen, length = self.header.unpack_from(data, at)
        return caplen <= self.limit and caplen <= length and fraction < self.ticks_per_second

    def trusted(self, stream: _Input, caplen: int) -> bool:
        """Whether the record at `stream.pos` may be taken at its length: the record after it
        starts with a sane header, or the file ends right after it."""
        if stream.ensure(16 + caplen + 16):
            return self.sane(stream.data, stream.pos + 16 + caplen)
        return stream.available == 16 + caplen and not stream.damage

    def plausible(self, data: bytes, at: int, near_seconds: int | None) -> bool:
        """A record header at `at` that looks real: sane, within a day of the last good
        record's time, and followed by another sane header (or the end of the data)."""
        if at + 16 > len(data) or not self.sane(data, at):
            return False
        seconds, _, caplen, _ = self.header.unpack_from(data, at)
        if near_seconds is not None and abs(seconds - near_seconds) > 86_400:
            return False
        after = at + 16 + caplen
        return after + 16 > len(data) or self.sane(data, after)

    def resync(self, stream: _Input, near_seconds: int | None) -> bool:
        """Move `stream` to the next plausible record header after the bad one at its
        position; False when none lies within the resync window."""
        window = _RESYNC_WINDOW if near_seconds is not None else _BLIND_RESYNC_WINDOW
        stream.ensure(window)
        data, start = stream.data, stream.pos
        end = min(len(data), start + window)
        if near_seconds is None:
            candidates: Iterator[int] = iter(range(start + 1, end - 15))
        else:
            candidates = self._same_day_candidates(data, start + 1, end, near_seconds)
        for at in candidates:
            if self.plausible(data, at, near_seconds):
                stream.pos = at
                return True
        return False

    def _same_day_candidates(self, data: bytes, start: int, end: int, near_seconds: int) -> Iterator[int]:
        """Offsets, in order, whose seconds field shares its upper 16 bits with a time within a
        day of `near_seconds`: a C-speed search instead of trying every byte."""
        shift = 2 if self.endian == "<" else 0  # where the upper half sits in the field
        highs = {((near_seconds + delta) >> 16) & 0xFFFF for delta in (-86_400, 0, 86_400)}
        patterns = [struct.pack(self.endian + "H", high) for high in sorted(highs)]
        found = {pattern: data.find(pattern, start + shift, end) for pattern in patterns}
        while True:
            live = [(index, pattern) for pattern, index in found.items() if index >= 0]
            if not live:
                return
            index, pattern = min(live)
            yield index - shift
            found[pattern] = data.find(pattern, index + 1, end)


def _read_pcap(source: str, stream: _Input) -> Iterator[tuple | Rejected]:
    endian, ns_per_tick = _PCAP_MAGIC[stream.data[:4]]
    if not stream.ensure(24):
        yield stream.rest_lost(source, 0, "the pcap file header")
        return
    snaplen, network = struct.unpack_from(endian + "16xII", stream.data, stream.pos)
    stream.pos += 24
    layout = _PcapLayout(endian, ns_per_tick, snaplen)
    linktype = network & _LINKTYPE_MASK
    header, limit, ticks_per_second = layout.header, layout.limit, layout.ticks_per_second
    number = 0
    last_seconds: int | None = None
    while True:
        # The length checks before each `ensure` skip its call for all but the last record of a
        # read chunk: per record, that call was a tenth of the packet layer's time.
        if len(stream.data) - stream.pos < 16 and not stream.ensure(16):
            lost = stream.rest_lost(source, number + 1, "a record header")
            if lost is not None:
                yield lost
            return
        seconds, fraction, caplen, length = header.unpack_from(stream.data, stream.pos)
        problem = ""
        if caplen > limit:
            problem = f"captured length {caplen} exceeds {limit}"
        elif (caplen > length or 0 < snaplen < caplen or fraction >= ticks_per_second) and not layout.trusted(
            stream, caplen
        ):
            problem = f"implausible record header (captured {caplen} of {length} bytes, snap length {snaplen})"
        if problem:
            at = stream.offset
            raw = stream.data[stream.pos : stream.pos + 16]
            if not layout.resync(stream, last_seconds):
                yield _rejected(source, number + 1, f"{problem} at byte {at}: rest of file unreadable", raw, 0)
                return
            number += 1
            yield _rejected(source, number, f"{problem} at byte {at}; resumed at byte {stream.offset}", raw)
            continue
        if len(stream.data) - stream.pos < 16 + caplen and not stream.ensure(16 + caplen):
            yield stream.rest_lost(source, number + 1, f"record {number + 1} ({caplen} bytes)")
            return
        number += 1
        start = stream.pos + 16
        frame = stream.data[start : start + caplen]
        stream.pos = start + caplen
        last_seconds = seconds
        if ns_per_tick == 1:
            ts_us = seconds * 1_000_000 + fraction // 1000
        else:
            ts_us = seconds * 1_000_000 + fraction
        yield number, ts_us, linktype, frame


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    # A timestamp in ticks is ts * numerator // denominator microseconds.
    numerator: int = 1
    denominator: int = 1
    offset_us: int = 0


def _interface(endian: str, body: bytes) -> _Interface:
    linktype, _, snaplen = struct.unpack_from(endian + "HHI", body)
    interface = _Interface(linktype, snaplen)
    for code, value in _options(endian, body[8:]):
        if code == 9 and value:  # if_tsresol: 10^-n seconds, or 2^-n with the top bit set
            exponent = value[0] & 0x7F
            if value[0] & 0x80:
                interface.numerator, interface.denominator = 1_000_000, 1 << exponent
            elif exponent >= 6:
                interface.denominator = 10 ** (exponent - 6)
            else:
                interface.numerator = 10 ** (6 - exponent)
        elif code == 14 and len(value) == 8:  # if_tsoffset: seconds added to every time
            interface.offset_us = struct.unpack(endian + "q", value)[0] * 1_000_000
    return interface


def _options(endian: str, data: bytes) -> Iterator[tuple[int, bytes]]:
    position = 0
    while position + 4 <= len(data):
        code, length = struct.unpack_from(endian + "HH", data, position)
        if code == 0:
            return
        yield code, data[position + 4 : position + 4 + length]
        position += 4 + (length + 3) // 4 * 4


_EPB, _SPB, _OBSOLETE_PB, _IDB = 6, 3, 2, 1
_PACKET_BLOCKS = frozenset((_EPB, _SPB, _OBSOLETE_PB))
# Block types a resynchronisation may land on (pcapng spec, section 11.1), SHB aside.
_KNOWN_BLOCKS = (_IDB, _OBSOLETE_PB, _SPB, 4, 5, _EPB, 0xA, 0xBAD, 0x40000BAD)


class _PcapngLayout:
    """Block framing of a pcapng file: the current section's byte order, and resync."""

    def __init__(self) -> None:
        self.endian = "<"
        self._patterns: dict[str, re.Pattern] = {}

    def block_start(self, data: bytes, at: int) -> tuple[int, int, str] | None:
        """(type, length, byte order) of a block header at `at`; None for a section header
        without byte-order magic."""
        if data[at : at + 4] == _PCAPNG_SHB:
            endian = _BYTE_ORDER_MAGIC.get(data[at + 8 : at + 12])
            if endian is None:
                return None
        else:
            endian = self.endian
        block_type, length = struct.unpack_from(endian + "II", data, at)
        return block_type, length, endian

    def whole_block(self, data: bytes, at: int) -> bool:
        """Whether a well-framed block starts at `at`: its length is sane and repeated at its end."""
        if at + 12 > len(data):
            return False
        start = self.block_start(data, at)
        if start is None:
            return False
        _, length, endian = start
        if length < 12 or length % 4 or length > _MAX_RECORD_LIMIT or at + length > len(data):
            return False
        return struct.unpack_from(endian + "I", data, at + length - 4)[0] == length

    def resync(self, stream: _Input) -> bool:
        """Move `stream` to the next well-framed block after the bad one at its position;
        False when none is in the window. Any offset may do, not only multiples of 4: bytes
        lost from the middle of a file shift everything after them."""
        stream.ensure(_RESYNC_WINDOW)
        data, start = stream.data, stream.pos
        for match in self._pattern().finditer(data, start + 1, min(len(data), start + _RESYNC_WINDOW)):
            at = match.start()
            if self.whole_block(data, at):
                stream.pos = at
                return True
        return False

    def _pattern(self) -> re.Pattern:
        pattern = self._patterns.get(self.endian)
        if pattern is None:
            types = [struct.pack(self.endian + "I", block_type) for block_type in _KNOWN_BLOCKS] + [_PCAPNG_SHB]
            pattern = self._patterns[self.endian] = re.compile(b"|".join(re.escape(value) for value in types))
        return pattern


def _read_pcapng(source: str, stream: _Input) -> Iterator[tuple | Rejected]:
    layout = _PcapngLayout()
    interfaces: list[_Interface] = []
    number = 0
    last_ts_us = 0
    while True:
        if not stream.ensure(12):  # the smallest block: type, length and the length's copy
            lost = stream.rest_lost(source, number + 1, "a block header")
            if lost is not None:
                yield lost
            return
        data, at = stream.data, stream.pos
        start = layout.block_start(data, at)
        problem, cut_short = "", False
        block_type = length = 0
        if start is None:
            problem = "section header without byte-order magic"
        else:
            block_type, length, endian = start
            if length < 12 or length % 4 or length > _MAX_RECORD_LIMIT:
                problem = f"bad block length {length}"
            elif not stream.ensure(length):
                problem, cut_short = f"block length {length} runs past the end of the data", True
            else:
                data, at = stream.data, stream.pos
                trailer = struct.unpack_from(endian + "I", data, at + length - 4)[0]
                if trailer != length:
                    problem = f"block length {length} differs from its copy {trailer} at the block's end"
        if problem:
            offset = stream.offset
            raw = stream.data[stream.pos : stream.pos + 64]
            if layout.resync(stream):
                # A damaged packet block costs that packet; other blocks cost no packet we know of.
                units = 1 if block_type in _PACKET_BLOCKS else 0
                number += units
                reason = f"{problem} at byte {offset}; resumed at byte {stream.offset}"
                yield _rejected(source, number + 1 - units, reason, raw, units)
                continue
            if cut_short:
                yield stream.rest_lost(source, number + 1, f"a block of {length} bytes")
            else:
                yield _rejected(source, number + 1, f"{problem} at byte {offset}: rest of file unreadable", raw, 0)
            return
        body = data[at + 8 : at + length - 4]
        stream.pos = at + length
        if block_type == 0x0A0D0D0A:
            layout.endian = endian
            interfaces = []  # interface ids are numbered afresh in every section
        elif block_type == _IDB:
            if len(body) < 8:
                yield _rejected(source, number + 1, "interface description block too short", body, 0)
                continue
            interfaces.append(_interface(endian, body))
        elif block_type in _PACKET_BLOCKS:
            number += 1
            record = _pcapng_record(source, number, endian, block_type, body, interfaces, last_ts_us)
            if not isinstance(record, Rejected):
                last_ts_us = record[1]
            yield record


def _pcapng_record(
    source: str, number: int, endian: str, block_type: int, body: bytes, interfaces: list[_Interface],
    last_ts_us: int,
) -> tuple | Rejected:
    if block_type == _SPB:
        if not interfaces or len(body) < 4:
            return _rejected(source, number, "simple packet block without interface", body[:64])
        interface = interfaces[0]
        (original_length,) = struct.unpack_from(endian + "I", body)
        caplen = min(original_length, len(body) - 4)
        if interface.snaplen:
            caplen = min(caplen, interface.snaplen)
        # A simple packet block has no timestamp: it is taken to follow the previous record.
        return number, last_ts_us, interface.linktype, body[4 : 4 + caplen]
    if len(body) < 20:
        return _rejected(source, number, "packet block too short", body)
    if block_type == _EPB:
        interface_id, high, low, caplen = struct.unpack_from(endian + "IIII", body)
    else:
        interface_id, _, high, low, caplen = struct.unpack_from(endian + "HHIII", body)
    if interface_id >= len(interfaces):
        return _rejected(source, number, f"packet on undeclared interface {interface_id}", body[:64])
    if 20 + caplen > len(body):
        return _rejected(source, number, f"captured length {caplen} overruns its block", body[:64])
    interface = interfaces[interface_id]
    ticks = (high << 32) | low
    ts_us = ticks * interface.numerator // interface.denominator + interface.offset_us
    if not 0 <= ts_us < _MAX_TS_US:
        return _rejected(source, number, f"timestamp {ts_us} µs lies outside years 1970-9999", body[:64])
    return number, ts_us, interface.linktype, body[20 : 20 + caplen]


# ---------------------------------------------------------------------------------------
# Link layers: find where the IP datagram starts.
# ---------------------------------------------------------------------------------------

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
_VLAN_TAGS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_MPLS = frozenset((0x8847, 0x8848))
_PPPOE_SESSION = 0x8864
_PPP_TO_ETHERTYPE = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6}
# BSD loopback address families for IPv6 differ by OS (24 NetBSD/OpenBSD, 28 FreeBSD, 30 macOS).
_NULL_FAMILIES = {2: ETH_IPV4, 24: ETH_IPV6, 28: ETH_IPV6, 30: ETH_IPV6}
_RAW_LINKTYPES = frozenset((12, 14, 101))


def network_start(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """(ethertype, offset) of the IP datagram in `frame`, or None when it carries none (BadPacket when the
    link header is cut short)."""
    if linktype == 1:
        if len(frame) < 14:
            raise BadPacket("frame shorter than an Ethernet header")
        return _after_ethertype(frame, (frame[12] << 8) | frame[13], 14)
    if linktype in _RAW_LINKTYPES:
        return _by_version(frame, 0)
    if linktype == 228:
        return ETH_IPV4, 0
    if linktype == 229:
        return ETH_IPV6, 0
    if linktype == 113:  # Linux cooked capture v1: protocol at bytes 14-15
        if len(frame) < 16:
            raise BadPacket("frame shorter than a Linux SLL header")
        return _after_ethertype(frame, (frame[14] << 8) | frame[15], 16)
    if linktype == 276:  # Linux cooked capture v2: protocol at bytes 0-1
        if len(frame) < 20:
            raise BadPacket("frame shorter than a Linux SLL2 header")
        return _after_ethertype(frame, (frame[0] << 8) | frame[1], 20)
    if linktype in (0, 108):  # NULL: family in the capturing host's byte order; LOOP: network order
        if len(frame) < 4:
            raise BadPacket("frame shorter than a loopback header")
        family = struct.unpack_from(">I" if linktype == 108 else "<I", frame)[0]
        if family > 0xFFFF:
            family = struct.unpack_from(">I", frame)[0]
        ethertype = _NULL_FAMILIES.get(family)
        return (ethertype, 4) if ethertype else None
    raise BadPacket(f"unsupported link type {linktype}")


def _after_ethertype(frame: bytes, ethertype: int, offset: int) -> tuple[int, int] | None:
    while ethertype in _VLAN_TAGS:
        if len(frame) < offset + 4:
            raise BadPacket("frame ends inside a VLAN tag")
        ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
        offset += 4
    if ethertype in (ETH_IPV4, ETH_IPV6):
        return ethertype, offset
    if ethertype in _MPLS:
        while True:
            if len(frame) < offset + 4:
                raise BadPacket("frame ends inside an MPLS label")
            bottom_of_stack = frame[offset + 2] & 1
            offset += 4
            if bottom_of_stack:
                # MPLS does not say what it carries; IP is recognised by its version nibble.
                return _by_version(frame, offset)
    if ethertype == _PPPOE_SESSION and len(frame) >= offset + 8:
        ethertype = _PPP_TO_ETHERTYPE.get((frame[offset + 6] << 8) | frame[offset + 7])
        return (ethertype, offset + 8) if ethertype else None
    return None


def _by_version(frame: bytes, offset: int) -> tuple[int, int] | None:
    if len(frame) <= offset:
        raise BadPacket("no IP header after the link header")
    version = frame[offset] >> 4
    if version == 4:
        return ETH_IPV4, offset
    if version == 6:
        return ETH_IPV6, offset
    return None


# ---------------------------------------------------------------------------------------
# IP, fragments and transport headers.
# ---------------------------------------------------------------------------------------

_address_cache: dict[bytes, str] = {}
_ADDRESS_CACHE_SIZE = 65_536
_TEN_ZEROS = bytes(10)


def address_text(packed: bytes) -> str:
    """IPv4 dotted quad, or IPv6 in RFC 5952's canonical form, the same on every Python.

    inet_ntop gives that form for ordinary addresses. The ones with an embedded IPv4 address
    are written here, because libc and `ipaddress` disagree on them (and `ipaddress` itself
    changed in Python 3.13): IPv4-mapped `::ffff:0:0/96` as `::ffff:192.0.2.1` (RFC 5952
    section 5), the deprecated IPv4-compatible `::/96` in plain hex, `::c000:201`.
    """
    text = _address_cache.get(packed)
    if text is None:
        if len(packed) == 4:
            text = socket.inet_ntop(socket.AF_INET, packed)
        elif packed[:10] != _TEN_ZEROS:
            text = socket.inet_ntop(socket.AF_INET6, packed)
        elif packed[10:12] == b"\xff\xff":
            text = "::ffff:" + socket.inet_ntop(socket.AF_INET, packed[12:])
        elif packed[10:12] == b"\0\0":
            high, low = struct.unpack_from(">HH", packed, 12)
            text = f"::{high:x}:{low:x}" if high else f"::{low:x}" if low else "::"
        else:
            text = socket.inet_ntop(socket.AF_INET6, packed)
        if len(_address_cache) >= _ADDRESS_CACHE_SIZE:
            _address_cache.clear()
        _address_cache[packed] = text
    return text


_ETHERTYPE_IPV4 = ETH_IPV4.to_bytes(2, "big")
# Version and header length, total length, id, flags and fragment offset, protocol, addresses.
_IPV4_HEADER = struct.Struct(">BxHHHxB2x4s4s")
_TCP_HEADER = struct.Struct(">HHIIBB")  # ports, seq, ack, data offset, flags
_UDP_HEADER = struct.Struct(">HHH")

# IPv6 extension headers that carry (next header, length in 8-byte units - 1).
_IPV6_EXTENSIONS = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
_IPV6_FRAGMENT, _IPV6_AH = 44, 51
_MAX_DATAGRAM = 65_535


@dataclass(slots=True)
class _PartialDatagram:
    pieces: list  # (offset, bytes) in arrival order: later copies win where they overlap
    total: int | None = None  # payload length, known once the last fragment arrived
    header_bytes: int = 0  # IP header length of the first fragment, for ip_bytes


class _Fragments:
    """IPv4/IPv6 fragment reassembly with bounded memory.

    A datagram is complete when its last fragment has arrived and the pieces cover every
    byte before it. Incomplete datagrams are forgotten oldest first once `max_datagrams`
    are pending, and a datagram that grows beyond `max_pieces` is dropped: a flood of
    garbage fragments costs a bounded amount of memory.
    """

    def __init__(self, max_datagrams: int = 4096, max_pieces: int = 1024):
        self.max_datagrams = max_datagrams
        self.max_pieces = max_pieces
        self._pending: dict[tuple, _PartialDatagram] = {}

    def add(self, key: tuple, offset: int, data: bytes, more: bool, header_bytes: int) -> tuple[bytes, int] | None:
        """Store a fragment; return (payload, header bytes of the first fragment) when complete."""
        if offset + len(data) > _MAX_DATAGRAM:
            raise BadPacket("fragment extends beyond the largest IP datagram")
        partial = self._pending.get(key)
        if partial is None:
            if len(self._pending) >= self.max_datagrams:
                del self._pending[next(iter(self._pending))]
            partial = self._pending[key] = _PartialDatagram([])
        partial.pieces.append((offset, data))
        if offset == 0:
            partial.header_bytes = header_bytes
        if not more:
            partial.total = offset + len(data)
        if len(partial.pieces) > self.max_pieces:
            del self._pending[key]
            return None
        if partial.total is None or not _covers(partial.pieces, partial.total):
            return None
        del self._pending[key]
        payload = bytearray(partial.total)
        for piece_offset, piece in partial.pieces:
            payload[piece_offset : piece_offset + len(piece)] = piece[: max(0, partial.total - piece_offset)]
        return bytes(payload), partial.header_bytes


def _covers(pieces: list, total: int) -> bool:
    reached = 0
    for offset, data in sorted(pieces, key=lambda piece: piece[0]):
        if offset > reached:
            return False
        reached = max(reached, offset + len(data))
    return reached >= total


class _Decoder:
    """Decodes frames into Packets; holds the fragment state of one capture."""

    def __init__(self) -> None:
        self.fragments = _Fragments()

    def decode(self, number: int, ts_us: int, linktype: int, frame: bytes) -> Packet | None:
        if linktype == 1 and frame[12:14] == _ETHERTYPE_IPV4:  # most packets: untagged Ethernet, IPv4
            return self._ipv4(number, ts_us, frame, 14)
        start = network_start(linktype, frame)
        if start is None:
            return None
        ethertype, offset = start
        if ethertype == ETH_IPV4:
            return self._ipv4(number, ts_us, frame, offset)
        return self._ipv6(number, ts_us, frame, offset)

    def _ipv4(self, number: int, ts_us: int, frame: bytes, offset: int) -> Packet | None:
        if len(frame) < offset + 20:
            raise BadPacket("truncated IPv4 header")
        first, total_length, ident, fragment_field, proto, src, dst = _IPV4_HEADER.unpack_from(frame, offset)
        if first >> 4 != 4:
            raise BadPacket(f"IP version {first >> 4} where IPv4 was announced")
        header_length = (first & 0x0F) * 4
        if header_length < 20 or len(frame) < offset + header_length:
            raise BadPacket(f"bad IPv4 header length {header_length}")
        if total_length == 0:  # segmentation offload: the capture holds the real size
            total_length = len(frame) - offset
        elif total_length < header_length:
            raise BadPacket(f"IPv4 total length {total_length} below header length")
        # Ethernet pads short frames: the datagram ends where its total length says.
        payload = frame[offset + header_length : offset + total_length]
        more_fragments = fragment_field & 0x2000
        fragment_offset = (fragment_field & 0x1FFF) * 8
        if more_fragments or fragment_offset:
            done = self.fragments.add((4, src, dst, ident, proto), fragment_offset, payload, bool(more_fragments), header_length)
            if done is None:
                return None
            payload, header_length = done
            total_length = header_length + len(payload)
        # The address cache looked up here first: one call less per address seen before.
        cache = _address_cache
        return _transport(number, ts_us, cache.get(src) or address_text(src), cache.get(dst) or address_text(dst),
                          proto, total_length, payload)

    def _ipv6(self, number: int, ts_us: int, frame: bytes, offset: int) -> Packet | None:
        if len(frame) < offset + 40:
            raise BadPacket("truncated IPv6 header")
        if frame[offset] >> 4 != 6:
            raise BadPacket(f"IP version {frame[offset] >> 4} where IPv6 was announced")
        payload_length = (frame[offset + 4] << 8) | frame[offset + 5]
        if payload_length == 0:  # jumbogram or offload: the capture holds the real size
            payload_length = len(frame) - offset - 40
        datagram = frame[offset : offset + 40 + payload_length]
        src = datagram[8:24]
        dst = datagram[24:40]
        proto, position = _skip_ipv6_extensions(datagram, datagram[6], 40)
        if proto == _IPV6_FRAGMENT:
            if len(datagram) < position + 8:
                raise BadPacket("truncated IPv6 fragment header")
            next_header = datagram[position]
            fragment_field, ident = struct.unpack_from(">HI", datagram, position + 2)
            piece = datagram[position + 8 :]
            done = self.fragments.add(
                (6, src, dst, ident), fragment_field & 0xFFF8, piece, bool(fragment_field & 1), position
            )
            if done is None:
                return None
            payload, unfragmentable = done
            # The reassembled payload may start with more extension headers.
            proto, inner = _skip_ipv6_extensions(payload, next_header, 0)
            if proto == _IPV6_FRAGMENT:
                raise BadPacket("nested IPv6 fragment header")
            return _transport(
                number, ts_us, address_text(src), address_text(dst), proto,
                unfragmentable + len(payload), payload[inner:],
            )
        return _transport(
            number, ts_us, address_text(src), address_text(dst), proto, 40 + payload_length, datagram[position:]
        )


def _skip_ipv6_extensions(data: bytes, next_header: int, position: int) -> tuple[int, int]:
    """(upper protocol, its offset); stops at a fragment header, which the caller handles."""
    while next_header in _IPV6_EXTENSIONS or next_header == _IPV6_AH:
        if len(data) < position + 2:
            raise BadPacket("truncated IPv6 extension header")
        units = data[position + 1]
        length = (units + 2) * 4 if next_header == _IPV6_AH else (units + 1) * 8
        next_header = data[position]
        position += length
    if position > len(data):
        raise BadPacket("IPv6 extension headers overrun the packet")
    return next_header, position


def _transport(number: int, ts_us: int, src: str, dst: str, proto: int, ip_bytes: int, data: bytes) -> Packet:
    if proto == TCP:
        if len(data) < 20:
            raise BadPacket("truncated TCP header")
        sport, dport, seq, ack, data_offset, flags = _TCP_HEADER.unpack_from(data)
        header_length = (data_offset >> 4) * 4
        if header_length < 20 or len(data) < header_length:
            raise BadPacket(f"bad TCP header length {header_length}")
        return Packet(number, ts_us, src, dst, proto, sport, dport, flags, seq, ip_bytes, data[header_length:], ack)
    if proto == UDP:
        if len(data) < 8:
            raise BadPacket("truncated UDP header")
        sport, dport, udp_length = _UDP_HEADER.unpack_from(data)
        # A UDP length below 8 is bogus (or jumbo); then the IP length decides.
        end = udp_length if udp_length >= 8 else len(data)
        return Packet(number, ts_us, src, dst, proto, sport, dport, 0, 0, ip_bytes, data[8:end])
    return Packet(number, ts_us, src, dst, proto, 0, 0, 0, 0, ip_bytes, data)


class PacketReader:
    """One Packet, Rejected or None per capture record of `stream` (see the module docstring).

    `delivered` counts the capture records handed out so far, well-formed or rejected one by
    one; a rest-of-file Rejected (units 0) stands for records never delivered. It is the
    reader's own count, which parsers report as `base.Read` so that the pipeline can check
    that every record was accounted for once. A stream that is not a capture at all gives a
    single Rejected at position 0.
    """

    def __init__(self, source: str, stream: BinaryIO):
        self.source = source
        self.stream = stream
        self.delivered = 0

    def __iter__(self) -> Iterator[Packet | Rejected | None]:
        source = self.source
        decoder = _Decoder()
        decode = decoder.decode
        for record in capture_records(source, self.stream):
            if record.__class__ is not tuple:
                self.delivered += record.units
                yield record
                continue
            self.delivered += 1
            try:
                yield decode(*record)
            except (BadPacket, struct.error) as error:
                yield _rejected(source, record[0], str(error), record[3][:64])


def capture_records(source: str, stream: BinaryIO) -> Iterator[tuple | Rejected]:
    """The records of a capture, framed but not decoded: (number, µs time, link type, frame) each, and a
    Rejected wherever the framing itself is damaged (a whole file, the rest of one, or a record skipped).

    The file header is read at the call; the reader itself is returned, not wrapped in a
    generator of this function's own, which cost a generator resume per record."""
    data = _Input(stream, b"")
    data.ensure(12)
    kind = capture_format(data.data[:12])
    if kind == "pcap":
        return _read_pcap(source, data)
    if kind == "pcapng":
        return _read_pcapng(source, data)
    reason = data.rest_lost(source, 0, "the file header") if data.damage else None
    return iter([reason or _rejected(source, 0, "not a pcap or pcapng capture", data.data[:12], 0)])


def iter_packets(source: str, stream: BinaryIO) -> Iterator[Packet | Rejected | None]:
    """The items of a `PacketReader`, for callers that need no count."""
    return iter(PacketReader(source, stream))


# ---------------------------------------------------------------------------------------
# TCP byte streams.
# ---------------------------------------------------------------------------------------

_SEQ_SPACE = 1 << 32


@dataclass(slots=True)
class _Direction:
    next_seq: int  # sequence number of the next byte we can hand out
    waiting: dict  # seq -> data of segments that arrived ahead of a gap
    waiting_bytes: int = 0
    acked: int | None = None  # highest acknowledgement the peer sent for this direction


class TcpReassembler:
    """In-order byte streams per TCP direction, keyed by (src, sport, dst, dport).

    `feed(packet)` returns the bytes of that packet's direction that became contiguous
    (possibly b""): retransmitted and overlapping bytes are delivered once, segments that
    arrive early wait in a buffer of at most `max_waiting_bytes` per direction.

    Bytes the capture lost are skipped, like Zeek's content gaps, once it is clear they will
    not come: when the peer has acknowledged data beyond the hole (the receiver got bytes
    the capture missed), when the waiting buffer overflows, or when the direction ends
    (FIN, RST) with data still waiting. The stream then resumes at the earliest waiting
    segment; `gap` tells how many bytes were skipped before the data the last `feed` returned.

    A stream first seen mid-connection starts at its first segment. FIN or RST ends a
    direction (RST both); at most `max_streams` directions are tracked, the least recently
    started forgotten first.
    """

    def __init__(self, max_waiting_bytes: int = 1 << 20, max_streams: int = 100_000):
        self.max_waiting_bytes = max_waiting_bytes
        self.max_streams = max_streams
        self._streams: dict[tuple, _Direction] = {}
        self.gap = 0

    def feed(self, packet: Packet) -> bytes:
        self.gap = 0
        key = (packet.src, packet.sport, packet.dst, packet.dport)
        flags = packet.tcp_flags
        if flags & ACK:
            self._note_ack(packet)
        direction = self._streams.get(key)
        if direction is None or flags & SYN:
            start = (packet.tcp_seq + 1) % _SEQ_SPACE if flags & SYN else packet.tcp_seq
            direction = self._start(key, start)
        data = self._accept(direction, packet.tcp_seq + (1 if flags & SYN else 0), packet.payload)
        if flags & (FIN | RST):
            if direction.waiting:
                data += self._skip_all_holes(direction)
            self._streams.pop(key, None)
            if flags & RST:
                self._streams.pop((packet.dst, packet.dport, packet.src, packet.sport), None)
        return data

    def _note_ack(self, packet: Packet) -> None:
        peer = self._streams.get((packet.dst, packet.dport, packet.src, packet.sport))
        if peer is not None and (peer.acked is None or _seq_distance(peer.acked, packet.tcp_ack) > 0):
            peer.acked = packet.tcp_ack

    def _start(self, key: tuple, next_seq: int) -> _Direction:
        self._streams.pop(key, None)
        if len(self._streams) >= self.max_streams:
            del self._streams[next(iter(self._streams))]
        direction = self._streams[key] = _Direction(next_seq, {})
        return direction

    def _accept(self, direction: _Direction, seq: int, data: bytes) -> bytes:
        if not data:
            return b""
        ahead = _seq_distance(direction.next_seq, seq)
        if ahead > 0:
            self._wait(direction, seq % _SEQ_SPACE, data)
            return b"".join(self._drain(direction))
        delivered = [data[-ahead:]] if -ahead < len(data) else []
        direction.next_seq = (direction.next_seq + len(delivered[0])) % _SEQ_SPACE if delivered else direction.next_seq
        delivered.extend(self._drain(direction))
        return b"".join(delivered)

    def _wait(self, direction: _Direction, seq: int, data: bytes) -> None:
        if len(data) > len(direction.waiting.get(seq, b"")):
            direction.waiting_bytes += len(data) - len(direction.waiting.get(seq, b""))
            direction.waiting[seq] = data
        if direction.waiting_bytes > self.max_waiting_bytes:
            self._skip_to(direction, _earliest(direction))
        elif direction.acked is not None and _seq_distance(direction.next_seq, direction.acked) > 0:
            # The receiver has bytes the capture never showed: they are lost to us.
            earliest = _earliest(direction)
            self._skip_to(direction, direction.acked if _seq_distance(direction.acked, earliest) > 0 else earliest)

    def _skip_to(self, direction: _Direction, seq: int) -> None:
        self.gap += _seq_distance(direction.next_seq, seq)
        direction.next_seq = seq

    def _skip_all_holes(self, direction: _Direction) -> bytes:
        """The direction ends: hand out everything still waiting, holes skipped."""
        out = []
        while direction.waiting:
            self._skip_to(direction, _earliest(direction))
            out.extend(self._drain(direction))
        return b"".join(out)

    def _drain(self, direction: _Direction) -> list[bytes]:
        """Hand out waiting segments that the stream has now reached."""
        out = []
        progress = True
        while direction.waiting and progress:
            progress = False
            for seq in list(direction.waiting):
                ahead = _seq_distance(direction.next_seq, seq)
                if ahead > 0:
                    continue
                data = direction.waiting.pop(seq)
                direction.waiting_bytes -= len(data)
                if -ahead < len(data):
                    out.append(data[-ahead:])
                    direction.next_seq = (direction.next_seq + len(data) + ahead) % _SEQ_SPACE
                progress = True
        return out


def content_gap(source: str, packet: Packet, size: int, stream: str) -> Rejected:
    """The dead letter for `size` bytes of `stream` that the capture lost before `packet`'s
    data. Units 0: the packet itself was read fine and counts where it was used."""
    return Rejected(source, packet.number, f"{stream}: content gap of {size} bytes", "", SOURCE_TOOL, 0)


def _earliest(direction: _Direction) -> int:
    """The waiting segment nearest ahead of where the stream stands."""
    return min(direction.waiting, key=lambda seq: _seq_distance(direction.next_seq, seq))


def _seq_distance(origin: int, seq: int) -> int:
    """How far `seq` lies ahead of `origin` in TCP sequence space (negative: behind)."""
    distance = (seq - origin) % _SEQ_SPACE
    return distance - _SEQ_SPACE if distance >= _SEQ_SPACE // 2 else distance
