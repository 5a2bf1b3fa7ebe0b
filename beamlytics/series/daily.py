"""Per-host daily series from aggregate counts, and three detectors over them.

The input is a CSV of counts per (day, host[, peer]), like the Kaggle "Computer Network Traffic"
set (cs448b_ipasn.csv: date, l_ipn, r_asn, f = flows that day between local host l_ipn and
remote ASN r_asn). A host's series is the sum of its counts per day, every day from the file's
first day to its last; a day without a row for the host counts 0 (the file only lists non-zero
aggregates).

Detectors, each giving one boolean per host-day:
- `spot`: our SPOT (`SpotDetector`, upper tail), online, the first `n_init` days calibrate;
- `shesd`: S-H-ESD with a weekly period (`beamlytics.detectors.s_h_esd`);
- `band`: a Prophet-like seasonal forecast band, a least-squares fit of a linear trend plus a
  weekly seasonality (Fourier terms of order 3, Prophet's default for weekly seasonality) with the
  OLS prediction interval of width `interval_width`; a day outside its interval is an anomaly.
  Prophet's own interval comes from simulated trend changes and MAP fitting; this one is exact
  OLS, which statsmodels reproduces (the test oracle).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import stats

from beamlytics.detectors.shesd import s_h_esd
from beamlytics.detectors.spot import SpotDetector
from beamlytics.parsers.base import Rejected

SOURCE_TOOL = "daily_csv"
WEEK = 7
WEEKLY_FOURIER_ORDER = 3
DETECTOR_NAMES = ("spot", "shesd", "band")
MAX_FIELD_CHARS = 4096  # a longer field is damage, not a count: rejected rather than held in memory
_EXCERPT_CHARS = 200
# Every host gets a value for every day of the file's range: a bound on hosts × days keeps one stray
# date (year 1 or 9999) or millions of hosts from filling memory.
MAX_HOST_DAYS = 20_000_000


@dataclass(frozen=True)
class DailySeries:
    host: str
    days: np.ndarray  # datetime64[D], consecutive
    counts: np.ndarray  # float64, one per day


@dataclass(frozen=True)
class SeriesSettings:
    spot_q: float = 1e-3
    spot_n_init: int = 30
    shesd_alpha: float = 0.05  # Twitter's AnomalyDetectionVec defaults
    shesd_max_anoms: float = 0.1
    band_width: float = 0.99


def read_daily_counts(path: str, day: str = "date", host: str = "l_ipn", count: str = "f",
                      ) -> tuple[list[DailySeries], list[Rejected]]:
    """Per-host series of the CSV at `path`, sorted by host, and the rows that could not be read.

    A row with a bad day, an empty host or a count that is not a finite number ≥ 0 is a dead
    letter (its 1-based line number and reason); the other rows are kept. Raises ValueError when
    a named column is missing from the header.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        totals, rejected = sum_counts(handle, path, day, host, count)
    return build_series(totals), rejected


def sum_counts(lines: Iterable[str], source: str, day: str, host: str, count: str,
               ) -> tuple[dict[tuple[str, np.datetime64], float], list[Rejected]]:
    """Σ count per (host, day) over the CSV `lines`, with a dead letter per unreadable row."""
    rows = csv.reader(_bounded(lines))
    header = next(rows, None)
    if header is None:
        raise ValueError(f"{source}: empty file, no header")
    missing = [name for name in (day, host, count) if name not in header]
    if missing:
        raise ValueError(f"{source}: no column {', '.join(missing)} in the header ({', '.join(header)})")
    columns = [header.index(name) for name in (day, host, count)]
    totals: dict[tuple[str, np.datetime64], float] = {}
    rejected: list[Rejected] = []
    for row in rows:
        line = rows.line_num
        if not row:
            continue
        reason = _row_problem(row, columns)
        if reason:
            excerpt = ",".join(row)[:_EXCERPT_CHARS]
            rejected.append(Rejected(source, line, reason, excerpt, SOURCE_TOOL))
            continue
        key = (row[columns[1]].strip(), np.datetime64(row[columns[0]].strip(), "D"))
        totals[key] = totals.get(key, 0.0) + float(row[columns[2]])
    return totals, rejected


def _bounded(lines: Iterable[str]) -> Iterator[str]:
    """Lines cut to MAX_FIELD_CHARS·4: a hostile line without newlines never fills memory."""
    limit = MAX_FIELD_CHARS * 4
    for line in lines:
        yield line if len(line) <= limit else line[:limit] + "\n"


def _row_problem(row: Sequence[str], columns: Sequence[int]) -> str:
    if len(row) <= max(columns):
        return f"{len(row)} fields, the header names more"
    day_text, host_text, count_text = (row[i].strip() for i in columns)
    if any(len(text) >= MAX_FIELD_CHARS for text in (day_text, host_text, count_text)):
        return "field too long"
    try:
        dt.date.fromisoformat(day_text)
    except ValueError:
        return f"day {day_text[:40]!r} is not YYYY-MM-DD"
    if not host_text:
        return "empty host"
    try:
        value = float(count_text)
    except ValueError:
        return f"count {count_text[:40]!r} is not a number"
    if not math.isfinite(value) or value < 0:
        return f"count {count_text[:40]!r} is not a finite number ≥ 0"
    return ""


def build_series(totals: dict[tuple[str, np.datetime64], float]) -> list[DailySeries]:
    """One series per host over the common day range, 0 where a host has no row."""
    if not totals:
        return []
    all_days = [day for _, day in totals]
    first, last = min(all_days), max(all_days)
    hosts = sorted({host for host, _ in totals}, key=_host_order)
    span = int((last - first) // np.timedelta64(1, "D")) + 1
    if span * len(hosts) > MAX_HOST_DAYS:
        raise ValueError(f"{len(hosts)} hosts × {span} days ({first} to {last}) is more than {MAX_HOST_DAYS:,} "
                         "host-days: check the dates, or split the file")
    days = np.arange(first, last + np.timedelta64(1, "D"), dtype="datetime64[D]")
    counts = {host: np.zeros(days.size) for host in hosts}
    for (host, day), total in totals.items():
        counts[host][int((day - days[0]) // np.timedelta64(1, "D"))] = total
    return [DailySeries(host, days, counts[host]) for host in hosts]


def _host_order(host: str) -> tuple[int, int | str]:
    """Numeric host ids in numeric order (2 before 10), then the others by text."""
    return (0, int(host)) if host.isdigit() else (1, host)


def spot_flags(counts: np.ndarray, q: float, n_init: int) -> np.ndarray:
    detector = SpotDetector(q=q, n_init=n_init, tails="up")
    return np.array([detector.observe(value).is_anomaly for value in counts], dtype=bool)


def weekly_design(days: np.ndarray, order: int = WEEKLY_FOURIER_ORDER) -> np.ndarray:
    """Columns 1, t (days since the first), and sin/cos(2πk·weekday/7) for k = 1..order."""
    t = (days - days[0]).astype(np.int64).astype(np.float64)
    weekday = ((days.astype("datetime64[D]").astype(np.int64) + 3) % WEEK).astype(np.float64)  # 0 = Monday
    columns = [np.ones(t.size), t]
    for k in range(1, order + 1):
        angle = 2.0 * np.pi * k * weekday / WEEK
        columns += [np.sin(angle), np.cos(angle)]
    return np.column_stack(columns)


def seasonal_band(days: np.ndarray, counts: np.ndarray, interval_width: float,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forecast, lower, upper) per day: OLS trend + weekly seasonality, prediction interval.

    The interval is ŷ ± t_{(1+w)/2, n−p} · s · √(1 + xᵢ(XᵀX)⁻¹xᵢᵀ), the textbook interval for a
    new observation at day i. A series too short to fit (n ≤ p) gets an infinite band.
    """
    if not 0.0 < interval_width < 1.0:
        raise ValueError("interval width must be in (0, 1)")
    design = weekly_design(days)
    n, p = design.shape
    if n <= p:
        return np.full(n, np.nan), np.full(n, -np.inf), np.full(n, np.inf)
    coefficients, *_ = np.linalg.lstsq(design, counts, rcond=None)
    forecast = design @ coefficients
    scale = math.sqrt(float(np.sum((counts - forecast) ** 2)) / (n - p))
    leverage = np.einsum("ij,jk,ik->i", design, np.linalg.pinv(design.T @ design), design)
    half = stats.t.ppf(0.5 + interval_width / 2.0, n - p) * scale * np.sqrt(1.0 + leverage)
    return forecast, forecast - half, forecast + half


def band_flags(days: np.ndarray, counts: np.ndarray, interval_width: float) -> np.ndarray:
    _, lower, upper = seasonal_band(days, counts, interval_width)
    return (counts < lower) | (counts > upper)


def detect(series: DailySeries, settings: SeriesSettings = SeriesSettings()) -> dict[str, np.ndarray]:
    """Each detector's flags over one host's series."""
    return {
        "spot": spot_flags(series.counts, settings.spot_q, settings.spot_n_init),
        "shesd": s_h_esd(series.counts, period=WEEK, alpha=settings.shesd_alpha, max_anoms=settings.shesd_max_anoms),
        "band": band_flags(series.days, series.counts, settings.band_width),
    }


def flags_table(all_series: Sequence[DailySeries], settings: SeriesSettings = SeriesSettings()):
    """Arrow table: host, day, count, and one boolean column per detector, by host then day."""
    import pyarrow as pa

    hosts, days, counts = [], [], []
    flagged: dict[str, list[np.ndarray]] = {name: [] for name in DETECTOR_NAMES}
    for series in all_series:
        hosts += [series.host] * series.days.size
        days.append(series.days)
        counts.append(series.counts)
        for name, flags in detect(series, settings).items():
            flagged[name].append(flags)
    joined = (lambda parts, dtype: np.concatenate(parts) if parts else np.array([], dtype=dtype))
    return pa.table({
        "host": pa.array(hosts, pa.string()),
        "day": pa.array(joined(days, "datetime64[D]"), pa.date32()),
        "count": pa.array(joined(counts, np.float64), pa.float64()),
        **{name: pa.array(joined(flagged[name], bool), pa.bool_()) for name in DETECTOR_NAMES},
    })


def plot_panels(all_series: Sequence[DailySeries], table, path: str, band_width: float) -> None:
    """One panel per host: the daily count, the band, and each detector's flagged days."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(all_series))
    figure, axes = plt.subplots(rows, 1, figsize=(11, 2.2 * rows), sharex=True, squeeze=False)
    markers = {"spot": ("^", "tab:red"), "shesd": ("o", "tab:orange"), "band": ("s", "tab:purple")}
    hosts = table.column("host").to_numpy(zero_copy_only=False)
    for axis, series in zip(axes[:, 0], all_series):
        days = series.days.astype("datetime64[D]")
        _, lower, upper = seasonal_band(series.days, series.counts, band_width)
        axis.plot(days, series.counts, color="tab:blue", linewidth=1, label="count")
        axis.fill_between(days, lower, upper, color="tab:gray", alpha=0.25, label="weekly band")
        mine = hosts == series.host
        for name, (marker, colour) in markers.items():
            flags = table.column(name).to_numpy(zero_copy_only=False)[mine]
            axis.scatter(days[flags], series.counts[flags], marker=marker, facecolors="none", edgecolors=colour,
                         s=60, label=name)
        axis.set_ylabel(f"host {series.host}")
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def read_text(text: str, source: str = "<text>", day: str = "date", host: str = "l_ipn", count: str = "f",
              ) -> tuple[list[DailySeries], list[Rejected]]:
    """`read_daily_counts` of CSV text (tests, small inputs)."""
    totals, rejected = sum_counts(io.StringIO(text), source, day, host, count)
    return build_series(totals), rejected
