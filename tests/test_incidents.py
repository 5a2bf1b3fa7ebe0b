"""Incidents: merging reported verdicts, usual values, the records behind them."""
import hashlib
import json
import math
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamlytics import features, schemas, synthetic
from beamlytics.pipelines import cli
from beamlytics.report import incidents
from beamlytics.transforms.write import parquet_bytes

MINUTE = 60_000_000
T0 = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z


def anomaly(key, start_minute, feature="records", minutes=1, score=1.0, value=10.0, direction="up",
            threshold=5.0, detector="gaussian", start_us=None):
    start = T0 + start_minute * MINUTE if start_us is None else start_us
    return {"table": "dns", "key_kind": "c_ip", "key": key, "feature": feature, "window_start": start,
            "window_end": start + minutes * MINUTE, "value": value, "detector": detector, "status": "anomaly",
            "score": score, "threshold": threshold, "direction": direction,
            "evidence": json.dumps({"mean": 2.0, "std": 1.0, "n": 30}), "params": '{"k": 3.0}', "records": int(value)}


def verdict(key, start_minute, fired=("records",), minutes=1, score=1.0, value=10.0, threshold=5.0,
            status="alarm", allowed=False, detector="gaussian", start_us=None, judged_by="own history"):
    """A verdicts/ row: each feature of `fired` fired with p = 10^-score, the later ones ten times less significant."""
    start = T0 + start_minute * MINUTE if start_us is None else start_us
    p = None if score is None else 10.0 ** -score
    evidence = [{"feature": feature, "fired": status == "alarm", "value": value, "expected": 2.0,
                 "threshold": threshold, "p_value": None if p is None else p * 10 ** rank, "judged_by": judged_by}
                for rank, feature in enumerate(fired)]
    return {"table": "dns", "key_kind": "c_ip", "key": key, "window_start": start, "window_end": start + minutes * MINUTE,
            "records": int(value), "detector": detector, "status": status, "reason": None, "allowed": allowed,
            "p_value": p, "score": score, "features_fired": list(fired) if status == "alarm" else [],
            "evidence": evidence}


def spans_of(rows):
    return [(span.key, (span.start_us - T0) // MINUTE, (span.end_us - T0) // MINUTE, len(span.rows))
            for span in incidents.merge_windows(rows)]


def test_adjacent_windows_merge_and_a_gap_splits():
    rows = [verdict("10.0.0.1", minute) for minute in (0, 1, 2, 4, 5)]
    assert spans_of(rows) == [("10.0.0.1", 0, 3, 3), ("10.0.0.1", 4, 6, 2)]


def test_overlapping_windows_merge():
    # Sliding 2-minute windows every 30 s overlap; a window starting at the end of the last one still joins.
    starts = [T0, T0 + MINUTE // 2, T0 + 2 * MINUTE + MINUTE // 2]
    rows = [verdict("10.0.0.1", 0, minutes=2, start_us=start) for start in starts]
    spans = incidents.merge_windows(rows)
    assert [(s.start_us, s.end_us) for s in spans] == [(T0, T0 + 4 * MINUTE + MINUTE // 2)]


def test_several_features_of_one_window_are_one_incident_of_one_window():
    features_fired = ("nxdomain_ratio", "records", "distinct_names")
    feature_rows = [anomaly("10.0.0.1", 3, feature) for feature in features_fired]
    [span] = incidents.merge_windows([verdict("10.0.0.1", 3, features_fired)], feature_rows)
    assert span.window_starts == [T0 + 3 * MINUTE]
    assert len(span.rows) == 1 and len(span.feature_rows) == 3
    assert list(span.fired()) == list(features_fired)  # most significant first, as the verdict ranks them


def test_endpoints_never_merge_even_when_their_windows_interleave():
    rows = [verdict("10.0.0.1", 0), verdict("10.0.0.2", 1), verdict("10.0.0.1", 1), verdict("10.0.0.2", 2)]
    assert spans_of(rows) == [("10.0.0.1", 0, 2, 2), ("10.0.0.2", 1, 3, 2)]


def test_shuffled_input_gives_the_same_incidents():
    rows = [verdict(f"10.0.0.{host}", minute) for host in range(1, 5) for minute in (0, 1, 3, 7, 8, 9)]
    feature_rows = [anomaly(row["key"], (row["window_start"] - T0) // MINUTE, feature)
                    for row in rows for feature in ("records", "distinct_names")]
    reference = [(s.incident_id, s.start_us, s.end_us, [(r["window_start"], r["feature"]) for r in s.feature_rows])
                 for s in incidents.merge_windows(rows, feature_rows)]
    for seed in range(5):
        shuffled, shuffled_features = rows[:], feature_rows[:]
        random.Random(seed).shuffle(shuffled)
        random.Random(seed + 1).shuffle(shuffled_features)
        assert [(s.incident_id, s.start_us, s.end_us, [(r["window_start"], r["feature"]) for r in s.feature_rows])
                for s in incidents.merge_windows(shuffled, shuffled_features)] == reference
    assert len(reference) == 4 * 3  # per host: minutes 0-1, 3, 7-9


def test_incident_id_is_a_hash_of_the_endpoint_and_start():
    [span] = incidents.merge_windows([verdict("10.0.0.9", 2)])
    start = T0 + 2 * MINUTE
    assert span.incident_id == hashlib.sha1(f"dns|c_ip|10.0.0.9|{start}".encode()).hexdigest()[:16]


def test_peak_is_the_highest_score_and_a_missing_score_ranks_last():
    rows = [verdict("h", 0, score=None), verdict("h", 1, score=2.5), verdict("h", 2, score=2.5)]
    [span] = incidents.merge_windows(rows)
    peak = span.peak()
    assert (peak["window_start"], peak["score"]) == (T0 + MINUTE, 2.5)  # ties: the earliest window


def feature_table(rows):
    """features/ rows for dns: (key, minute, records, distinct_names)."""
    names = features.FEATURES["dns"]
    full = []
    for key, minute, records, distinct in rows:
        row = {"table": "dns", "key_kind": "c_ip", "key": key, "window_start": T0 + minute * MINUTE,
               "window_end": T0 + (minute + 1) * MINUTE, "records": records, "slot_counts": None}
        row.update({name: 0.0 for name in names if name != "records"})
        row["distinct_names"] = float(distinct)
        full.append(row)
    return pa.Table.from_pylist(full, schema=features.feature_schema("dns"))


def test_usual_is_the_median_of_the_endpoints_earlier_normal_windows():
    table = feature_table([("a", 0, 2, 1), ("a", 1, 4, 3), ("a", 2, 9, 5), ("a", 3, 100, 90), ("a", 4, 1, 1),
                           ("b", 0, 20, 20), ("b", 1, 30, 30)])
    anomalous = {("dns", "c_ip", "a", T0 + 2 * MINUTE), ("dns", "c_ip", "a", T0 + 3 * MINUTE)}
    usual = incidents.UsualValues(table, anomalous, ["records", "distinct_names"])
    medians, source = usual.before(("dns", "c_ip", "a"), T0 + 3 * MINUTE)
    # Earlier normal windows of a: minutes 0 and 1 (minute 2 was anomalous, minute 4 is later).
    assert (medians, source) == ({"records": 3.0, "distinct_names": 2.0}, "own history")


def test_a_new_host_is_compared_with_the_population_median():
    table = feature_table([("a", 0, 2, 1), ("a", 1, 4, 3), ("b", 0, 20, 20), ("new", 5, 500, 400)])
    usual = incidents.UsualValues(table, {("dns", "c_ip", "new", T0 + 5 * MINUTE)}, ["records", "distinct_names"])
    medians, source = usual.before(("dns", "c_ip", "new"), T0 + 5 * MINUTE)
    assert (medians, source) == ({"records": 4.0, "distinct_names": 3.0}, "population median")


def test_measures_take_the_most_extreme_window_in_the_fired_direction():
    rows = feature_table([("a", 0, 3, 2), ("a", 1, 50, 40), ("a", 2, 70, 30), ("a", 3, 1, 1)]).to_pylist()
    [span] = incidents.merge_windows([verdict("a", 1), verdict("a", 2, ("distinct_names",), threshold=35.0)],
                                     [anomaly("a", 1), anomaly("a", 2, "distinct_names", direction="down")])
    result = {m.feature: m for m in incidents.measures(span, rows, {"records": 3.0}, ["records", "distinct_names"])}
    assert (result["records"].peak, result["records"].usual, result["records"].fired) == (70.0, 3.0, True)
    assert (result["distinct_names"].peak, result["distinct_names"].threshold) == (30.0, 35.0)


def dns_batch(rows):
    """(c_ip, s_ip, query, minute offset in seconds, file, position) → a dns batch."""
    columns = {
        "c_ip": [r[0] for r in rows], "s_ip": [r[1] for r in rows], "query": [r[2] for r in rows],
        "s_port": [53] * len(rows), "req_time": [T0 + int(r[3] * 1e6) for r in rows],
        "source_tool": ["zeek"] * len(rows), "source_file": [r[4] for r in rows], "source_pos": [r[5] for r in rows],
    }
    return schemas.batch_from_columns(schemas.DNS, columns, len(rows))


def test_tally_keeps_only_the_endpoints_records_inside_the_incident():
    spans = incidents.merge_windows([verdict("a", 1), verdict("b", 1)])
    batch = dns_batch([
        ("a", "r1", "x.evil.test", 59, "f1", 1),  # before the incident
        ("a", "r1", "y.evil.test", 60, "f1", 2),
        ("a", "r2", "y.evil.test", 90, "f1", 5),
        ("c", "r1", "z.evil.test", 90, "f1", 6),  # another host
        ("a", "r1", "w.evil.test", 119, "f2", 7),
        ("a", "r1", "v.evil.test", 120, "f2", 9),  # after the incident
        ("b", "r3", "ok.test", 100, "f1", 8),
    ])
    tally_a, tally_b = incidents.tally_records([batch], features.WindowSpec("dns"), spans)
    assert tally_a.records == 3
    assert incidents._top(tally_a.peers) == [{"value": "r1", "count": 2}, {"value": "r2", "count": 1}]
    assert tally_a.files == {"f1": [2, 5, 2], "f2": [7, 7, 1]}
    assert (tally_b.records, tally_b.files) == (1, {"f1": [8, 8, 1]})


def anomaly_table(rows):
    return pa.Table.from_pylist(rows, schema=schemas.ANOMALIES)


def verdict_table(rows):
    return pa.Table.from_pylist(rows, schema=schemas.VERDICTS)


def test_incidents_are_ranked_by_peak_verdict_score_and_written_identically_whatever_the_order():
    rows = [verdict("a", 1, score=2.0), verdict("a", 2, score=9.0), verdict("b", 1, score=5.0)]
    features_rows = [anomaly(row["key"], (row["window_start"] - T0) // MINUTE, score=row["score"]) for row in rows]
    table = feature_table([("a", 0, 2, 2), ("a", 1, 10, 8), ("a", 2, 12, 9), ("b", 0, 3, 3), ("b", 1, 10, 10)])
    first = incidents.build_incidents(verdict_table(rows), anomaly_table(features_rows), table, 60.0, None)
    assert first.column("key").to_pylist() == ["a", "b"]
    assert first.column("rank").to_pylist() == [1, 2]
    assert first.column("peak_score").to_pylist() == [9.0, 5.0]
    assert first.column("windows").to_pylist() == [2, 1]
    again = incidents.build_incidents(verdict_table(rows[::-1]), anomaly_table(features_rows[::-1]),
                                      table.take([4, 2, 0, 1, 3]), 60.0, None)
    assert parquet_bytes(again) == parquet_bytes(first)


def test_only_reported_verdicts_make_incidents_and_a_suppressed_window_splits_them():
    # Minutes 0-1 alarm, minute 2 is an alarm the allow-list suppressed, minute 3 alarms, minute 4 is normal.
    rows = [verdict("a", 0), verdict("a", 1, score=3.0), verdict("a", 2, allowed=True), verdict("a", 3),
            verdict("a", 4, status="normal"), verdict("b", 0, allowed=True)]
    table = feature_table([("a", minute, 10, 5) for minute in range(5)] + [("b", 0, 10, 5)])
    found = incidents.build_incidents(verdict_table(rows), anomaly_table([]), table, 60.0, None).to_pylist()
    assert [(row["key"], (incidents.micros(row["start"]) - T0) // MINUTE, (incidents.micros(row["end"]) - T0) // MINUTE,
             row["windows"], row["peak_score"]) for row in found] == [("a", 0, 2, 2, 3.0), ("a", 3, 4, 1, 1.0)]
    # The alarm level each fired feature crossed comes from its verdict, in the feature's own units.
    assert [m["threshold"] for m in found[0]["measures"] if m["fired"]] == [5.0]


# An hour of 6 clients is ~360 endpoint-windows: a 5-minute burst is ~1 % of the population, above the
# default alarm rate (0.005), so these small fixtures allow 2 %.
ALARM_RATE = "0.02"
SCENARIO = synthetic.Scenario(hours=1, clients=6, anomalous_client="10.0.0.4", anomaly_start_minute=40,
                              anomaly_minutes=3)


def detect_synthetic(tmp_path_factory, detector, extra_lines=None, alarm_rate=ALARM_RATE):
    """Synthetic Zeek logs of SCENARIO (plus `extra_lines`: name -> text beside them), detected: (logs, out)."""
    logs = tmp_path_factory.mktemp("zeek")
    synthetic.write_zeek_logs(str(logs), SCENARIO)
    for name, text in (extra_lines or {}).items():
        (logs / SCENARIO.day.isoformat() / name).write_text(text)
    out = tmp_path_factory.mktemp("out")
    assert cli.main(["detect", "--table", "dns", "--alarm-rate", alarm_rate, "--detector", detector,
                     "--output", str(out), str(logs)]) == 0
    return logs, out


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    return detect_synthetic(tmp_path_factory, "poisson")


def raw_dns_lines(path, client, start_us, end_us):
    """Line numbers of `client`'s queries in [start, end), read straight from the Zeek TSV."""
    found = []
    for number, line in enumerate(open(path, encoding="utf-8"), 1):
        if line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        micros = int(fields[0].replace(".", ""))
        if fields[2] == client and start_us <= micros < end_us:
            found.append((number, fields[9]))
    return found


def test_detect_writes_one_incident_for_the_burst_pointing_at_its_lines(detected):
    logs, out = detected
    [incident] = pq.read_table(out / "incidents").to_pylist()
    burst = SCENARIO.anomaly_window_starts_us(MINUTE)
    assert incident["key"] == SCENARIO.anomalous_client
    assert incidents.micros(incident["start"]) == burst[0]
    assert incidents.micros(incident["end"]) == burst[-1] + MINUTE
    dns_log = logs / SCENARIO.day.isoformat() / "dns.log"
    lines = raw_dns_lines(dns_log, SCENARIO.anomalous_client, burst[0], burst[-1] + MINUTE)
    assert incident["records"] == len(lines)
    assert incident["record_files"] == [{"source_file": str(dns_log), "first_pos": lines[0][0],
                                         "last_pos": lines[-1][0], "records": len(lines)}]
    assert incident["distinct_names"] == len({name for _, name in lines})
    tunnel = sum(name.endswith(SCENARIO.tunnel_domain) for _, name in set(lines))
    assert incident["top_domains"][0] == {"value": "example.net", "count": tunnel}
    records = incidents.incident_records(incident, incidents.Inputs((str(dns_log),)))
    assert list(zip(records.column("source_pos").to_pylist(), records.column("query").to_pylist())) == lines


def test_the_finished_output_holds_what_its_manifest_lists_and_no_kept_records(detected):
    from beamlytics.manifest import MANIFEST

    out = detected[1]
    listed = {entry["path"] for entry in json.loads((out / MANIFEST).read_text())["files"]}
    present = {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file() and path.name != MANIFEST}
    assert present == listed and not any(".beamlytics-evidence" in name for name in present)


def test_incidents_record_the_inputs_for_show(detected):
    logs, out = detected
    metadata = pq.read_schema(next((out / "incidents").glob("*.parquet"))).metadata
    inputs = incidents.Inputs.from_json(metadata[incidents.INPUTS_METADATA])
    assert set(inputs.paths) == {str(path) for path in (logs / SCENARIO.day.isoformat()).iterdir()}
    assert inputs.format == "auto"


def test_distinct_values_stop_being_tracked_at_the_bound_and_the_counts_say_so(monkeypatch):
    monkeypatch.setattr(incidents, "TRACKED_VALUES", 3)
    spans = incidents.merge_windows([verdict("a", 0)])
    batch = dns_batch([("a", "r1", name, second, "f", second + 1)
                       for second, name in enumerate(["n1", "n2", "n1", "n3", "n4", "n5", "n1"])])
    [tally] = incidents.tally_records([batch], features.WindowSpec("dns"), spans)
    assert dict(tally.names) == {"n1": 3, "n2": 1, "n3": 1}  # n4, n5 came after the bound
    assert tally.names.full and not tally.peers.full
    assert tally.records == 7
    row = incidents._tally_columns(tally, spans[0])
    assert (row["distinct_names"], row["distinct_exact"]) == (3, False)


def test_without_the_kept_records_inputs_are_not_parsed_again_and_records_stay_unknown(detected, tmp_path):
    from beamlytics.report import folder

    out = shutil.copytree(detected[1], tmp_path / "out")  # the module's run stays as it was
    # A finished output holds no kept records (an older one never did); its inputs are still there.
    found = folder.write_incidents(str(out), incidents.Inputs(tuple(map(str, detected[0].rglob("*.log")))))
    assert found.column("records").to_pylist() == [None]
    assert found.column("record_files").to_pylist() == [None]


def test_span_records_are_each_spans_records_in_batch_order():
    # Unsorted times, untimed and keyless records, spans that overlap and spans on absent keys.
    rng = random.Random(5)
    keys = [rng.choice(["a", "b", "c", None]) for _ in range(400)]
    times = [None if rng.random() < 0.05 else T0 + rng.randrange(30 * MINUTE) for _ in range(400)]
    batch = pa.record_batch({"c_ip": pa.array(keys, pa.string()), "req_time": pa.array(times, schemas.TIMESTAMP),
                             "row": pa.array(range(400))})
    spans = [incidents.Span("dns", "c_ip", key, T0 + first * MINUTE, T0 + end * MINUTE)
             for key, first, end in [("a", 0, 5), ("b", 3, 9), ("a", 4, 30), ("z", 0, 30), ("c", 29, 31), ("c", 40, 41)]]
    spec = features.WindowSpec("dns", "c_ip", MINUTE)
    got = {index: records.column("row").to_pylist() for index, records in incidents.span_records(batch, spec, spans)}
    expected = {}
    for index, span in enumerate(spans):
        rows = [row for row, (key, time) in enumerate(zip(keys, times))
                if key == span.key and time is not None and span.start_us <= time < span.end_us]
        if rows:
            expected[index] = rows
    assert got == expected
    assert sorted(expected) == [0, 1, 2, 4]


def http_batch(rows):
    """(c_ip, user agent, second) → an http batch of one file, positions in order."""
    columns = {"c_ip": [r[0] for r in rows], "s_ip": ["10.9.9.9"] * len(rows), "s_port": [80] * len(rows),
               "host": ["site.test"] * len(rows), "user_agent": [r[1] for r in rows],
               "req_time": [T0 + r[2] * 1_000_000 for r in rows], "source_tool": ["zeek"] * len(rows),
               "source_file": ["http.log"] * len(rows), "source_pos": list(range(1, len(rows) + 1))}
    return schemas.batch_from_columns(schemas.HTTP, columns, len(rows))


def test_the_rarest_user_agent_of_an_http_incident_is_counted_over_the_whole_run():
    browser = "Mozilla/5.0 (Windows NT 10.0)"
    batches = [
        http_batch([("a", browser, 10), ("b", browser, 20), ("c", browser, 30), ("a", "evil/1.0", 70),
                    ("a", "evil/1.0", 80), ("a", browser, 90), ("c", "curl/8", 95)]),
        http_batch([("b", "curl/8", 100), ("a", "curl/8", 110), ("d", None, 115), (None, "ghost", 116)]),
    ]
    rarity = incidents.AgentRarity()
    for batch in batches:
        rarity.add(batch)
    # Clients per agent, counted by hand: the browser a, b, c; curl c, b, a; evil a. Nulls count for nothing.
    assert {agent: len(clients) for agent, clients in rarity.clients.items()} == {browser: 3, "curl/8": 3,
                                                                                  "evil/1.0": 1}
    assert rarity.all_clients == {"a", "b", "c"}
    assert rarity.rarest({browser: 1, "curl/8": 1, "evil/1.0": 2, "never seen": 9}) == ("evil/1.0", 2, 1)

    alarm = verdict("a", 1, ("records",), value=4.0)  # a's minute 1: seconds 60-119
    found = incidents.build_incidents(
        pa.Table.from_pylist([{**alarm, "table": "http"}], schema=schemas.VERDICTS),
        pa.Table.from_pylist([], schema=schemas.ANOMALIES), features.feature_schema("http").empty_table(),
        60.0, iter(batches)).to_pylist()
    assert found[0]["records"] == 4
    assert ('Its rarest user agent, "evil/1.0" (2 requests), is sent by 1 of the 3 clients of the run that send one. Why:'
            in found[0]["evidence"])


@pytest.mark.parametrize("size", [1, 2, 3, 10, 11, 1000])
def test_median_is_numpys_median_bit_for_bit(size):
    rng = np.random.default_rng(size)
    for values in (rng.normal(size=size) * 1e6, rng.integers(0, 5, size=size).astype(float)):
        assert incidents.median(values) == float(np.median(values))
        assert math.isnan(incidents.median(np.append(values, math.nan)))


def test_tallies_of_many_incidents_at_once_match_a_record_by_record_count(monkeypatch):
    # Several incidents per endpoint, records in many small batches, nulls, and a bound that cuts some.
    monkeypatch.setattr(incidents, "TRACKED_VALUES", 2)
    monkeypatch.setattr(incidents, "CHUNK_ROWS", 70)  # the chunks' seams fall inside batches' runs too
    rng = random.Random(11)
    rows = [(rng.choice(["a", "b", "c", "d", None]), rng.choice(["r1", "r2", "r3", "r4", "r5", "r6", None]),
             f"n{rng.randrange(8)}.test", rng.randrange(40 * 60), rng.choice(["f1", "f2"]), position)
            for position in range(600)]
    batches = [dns_batch(rows[i:i + 25]) for i in range(0, len(rows), 25)]
    spans = incidents.merge_windows([verdict(key, minute) for key in "abc" for minute in range(40)
                                     if rng.random() < 0.3])
    tallies = incidents.tally_records(batches, features.WindowSpec("dns"), spans)
    for span, tally in zip(spans, tallies):
        mine = [row for row in rows if row[0] == span.key and span.start_us <= T0 + row[3] * 1_000_000 < span.end_us]
        peers, names, full = {}, {}, {"peers": False, "names": False}
        for counter, column, label in ((peers, 1, "peers"), (names, 2, "names")):
            for row in mine:
                value = row[column]
                if value is None:
                    continue
                if value in counter or len(counter) < 2:
                    counter[value] = counter.get(value, 0) + 1
                else:
                    full[label] = True
        files = {}
        for row in mine:
            first, last, count = files.get(row[4], (row[5], row[5], 0))
            files[row[4]] = [min(first, row[5]), max(last, row[5]), count + 1]
        assert (tally.records, dict(tally.peers), dict(tally.names), tally.files) == (len(mine), peers, names, files)
        assert (tally.peers.full, tally.names.full) == (full["peers"], full["names"])
    assert sum(tally.records for tally in tallies) > 50 and any(tally.names.full for tally in tallies)


def test_user_agents_past_the_bound_are_the_same_from_one_batch_or_many_chunks(monkeypatch):
    # The tally hands the agents tables of unjoined batches; which pairs are kept past the bound must not change
    # (the group-by's order of pairs depends on the chunks for some of these inputs, not all).
    monkeypatch.setattr(incidents, "TRACKED_VALUES", 50)
    for seed in range(4):
        for rows in (200, 20_000):
            rng = np.random.default_rng(seed)
            joined = pa.record_batch({"user_agent": pa.array([f"agent{n}" for n in rng.integers(0, 30, rows)]),
                                      "c_ip": pa.array([f"10.0.0.{n}" for n in rng.integers(0, 60, rows)])})
            one, many = incidents.AgentRarity(), incidents.AgentRarity()
            one.add(joined)
            many.add(pa.Table.from_batches(pa.Table.from_batches([joined]).to_batches(max_chunksize=37)))
            assert one.pairs == many.pairs == 50
            assert dict(one.clients) == dict(many.clients) and one.all_clients == many.all_clients
