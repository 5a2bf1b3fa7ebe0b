"""Windowing and per-endpoint scoring transforms, on batches built in the test."""
import random

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from beamlytics import features, schemas
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


def run_windows(batches, spec, windowing):
    return collect(lambda pipeline: pipeline | beam.Create(batches) | WindowFeatures(spec, windowing))


@pytest.mark.parametrize("windowing", ["key", "beam"])
def test_window_features_match_pandas(windowing):
    frame = dns_frame()
    spec = WindowSpec("dns", "c_ip", 5 * MINUTE)
    windows = run_windows(to_batches(frame), spec, windowing)
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
    by_key = sorted(run_windows(to_batches(frame), spec, "key"))
    by_beam = sorted(run_windows(to_batches(frame), spec, "beam"))
    assert by_key == by_beam
    for window in by_key:
        assert sum(window.slot_counts) == window.records and len(window.slot_counts) == 6


def run_scores(windows, config, streaming=False):
    collected = collect(lambda pipeline: pipeline | beam.Create(windows) | ScoreEndpoints(config, streaming=streaming))
    return sorted(collected, key=lambda row: (row["key"], row["window_start"], row["feature"]))


@pytest.mark.parametrize("streaming", [False, True])
def test_scoring_is_in_event_time_order_whatever_the_arrival_order(streaming):
    frame = dns_frame(seed=4, rows=6000)
    spec = WindowSpec("dns", "c_ip", MINUTE)
    windows = run_windows(to_batches(frame), spec, "key")
    config = DetectorConfig("gaussian", {"k": 2.0, "n_init": 5}, ("records", "nxdomain_ratio"))

    # The reference: each endpoint's windows scored one by one, oldest first, without Beam.
    expected = []
    for key in sorted({w.key for w in windows}):
        scorer = EndpointScorer(config)
        for window in sorted((w for w in windows if w.key == key), key=lambda w: w.window_start):
            expected.extend(scorer.score(window))
    expected.sort(key=lambda row: (row["key"], row["window_start"], row["feature"]))

    shuffled = list(windows)
    random.Random(1).shuffle(shuffled)
    assert run_scores(shuffled, config, streaming) == expected
    assert any(row["status"] == "anomaly" for row in expected)  # the comparison covered anomalies too


def test_training_windows_calibrate_and_are_not_scored():
    spec = WindowSpec("dns", "c_ip", MINUTE)
    windows = run_windows(to_batches(dns_frame(seed=5)), spec, "key")
    config = DetectorConfig("gaussian", {"n_init": 3}, ("records",))
    first_key = min(w.key for w in windows)
    own = sorted((w for w in windows if w.key == first_key), key=lambda w: w.window_start)
    training, judged = own[:10], own[10:]
    rows = run_scores([w._replace(train=True) for w in training] + judged, config)

    scorer = EndpointScorer(config)
    scorer.fit(training)
    assert rows == [row for window in judged for row in scorer.score(window)]
    assert all(row["status"] != "calibrating" for row in rows)


def test_feature_rows_round_trip_for_baselines():
    spec = WindowSpec("dns", "c_ip", MINUTE, slot_us=MINUTE // 4)
    windows = run_windows(to_batches(dns_frame(seed=6, rows=500)), spec, "key")
    table = pa.Table.from_pylist([features.feature_row(w) for w in windows],
                                                    schema=features.feature_schema("dns"))
    back = [features.window_from_row(row, spec) for row in table.to_pylist()]
    assert sorted(back) == sorted(windows)
