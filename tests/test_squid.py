"""Squid access.log connector: hand-worked lines of every layout, dead letters, real samples."""
from __future__ import annotations

import bz2
import gzip
import io
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.parsers import squid
from beamlytics.parsers.base import Batch, Rejected, decompressed, open_input
from tests.conftest import shared_data

UTC = timezone.utc


def run(data: bytes, table: str = "http"):
    items = list(squid.parse("access.log", unpacked(data), "access", table))
    batches = [item for item in items if isinstance(item, Batch)]
    rows = pa.Table.from_batches([b.records for b in batches], schema=schemas.TABLES[table]).to_pylist()
    return rows, sum(b.units for b in batches), [item for item in items if isinstance(item, Rejected)]


def unpacked(data: bytes):
    # base.decompressed() hands gzip.GzipFile a stream as its file *name*: open gzip directly.
    if data[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=io.BytesIO(data))
    return decompressed(io.BytesIO(data))


def line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def at(seconds: int, millis: int = 0) -> datetime:
    return datetime.fromtimestamp(seconds, UTC) + timedelta(milliseconds=millis)


CONNECT = b"1157689312.049   5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 badeyek DIRECT/209.73.177.115 -\n"
IPV6 = b"1677971737.789  123 2001:db8::1 TCP_MISS/404 1024 GET http://example.com/missing.html admin HIER_DIRECT/93.184.216.34 text/html\n"
HOSTNAME = b"1035368729.430    371 proxyclient.lan TCP_MISS/000 2136 GET https://www.fas.harvard.edu:8443/x.jpg?a=1 - FIRST_PARENT_MISS/proxy2.syd.connect.com.au image/jpeg; charset=x\n"
COMMON = b'192.168.0.1 - alice [10/Oct/2000:13:55:36 -0700] "GET http://example.com/a.gif HTTP/1.0" 200 2326 TCP_MISS:HIER_DIRECT\n'
COMBINED = b'10.1.1.1 - - [01/Feb/2021:00:00:01 +0130] "POST /upload HTTP/1.1" 201 - "http://ref.example/" "Mozilla/5.0 (X11)"\n'


def test_native_connect_line():
    (row,), units, rejected = run(CONNECT)
    assert (units, rejected) == (1, [])
    assert row["c_ip"] == "10.105.21.199" and row["s_ip"] == "209.73.177.115"
    assert (row["method"], row["host"], row["s_port"], row["path"]) == ("CONNECT", "login.yahoo.com", 443, None)
    assert (row["status_code"], row["response_body_len"], row["content_type"]) == (200, 19763, None)
    # %ts is the completion time; the request started %tr milliseconds earlier.
    assert row["resp_time"] == at(1157689312, 49)
    assert row["req_time"] == at(1157689312, 49) - timedelta(milliseconds=5006)


def test_native_ipv6_client_and_hier_direct():
    (row,), _, _ = run(IPV6)
    assert row["c_ip"] == "2001:db8::1" and row["s_ip"] == "93.184.216.34"
    assert (row["host"], row["path"], row["s_port"], row["status_code"]) == ("example.com", "/missing.html", 80, 404)
    assert row["content_type"] == "text/html"


def test_hostname_client_parent_peer_and_no_reply():
    (row,), _, _ = run(HOSTNAME)
    assert row["c_ip"] == "proxyclient.lan"
    assert row["s_ip"] is None  # a parent proxy named by hostname is no IP address
    assert (row["host"], row["s_port"], row["path"]) == ("www.fas.harvard.edu", 8443, "/x.jpg?a=1")
    assert row["status_code"] is None  # 000: no reply received
    assert row["content_type"] == "image/jpeg; charset=x"


def test_common_and_combined_lines():
    (common, combined), units, rejected = run(COMMON + COMBINED)
    assert (units, rejected) == (2, [])
    assert common["req_time"] == datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)  # 13:55:36 at -07:00
    assert common["resp_time"] is None
    assert (common["c_ip"], common["host"], common["path"], common["status_code"], common["response_body_len"]) == (
        "192.168.0.1", "example.com", "/a.gif", 200, 2326)
    assert combined["req_time"] == datetime(2021, 1, 31, 22, 30, 1, tzinfo=UTC)  # 00:00:01 at +01:30
    assert (combined["method"], combined["host"], combined["path"]) == ("POST", None, "/upload")
    assert combined["response_body_len"] is None
    assert (combined["referrer"], combined["user_agent"]) == ("http://ref.example/", "Mozilla/5.0 (X11)")


def test_named_flows_one_per_request():
    rows, _, _ = run(CONNECT + IPV6, table="named_flows")
    assert [(r["c_ip"], r["s_ip"], r["s_port"], r["name"], r["name_source"], r["s_bytes"], r["proto"]) for r in rows] == [
        ("10.105.21.199", "209.73.177.115", 443, "login.yahoo.com", "squid_url", 19763, "tcp"),
        ("2001:db8::1", "93.184.216.34", 80, "example.com", "squid_url", 1024, "tcp"),
    ]
    assert rows[1]["time_start"] == at(1677971737, 789) - timedelta(milliseconds=123)
    assert rows[1]["time_end"] == at(1677971737, 789)


def test_garbage_truncated_and_blank_lines():
    data = b"\n" + CONNECT + b"Unmatched! not a log line\n" + CONNECT[:40] + b"\n   \n" + IPV6.rstrip(b"\n")
    rows, units, rejected = run(data)
    assert len(rows) == 2
    assert [r.position for r in rejected] == [3, 4]
    assert all(r.reason and r.source_tool == "squid" for r in rejected)
    assert rejected[0].excerpt == "Unmatched! not a log line"
    assert units + len(rejected) == line_count(data) == 6


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_compressed_input_reads_the_same(compress):
    data = CONNECT + IPV6 + COMMON
    assert run(compress(data))[0] == run(data)[0]


def test_truncated_gzip_rejects_the_rest():
    packed = gzip.compress(CONNECT * 30000)  # several read blocks
    rows, units, rejected = run(packed[: len(packed) // 2])
    assert rejected and rejected[-1].reason.startswith("input unreadable")
    assert units == len(rows) > 0


def test_sniff():
    assert squid.sniff("access.log-20240101", CONNECT * 3) == "access"
    assert squid.sniff("access.log", COMMON * 3) == "access"
    assert squid.sniff("other.txt", COMMON * 3) is None  # Apache-style lines only count for access logs
    assert squid.sniff("dns.log", b"#separator \\x09\n#set_separator\t,\n") is None
    assert squid.sniff("x.pcap", b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + b"\x00" * 100) is None


def test_real_samples_count_and_bytes():
    files = sorted(path for path in shared_data("logs/squid").rglob("*.log"))
    assert files
    for path in files:
        data = path.read_bytes()
        rows, units, rejected = run(data)
        assert units + len(rejected) == line_count(data), path.name
        # Reference: the 5th whitespace field of a native line is the byte count.
        native = [line.split() for line in data.decode().splitlines() if line[:1].isdigit()]
        assert sum(r["response_body_len"] for r in rows) == sum(int(f[4]) for f in native), path.name
        assert squid.sniff(path.name, data[:65536]) == "access"


def test_real_sample_rejects_only_the_garbage():
    path = shared_data("logs/squid/more/netdata_squidlog_testdata_access.excerpt.log")
    _, _, rejected = run(path.read_bytes())
    assert [r.position for r in rejected] == [1, 9]


def test_real_sample_through_open_input():
    path = shared_data("logs/squid/beats_access1.log")
    items = list(squid.parse(str(path), open_input(str(path)), "access", "named_flows", batch_rows=30))
    batches = [item for item in items if isinstance(item, Batch)]
    assert max(b.records.num_rows for b in batches) <= 30
    assert sum(b.units for b in batches) == 100
