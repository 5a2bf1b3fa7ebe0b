"""An endpoint's feature series from a `detect` output folder, judged by S-H-ESD.

`detect` writes one row per endpoint-window that holds records (OUT/features/*.parquet). An
endpoint's series of a feature runs window by window from its first window to its last; a window
without a row had no record of the endpoint, so its value is 0 (every feature of an empty window
is a count, a sum or a share of nothing). A null value (a feature a detect run did not compute)
stays NaN, which S-H-ESD never flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from beamlytics.detectors.shesd import s_h_esd
from beamlytics.parsers.base import Rejected
from beamlytics.series.daily import MAX_HOST_DAYS

SOURCE_TOOL = "detect_features"
FLAGS_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("window_start", pa.timestamp("us", tz="UTC")),
    pa.field("value", pa.float64()),
    pa.field("shesd", pa.bool_()),
])


@dataclass(frozen=True)
class WindowSeries:
    key: str
    starts_us: np.ndarray  # int64, consecutive windows
    values: np.ndarray  # float64


def read_features(files: Sequence[str], feature: str, key: str | None = None) -> tuple[pa.Table, list[Rejected]]:
    """(key, window_start µs, window_end µs, value) of `files`, and a dead letter per unreadable file.

    A feature no readable file has is a ValueError naming the ones they have.
    """
    parts, rejected, known = [], [], set()
    for path in files:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as error:
            rejected.append(Rejected(path, 0, f"cannot read as Parquet: {' '.join(str(error).split())}",
                                     source_tool=SOURCE_TOOL))
            continue
        missing = [name for name in ("key", "window_start", "window_end") if name not in table.column_names]
        if missing:
            rejected.append(Rejected(path, 0, f"not a detect features file: no {', '.join(missing)} column",
                                     source_tool=SOURCE_TOOL))
            continue
        known.update(table.column_names)
        if feature not in table.column_names:
            continue
        if key is not None:
            table = table.filter(pc.equal(table["key"], key))
        parts.append(pa.table({
            "key": pc.cast(table["key"], pa.string()),
            "start": pc.cast(pc.cast(table["window_start"], pa.timestamp("us", tz="UTC")), pa.int64()),
            "end": pc.cast(pc.cast(table["window_end"], pa.timestamp("us", tz="UTC")), pa.int64()),
            "value": pc.cast(table[feature], pa.float64()),
        }))
    if not parts and known:
        features = sorted(known - {"table", "key_kind", "key", "window_start", "window_end", "slot_counts"})
        raise ValueError(f"no feature {feature!r} in the features files; they have {', '.join(features)}")
    empty = pa.table({"key": pa.array([], pa.string()), "start": pa.array([], pa.int64()),
                      "end": pa.array([], pa.int64()), "value": pa.array([], pa.float64())})
    return (pa.concat_tables(parts) if parts else empty), rejected


def build_series(rows: pa.Table) -> list[WindowSeries]:
    """Per-key series, sorted by key, on each key's window grid with 0 for windows without a row."""
    if not rows.num_rows:
        return []
    window_us = int(pc.min(pc.subtract(rows["end"], rows["start"])).as_py())
    if window_us <= 0:
        raise ValueError("the features' windows have no length (window_end is not after window_start)")
    ordered = rows.sort_by([("key", "ascending"), ("start", "ascending")])
    keys = ordered["key"].to_pylist()
    starts = ordered["start"].to_numpy()
    values = ordered["value"].to_numpy(zero_copy_only=False).astype(float)
    bounds = [0, *[i for i in range(1, len(keys)) if keys[i] != keys[i - 1]], len(keys)]
    total = sum((starts[end - 1] - starts[begin]) // window_us + 1 for begin, end in zip(bounds, bounds[1:]))
    if total > MAX_HOST_DAYS:
        raise ValueError(f"the series would hold {total} endpoint-windows, over {MAX_HOST_DAYS}: "
                         "choose one endpoint (--key) or a longer window")
    series = []
    for begin, end in zip(bounds, bounds[1:]):
        first = starts[begin]
        grid = np.zeros((starts[end - 1] - first) // window_us + 1)
        # Two runs into one folder cannot happen (the output contract), so a window has one row per key.
        grid[(starts[begin:end] - first) // window_us] = values[begin:end]
        series.append(WindowSeries(keys[begin], first + window_us * np.arange(grid.size, dtype=np.int64), grid))
    return series


def shesd_table(series: Sequence[WindowSeries], period: int | None, alpha: float, max_anoms: float) -> pa.Table:
    """key, window_start, value, shesd for every window of every series."""
    parts = [pa.table({"key": pa.array([one.key] * one.values.size, pa.string()),
                       "window_start": pa.array(one.starts_us, pa.int64()).cast(FLAGS_SCHEMA.field("window_start").type),
                       "value": pa.array(one.values, pa.float64()),
                       "shesd": pa.array(s_h_esd(one.values, period=period, alpha=alpha, max_anoms=max_anoms))},
                      schema=FLAGS_SCHEMA) for one in series]
    return pa.concat_tables(parts) if parts else FLAGS_SCHEMA.empty_table()
