"""TLS ClientHello SNI: hand-built records, split records and segments, garbage, and
tshark's `tls.handshake.extensions_server_name` on the shared captures."""
from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamlytics.parsers import pcap_flows
from beamlytics.parsers.tls import client_hello_incomplete, client_hello_sni, parse_client_hello
from tests.conftest import provisioned_tool, shared_data
from tests.expected import record_flows_http as reference
from tests.test_pcap_flows import ACK, C, SYN, capture_rows, client_hello, run, tcp



def _vector(length_bytes: int, body: bytes) -> bytes:
    return len(body).to_bytes(length_bytes, "big") + body


def hello_with_extensions(*extensions: tuple[int, bytes]) -> bytes:
    """A ClientHello handshake message (no record header) carrying the given extensions."""
    body = b"\x03\x03" + bytes(32) + _vector(1, b"\x01" * 32) + _vector(2, b"\x13\x01\x13\x02") + _vector(1, b"\x00")
    body += _vector(2, b"".join(kind.to_bytes(2, "big") + _vector(2, data) for kind, data in extensions))
    return b"\x01" + _vector(3, body)


def records(handshake: bytes, *cuts: int) -> bytes:
    """`handshake` spread over TLS handshake records cut at the given offsets."""
    bounds = [0, *cuts, len(handshake)]
    return b"".join(b"\x16\x03\x01" + _vector(2, handshake[a:b]) for a, b in zip(bounds, bounds[1:]))


SNI_EXT = (0, _vector(2, b"\x00" + _vector(2, b"www.example.com")))
ALPN_EXT = (16, _vector(2, _vector(1, b"h2") + _vector(1, b"http/1.1")))
GREASE_EXT = (0x0A0A, b"")


def test_sni_among_other_extensions():
    data = records(hello_with_extensions(GREASE_EXT, SNI_EXT, ALPN_EXT))
    hello = parse_client_hello(data)
    assert hello is not None and hello.sni == "www.example.com" and hello.alpn == ("h2", "http/1.1")
    assert client_hello_sni(data) == "www.example.com"


def test_handshake_split_over_two_records_and_cut_streams():
    data = records(hello_with_extensions(SNI_EXT), 3, 50)
    assert client_hello_sni(data) == "www.example.com"
    for cut in (1, 5, 9, 60, len(data) - 1):
        assert client_hello_sni(data[:cut]) is None
        assert client_hello_incomplete(data[:cut])
    assert not client_hello_incomplete(data)


def test_no_sni_no_extensions_and_other_handshakes():
    assert client_hello_sni(records(hello_with_extensions(ALPN_EXT))) is None
    no_extensions = b"\x01" + _vector(3, b"\x03\x01" + bytes(32) + b"\x00" + _vector(2, b"\x00\x2f") + b"\x01\x00")
    assert parse_client_hello(records(no_extensions)).sni is None
    server_hello = b"\x02" + hello_with_extensions(SNI_EXT)[1:]
    assert client_hello_sni(records(server_hello)) is None


def test_lengths_that_lie_give_none():
    good = bytearray(records(hello_with_extensions(SNI_EXT)))
    assert client_hello_sni(bytes(good)) == "www.example.com"
    for offset in range(5, len(good)):
        damaged = bytearray(good)
        damaged[offset] = 0xFF
        client_hello_sni(bytes(damaged))  # must not raise, whatever it finds
    assert client_hello_sni(b"\x17\x03\x03\x00\x10" + bytes(16)) is None  # application data
    assert not client_hello_incomplete(b"GET / HTTP/1.1\r\n")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=200), st.binary(max_size=8))
def test_fuzz_never_raises(noise, offset, patch):
    # Random bytes, and a real ClientHello with a random splice, never raise.
    assert client_hello_sni(noise) is None or isinstance(client_hello_sni(noise), str)
    good = records(hello_with_extensions(SNI_EXT, ALPN_EXT))
    mutated = good[:offset] + patch + good[offset + len(patch):]
    for data in (mutated, b"\x16\x03\x01" + noise):
        client_hello_sni(data)
        client_hello_incomplete(data)


def test_client_hello_split_across_tcp_segments_names_the_flow():
    hello = client_hello("split.example.net")
    rows, _, _ = run(pcap_flows.flows_from_packets, [
        (0.0, tcp(C, 50000, "198.51.100.1", 443, seq=1000, flags=SYN)),
        (0.1, tcp(C, 50000, "198.51.100.1", 443, seq=1001, payload=hello[:7])),
        (0.2, tcp(C, 50000, "198.51.100.1", 443, seq=1001, payload=hello[:7])),  # retransmitted
        (0.3, tcp(C, 50000, "198.51.100.1", 443, seq=1008, flags=ACK, payload=hello[7:])),
    ])
    assert [(row["name"], row["name_source"]) for row in rows] == [("split.example.net", "sni")]


def our_sni(path) -> list[tuple]:
    rows = capture_rows(pcap_flows.flows_from_packets, path)
    return [(r["c_ip"], r["c_port"], r["s_ip"], r["s_port"], r["name"]) for r in rows if r["name_source"] == "sni"]


@pytest.mark.parametrize("name", reference.SNI_CAPTURES)
def test_sni_matches_tshark(name):
    # TCP only: tshark also decrypts QUIC Initial packets to show their SNI (4 in
    # ndpi_sites.pcapng); we do not decrypt QUIC.
    path = shared_data(name)
    want = reference.expected("sni", name, provisioned_tool("tshark"), lambda: reference.tshark_sni(path))
    assert reference.summary(our_sni(path)) == want
