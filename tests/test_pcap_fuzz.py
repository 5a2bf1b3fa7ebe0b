"""Fuzzing the capture path: random and mutated bytes never raise, and counts add up.

Fixed example counts and derandomized generation keep CI stable and fast.
"""
from __future__ import annotations

import io
import struct

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamlytics.parsers import dns_wire, pcap
from beamlytics.parsers.base import Read, Rejected
from beamlytics.parsers.packets import Packet, PacketReader
from beamlytics.parsers.pcap_dns import dns_from_packets

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _seed_messages() -> list[bytes]:
    question = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x5d\xb8\xd8\x22"
    soa = b"\xc0\x0c\x00\x06\x00\x01\x00\x00\x00\x3c\x00\x18\xc0\x10\xc0\x10" + bytes(20)
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x0b\x00\x08\x00\x07\x00\x01\x18\x00\x0a\x00\x00"
    return [
        struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 1) + question + opt,
        struct.pack(">HHHHHH", 1, 0x8180, 1, 2, 0, 0) + question + answer + soa,
    ]


SEED_MESSAGES = _seed_messages()


def _seed_capture() -> bytes:
    """A small capture with DNS over UDP and TCP, a fragment and an ARP frame."""
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out)
    for index, message in enumerate(SEED_MESSAGES):
        udp = dpkt.udp.UDP(sport=53 if index else 40000, dport=40000 if index else 53, data=message)
        udp.ulen = len(udp)
        ip = dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17, data=udp)
        ip.len = len(ip)
        writer.writepkt(bytes(dpkt.ethernet.Ethernet(type=0x0800, data=ip)), ts=1.0 + index)
        tcp = dpkt.tcp.TCP(sport=40001, dport=53, seq=1, flags=0x18, data=struct.pack(">H", len(message)) + message)
        ip = dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=6, data=tcp)
        ip.len = len(ip)
        writer.writepkt(bytes(dpkt.ethernet.Ethernet(type=0x0800, data=ip)), ts=2.0 + index)
    fragment = dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17, id=9, mf=1, data=b"\0\x35\0\x35" + bytes(20))
    fragment.len = len(fragment)
    writer.writepkt(bytes(dpkt.ethernet.Ethernet(type=0x0800, data=fragment)), ts=3.0)
    writer.writepkt(bytes(dpkt.ethernet.Ethernet(type=0x0806, data=bytes(28))), ts=4.0)
    return out.getvalue()


SEED_CAPTURE = _seed_capture()
SEED_RECORDS = 6


def _seed_pcapng() -> bytes:
    """The same records as a pcapng file."""
    out = io.BytesIO()
    writer = dpkt.pcapng.Writer(out)
    for timestamp, frame in dpkt.pcap.Reader(io.BytesIO(SEED_CAPTURE)):
        writer.writepkt(frame, ts=timestamp)
    return out.getvalue()


SEED_PCAPNG = _seed_pcapng()


def _mutated(seed: bytes):
    """`seed` with a few bytes overwritten, a slice cut out, or cut short."""
    positions = st.integers(0, len(seed) - 1)
    overwrite = st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: _overwrite(seed, edits)
    )
    cut_short = st.integers(0, len(seed)).map(lambda end: seed[:end])
    cut_out = st.tuples(positions, st.integers(1, 64)).map(lambda cut: seed[: cut[0]] + seed[cut[0] + cut[1] :])
    return st.one_of(overwrite, cut_short, cut_out)


def _overwrite(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for position, value in edits:
        data[position] = value
    return bytes(data)


def _count(data: bytes) -> tuple[int, int, int]:
    """(records the reader delivered, units the dns table accounts for, Rejected from the reader)."""
    reader = PacketReader("fuzz", io.BytesIO(data))
    items = list(reader)
    assert all(item is None or isinstance(item, (Packet, Rejected)) for item in items)
    # One item per delivered record, plus at most one rest-of-file dead letter (units 0).
    rest = [item for item in items if isinstance(item, Rejected) and item.units == 0]
    assert len(rest) <= 1 and len(items) - len(rest) == reader.delivered
    table_total = sum(item.units for item in dns_from_packets("fuzz", iter(items), 4))
    return reader.delivered, table_total, sum(isinstance(item, Rejected) for item in items)


@FUZZ
@given(st.one_of(st.binary(max_size=2048), _mutated(SEED_CAPTURE), _mutated(SEED_PCAPNG)))
def test_captures_never_raise_and_every_record_counts_once(data):
    delivered, table_total, _ = _count(data)
    assert table_total == delivered


@FUZZ
@given(st.one_of(_mutated(SEED_CAPTURE), _mutated(SEED_PCAPNG)))
def test_every_table_ends_with_the_readers_count_and_accounts_for_it(data):
    for table in ("dns", "http", "named_flows"):
        *items, read = pcap.parse("fuzz", io.BytesIO(data), "pcap", table)
        assert isinstance(read, Read) and not any(isinstance(item, Read) for item in items)
        assert sum(item.units for item in items) == read.units


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_after_a_pcap_header(tail):
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    delivered, table_total, _ = _count(header + tail)
    assert table_total == delivered


@FUZZ
@given(st.one_of(st.binary(max_size=600), *(_mutated(message) for message in SEED_MESSAGES)))
def test_dns_wire_decodes_or_raises_value_error(message):
    try:
        decoded = dns_wire.decode(message)
    except ValueError as error:
        assert str(error)
        return
    assert 0 <= decoded.trans_id <= 0xFFFF
    assert all(isinstance(answer.data, str) for answer in decoded.answers)


def test_seed_capture_is_sound():
    """The fuzz seed itself decodes fully, so mutations start from real structure."""
    for seed in (SEED_CAPTURE, SEED_PCAPNG):
        items, table_total, rejected = _count(seed)
        assert (items, table_total, rejected) == (SEED_RECORDS, SEED_RECORDS, 0)
