"""Windowing and per-endpoint scoring transforms, on batches built in the test."""
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beamlytics import baseline, features, schemas, synthetic
from beamlytics.detectors.endpoint import DetectorConfig, EndpointScorer
from beamlytics.features import WindowSpec
from beamlytics.transforms.score import ScoreEndpoints
from beamlytics.transforms.windows import WindowFeatures
from tests.conftest import collect

MINUTE = 60_000_000


def dns_frame(seed=3, rows=3000):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "c_ip": rng.choice([f"10.0.0.{i}" for i in range(1, 8)], size=rows),
        "s_ip": rng.choice(["10.0.0.53", "8.8.8.8"], size=rows),
        "query": rng.choice([f"n{i}.example" for i in range(40)], size=rows),
        # object dtype: pandas 3 would store the strings as `str` and turn None into NaN.
        "resp_code": pd.Series(rng.choice(["NOERROR", "NXDOMAIN", None], size=rows, p=[0.8, 0.15, 0.05]),
                               dtype=object),
        "req_time": rng.integers(0, 90 * MINUTE, size=rows) + 1_700_000_000_000_000,
    })


def to_batches(frame, size=700):
    batches = []
    for start in range(0, len(frame), size):
        part = frame.iloc[start:start + size]
        columns = {name: part[name].tolist() for name in part.columns}
        columns["resp_time"] = [None if code is None else t for code, t in zip(part["resp_code"], part["req_time"])]
        columns.update(source_tool=["test"] * len(part), source_file=["mem"] * len(part),
                       source_pos=list(range(start + 1, start + len(part) + 1)))
        batches.append(schemas.batch_from_columns(schemas.DNS, columns, len(part)))
    return batches


def reference_features(frame, window_us):
    frame = frame.assign(window_start=frame.req_time - frame.req_time % window_us)
    grouped = frame.groupby(["c_ip", "window_start"])
    return pd.DataFrame({
        "records": grouped.size(),
        "distinct_peers": grouped.s_ip.nunique(),
        "distinct_names": grouped["query"].nunique(),
        "nxdomain_ratio": grouped.resp_code.apply(lambda codes: (codes == "NXDOMAIN").mean()),
        "unanswered_ratio": grouped.resp_code.apply(lambda codes: codes.isna().mean()),
    })


def run_windows(batches, spec, windowing, shards=3):
    tables = collect(lambda pipeline: pipeline | beam.Create(batches) | WindowFeatures(spec, windowing, shards))
    return sorted_windows(pa.concat_tables(tables))


def sorted_windows(table):
    return table.sort_by([("key", "ascending"), ("window_start", "ascending")])


@pytest.mark.parametrize("windowing", ["key", "beam"])
def test_window_features_match_pandas(windowing):
    frame = dns_frame()
    spec = WindowSpec("dns", "c_ip", 5 * MINUTE)
    windows = features.endpoint_windows(run_windows(to_batches(frame), spec, windowing))
    expected = reference_features(frame, 5 * MINUTE)
    assert len(windows) == len(expected)
    for window in windows:
        row = expected.loc[(window.key, window.window_start)]
        assert window.window_end - window.window_start == 5 * MINUTE
        assert window.records == row.records
        for name in ("distinct_peers", "distinct_names", "nxdomain_ratio", "unanswered_ratio"):
            assert window.features[name] == pytest.approx(row[name]), name


def test_both_windowings_give_the_same_windows_with_slots():
    frame = dns_frame(seed=9)
    spec = WindowSpec("dns", "name", MINUTE, slot_us=10_000_000)
    by_key = run_windows(to_batches(frame), spec, "key")
    assert by_key.equals(run_windows(to_batches(frame), spec, "beam"))
    frame = frame.assign(window=frame.req_time - frame.req_time % MINUTE,
                         slot=(frame.req_time % MINUTE) // 10_000_000)
    expected = frame.groupby(["query", "window", "slot"]).size()
    for window in features.endpoint_windows(by_key):
        assert len(window.slot_counts) == 6
        for slot, count in enumerate(window.slot_counts):
            assert count == expected.get((window.key, window.window_start, slot), 0)


def test_features_without_beam_are_the_pipelines_whatever_the_batching_and_sharding():
    frame = dns_frame(seed=11)
    spec = WindowSpec("dns", "c_ip", MINUTE, slot_us=15_000_000)
    in_pipeline = run_windows(to_batches(frame), spec, "key", shards=5)
    shuffled = frame.sample(frac=1.0, random_state=2).reset_index(drop=True)
    plain = features.window_features(to_batches(shuffled, size=97), spec)
    assert plain.equals(in_pipeline)
    assert run_windows(to_batches(frame, size=3000), spec, "key", shards=1).equals(in_pipeline)


def windows_in_pieces(table, seed):
    """The rows of `table` cut into shuffled pieces: windows in any arrival order and grouping."""
    order = np.random.default_rng(seed).permutation(table.num_rows)
    shuffled = table.take(order)
    return [shuffled.slice(start, 37) for start in range(0, table.num_rows, 37)]


def run_scores(tables, config, streaming=False, train_until_us=None):
    collected = collect(lambda pipeline: pipeline | beam.Create(tables)
                        | ScoreEndpoints(config, train_until_us, streaming=streaming))
    return sorted(pa.concat_tables(collected).to_pylist(), key=score_order)


def score_order(row):
    return row["key"], row["window_start"], row["feature"]


def scored_one_by_one(windows, config, training=()):
    """The reference: each endpoint's windows scored one by one, oldest first, by `EndpointScorer`."""
    rows = []
    for key in sorted({w.key for w in windows}):
        scorer = EndpointScorer(config)
        baseline = [w for w in training if w.key == key]
        if baseline:
            scorer.fit(baseline)
        for window in sorted((w for w in windows if w.key == key), key=lambda w: w.window_start):
            rows.extend(scorer.score(window))
    return sorted(pa.Table.from_pylist(rows, schema=schemas.ANOMALIES).to_pylist(), key=score_order)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("detector, params", [
    ("gaussian", {"k": 2.0, "n_init": 5}),
    ("gaussian", {"k": 2.0, "n_init": 5, "discard_anomalies": False}),
    ("iqr", {"k": 1.0, "n_init": 5}),
])
def test_scoring_is_in_event_time_order_whatever_the_arrival_order(streaming, detector, params):
    frame = dns_frame(seed=4, rows=6000)
    spec = WindowSpec("dns", "c_ip", MINUTE)
    windows = run_windows(to_batches(frame), spec, "key")
    config = DetectorConfig(detector, params, ("records", "nxdomain_ratio"))
    expected = scored_one_by_one(features.endpoint_windows(windows), config)
    assert run_scores(windows_in_pieces(windows, seed=1), config, streaming) == expected
    assert any(row["status"] == "anomaly" for row in expected)  # the comparison covered anomalies too


@pytest.mark.parametrize("detector, params", [("spot", {"n_init": 20, "q": 1e-2}), ("dspot", {"n_init": 20, "depth": 5}),
                                              ("poisson", {"slot_seconds": 5.0})])
def test_every_detector_scores_a_table_as_window_by_window(detector, params):
    spec = WindowSpec("dns", "c_ip", MINUTE, slot_us=5_000_000)
    windows = run_windows(to_batches(dns_frame(seed=8, rows=9000)), spec, "key")
    chosen = ("records",) if detector == "poisson" else ("records", "distinct_names")
    config = DetectorConfig(detector, params, chosen)
    training_until = windows.column("window_start")[0].value + 20 * MINUTE
    early = [w for w in features.endpoint_windows(windows) if w.window_end <= training_until]
    later = [w for w in features.endpoint_windows(windows) if w.window_end > training_until]
    expected = scored_one_by_one(later, config, early)
    assert run_scores(windows_in_pieces(windows, seed=2), config, train_until_us=training_until) == expected
    assert {row["status"] for row in expected} - {"calibrating"}  # beyond calibration


def test_training_windows_calibrate_and_are_not_scored():
    spec = WindowSpec("dns", "c_ip", MINUTE)
    windows = run_windows(to_batches(dns_frame(seed=5)), spec, "key")
    config = DetectorConfig("gaussian", {"n_init": 3}, ("records",))
    first_key = windows.column("key")[0].as_py()
    own = windows.filter(pc.equal(windows.column("key"), first_key))
    training = features.table_of_windows([w._replace(train=True) for w in features.endpoint_windows(own.slice(0, 10))],
                                         "dns")
    rows = run_scores([training, own.slice(10)], config)

    scorer = EndpointScorer(config)
    scorer.fit(features.endpoint_windows(training))
    reference = [row for window in features.endpoint_windows(own.slice(10)) for row in scorer.score(window)]
    assert rows == sorted(pa.Table.from_pylist(reference, schema=schemas.ANOMALIES).to_pylist(), key=score_order)
    assert rows and all(row["status"] != "calibrating" for row in rows)


def test_feature_tables_round_trip_for_baselines():
    spec = WindowSpec("dns", "c_ip", MINUTE, slot_us=MINUTE // 4)
    windows = run_windows(to_batches(dns_frame(seed=6, rows=500)), spec, "key")
    written = windows.select(features.feature_schema("dns").names)
    back = features.table_of_windows(list(baseline.baseline_windows(written, spec, "mem")), "dns")
    assert back.column("train").to_pylist() == [True] * windows.num_rows
    assert back.drop_columns(["train"]).equals(written)
    assert features.endpoint_windows(back) == [w._replace(train=True) for w in features.endpoint_windows(windows)]


def test_readme_pipeline_and_plain_python_examples_agree(tmp_path, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## In your own pipeline"):readme.index("## Runners")]
    in_pipeline, plain = [block.split("\n", 1)[1] for block in section.split("```")[1::2]]
    logs = tmp_path / "zeek"
    synthetic.write_zeek_logs(str(logs), synthetic.Scenario(hours=4, clients=5, anomalous_client="10.0.0.3",
                                                            anomaly_start_minute=40, anomaly_minutes=5))
    names = {}
    exec(in_pipeline.replace("demo-out/zeek", str(logs)), names)
    printed = sorted(capsys.readouterr().out.splitlines())
    exec(plain.replace("demo-out/zeek", str(logs)), names)
    found = names["reported"].to_pylist()
    assert printed and printed == sorted(f"{r['key']} {r['window_start']} {r['feature']} {r['value']}" for r in found)


def test_one_grouping_writes_folders_the_summary_and_the_empty_table_marker(tmp_path):
    from beamlytics.transforms.write import EmptyTableFile, SortedFolder, SummaryFile, WriteOutputs

    rows = [{"source_file": f"f{i % 2}", "position": i, "reason": "bad", "excerpt": "x", "source_tool": "t"}
            for i in (3, 1, 2)]
    pairs = [("read", 5), ("parsed", 2), ("rejected", 2), ("rejected_by_reason/bad", 2), ("read", 1)]
    with beam.Pipeline() as pipeline:
        folder_rows = pipeline | "Rows" >> beam.Create(rows)
        counts = pipeline | "Counts" >> beam.Create(pairs)
        no_batches = pipeline | "NoBatches" >> beam.Create([pa.record_batch({"a": [1]})]) | beam.Filter(lambda _: False)
        _ = (folder_rows, counts, no_batches) | WriteOutputs([
            SortedFolder(str(tmp_path / "rejected"), schemas.REJECTED, ("source_file", "position"), 2),
            SummaryFile(str(tmp_path / "summary.json"), {"table": "dns"}, ("windows",)),
            EmptyTableFile(str(tmp_path / "dns"), "dns"),
        ])
    written = [pq.read_table(tmp_path / "rejected" / f"part-0000{shard}-of-00002.parquet")
               for shard in (0, 1)]
    by_shard = {features.stable_shard(name, 2): name for name in ("f0", "f1")}
    for shard, table in enumerate(written):  # each file holds its shard's rows, sorted by position
        expected = sorted(row["position"] for row in rows if by_shard.get(shard) == row["source_file"])
        assert table.column("position").to_pylist() == expected
    summary = json.loads((tmp_path / "summary.json").read_text())
    # read 6 = parsed 2 + rejected 2 + 2 lost; the zero count is there although nothing counted it.
    assert summary == {"table": "dns", "read": 6, "parsed": 2, "rejected": 2, "windows": 0, "unaccounted": 2,
                       "rejected_by_reason": {"bad": 2}, "notes": summary["notes"]}
    assert pq.read_table(tmp_path / "dns" / "empty.parquet").schema == schemas.DNS


def test_the_empty_table_marker_is_not_written_when_there_are_rows(tmp_path):
    from beamlytics.transforms.write import EmptyTableFile

    marker = EmptyTableFile(str(tmp_path), "dns")
    assert marker.write_shard(0, [None, 0, 3]) is None
    assert not (tmp_path / "empty.parquet").exists()
