"""Zeek connector: TSV and JSON logs to the dns/http tables, conn logs to named flows.

Core tests write their own small logs and assert hand-worked values. Tests on real logs
(`shared_data`) compare against counts and joins computed here with plain Python/pandas.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import zlib
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamlytics.parsers import zeek
from beamlytics.parsers.base import Batch, Read, Rejected, open_input
from tests.conftest import shared_data

PROVENANCE = ("source_tool", "source_file", "source_pos")

BRO2_DNS_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto trans_id query qclass qclass_name qtype "
    "qtype_name rcode rcode_name AA TC RD RA Z answers TTLs rejected"
).split()
BRO2_DNS_TYPES = (
    "time string addr port addr port enum count string count string count string count string "
    "bool bool bool bool count vector[string] vector[interval] bool"
).split()
ZEEK6_DNS_FIELDS = BRO2_DNS_FIELDS[:8] + ["rtt"] + BRO2_DNS_FIELDS[8:]
ZEEK6_DNS_TYPES = BRO2_DNS_TYPES[:8] + ["interval"] + BRO2_DNS_TYPES[8:]


def header(path: str, fields: list[str], types: list[str]) -> str:
    return (
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
        f"#path\t{path}\n#open\t2014-04-03-10-08-27\n"
        "#fields\t" + "\t".join(fields) + "\n#types\t" + "\t".join(types) + "\n"
    )


def tsv(*fields: str) -> str:
    return "\t".join(fields) + "\n"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def parse(data: bytes, kind: str = "dns", table: str | None = None, batch_rows: int = 10_000, stream=None):
    """Rows (list of dicts), rejections and units of one parse."""
    table = table or {"conn": "named_flows"}.get(kind, kind)
    stream = stream if stream is not None else io.BytesIO(data)
    items = list(zeek.parse("test.log", stream, kind, table, batch_rows=batch_rows))
    batches, rejected, read = split_items(items)
    rows = [row for batch in batches for row in batch.records.to_pylist()]
    units = sum(batch.units for batch in batches)
    assert read == units + sum(item.units for item in rejected)  # the reader's count and the parser's agree
    return rows, rejected, units


def split_items(items: list) -> tuple[list[Batch], list[Rejected], int]:
    """Batches, dead letters and the reader's `Read` count, which must come once, last."""
    reads = [item for item in items if isinstance(item, Read)]
    assert len(reads) == 1 and items[-1] is reads[0], reads
    return ([item for item in items if isinstance(item, Batch)],
            [item for item in items if isinstance(item, Rejected)], reads[0].units)


def without_provenance(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in PROVENANCE}


# ---------------------------------------------------------------------------------------
# dns.log


BRO2_DNS = (
    header("dns", BRO2_DNS_FIELDS, BRO2_DNS_TYPES)
    + tsv(
        "1379288667.631940",
        "CZGShC2znK1sV7jdI7",
        "192.168.33.10",
        "1030",
        "4.2.2.3",
        "53",
        "udp",
        "44949",
        "www.guyspy.com",
        "1",
        "C_INTERNET",
        "1",
        "A",
        "0",
        "NOERROR",
        "F",
        "F",
        "T",
        "T",
        "0",
        "guyspy.com,54.245.228.191",
        "1000.000000,36.000000",
        "F",
    )
    + tsv(
        "1379288668.5",
        "Cx",
        "192.168.33.10",
        "1031",
        "4.2.2.3",
        "53",
        "tcp",
        "7",
        "nowhere.example",
        "1",
        "C_INTERNET",
        "28",
        "AAAA",
        "3",
        "NXDOMAIN",
        "T",
        "F",
        "T",
        "F",
        "0",
        "(empty)",
        "(empty)",
        "F",
    )
    + "#close\t2014-04-03-10-08-28\n"
)


def test_bro2_dns_rows_are_mapped_field_by_field():
    rows, rejected, units = parse(BRO2_DNS.encode())
    assert rejected == [] and units == 2
    assert rows[0] == {
        "c_ip": "192.168.33.10",
        "c_port": 1030,
        "s_ip": "4.2.2.3",
        "s_port": 53,
        "proto": "udp",
        "trans_id": 44949,
        "query": "www.guyspy.com",
        "req_class": "IN",
        "req_type": "A",
        "resp_code": "NOERROR",
        "flags": "RD RA",
        "answers": ["guyspy.com", "54.245.228.191"],
        "answer_types": None,
        "answer_ttls": [1000, 36],
        "req_time": utc("2013-09-15T23:44:27.631940"),
        "resp_time": None,  # Bro 2.x logs no rtt
        "uid": "CZGShC2znK1sV7jdI7",
        "source_tool": "zeek",
        "source_file": "test.log",
        "source_pos": 9,
    }
    assert without_provenance(rows[1]) | {"source_pos": rows[1]["source_pos"]} == {
        "c_ip": "192.168.33.10",
        "c_port": 1031,
        "s_ip": "4.2.2.3",
        "s_port": 53,
        "proto": "tcp",
        "trans_id": 7,
        "query": "nowhere.example",
        "req_class": "IN",
        "req_type": "AAAA",
        "resp_code": "NXDOMAIN",
        "flags": "AA RD",
        "answers": [],
        "answer_types": None,
        "answer_ttls": [],
        "req_time": utc("2013-09-15T23:44:28.500000"),
        "resp_time": None,
        "uid": "Cx",
        "source_pos": 10,
    }


def zeek6_dns_line(
    ts="1521911720.865716",
    rtt="0.000870",
    rcode="0",
    answers="a.example,10.0.0.1",
    ttls="2230.000000,41830.000000",
    query="ise.wrccdc.org",
    trans_id="36329",
) -> str:
    return tsv(
        ts,
        "CqKst53mF3det3eDV9",
        "10.47.1.100",
        "41772",
        "10.0.0.100",
        "53",
        "udp",
        trans_id,
        rtt,
        query,
        "1",
        "C_INTERNET",
        "1",
        "A",
        rcode,
        "-" if rcode == "-" else "NOERROR",
        "F",
        "F",
        "T",
        "T",
        "0",
        answers,
        ttls,
        "F",
    )


ZEEK6_HEADER = header("dns", ZEEK6_DNS_FIELDS, ZEEK6_DNS_TYPES)


def test_zeek6_dns_response_time_and_unset_values():
    data = ZEEK6_HEADER + zeek6_dns_line() + zeek6_dns_line(rtt="-", rcode="-", answers="-", ttls="-")
    rows, rejected, units = parse(data.encode())
    assert rejected == [] and units == 2
    answered, unanswered = rows
    assert answered["resp_time"] == utc("2018-03-24T17:15:20.866586")  # .865716 + 870 us
    assert answered["answers"] == ["a.example", "10.0.0.1"] and answered["answer_ttls"] == [2230, 41830]
    assert (unanswered["resp_time"], unanswered["resp_code"]) == (None, None)
    assert (unanswered["answers"], unanswered["answer_ttls"]) == (None, None)  # unset, not empty


def test_escaped_bytes_are_unescaped_in_strings_and_set_elements():
    data = ZEEK6_HEADER + zeek6_dns_line(
        query="tab\\x09in\\x2dname\\xff", answers="comma\\x2cinside,plain", ttls="1.000000,2.000000"
    )
    rows, rejected, _ = parse(data.encode())
    assert rejected == []
    assert rows[0]["query"] == "tab\tin-name\\xff"  # a byte that is not UTF-8 stays visible
    assert rows[0]["answers"] == ["comma,inside", "plain"]


def test_columns_are_found_by_name_not_position():
    fields = ["label", "query", "id.resp_p", "ts", "id.orig_h", "qtype", "id.resp_h", "id.orig_p", "extra"]
    types = ["string", "string", "port", "time", "addr", "count", "addr", "port", "count"]
    data = header("dns", fields, types) + tsv(
        "benign", "x.example", "53", "10.5", "1.1.1.1", "16", "8.8.8.8", "999", "7"
    )
    rows, rejected, _ = parse(data.encode())
    assert rejected == []
    row = rows[0]
    assert (row["c_ip"], row["c_port"], row["s_ip"], row["s_port"]) == ("1.1.1.1", 999, "8.8.8.8", 53)
    assert (row["query"], row["req_type"], row["req_time"]) == (
        "x.example",
        "TXT",
        utc("1970-01-01T00:00:10.5"),
    )
    # Columns the log does not have are null, not guessed.
    assert (row["proto"], row["resp_code"], row["answers"], row["flags"]) == (None, None, None, None)


def test_bad_lines_are_rejected_with_line_number_and_reason():
    good = zeek6_dns_line()
    lines = [
        good,  # line 9
        "1521911720.9\tonly\tthree\n",  # 10: wrong field count
        zeek6_dns_line(trans_id="abc"),  # 11: not a count
        good,  # 12
        "\n",  # 13: empty line
        zeek6_dns_line(ts="XXXXXXXXXX.XXXXXX"),  # 14: masked time
        zeek6_dns_line(ttls="1.0,oops"),  # 15: bad element of a vector
        good.rstrip("\n") + "\n",  # 16
        zeek6_dns_line(ts="-"),  # 17: no time at all
        zeek6_dns_line(query="carriage\rreturn"),  # 18: Arrow would end a row there
        good.rstrip("\n"),  # 19: last line without newline
    ]
    rows, rejected, units = parse((ZEEK6_HEADER + "".join(lines)).encode())
    rejected.sort(key=lambda r: r.position)  # lines skipped while reading come before bad values
    assert [row["source_pos"] for row in rows] == [9, 12, 16, 19]
    assert [r.position for r in rejected] == [10, 11, 13, 14, 15, 17, 18]
    reasons = [r.reason for r in rejected]
    assert "3 fields where the #fields header has 24" in reasons[0]
    assert "trans_id" in reasons[1] and "abc" in reasons[1]
    assert reasons[2] == "empty line"
    assert "ts" in reasons[3] and "XXXXXXXXXX.XXXXXX" in reasons[3]
    assert "TTLs" in reasons[4] and "oops" in reasons[4]
    assert reasons[5] == "no value for ts"
    assert reasons[6] == "carriage return inside a line"
    assert rejected[0].excerpt == "1521911720.9\tonly\tthree" and rejected[0].source_tool == "zeek"
    assert units + sum(item.units for item in rejected) == len(lines)


def test_repeated_header_block_switches_layout_and_keeps_line_numbers():
    data = (
        BRO2_DNS  # lines 1-11, the second block starts at line 12
        + ZEEK6_HEADER
        + zeek6_dns_line()
        + "bad\n"
        + zeek6_dns_line(rtt="0.5")
        + "#close\tx\n"
    )
    rows, rejected, units = parse(data.encode())
    assert [row["source_pos"] for row in rows] == [9, 10, 20, 22]
    assert [(r.position, r.excerpt) for r in rejected] == [(21, "bad")]
    assert rows[2]["resp_time"] == utc("2018-03-24T17:15:20.866586")
    assert rows[3]["resp_time"] == utc("2018-03-24T17:15:21.365716")
    assert units == 4


def test_data_before_any_header_is_rejected():
    rows, rejected, units = parse(b"1.0\tx\n2.0\ty\n")
    assert rows == [] and units == 0
    assert [r.position for r in rejected] == [1, 2] and "#fields" in rejected[0].reason


def test_header_only_log_gives_nothing():
    rows, rejected, units = parse((ZEEK6_HEADER + "#close\t2024\n").encode())
    assert (rows, rejected, units) == ([], [], 0)


def test_batches_hold_at_most_batch_rows():
    data = ZEEK6_HEADER + "".join(zeek6_dns_line(trans_id=str(i)) for i in range(25))
    batches, rejected, read = split_items(list(zeek.parse("t", io.BytesIO(data.encode()), "dns", "dns", batch_rows=10)))
    assert rejected == [] and read == 25
    assert all(0 < b.records.num_rows <= 10 for b in batches)
    trans_ids = [row["trans_id"] for b in batches for row in b.records.to_pylist()]
    assert trans_ids == list(range(25))


# ---------------------------------------------------------------------------------------
# JSON


def test_json_with_epoch_and_iso_times_matches_the_tsv_rendering():
    tsv_rows, _, _ = parse(
        (ZEEK6_HEADER + zeek6_dns_line() + zeek6_dns_line(rtt="-", rcode="-", answers="-", ttls="-")).encode()
    )
    common = {
        "uid": "CqKst53mF3det3eDV9",
        "id.orig_h": "10.47.1.100",
        "id.orig_p": 41772,
        "id.resp_h": "10.0.0.100",
        "id.resp_p": 53,
        "proto": "udp",
        "trans_id": 36329,
        "query": "ise.wrccdc.org",
        "qclass": 1,
        "qtype": 1,
        "AA": False,
        "TC": False,
        "RD": True,
        "RA": True,
        "Z": 0,
        "rejected": False,
    }
    answered = {
        **common,
        "rtt": 0.0008699893951416016,
        "rcode": 0,
        "answers": ["a.example", "10.0.0.1"],
        "TTLs": [2230.0, 41830.0],
    }
    epoch = [{"ts": 1521911720.865716, **answered}, {"ts": 1521911720.865716, **common}]
    iso = [
        {
            "_path": "dns",
            "_write_ts": "2018-03-24T17:15:21Z",
            "ts": "2018-03-24T17:15:20.865716Z",
            **answered,
        },
        {"ts": "2018-03-24T17:15:20.865716Z", **common},
    ]
    for records in (epoch, iso):
        rows, rejected, _ = parse("".join(json.dumps(r) + "\n" for r in records).encode())
        assert rejected == []
        assert [without_provenance(r) for r in rows] == [without_provenance(r) for r in tsv_rows]
        assert [r["source_pos"] for r in rows] == [1, 2]


def test_bad_json_lines_are_rejected():
    good = json.dumps({"ts": 10.0, "uid": "C1", "query": "a.example", "qtype": 1})
    lines = [
        good,
        "{not json",
        "[1, 2]",
        json.dumps({"ts": True, "uid": "C2"}),
        json.dumps({"ts": "yesterday", "uid": "C3"}),
        good,
        json.dumps({"uid": "C4"}),
    ]
    rows, rejected, units = parse(("\n".join(lines) + "\n").encode())
    assert [r["source_pos"] for r in rows] == [1, 6]
    assert [r.position for r in rejected] == [2, 3, 4, 5, 7]
    assert rejected[0].reason.startswith("not JSON") and rejected[1].reason == "not a JSON object"
    assert "ts" in rejected[2].reason and "ts" in rejected[3].reason
    assert rejected[4].reason == "no value for ts"
    assert units + sum(item.units for item in rejected) == len(lines)


# ---------------------------------------------------------------------------------------
# Compression damage


def gzip_bytes(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def complete_data_lines(partial: bytes) -> int:
    """Data lines fully present in a decompressed prefix: independent of the parser."""
    return sum(1 for line in partial.split(b"\n")[:-1] if line and not line.startswith(b"#"))


def decompress_what_zlib_can(compressed: bytes) -> bytes:
    inflater, out = zlib.decompressobj(16 + zlib.MAX_WBITS), []
    try:
        for i in range(0, len(compressed), 256):
            out.append(inflater.decompress(compressed[i : i + 256]))
    except zlib.error:
        pass
    return b"".join(out)


BIG_LOG = ZEEK6_HEADER + "".join(
    zeek6_dns_line(trans_id=str(i), query=f"host{i:05d}.example") for i in range(4000)
)


def test_gzip_stream_parses_like_plain():
    plain, _, _ = parse(BIG_LOG.encode())
    zipped, rejected, _ = parse(b"", stream=gzip.GzipFile(fileobj=io.BytesIO(gzip_bytes(BIG_LOG))))
    assert rejected == [] and zipped == plain and len(plain) == 4000


def test_truncated_gzip_keeps_the_good_prefix_and_rejects_the_rest_once():
    compressed = gzip_bytes(BIG_LOG)
    truncated = compressed[: len(compressed) // 2]
    prefix = decompress_what_zlib_can(truncated)
    kept = complete_data_lines(prefix)
    rows, rejected, units = parse(b"", stream=gzip.GzipFile(fileobj=io.BytesIO(truncated)))
    assert len(rows) == units == kept > 0
    assert [row["trans_id"] for row in rows] == list(range(kept))
    assert len(rejected) == 1
    assert rejected[0].position == prefix.count(b"\n") + 1  # the line that broke off
    assert "EOFError" in rejected[0].reason


def test_gzip_with_a_bad_checksum_keeps_every_line_and_reports_the_end():
    compressed = bytearray(gzip_bytes(BIG_LOG))
    compressed[-8] ^= 0xFF  # the CRC32 in the trailer: only checked after the last byte
    rows, rejected, units = parse(b"", stream=gzip.GzipFile(fileobj=io.BytesIO(bytes(compressed))))
    assert len(rows) == units == 4000
    assert len(rejected) == 1 and rejected[0].position == BIG_LOG.count("\n") + 1
    assert "CRC" in rejected[0].reason


def test_corrupted_deflate_stream_never_raises_and_reports_once():
    compressed = bytearray(gzip_bytes(BIG_LOG))
    middle = len(compressed) // 2
    compressed[middle : middle + 64] = bytes(64)
    rows, rejected, units = parse(b"", stream=gzip.GzipFile(fileobj=io.BytesIO(bytes(compressed))))
    # Deflate has no checksum per block: garbage may decode before the error shows, and
    # such lines are parsed or rejected like any other. The stream's end is reported once.
    broken = [r for r in rejected if "input unreadable" in r.reason]
    assert len(broken) == 1 and units == len(rows) < 4000
    assert all(row["source_pos"] < broken[0].position for row in rows)
    assert all(r.position <= broken[0].position for r in rejected)


# ---------------------------------------------------------------------------------------
# http.log

BRO2_HTTP_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p trans_depth method host uri referrer user_agent "
    "request_body_len response_body_len status_code status_msg info_code info_msg filename tags username "
    "password proxied orig_fuids orig_mime_types resp_fuids resp_mime_types"
).split()
BRO2_HTTP_TYPES = (
    "time string addr port addr port count string string string string string count count count string "
    "count string string table[enum] string string table[string] vector[string] vector[string] "
    "vector[string] vector[string]"
).split()


def http_line(host="www.guyspy.com", mime="text/html,image/png", status="200") -> str:
    return tsv(
        "1379288667.668082",
        "CyIaMO7IheOh38Zsi",
        "192.168.33.10",
        "1031",
        "54.245.228.191",
        "80",
        "1",
        "GET",
        host,
        "/a b?c=1",
        "http://ref.example/",
        "Mozilla/4.0 (compatible)",
        "0",
        "184",
        status,
        "OK",
        "-",
        "-",
        "-",
        "(empty)",
        "-",
        "-",
        "-",
        "-",
        "-",
        "Fnjq3r4R0VGmHVWiN5",
        mime,
    )


def test_bro2_http_rows():
    data = (
        header("http", BRO2_HTTP_FIELDS, BRO2_HTTP_TYPES)
        + http_line()
        + http_line(host="-", mime="-", status="-")
    )
    rows, rejected, units = parse(data.encode(), kind="http")
    assert rejected == [] and units == 2
    assert without_provenance(rows[0]) == {
        "c_ip": "192.168.33.10",
        "c_port": 1031,
        "s_ip": "54.245.228.191",
        "s_port": 80,
        "method": "GET",
        "host": "www.guyspy.com",
        "path": "/a b?c=1",
        "referrer": "http://ref.example/",
        "user_agent": "Mozilla/4.0 (compatible)",
        "req_cookie": None,
        "set_cookie": None,
        "status_code": 200,
        "content_type": "text/html",
        "content_range": None,
        "server": None,
        "request_body_len": 0,
        "response_body_len": 184,
        "req_time": utc("2013-09-15T23:44:27.668082"),
        "resp_time": None,
        "user": None,
        "cache_result": None,
        "uid": "CyIaMO7IheOh38Zsi",
    }
    assert (rows[1]["host"], rows[1]["content_type"], rows[1]["status_code"]) == (None, None, None)


def test_http_extension_columns_are_used_when_present():
    fields = ["ts", "id.orig_h", "host", "cookie", "set_cookie", "server", "content_type", "resp_mime_types"]
    types = ["time", "addr", "string", "string", "string", "string", "string", "vector[string]"]
    data = header("http", fields, types) + tsv(
        "5.0", "10.0.0.1", "h", "a=1", "b=2", "nginx", "text/css", "text/plain"
    )
    rows, rejected, _ = parse(data.encode(), kind="http")
    assert rejected == []
    row = rows[0]
    assert (row["req_cookie"], row["set_cookie"], row["server"]) == ("a=1", "b=2", "nginx")
    assert row["content_type"] == "text/css"  # the header beats the sniffed MIME type


def test_parse_refuses_a_table_the_kind_does_not_feed():
    with pytest.raises(ValueError):
        list(zeek.parse("t", io.BytesIO(b""), "dns", "http"))


# ---------------------------------------------------------------------------------------
# sniff


@pytest.mark.parametrize(
    "name, head, kind",
    [
        ("whatever.log", BRO2_DNS.encode(), "dns"),
        ("dns.04:00:00-05:00:00.log.gz", b"#separator \\x09\n#fields\tts\n1.0\n", "dns"),
        ("gre_conn.log", b"### BTest baseline data\n#separator \\x09\n#path\tconn\n", "conn"),
        ("x.json", b'{"_path":"ssl","ts":"2018-03-24T17:15:20Z","uid":"C1"}\n', "ssl"),
        ("dns.json.gz", b'{"ts":1.5,"uid":"C1","id.orig_h":"10.0.0.1"}\n', "dns"),
        ("eve.json", b'{"timestamp":"2018-03-24T17:15:20Z","src_ip":"10.0.0.1"}\n', None),
        (
            "access.log",
            b"1379288667.631 12 10.0.0.1 TCP_MISS/200 512 GET http://a/ - DIRECT/1.2.3.4 text/html\n",
            None,
        ),
        ("queries.log", b"#comment\n24-Mar-2018 client 10.0.0.1#53\n", None),
        ("empty.log", b"", None),
    ],
)
def test_sniff(name, head, kind):
    assert zeek.sniff(name, head) == kind


# ---------------------------------------------------------------------------------------
# Fuzz: whatever the lines, nothing raises and every line is accounted for


FIELD_TEXT = st.text(alphabet=list('0123456789.-,\\xTF(empty)ab \t#{}":é'), max_size=12)
LINES = st.lists(st.lists(FIELD_TEXT, min_size=1, max_size=27).map("\t".join), max_size=12)


@settings(max_examples=150, deadline=None)
@given(LINES)
def test_fuzz_tsv_counts_always_add_up(lines):
    data = ZEEK6_HEADER + "".join(line + "\n" for line in lines)
    rows, rejected, units = parse(data.encode())
    assert units == len(rows)
    assert units + sum(item.units for item in rejected) == sum(1 for line in lines if not line.startswith("#"))


@settings(max_examples=100, deadline=None)
@given(LINES)
def test_fuzz_json_counts_always_add_up(lines):
    # A first line that is a JSON object makes the file JSON: then every line is data.
    data = '{"ts": 1.0, "uid": "C"}\n' + "".join(line + "\n" for line in lines)
    rows, rejected, units = parse(data.encode())
    assert units == len(rows)
    assert units + sum(item.units for item in rejected) == 1 + len(lines)


# ---------------------------------------------------------------------------------------
# Named flows

CONN_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto service duration orig_bytes resp_bytes "
    "conn_state orig_pkts orig_ip_bytes resp_pkts resp_ip_bytes"
).split()
CONN_TYPES = (
    "time string addr port addr port enum string interval count count string count count count count"
).split()


def conn_line(ts, uid, client, server, port="443", duration="1.500000") -> str:
    return tsv(
        ts, uid, client, "50000", server, port, "tcp", "-", duration, "10", "20", "SF", "3", "170", "4", "260"
    )


def test_named_flow_groups_pair_logs_by_folder_and_rotation():
    files = [
        ("d/2024-01-01/conn.04:00:00-05:00:00.log.gz", "conn"),
        ("d/2024-01-01/ssl.04:00:00-05:00:00.log.gz", "ssl"),
        ("d/2024-01-01/dns.05:00:00-06:00:00.log.gz", "dns"),
        ("d/2024-01-01/conn.05:00:00-06:00:00.log.gz", "conn"),
        ("d/2024-01-01/dns.04:00:00-05:00:00.log.gz", "dns"),
        ("d/2024-01-01/weird.04:00:00-05:00:00.log.gz", "weird"),
        ("live/conn.log", "conn"),
        ("live/http.log", "http"),
        ("lonely/dns.log", "dns"),  # no conn log: nothing to name
    ]
    groups = zeek.named_flow_groups(files)
    assert groups == [
        zeek.NamedFlowGroup(
            ("d/2024-01-01/conn.04:00:00-05:00:00.log.gz",),
            ("d/2024-01-01/ssl.04:00:00-05:00:00.log.gz",),
            (),
            ("d/2024-01-01/dns.04:00:00-05:00:00.log.gz",),
        ),
        zeek.NamedFlowGroup(
            ("d/2024-01-01/conn.05:00:00-06:00:00.log.gz",),
            (),
            (),
            ("d/2024-01-01/dns.05:00:00-06:00:00.log.gz",),
        ),
        zeek.NamedFlowGroup(("live/conn.log",), (), ("live/http.log",), ()),
    ]
    assert zeek.named_flow_groups(list(reversed(files))) == groups
    assert pickle.loads(pickle.dumps(groups)) == groups


def test_flows_are_named_by_sni_then_http_host_then_latest_dns_answer():
    logs = {
        "conn.log": header("conn", CONN_FIELDS, CONN_TYPES)
        + conn_line("100.0", "Csni", "10.0.0.1", "1.1.1.1")
        + conn_line("101.0", "Chttp", "10.0.0.1", "2.2.2.2", port="80", duration="-")
        + conn_line("102.0", "Cdns", "10.0.0.1", "3.3.3.3")
        + conn_line("103.0", "Cnone", "10.0.0.9", "3.3.3.3")  # another client resolved that address
        + "broken line\n",
        "ssl.log": header("ssl", ["ts", "uid", "server_name"], ["time", "string", "string"])
        + tsv("100.1", "Csni", "sni.example")
        + tsv("100.2", "Csni", "later-sni.example")
        + tsv("101.1", "Chttp", "-"),
        "http.log": header("http", ["ts", "uid", "host"], ["time", "string", "string"])
        + tsv("100.1", "Csni", "host-of-sni-flow.example")
        + tsv("101.1", "Chttp", "www.example"),
        "dns.log": header(
            "dns", ["ts", "id.orig_h", "query", "answers"], ["time", "addr", "string", "vector[string]"]
        )
        + tsv("90.0", "10.0.0.1", "old.example", "cname.example,3.3.3.3")
        + tsv("95.0", "10.0.0.1", "recent.example", "3.3.3.3")
        + tsv("102.0", "10.0.0.1", "same-time.example", "3.3.3.3")  # at the flow start: counts
        + tsv("102.5", "10.0.0.1", "too-late.example", "3.3.3.3")
        + tsv("99.0", "10.0.0.1", "sni-loses.example", "1.1.1.1"),
    }
    group = zeek.NamedFlowGroup(("conn.log",), ("ssl.log",), ("http.log",), ("dns.log",))
    items = list(zeek.parse_named_flows(group, lambda path: io.BytesIO(logs[path].encode())))
    batches = [i for i in items if isinstance(i, Batch)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    rows = [row for b in batches for row in b.records.to_pylist()]
    assert [(r["name"], r["name_source"]) for r in rows] == [
        ("sni.example", "sni"),
        ("www.example", "http_host"),
        ("same-time.example", "dns"),
        (None, None),
    ]
    assert [(r.source, r.position) for r in rejected] == [("conn.log", 13)]
    # 3 ssl + 2 http + 5 dns + 4 conn lines read fine.
    assert sum(b.units for b in batches) == 14
    first = rows[0]
    assert (first["c_pkt"], first["s_pkt"], first["c_bytes"], first["s_bytes"]) == (3, 4, 170, 260)
    assert (first["time_start"], first["time_end"]) == (
        utc("1970-01-01T00:01:40"),
        utc("1970-01-01T00:01:41.5"),
    )
    assert rows[1]["time_end"] == rows[1]["time_start"]  # no duration logged
    assert (first["proto"], first["tcp_flags"], first["source_file"], first["source_pos"]) == (
        "tcp",
        None,
        "conn.log",
        9,
    )


def test_conn_log_alone_gives_unnamed_flows():
    data = header("conn", CONN_FIELDS, CONN_TYPES) + conn_line("100.0", "C1", "10.0.0.1", "1.1.1.1")
    rows, rejected, units = parse(data.encode(), kind="conn")
    assert rejected == [] and units == 1
    assert (rows[0]["name"], rows[0]["name_source"], rows[0]["s_port"]) == (None, None, 443)


def test_a_missing_log_in_a_group_is_rejected_not_raised():
    group = zeek.NamedFlowGroup(("conn.log",), ("missing.log",))

    def open_stream(path):
        if path == "missing.log":
            raise FileNotFoundError(path)
        return io.BytesIO(
            (header("conn", CONN_FIELDS, CONN_TYPES) + conn_line("1.0", "C", "a", "b")).encode()
        )

    items = list(zeek.parse_named_flows(group, open_stream))
    assert [(i.source, i.position) for i in items if isinstance(i, Rejected)] == [("missing.log", 0)]
    assert sum(i.records.num_rows for i in items if isinstance(i, Batch)) == 1


# ---------------------------------------------------------------------------------------
# Real logs (skipped when the shared data folder is absent)


def read_bytes(path) -> bytes:
    """The decompressed file, by plain gzip: independent of the parser's stream handling."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def data_line_count(data: bytes, is_json: bool) -> int:
    lines = data.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return len(lines) if is_json else sum(1 for line in lines if not line.startswith("#"))


def parse_file(path, kind: str, table: str | None = None):
    return parse(b"", kind, table, stream=io.BytesIO(read_bytes(path)))


def parse_table(path, kind: str) -> tuple[pa.Table, list[Rejected]]:
    batches, rejected, _ = split_items(list(zeek.parse(path.name, io.BytesIO(read_bytes(path)), kind, kind)))
    return pa.Table.from_batches([b.records for b in batches]), rejected


def test_wrccdc_tsv_and_json_renderings_give_identical_rows():
    tsv_table, tsv_rejected = parse_table(shared_data("logs/zeek/wrccdc2018/dns.log.gz"), "dns")
    json_table, json_rejected = parse_table(shared_data("logs/zeek/wrccdc2018/dns.json.gz"), "dns")
    assert tsv_rejected == [] and json_rejected == []
    assert tsv_table.num_rows == json_table.num_rows == 53_615
    assert tsv_table.drop_columns(list(PROVENANCE)).equals(json_table.drop_columns(list(PROVENANCE)))
    assert tsv_table["resp_time"].null_count < tsv_table.num_rows  # rtt was compared, not only nulls


@pytest.mark.parametrize(
    "relative, kind, is_json",
    [
        ("logs/zeek/wrccdc2018/dns.log.gz", "dns", False),
        ("logs/zeek/wrccdc2018/dns.json.gz", "dns", True),
        ("logs/zeek/zat_tsv/dns.log", "dns", False),
        ("logs/zeek/zat_tsv/http.log", "http", False),
        ("logs/zeek/zat_tsv/conn.log", "conn", False),
        ("logs/zeek/zat_json/dns.log", "dns", True),
        ("logs/zeek/zat_json/http.log", "http", True),
        ("logs/zeek/zat_json/conn.log", "conn", True),
        ("logs/zeek/zed_head200/zeek-default_dns.head200.log", "dns", False),
        ("logs/zeek/zed_head200/zeek-json_dns.head200.json", "dns", True),
        ("logs/zeek/slips_test9_json/dns.log", "dns", True),
        ("logs/zeek/slips_test9_json/http.log", "http", True),
    ],
)
def test_real_logs_give_one_row_per_data_line(relative, kind, is_json):
    path = shared_data(relative)
    expected = data_line_count(read_bytes(path), is_json)
    rows, rejected, units = parse_file(path, kind)
    assert rejected == []
    assert len(rows) == units == expected > 0
    assert zeek.sniff(path.name, read_bytes(path)[:65536]) == kind


@pytest.mark.parametrize("name", ["gre-over-udp_dns.log", "gre-over-udp_http.log", "gre-over-udp_conn.log"])
def test_btest_baselines_with_masked_times_are_rejected_line_by_line(name):
    path = shared_data(f"logs/zeek/zeek_btest/{name}")
    data = read_bytes(path)
    kind = zeek.sniff(name, data)
    assert kind == name.split("_")[1].split(".")[0]
    rows, rejected, units = parse_file(path, kind)
    # Every data line has ts XXXXXXXXXX.XXXXXX: a time nobody can place is a bad line.
    assert rows == [] and units == 0
    assert len(rejected) == data_line_count(data, is_json=False) > 0
    assert all("ts" in r.reason and "XXXXXXXXXX.XXXXXX" in r.reason for r in rejected)


def test_real_corrupt_gzip_keeps_the_readable_prefix():
    path = shared_data("logs/zeek/zat_tsv/http.log.corrupt.gz")
    prefix = decompress_what_zlib_can(path.read_bytes())
    clean, _, _ = parse_file(shared_data("logs/zeek/zat_tsv/http.log"), "http")
    rows, rejected, units = parse(b"", "http", stream=gzip.GzipFile(fileobj=io.BytesIO(path.read_bytes())))
    kept = complete_data_lines(prefix)
    assert len(rows) == units == kept > 0
    assert rows == [dict(r, source_file="test.log") for r in clean[:kept]]
    assert len(rejected) == 1
    assert rejected[0].position == prefix.count(b"\n") + 1 and "unreadable" in rejected[0].reason

    # Through the pipeline's opener, which buffers the decompressor once more: the read step
    # that hit the damage is lost with it, but what is kept is still a clean prefix and the
    # rest is one rejection starting right after it.
    rows, rejected, units = parse(b"", "http", stream=open_input(str(path)))
    assert 0 < len(rows) == units <= kept
    assert rows == [dict(r, source_file="test.log") for r in clean[: len(rows)]]
    assert [r.position for r in rejected] == [rows[-1]["source_pos"] + 1]


def test_real_header_only_log():
    assert parse_file(shared_data("logs/zeek/zat_tsv/http_empty.log"), "http") == ([], [], 0)


def test_zat_tsv_and_json_are_different_captures():
    # Checked rather than assumed: the two renderings share no connection, so there is no
    # row-for-row comparison to make (the WRCCDC pair above is the same-records check).
    def uids(path, is_json):
        text = read_bytes(path).decode()
        if is_json:
            return {json.loads(line)["uid"] for line in text.splitlines()}
        return {line.split("\t")[1] for line in text.splitlines() if not line.startswith("#")}

    for kind in ("conn", "dns", "http"):
        tsv_uids = uids(shared_data(f"logs/zeek/zat_tsv/{kind}.log"), False)
        json_uids = uids(shared_data(f"logs/zeek/zat_json/{kind}.log"), True)
        assert tsv_uids and json_uids and not tsv_uids & json_uids


def pandas_log(path, is_json: bool) -> pd.DataFrame:
    """A Zeek log read by pandas alone, with its line order kept."""
    if is_json:
        frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    else:
        fields = next(line for line in path.read_text().splitlines() if line.startswith("#fields")).split(
            "\t"
        )[1:]
        frame = pd.read_csv(
            path,
            sep="\t",
            comment="#",
            names=fields,
            na_values=["-"],
            keep_default_na=False,
            dtype=str,
            quoting=3,
        )
        frame["ts"] = frame["ts"].astype(float)
        frame["answers"] = frame.get("answers", pd.Series(dtype=str)).map(
            lambda v: v.split(",") if isinstance(v, str) and v != "(empty)" else []
        )
    frame["line"] = range(len(frame))
    return frame


def expected_names(folder, is_json: bool) -> list[tuple]:
    """Name of each conn row by an independent pandas merge: SNI, else Host, else DNS as-of."""
    conn = pandas_log(folder / "conn.log", is_json)
    ssl, http, dns = (pandas_log(folder / f"{kind}.log", is_json) for kind in ("ssl", "http", "dns"))

    def first_by_uid(frame, column):
        named = frame[frame[column].notna() & (frame[column] != "")]
        return named.drop_duplicates("uid", keep="first").set_index("uid")[column]

    sni, host = first_by_uid(ssl, "server_name"), first_by_uid(http, "host")
    answers = (
        dns[["ts", "id.orig_h", "query", "answers", "line"]].explode("answers").dropna(subset=["answers"])
    )
    pairs = conn[["line", "ts", "id.orig_h", "id.resp_h"]].merge(
        answers, left_on=["id.orig_h", "id.resp_h"], right_on=["id.orig_h", "answers"], suffixes=("", "_dns")
    )
    pairs = pairs[pairs["ts_dns"] <= pairs["ts"]].sort_values(["ts_dns", "line_dns"])
    by_dns = pairs.groupby("line")["query"].last()

    result = []
    for row in conn.itertuples():
        if row.uid in sni.index:
            result.append((sni[row.uid], "sni"))
        elif row.uid in host.index:
            result.append((host[row.uid], "http_host"))
        elif row.line in by_dns.index:
            result.append((by_dns[row.line], "dns"))
        else:
            result.append((None, None))
    return result


@pytest.mark.parametrize(
    "folder, is_json", [("logs/zeek/zat_tsv", False), ("logs/zeek/slips_test9_json", True)]
)
def test_real_named_flows_match_an_independent_pandas_merge(folder, is_json):
    directory = shared_data(folder)
    files = [(str(directory / f"{kind}.log"), kind) for kind in ("conn", "ssl", "http", "dns")]
    (group,) = zeek.named_flow_groups(files)
    items = list(
        zeek.parse_named_flows(group, lambda path: io.BytesIO(read_bytes(directory / path.split("/")[-1])))
    )
    assert [i for i in items if isinstance(i, Rejected)] == []
    rows = [row for i in items if isinstance(i, Batch) for row in i.records.to_pylist()]
    conn_lines = data_line_count(read_bytes(directory / "conn.log"), is_json)
    header_lines = 0 if is_json else 8
    # Every conn row exactly once, in order.
    assert [r["source_pos"] for r in rows] == [header_lines + n for n in range(1, conn_lines + 1)]
    expected = expected_names(directory, is_json)
    assert [(r["name"], r["name_source"]) for r in rows] == expected
    sources = {source for _, source in expected}
    assert len(sources - {None}) >= 2  # the comparison covers more than one naming path
    all_lines = sum(
        data_line_count(read_bytes(directory / f"{k}.log"), is_json) for k in ("conn", "ssl", "http", "dns")
    )
    assert sum(i.units for i in items if isinstance(i, Batch)) == all_lines


@pytest.mark.parametrize("cut", [0, 1, 30])
def test_blocks_split_anywhere_keep_every_line(monkeypatch, cut):
    # Tiny blocks and reads: lines and header blocks straddle every boundary.
    from beamlytics.parsers import zeek_reader

    monkeypatch.setattr(zeek_reader, "BLOCK_BYTES", 300)
    monkeypatch.setattr(zeek_reader, "READ_BYTES", 7)
    data = (BRO2_DNS + ZEEK6_HEADER + "".join(zeek6_dns_line(trans_id=str(i)) for i in range(20))).encode()
    data = data[: len(data) - cut]  # end with a newline, without one, or inside the last line
    rows, rejected, units = parse(data)
    complete = 20 if cut < 30 else 19
    assert [row["source_pos"] for row in rows] == [9, 10] + list(range(20, 20 + complete))  # lines 20-39
    assert [row["trans_id"] for row in rows[2:]] == list(range(complete))
    assert [r.position for r in rejected] == ([] if cut < 30 else [39])
    assert units == len(rows)


def test_a_column_typed_otherwise_in_types_is_read_value_by_value():
    # A script logged ts as a string: good values still parse, bad ones cost their row only.
    fields, types = ["ts", "query", "trans_id"], ["string", "string", "string"]
    data = (
        header("dns", fields, types)
        + tsv("10.5", "a.example", "7")
        + tsv("noon", "b.example", "8")
        + tsv("11", "c.example", "x")
    )
    rows, rejected, units = parse(data.encode())
    assert [(r["query"], r["req_time"], r["trans_id"]) for r in rows] == [
        ("a.example", utc("1970-01-01T00:00:10.5"), 7)
    ]
    assert [(r.position, "ts" in r.reason, "trans_id" in r.reason) for r in rejected] == [
        (10, True, False),
        (11, False, True),
    ]
    assert units == 1


def test_raw_bytes_that_are_not_utf8_cost_only_their_line():
    # Zeek escapes such bytes; raw ones mean damage. Arrow refuses the whole run, so the
    # reader halves it down to the line.
    lines = [zeek6_dns_line(trans_id=str(i)).encode() for i in range(40)]
    lines[17] = lines[17].replace(b"ise.wrccdc.org", b"ise.\xff\xfe.org")
    rows, rejected, units = parse(ZEEK6_HEADER.encode() + b"".join(lines))
    assert [r.position for r in rejected] == [9 + 17]
    assert rejected[0].reason.startswith("not valid UTF-8")
    assert [row["trans_id"] for row in rows] == [i for i in range(40) if i != 17]
    assert [row["source_pos"] for row in rows] == [9 + i for i in range(40) if i != 17]
    assert units == 39
