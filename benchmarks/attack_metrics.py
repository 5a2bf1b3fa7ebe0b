"""Per-case detection metrics from a `detect` run's outputs: plain pandas, no Beam.

The one place that reads how a run ranks its endpoint-windows is `window_scores`: today the
best `score` among a key-window's `anomalies/` rows (one row per feature that fired); a run
whose `anomalies/` holds one ranked verdict per key-window gives the same frame, its single
row's score being the best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

WINDOW = ["key", "window_start"]


def window_scores(anomalies: pd.DataFrame) -> pd.DataFrame:
    """One row per alarmed (key, window_start) with its best score (inf sorts first, NaN counts as -inf)."""
    if anomalies.empty:
        return pd.DataFrame({"key": [], "window_start": [], "score": []})
    scores = anomalies[[*WINDOW, "score"]].copy()
    scores["score"] = scores["score"].astype(float).fillna(-math.inf)
    return scores.groupby(WINDOW, as_index=False)["score"].max()


@dataclass(frozen=True)
class CaseResult:
    flagged: bool
    windows_caught: int
    attacker_windows: int
    rank: int | None  # 1-based rank of the true host among hosts by best score; None: never alarmed
    benign_windows: int
    benign_alarms: int

    @property
    def alarms_per_1000(self) -> float:
        return 1000.0 * self.benign_alarms / self.benign_windows if self.benign_windows else float("nan")


def attacker_windows(features: pd.DataFrame, attacker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The attacker's endpoint-windows that overlap the attack's span [start, end]."""
    mine = features[features["key"] == attacker]
    overlapping = (mine["window_start"] <= end) & (mine["window_end"] > start)
    return mine.loc[overlapping, WINDOW]


def case_result(features: pd.DataFrame, alarms: pd.DataFrame, ranked: pd.DataFrame, attacker: str,
                start: pd.Timestamp, end: pd.Timestamp) -> CaseResult:
    """Metrics of one run: `features` every endpoint-window, `alarms` the alarmed ones with scores
    (as `window_scores` gives), `ranked` the scored windows hosts are ranked by."""
    attack = attacker_windows(features, attacker, start, end)
    is_attack = _member(features, attack)
    is_alarm = _member(features, alarms)
    caught = int((is_attack & is_alarm).sum())
    return CaseResult(
        flagged=caught > 0,
        windows_caught=caught,
        attacker_windows=int(is_attack.sum()),
        rank=host_rank(ranked, attacker),
        benign_windows=int((~is_attack).sum()),
        benign_alarms=int((~is_attack & is_alarm).sum()),
    )


def host_rank(scored: pd.DataFrame, host: str) -> int | None:
    """1 + the number of hosts whose best score beats `host`'s (ties share the better rank)."""
    best = scored.groupby("key")["score"].max()
    if host not in best.index:
        return None
    return int((best > best[host]).sum()) + 1


def _member(frame: pd.DataFrame, subset: pd.DataFrame) -> np.ndarray:
    keys = set(zip(subset["key"], subset["window_start"]))
    return np.fromiter((pair in keys for pair in zip(frame["key"], frame["window_start"])), bool, len(frame))


def isolation_forest_scores(features: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A practitioner's baseline: IsolationForest over the numeric window features, defaults, fixed seed.

    Score = −score_samples (higher is more anomalous); a window is an alarm where the model
    predicts −1. Returns (alarms, every window scored).
    """
    from sklearn.ensemble import IsolationForest  # the `bench` extra: never needed by the library

    numeric = features.drop(columns=["table", "key_kind", "key", "window_start", "window_end"], errors="ignore")
    numeric = numeric.select_dtypes("number").fillna(0.0)
    model = IsolationForest(random_state=seed).fit(numeric.to_numpy())
    scored = features[WINDOW].copy()
    scored["score"] = -model.score_samples(numeric.to_numpy())
    return scored[model.predict(numeric.to_numpy()) == -1].reset_index(drop=True), scored
