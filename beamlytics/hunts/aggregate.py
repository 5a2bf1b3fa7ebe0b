"""Partial aggregates per hunt key: built per Arrow batch, merged in any order to the same result.

A partial is a dict of columns whose merge is exact and order-free: integer sums, minima,
maxima, sorted lists (multisets) and sorted distinct sets. Lists and sets keep their `cap`
smallest values, so memory per key is bounded on hostile input and the same values survive
whatever the batch boundaries were; a key that lost values is marked `capped`.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.hunts.config import HuntConfig

SUM, MIN, MAX, LIST, SET = "sum", "min", "max", "list", "set"
CAPPED = "capped"


@dataclass(frozen=True)
class Family:
    """One way of grouping records: its key columns, how batches become partials, how partials are judged."""

    name: str
    keys: tuple[str, ...]
    columns: Mapping[str, tuple[str, int | None]]  # partial column -> (kind, own cap or None for config.cap)
    build: Callable[[pa.RecordBatch, HuntConfig], pa.Table]  # batch -> one row per key, Arrow aggregates
    judge: Callable[[tuple, dict, HuntConfig, frozenset], list[dict]]  # (key, partial, config, hunts) -> findings

    def partials(self, batch: pa.RecordBatch, config: HuntConfig) -> Iterator[tuple[tuple, dict]]:
        grouped = self.build(batch, config)
        for row in grouped.to_pylist():
            key = tuple(row[name] for name in self.keys)
            yield key, self.merge(self.empty(), row, config)

    def empty(self) -> dict:
        return {CAPPED: False}

    def merge(self, left: dict, right: Mapping, config: HuntConfig) -> dict:
        merged = {CAPPED: bool(left.get(CAPPED)) or bool(right.get(CAPPED))}
        for column, (kind, own_cap) in self.columns.items():
            a, b = left.get(column), right.get(column)
            if kind in (LIST, SET):
                values, cut = _merge_sorted(a or [], b or [], own_cap or config.cap, distinct=kind == SET)
                merged[column] = values
                merged[CAPPED] |= cut and own_cap is None  # a short evidence list is not a lost measurement
            elif a is None or b is None:
                merged[column] = b if a is None else a
            elif kind == SUM:
                merged[column] = a + b
            elif kind == MIN:
                merged[column] = min(a, b)
            else:
                merged[column] = max(a, b)
        return merged


def _merge_sorted(left: list, right: list, cap: int, distinct: bool) -> tuple[list, bool]:
    values = (value for value in heapq.merge(sorted(v for v in left if v is not None),
                                             sorted(v for v in right if v is not None)))
    out: list = []
    for value in values:
        if distinct and out and out[-1] == value:
            continue
        if len(out) == cap:
            return out, True
        out.append(value)
    return out, False


def merge_all(family: Family, partials: Iterator[tuple[tuple, dict]], config: HuntConfig) -> dict[tuple, dict]:
    merged: dict[tuple, dict] = {}
    for key, partial in partials:
        merged[key] = family.merge(merged.get(key, family.empty()), partial, config)
    return merged


def with_horizons(table: pa.Table, times_us: np.ndarray, config: HuntConfig) -> pa.Table:
    """`table` with a `horizon` column: the start of each horizon its record falls in.

    Horizons start at multiples of the slide since the epoch (so a day horizon is a UTC day).
    Tumbling horizons give each record one row; sliding ones repeat a record once for every
    horizon that holds it, so each horizon is judged on all of its records, exactly.
    """
    step = config.step_us
    latest = np.floor_divide(times_us, step) * step
    return pa.concat_tables([table.append_column("horizon", pa.array(latest - back * step, pa.int64()))
                             for back in range(config.horizon_us // step)])


def micros(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pc.cast(column, pa.int64())


def group(table: pa.Table, keys: tuple[str, ...], aggregates: list[tuple[str, str]]) -> pa.Table:
    """`table` grouped on `keys`, aggregate output columns renamed to the partial column names.

    `aggregates` are (input column, Arrow aggregation); the output is named after the input
    column, so each input column is aggregated once.
    """
    grouped = table.group_by(list(keys), use_threads=False).aggregate(aggregates)
    renames = {f"{column}_{function}": column for column, function in aggregates}
    return grouped.rename_columns([renames.get(name, name) for name in grouped.column_names])
