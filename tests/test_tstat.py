"""Tstat connector: header-driven flow logs, DNS and HTTP pairing, dead letters, real samples."""
from __future__ import annotations

import bz2
import gzip
import io
from collections import Counter
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.parsers import tstat
from beamlytics.parsers.base import Batch, Rejected, decompressed
from tests.conftest import shared_data

UTC = timezone.utc


def run(data: bytes, kind: str, options=None):
    table = next(iter(tstat.TABLES[kind]))
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else decompressed(io.BytesIO(data))
    items = list(tstat.parse(kind, stream, kind, table, options=options))
    batches = [item for item in items if isinstance(item, Batch)]
    rows = pa.Table.from_batches([b.records for b in batches], schema=schemas.TABLES[table]).to_pylist()
    return rows, sum(b.units for b in batches), [item for item in items if isinstance(item, Rejected)]


def ms(value: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=round(value * 1000))


# Tstat 2.x-era core columns (the 2014 mPlane README line, real output, 42 columns).
CORE_2014 = (
    "#00#c_ip:1 c_port:2 c_pkts_all:3 c_rst_cnt:4 c_ack_cnt:5 c_ack_cnt_p:6 c_bytes_uniq:7 c_pkts_data:8 "
    "c_bytes_all:9 c_pkts_retx:10 c_bytes_retx:11 c_pkts_ooo:12 c_syn_cnt:13 c_fin_cnt:14 s_ip:15 s_port:16 "
    "s_pkts_all:17 s_rst_cnt:18 s_ack_cnt:19 s_ack_cnt_p:20 s_bytes_uniq:21 s_pkts_data:22 s_bytes_all:23 "
    "s_pkts_retx:24 s_bytes_retx:25 s_pkts_ooo:26 s_syn_cnt:27 s_fin_cnt:28 first:29 last:30 durat:31 c_first:32 "
    "s_first:33 c_last:34 s_last:35 c_first_ack:36 s_first_ack:37 c_isint:38 s_isint:39 con_t:40 p2p_t:41 http_t:42\n"
    "192.168.1.2 55571 17 0 16 7 2679 7 2679 1 1 0 1 2 74.125.232.142 443 13 0 13 4 5173 7 5173 0 0 0 1 1 "
    "1400104176174.389893 1400104176772.221924 597.832000 50.176000 103.471000 547.508000 546.291000 48.619000 "
    "99.656000 1 1 8192 0 0\n"
).encode()


def header_line(prefix: str, names: list[str]) -> str:
    return prefix + " ".join(f"{name}:{i + 1}" for i, name in enumerate(names))


# A 3.x layout with Layer-7 columns, in an order unlike the core one: read by name, not position.
L7_NAMES = ["c_ip", "c_port", "s_ip", "s_port", "first", "last", "c_pkts_all", "s_pkts_all", "c_bytes_all",
            "s_bytes_all", "c_syn_cnt", "s_syn_cnt", "c_rst_cnt", "s_rst_cnt", "c_tls_SNI", "fqdn", "http_hostname"]


def l7_line(**values) -> str:
    base = dict(c_ip="10.0.0.1", c_port=40000, s_ip="10.9.9.9", s_port=443, first="1700000000000.500000",
                last="1700000001234.250000", c_pkts_all=5, s_pkts_all=4, c_bytes_all=300, s_bytes_all=900,
                c_syn_cnt=1, s_syn_cnt=1, c_rst_cnt=0, s_rst_cnt=1, c_tls_SNI="-", fqdn="-", http_hostname="-")
    base.update(values)
    return " ".join(str(base[name]) for name in L7_NAMES)


def test_header_columns_both_styles():
    assert tstat.header_columns("#c_ip:1 c_port:2 s_ip:3") == {"c_ip": 0, "c_port": 1, "s_ip": 2}
    assert tstat.header_columns("#31#c_ip:1 c_port:2") == {"c_ip": 0, "c_port": 1}
    assert tstat.header_columns("#c_ip:1 c_port:3") is None
    assert tstat.header_columns("192.168.1.2 55571") is None


def test_core_2014_layout():
    (row,), units, rejected = run(CORE_2014, "log_tcp_complete")
    assert (units, rejected) == (2, [])
    assert (row["c_ip"], row["c_port"], row["s_ip"], row["s_port"], row["proto"]) == (
        "192.168.1.2", 55571, "74.125.232.142", 443, "tcp")
    assert (row["c_pkt"], row["s_pkt"], row["c_bytes"], row["s_bytes"]) == (17, 13, 2679, 5173)
    assert row["time_start"] == ms(1400104176174.389893) and row["time_end"] == ms(1400104176772.221924)
    assert row["tcp_flags"] == "SAF"  # syn 1/1, ack 16/13, fin 2/1, rst 0/0
    assert row["name"] is None and row["name_source"] is None


def test_layer7_layout_names_flows_in_order_of_preference():
    data = "\n".join([
        header_line("#15#", L7_NAMES),
        l7_line(c_tls_SNI="sni.example", fqdn="dns.example", http_hostname="host.example"),
        l7_line(c_tls_SNI="sni.example", fqdn="dns.example"),
        l7_line(fqdn="dns.example"),
        l7_line(),
    ]).encode()
    rows, units, rejected = run(data, "log_tcp_complete")
    assert (units, rejected) == (5, [])
    assert [(r["name"], r["name_source"]) for r in rows] == [
        ("host.example", "http_host"), ("sni.example", "sni"), ("dns.example", "dns"), (None, None)]
    assert rows[0]["c_bytes"] == 300 and rows[0]["s_bytes"] == 900 and rows[0]["tcp_flags"] == "SR"
    assert rows[0]["time_start"] == ms(1700000000000.5)


def test_udp_flow_times():
    names = ["c_ip", "c_port", "c_first_abs", "c_durat", "c_bytes_all", "c_pkts_all", "s_ip", "s_port",
             "s_first_abs", "s_durat", "s_bytes_all", "s_pkts_all", "fqdn", "quic_SNI"]
    data = "\n".join([
        header_line("#", names),
        "10.0.0.1 5000 1000000.0 2.5 100 2 10.0.0.53 53 1000100.0 3.0 200 3 dns.example quic.example",
        "10.0.0.1 5001 1000000.0 2.5 100 2 10.0.0.53 53 0.000000 0.000000 0 0 dns.example -",
    ]).encode()
    rows, _, rejected = run(data, "log_udp_complete")
    assert rejected == []
    assert rows[0]["time_start"] == ms(1000000.0)
    assert rows[0]["time_end"] == ms(1000100.0 + 3000)  # server side ends later
    assert rows[1]["time_end"] == ms(1000000.0 + 2500)  # server never answered
    assert [(r["name"], r["name_source"], r["proto"]) for r in rows] == [
        ("quic.example", "sni", "udp"), ("dns.example", "dns", "udp")]
    assert (rows[0]["c_pkt"], rows[0]["s_pkt"], rows[0]["c_bytes"], rows[0]["s_bytes"]) == (2, 3, 100, 200)


def test_flow_dead_letters():
    names = ["c_ip", "c_port", "s_ip", "s_port", "first", "last"]
    data = "\n".join([
        "10.0.0.1 1 10.0.0.2 2 1000.0 2000.0",  # before the header
        header_line("#", names),
        "10.0.0.1 1 10.0.0.2 2 1000.0",  # truncated
        "10.0.0.1 x 10.0.0.2 2 1000.0 2000.0",  # not a number
        "",
        "10.0.0.1 1 10.0.0.2 2 1000.0 2000.0",
    ]).encode()
    rows, units, rejected = run(data, "log_tcp_complete")
    assert len(rows) == 1 and rows[0]["source_pos"] == 6
    assert sorted(r.position for r in rejected) == [1, 3, 4]
    assert units + len(rejected) == 6


DNS_HEADER = ("#c_ip:1 c_port:2 c_isint:3 c_iscrypto:4 s_ip:5 s_port:6 s_isint:7 s_iscrypto:8 time:9 entry:10 "
              "trans_id:11 query:12 ttl:13 class:14 type:15 answer:16 flags:17 qdcount:18 ancount:19 nscount:20 "
              "arcount:21 pkt_size:22")


def test_dns_pairs_requests_and_answers():
    data = "\n".join([
        DNS_HEADER,
        "10.0.0.1 4000 1 0 10.0.0.53 53 1 0 1000.000000 REQ 0x0010 www.example.com. - IN A - 0x08 1 0 0 0 40",
        "10.0.0.1 4001 1 0 10.0.0.53 53 1 0 1000.500000 REQ 0x0011 nx.example. - IN AAAA - 0x18 1 0 0 0 40",
        "10.0.0.1 4000 1 0 10.0.0.53 53 1 0 1020.000000 RESP 0x0010 www.example.com. 60 IN CNAME cdn.example. 0x2c 1 2 0 0 90",
        "10.0.0.1 4000 1 0 10.0.0.53 53 1 0 1020.000000 RESP 0x0010 cdn.example. 30 IN A 192.0.2.7 0x2c 1 2 0 0 90",
        "10.0.0.1 4001 1 0 10.0.0.53 53 1 0 1030.000000 RESP_ERR 0x0011 nx.example. - IN AAAA NXDOMAIN 0x0c 1 0 1 0 90",
        "10.0.0.1 4002 1 0 10.0.0.53 53 1 0 1040.000000 RESP 0x0012 late.example. 5 IN HTTPS 1\t.\talpn=h2 0x0c 1 1 0 0 70",
        "10.0.0.1 4003 1 0 10.0.0.53 53 1 0 1050.000000 REQ 0x0013 lost.example. - IN OTHER - 0x09 1 0 0 0 40",
    ]).encode()
    rows, units, rejected = run(data, "log_dns_complete")
    assert (units, rejected) == (8, [])
    www, nx, late, lost = sorted(rows, key=lambda r: r["source_pos"])
    assert (www["query"], www["req_type"], www["trans_id"], www["resp_code"]) == ("www.example.com", "A", 16, "NOERROR")
    assert www["answers"] == ["cdn.example.", "192.0.2.7"] and www["answer_types"] == ["CNAME", "A"]
    assert www["answer_ttls"] == [60, 30] and www["flags"] == "QR AA RD RA"  # 0x2c = AA|RD|RA
    assert www["req_time"] == ms(1000.0) and www["resp_time"] == ms(1020.0)
    assert (nx["resp_code"], nx["req_type"], nx["answers"], nx["flags"]) == ("NXDOMAIN", "AAAA", None, "QR RD RA")
    # A response whose request was not logged keeps its own time; its question type is unknown.
    assert (late["query"], late["req_time"], late["req_type"], late["answers"]) == (
        "late.example", ms(1040.0), None, ["1 . alpn=h2"])
    assert (lost["resp_time"], lost["req_type"], lost["flags"]) == (None, None, "RD CD")  # 0x09


def test_dns_holds_transactions_only_for_pair_seconds():
    data = "\n".join([
        DNS_HEADER,
        "10.0.0.1 4000 1 0 10.0.0.53 53 1 0 1000.000000 REQ 0x0010 a.example. - IN A - 0x08 1 0 0 0 40",
        "10.0.0.1 4001 1 0 10.0.0.53 53 1 0 9000.000000 REQ 0x0011 b.example. - IN A - 0x08 1 0 0 0 40",
        "10.0.0.1 4000 1 0 10.0.0.53 53 1 0 9500.000000 RESP 0x0010 a.example. 1 IN A 192.0.2.1 0x0c 1 1 0 0 40",
    ]).encode()
    rows, _, _ = run(data, "log_dns_complete", options={"pair_seconds": 5})
    first = min(rows, key=lambda r: r["source_pos"])
    assert first["query"] == "a.example" and first["resp_time"] is None  # answer came 8.5 s later: too late
    assert len(rows) == 3


def test_http_pairs_requests_responses_and_continuations():
    tab = "\t".join
    data = "\n".join([
        "#http log",
        tab(["10.0.0.1", "5000", "10.0.0.80", "80", "1000.5", "GET", "www.example.com", "/a[*]", "-", "curl/8", "-", "-"]),
        tab(["10.0.0.1", "5000", "10.0.0.80", "80", "1000.6", "REQ2", "-", "[*]bc", "-", "-", "-", "-"]),
        tab(["10.0.0.1", "5000", "10.0.0.80", "80", "1000.7", "POST", "www.example.com", "/b", "http://r/", "-", "k=v", "-"]),
        tab(["10.0.0.1", "5000", "10.0.0.80", "80", "1001.0", "HTTP", "200", "512", "text/html", "nginx", "-", "-", "-"]),
        tab(["10.0.0.1", "5000", "10.0.0.80", "80", "1001.5", "HTTP", "404", "-", "-", "-", "-", "-", "-"]),
        tab(["10.0.0.2", "6000", "10.0.0.80", "80", "1002.0", "HTTP", "301", "0", "-", "-", "-", "/x", "-"]),
    ]).encode()
    rows, units, rejected = run(data, "log_http_complete")
    assert (units, rejected) == (7, [])
    get, post, orphan = sorted(rows, key=lambda r: r["source_pos"])
    assert (get["method"], get["host"], get["path"], get["user_agent"]) == ("GET", "www.example.com", "/abc", "curl/8")
    assert (get["status_code"], get["response_body_len"], get["content_type"], get["server"]) == (200, 512, "text/html", "nginx")
    assert get["req_time"] == ms(1000500.0) and get["resp_time"] == ms(1001000.0)
    assert (post["method"], post["referrer"], post["req_cookie"], post["status_code"]) == ("POST", "http://r/", "k=v", 404)
    assert (orphan["method"], orphan["status_code"], orphan["req_time"]) == (None, 301, ms(1002000.0))


def test_http_fqdn_column_by_field_count():
    tab = "\t".join
    line = tab(["10.0.0.1", "5000", "10.0.0.80", "80", "1.0", "GET", "h.example", "dns.example", "/p", "-", "ua", "-", "-"])
    (row,), _, _ = run(line.encode(), "log_http_complete")
    assert (row["host"], row["path"], row["user_agent"]) == ("h.example", "/p", "ua")


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_compressed_input_reads_the_same(compress):
    assert run(compress(CORE_2014), "log_tcp_complete")[0] == run(CORE_2014, "log_tcp_complete")[0]


def test_sniff():
    assert tstat.sniff("log_tcp_complete", CORE_2014) == "log_tcp_complete"
    assert tstat.sniff("anything", CORE_2014) == "log_tcp_complete"  # known by its header columns
    assert tstat.sniff("log_dns_complete.gz", DNS_HEADER.encode() + b"\n") == "log_dns_complete"
    assert tstat.sniff("log_http_complete", b"#\n") == "log_http_complete"
    assert tstat.sniff("conn.log", b"#separator \\x09\n#fields\tts\n") is None
    assert tstat.sniff("access.log", b"1157689312.049 5006 10.0.0.1 TCP_MISS/200 1 GET http://a/ - NONE/- -\n") is None


def real_lines(kind: str) -> tuple[bytes, list[list[str]], dict[str, int]]:
    data = shared_data(f"logs/tstat/dazn_1mbit_exp0/{kind}").read_bytes()
    text = data.decode().splitlines()
    return data, [line.split(" ") for line in text[1:]], tstat.header_columns(text[0])


@pytest.mark.parametrize("kind", ["log_tcp_complete", "log_udp_complete"])
def test_real_flow_logs(kind):
    data, lines, columns = real_lines(kind)
    rows, units, rejected = run(data, kind)
    assert units + len(rejected) == data.count(b"\n") and rejected == []
    # Reference: the byte columns summed straight from the split lines, by header name.
    assert sum(r["c_bytes"] for r in rows) == sum(int(f[columns["c_bytes_all"]]) for f in lines)
    assert sum(r["s_pkt"] for r in rows) == sum(int(f[columns["s_pkts_all"]]) for f in lines)


def test_real_dns_log():
    data, lines, columns = real_lines("log_dns_complete")
    rows, units, rejected = run(data, "log_dns_complete")
    assert units + len(rejected) == data.count(b"\n") and rejected == []
    entry, port, trans = columns["entry"], columns["c_port"], columns["trans_id"]
    requests = Counter((int(f[port]), int(f[trans], 16)) for f in lines if f[entry] == "REQ")
    # One row per REQ line, keyed as the line says (line n is lines[n - 2]: the header is line 1).
    from_requests = [r for r in rows if lines[r["source_pos"] - 2][entry] == "REQ"]
    assert Counter((r["c_port"], r["trans_id"]) for r in from_requests) == requests
    assert sum(len(r["answers"] or []) for r in rows) == sum(1 for f in lines if f[entry] == "RESP")


def test_every_real_tstat_file_counts_add_up():
    for path in sorted(p for p in shared_data("logs/tstat").rglob("*") if p.is_file()):
        data = path.read_bytes()
        kind = tstat.sniff(path.name, data[:65536])
        if kind is None:
            continue
        _, units, rejected = run(data, kind)
        assert units + len(rejected) == data.count(b"\n") + (not data.endswith(b"\n")), path.name
