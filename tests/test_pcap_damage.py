"""Damaged captures lose only what the damage covers.

The damage is made here, on copies of real captures in a temp dir: cut (plain or gzipped,
at several offsets), bits flipped, length fields made to lie, bytes cut out or inserted.
What must survive is computed independently: dpkt reads the same bytes (or the undamaged
original), capinfos' packet counts come from STATS.json, and the record layout the damage
is aimed at is walked here with struct.
"""
from __future__ import annotations

import gzip
import io
import json
import struct
import tracemalloc
import zlib

import dpkt
import pytest

from beamlytics.parsers import formats, pcap
from beamlytics.parsers.base import Batch, Read, Rejected, decompressed, open_input, read_head
from beamlytics.parsers.packets import Packet, PacketReader, capture_format
from tests.conftest import DATA_DIR, shared_data

ESPN = "pcaps/http/csanders_http_espn.pcapng"  # 956 packets (capinfos)
BRO = "pcaps/http/zeek_bro.org.pcap"  # 751 packets


def stats() -> dict:
    return json.loads(shared_data("pcaps/STATS.json").read_text())


def capinfos_packets(relative: str) -> int:
    return int(stats()[relative]["capinfos"][2])


def pcapng_blocks(raw: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, length) of every block of a little-endian pcapng file."""
    blocks, offset = [], 0
    while offset < len(raw):
        block_type, length = struct.unpack_from("<II", raw, offset)
        blocks.append((offset, block_type, length))
        offset += length
    return blocks


def pcap_records(raw: bytes) -> list[tuple[int, int]]:
    """(offset, captured length) of every record of a little-endian pcap file."""
    records, offset = [], 24
    while offset < len(raw):
        caplen = struct.unpack_from("<I", raw, offset + 8)[0]
        records.append((offset, caplen))
        offset += 16 + caplen
    return records


def dpkt_times(data: bytes) -> list[int]:
    """Capture times (µs) of the records dpkt reads from `data` before it stops."""
    reader_class = dpkt.pcapng.Reader if data[:4] == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader
    times = []
    try:
        for ts, _ in reader_class(io.BytesIO(data)):
            times.append(round(ts * 1_000_000))
    except (dpkt.NeedData, dpkt.UnpackError, ValueError, struct.error):
        pass  # dpkt stops at the damage; what it read before is the reference
    return times


def read_all(data: bytes) -> tuple[PacketReader, list]:
    reader = PacketReader("damaged", io.BytesIO(data))
    return reader, list(reader)


def packet_times(items: list) -> list[int]:
    return [item.ts_us for item in items if isinstance(item, Packet)]


def rejected(items: list) -> list[Rejected]:
    return [item for item in items if isinstance(item, Rejected)]


def parse_file(path, table: str) -> list:
    return list(formats.parse_paths([str(path)], table))


def check_counts(items: list) -> Read:
    """The reader's count is last, and every record it delivered is parsed or rejected once."""
    read = items[-1]
    assert isinstance(read, Read)
    assert sum(item.units for item in items[:-1]) == read.units
    return read


# ------------------------------------------------------------------ 1. truncated captures

def gunzip_prefix(compressed: bytes) -> bytes:
    """Everything zlib can decompress from a cut gzip stream."""
    return zlib.decompressobj(wbits=31).decompress(compressed)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.97])
def test_truncated_pcapng_gz_keeps_every_packet_before_the_cut(tmp_path, fraction):
    compressed = gzip.compress(shared_data(ESPN).read_bytes())
    cut = compressed[: int(len(compressed) * fraction)]
    path = tmp_path / "espn.pcapng.gz"
    path.write_bytes(cut)
    expected = dpkt_times(gunzip_prefix(cut))
    assert 0 < len(expected) < capinfos_packets(ESPN)

    items = parse_file(path, "named_flows")
    read = check_counts(items)
    assert read.units == len(expected)
    (dead,) = rejected(items)
    assert (dead.position, dead.units) == (len(expected) + 1, 0)
    assert "Compressed file ended" in dead.reason and "rest of file unreadable" in dead.reason
    with open_input(str(path)) as stream:
        assert packet_times(list(PacketReader(str(path), stream))) == expected


@pytest.mark.parametrize("relative", [ESPN, BRO])
def test_plain_capture_cut_mid_record(relative):
    raw = shared_data(relative).read_bytes()
    if relative == ESPN:
        offsets = [offset for offset, block_type, _ in pcapng_blocks(raw) if block_type == 6]
    else:
        offsets = [offset for offset, _ in pcap_records(raw)]
    start = offsets[300]
    for cut in (start + 5, start + 30):  # inside the record header, inside the record
        reader, items = read_all(raw[:cut])
        assert packet_times(items) == dpkt_times(raw[:start]) and reader.delivered == 300
        (dead,) = rejected(items)
        assert (dead.position, dead.units) == (301, 0) and f"at byte {start}" in dead.reason


def test_gzip_cut_exactly_between_records_still_reports_the_broken_stream():
    raw = shared_data(BRO).read_bytes()
    boundary = pcap_records(raw)[200][0]
    # Without its 8-byte trailer the gzip stream raises EOFError right after the last record.
    stream = decompressed(io.BytesIO(gzip.compress(raw[:boundary])[:-8]))
    reader = PacketReader("cut", stream)
    items = list(reader)
    assert reader.delivered == 200 and len(packet_times(items)) == 200
    (dead,) = rejected(items)
    assert dead.units == 0 and "stream broken" in dead.reason and "EOFError" in dead.reason


# ------------------------------------------------------------------ 5. sniffing through damage

def test_truncated_captures_are_still_recognised_as_captures(tmp_path):
    compressed = gzip.compress(shared_data(ESPN).read_bytes())
    for cut in (3000, 40_000):  # the broken gzip ends inside the 64 KiB the sniffer reads
        path = tmp_path / f"cut{cut}.pcapng.gz"
        path.write_bytes(compressed[:cut])
        with open_input(str(path)) as stream:
            assert pcap.sniff(path.name, read_head(stream)) == "pcap"
    shb = shared_data(ESPN).read_bytes()[:12]
    for size in (4, 8, 11):  # cut inside the section header, before its byte-order magic
        assert capture_format(shb[:size]) == "pcapng"
    reader, items = read_all(shb[:8])
    assert reader.delivered == 0 and [item.units for item in items] == [0]
    assert capture_format(b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00XXXX") is None  # a wrong byte-order magic is no pcapng


# ------------------------------------------------------------------ 2. absurd fields

def espn_damaged(damage) -> tuple[bytes, list[int], int]:
    """The espn capture with `damage(data, block offset, block length)` done to its 101st
    packet block; also dpkt's times of the undamaged packets, and that packet's number."""
    raw = shared_data(ESPN).read_bytes()
    packets = [(offset, length) for offset, block_type, length in pcapng_blocks(raw) if block_type == 6]
    data = bytearray(raw)
    damage(data, *packets[100])
    times = dpkt_times(raw)
    return bytes(data), times[:100] + times[101:], 101


def test_flipped_timestamp_bit_costs_one_packet(tmp_path):
    def flip(data, offset, _):
        data[offset + 12 + 3] ^= 0x80  # top bit of the timestamp's high word: past int64 µs

    data, expected, number = espn_damaged(flip)
    path = tmp_path / "flipped.pcapng"
    path.write_bytes(data)
    for table in ("dns", "http", "named_flows"):
        items = parse_file(path, table)
        assert check_counts(items).units == capinfos_packets(ESPN)
        before = {(dead.position, dead.reason) for dead in rejected(parse_file(shared_data(ESPN), table))}
        dead, *gaps = [item for item in rejected(items) if (item.position, item.reason) not in before]
        assert (dead.position, dead.units) == (number, 1) and "timestamp" in dead.reason
        # The packet lost is an HTTP segment: the http table sees (and reports) the hole it leaves.
        assert all("content gap" in gap.reason and gap.units == 0 for gap in gaps) and len(gaps) <= (table == "http")
        assert sum(item.records.num_rows for item in items if isinstance(item, Batch)) > 0
    assert packet_times(read_all(data)[1]) == expected


@pytest.mark.parametrize("damage, reason", [
    (lambda data, offset, _: struct.pack_into("<I", data, offset + 4, 0xFFFF_FFF0), "bad block length 4294967280"),
    (lambda data, offset, length: struct.pack_into("<I", data, offset + 4, length + 400), "differs from its copy"),
    (lambda data, offset, _: struct.pack_into("<I", data, offset + 20, 100_000), "captured length 100000 overruns"),
    (lambda data, offset, _: data.__delitem__(slice(offset + 30, offset + 60)), "differs from its copy"),
], ids=["block-length-4GB", "block-length-lies", "captured-length-lies", "bytes-cut-out"])
def test_pcapng_lying_lengths_cost_one_packet_and_reading_resumes(damage, reason):
    data, expected, number = espn_damaged(damage)
    tracemalloc.start()
    reader, items = read_all(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20  # far below what the 4 GB length claims
    (dead,) = rejected(items)
    assert (dead.position, dead.units) == (number, 1) and reason in dead.reason
    assert packet_times(items) == expected and reader.delivered == capinfos_packets(ESPN)


def bro_damaged(damage) -> tuple[bytes, list[int]]:
    raw = shared_data(BRO).read_bytes()
    data = bytearray(raw)
    damage(data, *pcap_records(raw)[100])
    times = dpkt_times(raw)
    return bytes(data), times[:100] + times[101:]


@pytest.mark.parametrize("damage, reason", [
    (lambda data, offset, _: struct.pack_into("<I", data, offset + 8, 0xFFFF_FFF0), "exceeds 262144"),
    (lambda data, offset, caplen: struct.pack_into("<I", data, offset + 8, caplen + 7), "implausible record"),
    (lambda data, offset, _: struct.pack_into("<I", data, offset + 8, 70_000), "implausible record"),
], ids=["caplen-4GB", "caplen-a-little-long", "caplen-over-snaplen"])
def test_pcap_lying_captured_length_costs_one_packet_and_reading_resumes(damage, reason):
    data, expected = bro_damaged(damage)
    reader, items = read_all(data)
    (dead,) = rejected(items)
    assert (dead.position, dead.units) == (101, 1) and reason in dead.reason and "resumed at byte" in dead.reason
    assert packet_times(items) == expected and reader.delivered == capinfos_packets(BRO)


def test_pcap_garbage_inserted_between_records_is_one_dead_letter():
    raw = shared_data(BRO).read_bytes()
    at = pcap_records(raw)[100][0]
    reader, items = read_all(raw[:at] + bytes(range(256)) * 4096 + raw[at:])
    (dead,) = rejected(items)
    assert (dead.position, dead.units) == (101, 1) and f"resumed at byte {at + (1 << 20)}" in dead.reason
    assert packet_times(items) == dpkt_times(raw) and reader.delivered == capinfos_packets(BRO) + 1


def test_damage_with_nothing_plausible_after_it_rejects_the_rest():
    raw = shared_data(BRO).read_bytes()
    at = pcap_records(raw)[100][0]
    reader, items = read_all(raw[:at + 8] + b"\xff" * 4000)
    (dead,) = rejected(items)
    assert (dead.position, dead.units) == (101, 0) and "rest of file unreadable" in dead.reason
    assert reader.delivered == 100


# ------------------------------------------------------------------ 4. counts against capinfos

CAPTURES = sorted(name for name in json.loads((DATA_DIR / "pcaps" / "STATS.json").read_text())) \
    if (DATA_DIR / "pcaps" / "STATS.json").exists() else []


@pytest.mark.parametrize("relative", CAPTURES)
def test_read_count_matches_capinfos_and_every_record_counts_once(relative):
    path = shared_data(relative)
    for table in ("dns", "http", "named_flows"):
        with open_input(str(path)) as stream:
            items = list(pcap.parse(str(path), stream, "pcap", table))
        assert check_counts(items).units == capinfos_packets(relative), table
