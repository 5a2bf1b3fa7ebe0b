"""cs448b daily flows per host: which host-days beamlytics' spot, shesd and band flag, beside Prophet's
out-of-interval days and luminol's anomalies (the seed notebook's tools), printed as a Markdown table.

    BEAMLYTICS_DATA=../shared/data python -m benchmarks.compare_daily_series

Prophet: weekly seasonality only (92 days: no yearly cycle), interval_width as our band's; luminol:
its default detector (bitmap) on the count series, a day flagged when its score is in luminol's
anomaly windows. Both are oracles only: neither is imported by beamlytics.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from beamlytics.series import daily

DATA = os.environ.get("BEAMLYTICS_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
PATH = os.path.join(DATA, "labelled", "kaggle_cs448b", "cs448b_ipasn.csv")


def prophet_flags(series: daily.DailySeries, interval_width: float) -> np.ndarray:
    from prophet import Prophet

    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
    frame = pd.DataFrame({"ds": pd.to_datetime(series.days), "y": series.counts})
    model = Prophet(weekly_seasonality=True, yearly_seasonality=False, daily_seasonality=False,
                    interval_width=interval_width)
    model.fit(frame)
    forecast = model.predict(frame)
    return ((frame.y < forecast.yhat_lower) | (frame.y > forecast.yhat_upper)).to_numpy()


def luminol_flags(series: daily.DailySeries) -> np.ndarray:
    """luminol 0.4 calls numpy.asscalar, removed in numpy 1.23 (AttributeError: module 'numpy' has no
    attribute 'asscalar'); it is put back as what it was, `a.item()`, for luminol alone."""
    if not hasattr(np, "asscalar"):
        np.asscalar = lambda array: array.item()
    from luminol.anomaly_detector import AnomalyDetector

    anomalies = AnomalyDetector(dict(enumerate(series.counts.tolist()))).get_anomalies()
    flags = np.zeros(series.days.size, dtype=bool)
    flags[[int(anomaly.exact_timestamp) for anomaly in anomalies]] = True
    return flags


def main() -> None:
    settings = daily.SeriesSettings()
    all_series, rejected = daily.read_daily_counts(PATH)
    table = daily.flags_table(all_series, settings)
    hosts = table.column("host").to_numpy(zero_copy_only=False)
    print(f"{len(all_series)} hosts, {all_series[0].days.size} days, {len(rejected)} rejected rows\n")
    print("| host | spot | shesd | band | prophet | luminol |")
    print("| --- | --- | --- | --- | --- | --- |")
    totals = {name: 0 for name in ("spot", "shesd", "band", "prophet", "luminol")}
    for series in all_series:
        mine = hosts == series.host
        flags = {name: table.column(name).to_numpy(zero_copy_only=False)[mine] for name in daily.DETECTOR_NAMES}
        flags["prophet"] = prophet_flags(series, settings.band_width)
        flags["luminol"] = luminol_flags(series)
        cells = []
        for name, mask in flags.items():
            totals[name] += int(mask.sum())
            cells.append(" ".join(str(day)[5:] for day in series.days[mask]) or "—")
        print(f"| {series.host} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(str(totals[name]) for name in totals) + " |")


if __name__ == "__main__":
    main()
