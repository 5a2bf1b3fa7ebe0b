"""Network-native window features (flows, dns, http): hand-worked tables, Zeek's own fields, any batching."""
from __future__ import annotations

import collections
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beamlytics import baseline, features, schemas
from beamlytics.features import WindowSpec
from beamlytics.parsers.base import Rejected
from beamlytics.parsers.formats import Batch, parse_paths
from beamlytics.pipelines import cli
from tests.conftest import shared_data
from tests.test_transforms import run_windows

SECOND = 1_000_000
MINUTE = 60 * SECOND
T0 = 1_700_000_040 * SECOND - (1_700_000_040 * SECOND) % MINUTE  # a window boundary


def batch_of(schema: pa.Schema, rows: list[dict]) -> pa.RecordBatch:
    columns = {name: [row.get(name) for row in rows] for name in schema.names if any(name in row for row in rows)}
    columns.update(source_tool=["test"] * len(rows), source_file=["mem"] * len(rows),
                   source_pos=list(range(1, len(rows) + 1)))
    return schemas.batch_from_columns(schema, columns, len(rows))


def assert_same_windows(left: pa.Table, right: pa.Table) -> None:
    """Equal tables of endpoint-windows, NaN (an unknown failed ratio) equal to NaN."""
    assert left.schema.equals(right.schema)
    pd.testing.assert_frame_equal(left.to_pandas(), right.to_pandas(), check_exact=True)


def by_window(table: pa.Table) -> dict[tuple[str, int], dict]:
    rows = {}
    for window in features.endpoint_windows(table):
        rows[(window.key, (window.window_start - T0) // MINUTE)] = {"records": window.records, **window.features}
    return rows


def flow(start_s: float, end_s: float | None, state: str | None, s_ip: str, s_port: int, proto: str = "tcp",
         c_ip: str = "10.0.0.1", **extra) -> dict:
    return {"c_ip": c_ip, "s_ip": s_ip, "s_port": s_port, "proto": proto, "conn_state": state,
            "time_start": T0 + int(start_s * SECOND),
            "time_end": None if end_s is None else T0 + int(end_s * SECOND), **extra}


HAND_FLOWS = [
    flow(0, 10, "SF", "192.0.2.1", 80, c_pkt=2, s_pkt=3, c_bytes=100, s_bytes=1000),
    flow(5, 5, "S0", "192.0.2.2", 22, c_pkt=1, s_pkt=0, c_bytes=60, s_bytes=0),
    # 20 s -> 170 s: 40 s in the first window, all 60 of the second, 50 of the third.
    flow(20, 170, "RSTO", "192.0.2.1", 443, c_pkt=40, s_pkt=50, c_bytes=4000, s_bytes=90000),
    flow(30, None, "OTH", "192.0.2.3", 53, proto="udp", c_pkt=1, s_pkt=1, c_bytes=70, s_bytes=200),
    flow(40, 41, "REJ", "192.0.2.2", 22, c_pkt=3, s_pkt=2, c_bytes=180, s_bytes=120),
]


def test_flow_features_against_a_hand_worked_window():
    windows = by_window(features.window_features([batch_of(schemas.NAMED_FLOWS, HAND_FLOWS)],
                                                 WindowSpec("named_flows", "c_ip")))
    first = windows[("10.0.0.1", 0)]
    assert first["records"] == 5
    # Failed: S0 and REJ. The RSTO flow is not: its server sent 50 packets, a working connection reset.
    assert first["failed_ratio"] == pytest.approx(2 / 5)
    assert first["distinct_peers"] == 3 and first["distinct_ports"] == 4
    assert (first["c_pkt"], first["s_pkt"], first["c_bytes"], first["s_bytes"]) == (47, 56, 4410, 91320)
    # The UDP flow has no end: no duration. The others last 10, 0, 150 and 1 s.
    assert first["mean_duration"] == pytest.approx((10 + 0 + 150 + 1) / 4)
    assert first["max_duration"] == pytest.approx(150)
    assert first["active_flows"] == 5
    assert first["active_seconds"] == pytest.approx(10 + 0 + 40 + 0 + 1)


def test_scan_and_brute_force_features_against_a_hand_worked_window():
    rows = [
        # Three ports of one server (a vertical scan's shape), port 22 of a second server three times from two
        # source ports (a repeated connection counts once per fresh source port), and an ICMP echo.
        *(flow(1, 1, "S0", "192.0.2.1", port, c_port=40_000 + port) for port in (22, 80, 443)),
        flow(2, 2, "S0", "192.0.2.2", 22, c_port=50_000), flow(3, 3, "S0", "192.0.2.2", 22, c_port=50_001),
        flow(4, 4, "S0", "192.0.2.2", 22, c_port=50_001),
        flow(5, 5, None, "192.0.2.3", 8, proto="icmp", c_port=0),
    ]
    window = by_window(features.window_features([batch_of(schemas.NAMED_FLOWS, rows)],
                                                WindowSpec("named_flows", "c_ip")))[("10.0.0.1", 0)]
    assert window["records"] == 7
    assert window["max_peer_ports"] == 3  # 192.0.2.1: 22, 80, 443
    assert window["max_port_peers"] == 2  # port 22: 192.0.2.1 and 192.0.2.2
    assert window["max_service_connections"] == 2  # 192.0.2.2:22 from 50000 and 50001
    assert window["icmp_ratio"] == pytest.approx(1 / 7)


def test_resets_and_flows_without_a_state_fail_only_when_the_server_stayed_silent():
    rows = [flow(0, 1, "RSTO", "192.0.2.1", 80, s_pkt=1), flow(0, 1, "RSTR", "192.0.2.1", 81, s_pkt=9),
            flow(0, 1, None, "192.0.2.1", 82, s_pkt=0), flow(0, 1, None, "192.0.2.1", 83, s_pkt=1),
            flow(0, 1, None, "192.0.2.1", 84, proto="udp", s_pkt=1)]
    [window] = by_window(features.window_features([batch_of(schemas.NAMED_FLOWS, rows)],
                                                  WindowSpec("named_flows"))).values()
    # The first (a probe reset after the SYN-ACK), the third (no answer), the fourth (one TCP packet back).
    assert window["failed_ratio"] == pytest.approx(3 / 5)


def test_flows_with_no_state_and_no_server_packets_are_unknown_not_failed():
    # Like Zeek ssl.log connections: neither conn_state nor packet counts.
    unknown = [flow(0, 0, None, "192.0.2.1", 443), flow(1, 1, None, "192.0.2.2", 443)]
    known = [flow(2, 2, "S0", "192.0.2.3", 22), flow(3, 3, "SF", "192.0.2.4", 22), flow(4, 4, "REJ", "192.0.2.5", 23)]
    windows = by_window(features.window_features(
        [batch_of(schemas.NAMED_FLOWS, unknown), batch_of(schemas.NAMED_FLOWS, [{**row, "c_ip": "10.0.0.2"}
                                                                              for row in unknown + known])],
        WindowSpec("named_flows", "c_ip")))
    # 10.0.0.1: nothing known -> NaN (was 1.0: every unknown counted failed).
    assert np.isnan(windows[("10.0.0.1", 0)]["failed_ratio"])
    # 10.0.0.2: S0 and REJ failed, SF did not; the two unknown flows count in neither: 2 / 3, not 4 / 5.
    assert windows[("10.0.0.2", 0)]["failed_ratio"] == pytest.approx(2 / 3)
    assert windows[("10.0.0.2", 0)]["records"] == 5


def test_a_baseline_window_with_an_unknown_failed_ratio_still_calibrates():
    spec = WindowSpec("named_flows")
    written = features.window_features([batch_of(schemas.NAMED_FLOWS, [flow(0, 0, None, "192.0.2.1", 443)])],
                                       spec).drop_columns(["train"])
    [window] = baseline.baseline_windows(written, spec, "base.parquet")
    assert not isinstance(window, Rejected) and np.isnan(window.features["failed_ratio"])


def test_a_long_connection_is_active_in_every_window_it_spans():
    windows = by_window(features.window_features([batch_of(schemas.NAMED_FLOWS, HAND_FLOWS)],
                                                 WindowSpec("named_flows", "c_ip")))
    assert sorted(windows) == [("10.0.0.1", 0), ("10.0.0.1", 1), ("10.0.0.1", 2)]
    for index, seconds in ((1, 60), (2, 50)):
        later = windows[("10.0.0.1", index)]
        # No flow starts there, so no records and no ratios; the open flow is counted and its time apportioned.
        # No flow starts there, so no state is known: the failed ratio is unknown, not 0.
        assert later["records"] == 0 and np.isnan(later["failed_ratio"]) and later["c_bytes"] == 0
        assert later["active_flows"] == 1
        assert later["active_seconds"] == pytest.approx(seconds)
    assert sum(window["active_seconds"] for window in windows.values()) == pytest.approx(10 + 150 + 1)


def test_a_flow_ending_on_a_window_boundary_is_not_active_in_the_next_window():
    rows = [flow(0, 120, "SF", "192.0.2.1", 80)]
    windows = by_window(features.window_features([batch_of(schemas.NAMED_FLOWS, rows)], WindowSpec("named_flows")))
    assert sorted(index for _, index in windows) == [0, 1]


def test_a_hostile_flow_duration_creates_a_bounded_number_of_windows():
    rows = [flow(0, 3.0e9, "SF", "192.0.2.1", 80), flow(1, 2, "S0", "192.0.2.2", 80, c_ip="10.0.0.2")]
    table = features.window_features([batch_of(schemas.NAMED_FLOWS, rows)], WindowSpec("named_flows"))
    keys = collections.Counter(table.column("key").to_pylist())
    assert keys == {"10.0.0.1": features.MAX_SPAN_WINDOWS, "10.0.0.2": 1}
    # The record itself is kept whole: its duration, bytes and start window.
    first = by_window(table)[("10.0.0.1", 0)]
    assert first["records"] == 1 and first["max_duration"] == pytest.approx(3.0e9)


def test_long_spans_are_expanded_in_bounded_chunks(monkeypatch):
    batch = batch_of(schemas.NAMED_FLOWS, HAND_FLOWS)
    whole = features.window_features([batch], WindowSpec("named_flows"))
    monkeypatch.setattr(features, "_SPAN_CHUNK", 2)
    assert_same_windows(features.window_features([batch], WindowSpec("named_flows")), whole)


def query(name: str, qtype: str = "A", rcode: str | None = "NOERROR", ttls: list[int] | None = None,
          second: int = 1, c_ip: str = "10.0.0.1") -> dict:
    return {"c_ip": c_ip, "s_ip": "10.0.0.53", "query": name, "req_type": qtype, "resp_code": rcode,
            "answer_ttls": ttls, "req_time": T0 + second * SECOND,
            "resp_time": None if rcode is None else T0 + second * SECOND}


HAND_QUERIES = [
    query("aGVsbG8.t.example.com", "TXT", "NXDOMAIN"),
    query("www.example.com", ttls=[0, 300]),
    query("example.com", ttls=[300]),
    query("mail.example.co.uk", "ANY"),
    query("localhost", rcode=None),
]


def test_shannon_entropy_of_a_subdomain_by_hand():
    # "aGVsbG8t": G twice, six letters once in eight: 6 * (1/8 * 3) + 2/8 * 2 = 2.75 bits.
    table = features.window_features([batch_of(schemas.DNS, [query("aGVsbG8.t.example.com")])], WindowSpec("dns"))
    assert table.column("max_subdomain_entropy").to_pylist() == [2.75]
    table = features.window_features([batch_of(schemas.DNS, [query("abcd.example.org")])], WindowSpec("dns"))
    assert table.column("mean_subdomain_entropy").to_pylist() == [2.0]


def test_dns_features_against_a_hand_worked_window():
    [window] = by_window(features.window_features([batch_of(schemas.DNS, HAND_QUERIES)], WindowSpec("dns"))).values()
    assert window["records"] == 5
    # example.com and example.co.uk; localhost has no registered domain.
    assert window["distinct_domains"] == 2
    # example.com: {aGVsbG8.t, www}; example.co.uk: {mail}; the apex is no subdomain.
    assert window["max_subdomains"] == 2
    assert window["mean_subdomain_length"] == pytest.approx((9 + 3 + 4) / 3)
    assert window["max_subdomain_length"] == 9
    # aGVsbG8t 2.75 bits, www 0, mail 2: the mean over the three queries with a subdomain.
    assert window["mean_subdomain_entropy"] == pytest.approx((2.75 + 0 + 2) / 3)
    assert window["max_subdomain_entropy"] == pytest.approx(2.75)
    assert window["txt_null_any_ratio"] == pytest.approx(2 / 5)
    assert window["zero_ttl_ratio"] == pytest.approx(1 / 5)
    assert window["nxdomain_ratio"] == pytest.approx(1 / 5)
    assert window["unanswered_ratio"] == pytest.approx(1 / 5)
    assert window["max_query_length"] == len("aGVsbG8.t.example.com")


def generated_tunnel_queries(seed: int) -> tuple[list[dict], collections.Counter]:
    """Queries under three registered domains, and the records per (domain, window) they make."""
    rng = random.Random(seed)
    # co.uk is a public suffix and github.io a private one: both are under the registered domain.
    domains = ("example.com", "tunnel.co.uk", "user.github.io")
    rows, expected = [], collections.Counter()
    for _ in range(400):
        domain = rng.choice(domains)
        second = rng.randrange(0, 300)
        label = "".join(rng.choice("abcdef0123456789") for _ in range(rng.randrange(1, 30)))
        rows.append(query(f"{label}.{domain}", rng.choice(["A", "TXT"]), second=second,
                          c_ip=f"10.0.0.{rng.randrange(1, 5)}"))
        expected[(domain, second // 60)] += 1
    return rows, expected


def test_key_domain_keys_windows_by_registered_domain():
    rows, expected = generated_tunnel_queries(5)
    rows.append(query("localhost"))  # no registered domain: no window, counted as unplaceable
    batch = batch_of(schemas.DNS, rows)
    spec = WindowSpec("dns", "domain")
    windows = by_window(features.window_features([batch], spec))
    assert {key: window["records"] for key, window in windows.items()} == dict(expected)
    assert features.untimed_records(batch, spec) == 1
    for (domain, index), window in windows.items():
        mine = [row for row in rows[:-1] if row["query"].endswith("." + domain)
                and (row["req_time"] - T0) // MINUTE == index]
        assert window["max_subdomains"] == len({row["query"] for row in mine})
        assert window["distinct_peers"] == len({row["c_ip"] for row in mine})
        assert window["txt_null_any_ratio"] == pytest.approx(sum(row["req_type"] == "TXT" for row in mine) / len(mine))


def test_key_domain_is_for_dns_only():
    with pytest.raises(ValueError, match="unknown key 'domain'"):
        WindowSpec("http", "domain")


def request(method: str, host: str | None, path: str | None, status: int | None, agent: str | None,
            c_ip: str = "10.0.0.1") -> dict:
    return {"c_ip": c_ip, "s_ip": "192.0.2.80", "method": method, "host": host, "path": path,
            "status_code": status, "user_agent": agent, "req_time": T0 + SECOND}


def test_http_features_against_a_hand_worked_window():
    rows = [request("GET", "a.example", "/", 200, "Mozilla/5.0"),
            request("GET", "b.example", "/", 404, "Mozilla/5.0"),
            request("POST", "a.example", "/upload?id=1", 503, "curl/8.0"),
            request("PROPFIND", "a.example", "/dav/", 207, None),
            request("GET", "a.example", "/", 200, "python-requests/2.31")]
    [window] = by_window(features.window_features([batch_of(schemas.HTTP, rows)], WindowSpec("http"))).values()
    assert window["distinct_names"] == 2
    assert window["distinct_uris"] == 4  # a/, b/, a/upload?id=1, a/dav/
    assert window["mean_uri_length"] == pytest.approx((1 + 1 + 12 + 5 + 1) / 5)
    assert window["max_uri_length"] == 12
    assert window["client_error_ratio"] == pytest.approx(1 / 5)
    assert window["server_error_ratio"] == pytest.approx(1 / 5)
    assert window["error_ratio"] == pytest.approx(2 / 5)
    assert window["post_ratio"] == pytest.approx(1 / 5)
    assert window["other_method_ratio"] == pytest.approx(1 / 5)
    assert window["distinct_user_agents"] == 3


def random_rows(table: str, seed: int, count: int = 1500) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        c_ip = f"10.0.0.{rng.randrange(1, 9)}"
        start = rng.randrange(0, 20 * 60)
        if table == "named_flows":
            length = rng.choice([0, 1, 5, 90, 400, None])
            end = None if length is None else start + length
            rows.append(flow(start, end, rng.choice(["SF", "S0", "REJ", "OTH", "RSTR", None]),
                             f"192.0.2.{rng.randrange(1, 30)}", rng.choice([22, 80, 443, 8080]),
                             rng.choice(["tcp", "udp"]), c_ip, c_bytes=rng.randrange(0, 10_000)))
        elif table == "dns":
            name = f"{''.join(rng.choices('abcxyz0189', k=rng.randrange(0, 20)))}.{rng.choice(['a.com', 'b.org'])}"
            rows.append(query(name.lstrip("."), rng.choice(["A", "TXT", "NULL", "AAAA"]),
                              rng.choice(["NOERROR", "NXDOMAIN", None]), rng.choice([None, [0], [60, 0], [30]]),
                              start, c_ip))
        else:
            rows.append(request(rng.choice(["GET", "POST", "HEAD"]), rng.choice(["a.example", None]),
                                "/" + "x" * rng.randrange(0, 40), rng.choice([200, 301, 404, 500, None]),
                                rng.choice(["ua1", "ua2", None]), c_ip) | {"req_time": T0 + start * SECOND})
    return rows


@pytest.mark.parametrize("table", ["named_flows", "dns", "http"])
def test_features_are_the_same_however_records_are_batched_and_ordered(table):
    rows = random_rows(table, seed=len(table))
    spec = WindowSpec(table, "c_ip")
    schema = schemas.TABLES[table]
    whole = features.window_features([batch_of(schema, rows)], spec)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    pieces = [batch_of(schema, shuffled[start:start + 113]) for start in range(0, len(shuffled), 113)]
    # Merge partials in a tree of a different shape than a left fold.
    parts = [features.partial_windows(batch, spec) for batch in pieces]
    halves = [features.merge_partials(parts[:5]), features.merge_partials(parts[5:])]
    assert_same_windows(features.window_table(features.merge_partials(halves[::-1]), spec), whole)
    assert_same_windows(features.window_features(pieces, spec), whole)


@pytest.mark.parametrize("windowing", ["key", "beam"])
def test_long_flows_span_windows_the_same_in_a_pipeline(windowing):
    rows = random_rows("named_flows", seed=3, count=600)
    spec = WindowSpec("named_flows", "c_ip")
    batches = [batch_of(schemas.NAMED_FLOWS, rows[start:start + 150]) for start in range(0, len(rows), 150)]
    assert_same_windows(run_windows(batches, spec, windowing), features.window_features(batches, spec))


# ------------------------------------------------------------------ real logs, against the tools' own fields

# Never a working connection; a reset one only when the server sent at most its SYN-ACK (docs/hunts.md).
FAILED = {"S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR"}


def zeek_conn_frame(path) -> pd.DataFrame:
    """A Zeek conn.log (TSV or JSON) read with pandas alone."""
    text = open(path, encoding="utf-8").read().splitlines()
    if text[0].startswith("{"):
        frame = pd.read_json(path, lines=True)
    else:
        names = next(line for line in text if line.startswith("#fields")).split("\t")[1:]
        rows = [line.split("\t") for line in text if line and not line.startswith("#")]
        frame = pd.DataFrame(rows, columns=names).replace({"-": None})
    frame["ts"] = frame["ts"].astype(float)
    frame["duration"] = pd.to_numeric(frame["duration"]).fillna(0.0)
    frame["start"] = (frame["ts"] * 1e6).round().astype("int64")
    frame["end"] = ((frame["ts"] + frame["duration"]) * 1e6).round().astype("int64")
    frame["window"] = frame["start"] // MINUTE
    return frame


@pytest.mark.parametrize("log", ["logs/zeek/zat_tsv/conn.log", "logs/zeek/zat_json/conn.log",
                                 "logs/zeek/slips_test9_json/conn.log", "labelled/portscans/vertical_conn.log",
                                 "labelled/portscans/horizontal_conn.log"])
def test_flow_features_match_zeek_conn_fields(log):
    path = shared_data(log)
    batches = [item.records for item in parse_paths([str(path)], "named_flows") if isinstance(item, Batch)]
    windows = {(window.key, window.window_start // MINUTE): window
               for window in features.endpoint_windows(features.window_features(batches, WindowSpec("named_flows")))}
    frame = zeek_conn_frame(path)
    assert len(frame) == sum(batch.num_rows for batch in batches)
    for (host, window_index), group in frame.groupby(["id.orig_h", "window"]):
        window = windows[(host, window_index)]
        resets = group["conn_state"].isin({"RSTO", "RSTR"}) & (group["resp_pkts"].astype(int) <= 1)
        failed = group["conn_state"].isin(FAILED) | resets
        assert window.records == len(group)
        assert window.features["failed_ratio"] == pytest.approx(failed.mean())
        assert window.features["distinct_peers"] == group["id.resp_h"].nunique()
        assert window.features["distinct_ports"] == group["id.resp_p"].astype(int).nunique()
        assert window.features["c_bytes"] == group["orig_ip_bytes"].astype(int).sum()
        assert window.features["s_pkt"] == group["resp_pkts"].astype(int).sum()
        assert window.features["max_duration"] == pytest.approx(group["duration"].max(), abs=2e-6)
        ports = group["id.resp_p"].astype(int)
        assert window.features["max_peer_ports"] == ports.groupby(group["id.resp_h"]).nunique().max()
        assert window.features["max_port_peers"] == group["id.resp_h"].groupby(ports).nunique().max()
        assert window.features["max_service_connections"] == \
            group["id.orig_p"].astype(int).groupby([group["id.resp_h"], ports]).nunique().max()
        assert window.features["icmp_ratio"] == pytest.approx((group["proto"] == "icmp").mean())
    # Every flow is active in each window from its start to its end, with its time split between them.
    active = collections.Counter()
    seconds = collections.defaultdict(float)
    for host, start, end in zip(frame["id.orig_h"], frame["start"], frame["end"]):
        index = start // MINUTE
        while True:
            active[(host, index)] += 1
            seconds[(host, index)] += (min(end, (index + 1) * MINUTE) - max(start, index * MINUTE)) / 1e6
            index += 1
            if index * MINUTE >= end:
                break
    assert set(windows) == set(active)
    for key, window in windows.items():
        assert window.features["active_flows"] == active[key]
        assert window.features["active_seconds"] == pytest.approx(seconds[key], abs=1e-6)


def test_tstat_connection_states_follow_its_per_side_counters():
    path = shared_data("logs/tstat/dazn_1mbit_exp0/log_tcp_complete")
    lines = open(path, encoding="utf-8").read().splitlines()
    columns = {name.split(":")[0]: int(name.split(":")[1]) - 1 for name in lines[0].split("#")[-1].split()}
    expected = collections.Counter()
    for line in lines[1:]:
        fields = line.split()
        sent = {name: float(fields[columns[name]]) > 0 for name in
                ("c_syn_cnt", "s_syn_cnt", "c_rst_cnt", "s_rst_cnt", "c_fin_cnt", "s_fin_cnt")}
        assert sent["c_syn_cnt"] and sent["s_syn_cnt"]  # this file: every flow completed its handshake
        if sent["c_rst_cnt"]:
            expected["RSTO"] += 1
        elif sent["s_rst_cnt"]:
            expected["RSTR"] += 1
        elif sent["c_fin_cnt"] and sent["s_fin_cnt"]:
            expected["SF"] += 1
        else:
            expected["S1"] += 1
    batches = [item.records for item in parse_paths([str(path)], "named_flows") if isinstance(item, Batch)]
    states = collections.Counter(state for batch in batches for state in batch.column("conn_state").to_pylist())
    assert states == expected


def test_dns_features_match_zeek_dns_fields():
    path = shared_data("logs/zeek/wrccdc2018/dns.log.gz")
    batches = [item.records for item in parse_paths([str(path)], "dns") if isinstance(item, Batch)]
    table = features.window_features(batches, WindowSpec("dns"))
    frame = pd.concat([batch.to_pandas() for batch in batches])
    frame["window"] = np.concatenate([pc.cast(batch.column("req_time"), pa.int64()).to_numpy(zero_copy_only=False)
                                      for batch in batches]) // MINUTE
    zero_ttl = frame["answer_ttls"].map(lambda ttls: ttls is not None and 0 in list(ttls))
    payload = frame["req_type"].isin(["TXT", "NULL", "ANY"])
    grouped = pd.DataFrame({"c_ip": frame["c_ip"], "window": frame["window"], "zero": zero_ttl,
                            "payload": payload}).groupby(["c_ip", "window"])
    reference = grouped.mean()
    assert table.num_rows == len(reference)
    got = {(key, start // MINUTE): (zero, share) for key, start, zero, share in zip(
        table.column("key").to_pylist(), pc.cast(table.column("window_start"), pa.int64()).to_pylist(),
        table.column("zero_ttl_ratio").to_pylist(), table.column("txt_null_any_ratio").to_pylist())}
    for (host, window), row in reference.iterrows():
        zero, share = got[(host, window)]
        assert zero == pytest.approx(row["zero"]) and share == pytest.approx(row["payload"])


# ------------------------------------------------------------------ baseline files and the command line

def test_a_baseline_holds_the_new_features_and_rejects_what_cannot_calibrate():
    spec = WindowSpec("named_flows")
    written = features.window_features([batch_of(schemas.NAMED_FLOWS, HAND_FLOWS)], spec).drop_columns(["train"])
    loaded = list(baseline.baseline_windows(written, spec, "base.parquet"))
    assert [window.features["active_seconds"] for window in loaded] == pytest.approx([51, 60, 50])
    assert all(window.train for window in loaded)

    # failed_ratio may be unknown (NaN: tested above); a NaN byte count cannot calibrate.
    broken = written.set_column(written.schema.get_field_index("c_bytes"), "c_bytes",
                                pa.array([0.4, float("nan"), 0.0]))
    items = list(baseline.baseline_windows(broken, spec, "base.parquet"))
    [rejected] = [item for item in items if isinstance(item, Rejected)]
    assert (rejected.position, rejected.reason) == (2, "feature c_bytes missing, NaN or infinite")
    assert len(items) == 3

    [older] = baseline.baseline_windows(written.drop_columns(["active_flows", "active_seconds"]), spec, "old.parquet")
    assert isinstance(older, Rejected) and older.position == 0
    assert "no column active_flows, active_seconds" in older.reason and "again" in older.reason


def test_detect_keys_dns_by_registered_domain(tmp_path, capsys):
    rows, expected = generated_tunnel_queries(8)
    lines = ["#separator \\x09", "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\t"
             "qtype_name\trcode_name",
             "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tstring\tstring"]
    for number, row in enumerate(rows):
        lines.append(f"{row['req_time'] / 1e6:.6f}\tC{number}\t{row['c_ip']}\t5353\t10.0.0.53\t53\tudp\t{number}\t"
                     f"{row['query']}\t{row['req_type']}\tNOERROR")
    log = tmp_path / "dns.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["detect", str(log), "--table", "dns", "--key", "domain", "--output", str(out), "--quiet"]) == 0
    table = pq.read_table(out / "features")
    assert set(table.column("key_kind").to_pylist()) == {"domain"}
    got = {(key, (start - T0) // MINUTE): records for key, start, records in zip(
        table.column("key").to_pylist(), pc.cast(table.column("window_start"), pa.int64()).to_pylist(),
        table.column("records").to_pylist())}
    assert got == dict(expected)
    capsys.readouterr()
    assert cli.main(["detect", str(log), "--table", "http", "--key", "domain", "--output", str(tmp_path / "x")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "unknown key 'domain'" in line
