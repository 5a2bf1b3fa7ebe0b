"""The packet layer on captures built here, byte by byte, with dpkt and struct.

Every expected value is known by construction: the addresses, ports, payloads and times
we put into the fixture are the ones `iter_packets` must give back.
"""
from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import dpkt
import pytest

from beamlytics.parsers.base import Rejected, open_input
from beamlytics.parsers.packets import Packet, TcpReassembler, iter_packets

SRC4, DST4 = "192.0.2.1", "198.51.100.7"
SRC6, DST6 = "2001:db8::1", "2001:db8:0:1::53"
TS = 1_700_000_000.123456  # a capture time with a microsecond part
TS_US = 1_700_000_000_123_456


def inet(text: str) -> bytes:
    import socket

    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return socket.inet_pton(family, text)


def udp4(payload: bytes, sport: int = 40000, dport: int = 53, **ip_fields) -> dpkt.ip.IP:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=inet(SRC4), dst=inet(DST4), p=dpkt.ip.IP_PROTO_UDP, data=udp, **ip_fields)
    ip.len = len(ip)
    return ip


def tcp6(payload: bytes, flags: int, seq: int, hop_by_hop: bool = False) -> bytes:
    tcp = bytes(dpkt.tcp.TCP(sport=443, dport=50000, seq=seq, flags=flags, data=payload))
    next_header = dpkt.ip.IP_PROTO_TCP
    extension = b""
    if hop_by_hop:  # 8 bytes: next header, length 0, PadN option of 4 bytes
        extension = bytes([next_header, 0, 1, 4, 0, 0, 0, 0])
        next_header = 0
    body = extension + tcp
    header = struct.pack(">IHBB", 6 << 28, len(body), next_header, 64) + inet(SRC6) + inet(DST6)
    return header + body


def ether(ip: bytes, ethertype: int = 0x0800, tags: bytes = b"") -> bytes:
    return b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb" + tags + struct.pack(">H", ethertype) + ip


def pcap(frames: list[bytes], linktype: int = 1, nano: bool = False, ts: float = TS) -> io.BytesIO:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, linktype=linktype, nano=nano, snaplen=65535)
    for frame in frames:
        writer.writepkt(frame, ts=ts)
    out.seek(0)
    return out


def items(stream: io.BytesIO) -> list:
    return list(iter_packets("fixture", stream))


def only_packet(stream: io.BytesIO) -> Packet:
    (packet,) = items(stream)
    assert isinstance(packet, Packet), packet
    return packet


def test_ethernet_ipv4_udp_fields():
    ip = udp4(b"hello dns", sport=40000, dport=53)
    packet = only_packet(pcap([ether(bytes(ip))]))
    assert (packet.number, packet.ts_us) == (1, TS_US)
    assert (packet.src, packet.dst, packet.proto, packet.sport, packet.dport) == (SRC4, DST4, 17, 40000, 53)
    assert packet.payload == b"hello dns"
    assert packet.ip_bytes == 20 + 8 + 9
    assert (packet.tcp_flags, packet.tcp_seq) == (0, 0)


def test_ethernet_padding_is_not_payload():
    ip = bytes(udp4(b"x"))
    packet = only_packet(pcap([ether(ip) + b"\0" * 17]))  # padded to the 60-byte minimum
    assert packet.payload == b"x"


def test_ipv6_extension_header_then_tcp():
    frame = ether(tcp6(b"GET /", flags=dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, seq=1000, hop_by_hop=True), 0x86DD)
    packet = only_packet(pcap([frame]))
    assert (packet.src, packet.dst) == (SRC6, DST6)
    assert (packet.proto, packet.sport, packet.dport) == (6, 443, 50000)
    assert packet.tcp_flags == 8 | 16 and packet.tcp_seq == 1000
    assert packet.payload == b"GET /"
    assert packet.ip_bytes == 40 + 8 + 20 + 5


# RFC 5952's own examples (sections 4.2.2, 4.2.3, 5), and the IPv4-embedded forms that
# Python <= 3.12 and 3.13 print differently: our text must not depend on either.
@pytest.mark.parametrize("written, canonical", [
    ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
    ("::ffff:0:0", "::ffff:0.0.0.0"),
    ("::10.0.0.1", "::a00:1"),
    ("::0.0.0.1", "::1"),
    ("::", "::"),
    ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ("2001:0db8:0:0:0:0:2:1", "2001:db8::2:1"),
    ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
    ("2001:DB8::AB:C", "2001:db8::ab:c"),
    ("0:0:0:0:1:0:0:0", "::1:0:0:0"),
])
def test_ipv6_addresses_print_in_rfc5952_form(written, canonical):
    datagram = bytearray(tcp6(b"", flags=2, seq=0))
    datagram[8:24] = inet(written)
    packet = only_packet(pcap([ether(bytes(datagram), 0x86DD)]))
    assert packet.src == canonical


def test_nanosecond_pcap_rounds_down_to_microseconds():
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
    frame = ether(bytes(udp4(b"ns")))
    out.write(struct.pack("<IIII", 1_700_000_000, 123_456_789, len(frame), len(frame)) + frame)
    out.seek(0)
    assert only_packet(out).ts_us == 1_700_000_000_123_456


def test_big_endian_microsecond_pcap():
    frame = ether(bytes(udp4(b"be")))
    out = io.BytesIO(
        struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack(">IIII", 1_700_000_000, 5, len(frame), len(frame))
        + frame
    )
    packet = only_packet(out)
    assert packet.ts_us == 1_700_000_000_000_005 and packet.payload == b"be"


IP4 = bytes(udp4(b"payload"))
SLL_HEADER = struct.pack(">HHH8sH", 0, 1, 6, b"\x00" * 8, 0x0800)
SLL2_HEADER = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x00" * 8)


@pytest.mark.parametrize(
    "linktype, frame",
    [
        pytest.param(1, ether(IP4), id="ethernet"),
        pytest.param(113, SLL_HEADER + IP4, id="linux-sll"),
        pytest.param(276, SLL2_HEADER + IP4, id="linux-sll2"),
        pytest.param(101, IP4, id="raw-101"),
        pytest.param(12, IP4, id="raw-12"),
        pytest.param(14, IP4, id="raw-14"),
        pytest.param(228, IP4, id="ipv4"),
        pytest.param(0, struct.pack("<I", 2) + IP4, id="null-little-endian"),
        pytest.param(0, struct.pack(">I", 2) + IP4, id="null-big-endian"),
        pytest.param(108, struct.pack(">I", 2) + IP4, id="loop"),
        pytest.param(1, ether(IP4, 0x0800, struct.pack(">HH", 0x8100, 100)), id="vlan"),
        pytest.param(1, ether(IP4, 0x0800, struct.pack(">HHHH", 0x88A8, 10, 0x8100, 20)), id="qinq"),
        pytest.param(1, ether(IP4, 0x0800, struct.pack(">HHHHHH", 0x9100, 1, 0x9100, 2, 0x8100, 3)), id="qinqinq"),
        # Two MPLS labels: 16 (not bottom of stack), 17 (bottom of stack, S bit set).
        pytest.param(1, ether(struct.pack(">II", 16 << 12 | 64, 17 << 12 | 1 << 8 | 64) + IP4, 0x8847), id="mpls"),
        pytest.param(
            1, ether(struct.pack(">BBHHH", 0x11, 0, 1, len(IP4) + 2, 0x0021) + IP4, 0x8864), id="pppoe"
        ),
    ],
)
def test_link_types_reach_the_same_ipv4_datagram(linktype, frame):
    packet = only_packet(pcap([frame], linktype=linktype))
    assert (packet.src, packet.dst, packet.sport, packet.dport, packet.payload) == (SRC4, DST4, 40000, 53, b"payload")


@pytest.mark.parametrize(
    "linktype, prefix",
    [(229, b""), (101, b""), (0, struct.pack("<I", 30)), (0, struct.pack("<I", 24)), (113, SLL_HEADER[:14] + b"\x86\xdd")],
)
def test_link_types_reach_ipv6(linktype, prefix):
    packet = only_packet(pcap([prefix + tcp6(b"v6", flags=24, seq=7)], linktype=linktype))
    assert (packet.src, packet.dst, packet.payload) == (SRC6, DST6, b"v6")


def test_frames_without_ip_give_none():
    arp = ether(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, 0x0806)
    lldp = ether(b"\x02\x07\x04" + b"\0" * 30, 0x88CC)
    stp = b"\x01\x80\xc2\x00\x00\x00" + b"\x66" * 6 + struct.pack(">H", 38) + b"\x42\x42\x03" + b"\0" * 35
    assert items(pcap([arp, lldp, stp])) == [None, None, None]


def test_undecodable_records_are_rejected_with_their_number():
    good = ether(IP4)
    short = good[:10]  # shorter than an Ethernet header
    bad_tcp = bytes(dpkt.ip.IP(src=inet(SRC4), dst=inet(DST4), p=6, data=b"\x00\x50\x00\x51"))
    result = items(pcap([good, short, ether(bad_tcp), good]))
    assert isinstance(result[0], Packet) and isinstance(result[3], Packet)
    assert [(r.position, r.source_tool) for r in result[1:3]] == [(2, "pcap"), (3, "pcap")]
    assert "Ethernet" in result[1].reason and "TCP" in result[2].reason


def test_truncated_file_rejects_the_cut_record_after_the_whole_ones():
    data = pcap([ether(IP4)] * 3).getvalue()
    for cut in (5, 16 + 3):  # inside the last record's data, inside its record header
        result = items(io.BytesIO(data[: len(data) - len(ether(IP4)) - 16 + cut]))
        assert [type(item) for item in result] == [Packet, Packet, Rejected]
        assert result[2].position == 3


def test_not_a_capture_is_one_rejected_at_position_zero():
    (result,) = items(io.BytesIO(b"this is a text file, not a capture\n"))
    assert isinstance(result, Rejected) and result.position == 0


def test_empty_capture_has_no_records():
    assert items(pcap([])) == []


def fragments4(payload: bytes, cut: list[int], ident: int = 77) -> list[bytes]:
    """Split the IPv4 UDP datagram carrying `payload` at byte offsets `cut` (multiples of 8)."""
    whole = udp4(payload)
    body = bytes(whole.data)
    edges = [0, *cut, len(body)]
    frames = []
    for start, end in zip(edges, edges[1:]):
        more = end < len(body)
        piece = dpkt.ip.IP(
            src=inet(SRC4), dst=inet(DST4), p=17, id=ident, mf=int(more), offset=start // 8,
            data=body[start:end],
        )
        piece.len = len(piece)
        frames.append(ether(bytes(piece)))
    return frames


def test_ipv4_fragments_reassemble_out_of_order_with_duplicates():
    payload = bytes(range(256)) * 8  # 2048 bytes: a large DNS response, say
    first, middle, last = fragments4(payload, [1000, 1600])
    result = items(pcap([middle, first, middle, last]))
    assert result[:3] == [None, None, None]
    packet = result[3]
    assert packet.number == 4 and packet.payload == payload
    assert (packet.sport, packet.dport, packet.ip_bytes) == (40000, 53, 20 + 8 + len(payload))


def test_ipv4_fragments_with_gap_never_complete():
    first, _, last = fragments4(b"z" * 2000, [1000, 1600])
    assert items(pcap([first, last])) == [None, None]


def test_ipv4_fragment_beyond_64k_is_rejected():
    bogus = dpkt.ip.IP(src=inet(SRC4), dst=inet(DST4), p=17, id=1, offset=0x1FFF, data=b"x" * 100)
    bogus.len = len(bogus)
    (result,) = items(pcap([ether(bytes(bogus))]))
    assert isinstance(result, Rejected) and "fragment" in result.reason


def test_ipv6_fragments_reassemble():
    udp = dpkt.udp.UDP(sport=53, dport=5353, data=b"A" * 1500)
    udp.ulen = len(udp)
    body = bytes(udp)
    frames = []
    for start, end in ((0, 1232), (1232, len(body))):
        more = 1 if end < len(body) else 0
        fragment_header = struct.pack(">BBHI", 17, 0, start | more, 0xCAFE)
        piece = fragment_header + body[start:end]
        header = struct.pack(">IHBB", 6 << 28, len(piece), 44, 64) + inet(DST6) + inet(SRC6)
        frames.append(ether(header + piece, 0x86DD))
    first, packet = items(pcap(frames))
    assert first is None
    assert (packet.number, packet.src, packet.proto, packet.sport, packet.dport) == (2, DST6, 17, 53, 5353)
    assert packet.payload == b"A" * 1500 and packet.ip_bytes == 40 + len(body)


def test_pcapng_two_interfaces_with_own_link_types_and_resolutions():
    out = io.BytesIO()
    microsecond_ethernet = dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=1, snaplen=65535)
    nanosecond_raw = dpkt.pcapng.InterfaceDescriptionBlockLE(
        linktype=101, snaplen=65535,
        opts=[dpkt.pcapng.PcapngOptionLE(code=9, data=b"\x09"), dpkt.pcapng.PcapngOptionLE(code=0)],
    )
    writer = dpkt.pcapng.Writer(out, shb=dpkt.pcapng.SectionHeaderBlockLE(), idb=[microsecond_ethernet, nanosecond_raw])
    for interface, ticks, frame in ((0, TS_US, ether(IP4)), (1, 1_700_000_000_987_654_321, IP4)):
        block = dpkt.pcapng.EnhancedPacketBlockLE(
            iface_id=interface, ts_high=ticks >> 32, ts_low=ticks & 0xFFFFFFFF, pkt_data=frame,
            caplen=len(frame), pkt_len=len(frame),
        )
        writer.writepkt(block)
    out.seek(0)
    first, second = items(out)
    assert first.ts_us == TS_US and second.ts_us == 1_700_000_000_987_654
    assert first.payload == second.payload == b"payload"
    assert (first.number, second.number) == (1, 2)


def test_pcapng_truncated_block_is_rejected():
    out = io.BytesIO()
    writer = dpkt.pcapng.Writer(out)
    writer.writepkt(ether(IP4), ts=TS)
    writer.writepkt(ether(IP4), ts=TS)
    data = out.getvalue()
    first, second = items(io.BytesIO(data[:-10]))
    assert isinstance(first, Packet) and isinstance(second, Rejected) and second.position == 2


def test_gzip_capture_through_open_input(tmp_path):
    path = tmp_path / "capture.pcap.gz"
    path.write_bytes(gzip.compress(pcap([ether(IP4)] * 2).getvalue()))
    assert [packet.payload for packet in items(open_input(str(path)))] == [b"payload", b"payload"]


def segment(seq: int, data: bytes = b"", flags: int = 16, reverse: bool = False, ack: int = 0) -> Packet:
    src, dst, sport, dport = (DST4, SRC4, 53, 40000) if reverse else (SRC4, DST4, 40000, 53)
    return Packet(1, 0, src, dst, 6, sport, dport, flags, seq, 40 + len(data), data, ack)


def test_tcp_reassembly_in_order_retransmitted_and_out_of_order():
    streams = TcpReassembler()
    assert streams.feed(segment(999, flags=2)) == b""  # SYN: data starts at 1000
    assert streams.feed(segment(1000, b"abc")) == b"abc"
    assert streams.feed(segment(1000, b"abc")) == b""  # retransmission
    assert streams.feed(segment(1006, b"ghi")) == b""  # early: waits for 1003..1005
    assert streams.feed(segment(1002, b"cdef")) == b"defghi"  # overlaps 1 byte, fills the gap
    assert streams.feed(segment(5000, b"xyz", reverse=True)) == b"xyz"  # other direction, mid-stream
    assert streams.feed(segment(1009, b"!", flags=17)) == b"!"  # FIN ends the direction


def test_tcp_reassembly_skips_a_gap_when_the_buffer_overflows():
    streams = TcpReassembler(max_waiting_bytes=10)
    streams.feed(segment(0, b"ab"))
    assert streams.feed(segment(10, b"0123456")) == b""
    # 12 bytes waiting: the gap 2..9 is given up and the stream goes on from 10.
    assert streams.feed(segment(17, b"789ab")) == b"0123456789ab"
    assert streams.gap == 8  # bytes 2..9
    assert streams.feed(segment(22, b"c")) == b"c" and streams.gap == 0


def test_tcp_reassembly_skips_a_hole_the_receiver_acknowledged():
    streams = TcpReassembler()
    streams.feed(segment(99, flags=2))
    streams.feed(segment(499, flags=18, reverse=True))
    assert streams.feed(segment(100, b"abc")) == b"abc"
    assert streams.feed(segment(110, b"klm")) == b""  # 103..109 missing, maybe only late
    assert streams.gap == 0
    # The receiver acknowledges up to 108: bytes 103..107 reached it, not the capture.
    assert streams.feed(segment(500, b"", reverse=True, ack=108)) == b""
    assert streams.feed(segment(108, b"ij")) == b"ijklm" and streams.gap == 5
    assert streams.feed(segment(104, b"late")) == b""  # behind the stream now: delivered never


def test_tcp_reassembly_hands_out_what_waits_when_the_direction_ends():
    streams = TcpReassembler()
    streams.feed(segment(0, b"ab"))
    assert streams.feed(segment(5, b"fg")) == b""
    assert streams.feed(segment(9, b"j", flags=17)) == b"fgj" and streams.gap == 3 + 2  # 2..4 and 7..8


def test_tcp_reassembly_wraps_around_sequence_space():
    streams = TcpReassembler()
    streams.feed(segment(0xFFFFFFFE, b"ab"))
    assert streams.feed(segment(0, b"cd")) == b"cd"


def test_benchmark_long_capture_is_copies_shifted_past_every_timeout(tmp_path):
    from benchmarks.long_capture import COPY_SPACING_S, write_copies

    seed = pcap([ether(IP4), ether(bytes(udp4(b"second")))], ts=TS).getvalue()
    out = tmp_path / "long.pcap"
    assert write_copies(seed, 3, out) == 6
    with open(out, "rb") as stream:
        records = [(ts, bytes(frame)) for ts, frame in dpkt.pcap.Reader(stream)]
    span = 1 + COPY_SPACING_S  # both records share one second: the copy lasts 1 s, then the spacing
    assert [round(ts - TS) for ts, _ in records] == [0, 0, span, span, 2 * span, 2 * span]
    assert [frame for _, frame in records] == [ether(IP4), ether(bytes(udp4(b"second")))] * 3


def test_benchmark_long_capture_grows_until_start_up_is_a_twentieth_of_the_reference(tmp_path):
    # A stand-in reference of known cost: 0.05 CPU s of start-up plus 1 s per megabyte of capture (no real
    # timing: a loaded machine must not decide the test). The search must reach a length where the start-up
    # is under 5 % of its CPU time, and time both sides at that length and twice it.
    from benchmarks.long_capture import STARTUP_SHARE, measure_lengths

    seed = pcap([ether(bytes(udp4(bytes(400))))] * 20, ts=TS).getvalue()

    def timed(command):
        cpu = 0.05 + Path(command[-1]).stat().st_size / 1e6
        return cpu, cpu

    calls = []
    startup, lengths = measure_lengths(seed, tmp_path, calls.append, lambda path: ["reference", str(path)], timed)
    record = (len(seed) - 24) // 20  # the one-packet capture: the pcap header and one record
    assert startup == pytest.approx(0.05 + (24 + record) / 1e6)
    first, second = lengths
    assert startup / first.reference_cpu_s < STARTUP_SHARE
    assert second.packets == 2 * first.packets and first.packets % 20 == 0
    assert len(calls) == 4  # ours only at the two reported lengths, two rounds each
