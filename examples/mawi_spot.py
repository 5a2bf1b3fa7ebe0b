"""SPOT on the MAWI SYN ratio: the libspot Python example, with beamlytics' Spot.

Calibrates on the last 2000 points of 2012-08-17 (50 ms aggregates, column rSYN), runs on
2012-08-18 with q=5e-4, upper tail, level 0.99, max_excess 200, prints the alarm count and
draws the series, the anomaly threshold and the alarms to a PNG.

    python examples/mawi_spot.py [--data DIR] [--output mawi_spot.png]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from beamlytics.detectors.spot import ANOMALY, Spot

CALIBRATION_FILE = "mawi_170812_50_50.csv"
RUN_FILE = "mawi_180812_50_50.csv"
COLUMN = "rSYN"
CALIBRATION_POINTS = 2000
SETTINGS = {"q": 5e-4, "low": False, "level": 0.99, "max_excess": 200}


def default_data_dir() -> Path:
    if "BEAMLYTICS_DATA" in os.environ:
        return Path(os.environ["BEAMLYTICS_DATA"]) / "spot"
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spot"


def load_series(path: Path) -> np.ndarray:
    return pd.read_csv(path, usecols=[COLUMN])[COLUMN].to_numpy(dtype=float)


def run_spot(calibration: np.ndarray, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The anomaly threshold each value was held against, and where the alarms are."""
    spot = Spot(**SETTINGS)
    spot.fit(calibration)
    thresholds = np.empty(series.size)
    alarms = np.zeros(series.size, dtype=bool)
    for i, value in enumerate(series.tolist()):
        thresholds[i] = spot.anomaly_threshold
        alarms[i] = spot.step(value) == ANOMALY
    return thresholds, alarms


def plot(series: np.ndarray, thresholds: np.ndarray, alarms: np.ndarray, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    steps = np.arange(series.size)
    figure, axes = plt.subplots(figsize=(12, 4))
    axes.plot(steps, series, lw=0.6, color="#4878a8", label=COLUMN)
    axes.plot(steps, thresholds, lw=1.2, ls="--", color="#e08030", label="anomaly threshold")
    axes.scatter(steps[alarms], series[alarms], s=12, color="#c03030", zorder=3,
                 label=f"alarms ({int(alarms.sum())})")
    axes.set_xlabel("step (50 ms)")
    axes.set_ylabel(COLUMN)
    axes.set_title("SPOT on MAWI 2012-08-18 (calibrated on the end of 08-17)")
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="folder holding the two MAWI CSV files")
    parser.add_argument("--output", type=Path, default=Path("mawi_spot.png"), help="PNG to write")
    args = parser.parse_args(argv)

    paths = [args.data / CALIBRATION_FILE, args.data / RUN_FILE]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        print(f"error: data file not found: {', '.join(missing)} (use --data or BEAMLYTICS_DATA)",
              file=sys.stderr)
        return 1
    calibration = load_series(paths[0])[-CALIBRATION_POINTS:]
    series = load_series(paths[1])
    thresholds, alarms = run_spot(calibration, series)
    plot(series, thresholds, alarms, args.output)
    print(f"{int(alarms.sum())} alarms in {series.size} steps; plot written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
