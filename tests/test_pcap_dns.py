"""DNS from captures: the wire decoder, query/response matching, and agreement with tshark.

Core tests build DNS messages byte by byte (hand-known values); the real-data tests compare
every DNS message of the shared captures with what tshark decodes (run live when tshark is
installed, else from `tests/expected/tshark_dns.json`, see record_tshark.py there).
"""
from __future__ import annotations

import collections
import functools
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from beamlytics import schemas
from beamlytics.parsers import dns_wire, pcap
from beamlytics.parsers.base import Batch, Read, Rejected, open_input
from beamlytics.parsers.packets import Packet, iter_packets
from beamlytics.parsers.pcap_dns import DnsPayloads, dns_from_packets
from tests.conftest import provisioned_tool, shared_data, skip_or_fail_in_ci

EXPECTED_DIR = Path(__file__).with_name("expected")
RECORDER = EXPECTED_DIR / "record_tshark.py"
CLIENT, SERVER = "10.0.0.2", "10.0.0.53"
T0 = 1_600_000_000.0


# ------------------------------------------------------------------ building DNS by hand

def name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".") if label) + b"\0"


def header(trans_id: int, flags: int, questions: int = 1, answers: int = 0, authority: int = 0, additional: int = 0):
    return struct.pack(">HHHHHH", trans_id, flags, questions, answers, authority, additional)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


POINTER_TO_QUESTION = b"\xc0\x0c"  # the question name always starts right after the header


def query(trans_id: int = 0x1234, qname: str = "www.example.com", qtype: int = 1) -> bytes:
    return header(trans_id, 0x0100) + name(qname) + struct.pack(">HH", qtype, 1)


def response(trans_id: int = 0x1234, qname: str = "www.example.com", rcode: int = 0) -> bytes:
    """A CNAME then an A record, the CNAME target compressed against the question."""
    answers = rr(POINTER_TO_QUESTION, 5, 300, b"\x03cdn" + POINTER_TO_QUESTION)
    answers += rr(b"\x03cdn" + POINTER_TO_QUESTION, 1, 60, bytes([93, 184, 216, 34]))
    return header(trans_id, 0x8180 | rcode, answers=2) + name(qname) + struct.pack(">HH", 1, 1) + answers


def udp_frame(payload: bytes, sport: int, dport: int, src: str, dst: str) -> bytes:
    import socket

    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, data=udp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def tcp_frame(payload: bytes, seq: int, from_client: bool, flags: int = 0x18, ack: int = 0) -> bytes:
    import socket

    src, dst, sport, dport = (CLIENT, SERVER, 41000, 53) if from_client else (SERVER, CLIENT, 53, 41000)
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def to_client(payload: bytes, port: int = 53) -> bytes:
    return udp_frame(payload, port, 41000, SERVER, CLIENT)


def to_server(payload: bytes, port: int = 53) -> bytes:
    return udp_frame(payload, 41000, port, CLIENT, SERVER)


def capture(frames: list[bytes], times: list[float] | None = None) -> io.BytesIO:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out)
    for index, frame in enumerate(frames):
        writer.writepkt(frame, ts=(times[index] if times else T0 + index))
    out.seek(0)
    return out


def dns_table(stream: io.BytesIO, **options) -> tuple[list[dict], list[Rejected], int]:
    rows, rejected, units = [], [], 0
    for item in dns_from_packets("fixture", iter_packets("fixture", stream), 3, options):
        if isinstance(item, Rejected):
            rejected.append(item)
        else:
            assert item.records.schema == schemas.DNS and item.records.num_rows <= 3 + 1
            rows += item.records.to_pylist()
            units += item.units
    return rows, rejected, units


def us(seconds: float):
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


# ------------------------------------------------------------------ dns_wire

def test_decode_query_and_compressed_response():
    message = dns_wire.decode(response(0xBEEF, "www.example.com", rcode=3))
    assert (message.trans_id, message.is_response, message.rcode) == (0xBEEF, True, 3)
    assert message.flag_names() == ["QR", "RD", "RA"]
    assert [(q.name, q.qtype, q.qclass) for q in message.questions] == [("www.example.com", 1, 1)]
    assert [(a.name, a.rtype, a.ttl, a.data) for a in message.answers] == [
        ("www.example.com", 5, 300, "cdn.www.example.com"),
        ("cdn.www.example.com", 1, 60, "93.184.216.34"),
    ]


@pytest.mark.parametrize(
    "rtype, rdata, text",
    [
        (28, bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
        (15, b"\x00\x0a" + name("mail.example.com"), "10 mail.example.com"),
        (33, struct.pack(">HHH", 1, 5, 5060) + name("sip.example.com"), "1 5 5060 sip.example.com"),
        (6, name("ns.example.com") + name("admin.example.com") + struct.pack(">IIIII", 7, 3600, 600, 86400, 300),
         "ns.example.com admin.example.com 7 3600 600 86400 300"),
        (16, b"\x05hello\x05world", "hello world"),
        (12, name("host.example.com"), "host.example.com"),
        (99, b"\x03v=1", "v=1"),
        (48, b"\x01\x02\xff", "\\# 3 0102ff"),  # DNSKEY: no text form of ours, RFC 3597 generic
        (16, b"\x09short", "\\# 6 0973686f7274"),  # broken TXT: generic rendering, message kept
    ],
)
def test_rdata_rendering(rtype, rdata, text):
    message = header(1, 0x8180, questions=0, answers=1) + rr(name("x.example"), rtype, 1, rdata)
    assert dns_wire.decode(message).answers[0].data == text


def test_names_root_escapes_and_unsigned_ttl():
    odd = b"\x05a b\tc\x02\x01\xff" + b"\0"  # space kept, tab and \x01 escaped, invalid UTF-8 replaced
    message = header(1, 0x8180, answers=1) + odd + struct.pack(">HH", 2, 1) + rr(b"\0", 1, 0xFFFFFFFF, bytes(4))
    decoded = dns_wire.decode(message)
    assert decoded.questions[0].name == "a b\\tc.\\001\ufffd"
    assert decoded.answers[0].name == "<Root>" and decoded.answers[0].ttl == 4294967295


@pytest.mark.parametrize(
    "message, reason",
    [
        (b"\x00\x01\x00", "shorter than its header"),
        (header(1, 0) + b"\xc0\x0c" + b"\0\1\0\1", "pointer loop"),  # the name points at itself
        (header(1, 0) + b"\xc0\xff", "past the end"),
        (header(1, 0) + b"\x41abc\0\0\1\0\1", "label type 0x40"),
        (header(1, 0) + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\0\0\1\0\1",
         "longer than 255"),
        (header(1, 0x8180, answers=1) + name("a.b") + b"\0\1\0\1" + b"\xc0\x0c\0\1\0\1\0\0\0\1\0\x10\1\2", "answer data"),
        (header(2, 0) + name("a.b") + b"\0", "question runs past"),
    ],
)
def test_malformed_messages_raise_value_error_with_reason(message, reason):
    with pytest.raises(ValueError, match=reason):
        dns_wire.decode(message)


# ------------------------------------------------------------------ the dns table

def test_query_and_response_become_one_row():
    rows, rejected, units = dns_table(capture([to_server(query()), to_client(response())], [T0, T0 + 0.25]))
    assert rejected == [] and units == 2
    (row,) = rows
    assert row == {
        "c_ip": CLIENT, "c_port": 41000, "s_ip": SERVER, "s_port": 53, "proto": "udp", "trans_id": 0x1234,
        "query": "www.example.com", "req_class": "IN", "req_type": "A", "resp_code": "NOERROR",
        "flags": "QR RD RA", "answers": ["cdn.www.example.com", "93.184.216.34"],
        "answer_types": ["CNAME", "A"], "answer_ttls": [300, 60],
        "req_time": us(T0), "resp_time": us(T0 + 0.25), "uid": None,
        "source_tool": "pcap", "source_file": "fixture", "source_pos": 1,
    }


def test_unanswered_query_and_lone_response():
    frames = [to_server(query(1, "lost.example")), to_client(response(2, "late.example"))]
    rows, rejected, units = dns_table(capture(frames))
    by_query = {row["query"]: row for row in rows}
    lost, late = by_query["lost.example"], by_query["late.example"]
    assert (lost["resp_code"], lost["resp_time"], lost["answers"], lost["flags"]) == (None, None, None, "RD")
    assert (late["req_time"], late["resp_time"], late["resp_code"], late["c_ip"]) == (us(T0 + 1), None, "NOERROR", CLIENT)
    assert late["source_pos"] == 2 and units == 2


def test_matching_needs_the_same_name_and_id_and_times_out():
    frames = [
        to_server(query(7, "a.example")),
        to_server(query(7, "b.example")),  # same id, other name: a separate query
        to_client(response(7, "b.example")),
        to_server(query(8, "c.example")),  # answered only after the 30 s timeout
        to_client(response(8, "c.example")),
    ]
    rows, _, _ = dns_table(capture(frames, [T0, T0, T0 + 0.1, T0 + 1, T0 + 40]))
    summary = sorted((row["query"], row["source_pos"], row["resp_time"] is not None) for row in rows)
    # c's query was written out unanswered at its timeout; its response is then a lone one.
    assert summary == [("a.example", 1, False), ("b.example", 2, True), ("c.example", 4, False), ("c.example", 5, False)]


def test_mdns_and_llmnr_ports_are_dns():
    frames = [to_server(query(0, "printer.local"), 5353), to_server(query(9, "host"), 5355), to_server(b"not dns", 80)]
    rows, rejected, units = dns_table(capture(frames))
    assert sorted(row["query"] for row in rows) == ["host", "printer.local"] and units == 3 and not rejected


def test_dns_over_tcp_several_messages_per_segment_and_across_segments():
    first, second = query(1, "one.example"), query(2, "two.example")
    answer = response(1, "one.example")
    stream = struct.pack(">H", len(first)) + first + struct.pack(">H", len(second)) + second
    reply = struct.pack(">H", len(answer)) + answer
    frames = [
        tcp_frame(b"", 99, True, flags=0x02),  # SYN
        tcp_frame(stream, 100, True),  # two queries in one segment
        tcp_frame(reply[:5], 500, False),  # the answer cut in three
        tcp_frame(reply[5:20], 505, False),
        tcp_frame(reply[20:], 520, False),
    ]
    rows, rejected, units = dns_table(capture(frames))
    assert not rejected and units == 5
    by_query = {row["query"]: row for row in rows}
    assert by_query["one.example"]["answers"] == ["cdn.one.example", "93.184.216.34"]
    assert by_query["one.example"]["proto"] == "tcp" and by_query["one.example"]["source_pos"] == 2
    assert by_query["two.example"]["resp_code"] is None


def test_dns_over_tcp_content_gap_skips_the_rest_of_that_stream():
    queries = [query(n, f"q{n}.example") for n in (1, 2, 3)]
    stream = b"".join(struct.pack(">H", len(q)) + q for q in queries)
    replies = [struct.pack(">H", len(r)) + r for r in (response(n, f"q{n}.example") for n in (1, 2, 3))]
    lost = len(replies[1]) // 2
    frames = [
        tcp_frame(b"", 99, True, flags=0x02),
        tcp_frame(stream, 100, True),
        tcp_frame(replies[0], 500, False),
        # the capture loses replies[1][:lost]; the client's ACK shows the server sent it
        tcp_frame(b"", 100 + len(stream), True, flags=0x10, ack=500 + len(replies[0]) + lost),
        tcp_frame(replies[1][lost:] + replies[2], 500 + len(replies[0]) + lost, False),
    ]
    rows, rejected, units = dns_table(capture(frames))
    assert units == len(frames)
    assert [(r.position, r.units, r.reason) for r in rejected] == [
        (5, 0, f"DNS over TCP stream (rest of it skipped): content gap of {lost} bytes")]
    answered = {row["query"]: row["resp_code"] for row in rows}
    assert answered == {"q1.example": "NOERROR", "q2.example": None, "q3.example": None}


def test_fragmented_response_is_reassembled():
    import socket

    big = header(5, 0x8180, answers=40) + name("big.example") + b"\0\x10\0\1"
    big += b"".join(rr(POINTER_TO_QUESTION, 16, 1, b"\x30" + b"t" * 48) for _ in range(40))
    udp = dpkt.udp.UDP(sport=53, dport=41000, data=big)
    udp.ulen = len(udp)
    body = bytes(udp)
    frames = []
    for start in range(0, len(body), 1200):
        piece = body[start : start + 1200]
        more = start + 1200 < len(body)
        ip = dpkt.ip.IP(src=socket.inet_aton(SERVER), dst=socket.inet_aton(CLIENT), p=17, id=42,
                        mf=int(more), offset=start // 8, data=piece)
        ip.len = len(ip)
        frames.append(bytes(dpkt.ethernet.Ethernet(type=0x0800, data=ip)))
    rows, rejected, units = dns_table(capture([to_server(query(5, "big.example", 16)), *frames]))
    assert not rejected and units == 1 + len(frames)
    (row,) = rows
    assert row["answers"] == ["t" * 48] * 40 and row["answer_types"] == ["TXT"] * 40


def test_undecodable_dns_packet_is_rejected_and_the_run_goes_on():
    frames = [to_server(b"\x01\x02garbage"), to_server(query()), to_client(response())]
    rows, rejected, units = dns_table(capture(frames))
    assert [(r.position, r.source_tool) for r in rejected] == [(1, "pcap")]
    assert "undecodable DNS message" in rejected[0].reason
    assert units + len(rejected) == 3 and len(rows) == 1


def test_batches_respect_batch_rows():
    frames = [to_server(query(index, f"q{index}.example")) for index in range(10)]
    rows, _, units = dns_table(capture(frames))  # dns_table checks every batch's size
    assert len(rows) == 10 and units == 10


def test_pcap_format_sniffs_every_magic_and_dispatches_dns():
    for magic in ("d4c3b2a1", "a1b2c3d4", "4d3cb2a1", "a1b23c4d"):
        assert pcap.sniff("x", bytes.fromhex(magic) + bytes(20)) == "pcap"
    assert pcap.sniff("x", bytes.fromhex("0a0d0d0a1c0000004d3c2b1a")) == "pcap"
    assert pcap.sniff("x", b"#separator \\x09\n") is None
    items = list(pcap.parse("f", capture([to_server(query()), to_client(response())]), "pcap", "dns"))
    assert [type(item) for item in items] == [Batch, Read] and items[0].records.num_rows == 1
    assert (items[1].source, items[1].units) == ("f", 2)


# ------------------------------------------------------------------ real captures vs tshark

CAPTURE_FILES = [
    line for line in json.loads((EXPECTED_DIR / "tshark_dns.json").read_text())
]
CORRUPT = [name for name in CAPTURE_FILES if name.startswith("pcaps/corrupt/")]
DNS_CAPTURES = [name for name in CAPTURE_FILES if name not in CORRUPT]


@functools.lru_cache(maxsize=None)  # one tshark run per capture for all the tests below
def tshark_view(relative: str) -> tuple[dict, bool]:
    """tshark's frames for a capture, and whether they are all of them (live run)."""
    path = shared_data(relative)
    if provisioned_tool("tshark"):
        done = subprocess.run([sys.executable, str(RECORDER), "--print", str(path)], capture_output=True, check=True)
        return json.loads(done.stdout), True
    return json.loads((EXPECTED_DIR / "tshark_dns.json").read_text())[relative], False


def our_messages(path: Path) -> tuple[dict[int, list], int]:
    """Per packet number, our decoded messages (or error strings); and the record count."""
    payloads, frames, records = DnsPayloads(), {}, 0
    for item in iter_packets(str(path), open_input(str(path))):
        records += 1
        if isinstance(item, Packet):
            decoded = []
            for raw in payloads.feed(item):
                try:
                    decoded.append(dns_wire.decode(raw))
                except ValueError as error:
                    decoded.append(str(error))
            if decoded:
                frames[item.number] = decoded
    return frames, records


# tshark decodes these by substituting "<Name too long>" for a name past 255 bytes and goes
# on; we reject the message (RFC 1035 caps names at 255 bytes), so their frames are ours
# to reject, not to compare.
REJECTED_ON_PURPOSE = {
    "pcaps/corrupt/malformed_dns.pcap": {2, 3, 5, 6},
    "pcaps/corrupt/tcpdump_dns-badlabel.pcap": {1},
}


def compare_frame(theirs: dict, ours: list) -> None:
    assert all(not isinstance(message, str) for message in ours), ours
    assert [message.trans_id for message in ours] == theirs["ids"]
    assert [int(message.is_response) for message in ours] == theirs["responses"]
    assert [q.name for message in ours for q in message.questions] == theirs["qnames"]
    assert [q.qtype for message in ours for q in message.questions] == theirs["qtypes"]
    assert [message.rcode for message in ours if message.is_response] == theirs["rcodes"]  # shown for responses
    assert [len(message.answers) for message in ours] == theirs["answer_counts"]
    if len(ours) == 1:  # tshark lists every section's records, answers first
        answers = ours[0].answers
        assert [a.rtype for a in answers] == theirs["rr_types"][: len(answers)]
        assert [a.ttl for a in answers] == theirs["ttls"][: len(answers)]
        for rtype, field in ((1, "a"), (28, "aaaa"), (5, "cname")):
            mine = [a.data for a in answers if a.rtype == rtype]
            assert mine == theirs[field][: len(mine)], field


@pytest.mark.parametrize("relative", CAPTURE_FILES)
def test_every_dns_message_matches_tshark(relative):
    theirs, complete = tshark_view(relative)
    ours, _ = our_messages(shared_data(relative))
    skipped = REJECTED_ON_PURPOSE.get(relative, set())
    their_frames = {frame["frame"]: frame for frame in theirs["dns_frames"]}
    if complete:
        assert set(ours) == set(their_frames), "the same frames carry DNS"
    for number, frame in their_frames.items():
        if number in skipped:
            assert any(isinstance(message, str) for message in ours[number])
            continue
        assert not frame["malformed"], f"tshark finds frame {number} malformed but we do not skip it"
        compare_frame(frame, ours[number])


@pytest.mark.parametrize("relative", CAPTURE_FILES)
def test_counts_add_up_and_match_tshark_frame_count(relative):
    path = shared_data(relative)
    theirs, _ = tshark_view(relative)
    *items, read = pcap.parse(str(path), open_input(str(path)), "pcap", "dns")
    units = sum(item.units for item in items)  # Batch and Rejected both carry units
    assert isinstance(read, Read)
    assert units == read.units
    # tshark counts the whole records, as our reader does: a record cut by the end of the
    # file (ppa_http-fault-post_truncated.pcap ends inside record 26) is a dead letter for
    # the rest of the file, not a record.
    assert read.units == theirs["frames"]


@pytest.mark.parametrize("relative", DNS_CAPTURES)
def test_table_rows_carry_tshark_queries_and_responses(relative):
    theirs, complete = tshark_view(relative)
    if not complete:
        skip_or_fail_in_ci("needs every frame, so tshark itself: it is not installed (apt-get install tshark)")
    path = shared_data(relative)
    rows = [row for item in pcap.parse(str(path), open_input(str(path)), "pcap", "dns")
            if isinstance(item, Batch) for row in item.records.to_pylist()]
    queries = collections.Counter()
    responses = collections.Counter()
    for frame in theirs["dns_frames"]:
        if len(frame["ids"]) != 1 or not frame["qnames"]:
            continue  # several messages or no question: no unambiguous row key
        key = (frame["qnames"][0], schemas.type_name(frame["qtypes"][0]))
        if frame["responses"] == [1]:
            responses[key + (schemas.rcode_name(frame["rcodes"][0]),)] += 1
        else:
            queries[key + (frame["frame"],)] += 1
    row_queries = collections.Counter(
        (row["query"], row["req_type"], row["source_pos"]) for row in rows if row["flags"] is not None
        and (row["resp_time"] is not None or row["resp_code"] is None)
    )
    row_responses = collections.Counter(
        (row["query"], row["req_type"], row["resp_code"]) for row in rows if row["resp_code"] is not None
    )
    assert queries - row_queries == collections.Counter()
    assert responses - row_responses == collections.Counter()
