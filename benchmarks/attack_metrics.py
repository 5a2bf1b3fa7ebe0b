"""Per-case detection metrics from a `detect` run's outputs: plain pandas, no Beam.

How a run ranks its endpoint-windows is read from `verdicts/` (one ranked verdict per
key-window) by `rejudged`, which also re-judges them at another alarm rate exactly: a
verdict's `p_value` and `hunt_score` do not depend on the rate, only its status and score do
(`beamlytics.detectors.verdict`).

The attacker is a set of keys: the address it was placed on and its aliases (its other addresses in the
capture, `benchmarks.embed.capture_aliases`), each a key of its own in the run. Its windows are every window of
the set overlapping the attack; its rank is the set's best score against every host outside the set.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from beamlytics.hunts.config import HuntConfig

WINDOW = ["key", "window_start"]


def rejudged(verdicts: pd.DataFrame, alarm_rate: float, hunt_alarm: float = HuntConfig.alarm) -> pd.DataFrame:
    """The alarmed (key, window_start) of `verdicts/` rows at `alarm_rate`, with their scores there: alarm when
    p_value ≤ the rate or hunt_score ≥ the hunts' alarm level; score max(−log10 p, −log10(rate) · hunt / level)."""
    if verdicts.empty:
        return pd.DataFrame({"key": [], "window_start": [], "score": []})
    p = verdicts["p_value"].astype(float).to_numpy()
    hunt = verdicts["hunt_score"].astype(float).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        alarm = (p <= alarm_rate) | (hunt >= hunt_alarm)
        score = np.fmax(-np.log10(np.maximum(p, 5e-324)), -math.log10(alarm_rate) * hunt / hunt_alarm)
    alarmed = verdicts.loc[alarm & ~verdicts["allowed"].astype(bool).to_numpy(), WINDOW].copy()
    alarmed["score"] = score[alarm & ~verdicts["allowed"].astype(bool).to_numpy()]
    return alarmed.reset_index(drop=True)


@dataclass(frozen=True)
class CaseResult:
    flagged: bool
    windows_caught: int
    attacker_windows: int
    rank: int | None  # 1-based rank of the attacker's keys among hosts by best score; None: none scored
    benign_windows: int
    benign_alarms: int
    benign_judged: int  # the benign windows the method judged: issue 9's budget is a share of these

    @property
    def alarms_per_1000(self) -> float:
        return 1000.0 * self.benign_alarms / self.benign_windows if self.benign_windows else float("nan")


def attacker_windows(features: pd.DataFrame, attackers: Collection[str], start: pd.Timestamp, end: pd.Timestamp
                     ) -> pd.DataFrame:
    """The endpoint-windows of the attacker's keys that overlap the attack's span [start, end]."""
    mine = features[features["key"].isin(attackers)]
    overlapping = (mine["window_start"] <= end) & (mine["window_end"] > start)
    return mine.loc[overlapping, WINDOW]


def case_result(features: pd.DataFrame, alarms: pd.DataFrame, ranked: pd.DataFrame, attackers: Collection[str],
                start: pd.Timestamp, end: pd.Timestamp, judged: pd.DataFrame | None = None) -> CaseResult:
    """Metrics of one run: `features` every endpoint-window, `alarms` the alarmed ones with scores
    (as `rejudged` gives), `ranked` the scored windows hosts are ranked by, `judged` the windows the
    method judged (as `judged_windows` gives; None: every window, as a baseline judges them)."""
    attack = attacker_windows(features, attackers, start, end)
    is_attack = _member(features, attack)
    is_alarm = _member(features, alarms)
    is_judged = np.ones(len(features), dtype=bool) if judged is None else _member(features, judged)
    caught = int((is_attack & is_alarm).sum())
    return CaseResult(
        flagged=caught > 0,
        windows_caught=caught,
        attacker_windows=int(is_attack.sum()),
        rank=host_rank(ranked, attackers),
        benign_windows=int((~is_attack).sum()),
        benign_alarms=int((~is_attack & is_alarm).sum()),
        benign_judged=int((~is_attack & is_judged).sum()),
    )


def judged_windows(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The (key, window_start) of `verdicts/` rows that were judged (not `unjudged`: under --min-records, no
    model): the windows an alarm rate is a share of."""
    if verdicts.empty:
        return pd.DataFrame({"key": [], "window_start": []})
    return verdicts.loc[verdicts["status"] != "unjudged", WINDOW].reset_index(drop=True)


def closest_attacker_window(verdicts: pd.DataFrame, attackers: Collection[str], start: pd.Timestamp,
                            end: pd.Timestamp) -> str | None:
    """Why a missed attacker was missed: the judged window of its keys with the smallest combined p, its key, that p
    and each feature's value and tail probability (smallest first), as one line; None when none was judged."""
    if verdicts.empty:
        return None
    mine = verdicts[verdicts["key"].isin(attackers) & (verdicts["window_start"] <= end)
                    & (verdicts["window_end"] > start) & (verdicts["status"] != "unjudged")]
    if mine.empty:
        return None
    window = mine.sort_values(["p_value", "window_start", "key"], kind="stable").iloc[0]
    features = sorted((item["p_value"], item["feature"], item["value"]) for item in window["evidence"]
                      if item["p_value"] is not None and math.isfinite(item["p_value"]))
    return (f"{window['key']} window {window['window_start']:%H:%M}, {window['records']} records, "
            f"combined p {window['p_value']:.3g}: "
            + ", ".join(f"{name} {value:g} (p {p:.3g})" for p, name, value in features))


def host_rank(scored: pd.DataFrame, hosts: Collection[str]) -> int | None:
    """1 + the number of keys outside `hosts` whose best score beats the best of `hosts`' (ties share the better
    rank); None when no key of `hosts` is scored."""
    best = scored.groupby("key")["score"].max()
    mine = best.index.isin(hosts)
    if not mine.any():
        return None
    return int((best[~mine] > best[mine].max()).sum()) + 1


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


def top_share(scored: pd.DataFrame, share: float) -> pd.DataFrame:
    """The `share` of windows with the highest score (at least one; ties at the cut by key and window, so the
    count is exact): a baseline's alarms at the same benign budget as the verdict's."""
    count = max(1, math.ceil(share * len(scored)))
    ranked = scored.sort_values(["score", "key", "window_start"], ascending=[False, True, True], kind="stable")
    return ranked.head(count).reset_index(drop=True)
