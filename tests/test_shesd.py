"""S-H-ESD against Twitter's algorithm: pyculiarity itself where a Python with it is given, else a
re-implementation of pyculiarity's `detect_anoms` written here (rstl, R's STL ported, for the
decomposition; a pandas loop for ESD).

pyculiarity 0.0.7 installs on Python 3.11 but cannot run with pandas 3: `detect_anoms` fails at
`data.dtypes[0]` with `KeyError: 0` (and uses `pandas.Int64Index`, removed in pandas 2). It runs
in a separate venv with pandas<2: point BEAMLYTICS_PYCULIARITY_PYTHON at that venv's python.
Twitter's own example series (`raw_data`) is not in the data folder, so the oracle runs on
generated series and on ours (cs448b daily flows per host, NAB's EC2 NetworkIn).
"""
from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from beamlytics.detectors import s_h_esd
from beamlytics.detectors.shesd import _centre_and_spread, detect_period, esd_outliers, seasonal_remainder
from tests.conftest import shared_data

rstl = pytest.importorskip("rstl")

PYCULIARITY_SCRIPT = """
import json, sys
import pandas as pd
from pyculiarity import detect_vec
request = json.load(sys.stdin)
found = []
for series in request["series"]:
    result = detect_vec(pd.Series(series, dtype=float), period=request["period"], alpha=request["alpha"],
                        max_anoms=request["max_anoms"], direction=request["direction"])
    found.append(sorted(int(i) for i in result["anoms"].index))
json.dump(found, sys.stdout)
"""


def twitter_reference(values, period, alpha, max_anoms, direction="both", hybrid=True) -> list[int]:
    """pyculiarity's detect_anoms, written again: R's STL (rstl), then ESD removing one value a step."""
    values = np.asarray(values, dtype=float)
    seasonal = rstl.STL(values, period, "periodic", robust=True).seasonal if period else 0.0
    data = pd.Series(values - seasonal - np.median(values))
    n = len(data)
    removed, found = [], 0
    for i in range(1, int(n * max_anoms) + 1):
        centre = data.median() if hybrid else data.mean()
        spread = stats.median_abs_deviation(data, scale="normal") if hybrid else data.std()
        if spread == 0:
            break
        if direction == "pos":
            ares = data - centre
        elif direction == "neg":
            ares = centre - data
        else:
            ares = (data - centre).abs()
        ares = ares / spread
        top = ares.idxmax()
        statistic = ares[top]
        removed.append(int(top))
        data = data.drop(top)
        p = 1 - alpha / (n - i + 1) if direction != "both" else 1 - alpha / (2 * (n - i + 1))
        t = stats.t.ppf(p, n - i - 1)
        if statistic > t * (n - i) / math.sqrt((n - i - 1 + t ** 2) * (n - i + 1)):
            found = i
    return sorted(removed[:found])


def pyculiarity_anomalies(series: list[list[float]], period, alpha, max_anoms, direction="both"):
    python = os.environ.get("BEAMLYTICS_PYCULIARITY_PYTHON")
    if not python:
        return None
    request = {"series": series, "period": period, "alpha": alpha, "max_anoms": max_anoms, "direction": direction}
    done = subprocess.run([python, "-c", PYCULIARITY_SCRIPT], input=json.dumps(request), capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def cs448b_daily_series() -> list[np.ndarray]:
    table = pd.read_csv(shared_data("labelled/kaggle_cs448b/cs448b_ipasn.csv"))
    days = pd.date_range(table.date.min(), table.date.max()).strftime("%Y-%m-%d")
    return [group.groupby("date").f.sum().reindex(days, fill_value=0).to_numpy(float)
            for _, group in table.groupby("l_ipn")]


def planted_series(seed: int = 1) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    steps = np.arange(24 * 14)
    values = 50 + 10 * np.sin(steps * 2 * np.pi / 24) + rng.normal(0, 2, steps.size) + steps * 0.05
    spikes = [40, 100, 230]
    values[spikes] += [40, -35, 60]
    return values, spikes


def test_planted_spikes_found_and_only_them():
    values, spikes = planted_series()
    assert np.flatnonzero(s_h_esd(values, period=24)).tolist() == spikes
    # the daily cycle's peaks (±10) are not anomalies once the seasonal part is removed,
    # but a plain ESD on the raw values misses the dip that stays inside the cycle's range
    assert 100 not in np.flatnonzero(s_h_esd(values, period=1)).tolist()


@pytest.mark.parametrize("direction", ["both", "pos", "neg"])
@pytest.mark.parametrize("hybrid", [True, False])
def test_equals_twitter_reference_on_generated_series(direction, hybrid):
    for seed in range(4):
        values, _ = planted_series(seed)
        expected = twitter_reference(values, 24, alpha=0.05, max_anoms=0.1, direction=direction, hybrid=hybrid)
        found = np.flatnonzero(s_h_esd(values, period=24, alpha=0.05, max_anoms=0.1, direction=direction,
                                       hybrid=hybrid))
        assert found.tolist() == expected


def test_equals_twitter_reference_on_cs448b_hosts():
    series = cs448b_daily_series()
    ours = [np.flatnonzero(s_h_esd(s, period=7, alpha=0.05, max_anoms=0.1)).tolist() for s in series]
    assert ours == [twitter_reference(s, 7, alpha=0.05, max_anoms=0.1) for s in series]
    assert sum(map(len, ours)) > 0
    real = pyculiarity_anomalies([s.tolist() for s in series], 7, 0.05, 0.1)
    if real is not None:
        assert ours == real


def test_equals_pyculiarity_on_generated_series_when_available():
    series = [planted_series(seed)[0].tolist() for seed in range(3)]
    real = pyculiarity_anomalies(series, 24, 0.025, 0.1)
    if real is None:
        pytest.skip("BEAMLYTICS_PYCULIARITY_PYTHON not set (pyculiarity needs pandas<2, see module docstring)")
    assert [np.flatnonzero(s_h_esd(s, period=24, max_anoms=0.1)).tolist() for s in series] == real


def test_equals_twitter_reference_on_nab_network_in():
    table = pd.read_csv(shared_data("labelled/nab/ec2_network_in_257a54.csv"))
    values = table["value"].to_numpy(float)[: 288 * 6]  # six days of 5-minute samples, period one day
    found = np.flatnonzero(s_h_esd(values, period=288, alpha=0.05, max_anoms=0.02)).tolist()
    assert found == twitter_reference(values, 288, alpha=0.05, max_anoms=0.02)


def test_mad_zero_falls_back_to_mean_deviation():
    # 29 zeros and one 5: the MAD is 0 (Twitter stops there and finds nothing). The mean absolute
    # deviation from the median is 5/30, times √(π/2) = 0.2089; 5 / 0.2089 = 23.9 beats Rosner's
    # λ_1 = 3.10 for n = 30, α = 0.025; after it only zeros remain and the test ends.
    values = np.zeros(30)
    values[20] = 5.0
    assert np.flatnonzero(s_h_esd(values, period=1)).tolist() == [20]
    assert twitter_reference(values, None, alpha=0.025, max_anoms=0.49) == []
    assert not s_h_esd(np.full(30, 3.0)).any()


def test_hybrid_spread_is_scaled_mad():
    # median 10, |x − 10| = 0,0,1,1,2,2,30 → MAD = 1, σ̂ = 1.4826; 40 is 30/1.4826 = 20.2 σ̂ out,
    # far beyond λ_1 = 2.02 (n = 7, α = 0.05); 12 is 1.35 σ̂ out, below λ_2 = 1.89 (n = 6)
    sample = np.array([10.0, 9, 11, 8, 12, 40, 10])
    assert _centre_and_spread(sample, hybrid=True) == (10.0, pytest.approx(1.4826))
    assert stats.median_abs_deviation(sample, scale="normal") == pytest.approx(1.4826, rel=1e-4)
    assert esd_outliers(sample, alpha=0.05, hybrid=True, max_outliers=3).tolist() == [5]


def test_period_detected_when_absent():
    values, spikes = planted_series()
    assert detect_period(values) == 24
    assert np.flatnonzero(s_h_esd(values)).tolist() == spikes
    assert detect_period(np.random.default_rng(3).normal(size=300)) is None


def test_nan_never_flagged_and_rest_still_judged():
    values, spikes = planted_series()
    values[[5, 6, 150]] = np.nan
    mask = s_h_esd(values, period=24)
    assert not mask[[5, 6, 150]].any()
    assert np.flatnonzero(mask).tolist() == spikes
    assert np.isnan(seasonal_remainder(values, 24)[[5, 6, 150]]).all()


@pytest.mark.parametrize("arguments", [{"alpha": 0}, {"max_anoms": 0.5}, {"direction": "up"}])
def test_bad_arguments_refused(arguments):
    with pytest.raises(ValueError):
        s_h_esd(np.arange(20.0), **arguments)
