"""The data table an analytic runs on: Parquet files a `parse` run wrote, cut to a day range."""
from __future__ import annotations

import os
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from beamlytics import schemas
from beamlytics.inputs import DayRange
from beamlytics.pipelines.outputs import read_manifest

TIME_COLUMN = {"dns": "req_time", "http": "req_time", "named_flows": "time_start"}


def parse_output_files(folder: str, table: str) -> list[str] | None:
    """The `table` Parquet files of a finished `parse` output folder, or None when `folder` is no such folder."""
    if not os.path.isdir(folder):
        return None
    manifest = read_manifest(folder)
    if manifest is None or manifest.command != "parse":
        return None
    return sorted(os.path.join(folder, path) for path, _, _ in manifest.files
                  if path.startswith(f"{table}/") and path.endswith(".parquet"))


def load_table(files: Sequence[str], table: str, days: DayRange = DayRange()) -> pa.Table:
    """The records of `files` in the table's schema and in file order; outside `days` (or untimed, when
    `days` is bounded) they are left out."""
    schema = schemas.TABLES[table].empty_table().schema
    parts = [pq.read_table(path, schema=schema) for path in files]
    records = pa.concat_tables(parts) if parts else schema.empty_table()
    start, end = days.micros()
    if not days.bounded:
        return records
    times = pc.cast(records[TIME_COLUMN[table]], pa.int64())
    keep = pc.is_valid(times)
    if start is not None:
        keep = pc.and_(keep, pc.greater_equal(times, start))
    if end is not None:
        keep = pc.and_(keep, pc.less(times, end))
    return records.filter(pc.fill_null(keep, False))
