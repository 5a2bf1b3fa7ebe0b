"""`evaluate` for any detector and for hunts: hand-worked windows, findings and label warnings."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from beamlytics import evaluation
from tests.test_evaluation import burst_logs

T0 = pd.Timestamp("2024-05-01T00:00:00Z")
MINUTE = pd.Timedelta(minutes=1)


def _scores(rows: list[tuple[str, int, str, str, float]]) -> pd.DataFrame:
    """SCORES-like rows: (key, minute, feature, status, score)."""
    return pd.DataFrame({
        "key": [row[0] for row in rows], "window_start": [T0 + row[1] * MINUTE for row in rows],
        "window_end": [T0 + (row[1] + 1) * MINUTE for row in rows], "feature": [row[2] for row in rows],
        "status": [row[3] for row in rows], "score": [row[4] for row in rows],
    })


def _labels(rows: list[tuple[str, int, bool]]) -> pd.DataFrame:
    return pd.DataFrame({"key": [row[0] for row in rows], "window_start": [T0 + row[1] * MINUTE for row in rows],
                         "is_anomaly": [row[2] for row in rows]})


SCORES = _scores([
    ("a", 0, "records", "normal", 1.0), ("a", 0, "distinct_names", "anomaly", 4.0),  # a@0: predicted, best 4
    ("a", 1, "records", "normal", 0.5), ("a", 1, "distinct_names", "normal", math.nan),  # a@1: 0.5
    ("b", 0, "records", "calibrating", 9.0),  # not judged: left out
    ("b", 1, "records", "anomaly", math.inf),  # b@1: predicted, best inf
    ("c", 1, "records", "normal", 2.0),  # c@1: 2
])


def test_detector_windows_one_row_per_judged_window():
    windows = evaluation.detector_windows(SCORES).set_index(["key", "window_start"])
    assert list(windows.index) == [("a", T0), ("a", T0 + MINUTE), ("b", T0 + MINUTE), ("c", T0 + MINUTE)]
    assert windows["predicted"].tolist() == [True, False, True, False]
    assert windows["score"].tolist() == [4.0, 0.5, math.inf, 2.0]


def test_evaluate_detector_hand_worked():
    # Anomalous: a@0 and c@1. Predicted a@0 (tp), b@1 (fp); c@1 missed (fn); a@1 tn.
    labels = _labels([("a", 0, True), ("c", 1, True), ("b", 1, False)])
    metrics, warnings = evaluation.evaluate_detector(SCORES, labels)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (1, 1, 1, 1)
    assert metrics["precision"] == pytest.approx(0.5) and metrics["recall"] == pytest.approx(0.5)
    # Positives score 4 and 2, negatives 0.5 and inf: each positive beats 0.5 and loses to inf → 2 of 4 pairs.
    assert metrics["roc_auc"] == pytest.approx(0.5)
    assert warnings == []


def test_labels_off_the_grid_or_on_unknown_keys_warn():
    labels = pd.DataFrame({"key": ["a", "zz"], "window_start": [T0 + pd.Timedelta(seconds=30), T0],
                           "is_anomaly": [True, True]})
    per_window = evaluation.window_labels(labels, MINUTE)
    warnings = evaluation.label_warnings(per_window, evaluation.detector_windows(SCORES))
    assert len(warnings) == 2
    assert warnings[0].startswith("1 labelled key(s) match no scored endpoint, e.g. 'zz'")
    assert warnings[1].startswith("2 of 2 anomalous labelled window(s) match no scored window")


def test_evaluate_hunts_per_key_hand_worked():
    findings = pd.DataFrame({
        "hunt": ["beacon", "beacon", "beacon", "vertical_scan"],
        "src": ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3"],
        "dst": ["1.1.1.1", "1.1.1.1", "2.2.2.2", "9.9.9.9"],
        "score": [0.3, 0.75, 0.6, 1.0],
    })
    labels = pd.DataFrame({"key": ["10.0.0.1", "10.0.0.3", "10.0.0.4"], "time": [0, 0, 0],
                           "is_anomaly": [1, 1, 0]})
    keys = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    rows, warnings = evaluation.evaluate_hunts(findings, labels, keys)
    beacon, scan = rows
    # beacon: best 10.0.0.1 0.6 (alarm, anomalous: tp), 10.0.0.2 0.75 (fp), 10.0.0.3 none (fn), 10.0.0.4 (tn).
    assert beacon["hunt"] == "beacon" and (beacon["tp"], beacon["fp"], beacon["fn"], beacon["tn"]) == (1, 1, 1, 1)
    # ranking 0.6 (pos) / 0.75 (neg) / 0 (pos) / 0 (neg): pos pairs won 1 + 0 + 0 + 0.5 = 1.5 of 4.
    assert beacon["roc_auc"] == pytest.approx(0.375)
    assert scan["hunt"] == "vertical_scan" and (scan["tp"], scan["fp"], scan["fn"], scan["tn"]) == (1, 0, 1, 2)
    assert warnings == []
    _, warnings = evaluation.evaluate_hunts(findings, labels, keys[:3])
    assert warnings == ["1 labelled key(s) are not in the input, e.g. '10.0.0.4'"]


def test_cli_evaluates_another_detector_on_generated_logs(tmp_path, capsys):
    from beamlytics.pipelines import cli

    scenario, dns_log = burst_logs(tmp_path)
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--labels", str(tmp_path / "labels.csv"), "--output", str(out), "--table", "dns",
                     "--format", "zeek", "--detector", "gaussian", "--windows", "60s", dns_log]) == 0
    result = pd.read_csv(out / "results.csv")
    assert result["score"].tolist() == ["gaussian"] and result["run"].tolist() == ["window=60s"]
    assert result.loc[0, "positives"] == len(scenario.anomaly_window_starts_us(60_000_000))
    assert result.loc[0, "tp"] >= 1  # the NXDOMAIN burst lifts nxdomain_ratio far past mean + 3σ
    assert "gaussian" in capsys.readouterr().out
