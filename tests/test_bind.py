"""BIND 9 query-log connector: one line of each generation, hand-worked, plus dead letters."""
from __future__ import annotations

import bz2
import io
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.parsers import bind
from beamlytics.parsers.base import Batch, Rejected, decompressed
from tests.conftest import shared_data

UTC = timezone.utc


def run(data: bytes, options=None):
    items = list(bind.parse("queries.log", decompressed(io.BytesIO(data)), "queries", "dns", options=options))
    batches = [item for item in items if isinstance(item, Batch)]
    rows = pa.Table.from_batches([b.records for b in batches], schema=schemas.DNS).to_pylist()
    return rows, sum(b.units for b in batches), [item for item in items if isinstance(item, Rejected)]


FIELDS = ("c_ip", "c_port", "s_ip", "proto", "query", "req_class", "req_type", "flags", "req_time")
GENERATIONS = [
    # BIND 9.9: no (qname)
    ("13-Apr-2014 18:08:02.195 queries: info: client 192.168.2.3#35653: query: local.com IN A + (192.168.2.2)",
     ("192.168.2.3", 35653, "192.168.2.2", "udp", "local.com", "IN", "A", "RD",
      datetime(2014, 4, 13, 18, 8, 2, 195000, tzinfo=UTC))),
    # 9.10: (qname), TCP, EDNS without version
    ("25-Oct-2019 01:22:19.421 client 192.168.1.200#51364 (yahoo.com): query: yahoo.com IN TXT -ET (192.168.1.235)",
     ("192.168.1.200", 51364, "192.168.1.235", "tcp", "yahoo.com", "IN", "TXT", "", datetime(2019, 10, 25, 1, 22, 19, 421000, tzinfo=UTC))),
    # 9.11+: client object, view, CD, IPv6
    ("07-Jun-2026 05:59:41.389 queries: info: client @0x7f3a2c001234 2001:db8::5#16361 (www.example.com): "
     "view view-eu: query: www.example.com IN AAAA +E(0)DC (2001:db8::53)",
     ("2001:db8::5", 16361, "2001:db8::53", "udp", "www.example.com", "IN", "AAAA", "RD CD",
      datetime(2026, 6, 7, 5, 59, 41, 389000, tzinfo=UTC))),
    # 9.18 iso8601-utc, cookie flag, ECS suffix
    ("2024-03-01T10:00:00.500Z queries: info: client @0x1 10.0.0.9#53000 (a.example): query: a.example IN TYPE65534 "
     "+E(0)TK (10.0.0.1) [ECS 10.0.0.0/24/0]",
     ("10.0.0.9", 53000, "10.0.0.1", "tcp", "a.example", "IN", "TYPE65534", "RD", datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC))),
    # iso8601 with an offset
    ("2024-03-01T12:00:00.000+02:00 client @0x1 10.0.0.9#1 (b.example): query: b.example CH TXT -S (10.0.0.1)",
     ("10.0.0.9", 1, "10.0.0.1", "udp", "b.example", "CH", "TXT", "", datetime(2024, 3, 1, 10, 0, tzinfo=UTC))),
]


@pytest.mark.parametrize("line, expected", GENERATIONS)
def test_each_generation(line, expected):
    (row,), units, rejected = run(line.encode() + b"\n")
    assert (units, rejected) == (1, [])
    assert tuple(row[name] for name in FIELDS) == expected
    assert row["resp_code"] is None and row["answers"] is None and row["resp_time"] is None


def test_syslog_time_needs_the_year_option():
    line = b"Feb 25 11:09:43.651 queries: info: client 10.0.0.3#1035: query: 3.example.com.nl IN A\n"
    (row,), _, _ = run(line)
    assert row["req_time"] is None and row["flags"] is None and row["proto"] is None
    (row,), _, _ = run(line, options={"year": 2021})
    assert row["req_time"] == datetime(2021, 2, 25, 11, 9, 43, 651000, tzinfo=UTC)


def test_mixed_log_non_query_lines_count_without_rows():
    data = (
        b"02-May-2023 13:33:40.100 general: info: zone example.com/IN: loaded serial 1\n"
        b"02-May-2023 13:33:40.299 queries: info: client @0x2c 127.0.0.1#59751 (w.example): view internal: query: w.example IN A +E(0)K (127.0.0.1)\n"
        b"\n"
        b"02-May-2023 13:33:41.000 query-errors: info: client @0x2c 127.0.0.1#1 (x): query failed (SERVFAIL) for x/IN/A\n"
        b"Unmatched! The rat the cat\n"
        b"02-May-2023 13:33:42.000 queries: info: client @0x2c 127.0.0.1#5 (d): query: DOMAIN IN TYPE FLAGS (server)\n"
        b"02-May-2023 13:33:42.000 queries: info: client 127.0.0.1#5 (d): query: trunc"
    )
    rows, units, rejected = run(data)
    assert [r["source_pos"] for r in rows] == [2]
    assert [(r.position, r.reason) for r in rejected] == [
        (5, "not a BIND log line"), (6, "BIND query line that does not parse"), (7, "BIND query line that does not parse")]
    assert units + len(rejected) == 7


def test_bz2_input():
    line = GENERATIONS[0][0].encode() + b"\n"
    assert run(bz2.compress(line * 3))[0] == run(line * 3)[0]


def test_sniff():
    head = GENERATIONS[2][0].encode() + b"\n"
    assert bind.sniff("queries.log", head) == "queries"
    assert bind.sniff("bind.log-20240101", b"x general: info: start\n" * 5 + head) == "queries"
    assert bind.sniff("dns.log", b"#separator \\x09\n") is None
    assert bind.sniff("access.log", b"1157689312.049 5006 10.0.0.1 TCP_MISS/200 1 GET http://a/ - NONE/- -\n") is None


def test_real_sample_lines():
    path = shared_data("logs/bind/bind_query_log_lines_from_public_sources.log")
    data = path.read_bytes()
    rows, units, rejected = run(data, options={"year": 2020})
    assert units + len(rejected) == data.count(b"\n") + (not data.endswith(b"\n"))
    # Reference: the query name is the token after "query: " on each parsed line.
    lines = data.decode().splitlines()
    assert [r["query"] for r in rows] == [lines[r["source_pos"] - 1].split("query: ")[1].split()[0] for r in rows]
    assert [r.position for r in rejected] == [3]  # the placeholder line "query: DOMAIN IN TYPE FLAGS (server)"
