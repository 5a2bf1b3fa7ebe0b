"""The columnar `verdict.judge` against a row-by-row oracle: the rules of its docstring applied one window and
one feature row at a time, in plain Python (the shape the judge had before it was made columnar)."""
import json
import math

import numpy as np
import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.detectors.endpoint import DetectorConfig, score_table
from beamlytics.detectors.population import Population
from beamlytics.detectors.verdict import (ALARM, NORMAL, NO_MODEL, OWN_HISTORY, POPULATION, TOO_FEW_RECORDS,
                                          UNJUDGED, VerdictSettings, combined_p, feature_probabilities, judge,
                                          score_of)
from beamlytics.hunts.allow import AllowList
from tests.test_population import windows_table

OWN_PROBABILITY = {"spot", "dspot"}


def probabilities_by_row(scores: pa.Table, population: Population) -> tuple[np.ndarray, list]:
    """`feature_probabilities` one row at a time, from each row's dict."""
    p, source = [], []
    for row in scores.to_pylist():
        value = math.nan if row["value"] is None else float(row["value"])
        tail = population.tail(row["table"], row["key_kind"], row["feature"])
        from_population = float(tail.probabilities(np.array([value]))[0]) if tail is not None else math.nan
        if row["status"] in ("calibrating", "missing"):
            p.append(math.nan if math.isnan(value) else from_population)
            source.append(POPULATION if math.isfinite(from_population) else None)
            continue
        if row["detector"] in OWN_PROBABILITY:
            own = json.loads(row["evidence"]).get("probability")
            own = float(own) if isinstance(own, (int, float)) else math.nan
            chosen = max(own, from_population) if math.isfinite(from_population) else own
        elif row["status"] != "anomaly":
            chosen = 1.0
        else:
            chosen = from_population
        p.append(chosen)
        source.append(OWN_HISTORY if math.isfinite(chosen) else None)
    return np.array(p), source


def oracle(scores: pa.Table, population: Population, settings: VerdictSettings):
    p, source = probabilities_by_row(scores, population)
    rows = scores.drop_columns(["evidence"]).to_pylist()
    windows: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        windows.setdefault((row["table"], row["key_kind"], row["key"], row["window_start"]), []).append(index)
    verdicts, reported = [], []
    for (table, key_kind, key, window_start), members in windows.items():
        first = rows[members[0]]
        judged = int(np.isfinite(p[members]).sum())
        reason = TOO_FEW_RECORDS if (first["records"] or 0) < settings.min_records else (
            NO_MODEL if judged == 0 else None)
        by_strength = sorted(members, key=lambda i: (p[i] if math.isfinite(p[i]) else 2.0, rows[i]["feature"]))
        calibration = population.combined(table, key_kind)
        if calibration is None:  # Bonferroni: each feature that alone passes it fires
            combined = combined_p(p[members])
            alone = {i: min(1.0, judged * p[i]) for i in members}
            risk = settings.alarm_rate / max(judged, 1)
            fired = [i for i in members if reason is None and math.isfinite(p[i]) and alone[i] <= settings.alarm_rate]
        else:  # Σ 1 / p against the population's; the fewest strongest features that reach the threshold
            term = {i: 1.0 / max(p[i], 1e-300) for i in members if math.isfinite(p[i])}
            statistic = sum(term.values())
            combined = float(calibration.probabilities(np.array([statistic]))[0]) if judged else math.nan
            alone = {i: float(calibration.probabilities(np.array([term[i]]))[0]) if i in term else math.nan
                     for i in members}
            limit = calibration.threshold(settings.alarm_rate)
            risk = 1.0 / limit if limit > 1.0 else 1.0
            fired, total = [], 0.0
            if reason is None and combined <= settings.alarm_rate:
                for i in (i for i in by_strength if i in term):
                    if fired and total >= limit:
                        break
                    fired.append(i)
                    total += term[i]
        status = UNJUDGED if reason else (ALARM if combined <= settings.alarm_rate else NORMAL)
        allowed = status == ALARM and any(settings.allow.suppresses_endpoint(key, rows[i]["feature"]) for i in fired)
        evidence, limits = [], {}
        for i in by_strength:
            tail = population.tail(table, key_kind, rows[i]["feature"])
            limit = tail.threshold(risk) if tail is not None else math.nan
            if source[i] == OWN_HISTORY and rows[i]["detector"] in OWN_PROBABILITY and rows[i]["threshold"] is not None:
                limit = max(limit, rows[i]["threshold"]) if math.isfinite(limit) else rows[i]["threshold"]
            limits[i] = limit if math.isfinite(limit) else None
            evidence.append({"feature": rows[i]["feature"], "fired": i in fired, "value": rows[i]["value"],
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
            "evidence": evidence})
        if status == ALARM and not allowed:
            for i in sorted(fired):  # in score-row order
                evidence_json = {**json.loads(scores.column("evidence")[i].as_py()), "p_value": p[i],
                                 "judged_by": source[i]}
                tail = population.tail(table, key_kind, rows[i]["feature"])
                if tail is not None:
                    evidence_json["population_median"] = tail.median
                    evidence_json["population_threshold"] = limits[i]
                one = {**rows[i], "status": "anomaly", "score": score_of(alone[i]),
                       "evidence": json.dumps(evidence_json, sort_keys=True, allow_nan=False)}
                if source[i] == POPULATION:
                    one.update(detector=POPULATION, direction="up", threshold=limits[i])
                reported.append(one)
    return (pa.Table.from_pylist(verdicts, schema=schemas.VERDICTS),
            pa.Table.from_pylist(reported, schema=schemas.ANOMALIES))


CASES = {
    "gaussian, a newcomer": ("gaussian", {}, dict(newcomer_records=2_000), VerdictSettings()),
    "gaussian, loose rate": ("gaussian", {}, dict(hosts=60, minutes=40, seed=3), VerdictSettings(alarm_rate=0.05)),
    "spot, own tails": ("spot", {"n_init": 12}, dict(hosts=40, minutes=60, seed=4), VerdictSettings(alarm_rate=0.2)),
    "iqr, allow-list": ("iqr", {}, dict(hosts=50, minutes=30, seed=5, newcomer_records=900),
                        VerdictSettings(alarm_rate=0.05, allow=AllowList.parse(["10.0.0.0/28", "10.9.9.9 records"]))),
    "no population, small windows": ("gaussian", {}, dict(hosts=20, minutes=15, seed=6), VerdictSettings(min_records=25)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_columnar_judge_equals_the_row_by_row_rules(case):
    name, params, table_options, settings = CASES[case]
    windows = windows_table(**table_options)
    config = DetectorConfig(name, params, ("records", "distinct_names", "nxdomain_ratio"))
    scores = score_table(windows, config)
    population = Population({}) if case.startswith("no population") else \
        Population.of_windows(windows, config.features)
    verdicts, reported, counts = judge(scores, population, settings)
    expected_verdicts, expected_reported = oracle(scores, population, settings)
    statuses = expected_verdicts.column("status").to_pylist()
    if not case.startswith("no population"):  # each case reaches the paths it is named for
        assert statuses.count(ALARM) > 0 and statuses.count(NORMAL) > 0
    if case.startswith("spot"):
        assert any(e["judged_by"] == OWN_HISTORY and e["threshold"] is not None
                   for row in expected_verdicts.column("evidence").to_pylist() for e in row)
    if "allow" in case:
        assert 0 < sum(expected_verdicts.column("allowed").to_pylist()) < statuses.count(ALARM)
    if case.startswith("no population"):
        assert {TOO_FEW_RECORDS, NO_MODEL} <= set(expected_verdicts.column("reason").to_pylist())
    assert verdicts.equals(expected_verdicts)
    assert reported.equals(expected_reported)
    p, source = feature_probabilities(scores, population)
    expected_p, expected_source = probabilities_by_row(scores, population)
    np.testing.assert_array_equal(p, expected_p)
    assert source.tolist() == expected_source
    reasons = expected_verdicts.column("reason").to_pylist()
    allowed = expected_verdicts.column("allowed").to_pylist()
    assert counts == {"verdicts": len(statuses),
                      "alarms": sum(s == ALARM and not a for s, a in zip(statuses, allowed)),
                      "allowed": sum(s == ALARM and a for s, a in zip(statuses, allowed)),
                      "hunt_alarms": 0,  # no hunt marks given: the statistical rules alone
                      "unjudged_too_few_records": reasons.count(TOO_FEW_RECORDS),
                      "unjudged_no_model": reasons.count(NO_MODEL)}
