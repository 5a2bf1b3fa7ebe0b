"""Hunt findings as evidence in detect's verdicts: which windows a finding marks, how it scores, end to end."""
import json
import math
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from beamlytics.detectors.verdict import ALARM, DEFAULT_ALARM_RATE, NORMAL, VerdictSettings, hunt_levels, judge
from beamlytics.features import WindowSpec
from beamlytics.hunts import detect_hunts
from beamlytics.hunts.config import DAY_US
from beamlytics.hunts.findings import finding
from beamlytics.hunts.marks import Mark, finding_marks, strongest
from beamlytics.pipelines import cli
from tests.test_hunts import DAY, benign_flows, dns, flow, flows, write_conn_log
from tests.test_verdict import POPULATION, row, score_rows

MINUTE = 60_000_000


def scan_finding(hunt, score, horizon_start=DAY, **key):
    return finding(hunt, score, (horizon_start, horizon_start + DAY_US), 2, False, {}, f"{hunt} {score}", **key)


def test_a_finding_marks_the_windows_holding_its_records_and_each_window_keeps_the_strongest():
    batch = flows([
        flow("10.0.0.1", "192.0.2.2", DAY + 10_000_000, port=22, state="S0"),
        flow("10.0.0.1", "192.0.2.2", DAY + 70_000_000, port=23, state="REJ"),  # the next window
        flow("10.0.0.1", "192.0.2.3", DAY + 15_000_000, port=443),
        flow("10.0.0.4", "192.0.2.3", DAY + 20_000_000, port=443),  # same server and port, another source
    ])
    findings = [scan_finding("vertical_scan", 0.6, src="10.0.0.1", dst="192.0.2.2"),
                scan_finding("horizontal_scan", 0.3, src="10.0.0.1", proto="tcp", port=443),
                # the same pair in the next day's horizon: none of these records is in it
                scan_finding("vertical_scan", 1.0, DAY + DAY_US, src="10.0.0.1", dst="192.0.2.2")]
    by_client = finding_marks(batch, WindowSpec("named_flows", "c_ip"), findings)
    # Window 0 holds records of both findings: the vertical scan (0.6) is the stronger.
    assert by_client == [("10.0.0.1", DAY, Mark("vertical_scan", 0.6, "vertical_scan 0.6")),
                         ("10.0.0.1", DAY + MINUTE, Mark("vertical_scan", 0.6, "vertical_scan 0.6"))]
    by_server = finding_marks(batch, WindowSpec("named_flows", "s_ip"), findings)
    assert [(key, (start - DAY) // MINUTE, mark.hunt) for key, start, mark in by_server] == [
        ("192.0.2.2", 0, "vertical_scan"), ("192.0.2.2", 1, "vertical_scan"), ("192.0.2.3", 0, "horizontal_scan")]
    # 10.0.0.4's flow to 192.0.2.3:443 is not 10.0.0.1's horizontal scan.
    assert all(key != "10.0.0.4" for key, _, _ in by_client)


def test_dns_tunnel_findings_mark_the_clients_windows_querying_the_domain():
    batch = dns([{"c_ip": "10.0.0.9", "query": "aGVsbG8.t.tunnel.example", "req_type": "TXT",
                        "req_time": DAY + 5_000_000},
                       {"c_ip": "10.0.0.9", "query": "www.example.org", "req_type": "A", "req_time": DAY + 65_000_000},
                       {"c_ip": "10.0.0.8", "query": "x.tunnel.example", "req_type": "A", "req_time": DAY + 70_000_000}])
    marks = finding_marks(batch, WindowSpec("dns", "c_ip"),
                          [scan_finding("dns_tunnel", 0.8, dst="tunnel.example")])
    assert [(key, (start - DAY) // MINUTE) for key, start, _ in marks] == [("10.0.0.8", 1), ("10.0.0.9", 0)]


def test_strongest_is_the_same_in_any_order():
    marks = [("a", 0, Mark("beacon", 0.5, "x")), ("a", 0, Mark("long", 0.5, "y")), ("a", 0, Mark("strobe", 0.25, "z")),
             ("b", 0, Mark("long", 0.75, "w"))]
    expected = {("a", 0): Mark("beacon", 0.5, "x"), ("b", 0): Mark("long", 0.75, "w")}
    for seed in range(5):
        shuffled = marks[:]
        random.Random(seed).shuffle(shuffled)
        assert strongest(shuffled) == expected


def test_a_hunt_finding_at_the_alarm_level_alarms_and_scores_on_the_alarm_threshold_by_hand():
    # Population 0..999: value 10 has p ≈ 0.99, nowhere near an alarm on its own.
    rows = score_rows([row("a", 10.0), row("b", 10.0, records=1), row("c", 10.0), row("d", 10.0)])
    marks = {("a", row("a", 0)["window_start"]): Mark("vertical_scan", 0.5, "a scanned"),
             ("b", row("b", 0)["window_start"]): Mark("dns_tunnel", 0.75, "b tunnelled"),
             ("c", row("c", 0)["window_start"]): Mark("beacon", 0.25, "c beaconed")}
    verdicts, reported, counts = judge(rows, POPULATION, VerdictSettings(alarm_rate=0.001), marks)
    got = {v["key"]: v for v in verdicts.to_pylist()}
    # a: score 0.5 = the alarm level -> exactly -log10(0.001) = 3.
    assert got["a"]["status"] == ALARM and got["a"]["score"] == pytest.approx(3.0)
    assert (got["a"]["hunt"], got["a"]["hunt_score"], got["a"]["hunt_evidence"]) == ("vertical_scan", 0.5, "a scanned")
    # b: one record is too few for the statistical test, not for a rule over the day: 3 · 0.75 / 0.5 = 4.5.
    assert got["b"]["status"] == ALARM and got["b"]["reason"] is None and got["b"]["score"] == pytest.approx(4.5)
    # c: a base-level finding (0.25) ranks (1.5) but does not alarm; its p stays the statistical one.
    assert got["c"]["status"] == NORMAL and got["c"]["score"] == pytest.approx(1.5)
    assert got["c"]["p_value"] == got["d"]["p_value"] and got["d"]["hunt"] is None
    assert got["d"]["score"] == pytest.approx(-math.log10(got["d"]["p_value"]))
    assert (counts["alarms"], counts["hunt_alarms"]) == (2, 2)
    assert reported.num_rows == 0  # no feature fired: anomalies/ holds feature rows only
    # Ranked: the verdict writer sorts by score; here b > a > c > d.
    assert sorted(got, key=lambda key: -got[key]["score"]) == ["b", "a", "c", "d"]


def test_combined_score_is_finite_and_monotone_in_the_hunt_score():
    settings = VerdictSettings(alarm_rate=0.001)
    hunt_scores = np.linspace(0, 1, 41)
    levels = hunt_levels(hunt_scores, settings)
    assert np.all(np.diff(levels) > 0) and np.all(np.isfinite(levels)) and levels[-1] == pytest.approx(6.0)
    rng = np.random.default_rng(3)
    for value in rng.uniform(0, 1000, 20):
        scores = []
        for hunt_score in (None, 0.1, 0.25, 0.5, 0.9, 1.0):
            rows = score_rows([row("a", float(value))])
            marks = {} if hunt_score is None else {("a", row("a", 0)["window_start"]): Mark("long", hunt_score, "")}
            [verdict] = judge(rows, POPULATION, settings, marks)[0].to_pylist()
            assert math.isfinite(verdict["score"])
            scores.append(verdict["score"])
        assert scores == sorted(scores)


def test_detect_hunts_option():
    assert detect_hunts("all", "named_flows") == {"beacon", "long", "strobe", "scan"}
    assert detect_hunts("all", "http") == frozenset() and detect_hunts("none", "dns") == frozenset()
    assert detect_hunts("scan", "named_flows") == {"scan"}
    with pytest.raises(ValueError, match="do not apply"):
        detect_hunts("dns_tunnel", "named_flows")


def test_detect_ranks_a_vertical_scan_by_its_hunt_in_any_record_order(tmp_path):
    rng = np.random.default_rng(5)
    rows = benign_flows(rng, hosts=6)
    # 40 ports of one host, each refused, within one minute: Zeek's 15-port scan threshold passed.
    scan_start = DAY + 12 * 3_600_000_000
    rows += [flow("10.1.0.77", "192.0.2.80", scan_start + port * 1_000_000, port=port, state="REJ", c_pkt=1, s_pkt=1,
                  s_bytes=0, c_bytes=0) for port in range(1, 41)]
    outputs = []
    for seed in (1, 2):
        folder = tmp_path / f"logs{seed}"
        folder.mkdir()
        order = rows[:]
        random.Random(seed).shuffle(order)
        write_conn_log(folder / "conn.log", order)
        out = tmp_path / f"out{seed}"
        assert cli.main(["detect", "--quiet", "--table", "named_flows", "--hunts", "all", "--output", str(out),
                         str(folder)]) == 0
        outputs.append(out)
    first, second = (sorted((out / "verdicts").glob("*.parquet")) for out in outputs)
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    verdicts = pq.read_table(outputs[0] / "verdicts").to_pylist()
    [scan] = [v for v in verdicts if v["key"] == "10.1.0.77"]
    # bucket_score(40 ports, (5, 15, 100, 1000)) = 0.5 + 25/85 · 0.25 = 0.5735... -> 0.574 (three decimals).
    assert (scan["status"], scan["hunt"], scan["hunt_score"]) == (ALARM, "vertical_scan", 0.574)
    assert scan["score"] >= -math.log10(DEFAULT_ALARM_RATE) * 0.574 / 0.5 - 1e-9 and "40 ports of 192.0.2.80" in scan["hunt_evidence"]
    summary = json.loads((outputs[0] / "summary.json").read_text())
    assert summary["hunt_alarms"] >= 1 and summary["hunts"] == ["beacon", "long", "scan", "strobe"]
    none = tmp_path / "none"
    assert cli.main(["detect", "--quiet", "--table", "named_flows", "--output", str(none),  # none: the default
                     str(tmp_path / "logs1")]) == 0
    assert all(v["hunt"] is None for v in pq.read_table(none / "verdicts").to_pylist())
