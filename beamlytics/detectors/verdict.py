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
The window's features are combined by Σ 1 / p (m over their harmonic mean p-value, Wilson 2019), referred
not to a distribution that assumes independent features but to the population's own windows
(`population.CombinedTail`),
which are the run's judged ones (at least `--min-records` records: `population.pools_of`):
the window's p is the share of the population's windows whose statistic is at least its own
(SPOT's tail beyond the body). So about the alarm rate's share of the judged windows alarm
whatever the features' dependence, and a feature more costs no Bonferroni factor. Where
no population is joinable (the streaming scorer, a population too small), p is the
Bonferroni-corrected minimum, min(1, m · min p) over the m judged features. The score is
−log10 p: finite (p is floored at the smallest float), comparable across tables, keys and
detectors, and monotone (no feature's p can fall without the score rising or staying). The
window alarms when p ≤ the alarm rate.

Hunt findings (`beamlytics.hunts.marks`: beacons, long connections, strobes, scans, DNS tunnels
over the run's horizon, with RITA's and Zeek's documented thresholds) are a second, rule-based
test a hunter trusts as it is. A finding over the window's records alarms when its score reaches
the hunts' alarm level (0.5, RITA's "low"), whatever p is, and whatever the window's record count:
a rule judges the key over the horizon, not the window. It enters the score on the same scale,
linearly anchored so that the alarm level sits on the alarm threshold: level = −log10(alarm rate) ·
hunt score / alarm level; the window's score is max(−log10 p, level), so status alarm ⇔ score ≥
−log10(alarm rate). The verdict names the hunt and its sentence; `p_value` stays the statistical p.
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
from beamlytics.detectors.population import Population, combined_statistic, rule_terms
from beamlytics.hunts.allow import AllowList
from beamlytics.hunts.config import HuntConfig
from beamlytics.hunts.marks import Mark
from beamlytics.ordering import value_ranks
from beamlytics.options_catalog import DEFAULT_ALARM_RATE, DEFAULT_MIN_RECORDS

_SMALLEST = 5e-324
_OWN_PROBABILITY = frozenset({"spot", "dspot"})  # detectors whose evidence holds the tail probability

ALARM, NORMAL, UNJUDGED = "alarm", "normal", "unjudged"
TOO_FEW_RECORDS = "too_few_records"
NO_MODEL = "no_model"  # no feature had a population model nor a calibrated own detector
UNJUDGED_REASONS = (TOO_FEW_RECORDS, NO_MODEL)
POPULATION, OWN_HISTORY = "population", "own history"
_SOURCES = (None, POPULATION, OWN_HISTORY)  # who gave a row's p, as the int8 code that indexes this
_STATUSES = (ALARM, NORMAL, UNJUDGED)  # a window's status, as the code that indexes this


@dataclass(frozen=True)
class VerdictSettings:
    alarm_rate: float = DEFAULT_ALARM_RATE
    min_records: int = DEFAULT_MIN_RECORDS
    allow: AllowList = AllowList()
    hunt_alarm: float = HuntConfig.alarm  # a hunt finding's score at which its windows alarm

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


def scores_of(p: np.ndarray) -> np.ndarray:
    """`score_of` of each p, by `math.log10` once per distinct p: libm's bits, which `np.log10` does not promise
    where numpy has its own SIMD loop (at 4 M records: 658,052 judged windows, 2,036 distinct p over 37 shards)."""
    distinct, inverse = np.unique(p, return_inverse=True)
    return np.array([score_of(value) for value in distinct.tolist()], dtype=float)[inverse.ravel()]


def hunt_levels(hunt_scores: np.ndarray, settings: VerdictSettings) -> np.ndarray:
    """Hunt scores on the verdict's −log10 scale: the alarm level lands on −log10(alarm rate); NaN stays NaN."""
    return score_of(settings.alarm_rate) * hunt_scores / settings.hunt_alarm


def feature_probabilities(scores: pa.Table, population: Population) -> tuple[np.ndarray, np.ndarray]:
    """Per score row: the tail probability the verdict uses, and who gave it (population, own history or
    None, an object array). Python runs per population model and per spot/dspot row (its evidence JSON)."""
    p, source, _ = _coded_probabilities(scores, population)
    return p, np.array(_SOURCES, dtype=object)[source]


def _coded_probabilities(scores: pa.Table, population: Population
                         ) -> tuple[np.ndarray, np.ndarray, tuple[list[str], np.ndarray]]:
    """`feature_probabilities` with who gave each p as its index in `_SOURCES` (int8), and the rows'
    `_model_codes`, which the verdict's other columns reuse."""
    count = scores.num_rows
    values = pc.cast(scores.column("value"), pa.float64()).to_numpy(zero_copy_only=False)
    # One lookup per row for the three statuses that matter (-1: another), not one string comparison each.
    status = pc.fill_null(pc.index_in(scores.column("status"), value_set=pa.array(
        [Status.CALIBRATING, Status.MISSING, Status.ANOMALY])), -1).to_numpy(zero_copy_only=False)

    p_population = np.full(count, math.nan)
    models, model_of_row = _model_codes(scores)
    for code, name in sorted(enumerate(models), key=lambda item: item[1]):
        tail = population.tail(*name.split("|", 2))
        if tail is not None:
            rows = np.flatnonzero(model_of_row == code)
            p_population[rows] = tail.probabilities(values[rows])
    calibrated = (status != 0) & (status != 1)  # neither calibrating nor missing
    own_probability = calibrated & _own_detector(scores)
    p = p_population.copy()
    p[calibrated & ~own_probability & (status != 2)] = 1.0  # not an anomaly
    own_rows = np.flatnonzero(own_probability)
    for row, text in zip(own_rows.tolist(), scores.column("evidence").take(pa.array(own_rows)).to_pylist()):
        own = json.loads(text).get("probability")
        own = float(own) if isinstance(own, (int, float)) else math.nan
        # Extreme for its own history and among its peers: the larger p is a valid p for both at once.
        p[row] = max(own, p[row]) if math.isfinite(p[row]) else own
    source = np.zeros(count, dtype=np.int8)
    source[np.isfinite(p_population)] = _SOURCES.index(POPULATION)
    source[calibrated] = 0
    source[calibrated & np.isfinite(p)] = _SOURCES.index(OWN_HISTORY)
    p[np.isnan(values) & ~calibrated] = math.nan
    return p, source, (models, model_of_row)


def _own_detector(scores: pa.Table) -> np.ndarray:
    """Per row: whether its detector's evidence holds its own tail probability (spot, dspot)."""
    return pc.is_in(scores.column("detector"), pa.array(sorted(_OWN_PROBABILITY))).to_numpy(zero_copy_only=False)


def _model_codes(scores: pa.Table) -> tuple[list[str], np.ndarray]:
    """The population models ("table|key kind|feature") of the rows, and each row's index among them:
    one code per row by Arrow, not a Python string per row."""
    models = pc.binary_join_element_wise(scores.column("table"), scores.column("key_kind"), scores.column("feature"),
                                         "|").combine_chunks().dictionary_encode()
    return models.dictionary.to_pylist(), models.indices.to_numpy(zero_copy_only=False)


def judge(scores: pa.Table, population: Population, settings: VerdictSettings,
          marks: Mapping[tuple[str, int], Mark] | None = None) -> tuple[pa.Table, pa.Table, dict]:
    """Score rows (`schemas.ANOMALIES`) → (verdicts, the fired features' rows of reported alarms, counts).

    Every window in `scores` gets a verdict; one with fewer than `min_records` records, or with
    no feature anyone can judge, is `unjudged` with the reason, unless a hunt finding (`marks`, by
    (key, window start µs)) at the alarm level covers it. An alarm whose endpoint, or
    (endpoint, feature) pair, the allow-list names is still a verdict (`allowed` true) but its
    rows do not go to anomalies. Verdicts come in the order of each window's first score row.
    Columnar: Python runs once per population model and per alarm, not per row.
    """
    counts = {"verdicts": 0, "alarms": 0, "allowed": 0, "hunt_alarms": 0,
              **{f"unjudged_{reason}": 0 for reason in UNJUDGED_REASONS}}
    if scores.num_rows == 0:
        return schemas.VERDICTS.empty_table(), schemas.ANOMALIES.empty_table(), counts
    p, source, (models, model_of_row) = _coded_probabilities(scores, population)
    group, order, offsets = _windows_in_evidence_order(scores, p)
    starts = offsets[:-1]
    first = np.minimum.reduceat(order, starts)  # each window's first score row
    taken_first = pa.array(first)
    p_sorted = p[order]
    finite = np.isfinite(p_sorted)
    judged = np.add.reduceat(finite.astype(np.int64), starts)
    records = pc.fill_null(scores.column("records"), 0).to_numpy()[first]
    # Index in UNJUDGED_REASONS, -1: judged.
    reason = np.where(records < settings.min_records, 0, np.where(judged == 0, 1, -1))
    is_judged = reason < 0
    windows = len(starts)
    per_row = np.repeat(np.arange(windows), np.diff(offsets))
    # A window's "table|key kind" from its first row's model ("table|key kind|feature"): no string per window.
    kind_of_model = np.array(["|".join(name.split("|", 2)[:2]) for name in models], dtype=object)
    combined, fired, alone, risk = _window_tests(p_sorted, per_row, offsets, judged, is_judged,
                                                 kind_of_model[model_of_row[first]], population, settings.alarm_rate)
    feature = scores.column("feature").take(pa.array(order)).combine_chunks()
    keys = scores.column("key").take(taken_first)
    window_starts = scores.column("window_start").take(taken_first)
    hunt_scores, hunts, hunt_evidence = _hunt_columns(marks, keys, window_starts)
    hunt_alarm = hunt_scores >= settings.hunt_alarm  # NaN: no finding, no alarm
    alarms = hunt_alarm | (is_judged & (combined <= settings.alarm_rate))
    status = np.where(alarms, 0, np.where(is_judged, 1, 2)).astype(np.int8)  # index in _STATUSES
    reason = np.where(status == 2, reason, -1)
    scorable = is_judged & np.isfinite(combined)
    statistical = np.full(windows, math.nan)
    statistical[scorable] = scores_of(combined[scorable])
    scored = np.fmax(statistical, hunt_levels(hunt_scores, settings))
    allowed = _allowed(settings.allow, keys, feature, fired & alarms[per_row], per_row, windows)
    expected, limits = _population_columns(scores, order, risk, source, population, models, model_of_row[order])
    verdicts = pa.table({
        **{name: scores.column(name).take(taken_first) for name in ("table", "key_kind", "key", "window_start",
                                                                    "window_end", "records", "detector")},
        "status": pa.array(_STATUSES, pa.string()).take(pa.array(status)),
        "reason": pa.array(UNJUDGED_REASONS, pa.string()).take(pa.array(reason, mask=reason < 0)),
        "allowed": pa.array(allowed),
        "p_value": pa.array(combined, mask=~is_judged | np.isnan(combined)),
        "score": pa.array(scored, pa.float64(), mask=(status == 2) | np.isnan(scored)),
        "features_fired": pa.ListArray.from_arrays(
            pa.array(np.r_[0, np.cumsum(np.add.reduceat(fired.astype(np.int64), starts))].astype(np.int32)),
            feature.filter(pa.array(fired))),
        "evidence": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.StructArray.from_arrays([
            feature, pa.array(fired), pc.cast(scores.column("value"), pa.float64()).take(pa.array(order)).combine_chunks(),
            expected, limits, pa.array(p_sorted, mask=~finite),
            pa.array(_SOURCES, pa.string()).take(pa.array(source[order]))],
            fields=list(schemas.VERDICTS.field("evidence").type.value_type))),
        "hunt": hunts,
        "hunt_score": pa.array(hunt_scores, mask=np.isnan(hunt_scores)),
        "hunt_evidence": hunt_evidence,
    })
    counts["verdicts"] = windows
    for code, name in enumerate(UNJUDGED_REASONS):
        counts[f"unjudged_{name}"] = int((reason == code).sum())
    counts["allowed"], counts["alarms"] = int((alarms & allowed).sum()), int((alarms & ~allowed).sum())
    counts["hunt_alarms"] = int((hunt_alarm & ~allowed).sum())
    reported = _reported_rows(scores, population, p, source, group, alone, limits, order, fired,
                              np.flatnonzero(alarms & ~allowed), offsets)
    return verdicts.cast(schemas.VERDICTS), reported, counts


def _window_tests(p_sorted: np.ndarray, per_row: np.ndarray, offsets: np.ndarray, judged: np.ndarray,
                  is_judged: np.ndarray, kind_of_window: np.ndarray, population: Population, alarm_rate: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per window its p; per row (in evidence order) whether it fired, the window p it alone would give, and
    the feature p at which it alone alarms.

    Where the population calibrates the combined statistic (`population.CombinedTail`), the window's p is the
    population's share of windows whose combined statistic (the rule's: Σ 1 / p by default) is at least its own, and
    the fired features are the fewest of its strongest whose statistic alone reaches the alarm threshold: what it
    takes to alarm. Elsewhere (no population, or one too small) the Bonferroni-corrected minimum, and fired is each
    feature that alone passes it.
    """
    windows = len(judged)
    finite = np.isfinite(p_sorted)
    with np.errstate(invalid="ignore"):  # 0 judged × inf: those windows have no p
        smallest = np.minimum.reduceat(np.where(finite, p_sorted, np.inf), offsets[:-1])
        combined = np.where(judged > 0, np.minimum(1.0, judged * smallest), math.nan)
    alone = np.minimum(1.0, judged[per_row] * p_sorted)
    risk = alarm_rate / np.maximum(judged[per_row], 1)
    fired = is_judged[per_row] & finite & (alone <= alarm_rate)
    terms = rule_terms(p_sorted, population.rule)
    sums = combined_statistic(terms, per_row, windows)
    # The sums of the terms of the window's stronger features, added up within the window (not a running sum over
    # all rows, whose rounding would depend on where the window sits).
    position = np.arange(len(p_sorted)) - offsets[:-1][per_row]
    before = np.zeros(terms.shape)
    for rank in range(1, int(position.max(initial=0)) + 1):
        rows = np.flatnonzero(position == rank)
        before[rows] = before[rows - 1] + terms[rows - 1]
    for name in sorted(set(kind_of_window.tolist())):
        calibration = population.combined(*name.split("|", 1))
        if calibration is None:
            continue
        mine = kind_of_window == name
        rows = mine[per_row]
        combined[mine] = np.where(judged[mine] > 0, calibration.probabilities(calibration.statistic(sums[mine])),
                                  math.nan)
        limit = calibration.threshold(alarm_rate)
        alone[rows] = np.where(finite[rows], calibration.probabilities(calibration.statistic(terms[rows])), math.nan)
        risk[rows] = calibration.feature_p_alarming(alarm_rate)
        alarmed = (is_judged & (combined <= alarm_rate))[per_row]
        # The strongest always fires, also where the alarm threshold is 0 or less (no statistic before it is below
        # that).
        fired[rows] = (alarmed & finite & ((calibration.statistic(before) < limit) | (position == 0)))[rows]
    return combined, fired, alone, risk


def _allowed(allow: AllowList, keys: pa.ChunkedArray, feature: pa.Array, fired: np.ndarray, window_of_row: np.ndarray,
             windows: int) -> np.ndarray:
    """Per window whether the allow-list names its endpoint, or the endpoint with one of the features `fired`
    (rows in evidence order): Python per fired row of an alarm only, and none without an allow-list."""
    allowed = np.zeros(windows, dtype=bool)
    if not allow.entries:
        return allowed
    rows = np.flatnonzero(fired)
    window_of = window_of_row[rows]
    for window, key, name in zip(window_of.tolist(), keys.take(pa.array(window_of)).to_pylist(),
                                 feature.take(pa.array(rows)).to_pylist()):
        allowed[window] = allowed[window] or allow.suppresses_endpoint(key, name)
    return allowed


def _hunt_columns(marks: Mapping[tuple[str, int], Mark] | None, keys: pa.ChunkedArray, starts: pa.ChunkedArray
                  ) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """Each window's strongest hunt finding: its score (NaN: none), hunt and sentence (null: none).
    Without findings (the default) no window is looked up."""
    if not marks:
        return np.full(len(keys), math.nan), pa.nulls(len(keys), pa.string()), pa.nulls(len(keys), pa.string())
    micros = pc.cast(starts, pa.int64()).to_pylist()
    found = [marks.get((key, start)) for key, start in zip(keys.to_pylist(), micros)]
    return (np.array([math.nan if mark is None else mark.score for mark in found]),
            pa.array([None if mark is None else mark.hunt for mark in found], pa.string()),
            pa.array([None if mark is None else mark.summary for mark in found], pa.string()))


def _windows_in_evidence_order(scores: pa.Table, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window number of each row, rows ordered by window then evidence order, each window's offsets in that order).

    Windows are numbered by their first score row; within one, rows go by (p, NaN last, feature name), ties
    in row order: the order the verdict lists its evidence in.
    """
    # Integer codes, not strings: sorting and comparing four columns of strings per row was most of this
    # function's 7 s at 1 M records x 10,000 hosts (docs/benchmarks.md). Windows are numbered by their first
    # row whatever order finds equal identities, so the codes need no string order (no ranks), and the three
    # string columns make one code: two sort keys, not four.
    code = np.zeros(scores.num_rows, dtype=np.int64)
    for name in ("table", "key_kind", "key"):
        encoded = pc.dictionary_encode(scores.column(name)).combine_chunks()
        code = code * len(encoded.dictionary) + encoded.indices.to_numpy(zero_copy_only=False)
    identity = [code, pc.cast(scores.column("window_start"), pa.int64()).to_numpy()]
    by_window = np.lexsort(identity[::-1])
    changed = np.zeros(len(by_window), dtype=bool)
    changed[0] = True
    for column in identity:
        ordered = column[by_window]
        changed[1:] |= ordered[1:] != ordered[:-1]
    run = np.cumsum(changed) - 1
    first_of_run = np.minimum.reduceat(by_window, np.flatnonzero(changed))
    rank_of_run = np.empty(len(first_of_run), dtype=np.int64)
    rank_of_run[np.argsort(first_of_run, kind="stable")] = np.arange(len(first_of_run))
    group = np.empty(len(by_window), dtype=np.int64)
    group[by_window] = rank_of_run[run]
    feature_rank = value_ranks(scores.column("feature")).to_numpy()
    # np.lexsort is stable: ties keep row order.
    order = np.lexsort((feature_rank, np.where(np.isfinite(p), p, 2.0), group))
    offsets = np.r_[0, np.cumsum(np.bincount(group))]
    return group, order, offsets


def _population_columns(scores: pa.Table, order: np.ndarray, risk: np.ndarray, source: np.ndarray,
                        population: Population, models: list[str], model_of_row: np.ndarray
                        ) -> tuple[pa.Array, pa.Array]:
    """Per row in `order`: the population median ("expected") and the value at which the feature alone alarms its
    window: the population's at `risk`; for spot/dspot judged by their own tail, the higher of it and theirs.
    A threshold is computed once per (model, risk). `source` is per row of `scores`, `model_of_row` (codes in
    `models`) and `risk` per row in `order`."""
    tails = [population.tail(*name.split("|", 2)) for name in models]
    medians = np.array([tail.median if tail is not None and tail.values.size else math.nan for tail in tails])
    has_median = np.array([tail is not None and tail.values.size > 0 for tail in tails], dtype=bool)
    # Pairs as one integer code each: `np.unique(..., axis=0)` of (model, risk) rows sorted 4.7 M rows as
    # structured values and kept every NaN risk apart, so one threshold per such row (14.6 vs 1.2 CPU s).
    risks, risk_of_row = np.unique(risk, return_inverse=True)
    width = max(len(risks), 1)
    pairs, pair_of_row = np.unique(model_of_row.astype(np.int64) * width + risk_of_row.ravel(), return_inverse=True)
    thresholds = np.array([tails[code].threshold(at) if tails[code] is not None else math.nan
                           for code, at in zip((pairs // width).tolist(), risks[pairs % width].tolist())])
    limits = thresholds[pair_of_row.ravel()] if len(order) else np.empty(0)
    own = scores.column("threshold")
    own_tail = (_own_detector(scores) & (source == _SOURCES.index(OWN_HISTORY))
                & pc.is_valid(own).to_numpy(zero_copy_only=False))[order]
    own_values = pc.fill_null(own, math.nan).to_numpy(zero_copy_only=False)[order]
    limits = np.where(own_tail, np.where(np.isfinite(limits), np.fmax(limits, own_values), own_values), limits)
    return (pa.array(medians[model_of_row], mask=~has_median[model_of_row]),
            pa.array(limits, mask=~np.isfinite(limits)))


def _reported_rows(scores: pa.Table, population: Population, p: np.ndarray, source: np.ndarray,
                   group: np.ndarray, alone: np.ndarray, limits: pa.Array, order: np.ndarray, fired: np.ndarray,
                   alarms: np.ndarray, offsets: np.ndarray) -> pa.Table:
    """The fired rows of reported alarms, in window order and each window's row order."""
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    chosen = sorted((int(order[i]) for window in alarms.tolist() for i in range(offsets[window], offsets[window + 1])
                     if fired[i]), key=lambda row: (group[row], row))
    if not chosen:
        return schemas.ANOMALIES.empty_table()
    rows = scores.drop_columns(["evidence"]).take(pa.array(chosen, pa.int64())).to_pylist()
    thresholds = limits.take(pa.array(position[chosen])).to_pylist()
    reported = []
    for index, row, threshold in zip(chosen, rows, thresholds):
        tail = population.tail(row["table"], row["key_kind"], row["feature"])
        reported.append(_reported_row(scores, index, row, p[index], _SOURCES[source[index]],
                                      float(alone[position[index]]), threshold, tail))
    return pa.Table.from_pylist(reported, schema=schemas.ANOMALIES)


def _reported_row(scores: pa.Table, index: int, row: Mapping[str, Any], p: float, source: str | None,
                  alone: float, threshold: float | None, tail) -> dict:
    """A fired feature's score row as anomalies/ holds it: its score is −log10 of the window p it alone would
    give, its detector `population` when the population judged it (its threshold is then in the feature's
    units)."""
    evidence = {**json.loads(scores.column("evidence")[index].as_py()), "p_value": p, "judged_by": source}
    if tail is not None:
        evidence["population_median"] = tail.median
        evidence["population_threshold"] = threshold
    reported = {**row, "status": Status.ANOMALY, "score": score_of(alone),
                "evidence": json.dumps(evidence, sort_keys=True, allow_nan=False)}
    if source == POPULATION:
        reported["detector"] = POPULATION
        reported["direction"] = "up"
        reported["threshold"] = threshold
    return reported
