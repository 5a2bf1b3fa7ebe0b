"""The attack benchmark's embedding and metrics, against hand-worked cases and the raw files."""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import ipaddress
import json
import math
import struct
import subprocess

import pandas as pd
import pyarrow as pa
import pytest

from beamlytics import schemas
from benchmarks import attack_metrics, embed
from benchmarks.bench_attacks import CASES
from tests.conftest import provisioned_tool, shared_data

T0 = dt.datetime(2018, 3, 24, 17, 0, tzinfo=dt.timezone.utc)


def _dns(rows: list[dict]) -> pa.Table:
    base = {"proto": "udp", "query": "example.org", "req_class": "IN", "req_type": "A", "resp_code": "NOERROR",
            "flags": "RD RA", "uid": "C1", "source_tool": "zeek", "source_file": "x", "source_pos": 1}
    return pa.Table.from_pylist([{**base, **row} for row in rows], schema=schemas.DNS)


def test_shift_times_moves_every_time_column_and_keeps_unset_ones():
    table = _dns([
        {"c_ip": "a", "s_ip": "r", "req_time": T0, "resp_time": T0 + dt.timedelta(milliseconds=3)},
        {"c_ip": "a", "s_ip": "r", "req_time": T0 + dt.timedelta(seconds=5), "resp_time": None},
    ])
    moved = embed.shift_times(table, "dns", 90_000_000)
    assert moved["req_time"].to_pylist() == [T0 + dt.timedelta(seconds=90), T0 + dt.timedelta(seconds=95)]
    assert moved["resp_time"].to_pylist() == [T0 + dt.timedelta(seconds=90, milliseconds=3), None]


def test_address_map_renames_attacker_and_numbers_the_others_in_sorted_order():
    table = _dns([{"c_ip": "10.0.0.9", "s_ip": "8.8.8.8"}, {"c_ip": "10.0.0.9", "s_ip": "1.1.1.1"},
                  {"c_ip": "10.0.0.7", "s_ip": "10.0.0.9"}])
    assert embed.address_map(table, "10.0.0.9", "10.47.2.100") == {
        "10.0.0.9": "10.47.2.100", "1.1.1.1": "198.18.0.1", "10.0.0.7": "198.18.0.2", "8.8.8.8": "198.18.0.3"}


def test_place_attack_starts_at_the_given_time_on_the_target():
    table = _dns([{"c_ip": "10.0.0.9", "s_ip": "8.8.8.8", "req_time": T0 + dt.timedelta(seconds=s)} for s in (7, 3)])
    start = int(dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    placed = embed.place_attack(table, "dns", "10.0.0.9", "10.1.1.1", start)
    assert placed["req_time"].to_pylist() == [dt.datetime(2018, 1, 1, 0, 0, 4, tzinfo=dt.timezone.utc),
                                              dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc)]
    assert placed["c_ip"].to_pylist() == ["10.1.1.1", "10.1.1.1"]
    assert placed["s_ip"].to_pylist() == ["198.18.0.1", "198.18.0.1"]


def test_new_address_is_one_the_background_never_uses():
    table = _dns([{"c_ip": "10.250.0.1", "s_ip": "10.250.0.2"}, {"c_ip": "10.250.0.4", "s_ip": "r"}])
    assert embed.new_address(table) == "10.250.0.3"


def test_clean_history_host_counts_windows_before_the_attack_and_skips_alarmed_hosts():
    minute = dt.timedelta(minutes=1)
    table = _dns([
        *({"c_ip": "busy", "s_ip": "r", "req_time": T0 + i * minute} for i in range(4)),
        *({"c_ip": "steady", "s_ip": "r", "req_time": T0 + i * minute} for i in range(3)),
        {"c_ip": "steady", "s_ip": "r", "req_time": T0 + dt.timedelta(seconds=30)},  # same window: no extra
        *({"c_ip": "late", "s_ip": "r", "req_time": T0 + (10 + i) * minute} for i in range(9)),
        {"c_ip": "also", "s_ip": "r", "req_time": T0}, {"c_ip": "also", "s_ip": "r", "req_time": T0 + 2 * minute},
        {"c_ip": "alsp", "s_ip": "r", "req_time": T0}, {"c_ip": "alsp", "s_ip": "r", "req_time": T0 + 2 * minute},
    ])
    before = int((T0 + 10 * minute).timestamp() * 1e6)
    assert embed.clean_history_host(table, "dns", before, 60_000_000, alarmed={"busy"}) == "steady"
    assert embed.clean_history_host(table, "dns", before, 60_000_000, alarmed={"busy", "steady"}) == "also"


def test_dns_round_trips_through_zeek_json(tmp_path):
    table = _dns([
        {"c_ip": "10.0.0.1", "c_port": 5353, "s_ip": "10.0.0.2", "s_port": 53, "trans_id": 7,
         "req_time": T0, "resp_time": T0 + dt.timedelta(microseconds=870), "answers": ["1.2.3.4"],
         "answer_ttls": [300], "resp_code": "NXDOMAIN", "req_type": "TXT", "flags": "AA RD"},
        {"c_ip": "10.0.0.1", "c_port": 5354, "s_ip": "10.0.0.2", "s_port": 53, "trans_id": 8,
         "req_time": T0 + dt.timedelta(seconds=1), "resp_time": None, "resp_code": None, "flags": None},
    ])
    path = embed.write_zeek(table, "dns", str(tmp_path))
    back = embed.parse_table([path], "dns")
    assert back.rejected == 0
    keep = [name for name in schemas.DNS.names if name not in ("source_file", "source_pos", "source_tool")]
    assert back.table.select(keep).to_pylist() == table.select(keep).to_pylist()


def test_zeek_conn_log_keeps_its_records_and_gaps_when_embedded(tmp_path):
    source = shared_data("labelled/portscans/vertical_conn.log")
    raw = [json.loads(line) for line in open(source, encoding="utf-8") if line.strip()]
    attack = embed.parse_table([str(source)], "named_flows").table
    start = int(dt.datetime(2018, 3, 24, 17, 20, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    placed = embed.place_attack(attack, "named_flows", "192.168.1.9", "10.47.2.100", start)
    path = embed.write_zeek(placed, "named_flows", str(tmp_path))
    back = embed.parse_table([path], "named_flows").table

    assert back.num_rows == len(raw) == sum(1 for _ in open(path, encoding="utf-8"))
    offset = start / 1e6 - min(record["ts"] for record in raw)
    expected = sorted(round(record["ts"] + offset, 6) for record in raw)
    got = sorted(value.timestamp() for value in back["time_start"].to_pylist())
    assert got == pytest.approx(expected, abs=1e-6)
    assert set(back["c_ip"].to_pylist()) == {"10.47.2.100"}
    victims = {record["id.resp_h"] for record in raw}
    assert len(set(back["s_ip"].to_pylist())) == len(victims)
    assert sorted(back["s_port"].to_pylist()) == sorted(record["id.resp_p"] for record in raw)


# --- metrics --------------------------------------------------------------------------------


def _windows(rows: list[tuple[str, int]]) -> pd.DataFrame:
    starts = [pd.Timestamp(T0) + pd.Timedelta(minutes=minute) for _, minute in rows]
    return pd.DataFrame({"key": [key for key, _ in rows], "window_start": starts,
                         "window_end": [start + pd.Timedelta(minutes=1) for start in starts]})


def test_rejudged_verdicts_at_other_alarm_rates_by_hand():
    verdicts = _windows([("a", 0), ("b", 0), ("c", 0), ("d", 0), ("e", 0)])
    verdicts["p_value"] = [0.0005, 0.003, math.nan, 0.5, 0.0001]  # c: unjudged
    verdicts["hunt_score"] = [math.nan, math.nan, 0.5, 0.25, math.nan]
    verdicts["allowed"] = [False, False, False, False, True]  # e: the allow-list's
    strict = attack_metrics.rejudged(verdicts, 0.001)
    # a by p; c by its hunt (0.5: the alarm level, scored on the threshold, 3); b over the rate; d's hunt too weak.
    assert strict["key"].tolist() == ["a", "c"] and strict["score"].tolist() == pytest.approx([3.30103, 3.0], 1e-5)
    loose = attack_metrics.rejudged(verdicts, 0.01)
    # At 0.01 b alarms too; the hunt level moves with the threshold: c at 2, d (0.25) at 1 (not an alarm).
    assert loose["key"].tolist() == ["a", "b", "c"] and loose["score"].tolist() == pytest.approx([3.30103, 2.52288, 2.0],
                                                                                                 1e-5)


def test_case_result_hand_worked():
    # 10 endpoint-windows: the attacker "x" in minutes 0-4, attacking in minutes 3-4 (2 windows),
    # benign "b" and "c"; alarms on x@3 (caught), x@1 (benign: before the attack), b@2, c@0.
    features = _windows([("x", 0), ("x", 1), ("x", 2), ("x", 3), ("x", 4), ("b", 0), ("b", 2), ("b", 3),
                         ("c", 0), ("c", 4)])
    alarms = _windows([("x", 3), ("x", 1), ("b", 2), ("c", 0)])
    alarms["score"] = [4.0, 1.0, 9.0, 3.0]
    start, end = (pd.Timestamp(T0) + pd.Timedelta(seconds=seconds) for seconds in (190, 290))
    result = attack_metrics.case_result(features, alarms, alarms, {"x"}, start, end)
    assert (result.flagged, result.windows_caught, result.attacker_windows) == (True, 1, 2)
    assert result.rank == 2  # b's best 9 beats x's best 4, which beats c's 3
    assert (result.benign_alarms, result.benign_windows, result.benign_judged) == (3, 8, 8)
    assert result.alarms_per_1000 == pytest.approx(375.0)
    # The verdict left b@3 and c@4 unjudged (say, under --min-records) and x@4: 6 of the 8 benign windows judged.
    verdicts = _windows([("x", 0), ("x", 1), ("x", 2), ("x", 3), ("x", 4), ("b", 0), ("b", 2), ("b", 3),
                         ("c", 0), ("c", 4)])
    verdicts["status"] = ["normal", "alarm", "normal", "alarm", "unjudged", "normal", "alarm", "unjudged", "alarm",
                          "unjudged"]
    judged = attack_metrics.case_result(features, alarms, alarms, {"x"}, start, end,
                                        attack_metrics.judged_windows(verdicts))
    assert (judged.benign_alarms, judged.benign_windows, judged.benign_judged) == (3, 8, 6)


def test_closest_attacker_window_names_the_smallest_p_window_and_its_features():
    # x's windows at minutes 0-3, the attack in minutes 1-2; x@0 (p 0.001) is before it, x@3 unjudged.
    verdicts = _windows([("x", 0), ("x", 1), ("x", 2), ("x", 3), ("b", 1)])
    verdicts["status"] = ["normal", "normal", "normal", "unjudged", "alarm"]
    verdicts["records"] = [9, 30, 67, 2, 5]
    verdicts["p_value"] = [0.001, 0.2, 0.03, math.nan, 0.0001]
    item = {"fired": False, "expected": 1.0, "threshold": None, "judged_by": "population"}
    verdicts["evidence"] = [[], [], [{**item, "feature": "records", "value": 67.0, "p_value": 0.021},
                                     {**item, "feature": "distinct_peers", "value": 1.0, "p_value": 1.0},
                                     {**item, "feature": "failed_ratio", "value": math.nan, "p_value": None},
                                     {**item, "feature": "distinct_ports", "value": 2.0, "p_value": 0.0143}], [], []]
    start, end = pd.Timestamp(T0) + pd.Timedelta(seconds=70), pd.Timestamp(T0) + pd.Timedelta(seconds=170)
    line = attack_metrics.closest_attacker_window(verdicts, {"x"}, start, end)
    minute = f"{pd.Timestamp(T0) + pd.Timedelta(minutes=2):%H:%M}"
    assert line == (f"x window {minute}, 67 records, combined p 0.03: distinct_ports 2 (p 0.0143), "
                    "records 67 (p 0.021), distinct_peers 1 (p 1)")
    assert attack_metrics.closest_attacker_window(verdicts, {"x"}, end + pd.Timedelta(minutes=1),
                                                  end + pd.Timedelta(minutes=1)) is None  # only x@3: unjudged


def test_case_result_when_the_attacker_is_never_alarmed():
    features = _windows([("x", 0), ("b", 0)])
    alarms = _windows([("b", 0)])
    alarms["score"] = [1.0]
    result = attack_metrics.case_result(features, alarms, alarms, {"x"}, pd.Timestamp(T0), pd.Timestamp(T0))
    assert (result.flagged, result.windows_caught, result.attacker_windows, result.rank) == (False, 0, 1, None)
    assert result.alarms_per_1000 == pytest.approx(1000.0)


def test_isolation_forest_ranks_an_obvious_outlier_first():
    pytest.importorskip("sklearn")
    features = _windows([(f"h{i}", 0) for i in range(40)] + [("odd", 0)])
    features["records"] = [10 + i % 3 for i in range(40)] + [900]
    features["distinct_names"] = [5.0 + i % 2 for i in range(40)] + [850.0]
    alarms, scored = attack_metrics.isolation_forest_scores(features)
    assert "odd" in set(alarms["key"])
    assert attack_metrics.host_rank(scored, {"odd"}) == 1
    again, _ = attack_metrics.isolation_forest_scores(features)
    assert again.equals(alarms)


def test_fields_like_unsets_what_the_background_never_sets():
    background = _dns([{"c_ip": "b", "s_ip": "r", "req_time": T0, "trans_id": None}])
    attack = _dns([{"c_ip": "a", "s_ip": "r", "req_time": T0, "trans_id": 5},
                   {"c_ip": "a", "s_ip": "r", "req_time": T0, "trans_id": 6}])
    like = embed.fields_like(attack, background)
    assert like["trans_id"].to_pylist() == [None, None]
    assert like["c_ip"].to_pylist() == ["a", "a"] and like["query"].to_pylist() == ["example.org"] * 2


def test_fields_like_drops_flow_lengths_the_background_does_not_have():
    def flows(rows):
        return pa.Table.from_pylist([{"c_ip": "h", "s_ip": "r", "proto": "tcp", "source_tool": "zeek", "source_file": "x",
                                      "source_pos": 1, **row} for row in rows], schema=schemas.NAMED_FLOWS)
    background = flows([{"time_start": T0, "time_end": T0}])
    attack = flows([{"time_start": T0, "time_end": T0 + dt.timedelta(seconds=64)}])
    assert embed.fields_like(attack, background)["time_end"].to_pylist() == [T0]
    with_lengths = flows([{"time_start": T0, "time_end": T0 + dt.timedelta(seconds=1)}])
    assert embed.fields_like(attack, with_lengths)["time_end"].to_pylist() == [T0 + dt.timedelta(seconds=64)]


def test_top_share_takes_the_highest_scores_with_ties_cut_by_key_by_hand():
    scored = pd.DataFrame({"key": ["d", "a", "c", "b", "e"], "window_start": [0, 0, 0, 0, 0],
                           "score": [0.9, 0.5, 0.5, 0.5, 0.1]})
    # 40 % of 5 windows = 2: the best (d) and, of the three tied at 0.5, the smallest key (a).
    assert attack_metrics.top_share(scored, 0.4)["key"].tolist() == ["d", "a"]
    assert attack_metrics.top_share(scored, 0.001)["key"].tolist() == ["d"]  # at least one


@pytest.mark.parametrize("case_name", ["argus_vertical_scan", "argus_malware_host"])
def test_argus_cases_attacker_is_the_capture_host_and_every_flow_is_embedded(case_name):
    """Read independently (csv): the case's attacker is the host of (nearly) every flow, and the embedded
    table keeps every raw flow, the attacker renamed and its flows moved by one offset."""
    case = next(c for c in CASES if c.name == case_name)
    with open(shared_data(case.path), newline="") as raw:
        records = list(csv.DictReader(raw))
    involved = sum(case.attacker in (r["SrcAddr"], r["DstAddr"]) for r in records)
    assert involved == len(records)
    attack = embed.parse_table([str(shared_data(case.path))], "named_flows").table
    assert attack.num_rows == len(records)
    start = int(T0.timestamp() * 1e6)
    placed = embed.place_attack(attack, "named_flows", case.attacker, "10.250.0.1", start)
    originated = sum(r["SrcAddr"] == case.attacker for r in records)
    assert placed["c_ip"].to_pylist().count("10.250.0.1") == originated
    first = min(dt.datetime.strptime(r["StartTime"], "%Y/%m/%d %H:%M:%S.%f") for r in records)
    moved = [T0 + (dt.datetime.strptime(r["StartTime"], "%Y/%m/%d %H:%M:%S.%f") - first) for r in records]
    assert sorted(placed["time_start"].to_pylist()) == sorted(moved)


# --- the attacker's aliases -----------------------------------------------------------------


def test_case_result_counts_the_attackers_aliases_as_the_attacker_by_hand():
    # The attacker "x" (minutes 0-4) and its alias "x6" (minutes 3-4, its own key), attacking in minutes 3-4;
    # benign "b" and "c". Alarms: x6@4 (8), x@1 (1: before the attack), b@2 (9), b@3 (6), c@0 (3).
    features = _windows([("x", 0), ("x", 1), ("x", 2), ("x", 3), ("x", 4), ("x6", 3), ("x6", 4),
                         ("b", 0), ("b", 2), ("b", 3), ("c", 0), ("c", 4)])
    alarms = _windows([("x6", 4), ("x", 1), ("b", 2), ("b", 3), ("c", 0)])
    alarms["score"] = [8.0, 1.0, 9.0, 6.0, 3.0]
    start, end = (pd.Timestamp(T0) + pd.Timedelta(seconds=seconds) for seconds in (190, 290))
    both = attack_metrics.case_result(features, alarms, alarms, {"x", "x6"}, start, end)
    # Attack windows x@3, x@4, x6@3, x6@4; x6@4 caught; the set's best 8 is beaten by b's 9 only.
    assert (both.flagged, both.windows_caught, both.attacker_windows, both.rank) == (True, 1, 4, 2)
    assert (both.benign_windows, both.benign_alarms) == (8, 4)  # x@1, b@2, b@3, c@0
    # Without its alias the attacker is missed, x6 is a benign host and outranks it.
    alone = attack_metrics.case_result(features, alarms, alarms, {"x"}, start, end)
    assert (alone.flagged, alone.windows_caught, alone.attacker_windows, alone.rank) == (False, 0, 2, 4)
    assert (alone.benign_windows, alone.benign_alarms) == (10, 5)


def test_host_rank_of_a_set_is_its_best_key_against_every_key_outside_it():
    scored = pd.DataFrame({"key": ["a", "a", "a6", "b", "c", "d"], "window_start": [0, 1, 0, 0, 0, 0],
                           "score": [2.0, 3.0, 7.0, 7.0, 8.0, 1.0]})
    assert attack_metrics.host_rank(scored, {"a", "a6"}) == 2  # 7 (a6): c's 8 beats it, b's 7 ties
    assert attack_metrics.host_rank(scored, {"a"}) == 4  # 3: a6, b and c beat it
    assert attack_metrics.host_rank(scored, {"z", "d"}) == 5  # z unscored: d's 1 stands for the set
    assert attack_metrics.host_rank(scored, {"z"}) is None


def test_aliases_of_by_hand():
    host = {"10.0.0.5", "fe80::1", "172.17.0.1", "0.0.0.0", "::", "255.255.255.255", "224.0.0.251"}
    gateway = {"10.0.0.1", "8.8.8.8", "1.1.1.1", "9.9.9.9", "10.0.0.5"}  # 5 addresses: another host's too
    four = {"10.0.0.9", "10.0.0.10", "fe80::9", "2001:db8::9"}
    sources = {"aa": host, "gw": gateway, "four": four}
    # The host's MAC gives its own two; the gateway's, which also carries 10.0.0.5, gives none.
    assert embed.aliases_of(sources, "10.0.0.5") == ("172.17.0.1", "fe80::1")
    assert embed.aliases_of(sources, "8.8.8.8") == ()  # an attacker behind the gateway
    assert embed.aliases_of(sources, "10.0.0.9") == ("10.0.0.10", "2001:db8::9", "fe80::9")  # 4: still a host
    assert embed.aliases_of(sources, "0.0.0.0") == ()  # a shared address is no one's
    assert embed.aliases_of(sources, "192.0.2.77") == ()  # never sent


def _frame(src_mac: str, ethertype: int, body: bytes, tags: bytes = b"") -> bytes:
    return b"\xff" * 6 + bytes.fromhex(src_mac.replace(":", "")) + tags + struct.pack(">H", ethertype) + body


def _ipv4(src: str) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 17, 0, ipaddress.ip_address(src).packed,
                       ipaddress.ip_address("192.0.2.255").packed)


def _ipv6(src: str) -> bytes:
    return (struct.pack(">IHBB", 6 << 28, 0, 59, 1) + ipaddress.ip_address(src).packed
            + ipaddress.ip_address("ff02::1").packed)


def _pcap_file(path, frames: list[bytes], linktype: int = 1) -> str:
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for number, frame in enumerate(frames):
            out.write(struct.pack("<IIII", 1_700_000_000 + number, 0, len(frame), len(frame)) + frame)
    return str(path)


def test_sources_by_mac_reads_ethernet_vlan_and_both_ip_versions(tmp_path):
    a, b = "b8:27:eb:00:00:01", "a6:d1:8c:00:00:02"
    path = _pcap_file(tmp_path / "x.pcap", [
        _frame(a, 0x0800, _ipv4("192.168.2.16")),
        _frame(a, 0x86DD, _ipv6("fe80::ba27:ebff:fe00:1"), tags=struct.pack(">HH", 0x8100, 7)),
        _frame(a, 0x0806, bytes(28)),  # ARP: no IP source
        _frame(b, 0x0800, _ipv4("192.168.2.1")),
        _frame(b, 0x0800, _ipv4("8.8.8.8")),
        _frame(b, 0x0800, bytes(8)),  # cut short inside the IP header
        b"\x01\x02\x03",  # shorter than an Ethernet header
    ])
    assert embed.sources_by_mac(path) == {a: {"192.168.2.16", "fe80::ba27:ebff:fe00:1"},
                                          b: {"192.168.2.1", "8.8.8.8"}}
    assert embed.capture_aliases(path, "192.168.2.16") == ("fe80::ba27:ebff:fe00:1",)
    packed = tmp_path / "x.pcap.gz"
    packed.write_bytes(gzip.compress(open(path, "rb").read()))
    assert embed.sources_by_mac(str(packed)) == embed.sources_by_mac(path)
    raw_ip = _pcap_file(tmp_path / "raw.pcap", [_ipv4("192.168.2.16")], linktype=101)
    assert embed.sources_by_mac(raw_ip) == {}  # no link layer in the capture: no MAC to go by
    log = tmp_path / "conn.log"
    log.write_text('{"ts": 1.0, "id.orig_h": "192.168.2.16"}\n')
    assert embed.sources_by_mac(str(log)) is None and embed.capture_aliases(str(log), "192.168.2.16") is None


def test_placed_aliases_are_where_place_attack_puts_them():
    table = _dns([{"c_ip": "10.0.0.9", "s_ip": "8.8.8.8", "req_time": T0},
                  {"c_ip": "fe80::9", "s_ip": "ff02::fb", "req_time": T0}])
    start = int(T0.timestamp() * 1e6)
    placed = embed.place_attack(table, "dns", "10.0.0.9", "10.250.0.1", start)
    aliases = embed.placed_aliases(table, "10.0.0.9", ("172.17.0.1", "fe80::9"))  # 172.17.0.1: no record here
    assert aliases == {"fe80::9": "198.18.0.2"}  # 8.8.8.8, fe80::9, ff02::fb in sorted order
    assert placed["c_ip"].to_pylist() == ["10.250.0.1", "198.18.0.2"]


def _tshark_sources(path) -> dict[str, set[str]]:
    """Each frame's source MAC and its first IP layer's source address, as tshark decodes them."""
    fields = ["eth.src", "ip.src", "ipv6.src", "frame.protocols"]
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=f",
                          *(arg for field in fields for arg in ("-e", field))],
                         check=True, capture_output=True, text=True).stdout
    sources: dict[str, set[str]] = {}
    for line in out.splitlines():
        mac, ip4, ip6, protocols = line.split("\t")
        layers = [layer for layer in protocols.split(":") if layer in ("ip", "ipv6")]
        if mac and layers:
            sources.setdefault(mac, set()).add(ip4 if layers[0] == "ip" else ip6)
    return sources


CAPTURE_CASES = [case for case in CASES if case.path.endswith(".pcap")]


@pytest.mark.parametrize("capture", sorted({case.path for case in CAPTURE_CASES}))
def test_sources_by_mac_agree_with_tshark(capture):
    path = shared_data(capture)
    if not provisioned_tool("tshark"):
        pytest.skip("tshark is not on PATH: nothing to check the capture's link layer against")
    assert embed.sources_by_mac(str(path)) == _tshark_sources(path)


def test_the_infected_hosts_alias_is_its_macs_eui64_link_local_and_the_gateway_gives_none():
    path = shared_data("pcaps/attacks/slips_test7-malicious.pcap")
    if not provisioned_tool("tshark"):
        pytest.skip("tshark is not on PATH: nothing to check the capture's link layer against")
    sources = _tshark_sources(path)
    (mac,) = [mac for mac, addresses in sources.items() if "192.168.2.16" in addresses]
    octets = bytes.fromhex(mac.replace(":", ""))
    # RFC 4291 appendix A: the MAC's universal/local bit flipped, ff:fe in the middle, under fe80::/64.
    eui64 = bytes([octets[0] ^ 2]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    link_local = str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui64))
    aliases = embed.capture_aliases(str(path), "192.168.2.16")
    assert link_local in aliases
    assert set(aliases) <= sources[mac]
    (gateway,) = [mac for mac, addresses in sources.items() if "8.8.8.8" in addresses]
    assert len(sources[gateway]) > embed.MAX_INTERFACE_ADDRESSES
    assert embed.capture_aliases(str(path), "8.8.8.8") == ()


@pytest.mark.parametrize("case_name", sorted({case.name for case in CASES if case not in CAPTURE_CASES}))
def test_log_cases_have_no_aliases(case_name):
    case = next(c for c in CASES if c.name == case_name)
    assert embed.capture_aliases(str(shared_data(case.path)), case.attacker) is None
