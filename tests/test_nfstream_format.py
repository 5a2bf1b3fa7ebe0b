"""`--format nfstream`: named_flows rows against nfstream's own output on shared captures, and every way a
capture can fail to be read by it (a dead letter each, never a crash)."""
from __future__ import annotations

import gzip
import importlib.util
import struct
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from beamlytics import schemas
from beamlytics.parsers import formats, nfstream_flows
from beamlytics.parsers.base import Batch, Read, Rejected
from beamlytics.pipelines import cli
from tests.conftest import shared_data, skip_or_fail_in_ci

HAVE_NFSTREAM = importlib.util.find_spec("nfstream") is not None
CAPTURES = ["pcaps/mixed/zeek_wikipedia.pcap", "pcaps/mixed/ndpi_netflix.pcap", "pcaps/mixed/nfstream_skype.pcap",
            "pcaps/tls/ndpi_alexa-app.pcapng"]


@pytest.fixture
def nfstream():
    if not HAVE_NFSTREAM:
        skip_or_fail_in_ci("nfstream not installed (pip install 'beamlytics[nfstream]'; the test extra has it)")
    import nfstream

    return nfstream


def parsed(path, **options):
    items = list(formats.parse_paths([str(path)], "named_flows", "nfstream", options=options))
    rows = [row for item in items if isinstance(item, Batch) for row in item.records.to_pylist()]
    return rows, [item for item in items if isinstance(item, Rejected)], [item for item in items if isinstance(item, Read)]


def their_flows(nfstream, path, **settings) -> pd.DataFrame:
    return nfstream.NFStreamer(source=str(path), n_meters=1, accounting_mode=1, statistical_analysis=True,
                               **settings).to_pandas()


def _text(value):
    """to_pandas' empty text (NaN, or ""), as our null."""
    return value if isinstance(value, str) and value else None


@pytest.mark.parametrize("name", CAPTURES)
def test_rows_are_nfstreams_own_flows(nfstream, name):
    path = shared_data(name)
    rows, rejected, read = parsed(path)
    theirs = their_flows(nfstream, path)
    assert rejected == [] and [r.units for r in read] == [len(theirs)]
    assert len(rows) == len(theirs)
    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 2: "igmp"}
    for position, (row, flow) in enumerate(zip(rows, theirs.to_dict("records")), start=1):
        assert (row["c_ip"], row["c_port"], row["s_ip"], row["s_port"]) == (
            flow["src_ip"], flow["src_port"], flow["dst_ip"], flow["dst_port"])
        assert row["proto"] == proto.get(flow["protocol"], str(flow["protocol"]))
        assert (row["c_pkt"], row["s_pkt"], row["c_bytes"], row["s_bytes"]) == (
            flow["src2dst_packets"], flow["dst2src_packets"], flow["src2dst_bytes"], flow["dst2src_bytes"])
        assert (row["time_start"].timestamp() * 1000, row["time_end"].timestamp() * 1000) == (
            pytest.approx(flow["bidirectional_first_seen_ms"], abs=1e-3),
            pytest.approx(flow["bidirectional_last_seen_ms"], abs=1e-3))
        assert (row["application"], row["application_category"]) == (
            flow["application_name"], flow["application_category_name"])
        assert row["name"] == _text(flow["requested_server_name"])
        if flow["protocol"] == 6:
            seen = {letter for name, letter in [("fin", "F"), ("syn", "S"), ("rst", "R"), ("psh", "P"), ("ack", "A"),
                                                ("urg", "U"), ("ece", "E"), ("cwr", "C")]
                    if flow[f"bidirectional_{name}_packets"] > 0}
            assert set(row["tcp_flags"]) == seen
        assert (row["source_tool"], row["source_file"], row["source_pos"]) == ("nfstream", str(path), position)


def test_the_flows_are_those_of_our_own_pcap_reader(nfstream):
    # zeek_wikipedia is a capture where nfstream's flows and ours are defined alike (test_pcap_flows.py).
    path = shared_data("pcaps/mixed/zeek_wikipedia.pcap")
    ours = [row for item in formats.parse_paths([str(path)], "named_flows", "pcap") if isinstance(item, Batch)
            for row in item.records.to_pylist()]
    rows, _, _ = parsed(path)

    def flows(table):
        return sorted((row["proto"], *sorted([(row["c_ip"], row["c_port"]), (row["s_ip"], row["s_port"])]),
                       row["c_pkt"] + row["s_pkt"], row["c_bytes"] + row["s_bytes"]) for row in table)

    assert flows(rows) == flows(ours)
    assert {row["application"] for row in ours} == {None}  # every other source leaves nDPI's columns null
    assert any(row["application"] not in (None, "Unknown") for row in rows)


def test_a_compressed_capture_is_read_as_its_plain_bytes(nfstream, tmp_path):
    plain = shared_data("pcaps/mixed/zeek_wikipedia.pcap")
    packed = tmp_path / "wikipedia.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    rows, rejected, _ = parsed(packed)
    want, _, _ = parsed(plain)
    assert rejected == []
    assert [{k: v for k, v in row.items() if k != "source_file"} for row in rows] == [
        {k: v for k, v in row.items() if k != "source_file"} for row in want]


def _records(data: bytes) -> list[int]:
    """Byte offsets of the records of a little-endian pcap, walked by hand."""
    offsets, at = [], 24
    while at + 16 <= len(data):
        offsets.append(at)
        at += 16 + struct.unpack_from("<I", data, at + 8)[0]
    return offsets


def test_a_capture_cut_inside_a_record_keeps_the_flows_before_and_says_where(nfstream, tmp_path):
    data = shared_data("pcaps/mixed/zeek_wikipedia.pcap").read_bytes()
    offsets = _records(data)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: offsets[60] + 20])  # inside record 61
    rows, rejected, read = parsed(cut)
    theirs = their_flows(nfstream, cut)
    assert len(rows) == len(theirs) > 0 and read[0].units == len(theirs)
    [letter] = rejected
    assert letter.position == 61 and letter.units == 0 and nfstream_flows.PAST_DAMAGE in letter.reason


def test_a_broken_record_header_mid_file_is_a_dead_letter_where_nfstream_goes_wrong(nfstream, tmp_path):
    data = bytearray(shared_data("pcaps/mixed/zeek_wikipedia.pcap").read_bytes())
    offsets = _records(data)
    struct.pack_into("<I", data, offsets[40] + 8, 0x7FFF_FFFF)  # record 41 claims 2 GiB
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(bytes(data))
    rows, rejected, _ = parsed(broken)
    assert len(rows) == len(their_flows(nfstream, broken))  # whatever libpcap made of the rest, as nfstream says
    assert [letter.position for letter in rejected] == [41]
    assert nfstream_flows.PAST_DAMAGE in rejected[0].reason


def test_a_link_type_nfstream_does_not_decode_is_a_whole_file_dead_letter(nfstream):
    path = shared_data("pcaps/linktypes/dnsjit_sll2.pcap")  # LINKTYPE_LINUX_SLL2: our reader decodes it, nfstream not
    rows, rejected, read = parsed(path)
    assert rows == [] and read[0].units == 0
    [letter] = rejected
    assert letter.position == 0 and "nfstream made no flow" in letter.reason


def test_a_file_nfstream_refuses_is_a_dead_letter_with_its_reason(nfstream, tmp_path):
    bogus = tmp_path / "bogus.pcap"
    # A pcap magic number then a header of version 9.9: our sniffer calls it a capture, libpcap refuses it.
    bogus.write_bytes(b"\xd4\xc3\xb2\xa1" + struct.pack("<HHiIII", 9, 9, 0, 0, 65535, 1) + b"\x00" * 40)
    rows, rejected, read = parsed(bogus)
    assert rows == [] and read[0].units == 0
    assert any(letter.reason.startswith("nfstream cannot read this capture:") for letter in rejected)


def test_without_nfstream_every_capture_is_one_dead_letter(monkeypatch):
    monkeypatch.setitem(sys.modules, "nfstream", None)  # import nfstream now raises ImportError
    path = shared_data("pcaps/mixed/zeek_wikipedia.pcap")
    rows, rejected, read = parsed(path)
    assert rows == [] and read == []
    assert [(r.position, r.reason, r.units) for r in rejected] == [(0, nfstream_flows.MISSING, 0)]


def test_timeouts_must_be_whole_seconds_for_nfstream(nfstream):
    rows, rejected, _ = parsed(shared_data("pcaps/mixed/zeek_wikipedia.pcap"), idle_timeout=1.5)
    assert rows == [] and "whole seconds" in rejected[0].reason


def test_short_timeouts_reach_nfstream(nfstream):
    path = shared_data("pcaps/mixed/nfstream_skype.pcap")
    rows, _, _ = parsed(path, active_timeout=30, idle_timeout=5)
    assert len(rows) == len(their_flows(nfstream, path, active_timeout=30, idle_timeout=5)) > len(parsed(path)[0])


def test_the_format_is_chosen_never_sniffed():
    path = shared_data("pcaps/mixed/zeek_wikipedia.pcap")
    assert formats.identify(path.name, path.read_bytes()[:64]) == ("pcap", "pcap")
    assert formats.identify(path.name, path.read_bytes()[:64], "nfstream") == ("nfstream", "pcap")
    assert "application" in schemas.NAMED_FLOWS.names and "application_category" in schemas.NAMED_FLOWS.names


def test_query_traffic_per_application_end_to_end(nfstream, tmp_path):
    path = shared_data("pcaps/mixed/ndpi_netflix.pcap")
    sql = ("SELECT application, SUM(c_bytes + s_bytes) AS traffic FROM netlytics GROUP BY application "
           "ORDER BY traffic DESC, application")
    out = tmp_path / "apps.csv"
    assert cli.main(["query", sql, "--format", "nfstream", "--table", "named_flows", str(path), "--output", str(out),
                     "--quiet"]) == 0
    theirs = their_flows(nfstream, path)
    theirs["traffic"] = theirs["src2dst_bytes"] + theirs["dst2src_bytes"]
    want = (theirs.groupby("application_name")["traffic"].sum().reset_index()
            .sort_values(["traffic", "application_name"], ascending=[False, True]))
    got = pd.read_csv(out)
    assert got["application"].tolist() == want["application_name"].tolist()
    assert got["traffic"].tolist() == want["traffic"].tolist()
    assert pq.read_table(tmp_path / "apps.rejected.parquet").num_rows == 0
