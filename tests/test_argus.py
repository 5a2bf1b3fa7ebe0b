"""Argus connector: header-driven binetflow lines, State -> conn_state, dead letters, the three real files."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.parsers import argus, formats
from beamlytics.parsers.base import Batch, Read, Rejected
from tests.conftest import shared_data

UTC = timezone.utc
HEADER = "StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,sTos,dTos,TotPkts,TotBytes,SrcBytes,SrcPkts,Label"


def run(text: str, options=None):
    items = list(argus.parse("t.binetflow", io.BytesIO(text.encode()), argus.KIND, "named_flows", options=options))
    batches = [item for item in items if isinstance(item, Batch)]
    rows = pa.Table.from_batches([b.records for b in batches], schema=schemas.NAMED_FLOWS).to_pylist()
    rejected = [item for item in items if isinstance(item, Rejected)]
    read = [item for item in items if isinstance(item, Read)]
    return rows, sum(b.units for b in batches), rejected, read[0].units


def test_hand_worked_rows():
    text = "\n".join([
        HEADER,
        # SYN out, nothing back: 1 packet of 60 bytes from the source, none from the destination.
        "2019/04/04 16:24:47.5,0.000000,tcp,10.8.0.69,56101,   ->,14.1.11.113,999,S_,0,,1,60,60,1,",
        # A full exchange: 10 packets / 2,000 bytes, 4 / 500 of them from the source; 1.25 s long.
        "2019/04/04 16:24:48.000001,1.250000,tcp,10.8.0.69,40000,   ->,31.13.83.2,443,FSPA_FSPA,0,0,10,2000,500,4,x",
        # ICMP port unreachable: Argus prints type 3 / code 3 as hex ports.
        "2019/04/04 16:24:49.000000,0.000000,icmp,10.0.0.1,0x0303,   ->,10.0.0.2,0x0003,URP,0,,1,70,70,1,",
        # UDP answered (CON) and unanswered (INT).
        "1970/01/01 01:00:08.140073,0.027947,udp,10.8.0.69,48427,  <->,8.8.8.8,53,CON,0,0,2,142,63,1,",
        "1554395087.25,2.5,udp,10.8.0.69,48428,   ->,8.8.8.8,53,INT,0,,3,300,300,3,",
    ])
    rows, units, rejected, read = run(text)
    assert not rejected and units == read == 6
    syn, full, icmp, answered, silent = rows
    assert (syn["c_ip"], syn["c_port"], syn["s_ip"], syn["s_port"], syn["proto"]) == (
        "10.8.0.69", 56101, "14.1.11.113", 999, "tcp")
    assert (syn["c_pkt"], syn["s_pkt"], syn["c_bytes"], syn["s_bytes"]) == (1, 0, 60, 0)
    assert (syn["conn_state"], syn["tcp_flags"]) == ("S0", "S")
    assert syn["time_start"] == datetime(2019, 4, 4, 16, 24, 47, 500000, tzinfo=UTC) == syn["time_end"]
    assert (full["c_pkt"], full["s_pkt"], full["c_bytes"], full["s_bytes"]) == (4, 6, 500, 1500)
    assert (full["conn_state"], full["tcp_flags"]) == ("SF", "FSPA")
    assert full["time_end"] - full["time_start"] == timedelta(seconds=1.25)
    assert (icmp["c_port"], icmp["s_port"], icmp["conn_state"]) == (0x303, 3, "OTH")
    assert answered["time_start"] == datetime(1970, 1, 1, 1, 0, 8, 140073, tzinfo=UTC)
    assert (answered["conn_state"], answered["s_pkt"], answered["s_bytes"]) == ("SF", 1, 79)
    assert silent["time_start"] == datetime.fromtimestamp(1554395087.25, UTC)
    assert (silent["conn_state"], silent["time_end"] - silent["time_start"]) == ("S0", timedelta(seconds=2.5))
    assert [row["source_pos"] for row in rows] == [2, 3, 4, 5, 6]


# Worked by hand from the flags each side sent (left / right of the underscore), Zeek's names.
@pytest.mark.parametrize("state, expected", [
    ("S_", "S0"),            # SYN, no reply
    ("S_RA", "REJ"),         # SYN answered by RST
    ("S_SA", "S1"),          # handshake, nothing closed
    ("FSPA_FSPA", "SF"),     # both closed
    ("FSRPA_FSPA", "RSTO"),  # originator reset an established connection
    ("SPA_FSRPA", "RSTR"),   # responder reset it
    ("FSPA_SPA", "S2"),      # only the originator closed
    ("SPA_FSPA", "S3"),      # only the responder closed
    ("PA_PA", "OTH"),        # mid-stream: no SYN either way
    ("S0", "S0"),            # already Zeek's
    ("REQ", "S0"),           # Argus' summary states over TCP
    ("CON", "S1"),
    ("FIN", "SF"),
    ("RST", None),           # says nothing of the outcome
])
def test_tcp_states(state, expected):
    # Nothing flagged right of the underscore: the destination sent nothing.
    counts = "2,200,200,2" if state.endswith("_") else "4,400,200,2"
    rows, _, rejected, _ = run(f"{HEADER}\n2019/04/04 16:24:47,1.0,tcp,1.1.1.1,1,   ->,2.2.2.2,80,{state},0,0,{counts},\n")
    assert not rejected
    assert rows[0]["conn_state"] == expected


def test_tab_separated_with_non_ip_records_and_a_second_header():
    lines = [
        HEADER.replace(",", "\t"),
        "2018/05/10 10:52:47.283479\t0.045010\tman\t0\t0\t\t0\t0\tSTA\t\t\t0\t0\t0\t0\t",
        "1970/01/01 01:00:08.156845\t3554.2\tarp\t10.0.2.15\t\t  who\t10.0.2.2\t\tCON\t\t\t22\t924\t462\t11\tflow=Background-ARP",
        "1970/01/01 01:00:09\t1.0\tudp\t10.0.2.15\t5353\t  <->\t10.0.2.3\t53\tCON\t0\t0\t2\t200\t80\t1\tflow=Background",
        # The columns of a second header (another ra run) take over: here without SrcPkts.
        "StartTime,Proto,SrcAddr,DstAddr,Dur,TotPkts,TotBytes,SrcBytes",
        "2019/01/01 00:00:00,tcp,1.1.1.1,2.2.2.2,0.5,3,180,120",
    ]
    rows, units, rejected, read = run("\n".join(lines) + "\n")
    assert [(r.position, r.reason) for r in rejected] == [
        (2, "Argus man record is not an IP flow"), (3, "Argus arp record is not an IP flow")]
    assert units + len(rejected) == read == 6
    assert (rows[0]["s_bytes"], rows[0]["s_port"]) == (120, 53)
    last = rows[1]
    assert (last["c_port"], last["c_pkt"], last["s_pkt"], last["s_bytes"], last["conn_state"]) == (
        None, None, None, 60, None)


def test_bad_lines_are_dead_letters_with_their_reason():
    lines = [
        "2019/04/04 16:24:47,1.0,tcp,1.1.1.1,1,->,2.2.2.2,80,S_,0,0,1,60,60,1,",  # before any header
        HEADER,
        "2019/04/04 16:24:47,1.0,tcp,1.1.1.1,1,->,2.2.2.2,80,S_,0,0,1,60,60",  # a field short
        "2019/13/04 16:24:47,1.0,tcp,1.1.1.1,1,->,2.2.2.2,80,S_,0,0,1,60,60,1,",  # month 13
        "2019/04/04 16:24:47,-1.0,tcp,1.1.1.1,1,->,2.2.2.2,80,S_,0,0,1,60,60,1,",
        "2019/04/04 16:24:47,1.0,tcp,1.1.1.1,1,->,2.2.2.2,80,S_,0,0,1,60,x,1,",
        "2019/04/04 16:24:47,1.0,tcp,1.1.1.1,1,->,2.2.2.2,80,S_,0,0,1,60,61,1,",  # more source bytes than total
        "2019/04/04 16:24:47,1.0,tcp,1.1.1.1,1,->,2.2.2.2,99999,S_,0,0,1,60,60,1,",
        "2019/04/04 16:24:47,1.0,tcp,1.1.1.1,0xZZ,->,2.2.2.2,80,S_,0,0,1,60,60,1,",
        "",
        "2019/04/04 16:24:47,1.0,tcp,1.1.1.1,1,->,2.2.2.2,80,S_,0,0,1,60,60,1," + "y" * 300,
    ]
    rows, units, rejected, read = run("\n".join(lines) + "\n", options={"max_line_bytes": 200})
    assert rows == []
    assert [(r.position, r.reason) for r in rejected] == [
        (1, "data line before any Argus header line"),
        (3, "expected 16 fields, as the Argus header says"),
        (4, "StartTime is neither YYYY/MM/DD hh:mm:ss[.ffffff] nor epoch seconds"),
        (5, "Dur is not a non-negative number of seconds"),
        (6, "SrcBytes is not a non-negative integer"),
        (7, "SrcBytes or SrcPkts exceeds its total"),
        (8, "Dport is above 65535"),
        (9, "Sport is neither a decimal nor a 0x hexadecimal port"),
        (11, "line longer than 200 bytes: skipped to its end"),
    ]
    assert units + len(rejected) == read == 11


def test_sniffed_by_its_header_and_not_other_csv():
    assert formats.identify("x.csv", HEADER.encode() + b"\n") == ("argus", "binetflow")
    assert formats.identify("x.csv", HEADER.replace(",", "\t").encode() + b"\n") == ("argus", "binetflow")
    assert formats.identify("x.csv", b"date,l_ipn,r_asn,f\n2006-07-01,0,701,1\n") is None


def independent_rows(path):
    """The file read with Python's csv module and datetime/Decimal, one dict per data row (position, fields)."""
    text = path.read_text()
    delimiter = "\t" if "\t" in text.split("\n", 1)[0] else ","
    out = []
    for number, record in enumerate(csv.DictReader(io.StringIO(text), delimiter=delimiter), start=2):
        out.append((number, {key: (value or "").strip() for key, value in record.items()}))
    return out


def expected_row(record):
    start = datetime.strptime(record["StartTime"], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=UTC)
    tot_pkts, src_pkts = int(record["TotPkts"]), int(record["SrcPkts"])
    return {
        "c_ip": record["SrcAddr"], "s_ip": record["DstAddr"], "proto": record["Proto"],
        "c_port": int(record["Sport"], 0) if record["Sport"] else None,
        "s_port": int(record["Dport"], 0) if record["Dport"] else None,
        "c_pkt": src_pkts, "s_pkt": tot_pkts - src_pkts,
        "c_bytes": int(record["SrcBytes"]), "s_bytes": int(record["TotBytes"]) - int(record["SrcBytes"]),
        "time_start": start,
        "time_end": start + timedelta(microseconds=int(Decimal(record["Dur"]) * 1_000_000)),
    }


# The states the three files hold most, each worked by hand (see test_tcp_states for the rules).
REAL_STATES = {("tcp", "FSPA_FSPA"): "SF", ("tcp", "FSRPA_FSPA"): "RSTO", ("tcp", "FSPA_FSRPA"): "RSTR",
               ("tcp", "SRPA_SPA"): "RSTO", ("tcp", "SPA_SRPA"): "RSTR", ("tcp", "S_"): "S0", ("tcp", "S0"): "S0",
               ("tcp", "SR_SA"): "RSTO", ("icmp", "ECO"): "OTH", ("icmp", "URP"): "OTH"}


@pytest.mark.parametrize("name, flows, rejected_protocols", [
    ("test11-portscan.binetflow", 66, set()),
    ("test2-malicious.binetflow", 6751, set()),
    ("test5-mixed.binetflow", 296, {"man", "arp", "llc"}),
])
def test_every_row_of_the_real_files(name, flows, rejected_protocols):
    path = shared_data(f"labelled/argus/{name}")
    items = list(formats.parse_paths([str(path)], "named_flows"))
    rows = pa.Table.from_batches([i.records for i in items if isinstance(i, Batch)]).to_pylist()
    rejected = {r.position: r for r in items if isinstance(r, Rejected)}
    reference = independent_rows(path)
    assert len(rows) == flows and len(rows) + len(rejected) == len(reference)
    by_position = {row["source_pos"]: row for row in rows}
    states = 0
    for number, record in reference:
        if record["Proto"] in rejected_protocols:
            assert rejected[number].reason == f"Argus {record['Proto']} record is not an IP flow"
            continue
        row = by_position[number]
        assert {key: row[key] for key in expected_row(record)} == expected_row(record), number
        if record["Proto"] == "udp":
            assert row["conn_state"] == ("SF" if row["s_pkt"] else "S0")
        elif (record["Proto"], record["State"]) in REAL_STATES:
            assert row["conn_state"] == REAL_STATES[record["Proto"], record["State"]], number
            states += 1
        assert row["source_tool"] == "argus"
    assert states > 0


def test_a_header_without_a_required_column_rejects_its_rows():
    rows, units, rejected, read = run("StartTime,Proto,SrcAddr,DstAddr,Dur\n2019/01/01 00:00:00,tcp,1.1.1.1,2.2.2.2,1\n")
    assert rows == [] and units == 1 and read == 2
    assert [(r.position, r.reason) for r in rejected] == [(2, "Argus header lacks the column TotPkts")]
