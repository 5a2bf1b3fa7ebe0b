"""Per endpoint-window features, computed from Arrow batches without Beam.

A batch of records becomes partial aggregates (Arrow tables, one group-by per batch) of the
endpoint-windows it touches; partials from different batches merge associatively, so a
runner can combine them in any order and on any worker and still get the same features.
Partials are cut by a stable hash of the endpoint into shards; a merged shard becomes one
Arrow table of window features. The Beam transforms in `transforms.windows` only move
these tables around.
"""
from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.detectors.endpoint import TRAIN_COLUMN, EndpointWindow, repeated

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


def stable_shard(value: Any, shards: int) -> int:
    """The shard of a value: the same on every run, process and machine (unlike `hash`)."""
    return zlib.crc32(repr(value).encode("utf-8")) % shards if shards > 1 else 0


def endpoint_shards(keys: pa.Array | pa.ChunkedArray, shards: int) -> np.ndarray:
    """`stable_shard` of every key, hashing each distinct key once."""
    if shards <= 1:
        return np.zeros(len(keys), dtype=np.int64)
    unique = pc.unique(keys)
    of_unique = np.fromiter((stable_shard(key, shards) for key in unique.to_pylist()), np.int64, len(unique))
    return of_unique[pc.index_in(keys, value_set=unique).to_numpy(zero_copy_only=False)]


_WINDOW = ["key", "window_start"]
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def pack(table: pa.Table) -> bytes:
    """A table as LZ4-compressed Arrow IPC: a few times smaller than pickling it."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


@dataclass(frozen=True)
class Packed:
    """An Arrow table in transit between workers: compressed bytes, opened only where used.

    Runners copy and regroup elements several times on the way through a shuffle; these
    copies stay small and are never decompressed on the way.
    """

    data: bytes

    @classmethod
    def of(cls, table: pa.Table) -> "Packed":
        return cls(pack(table))

    def table(self) -> pa.Table:
        return unpack(self.data)


@dataclass
class WindowPartials:
    """Mergeable partial features of many endpoint-windows, as Arrow tables.

    Every table has `key` and `window_start` (µs) columns. Merging any grouping of partials
    in any order gives the same merged values: integer sums, maxima and sets of values.
    - `measures`: one row per endpoint-window: `records`, `sum_*`, `max_*`.
    - `distinct`: per counted column, one row per distinct (endpoint, window, value), so
      distinct counts stay exact without a Python set per window.
    - `slots`: (endpoint, window, slot, records), when per-slot counts are wanted.
    """

    measures: pa.Table
    distinct: dict[str, pa.Table]
    slots: pa.Table | None = None

    def __getstate__(self) -> dict:
        return {"measures": pack(self.measures), "distinct": {name: pack(t) for name, t in self.distinct.items()},
                "slots": None if self.slots is None else pack(self.slots)}

    def __setstate__(self, state: dict) -> None:
        self.measures = unpack(state["measures"])
        self.distinct = {name: unpack(data) for name, data in state["distinct"].items()}
        self.slots = None if state["slots"] is None else unpack(state["slots"])


def _aggregate(table: pa.Table, keys: list[str], aggregations: Mapping[str, tuple[str, str, Any]]) -> pa.Table:
    """Group `table` by `keys`; output column name -> (input column, function, options)."""
    grouped = table.group_by(keys, use_threads=False).aggregate(
        [(column, function, options) if options else (column, function)
         for column, function, options in aggregations.values()])
    columns = {name: grouped.column(name) for name in keys}
    for name, (column, function, _) in aggregations.items():
        columns[name] = grouped.column(f"{column}_{function}")
    # Acero's output chunks share buffers, and each chunk would pickle them whole.
    return pa.table(columns).combine_chunks()


def _remerge(column: str) -> tuple[str, str, None]:
    return column, "max" if column.startswith("max_") else "sum", None


def _distinct_rows(table: pa.Table) -> pa.Table:
    return _aggregate(table, [*_WINDOW, "value"], {})


def partial_windows(batch: pa.RecordBatch, spec: WindowSpec) -> WindowPartials | None:
    """Partial features of every endpoint-window that `batch` touches; None if it touches none.

    Records without an event time or without an endpoint key cannot be placed in a window
    and are left out here; `untimed_records` counts them for the run summary.
    """
    batch = batch.filter(_placeable(batch, spec))
    if batch.num_rows == 0:
        return None
    times = pc.cast(batch.column(schemas.EVENT_TIME_COLUMN[spec.table]), pa.int64()).to_numpy()
    starts = window_starts(times, spec.window_us)
    window = {"key": batch.column(spec.key_column), "window_start": pa.array(starts)}

    sums, maxima = _table_measures(spec.table, batch)
    columns = dict(window)
    aggregations = {"records": ("key", "count", pc.CountOptions(mode="all"))}
    for prefix, function, measures in (("sum", "sum", sums), ("max", "max", maxima)):
        for name, values in measures.items():
            columns[f"{prefix}_{name}"] = values
            aggregations[f"{prefix}_{name}"] = (f"{prefix}_{name}", function, None)
    measured = _aggregate(pa.table(columns), _WINDOW, aggregations)

    distinct = {}
    for name, column in _distinct_columns(spec).items():
        values = pa.table({**window, "value": batch.column(column)})
        distinct[name] = _distinct_rows(values.filter(pc.is_valid(values.column("value"))))

    slots = None
    if spec.slot_us:
        slot_table = pa.table({**window, "slot": pa.array((times - starts) // spec.slot_us)})
        slots = _aggregate(slot_table, [*_WINDOW, "slot"], {"records": ("slot", "count", None)})
    return WindowPartials(measured, distinct, slots)


def merge_partials(parts: Sequence[WindowPartials]) -> WindowPartials:
    """One partial with one row per endpoint-window (per value, per slot) of all `parts`."""
    if len(parts) == 1:
        return parts[0]
    measures = pa.concat_tables([part.measures for part in parts])
    merged = _aggregate(measures, _WINDOW, {name: _remerge(name) for name in measures.column_names[2:]})
    distinct = {name: _distinct_rows(pa.concat_tables([part.distinct[name] for part in parts]))
                for name in parts[0].distinct}
    slots = None
    if parts[0].slots is not None:
        slots = _aggregate(pa.concat_tables([part.slots for part in parts]), [*_WINDOW, "slot"],
                           {"records": ("records", "sum", None)})
    return WindowPartials(merged, distinct, slots)


def split_partials(part: WindowPartials, label_of: Callable[[pa.Table], np.ndarray]) -> dict[int, WindowPartials]:
    """`part` cut by the label `label_of` gives each row (a shard, a window start), rows kept whole."""
    pieces = {name: split_table(table, label_of(table)) for name, table in _named_tables(part)}
    split = {}
    for label in pieces["measures"]:
        def piece(name: str, table: pa.Table) -> pa.Table:
            return pieces[name].get(label, table.slice(0, 0))
        split[label] = WindowPartials(
            piece("measures", part.measures),
            {name: piece(f"distinct_{name}", table) for name, table in part.distinct.items()},
            None if part.slots is None else piece("slots", part.slots),
        )
    return split


def _named_tables(part: WindowPartials) -> Iterator[tuple[str, pa.Table]]:
    yield "measures", part.measures
    for name, table in part.distinct.items():
        yield f"distinct_{name}", table
    if part.slots is not None:
        yield "slots", part.slots


def split_table(table: pa.Table, labels: np.ndarray) -> dict[int, pa.Table]:
    """The rows of `table` by label. Each piece owns its buffers: a slice would pickle the whole table."""
    if table.num_rows == 0:
        return {}
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return {int(ordered[lo]): table.take(order[lo:hi])
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ordered)])}


def shard_labels(shards: int) -> Callable[[pa.Table], np.ndarray]:
    return lambda table: endpoint_shards(table.column("key"), shards)


def window_labels(table: pa.Table) -> np.ndarray:
    return table.column("window_start").to_numpy()


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


def _placeable(batch: pa.RecordBatch, spec: WindowSpec) -> pa.Array:
    """Records with both an event time and an endpoint key: only those have a window."""
    time_column = schemas.EVENT_TIME_COLUMN[spec.table]
    return pc.and_(pc.is_valid(batch.column(time_column)), pc.is_valid(batch.column(spec.key_column)))


def untimed_records(batch: pa.RecordBatch, spec: WindowSpec) -> int:
    if batch.num_rows == 0:
        return 0
    return batch.num_rows - pc.sum(pc.cast(_placeable(batch, spec), pa.int64())).as_py()


def window_table(part: WindowPartials, spec: WindowSpec) -> pa.Table:
    """The features of every endpoint-window in a merged `part`, sorted by (key, window start).

    Columns as `window_table_schema(spec.table)`; integer sums become floats only here, so
    the values do not depend on how the records were split into batches.
    """
    measures = part.measures.sort_by([("key", "ascending"), ("window_start", "ascending")])
    count = measures.num_rows
    records = measures.column("records").to_numpy().astype(np.float64)

    def measured(name: str) -> np.ndarray:
        if name not in measures.column_names:
            return np.zeros(count)
        return pc.fill_null(measures.column(name), 0).to_numpy().astype(np.float64)

    row_of = pa.table({"key": measures.column("key"), "window_start": measures.column("window_start"),
                       "row": pa.array(np.arange(count))})
    values = {"records": records}
    for name, pairs in part.distinct.items():
        counts = _aggregate(pairs, _WINDOW, {"distinct": ("value", "count", None)})
        rows, distinct = _aligned(row_of, counts, "distinct")
        values[f"distinct_{name}"] = np.zeros(count)
        values[f"distinct_{name}"][rows] = distinct
    if spec.table == "dns":
        values["nxdomain_ratio"] = measured("sum_nxdomain") / records
        values["unanswered_ratio"] = measured("sum_unanswered") / records
        values["max_query_length"] = measured("max_max_query_length")
    elif spec.table == "http":
        values["error_ratio"] = measured("sum_errors") / records
        values["request_bytes"] = measured("sum_request_bytes")
        values["response_bytes"] = measured("sum_response_bytes")
    else:
        for name in ("c_pkt", "s_pkt", "c_bytes", "s_bytes"):
            values[name] = measured(f"sum_{name}")

    starts = measures.column("window_start")
    schema = window_table_schema(spec.table)
    columns = {
        "table": repeated(spec.table, count),
        "key_kind": repeated(spec.key, count),
        "key": measures.column("key"),
        "window_start": pc.cast(starts, schemas.TIMESTAMP),
        "window_end": pc.cast(pc.add(starts, spec.window_us), schemas.TIMESTAMP),
        "records": measures.column("records"),
        **{name: pa.array(values[name]) for name in FEATURES[spec.table] if name != "records"},
        "slot_counts": _slot_lists(part.slots, row_of, spec) if spec.slot_us else pa.nulls(count, pa.list_(pa.int64())),
        TRAIN_COLUMN: pa.array(np.zeros(count, dtype=bool)),
    }
    return pa.Table.from_arrays([pa.chunked_array(_chunks(columns[field.name]), field.type) for field in schema],
                                schema=schema)


def _chunks(column: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def _aligned(row_of: pa.Table, values: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers in `row_of` and the matching `values[column]`, matched on (key, window start)."""
    joined = row_of.join(values, keys=_WINDOW, join_type="inner", use_threads=False)
    return joined.column("row").to_numpy(), joined.column(column).to_numpy()


def _slot_lists(slots: pa.Table, row_of: pa.Table, spec: WindowSpec) -> pa.Array:
    """Record counts per slot of each window, zeros included (what rate models need)."""
    joined = row_of.join(slots, keys=_WINDOW, join_type="inner", use_threads=False)
    flat = np.zeros(row_of.num_rows * spec.slots, dtype=np.int64)
    flat[joined.column("row").to_numpy() * spec.slots + joined.column("slot").to_numpy()] = \
        joined.column("records").to_numpy()
    offsets = np.arange(0, flat.size + 1, spec.slots, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def window_features(batches: Iterable[pa.RecordBatch], spec: WindowSpec) -> pa.Table:
    """Without Beam: the features of every endpoint-window in `batches` (what `WindowFeatures` gives)."""
    parts = [part for part in (partial_windows(batch, spec) for batch in batches) if part is not None]
    if not parts:
        return window_table_schema(spec.table).empty_table()
    return window_table(merge_partials(parts), spec)


def endpoint_windows(table: pa.Table) -> list[EndpointWindow]:
    """The rows of a table of endpoint-windows as `EndpointWindow`s, for window-by-window scoring."""
    return [_window(row, FEATURES[row["table"]])._replace(train=row.get(TRAIN_COLUMN, False))
            for row in table.to_pylist()]


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


def window_table_schema(table: str) -> pa.Schema:
    """What `WindowFeatures` emits: the `features/` columns and whether the window is for training."""
    return feature_schema(table).append(pa.field(TRAIN_COLUMN, pa.bool_(), nullable=False))


def table_of_windows(windows: Sequence[EndpointWindow], table: str) -> pa.Table:
    """`EndpointWindow`s as a table of endpoint-windows (the inverse of `endpoint_windows`)."""
    rows = [{"table": w.table, "key_kind": w.key_kind, "key": w.key, "window_start": w.window_start,
             "window_end": w.window_end, **w.features, "records": w.records,
             "slot_counts": None if w.slot_counts is None else list(w.slot_counts), TRAIN_COLUMN: w.train}
            for w in windows]
    return pa.Table.from_pylist(rows, schema=window_table_schema(table))


def window_from_row(row: dict, spec: WindowSpec) -> EndpointWindow:
    """One row of a features table as an `EndpointWindow`."""
    return _window(row, FEATURES[spec.table])


def _window(row: dict, feature_names: Sequence[str]) -> EndpointWindow:
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
        features={name: float(row[name]) for name in feature_names},
        slot_counts=tuple(slots) if slots is not None else None,
    )
