"""How well a detector or a hunt finds labelled anomalies: labels, joins, metrics, report.

Scored output (the `schemas.SCORES` rows a `detect` run writes, one per endpoint-window) is
joined with ground truth per (endpoint, window). Labels come per window, or per record and
are then aggregated as in the seed notebook: a window is anomalous when any of its records
is (`has_anomaly = max(is_anomaly)`). Every score the Poisson detector leaves in its evidence
is judged: η (positive when η > the η cut, by default the run's β) and each health model's
Ra (positive when Ra < the run's `ra_threshold`; ranked by 1 − Ra for ROC AUC).

Windows the detector did not judge (CALIBRATING, MISSING) are left out of the metrics and
counted, and so are labelled anomalous windows that have no score row at all. Any other
detector is judged per endpoint-window (`evaluate_detector`: predicted when a feature is an
ANOMALY, ranked by its best score), a hunt per key (`evaluate_hunts`), each with warnings for
labels that match nothing scored.

No Beam and no scikit-learn: numpy, pandas and pyarrow only (matplotlib for the plot).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from beamlytics import schemas
from beamlytics.detectors.base import Status
from beamlytics.detectors.health import HEALTH_MODELS
from beamlytics.detectors.poisson import PoissonDetector

HEALTH_SCORES = [f"Ra_{name}" for name in HEALTH_MODELS]
SCORE_NAMES = ["eta", *HEALTH_SCORES]
JUDGED = (Status.NORMAL, Status.ANOMALY, Status.EXCESS)


# --- metrics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        # 2PR/(P+R) written on counts, so it is defined (0) when nothing was found.
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else float("nan")


def confusion(truth: Sequence[bool], predicted: Sequence[bool]) -> Confusion:
    truth = np.asarray(truth, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    if truth.shape != predicted.shape:
        raise ValueError("truth and predictions differ in length")
    return Confusion(
        tp=int(np.sum(truth & predicted)),
        fp=int(np.sum(~truth & predicted)),
        tn=int(np.sum(~truth & ~predicted)),
        fn=int(np.sum(truth & ~predicted)),
    )


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse]


def roc_auc(truth: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative (ties count half), i.e. the Mann–Whitney U of the positives over n₊·n₋.
    NaN when either class is absent."""
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    u = average_ranks(scores)[truth].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


# --- scored output and labels -------------------------------------------------------------


def read_scores(paths: Iterable[str]) -> pd.DataFrame:
    """SCORES rows from Parquet files or folders (a run's OUT or OUT/scores both work),
    with the evidence's η and Ra_<model> as float columns (NaN where absent)."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(os.path.join(path, "scores")):
            path = os.path.join(path, "scores")
        found = sorted(glob.glob(os.path.join(path, "*.parquet"))) if os.path.isdir(path) else [path]
        if not found:
            raise FileNotFoundError(f"no Parquet files in {path}")
        files.extend(found)
    table = pa.concat_tables([pq.read_table(file, schema=schemas.SCORES) for file in files])
    return with_evidence_columns(table.to_pandas())


def with_evidence_columns(scores: pd.DataFrame) -> pd.DataFrame:
    evidence = [json.loads(text) if text else {} for text in scores["evidence"]]
    scores = scores.copy()
    for name in SCORE_NAMES:
        scores[name] = np.array([float(item.get(name, np.nan)) for item in evidence], dtype=np.float64)
    return scores


def read_labels(path: str) -> pd.DataFrame:
    """Labels from CSV or Parquet: `key`, `is_anomaly` (0/1 or bool) and either
    `window_start` (per window) or `time` (per record). Times are ISO strings, timestamps,
    or epoch seconds; naive times are UTC."""
    frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path, dtype={"key": str})
    missing = {"key", "is_anomaly"} - set(frame.columns)
    time_column = "window_start" if "window_start" in frame.columns else "time"
    if missing or time_column not in frame.columns:
        raise ValueError(f"{path}: labels need columns key, is_anomaly and window_start or time")
    frame[time_column] = to_utc(frame[time_column])
    frame["is_anomaly"] = frame["is_anomaly"].astype(bool)
    return frame


def to_utc(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values):
        return pd.to_datetime(values, unit="s", utc=True)
    return pd.to_datetime(values, utc=True)


def window_labels(labels: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """One row per (key, window_start) with has_anomaly = max(is_anomaly) of its rows.

    Record times are floored to epoch-aligned windows, as the pipeline cuts them.
    """
    if "window_start" in labels.columns:
        starts = labels["window_start"]
    else:
        starts = labels["time"].dt.floor(window)
    frame = pd.DataFrame({"key": labels["key"].astype(str), "window_start": starts,
                          "has_anomaly": labels["is_anomaly"].astype(bool)})
    return frame.groupby(["key", "window_start"], as_index=False)["has_anomaly"].max()


def join_labels(scores: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Scores with their window's has_anomaly (False for windows no label mentions), and the
    number of anomalous labelled windows that have no score row."""
    window = window_length(scores)
    per_window = window_labels(labels, window)
    scores = scores.assign(window_start=to_utc(scores["window_start"]))
    joined = scores.merge(per_window, on=["key", "window_start"], how="left")
    joined["has_anomaly"] = joined["has_anomaly"].eq(True)  # NaN (no label) counts as normal
    scored = per_window.merge(scores[["key", "window_start"]].drop_duplicates(), how="left",
                              on=["key", "window_start"], indicator=True)
    unscored = int(((scored["_merge"] == "left_only") & scored["has_anomaly"]).sum())
    return joined, unscored


def window_length(scores: pd.DataFrame) -> pd.Timedelta:
    lengths = (to_utc(scores["window_end"]) - to_utc(scores["window_start"])).unique()
    if len(lengths) == 0:
        raise ValueError("no scored windows: nothing to evaluate (see the run's summary.json and rejected/)")
    if len(lengths) != 1:
        raise ValueError(f"scores mix window lengths {sorted(lengths)}: evaluate one run at a time")
    return pd.Timedelta(lengths[0])


# --- evaluation ---------------------------------------------------------------------------


def evaluate(joined: pd.DataFrame, eta_threshold: float, ra_threshold: float | None = None) -> list[dict]:
    """Metrics of η and of each health model's Ra on the judged windows of one run.

    `ra_threshold` defaults to the run's own (the `threshold` column the detector wrote).
    """
    judged = joined[joined["status"].isin(JUDGED)]
    if ra_threshold is None:
        thresholds = judged["threshold"].dropna().unique()
        ra_threshold = float(thresholds[0]) if len(thresholds) else PoissonDetector().ra_threshold
    truth = judged["has_anomaly"].to_numpy(bool)
    rows = []
    for name in SCORE_NAMES:
        values = judged[name].to_numpy(np.float64)
        if name == "eta":
            ranking, predicted, cut = values, values > eta_threshold, eta_threshold
        else:
            ranking, predicted, cut = 1.0 - values, values < ra_threshold, ra_threshold
        rows.append({"score": name, "cut": cut, "not_judged": len(joined) - len(judged),
                     **_metrics(truth, predicted, ranking, judged=len(judged))})
    return rows


def series_scores(times: Sequence, counts: Sequence[int], window_slots: int, key: str = "series",
                  **detector_params) -> pd.DataFrame:
    """SCORES rows of a PoissonDetector run over one regular series of per-slot counts.

    For count series that are not logs (e.g. the NAB network series): slots are grouped into
    epoch-aligned windows of `window_slots` slots, as the pipeline cuts windows, so that
    `join_labels` finds them; windows with missing slots (the series' ragged ends, gaps)
    are left out.
    """
    times = to_utc(pd.Series(times)).reset_index(drop=True)
    counts = np.asarray(counts)
    window = (times.iloc[1] - times.iloc[0]) * window_slots
    starts = times.dt.floor(window)
    detector = PoissonDetector(**detector_params)
    rows = []
    for start, positions in starts.groupby(starts, sort=True).groups.items():
        if len(positions) != window_slots:
            continue
        verdict = detector.observe(counts[positions])
        rows.append({
            "table": "series", "key_kind": "series", "key": key, "feature": "records",
            "window_start": start, "window_end": start + window,
            "value": float(counts[positions].sum()), "detector": detector.name, "status": verdict.status,
            "score": verdict.score, "threshold": verdict.threshold, "direction": verdict.direction,
            "evidence": verdict.evidence_json(),
        })
    return with_evidence_columns(pd.DataFrame(rows))


# --- any detector, any hunt ---------------------------------------------------------------


def detector_windows(scores: pd.DataFrame) -> pd.DataFrame:
    """Any detector's SCORES rows → one row per judged (key, window_start).

    `predicted`: some feature of the window is an ANOMALY; `score`: its best score on the
    detector's own scale (NaN counts as the lowest, inf as the highest), what ROC AUC ranks by.
    """
    judged = scores[scores["status"].isin(JUDGED)].assign(window_start=lambda f: to_utc(f["window_start"]))
    judged = judged.assign(score=judged["score"].astype(np.float64).fillna(-np.inf),
                           predicted=judged["status"] == Status.ANOMALY)
    return judged.groupby(["key", "window_start"], as_index=False).agg(score=("score", "max"),
                                                                       predicted=("predicted", "any"))


def label_warnings(per_window: pd.DataFrame, scored: pd.DataFrame) -> list[str]:
    """What of the labels matches nothing scored: keys never scored, anomalous windows off the scored grid."""
    warnings = []
    unknown_keys = sorted(set(per_window["key"]) - set(scored["key"]))
    if unknown_keys:
        warnings.append(f"{len(unknown_keys)} labelled key(s) match no scored endpoint, e.g. {unknown_keys[0]!r}"
                        " (is --key the labels' kind of key?)")
    scored_windows = set(zip(scored["key"], to_utc(scored["window_start"])))
    anomalous = per_window[per_window["has_anomaly"]]
    missing = [pair for pair in zip(anomalous["key"], anomalous["window_start"]) if pair not in scored_windows]
    if missing:
        key, start = missing[0]
        warnings.append(f"{len(missing)} of {len(anomalous)} anomalous labelled window(s) match no scored window,"
                        f" e.g. {key} at {start.isoformat()} (labels on another window grid, or never scored)")
    return warnings


def evaluate_detector(scores: pd.DataFrame, labels: pd.DataFrame) -> tuple[dict, list[str]]:
    """Metrics of any detector's run against labels, and the label-alignment warnings."""
    windows = detector_windows(scores)
    per_window = window_labels(labels, window_length(scores))
    joined = windows.merge(per_window, on=["key", "window_start"], how="left")
    truth = joined["has_anomaly"].eq(True).to_numpy()
    return _metrics(truth, joined["predicted"].to_numpy(bool), joined["score"].to_numpy(np.float64),
                    judged=len(joined)), label_warnings(per_window, windows)


def read_findings(paths: Iterable[str]) -> pd.DataFrame:
    """`beamlytics hunt` findings from runs' OUT folders (or their hunts/ folders)."""
    from beamlytics.hunts.findings import FINDINGS

    files: list[str] = []
    for path in paths:
        folder = os.path.join(path, "hunts") if os.path.isdir(os.path.join(path, "hunts")) else path
        found = sorted(glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True))
        if not found:
            raise FileNotFoundError(f"no hunt findings (Parquet) in {folder}")
        files.extend(found)
    return pa.concat_tables([pq.read_table(file, schema=FINDINGS) for file in files]).to_pandas()


def evaluate_hunts(findings: pd.DataFrame, labels: pd.DataFrame, keys: Sequence[str],
                   alarm: float = 0.5) -> tuple[list[dict], list[str]]:
    """Per hunt: each key of `keys` (every endpoint the input holds) is anomalous when any label
    of it is, predicted when one of its findings of that hunt scores ≥ `alarm`; ranked by its best score.

    A finding names its key by `src` (client), else `dst` (server or registered domain).
    """
    truth_by_key = labels.groupby(labels["key"].astype(str))["is_anomaly"].max()
    everyone = sorted(set(keys) | set(truth_by_key.index))
    truth = np.array([bool(truth_by_key.get(key, False)) for key in everyone])
    named = findings.assign(key=findings["src"].fillna(findings["dst"]))
    rows = []
    for hunt, found in named.groupby("hunt", sort=True):
        best = found.groupby("key")["score"].max()
        scores = np.array([best.get(key, 0.0) for key in everyone], dtype=np.float64)
        rows.append({"hunt": hunt, **_metrics(truth, scores >= alarm, scores, judged=len(everyone))})
    unknown = sorted(set(truth_by_key.index) - set(keys))
    warnings = [f"{len(unknown)} labelled key(s) are not in the input, e.g. {unknown[0]!r}"] if unknown else []
    return rows, warnings


def _metrics(truth: np.ndarray, predicted: np.ndarray, ranking: np.ndarray, judged: int) -> dict:
    matrix = confusion(truth, predicted)
    return {"windows": judged, "positives": int(truth.sum()), **asdict(matrix), "precision": matrix.precision,
            "recall": matrix.recall, "f1": matrix.f1, "roc_auc": roc_auc(truth, ranking)}


# --- report -------------------------------------------------------------------------------

RESULT_COLUMNS = ["run", "window_seconds", "beta", "score", "cut", "windows", "not_judged", "positives",
                  "unscored_positives", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "roc_auc"]


def results_table(rows: Iterable[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=RESULT_COLUMNS)


SHOWN_ROWS = 12  # one screen: the best rows; results.csv holds them all


def format_results(results: pd.DataFrame, shown: int = SHOWN_ROWS) -> str:
    """The result on one screen: every row when they fit, else the `shown` best by F1 (then ROC AUC)."""
    columns = ["run", "score", "cut", "windows", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "roc_auc"]
    total = len(results)
    if total > shown:
        results = results.assign(_order=range(total)).sort_values(
            ["f1", "roc_auc", "_order"], ascending=[False, False, True], na_position="last").head(shown)
    table = results[columns].to_string(index=False, float_format=lambda value: f"{value:.3f}", na_rep="-")
    if total <= shown:
        return table
    return f"the {shown} best of {total} rows by F1, then ROC AUC (all of them in results.csv):\n{table}"


def write_report(results: pd.DataFrame, folder: str) -> tuple[str, str]:
    """results.csv and results.png (F1 and ROC AUC of every score, run by run) in `folder`."""
    # matplotlib is an optional extra ("plot"): only the report needs it.
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    csv_path = os.path.join(folder, "results.csv")
    png_path = os.path.join(folder, "results.png")
    results.to_csv(csv_path, index=False)
    runs = list(dict.fromkeys(results["run"]))
    figure, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(runs) + 4), 4.5), sharex=True)
    for axis, metric in zip(axes, ("f1", "roc_auc")):
        for name, rows in results.groupby("score", sort=False):
            by_run = rows.set_index("run")[metric].reindex(runs)
            axis.plot(range(len(runs)), by_run.to_numpy(), marker="o", label=name)
        axis.set_title(metric.upper().replace("_", " "))
        axis.set_ylim(-0.02, 1.02)
        axis.set_xticks(range(len(runs)), runs, rotation=60, ha="right", fontsize=7)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return csv_path, png_path
