"""Evaluation: metrics against hand-worked cases and scipy, labels, joins, a generated run."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import mannwhitneyu

from beamlytics import evaluation, schemas
from beamlytics.evaluation import Confusion, confusion, roc_auc


def test_confusion_matrix_hand_worked():
    truth = [1, 1, 1, 0, 0, 0, 0, 1]
    predicted = [1, 0, 1, 1, 0, 0, 0, 0]
    # positives at 0,1,2,7: found 0,2 (tp 2), missed 1,7 (fn 2); false alarm at 3 (fp 1); tn 3
    matrix = confusion(truth, predicted)
    assert matrix == Confusion(tp=2, fp=1, tn=3, fn=2)
    assert matrix.precision == pytest.approx(2 / 3)
    assert matrix.recall == pytest.approx(1 / 2)
    assert matrix.f1 == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # = 4/7


def test_metrics_of_degenerate_matrices():
    nothing_found = confusion([1, 0], [0, 0])
    assert np.isnan(nothing_found.precision) and nothing_found.recall == 0 and nothing_found.f1 == 0
    no_positives = confusion([0, 0], [0, 0])
    assert np.isnan(no_positives.recall) and np.isnan(no_positives.f1)
    with pytest.raises(ValueError):
        confusion([1], [1, 0])


def test_roc_auc_hand_worked_with_a_tie():
    # positives scored 0.9, 0.4; negatives 0.4, 0.1. Pairs: (0.9>0.4) 1, (0.9>0.1) 1,
    # (0.4=0.4) 0.5, (0.4>0.1) 1 -> 3.5/4
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == 0.875
    assert roc_auc([1, 0], [0.0, 1.0]) == 0.0
    assert np.isnan(roc_auc([0, 0, 0], [1, 2, 3]))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_is_mann_whitney_u_over_pairs(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(300) < 0.2
    scores = np.round(rng.normal(truth * 0.8, 1.0), 1)  # rounding makes ties
    u = mannwhitneyu(scores[truth], scores[~truth]).statistic
    assert roc_auc(truth, scores) == pytest.approx(u / (truth.sum() * (~truth).sum()), rel=1e-12)


def test_record_labels_aggregate_to_windows_with_max():
    labels = pd.DataFrame({
        "key": ["a", "a", "a", "b", "b"],
        "time": ["2024-05-01T00:00:05", "2024-05-01T00:00:29", "2024-05-01T00:00:31",
                 "2024-05-01T00:00:10", "2024-05-01T00:00:20"],
        "is_anomaly": [0, 1, 0, 0, 0],
    })
    labels["time"] = evaluation.to_utc(labels["time"])
    windows = evaluation.window_labels(labels, pd.Timedelta("30s"))
    start = pd.Timestamp("2024-05-01T00:00:00", tz="UTC")
    expected = pd.DataFrame({
        "key": ["a", "a", "b"],
        "window_start": [start, start + pd.Timedelta("30s"), start],
        "has_anomaly": [True, False, False],
    })
    pd.testing.assert_frame_equal(windows, expected, check_dtype=False)


def test_read_labels_takes_epoch_seconds_and_refuses_missing_columns(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("key,time,is_anomaly\n10.0.0.1,1714521600.5,1\n")
    labels = evaluation.read_labels(str(path))
    assert labels["time"][0] == pd.Timestamp("2024-05-01T00:00:00.5", tz="UTC")
    bad = tmp_path / "bad.csv"
    bad.write_text("key,label\nx,1\n")
    with pytest.raises(ValueError, match="labels need"):
        evaluation.read_labels(str(bad))


def scores_row(key, start_s, status, eta, ra, threshold=0.7):
    start = pd.Timestamp(1_714_521_600 + start_s, unit="s", tz="UTC")
    evidence = {"eta": eta, **{name: ra for name in evaluation.HEALTH_SCORES}}
    return {"table": "dns", "key_kind": "c_ip", "key": key, "feature": "records", "window_start": start,
            "window_end": start + pd.Timedelta("30s"), "value": 1.0, "detector": "poisson", "status": status,
            "score": eta, "threshold": threshold, "direction": None, "evidence": json.dumps(evidence)}


def write_scores(folder, rows):
    (folder / "scores").mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=schemas.SCORES)
    pq.write_table(table, folder / "scores" / "part-00000.parquet")


def test_scored_run_joined_with_window_labels_and_evaluated(tmp_path):
    rows = [
        scores_row("a", 0, "calibrating", 0.1, 1.0),  # not judged
        scores_row("a", 30, "normal", 0.1, 0.95),  # tn for both
        scores_row("a", 60, "anomaly", 0.6, 0.4),  # tp for both
        scores_row("a", 90, "normal", 0.5, 0.8),  # labelled, missed by Ra (fn), found by eta>0.3 (tp)
        scores_row("b", 30, "anomaly", 0.2, 0.5),  # no label -> normal: fp for Ra, tn for eta
    ]
    write_scores(tmp_path, rows)
    labels = pd.DataFrame({"key": ["a", "a", "a", "a", "c"], "window_start": [60, 90, 30, 600, 0],
                           "is_anomaly": [1, 1, 0, 1, 1]})
    labels["window_start"] = evaluation.to_utc(labels["window_start"] + 1_714_521_600)

    scores = evaluation.read_scores([str(tmp_path)])
    joined, unscored = evaluation.join_labels(scores, labels)
    assert unscored == 2  # (a, 600) and (c, 0) are anomalous but were never scored
    results = {row["score"]: row for row in evaluation.evaluate(joined, eta_threshold=0.3)}
    eta, ra = results["eta"], results["Ra_sigmoid"]
    assert (eta["tp"], eta["fp"], eta["tn"], eta["fn"]) == (2, 0, 2, 0)
    assert (ra["tp"], ra["fp"], ra["tn"], ra["fn"]) == (1, 1, 1, 1)
    assert ra["cut"] == 0.7 and eta["windows"] == 4 and eta["not_judged"] == 1
    # Ra ranked by 1 - Ra: positives 0.6, 0.2; negatives 0.05, 0.5 -> pairs won 1+1+1+0 = 3/4
    assert ra["roc_auc"] == 0.75
    assert eta["roc_auc"] == 1.0


def test_generated_stream_with_injected_bursts(tmp_path):
    """A seeded Poisson series (2/s) with three 2-minute bursts at 6/s, scored in 30-s windows."""
    rng = np.random.default_rng(11)
    seconds = 3600
    rate = np.full(seconds, 2.0)
    burst_starts = [900, 1800, 2700]
    for start in burst_starts:
        rate[start:start + 120] = 6.0
    times = pd.date_range("2024-05-01", periods=seconds, freq="1s", tz="UTC")
    scores = evaluation.series_scores(times, rng.poisson(rate), window_slots=30, key="10.0.0.7")
    labels = pd.DataFrame({"key": "10.0.0.7", "time": times, "is_anomaly": rate > 2.0})
    joined, unscored = evaluation.join_labels(scores, labels)
    assert unscored == 0 and joined["has_anomaly"].sum() == 12
    results = evaluation.results_table(
        {"run": "generated", **row} for row in evaluation.evaluate(joined, eta_threshold=0.3))
    by_score = results.set_index("score")
    assert by_score.loc["eta", "roc_auc"] > 0.95
    assert by_score.loc["Ra_sigmoid", "precision"] > 0.7 and by_score.loc["Ra_sigmoid", "recall"] > 0.6
    csv_path, png_path = evaluation.write_report(results, str(tmp_path / "report"))
    assert pd.read_csv(csv_path)["score"].tolist() == evaluation.SCORE_NAMES
    assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def burst_logs(tmp_path):
    """Generated Zeek logs with a known NXDOMAIN burst and tmp_path/labels.csv per record: (scenario, dns.log)."""
    from beamlytics import synthetic

    scenario = synthetic.Scenario(hours=1, clients=5, queries_per_minute=30, anomalous_client="10.0.0.3",
                                  anomaly_start_minute=30, anomaly_minutes=3)
    dns_log = f"{synthetic.write_zeek_logs(str(tmp_path / 'logs'), scenario)}/dns.log"
    fields = [line.rstrip("\n").split("\t") for line in open(dns_log) if not line.startswith("#")]
    # The burst's queries are exactly the ones that failed (NXDOMAIN).
    pd.DataFrame({"key": [row[2] for row in fields], "time": [float(row[0]) for row in fields],
                  "is_anomaly": [row[15] == "NXDOMAIN" for row in fields]}).to_csv(tmp_path / "labels.csv", index=False)
    return scenario, dns_log


def test_cli_grid_runs_the_detection_and_evaluates_earlier_runs(tmp_path, capsys):
    """`beamlytics evaluate` end to end on generated Zeek logs with a known NXDOMAIN burst."""
    from beamlytics.pipelines import cli

    scenario, dns_log = burst_logs(tmp_path)
    out = tmp_path / "eval"
    common = ["evaluate", "--labels", str(tmp_path / "labels.csv"), "--output", str(out)]
    assert cli.main([*common, "--table", "dns", "--format", "zeek", "--windows", "30s", "--betas", "0.3",
                     dns_log]) == 0
    grid = pd.read_csv(out / "results.csv").set_index("score")
    burst_windows = len(scenario.anomaly_window_starts_us(30_000_000))
    assert (grid["positives"] == burst_windows).all() and (grid["unscored_positives"] == 0).all()
    assert grid.loc["Ra_sigmoid", "recall"] >= 5 / 6 and grid.loc["Ra_sigmoid", "precision"] >= 0.8
    assert "Ra_kalman" in capsys.readouterr().out

    again = tmp_path / "again"
    run_dir = str(out / "runs" / "w30s_b0.3")
    assert cli.main(["evaluate", "--labels", str(tmp_path / "labels.csv"), "--output", str(again),
                     "--scores", run_dir]) == 0
    earlier = pd.read_csv(again / "results.csv").set_index("score")
    pd.testing.assert_series_equal(earlier["roc_auc"], grid["roc_auc"])


def test_cli_needs_inputs_or_scores(tmp_path, capsys):
    from beamlytics.pipelines import cli

    labels = tmp_path / "labels.csv"
    labels.write_text("key,time,is_anomaly\na,0,1\n")
    assert cli.main(["evaluate", "--labels", str(labels), "--output", str(tmp_path / "x")]) == 2
    assert "--scores" in capsys.readouterr().err


def test_cli_grid_parses_the_input_once_and_scores_each_cell_as_detect_does(tmp_path, capsys, monkeypatch):
    """A 2 × 2 grid reads its one log once; each cell's metrics equal those of its own `detect` run."""
    from beamlytics.parsers import formats
    from beamlytics.pipelines import cli

    scenario, dns_log = burst_logs(tmp_path)
    parsed = []
    parse_source = formats.parse_source
    monkeypatch.setattr(formats, "parse_source", lambda source, *rest: parsed.append(source) or
                        parse_source(source, *rest))
    labels = str(tmp_path / "labels.csv")
    grid_out = tmp_path / "grid"
    assert cli.main(["evaluate", "--labels", labels, "--output", str(grid_out), "--table", "dns", "--format", "zeek",
                     "--windows", "30s,60s", "--betas", "0.3,0.5", dns_log]) == 0
    assert [source.path for source in parsed] == [dns_log]
    grid = pd.read_csv(grid_out / "results.csv")
    assert sorted(set(grid["run"])) == ["window=30s beta=0.3", "window=30s beta=0.5", "window=60s beta=0.3",
                                        "window=60s beta=0.5"]

    monkeypatch.setattr(formats, "parse_source", parse_source)
    detected = tmp_path / "detect"
    assert cli.main(["detect", "--table", "dns", "--format", "zeek", "--window", "60s", "--detector", "poisson",
                     "--beta", "0.5", "--output", str(detected), dns_log]) == 0
    alone = tmp_path / "alone"
    assert cli.main(["evaluate", "--labels", labels, "--output", str(alone), "--scores", str(detected),
                     "--eta-threshold", "0.5"]) == 0  # the grid cuts η at the cell's β
    cell = grid[grid["run"] == "window=60s beta=0.5"].set_index("score")
    by_detect = pd.read_csv(alone / "results.csv").set_index("score")
    metrics = ["windows", "positives", "tp", "fp", "tn", "fn", "roc_auc"]
    pd.testing.assert_frame_equal(cell.loc[by_detect.index, metrics], by_detect[metrics])


def test_a_long_result_shows_the_best_rows_on_one_screen():
    rows = [{"run": f"r{i}", "score": "eta", "f1": f1, "roc_auc": 0.5, "tp": i} for i, f1 in
            enumerate([0.1, 0.9, float("nan"), 0.5] * 5)]
    text = evaluation.format_results(evaluation.results_table(rows), shown=3)
    lines = text.splitlines()
    assert lines[0] == "the 3 best of 20 rows by F1, then ROC AUC (all of them in results.csv):"
    assert [line.split()[0] for line in lines[2:]] == ["r1", "r5", "r9"]  # F1 0.9, earliest first
