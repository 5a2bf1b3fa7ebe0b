"""Per endpoint-window features, computed from Arrow batches without Beam.

A batch of records becomes a handful of partial aggregates, one per (endpoint, window)
that it touches; partials from different batches merge associatively, so a runner can
combine them in any order and on any worker and still get the same features. The Beam
transforms in `transforms.windows` only move these partials around.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.detectors.endpoint import EndpointWindow

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

# Endpoint keys an operator can choose, per table: option value -> column.
KEY_COLUMNS = {
    "dns": {"c_ip": "c_ip", "s_ip": "s_ip", "name": "query"},
    "http": {"c_ip": "c_ip", "s_ip": "s_ip", "name": "host"},
    "named_flows": {"c_ip": "c_ip", "s_ip": "s_ip", "name": "name"},
}
NAME_COLUMN = {table: columns["name"] for table, columns in KEY_COLUMNS.items()}

# Features of each table, in output order. Ratios are fractions of the window's records.
FEATURES = {
    "dns": ("records", "distinct_peers", "distinct_names", "nxdomain_ratio", "unanswered_ratio",
            "max_query_length"),
    "http": ("records", "distinct_peers", "distinct_names", "error_ratio", "request_bytes",
             "response_bytes"),
    "named_flows": ("records", "distinct_peers", "distinct_names", "distinct_ports", "c_pkt", "s_pkt",
                    "c_bytes", "s_bytes"),
}
DEFAULT_FEATURES = {
    "dns": ("records", "distinct_names", "nxdomain_ratio"),
    "http": ("records", "distinct_names", "error_ratio"),
    "named_flows": ("records", "distinct_peers", "c_bytes"),
}


# How records are placed in windows (see transforms/windows.py); here so that the CLI needs no Beam.
WINDOWINGS = ("key", "beam")


@dataclass(frozen=True)
class WindowSpec:
    """How records become endpoint-window features."""

    table: str
    key: str = "c_ip"
    window_us: int = 60_000_000
    slot_us: int | None = None  # per-slot record counts, for rate detectors

    def __post_init__(self) -> None:
        if self.table not in schemas.TABLES:
            raise ValueError(f"unknown table {self.table!r}; choose from {sorted(schemas.TABLES)}")
        if self.key not in KEY_COLUMNS[self.table]:
            raise ValueError(f"unknown key {self.key!r}; choose from {sorted(KEY_COLUMNS[self.table])}")
        if self.window_us <= 0:
            raise ValueError("the window must be longer than zero")
        if self.slot_us is not None and (self.slot_us <= 0 or self.window_us % self.slot_us):
            raise ValueError("the slot must divide the window evenly")

    @property
    def key_column(self) -> str:
        return KEY_COLUMNS[self.table][self.key]

    @property
    def peer_column(self) -> str:
        # Distinct "peers" are the other side of the endpoint: servers of a client, clients otherwise.
        return "s_ip" if self.key == "c_ip" else "c_ip"

    @property
    def slots(self) -> int:
        return self.window_us // self.slot_us if self.slot_us else 0


@dataclass
class WindowAggregate:
    """Mergeable partial state of one endpoint-window."""

    records: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)
    distinct: dict[str, set] = field(default_factory=dict)
    slot_counts: dict[int, int] = field(default_factory=dict)

    def merge(self, other: "WindowAggregate") -> "WindowAggregate":
        self.records += other.records
        for name, value in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        for name, value in other.maxima.items():
            self.maxima[name] = max(self.maxima.get(name, value), value)
        for name, values in other.distinct.items():
            self.distinct.setdefault(name, set()).update(values)
        for slot, count in other.slot_counts.items():
            self.slot_counts[slot] = self.slot_counts.get(slot, 0) + count
        return self


def _table_measures(table: str, batch: pa.RecordBatch) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """Per-record columns to sum and to take the maximum of, for `table`."""
    if table == "dns":
        rcode = batch.column("resp_code")
        sums = {
            "nxdomain": pc.cast(pc.equal(rcode, "NXDOMAIN"), pa.int64()),
            "unanswered": pc.cast(pc.is_null(batch.column("resp_time")), pa.int64()),
        }
        maxima = {"max_query_length": pc.utf8_length(batch.column("query"))}
    elif table == "http":
        sums = {
            "errors": pc.cast(pc.greater_equal(batch.column("status_code"), 400), pa.int64()),
            "request_bytes": batch.column("request_body_len"),
            "response_bytes": batch.column("response_body_len"),
        }
        maxima = {}
    else:
        sums = {name: batch.column(name) for name in ("c_pkt", "s_pkt", "c_bytes", "s_bytes")}
        maxima = {}
    return sums, maxima


def _distinct_columns(spec: WindowSpec) -> dict[str, str]:
    columns = {"peers": spec.peer_column, "names": NAME_COLUMN[spec.table]}
    if spec.table == "named_flows":
        columns["ports"] = "s_port"
    return columns


def window_starts(times_us: np.ndarray, window_us: int) -> np.ndarray:
    """Start of the tumbling window each time falls in (floor, also before the epoch)."""
    return times_us - np.mod(times_us, window_us)


def partial_aggregates(batch: pa.RecordBatch, spec: WindowSpec) -> Iterator[tuple[str, int, WindowAggregate]]:
    """(endpoint, window start µs, partial aggregate) for every endpoint-window in `batch`.

    Records without an event time or without an endpoint key cannot be placed in a window
    and are left out here; `untimed_records` counts them for the run summary.
    """
    batch = batch.filter(_placeable(batch, spec))
    if batch.num_rows == 0:
        return
    times = pc.cast(batch.column(schemas.EVENT_TIME_COLUMN[spec.table]), pa.int64()).to_numpy()
    starts = window_starts(times, spec.window_us)

    sums, maxima = _table_measures(spec.table, batch)
    distinct = _distinct_columns(spec)
    columns = {"key": batch.column(spec.key_column), "window_start": pa.array(starts)}
    aggregations = [("key", "count", pc.CountOptions(mode="all"))]
    for name, values in sums.items():
        columns[f"sum_{name}"] = values
        aggregations.append((f"sum_{name}", "sum"))
    for name, values in maxima.items():
        columns[f"max_{name}"] = values
        aggregations.append((f"max_{name}", "max"))
    for name, column in distinct.items():
        columns[f"distinct_{name}"] = batch.column(column)
        aggregations.append((f"distinct_{name}", "distinct", pc.CountOptions(mode="only_valid")))
    grouped = pa.table(columns).group_by(["key", "window_start"], use_threads=False).aggregate(aggregations)

    slot_counts = _slot_counts(batch, spec, times, starts) if spec.slot_us else {}
    for row in grouped.to_pylist():
        key, start = row["key"], row["window_start"]
        yield key, start, WindowAggregate(
            records=row["key_count"],
            sums={name: float(row[f"sum_{name}_sum"] or 0) for name in sums},
            maxima={name: float(row[f"max_{name}_max"] or 0) for name in maxima},
            distinct={name: set(row[f"distinct_{name}_distinct"]) for name in distinct},
            slot_counts=slot_counts.get((key, start), {}),
        )


def _slot_counts(batch: pa.RecordBatch, spec: WindowSpec, times: np.ndarray, starts: np.ndarray) -> dict:
    slots = (times - starts) // spec.slot_us
    grouped = (
        pa.table({"key": batch.column(spec.key_column), "window_start": pa.array(starts), "slot": pa.array(slots)})
        .group_by(["key", "window_start", "slot"], use_threads=False)
        .aggregate([("slot", "count")])
    )
    counts: dict[tuple[str, int], dict[int, int]] = {}
    for key, start, slot, count in zip(*(grouped.column(name).to_pylist()
                                         for name in ("key", "window_start", "slot", "slot_count"))):
        counts.setdefault((key, start), {})[slot] = count
    return counts


def _placeable(batch: pa.RecordBatch, spec: WindowSpec) -> pa.Array:
    """Records with both an event time and an endpoint key: only those have a window."""
    time_column = schemas.EVENT_TIME_COLUMN[spec.table]
    return pc.and_(pc.is_valid(batch.column(time_column)), pc.is_valid(batch.column(spec.key_column)))


def untimed_records(batch: pa.RecordBatch, spec: WindowSpec) -> int:
    if batch.num_rows == 0:
        return 0
    return batch.num_rows - pc.sum(pc.cast(_placeable(batch, spec), pa.int64())).as_py()


def finalize(aggregate: WindowAggregate, spec: WindowSpec) -> dict[str, float]:
    """The feature values of one endpoint-window, named as in `FEATURES[spec.table]`."""
    records = aggregate.records
    values = {"records": float(records)}
    for name, members in aggregate.distinct.items():
        values[f"distinct_{name}"] = float(len(members))
    if spec.table == "dns":
        values["nxdomain_ratio"] = aggregate.sums.get("nxdomain", 0.0) / records
        values["unanswered_ratio"] = aggregate.sums.get("unanswered", 0.0) / records
        values["max_query_length"] = aggregate.maxima.get("max_query_length", 0.0)
    elif spec.table == "http":
        values["error_ratio"] = aggregate.sums.get("errors", 0.0) / records
        values["request_bytes"] = aggregate.sums.get("request_bytes", 0.0)
        values["response_bytes"] = aggregate.sums.get("response_bytes", 0.0)
    else:
        for name in ("c_pkt", "s_pkt", "c_bytes", "s_bytes"):
            values[name] = aggregate.sums.get(name, 0.0)
    return {name: values[name] for name in FEATURES[spec.table]}


def slot_vector(aggregate: WindowAggregate, spec: WindowSpec) -> list[int]:
    """Record counts per slot of the window, zeros included (what rate models need)."""
    vector = [0] * spec.slots
    for slot, count in aggregate.slot_counts.items():
        vector[slot] = count
    return vector


def feature_schema(table: str) -> pa.Schema:
    """Schema of the `features/` output: one row per scored endpoint-window."""
    return pa.schema(
        [
            pa.field("table", pa.string(), nullable=False),
            pa.field("key_kind", pa.string(), nullable=False),
            pa.field("key", pa.string(), nullable=False),
            pa.field("window_start", schemas.TIMESTAMP, nullable=False),
            pa.field("window_end", schemas.TIMESTAMP, nullable=False),
            pa.field("records", pa.int64(), nullable=False),
            # `records` is a feature too; the integer column above stands for it.
            *(pa.field(name, pa.float64()) for name in FEATURES[table] if name != "records"),
            pa.field("slot_counts", pa.list_(pa.int64())),  # present when a rate detector ran
        ]
    )


def feature_row(window: EndpointWindow) -> dict:
    return {
        "table": window.table,
        "key_kind": window.key_kind,
        "key": window.key,
        "window_start": window.window_start,
        "window_end": window.window_end,
        **window.features,
        "records": window.records,
        "slot_counts": list(window.slot_counts) if window.slot_counts is not None else None,
    }


def window_from_row(row: dict, spec: WindowSpec) -> EndpointWindow:
    """The inverse of `feature_row`, for calibrating on an earlier run's features."""
    def micros(value) -> int:
        # Exact integer arithmetic: a float timestamp would lose microseconds.
        if isinstance(value, int):
            return value
        return (value - _EPOCH) // dt.timedelta(microseconds=1)

    slots = row.get("slot_counts")
    return EndpointWindow(
        table=row["table"],
        key_kind=row["key_kind"],
        key=row["key"],
        window_start=micros(row["window_start"]),
        window_end=micros(row["window_end"]),
        records=int(row["records"]),
        features={name: float(row[name]) for name in FEATURES[spec.table]},
        slot_counts=tuple(slots) if slots is not None else None,
    )
