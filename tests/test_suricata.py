"""Suricata connector: EVE flow events -> named_flows, naming by flow_id, dead letters, the real EVE log."""
from __future__ import annotations

import io
import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.parsers import formats, suricata
from beamlytics.parsers.base import Batch, Read, Rejected
from tests.conftest import shared_data

UTC = timezone.utc


def run(lines: list[str], options=None):
    data = ("\n".join(lines) + "\n").encode()
    items = list(suricata.parse("eve.json", io.BytesIO(data), suricata.KIND, "named_flows", options=options))
    batches = [item for item in items if isinstance(item, Batch)]
    rows = pa.Table.from_batches([b.records for b in batches], schema=schemas.NAMED_FLOWS).to_pylist()
    rejected = [item for item in items if isinstance(item, Rejected)]
    return rows, sum(b.units for b in batches), rejected, next(i for i in items if isinstance(i, Read)).units


def flow_event(flow_id=1, proto="TCP", ts="13", tc="17", **flow):
    counters = dict(pkts_toserver=5, pkts_toclient=4, bytes_toserver=400, bytes_toclient=3000,
                    start="2021-06-06T16:38:55.855844+0200", end="2021-06-06T16:39:00.000001+0200")
    counters.update(flow)
    event = {"timestamp": "2021-06-06T16:39:01+0200", "flow_id": flow_id, "event_type": "flow", "src_ip": "10.0.0.1",
             "src_port": 40000, "dest_ip": "10.0.0.2", "dest_port": 443, "proto": proto, "flow": counters}
    if ts is not None:
        event["tcp"] = {"tcp_flags_ts": ts, "tcp_flags_tc": tc}
    return json.dumps(event)


def test_hand_worked_flow_named_by_its_tls_event():
    tls = json.dumps({"timestamp": "x", "flow_id": 7, "event_type": "tls", "tls": {"sni": "example.org"}})
    http = json.dumps({"timestamp": "x", "flow_id": 7, "event_type": "http", "http": {"hostname": "other.example"}})
    alert = json.dumps({"timestamp": "x", "flow_id": 7, "event_type": "alert", "alert": {"signature": "s"}})
    rows, units, rejected, read = run([tls, http, alert, flow_event(7)])
    assert not rejected and units == read == 4
    (row,) = rows
    # 16:38:55.855844 at +02:00 is 14:38:55.855844 UTC; the end 4.144157 s later.
    assert row["time_start"] == datetime(2021, 6, 6, 14, 38, 55, 855844, tzinfo=UTC)
    assert row["time_end"] - row["time_start"] == timedelta(seconds=4, microseconds=144157)
    assert (row["c_ip"], row["c_port"], row["s_ip"], row["s_port"], row["proto"]) == (
        "10.0.0.1", 40000, "10.0.0.2", 443, "tcp")
    assert (row["c_pkt"], row["s_pkt"], row["c_bytes"], row["s_bytes"]) == (5, 4, 400, 3000)
    # To server 0x13 = FIN SYN ACK, to client 0x17 = FIN SYN RST ACK: the responder reset it.
    assert (row["tcp_flags"], row["conn_state"]) == ("FSRA", "RSTR")
    assert (row["name"], row["name_source"], row["source_pos"]) == ("example.org", "sni", 4)


@pytest.mark.parametrize("ts, tc, s_pkt, expected", [
    ("02", "00", 0, "S0"),    # SYN, nothing back
    ("02", "14", 1, "REJ"),   # SYN answered by RST+ACK
    ("1b", "1b", 4, "SF"),    # FIN SYN PSH ACK both ways
    ("1a", "1a", 4, "S1"),    # established, open
    ("18", "18", 4, "OTH"),   # mid-stream, no SYN
])
def test_tcp_states(ts, tc, s_pkt, expected):
    rows, *_ = run([flow_event(ts=ts, tc=tc, pkts_toclient=s_pkt)])
    assert rows[0]["conn_state"] == expected


def test_udp_icmp_and_missing_tcp_flags():
    icmp = json.loads(flow_event(proto="ICMP", ts=None, pkts_toclient=0))
    icmp.update(icmp_type=8, icmp_code=0, src_port=None, dest_port=None)
    rows, _, rejected, _ = run([flow_event(proto="UDP", ts=None), flow_event(proto="UDP", ts=None, pkts_toclient=0),
                                json.dumps(icmp), flow_event(ts=None)])
    assert not rejected
    assert [(r["proto"], r["conn_state"], r["c_port"]) for r in rows] == [
        ("udp", "SF", 40000), ("udp", "S0", 40000), ("icmp", "OTH", None), ("tcp", None, 40000)]


def test_bad_lines_are_dead_letters():
    no_times = json.loads(flow_event())
    del no_times["flow"]["end"]
    bad_port = json.loads(flow_event())
    bad_port["dest_port"] = 70000
    lines = ["{not json", "[1, 2]", flow_event(pkts_toserver=-1), json.dumps(no_times), json.dumps(bad_port),
             flow_event(start="yesterday"), json.dumps({"event_type": "flow", "flow": {}}), "",
             "[" * 5000, '{"event_type": "dns", "x": "' + "y" * 300 + '"}', "[" * 2000 + "]" * 2000]
    rows, units, rejected, read = run(lines, options={"max_line_bytes": 4096})
    assert rows == []
    assert [(r.position, r.reason) for r in rejected] == [
        (1, "not a JSON object"), (2, "not a JSON object"),
        (3, "flow counters (pkts/bytes to server/client) missing or not non-negative integers"),
        (4, "flow start or end is not an ISO 8601 time"), (5, "src_port or dest_port is not a port number"),
        (6, "flow start or end is not an ISO 8601 time"), (7, "flow event without src_ip, dest_ip or proto"),
        (9, "line longer than 4096 bytes: skipped to its end"),
        (11, "not a JSON object"),  # nested deeper than the decoder recurses
    ]
    assert units + len(rejected) == read == 11


def test_pending_names_are_bounded():
    names = suricata.FlowNames(limit=2)
    for flow_id in (1, 2, 3):
        names.note({"flow_id": flow_id, "http": {"hostname": f"h{flow_id}"}})
    assert names.take(1) == (None, None)  # the oldest went first
    assert names.take(3) == ("h3", "http_host")


def test_sniffed_by_its_first_event():
    head = flow_event().encode() + b"\n"
    assert formats.identify("eve.json", head) == ("suricata", "eve")
    assert formats.identify("conn.log", b'{"ts": 1.5, "uid": "C1", "id.orig_h": "1.1.1.1", "conn_state": "S0"}\n')[0] == "zeek"


def test_every_flow_event_of_the_real_log():
    """Each flow event against the JSON read independently (json + datetime, no parser code)."""
    path = shared_data("logs/suricata/test6-malicious.eve.json")
    items = list(formats.parse_paths([str(path)], "named_flows"))
    assert not [item for item in items if isinstance(item, Rejected)]
    rows = {row["source_pos"]: row for row in
            pa.Table.from_batches([i.records for i in items if isinstance(i, Batch)]).to_pylist()}
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert Counter(e["event_type"] for e in events)["flow"] == len(rows) == 3512
    for number, event in enumerate(events, start=1):
        if event["event_type"] != "flow":
            assert number not in rows
            continue
        row, flow = rows[number], event["flow"]
        portless = event["proto"] == "ICMP"
        assert (row["c_ip"], row["s_ip"], row["proto"]) == (event["src_ip"], event["dest_ip"], event["proto"].lower())
        assert (row["c_port"], row["s_port"]) == ((None, None) if portless else (event["src_port"], event["dest_port"]))
        assert (row["c_pkt"], row["s_pkt"], row["c_bytes"], row["s_bytes"]) == (
            flow["pkts_toserver"], flow["pkts_toclient"], flow["bytes_toserver"], flow["bytes_toclient"])
        assert row["time_start"] == datetime.strptime(flow["start"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert row["time_end"] == datetime.strptime(flow["end"], "%Y-%m-%dT%H:%M:%S.%f%z")
        if event["proto"] == "UDP":
            assert row["conn_state"] == ("SF" if flow["pkts_toclient"] else "S0")
        if "tcp" in event:
            seen = int(event["tcp"]["tcp_flags_ts"], 16) | int(event["tcp"]["tcp_flags_tc"], 16)
            assert row["tcp_flags"] == "".join(l for b, l in enumerate("FSRPAUEC") if seen >> b & 1)
