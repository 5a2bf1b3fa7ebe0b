"""One ranked verdict per endpoint-window, from its per-feature score rows. No Beam.

Each feature gets a tail probability p:
- while the endpoint's own detector calibrates (or when it judged nothing): the population's
  (`population.FeatureTail.probabilities`), so a window is judged from the endpoint's first;
- once it is calibrated, the window must be extreme both for its own history and among its
  peers (an intersection-union test, whose p is the larger of the two): spot and dspot give
  P(X beyond value) of the endpoint's own fitted tail, max'ed with the population's; detectors
  whose score is not a probability (gaussian, iqr, poisson) give their verdict: the
  population's p where they call the window anomalous, else 1. A busy server is thus not
  flagged for being busy, nor a quiet host for a blip its peers make all the time.
The window's p is the Bonferroni-corrected minimum, min(1, m · min p) over its m judged
features, and its score −log10 of it: finite (p is floored at the smallest float), comparable
across tables, keys and detectors, and monotone (no feature's p can fall without the score
rising or staying). The window alarms when p ≤ the alarm rate: under benign traffic whose
population the tails describe, at most that share of judged windows.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.detectors.base import Status
from beamlytics.detectors.population import Population
from beamlytics.hunts.allow import AllowList

DEFAULT_ALARM_RATE = 1e-3
DEFAULT_MIN_RECORDS = 3
_SMALLEST = 5e-324
_OWN_PROBABILITY = frozenset({"spot", "dspot"})  # detectors whose evidence holds the tail probability

ALARM, NORMAL, UNJUDGED = "alarm", "normal", "unjudged"
TOO_FEW_RECORDS = "too_few_records"
NO_MODEL = "no_model"  # no feature had a population model nor a calibrated own detector
UNJUDGED_REASONS = (TOO_FEW_RECORDS, NO_MODEL)
POPULATION, OWN_HISTORY = "population", "own history"


@dataclass(frozen=True)
class VerdictSettings:
    alarm_rate: float = DEFAULT_ALARM_RATE
    min_records: int = DEFAULT_MIN_RECORDS
    allow: AllowList = AllowList()

    def __post_init__(self) -> None:
        if not 0.0 < self.alarm_rate < 1.0:
            raise ValueError("the alarm rate must be in (0, 1)")
        if self.min_records < 0:
            raise ValueError("--min-records must be at least 0")


def combined_p(probabilities: np.ndarray) -> float:
    """Bonferroni-corrected minimum of the finite p-values: min(1, m · min p); NaN when none is finite."""
    finite = probabilities[np.isfinite(probabilities)]
    if finite.size == 0:
        return math.nan
    return min(1.0, finite.size * float(finite.min()))


def score_of(p: float) -> float:
    """−log10 p, floored so that it stays finite: 0 for p = 1, ≈ 323.3 for p = 0."""
    return -math.log10(max(p, _SMALLEST))


def feature_probabilities(scores: pa.Table, population: Population) -> tuple[np.ndarray, list[str | None]]:
    """Per score row: the tail probability the verdict uses, and who gave it (population or own history)."""
    count = scores.num_rows
    values = pc.cast(scores.column("value"), pa.float64()).to_numpy(zero_copy_only=False)
    status = np.asarray(scores.column("status").to_pylist(), dtype=object)
    p_population = np.full(count, math.nan)
    group = [f"{t}|{k}|{f}" for t, k, f in zip(scores.column("table").to_pylist(), scores.column("key_kind").to_pylist(),
                                             scores.column("feature").to_pylist())]
    for name in sorted(set(group)):
        table, kind, feature = name.split("|", 2)
        tail = population.tail(table, kind, feature)
        if tail is not None:
            rows = np.flatnonzero(np.asarray(group, dtype=object) == name)
            p_population[rows] = tail.probabilities(values[rows])
    calibrated = (status != Status.CALIBRATING) & (status != Status.MISSING)
    detectors = scores.column("detector").to_pylist()
    evidence = scores.column("evidence").to_pylist()
    p = p_population.copy()
    source: list[str | None] = [POPULATION if math.isfinite(x) else None for x in p_population]
    for row in np.flatnonzero(calibrated):
        if detectors[row] in _OWN_PROBABILITY:
            own = json.loads(evidence[row]).get("probability")
            own = float(own) if isinstance(own, (int, float)) else math.nan
            # Extreme for its own history and among its peers: the larger p is a valid p for both at once.
            p[row] = max(own, p[row]) if math.isfinite(p[row]) else own
        elif status[row] != Status.ANOMALY:
            p[row] = 1.0
        source[row] = OWN_HISTORY if math.isfinite(p[row]) else None
    p[np.isnan(values) & ~calibrated] = math.nan
    return p, source


def judge(scores: pa.Table, population: Population, settings: VerdictSettings) -> tuple[pa.Table, pa.Table, dict]:
    """Score rows (`schemas.ANOMALIES`) → (verdicts, the fired features' rows of reported alarms, counts).

    Every window in `scores` gets a verdict; one with fewer than `min_records` records, or with
    no feature anyone can judge, is `unjudged` with the reason. An alarm whose endpoint, or
    (endpoint, feature) pair, the allow-list names is still a verdict (`allowed` true) but its
    rows do not go to anomalies.
    """
    counts = {"verdicts": 0, "alarms": 0, "allowed": 0, **{f"unjudged_{reason}": 0 for reason in UNJUDGED_REASONS}}
    if scores.num_rows == 0:
        return schemas.VERDICTS.empty_table(), schemas.ANOMALIES.empty_table(), counts
    p, source = feature_probabilities(scores, population)
    rows = scores.drop_columns(["evidence"]).to_pylist()
    windows: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        windows.setdefault((row["table"], row["key_kind"], row["key"], row["window_start"]), []).append(index)
    verdicts, reported = [], []
    for (table, key_kind, key, window_start), members in windows.items():
        first = rows[members[0]]
        combined = combined_p(p[members])
        judged = int(np.isfinite(p[members]).sum())
        reason = None
        if (first["records"] or 0) < settings.min_records:
            reason = TOO_FEW_RECORDS
        elif judged == 0:
            reason = NO_MODEL
        fired = [i for i in members if reason is None and math.isfinite(p[i]) and judged * p[i] <= settings.alarm_rate]
        status = UNJUDGED if reason else (ALARM if combined <= settings.alarm_rate else NORMAL)
        allowed = status == ALARM and any(settings.allow.suppresses_endpoint(key, rows[i]["feature"]) for i in fired)
        evidence, limits = [], {}
        for i in sorted(members, key=lambda i: (_sort_p(p[i]), rows[i]["feature"])):
            tail = population.tail(table, key_kind, rows[i]["feature"])
            limits[i] = _threshold(rows[i], source[i], tail, settings.alarm_rate / max(judged, 1))
            evidence.append({
                "feature": rows[i]["feature"], "fired": i in fired, "value": rows[i]["value"],
                "expected": tail.median if tail is not None and tail.values.size else None,
                "threshold": limits[i], "p_value": float(p[i]) if math.isfinite(p[i]) else None,
                "judged_by": source[i]})
        verdicts.append({
            "table": table, "key_kind": key_kind, "key": key, "window_start": window_start,
            "window_end": first["window_end"], "records": first["records"], "detector": first["detector"],
            "status": status, "reason": reason, "allowed": allowed,
            "p_value": None if reason or math.isnan(combined) else combined,
            "score": None if reason or math.isnan(combined) else score_of(combined),
            "features_fired": [rows[i]["feature"] for i in sorted(fired, key=lambda i: (p[i], rows[i]["feature"]))],
            "evidence": evidence,
        })
        counts["verdicts"] += 1
        if reason:
            counts[f"unjudged_{reason}"] += 1
        elif status == ALARM:
            counts["allowed" if allowed else "alarms"] += 1
            if not allowed:
                reported.extend(_reported_row(scores, i, rows[i], p[i], source[i], judged, limits[i],
                                              population.tail(table, key_kind, rows[i]["feature"]))
                                for i in fired)
    anomalies = pa.Table.from_pylist(reported, schema=schemas.ANOMALIES) if reported \
        else schemas.ANOMALIES.empty_table()
    return pa.Table.from_pylist(verdicts, schema=schemas.VERDICTS), anomalies, counts


def _sort_p(p: float) -> float:
    return p if math.isfinite(p) else 2.0


def _threshold(row: Mapping[str, Any], source: str | None, tail, risk: float) -> float | None:
    """The value the feature had to exceed: the population's
    at the per-feature risk; for spot/dspot, whichever of it and the own tail's is higher."""
    limit = tail.threshold(risk) if tail is not None else math.nan
    if source == OWN_HISTORY and row["detector"] in _OWN_PROBABILITY and row["threshold"] is not None:
        limit = max(limit, row["threshold"]) if math.isfinite(limit) else row["threshold"]
    return limit if math.isfinite(limit) else None


def _reported_row(scores: pa.Table, index: int, row: Mapping[str, Any], p: float, source: str | None,
                  judged: int, threshold: float | None, tail) -> dict:
    """A fired feature's score row as anomalies/ holds it: its score is the feature's corrected −log10 p, its
    detector `population` when the population judged it (its threshold is then in the feature's units)."""
    evidence = {**json.loads(scores.column("evidence")[index].as_py()), "p_value": p, "judged_by": source}
    if tail is not None:
        evidence["population_median"] = tail.median
        evidence["population_threshold"] = threshold
    reported = {**row, "status": Status.ANOMALY, "score": score_of(min(1.0, judged * p)),
                "evidence": json.dumps(evidence, sort_keys=True, allow_nan=False)}
    if source == POPULATION:
        reported["detector"] = POPULATION
        reported["direction"] = "up"
        reported["threshold"] = threshold
    return reported
