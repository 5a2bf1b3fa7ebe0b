"""The attack benchmark's embedding and metrics, against hand-worked cases and the raw files."""
from __future__ import annotations

import csv
import datetime as dt
import json
import math

import pandas as pd
import pyarrow as pa
import pytest

from beamlytics import schemas
from benchmarks import attack_metrics, embed
from benchmarks.bench_attacks import CASES
from tests.conftest import shared_data

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
    result = attack_metrics.case_result(features, alarms, alarms, "x", start, end)
    assert (result.flagged, result.windows_caught, result.attacker_windows) == (True, 1, 2)
    assert result.rank == 2  # b's best 9 beats x's best 4, which beats c's 3
    assert (result.benign_alarms, result.benign_windows, result.benign_judged) == (3, 8, 8)
    assert result.alarms_per_1000 == pytest.approx(375.0)
    # The verdict left b@3 and c@4 unjudged (say, under --min-records) and x@4: 6 of the 8 benign windows judged.
    verdicts = _windows([("x", 0), ("x", 1), ("x", 2), ("x", 3), ("x", 4), ("b", 0), ("b", 2), ("b", 3),
                         ("c", 0), ("c", 4)])
    verdicts["status"] = ["normal", "alarm", "normal", "alarm", "unjudged", "normal", "alarm", "unjudged", "alarm",
                          "unjudged"]
    judged = attack_metrics.case_result(features, alarms, alarms, "x", start, end,
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
    line = attack_metrics.closest_attacker_window(verdicts, "x", start, end)
    minute = f"{pd.Timestamp(T0) + pd.Timedelta(minutes=2):%H:%M}"
    assert line == (f"window {minute}, 67 records, combined p 0.03: distinct_ports 2 (p 0.0143), records 67 (p 0.021), "
                    "distinct_peers 1 (p 1)")
    assert attack_metrics.closest_attacker_window(verdicts, "x", end + pd.Timedelta(minutes=1),
                                                  end + pd.Timedelta(minutes=1)) is None  # only x@3: unjudged


def test_case_result_when_the_attacker_is_never_alarmed():
    features = _windows([("x", 0), ("b", 0)])
    alarms = _windows([("b", 0)])
    alarms["score"] = [1.0]
    result = attack_metrics.case_result(features, alarms, alarms, "x", pd.Timestamp(T0), pd.Timestamp(T0))
    assert (result.flagged, result.windows_caught, result.attacker_windows, result.rank) == (False, 0, 1, None)
    assert result.alarms_per_1000 == pytest.approx(1000.0)


def test_isolation_forest_ranks_an_obvious_outlier_first():
    pytest.importorskip("sklearn")
    features = _windows([(f"h{i}", 0) for i in range(40)] + [("odd", 0)])
    features["records"] = [10 + i % 3 for i in range(40)] + [900]
    features["distinct_names"] = [5.0 + i % 2 for i in range(40)] + [850.0]
    alarms, scored = attack_metrics.isolation_forest_scores(features)
    assert "odd" in set(alarms["key"])
    assert attack_metrics.host_rank(scored, "odd") == 1
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
