"""The data table an analytic runs on: the Parquet files a `parse` run wrote."""
from __future__ import annotations

import os
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from beamlytics import schemas
from beamlytics.manifest import read_manifest


def parse_output_files(folder: str, table: str) -> list[str] | None:
    """The `table` Parquet files of a finished `parse` output folder, or None when `folder` is no such folder."""
    if not os.path.isdir(folder):
        return None
    manifest = read_manifest(folder)
    if manifest is None or manifest.command != "parse":
        return None
    return sorted(os.path.join(folder, path) for path, _, _ in manifest.files
                  if path.startswith(f"{table}/") and path.endswith(".parquet"))


def load_table(files: Sequence[str], table: str) -> pa.Table:
    """The records of `files` in the table's schema and in file order."""
    schema = schemas.TABLES[table].empty_table().schema
    parts = [pq.read_table(path, schema=schema) for path in files]
    return pa.concat_tables(parts) if parts else schema.empty_table()
