"""Honest counts, damage that loses little, validated records and bounded cost on hostile input.

Expected values come from other tools (`wc -l`, `grep -c`, `zcat`), from hand-worked lines, or
from the size of what the test generated itself.
"""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from beamlytics.parsers import bind, formats, squid
from beamlytics.parsers.addresses import canonical_address, normalise_addresses
from beamlytics.parsers.base import Batch, Read, Rejected
from beamlytics.parsers.limits import DecompressionLimitError, RatioLimitedStream
from beamlytics.pipelines import cli
from tests.conftest import shared_data

UTC = timezone.utc
SQUID_LINE = "1157689312.049   5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 badeyek DIRECT/209.73.177.115 -"


def items_of(paths, table, **options) -> tuple[list[dict], list[Rejected], int, int]:
    """Rows, dead letters, units accounted for, and what the readers said they delivered."""
    rows, dead, units, read = [], [], 0, 0
    for item in formats.parse_paths([str(path) for path in paths], table, options=options):
        if isinstance(item, Batch):
            rows += item.records.to_pylist()
            units += item.units
        elif isinstance(item, Rejected):
            dead.append(item)
            units += item.units
        elif isinstance(item, Read):
            read += item.units
    return rows, dead, units, read


def tool_count(*command: str) -> int:
    """A count printed by a command-line tool (grep -c exits 1 when it counts nothing)."""
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    return int(result.stdout.split()[0])


def lines_by_wc(path: Path) -> int:
    data = path.read_bytes()
    return tool_count("wc", "-l", str(path)) + (1 if data and not data.endswith(b"\n") else 0)


# ----------------------------------------------------------------------------- counts


@pytest.mark.parametrize("relative, table, header_lines_are_units", [
    ("logs/squid/beats_access1.log", "http", True),
    ("logs/squid/more/real_world_lines_from_docs.log", "http", True),
    ("logs/bind/bind_query_log_lines_from_public_sources.log", "dns", True),
    ("logs/tstat/dazn_1mbit_exp0/log_tcp_complete", "named_flows", True),
    ("logs/tstat/dazn_1mbit_exp0/log_dns_complete", "dns", True),
    ("labelled/argus/test5-mixed.binetflow", "named_flows", True),
    ("logs/suricata/test6-malicious.eve.json", "named_flows", True),
    ("logs/zeek/zat_tsv/dns.log", "dns", False),
    ("logs/zeek/zat_tsv/http.log", "http", False),
    ("logs/zeek/zat_json/http.log", "http", False),
])
def test_read_is_the_line_count_of_wc_minus_zeek_header_lines(relative, table, header_lines_are_units):
    path = shared_data(relative)
    expected = lines_by_wc(path)
    if not header_lines_are_units:  # Zeek's `#` lines are no records; the others count every line
        expected -= tool_count("grep", "-c", "^#", str(path))
    _, _, units, read = items_of([path], table)
    assert read == expected and units == read


def test_summary_reports_read_against_wc_for_a_folder_of_real_logs(tmp_path):
    folder = shared_data("logs/squid")
    files = sorted(path for path in folder.rglob("*.log"))
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "http", "--output", str(out), str(folder)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    recognised = [path for path in files if formats.identify(path.name, path.read_bytes()[:65536])]
    assert summary["read"] == sum(lines_by_wc(path) for path in recognised)
    assert summary["unaccounted"] == 0 and summary["read"] == summary["parsed"] + summary["rejected"]
    assert sum(summary["rejected_by_reason"].values()) == summary["rejected"]


def test_a_truncated_gzip_keeps_every_line_zcat_reads(tmp_path):
    path = shared_data("logs/zeek/zat_tsv/http.log.corrupt.gz")
    recovered = subprocess.run(["zcat", str(path)], capture_output=True, check=False).stdout
    whole = recovered[: recovered.rfind(b"\n") + 1].splitlines()
    rows, dead, units, read = items_of([path], "http")
    assert len(rows) == sum(1 for line in whole if not line.startswith(b"#")) > 0
    [broken] = dead
    assert broken.position == len(whole) + 1 and broken.units == 0 and "unreadable" in broken.reason
    assert units == read == len(rows)


# ----------------------------------------------------------------------------- validation


def zeek_json_dns(ts, orig="10.0.0.1", resp="10.0.0.53", **extra) -> str:
    record = {"ts": ts, "uid": "Cabc", "id.orig_h": orig, "id.orig_p": 5000, "id.resp_h": resp, "id.resp_p": 53,
              "proto": "udp", "trans_id": 7, "query": "a.example", "qtype_name": "A", **extra}
    return json.dumps(record) + "\n"


def test_times_outside_the_range_and_bad_addresses_are_rejected_with_their_line(tmp_path):
    log = tmp_path / "dns.log"
    log.write_text(zeek_json_dns(1_700_000_000.5) + zeek_json_dns(253402300800) + zeek_json_dns(-86400.0)
                   + zeek_json_dns(1_700_000_001, orig="not-an-ip") + zeek_json_dns(1_700_000_002, resp="::ffff:102:304")
                   + zeek_json_dns(1_700_000_003, orig="::FFFF:10.1.2.3"))
    rows, dead, units, read = items_of([log], "dns")
    assert [row["source_pos"] for row in rows] == [1, 5, 6] and units == read == 6
    assert rows[0]["uid"] == "Cabc"
    assert rows[1]["s_ip"] == "::ffff:1.2.3.4" and rows[2]["c_ip"] == "::ffff:10.1.2.3"
    assert [(item.position, item.units) for item in dead] == [(2, 1), (3, 1), (4, 1)]
    assert "outside the accepted time range 1970-01-01..2100-01-01" in dead[0].reason
    assert "outside the accepted time range" in dead[1].reason
    assert dead[2].reason == "c_ip is not an IP address: 'not-an-ip'"
    widened, dead_widened, _, _ = items_of([log], "dns", time_range="1960..2100")
    assert [row["source_pos"] for row in widened] == [1, 3, 5, 6] and len(dead_widened) == 2


def test_squid_client_hostnames_are_kept_but_not_other_junk_addresses(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(SQUID_LINE + "\n" + SQUID_LINE.replace("10.105.21.199", "desk-12.corp.example") + "\n"
                   + SQUID_LINE.replace("10.105.21.199", "10.0.0.300") + "\n")
    rows, dead, _, _ = items_of([log], "http")
    assert [row["c_ip"] for row in rows] == ["10.105.21.199", "desk-12.corp.example"]
    [bad] = dead
    assert bad.position == 3 and bad.reason.startswith("c_ip is not an IP address")


def test_addresses_are_written_one_way_whatever_the_python():
    values = pa.array(["10.0.0.1", "::ffff:1.2.3.4", "::FFFF:102:304", "2001:DB8:0:0::1", "fe80::1%eth0",
                       None, "not-an-ip", "010.0.0.1", "1.2.3.256", ""])
    normalised, invalid = normalise_addresses(values)
    assert normalised.to_pylist()[:6] == ["10.0.0.1", "::ffff:1.2.3.4", "::ffff:1.2.3.4", "2001:db8::1",
                                          "fe80::1%eth0", None]
    assert invalid.to_pylist() == [False] * 6 + [True] * 4
    assert canonical_address("::ffff:0a00:0001") == "::ffff:10.0.0.1"


def test_bind_year_and_timezone_place_syslog_times(tmp_path):
    line = b"Feb 25 11:09:43.651 queries: info: client 10.0.0.3#1035: query: 3.example.com.nl IN A\n"
    iso_local = b"2024-07-01T12:00:00 client 10.0.0.9#53000: query: a.example IN A -T (10.0.0.1)\n"
    iso_utc = b"2024-07-01T12:00:00Z client 10.0.0.9#53000: query: a.example IN A -T (10.0.0.1)\n"
    options = {"year": 2024, "timezone": "Europe/Paris"}
    items = list(bind.parse("q.log", io.BytesIO(line + iso_local + iso_utc), "queries", "dns", options=options))
    times = [row["req_time"] for item in items if isinstance(item, Batch) for row in item.records.to_pylist()]
    # Paris is UTC+1 in February and UTC+2 in July; a time with `Z` ignores the option
    assert times == [datetime(2024, 2, 25, 10, 9, 43, 651000, UTC), datetime(2024, 7, 1, 10, 0, tzinfo=UTC),
                     datetime(2024, 7, 1, 12, 0, tzinfo=UTC)]


def test_cli_counts_records_left_without_time_and_refuses_bad_options(tmp_path, capsys):
    log = tmp_path / "named_queries.log"
    log.write_bytes(b"Feb 25 11:09:43.651 queries: info: client 10.0.0.3#1035: query: a.example IN A\n" * 3)
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "dns", "--output", str(out), str(log)]) == 0
    assert json.loads((out / "summary.json").read_text())["records_without_time"] == 3
    assert cli.main(["parse", "--table", "dns", "--output", str(out), "--overwrite", "--year", "2024", str(log)]) == 0
    assert json.loads((out / "summary.json").read_text())["records_without_time"] == 0
    capsys.readouterr()
    for flags, message in ((["--timezone", "Mars/Olympus"], "unknown time zone"),
                           (["--time-range", "2100..1970"], "is empty"),
                           (["--max-line-bytes", "0"], "--max-line-bytes")):
        assert cli.main(["parse", "--table", "dns", "--output", str(out), *flags, str(log)]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and message in errors[0]


# ----------------------------------------------------------------------------- columns


def test_squid_user_and_cache_result():
    combined = ('192.168.0.1 - alice [10/Oct/2000:13:55:36 -0700] "GET http://e.com/a HTTP/1.0" 200 2326 "r" "ua"'
                " TCP_REFRESH_HIT:HIER_DIRECT")
    plain_combined = '192.168.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET http://e.com/a HTTP/1.0" 200 2326'
    data = "\n".join([SQUID_LINE, SQUID_LINE.replace(" badeyek ", " - "), combined, plain_combined]).encode()
    items = list(squid.parse("access.log", io.BytesIO(data), "access", "http"))
    rows = [row for item in items if isinstance(item, Batch) for row in item.records.to_pylist()]
    assert [(row["user"], row["cache_result"]) for row in rows] == [
        ("badeyek", "TCP_MISS"), (None, "TCP_MISS"), ("alice", "TCP_REFRESH_HIT"), (None, None)]


@pytest.mark.parametrize("name", ["zeekjson_dns.log", "dns_20240501.json", "events.json"])
def test_zeek_json_without_path_is_recognised_by_name_or_fields(name):
    assert formats.identify(name, zeek_json_dns(1_700_000_000).encode()) == ("zeek", "dns")


def test_zeek_json_http_without_path_is_recognised_by_its_fields():
    record = {"ts": 1.0, "uid": "C1", "id.orig_h": "10.0.0.1", "trans_depth": 1, "method": "GET", "host": "h"}
    assert formats.identify("events.json", json.dumps(record).encode() + b"\n") == ("zeek", "http")
    sip = {**record, "call_id": "x"}
    assert formats.identify("events.json", json.dumps(sip).encode() + b"\n") == ("zeek", "events")


# ----------------------------------------------------------------------------- changed files


def test_a_file_swapped_for_another_kind_after_planning_is_dead_lettered(tmp_path):
    log = tmp_path / "dns.log"
    log.write_text(zeek_json_dns(1_700_000_000) * 3)
    opener = lambda path: open(path, "rb")  # noqa: E731
    plan = formats.plan([str(log)], "dns", "auto", opener)
    log.write_bytes(shared_data("logs/zeek/zat_json/http.log").read_bytes())
    items = list(formats.parse_source(plan.sources[0], "dns", opener))
    assert not any(isinstance(item, Batch) and item.records.num_rows for item in items)
    [changed] = [item for item in items if isinstance(item, Rejected)]
    assert changed.units == 0 and "planned as a zeek dns log: now a zeek http log" in changed.reason


# ----------------------------------------------------------------------------- hostile input


def test_a_line_too_long_is_rejected_and_reading_resumes(tmp_path):
    junk = b"x" * (3 << 20)
    squid_log = tmp_path / "access.log"
    squid_log.write_bytes(f"{SQUID_LINE}\n".encode() + junk + f"\n{SQUID_LINE}\n".encode() + junk)
    rows, dead, units, read = items_of([squid_log], "http")
    assert [row["source_pos"] for row in rows] == [1, 3] and units == read == 4
    assert [(item.position, item.units) for item in dead] == [(2, 1), (4, 1)]
    assert all(item.reason == "line longer than 1048576 bytes: skipped to its end" for item in dead)

    zeek_log = tmp_path / "dns.log"
    zeek_log.write_bytes(zeek_json_dns(1_700_000_000).encode() + junk + b"\n" + zeek_json_dns(1_700_000_001).encode())
    rows, dead, units, read = items_of([zeek_log], "dns")
    assert [row["source_pos"] for row in rows] == [1, 3] and units == read == 3
    assert [(item.position, item.units) for item in dead] == [(2, 1)]
    small_cap, dead_small, _, _ = items_of([squid_log], "http", max_line_bytes=50)
    assert small_cap == [] and [item.position for item in dead_small] == [1, 2, 3, 4]


def test_a_nul_byte_in_the_head_costs_one_line_not_the_file(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(f"{SQUID_LINE}\n".encode() + b"\x00garbage\n" + f"{SQUID_LINE}\n".encode() * 5)
    rows, dead, _, read = items_of([log], "http")
    assert len(rows) == 6 and [item.position for item in dead] == [2] and read == 7


def test_dead_letters_beyond_the_per_reason_limit_are_counted_not_listed(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(f"{SQUID_LINE}\n".encode() * 60 + b"not a squid line\n" * 2500)
    rows, dead, units, read = items_of([log], "http")
    assert len(rows) == 60 and units == read == 2560
    listed, [rest] = dead[:-1], dead[-1:]
    assert len(listed) == 1000 and [item.position for item in listed] == list(range(61, 1061))
    assert rest.units == 1500 and rest.position == 1061 and "1500 more dead letters" in rest.reason


def test_a_decompression_bomb_is_cut_off_with_a_clear_reason():
    bomb = gzip.compress(b"a\n" * (4 << 20), compresslevel=9, mtime=0)  # 8 MiB from ~8 KiB
    raw = io.BufferedReader(io.BytesIO(bomb))
    limited = RatioLimitedStream(gzip.GzipFile(fileobj=raw), raw, max_ratio=100, free_bytes=1 << 20)
    with pytest.raises(DecompressionLimitError, match="decompression bomb"):
        while limited.read1(65536):
            pass
    raw = io.BufferedReader(io.BytesIO(bomb))
    generous = RatioLimitedStream(gzip.GzipFile(fileobj=raw), raw, max_ratio=10_000, free_bytes=1 << 20)
    assert len(generous.read()) == 8 << 20


def test_a_gzip_bomb_file_is_cut_off_after_its_good_lines(tmp_path):
    bomb = tmp_path / "access.log.gz"
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    head = f"{SQUID_LINE}\n".encode() * 10
    bomb.write_bytes(compressor.compress(head) + compressor.compress(bytes(80 << 20)) + compressor.flush())
    rows, dead, units, read = items_of([bomb], "http")
    assert len(rows) == 10 and units == read == 11  # the NULs are one line, too long, then the stream is cut
    assert [(item.position, item.units) for item in dead] == [(11, 1), (12, 0)]
    assert "decompression bomb" in dead[1].reason


def test_the_summary_works_whether_or_not_the_capture_reader_counts_what_it_read(tmp_path):
    capture = shared_data("pcaps/dns/dsc_dnso1tcp.pcap")  # 212 packets, says capinfos (SOURCES.md)
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "dns", "--output", str(out), str(capture)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read"] == summary["parsed"] + summary["rejected"] == 212 and summary["unaccounted"] == 0
    assert summary["records"] > 0


def test_a_one_line_log_without_newline_is_still_recognised():
    assert formats.identify("access.log", SQUID_LINE.encode()) == ("squid", "access")
    bind_line = b"2024-03-01T10:00:00.500Z client 10.0.0.9#53000: query: a.example IN A -T (10.0.0.1)"
    assert formats.identify("named.log", bind_line) == ("bind", "queries")
    # a head cut inside its last line: that line is not held against the file
    assert formats.identify("access.log", (SQUID_LINE + "\n" + SQUID_LINE[:20]).encode()) == ("squid", "access")
