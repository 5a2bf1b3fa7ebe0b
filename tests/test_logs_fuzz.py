"""Fuzz the Squid, Tstat, Argus, Suricata and BIND parsers with random and mutated lines: they never raise,
and every line is counted once, as a unit or as a dead letter."""
from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from beamlytics.parsers import argus, bind, squid, suricata, tstat
from beamlytics.parsers.base import Batch, Read, Rejected

SEEDS = {
    (squid, "access", "http"): [
        "1157689312.049   5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 u DIRECT/209.73.177.115 -",
        '192.168.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET http://e.com/a HTTP/1.0" 200 2326 "r" "ua"',
    ],
    (tstat, "log_tcp_complete", "named_flows"): [
        "#c_ip:1 c_port:2 s_ip:3 s_port:4 first:5 last:6 c_bytes_all:7 c_syn_cnt:8",
        "10.0.0.1 1 10.0.0.2 443 1700000000000.5 1700000001000.25 300 1",
    ],
    (tstat, "log_dns_complete", "dns"): [
        "#c_ip:1 c_port:2 s_ip:3 s_port:4 time:5 entry:6 trans_id:7 query:8 ttl:9 class:10 type:11 answer:12 flags:13",
        "10.0.0.1 4000 10.0.0.53 53 1000.0 REQ 0x0010 a.example. - IN A - 0x08",
        "10.0.0.1 4000 10.0.0.53 53 1020.0 RESP 0x0010 a.example. 60 IN A 192.0.2.7 0x0c",
    ],
    (tstat, "log_http_complete", "http"): [
        "10.0.0.1\t5000\t10.0.0.80\t80\t1000.5\tGET\th\t/a[*]\t-\tua\t-\t-",
        "10.0.0.1\t5000\t10.0.0.80\t80\t1000.6\tREQ2\t-\t[*]bc\t-\t-\t-\t-",
        "10.0.0.1\t5000\t10.0.0.80\t80\t1001.0\tHTTP\t200\t512\ttext/html\tnginx\t-\t-\t-",
    ],
    (argus, "binetflow", "named_flows"): [
        "StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,TotPkts,TotBytes,SrcBytes,SrcPkts",
        "2019/04/04 16:24:47.672448,63.8,tcp,10.8.0.69,56101,   ->,14.1.11.113,999,FSPA_SRA,31,8764,1887,15",
        "1554395087.5,0,icmp,10.8.0.69,0x0008,   ->,110.128.128.128,0x7208,ECO,1,98,98,1",
    ],
    (suricata, "eve", "named_flows"): [
        '{"event_type":"flow","flow_id":5,"src_ip":"10.0.0.1","src_port":1,"dest_ip":"10.0.0.2","dest_port":80,'
        '"proto":"TCP","flow":{"pkts_toserver":2,"pkts_toclient":1,"bytes_toserver":120,"bytes_toclient":60,'
        '"start":"2021-06-06T16:38:55.855844+0200","end":"2021-06-06T16:38:56+0200"},'
        '"tcp":{"tcp_flags_ts":"1b","tcp_flags_tc":"14"}}',
        '{"event_type":"tls","flow_id":5,"tls":{"sni":"a.example"},"timestamp":"x"}',
    ],
    (bind, "queries", "dns"): [
        "02-May-2023 13:33:40.299 queries: info: client @0x2c 127.0.0.1#59751 (w.e): view v: query: w.e IN A +E(0)K (127.0.0.1)",
        "2024-03-01T10:00:00.500Z client 10.0.0.9#53000: query: a.example IN A -T (10.0.0.1)",
    ],
}
CASES = list(SEEDS)


def counted(case, data: bytes) -> None:
    module, kind, table = case
    items = list(module.parse("fuzz", io.BufferedReader(io.BytesIO(data)), kind, table, batch_rows=3))
    units = sum(item.units for item in items if isinstance(item, Batch))
    dead = [item for item in items if isinstance(item, Rejected)]
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    assert units + len(dead) == lines
    assert items[-1] == Read("fuzz", lines)
    assert all(1 <= item.position <= lines and item.reason for item in dead)


@st.composite
def mutated(draw, lines):
    """Seed lines with characters deleted, replaced or inserted, lines cut or repeated."""
    out = []
    for line in draw(st.lists(st.sampled_from(lines), max_size=8)):
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(line)))
            change = draw(st.sampled_from(["delete", "insert", "cut"]))
            if change == "delete":
                line = line[:at] + line[at + 1:]
            elif change == "insert":
                line = line[:at] + draw(st.sampled_from([" ", "\t", "#", "-", "x", "9", ".", ":", "\x00", "é"])) + line[at:]
            else:
                line = line[:at]
        out.append(line)
    return ("\n".join(out) + draw(st.sampled_from(["", "\n", "\r\n"]))).encode()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(case=st.sampled_from(CASES), data=st.binary(max_size=300))
def test_random_bytes(case, data):
    counted(case, data)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(case=st.sampled_from(CASES), data=st.data())
def test_mutated_lines(case, data):
    counted(case, data.draw(mutated(SEEDS[case])))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(case=st.sampled_from(CASES), text=st.lists(st.text(max_size=60), max_size=6))
def test_random_text_lines(case, text):
    counted(case, "\n".join(text).encode("utf-8", "surrogatepass"))
