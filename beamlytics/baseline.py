"""An earlier run's `features/` table → training windows, rejecting the rows that cannot be one.

A baseline folder is input like any other: a row with a time no calendar holds (year 10000),
a missing key or a negative count is dead-lettered with its file and row number, and the
rows around it still calibrate the detectors.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import features
from beamlytics.detectors.endpoint import EndpointWindow
from beamlytics.features import WindowSpec
from beamlytics.options_catalog import MAX_US, MIN_US
from beamlytics.parsers.base import Rejected

SOURCE_TOOL = "beamlytics-features"
_TIMES = ("window_start", "window_end")


def baseline_windows(table: pa.Table, spec: WindowSpec, source: str) -> Iterator[EndpointWindow | Rejected]:
    """Training windows of `spec`'s series in `table` (a features/ file), and a `Rejected` per bad row."""
    needed = ["table", "key_kind", "key", *_TIMES, "records", *features.FEATURES[spec.table]]
    missing = [name for name in dict.fromkeys(needed) if name not in table.column_names]
    if missing:
        # A features/ folder of an older beamlytics lacks the features added since: say how to get them.
        yield Rejected(source, 0, f"not a {spec.table} features file of this version: no column {', '.join(missing)}"
                       " (run detect on the baseline's input again)", source_tool=SOURCE_TOOL, units=table.num_rows)
        return
    # Times as integers: converting a year-10000 timestamp to datetime would raise.
    columns = {name: (pc.cast(table.column(name), pa.int64()) if name in _TIMES else table.column(name))
               for name in needed}
    if "slot_counts" in table.column_names:
        columns["slot_counts"] = table.column("slot_counts")
    rows = pa.table(columns).to_pylist()
    for position, row in enumerate(rows, start=1):
        if row["table"] != spec.table or row["key_kind"] != spec.key:
            continue  # another series of the same run: not ours to calibrate on
        problem = _problem(row, spec)
        if problem:
            yield Rejected(source, position, problem, _excerpt(row), SOURCE_TOOL)
            continue
        yield features.window_from_row(row, spec)._replace(train=True)


def file_windows(read: Callable[[], pa.Table], spec: WindowSpec, path: str) -> Iterator[EndpointWindow | Rejected]:
    """`baseline_windows` of the features/ file at `path`, read by `read` (Beam's filesystems in batch, a local
    file live); a file that cannot be read as Parquet is one `Rejected`."""
    try:
        table = read()
    except (OSError, pa.ArrowException) as error:
        yield Rejected(path, 0, f"cannot read as Parquet: {error}", source_tool=SOURCE_TOOL)
        return
    yield from baseline_windows(table, spec, path)


def _problem(row: dict, spec: WindowSpec) -> str | None:
    if row["key"] is None:
        return "no endpoint key"
    for name in _TIMES:
        value = row[name]
        if value is None or not MIN_US <= value <= MAX_US:
            return f"{name} missing or outside years 1-9999"
    if row["window_end"] <= row["window_start"]:
        return "window_end is not after window_start"
    if row["records"] is None or row["records"] < 0:
        return "records missing or negative"
    for name in features.FEATURES[spec.table]:
        value = row[name]
        if name in features.UNKNOWABLE_FEATURES and isinstance(value, float) and math.isnan(value):
            continue
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return f"feature {name} missing, NaN or infinite"
    return None


def _excerpt(row: dict) -> str:
    return ", ".join(f"{name}={row[name]}" for name in ("key", *_TIMES, "records"))[:200]
