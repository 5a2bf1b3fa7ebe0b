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
import functools
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.detectors.endpoint import TRAIN_COLUMN, EndpointWindow, repeated
from beamlytics.hunts.stats import subdomain_measures
from beamlytics.hunts.flows import failed_attempts
from beamlytics.options_catalog import DEFAULT_FEATURES, DOMAIN_KEY, FEATURES, KEY_COLUMNS, KEYS, WINDOWINGS
from beamlytics.schemas import domains

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

NAME_COLUMN = {"dns": "query", "http": "host", "named_flows": "name"}

# Features that are NaN where a window's records cannot tell (no flow carried a state): unknown, not 0.
UNKNOWABLE_FEATURES = frozenset({"failed_ratio"})
# ICMP over IPv4 and IPv6 as the parsers name it (pcap flows, Zeek conn, Tstat).
ICMP_PROTOCOLS = ("icmp", "icmpv6")
# Query types that carry the most payload per answer, or ask for everything: tunnels and amplification.
PAYLOAD_QUERY_TYPES = ("TXT", "NULL", "ANY")
# A flow is active in at most this many windows after its first (a day of 60 s windows): bounds the rows
# one hostile record can create; time beyond is not apportioned.
MAX_SPAN_WINDOWS = 1440
# Rows of (flow, window) expanded at once when apportioning long flows: bounds memory per batch.
_SPAN_CHUNK = 1 << 20
# Records windowed at once by `window_features`: few Acero calls, string offsets far from 2 GiB.
_WINDOW_BATCH_ROWS = 1 << 20



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

    def keys(self, batch: pa.RecordBatch) -> pa.Array:
        """The endpoint key of every record of `batch` (null where it has none)."""
        if self.key_column == DOMAIN_KEY:
            return domains.registered_domain(batch.column("query"))
        return batch.column(self.key_column)

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


def _aggregate(table: pa.Table, keys: list[str], aggregations: Mapping[str, tuple[str, str]]) -> pa.Table:
    """Group `table` by `keys`; output column name -> (input column, function).

    Functions: `count_all` (rows), `count` (valid values), and over integer columns only (so sums are exact in
    any order) `sum` and `max`, with Acero's results: a sum is int64 (uint64), a maximum keeps its type, and
    either is null for a group without a valid value. Rows are grouped by one integer code per row, sorted,
    not by Acero's hash of string keys (1.8 of 4.1 CPU s of windowing at 1 M records x 10,000 hosts, 8.1 of
    11.5 s at 4 M; docs/benchmarks.md); groups come out in code order, on which no result depends.
    """
    return _aggregated(table, keys, aggregations, *_groups(_row_codes(table, keys)[0]))


def _aggregated(table: pa.Table, keys: list[str], aggregations: Mapping[str, tuple[str, str]], order: np.ndarray,
                firsts: np.ndarray) -> pa.Table:
    columns = dict(zip(keys, table.select(keys).take(order[firsts]).columns))
    for name, (column, function) in aggregations.items():
        columns[name] = _reduced(table.column(column), function, order, firsts)
    return pa.table(columns)


def _groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in an order that puts equal `codes` together, and where each group starts in it."""
    order = np.argsort(codes)
    ordered = codes[order]
    firsts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if ordered.size else np.zeros(0, np.int64)
    return order, firsts


def _row_codes(table: pa.Table, names: Sequence[str], known: tuple[np.ndarray, int] | None = None
               ) -> tuple[np.ndarray, int]:
    """One int64 per row, equal exactly where the rows' values of `names` are (a null equals a null), and the
    codes' bound; `known`: the codes and bound of columns before `names`, found already."""
    codes, width = known if known is not None else (np.zeros(table.num_rows, np.int64), 1)
    for name in names:
        encoded = pc.dictionary_encode(table.column(name).combine_chunks(), null_encoding="encode")
        size = max(len(encoded.dictionary), 1)
        if width * size >= 1 << 63:  # renumber the codes so far densely, below the rows' count
            distinct, codes = np.unique(codes, return_inverse=True)
            width = len(distinct)
        codes = codes * size + encoded.indices.to_numpy().astype(np.int64)
        width *= size
    return codes, width


def _reduced(column: pa.ChunkedArray, function: str, order: np.ndarray, firsts: np.ndarray) -> pa.Array:
    """`function` of `column` over each group of rows (`order` cut at `firsts`)."""
    ends = np.r_[firsts[1:], order.size]
    if function == "count_all":
        return pa.array(ends - firsts)
    if function == "count":
        return pa.array(_per_group(pc.is_valid(column).to_numpy(zero_copy_only=False).astype(np.int64), order,
                                   firsts, np.add))
    if not pa.types.is_integer(column.type):
        raise TypeError(f"only integer columns are aggregated, not {column.type}")
    if function == "sum":
        wide = pa.uint64() if pa.types.is_unsigned_integer(column.type) else pa.int64()
        values = pc.fill_null(column.cast(wide), 0).to_numpy()
        reduced = _per_group(values, order, firsts, np.add)
    elif function == "max":
        values = pc.fill_null(column, int(np.iinfo(column.type.to_pandas_dtype()).min)).to_numpy()
        reduced = _per_group(values, order, firsts, np.maximum)
    else:
        raise ValueError(f"unknown aggregation {function!r}")
    if column.null_count == 0:
        return pa.array(reduced)
    valid = _per_group(pc.is_valid(column).to_numpy(zero_copy_only=False).astype(np.int64), order, firsts, np.add)
    return pa.array(reduced, mask=valid == 0)


def _per_group(values: np.ndarray, order: np.ndarray, firsts: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    if not firsts.size:
        return values[:0]
    return ufunc.reduceat(values[order], firsts)


def _remerge(column: str) -> tuple[str, str]:
    return column, "max" if column.startswith("max_") else "sum"


def _distinct_rows(table: pa.Table, window: tuple[np.ndarray, int] | None = None) -> pa.Table:
    """The distinct rows of `table`, each once, in the order of their first-kept row (taking rows in table
    order costs a third of taking them in code order). `window`: `_row_codes` of its (key, window_start)."""
    names = table.column_names if window is None else table.column_names[len(_WINDOW):]
    order, firsts = _groups(_row_codes(table, names, window)[0])
    return table.take(np.sort(order[firsts])).combine_chunks()


def _union(tables: Sequence[pa.Table], shared: pa.Table) -> pa.Table:
    """The distinct rows of distinct-row `tables` of partials whose only windows in common are `shared` (key,
    window_start): a row can be in two tables only if its window is in two, so only those rows are compared
    (parts of consecutive batches share a window or two: 3 of 11.5 CPU s of windowing at 4 M records went to
    comparing all rows)."""
    rows = pa.concat_tables(tables)
    if not shared.num_rows:
        return rows
    maybe = pc.and_(pc.is_in(rows.column("key"), value_set=shared.column("key")),
                    pc.is_in(rows.column("window_start"), value_set=shared.column("window_start")))
    if not pc.any(maybe).as_py():
        return rows
    return pa.concat_tables([rows.filter(pc.invert(maybe)), _distinct_rows(rows.filter(maybe))])


def partial_windows(batch: pa.RecordBatch, spec: WindowSpec) -> WindowPartials | None:
    """Partial features of every endpoint-window that `batch` touches; None if it touches none.

    Records without an event time or without an endpoint key cannot be placed in a window
    and are left out here; `untimed_records` counts them for the run summary.
    """
    keys = spec.keys(batch)
    placeable = _placeable(batch, keys, spec)
    if not pc.all(placeable).as_py():
        batch, keys = batch.filter(placeable), keys.filter(placeable)
    if batch.num_rows == 0:
        return None
    times = pc.cast(batch.column(schemas.EVENT_TIME_COLUMN[spec.table]), pa.int64()).to_numpy()
    starts = window_starts(times, spec.window_us)
    window = {"key": keys, "window_start": pa.array(starts)}
    names = domains.split_names(batch.column("query")) if spec.table == "dns" else None

    sums, maxima = _table_measures(spec.table, batch, names)
    columns = dict(window)
    aggregations = {"records": ("key", "count_all")}
    for prefix, function, measures in (("sum", "sum", sums), ("max", "max", maxima)):
        for name, values in measures.items():
            columns[f"{prefix}_{name}"] = values
            aggregations[f"{prefix}_{name}"] = (f"{prefix}_{name}", function)
    # Every table below is grouped by (key, window_start) first: code them once.
    window_codes = _row_codes(pa.table(window), _WINDOW)
    measured = _aggregated(pa.table(columns), _WINDOW, aggregations, *_groups(window_codes[0]))
    if spec.table == "named_flows":
        measured = _merged_measures([measured, _active_spans(batch, keys, times, spec.window_us)])

    distinct = {}
    for name, values in _distinct_values(spec, batch, names).items():
        rows = pa.table({**window, **values})
        valid = functools.reduce(pc.and_, [pc.is_valid(rows.column(column)) for column in values])
        # Filtering copies every string even where nothing is dropped: 1.4 CPU s of windowing at 4 M records.
        if pc.all(valid).as_py():
            distinct[name] = _distinct_rows(rows, window_codes)
        else:
            kept = valid.to_numpy(zero_copy_only=False)
            distinct[name] = _distinct_rows(rows.filter(valid), (window_codes[0][kept], window_codes[1]))

    slots = None
    if spec.slot_us:
        slot_table = pa.table({**window, "slot": pa.array((times - starts) // spec.slot_us)})
        slots = _aggregate(slot_table, [*_WINDOW, "slot"], {"records": ("slot", "count")})
    return WindowPartials(measured, distinct, slots)


def _merged_measures(tables: Sequence[pa.Table]) -> pa.Table:
    """One row per endpoint-window of `tables`; a column some lack is null there (nothing to add)."""
    return _merged_windows(tables)[0]


def _merged_windows(tables: Sequence[pa.Table]) -> tuple[pa.Table, pa.Table]:
    """`_merged_measures` of `tables`, and the (key, window_start) of the windows more than one row has."""
    measures = pa.concat_tables(tables, promote_options="default")
    order, firsts = _groups(_row_codes(measures, _WINDOW)[0])
    merged = _aggregated(measures, _WINDOW, {name: _remerge(name) for name in measures.column_names[2:]},
                         order, firsts)
    return merged, measures.select(_WINDOW).take(order[firsts[np.diff(np.r_[firsts, order.size]) > 1]])


def _active_spans(batch: pa.RecordBatch, keys: pa.Array, starts_us: np.ndarray, window_us: int) -> pa.Table:
    """Per endpoint-window, the flows open at any time in it (`sum_active`) and their µs inside it.

    A flow is the half-open interval [time_start, time_end); without an end (or one before its
    start) it is active only in its start window, for no time. A window where only a flow that
    began earlier is open gets a row with no records: the endpoint is active there too.
    """
    column = batch.column("time_end")
    ends = pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy()
    ends = np.where(pc.is_valid(column).to_numpy(zero_copy_only=False), np.maximum(ends, starts_us), starts_us)
    first = window_starts(starts_us, window_us)
    last = window_starts(np.where(ends > starts_us, ends - 1, starts_us), window_us)
    spanned = np.minimum((last - first) // window_us + 1, MAX_SPAN_WINDOWS)
    pieces = []
    for lo, hi in _chunks_of(spanned, _SPAN_CHUNK):
        counts = spanned[lo:hi]
        flow = np.repeat(np.arange(lo, hi), counts)
        nth = np.arange(flow.size) - np.repeat(np.cumsum(counts) - counts, counts)
        window = first[flow] + nth * window_us
        inside = np.minimum(ends[flow], window + window_us) - np.maximum(starts_us[flow], window)
        pieces.append(_aggregate(
            pa.table({"key": keys.take(pa.array(flow)), "window_start": pa.array(window),
                      "active": pa.array(np.ones(flow.size, np.int64)), "active_us": pa.array(np.maximum(inside, 0))}),
            _WINDOW, {"sum_active": ("active", "sum"), "sum_active_us": ("active_us", "sum")}))
    spans = _merged_measures(pieces)
    return spans.append_column("records", pa.array(np.zeros(spans.num_rows, np.int64)))


def _chunks_of(sizes: np.ndarray, most: int) -> Iterator[tuple[int, int]]:
    """Consecutive (lo, hi) ranges of `sizes` whose sum is at most `most` (or one element, if larger)."""
    ends = np.cumsum(sizes)
    lo = 0
    while lo < sizes.size:
        before = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, before + most, side="right")))
        yield lo, hi
        lo = hi


def merge_partials(parts: Sequence[WindowPartials]) -> WindowPartials:
    """One partial with one row per endpoint-window (per value, per slot) of all `parts`."""
    if len(parts) == 1:
        return parts[0]
    merged, shared = _merged_windows([part.measures for part in parts])
    distinct = {name: _union([part.distinct[name] for part in parts], shared) for name in parts[0].distinct}
    slots = None
    if parts[0].slots is not None:
        slots = _aggregate(pa.concat_tables([part.slots for part in parts]), [*_WINDOW, "slot"],
                           {"records": ("records", "sum")})
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
    """The rows of `table` by label, in their order: slices of one take, packed compactly on the way between
    workers (`pack`: Arrow IPC writes a slice's own rows; pickling a slice would copy its whole table)."""
    if table.num_rows == 0:
        return {}
    if labels.min() >= 0 and labels.max() < 1 << 16:
        # Shard numbers: numpy's stable sort of 16-bit integers is a radix sort, 6x faster than of int64
        # (docs/benchmarks.md), and the same order.
        labels = labels.astype(np.uint16)
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    # One take, none for a single label (a shard's windows, cut again by the judges): a take per label cost
    # ~1 ms each, 37 per table per batch at 4 M records.
    grouped = table if ordered[0] == ordered[-1] else table.take(order)
    return {int(ordered[lo]): grouped.slice(lo, hi - lo)
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ordered)])}


def split_by_shard(part: WindowPartials, shards: int) -> dict[int, WindowPartials]:
    """`part` cut into shards of endpoints. Every table of `part` holds only endpoints of its `measures`, so
    each distinct endpoint is hashed once, not once per table (of 3.3 M `stable_shard` calls at 1 M records ×
    10,000 hosts, four fifths were the distinct-value tables'; docs/benchmarks.md)."""
    keys = pc.unique(part.measures.column("key"))
    of_key = endpoint_shards(keys, shards)
    return split_partials(
        part, lambda table: of_key[pc.index_in(table.column("key"), value_set=keys).to_numpy(zero_copy_only=False)])


def window_labels(table: pa.Table) -> np.ndarray:
    return table.column("window_start").to_numpy()


def _table_measures(table: str, batch: pa.RecordBatch, names: tuple[pa.Array, pa.Array] | None
                    ) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """Per-record integer columns to sum and to take the maximum of, for `table`.

    Integers only (entropy in millibits, durations in µs), so sums are exact in any merge order.
    """
    if table == "dns":
        _, subdomains = names
        lengths, entropy = subdomain_measures(subdomains)
        sums = {
            "nxdomain": _flag(pc.equal(batch.column("resp_code"), "NXDOMAIN")),
            "unanswered": _flag(pc.is_null(batch.column("resp_time"))),
            "named": _flag(pc.is_valid(subdomains)),
            "subdomain_length": lengths,
            "subdomain_entropy": entropy,
            "payload_query": _flag(pc.is_in(batch.column("req_type"), pa.array(PAYLOAD_QUERY_TYPES))),
            "zero_ttl": _any_zero(batch.column("answer_ttls")),
        }
        maxima = {"query_length": pc.utf8_length(batch.column("query")), "subdomain_length": lengths,
                  "subdomain_entropy": entropy}
    elif table == "http":
        status, method = batch.column("status_code"), batch.column("method")
        uri_lengths = pc.utf8_length(batch.column("path"))
        sums = {
            "errors": _flag(pc.greater_equal(status, 400)),
            "client_errors": _flag(pc.and_(pc.greater_equal(status, 400), pc.less(status, 500))),
            "server_errors": _flag(pc.and_(pc.greater_equal(status, 500), pc.less(status, 600))),
            "request_bytes": batch.column("request_body_len"),
            "response_bytes": batch.column("response_body_len"),
            "uris": _flag(pc.is_valid(uri_lengths)),
            "uri_length": uri_lengths,
            "post": _flag(pc.equal(method, "POST")),
            "other_method": _flag(pc.and_(pc.is_valid(method), pc.invert(pc.is_in(method, pa.array(["GET", "POST"]))))),
        }
        maxima = {"uri_length": uri_lengths}
    else:
        durations = flow_durations(batch)
        sums = {name: batch.column(name) for name in ("c_pkt", "s_pkt", "c_bytes", "s_bytes")}
        failed = failed_attempts(batch)
        sums.update(failed=_flag(failed), stated=_flag(pc.is_valid(failed)), timed=_flag(pc.is_valid(durations)), duration_us=durations,
                    icmp=_flag(pc.is_in(batch.column("proto"), pa.array(ICMP_PROTOCOLS))))
        maxima = {"duration_us": durations}
    return sums, maxima


def _flag(condition: pa.Array) -> pa.Array:
    """1 where `condition` holds, 0 where it does not or is unknown."""
    return pc.cast(pc.fill_null(condition, False), pa.int64())


def _any_zero(lists: pa.Array) -> pa.Array:
    """1 for each list holding a 0 (a zero TTL), else 0."""
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).filter(pc.fill_null(pc.equal(flat, 0), False))
    flags = np.zeros(len(lists), np.int64)
    flags[parents.to_numpy()] = 1
    return pa.array(flags)


def flow_durations(batch: pa.RecordBatch) -> pa.Array:
    """time_end - time_start in µs; null without an end or with one before the start."""
    durations = pc.subtract(pc.cast(batch.column("time_end"), pa.int64()),
                            pc.cast(batch.column("time_start"), pa.int64()))
    return pc.if_else(pc.greater_equal(durations, 0), durations, pa.scalar(None, pa.int64()))


def _distinct_values(spec: WindowSpec, batch: pa.RecordBatch, names: tuple[pa.Array, pa.Array] | None
                     ) -> dict[str, dict[str, pa.Array]]:
    """Per distinct-count feature, the value columns counted; with `within`, distinct values of it per value."""
    values = {"peers": {"value": batch.column(spec.peer_column)},
              "names": {"value": batch.column(NAME_COLUMN[spec.table])}}
    if spec.table == "dns":
        registered, subdomains = names
        values["domains"] = {"value": registered}
        values["subdomains"] = {"value": registered, "within": subdomains}
    elif spec.table == "http":
        # The same path on two hosts is two URIs.
        uris = pc.binary_join_element_wise(pc.fill_null(batch.column("host"), ""), batch.column("path"), "")
        values["uris"] = {"value": uris}
        values["user_agents"] = {"value": batch.column("user_agent")}
    else:
        peer, port = batch.column(spec.peer_column), batch.column("s_port")
        values["ports"] = {"value": port}
        # A vertical scan tries many ports of one peer, a horizontal scan one port of many peers.
        values["peer_ports"] = {"value": peer, "within": port}
        values["port_peers"] = {"value": port, "within": peer}
        # Each new connection to a service comes from a fresh source port: a brute force or flood makes many.
        service = pc.binary_join_element_wise(peer, pc.cast(port, pa.string()), "|")
        values["service_connections"] = {"value": service, "within": batch.column("c_port")}
    return values


def window_starts(times_us: np.ndarray, window_us: int) -> np.ndarray:
    """Start of the tumbling window each time falls in (floor, also before the epoch)."""
    return times_us - np.mod(times_us, window_us)


def _placeable(batch: pa.RecordBatch, keys: pa.Array, spec: WindowSpec) -> pa.Array:
    """Records with both an event time and an endpoint key: only those have a window."""
    time_column = schemas.EVENT_TIME_COLUMN[spec.table]
    return pc.and_(pc.is_valid(batch.column(time_column)), pc.is_valid(keys))


def untimed_records(batch: pa.RecordBatch, spec: WindowSpec) -> int:
    if batch.num_rows == 0:
        return 0
    return batch.num_rows - pc.sum(pc.cast(_placeable(batch, spec.keys(batch), spec), pa.int64())).as_py()


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

    row_of = _WindowRows(measures)
    values = {"records": records}
    for name, pairs in part.distinct.items():
        # Rows of `pairs` are distinct (merging keeps them so): counting rows counts values.
        rows = row_of(pairs)
        if "within" in pairs.column_names:
            feature, distinct = f"max_{name}", _most_per_value(rows, pairs.column("value"), count)
        else:
            feature, distinct = f"distinct_{name}", np.bincount(rows, minlength=count)
        values[feature] = distinct.astype(np.float64)

    def share(numerator: str, denominator: str | None = None) -> np.ndarray:
        # A window where only an earlier flow is still open has no records: its ratios are 0.
        below = records if denominator is None else measured(denominator)
        return np.divide(measured(numerator), below, out=np.zeros(count), where=below > 0)

    if spec.table == "dns":
        values.update(
            nxdomain_ratio=share("sum_nxdomain"), unanswered_ratio=share("sum_unanswered"),
            max_query_length=measured("max_query_length"),
            mean_subdomain_length=share("sum_subdomain_length", "sum_named"),
            max_subdomain_length=measured("max_subdomain_length"),
            mean_subdomain_entropy=share("sum_subdomain_entropy", "sum_named") / 1000,
            max_subdomain_entropy=measured("max_subdomain_entropy") / 1000,
            txt_null_any_ratio=share("sum_payload_query"), zero_ttl_ratio=share("sum_zero_ttl"))
    elif spec.table == "http":
        values.update(
            error_ratio=share("sum_errors"), request_bytes=measured("sum_request_bytes"),
            response_bytes=measured("sum_response_bytes"), mean_uri_length=share("sum_uri_length", "sum_uris"),
            max_uri_length=measured("max_uri_length"), client_error_ratio=share("sum_client_errors"),
            server_error_ratio=share("sum_server_errors"), post_ratio=share("sum_post"),
            other_method_ratio=share("sum_other_method"))
    else:
        for name in ("c_pkt", "s_pkt", "c_bytes", "s_bytes"):
            values[name] = measured(f"sum_{name}")
        values.update(
            failed_ratio=known_share(measured("sum_failed"), measured("sum_stated")),
            mean_duration=share("sum_duration_us", "sum_timed") / 1e6,
            max_duration=measured("max_duration_us") / 1e6, active_flows=measured("sum_active"),
            active_seconds=measured("sum_active_us") / 1e6, icmp_ratio=share("sum_icmp"))

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


def known_share(numerator: np.ndarray, known: np.ndarray) -> np.ndarray:
    """numerator / known, NaN where no record of the window was known either way: unknown is not 0."""
    return np.divide(numerator, known, out=np.full(len(known), math.nan), where=known > 0)


def _chunks(column: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


class _WindowRows:
    """The row of each (key, window start) in `measures` (sorted so, one row each), found by numbers:
    a key's rank among the keys and a start's among the starts make one int64 code, looked up in a
    dense code -> row array when that is small, else by `searchsorted` (Acero's hash join of string
    keys cost 0.9 s per 1 M windows, a binary search of random codes 0.7 s)."""

    def __init__(self, measures: pa.Table):
        self.num_rows = measures.num_rows
        self.keys = pc.unique(measures.column("key"))
        self.starts = pa.array(np.unique(measures.column("window_start").to_numpy()))
        self.codes = self._codes(measures)
        # At most rows² codes: int64 holds them for up to 3e9 windows.
        span = len(self.keys) * len(self.starts)
        self.dense = None
        if span <= 8 * self.num_rows + (1 << 20):
            self.dense = np.zeros(span, dtype=np.int64)
            self.dense[self.codes] = np.arange(self.num_rows)

    def _codes(self, table: pa.Table) -> np.ndarray:
        ranks = pc.index_in(table.column("key"), value_set=self.keys).to_numpy().astype(np.int64)
        return ranks * len(self.starts) + pc.index_in(table.column("window_start"), value_set=self.starts).to_numpy()

    def __call__(self, table: pa.Table) -> np.ndarray:
        """Rows of `table`'s (key, window start)s, every one of which is in `measures`."""
        codes = self._codes(table)
        return self.dense[codes] if self.dense is not None else np.searchsorted(self.codes, codes)


def _most_per_value(rows: np.ndarray, values: pa.ChunkedArray, count: int) -> np.ndarray:
    """Per window, the most rows any one value has (0 for a window without rows)."""
    most = np.zeros(count, dtype=np.int64)
    if not rows.size:
        return most
    codes = pc.index_in(values, value_set=pc.unique(values)).to_numpy().astype(np.int64)
    width = int(codes.max()) + 1
    pairs, per_pair = np.unique(rows * width + codes, return_counts=True)
    pair_rows = pairs // width
    firsts = np.flatnonzero(np.r_[True, pair_rows[1:] != pair_rows[:-1]])
    most[pair_rows[firsts]] = np.maximum.reduceat(per_pair, firsts)
    return most


def _slot_lists(slots: pa.Table, row_of: _WindowRows, spec: WindowSpec) -> pa.Array:
    """Record counts per slot of each window, zeros included (what rate models need)."""
    flat = np.zeros(row_of.num_rows * spec.slots, dtype=np.int64)
    flat[row_of(slots) * spec.slots + slots.column("slot").to_numpy()] = slots.column("records").to_numpy()
    offsets = np.arange(0, flat.size + 1, spec.slots, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def window_features(batches: Iterable[pa.RecordBatch], spec: WindowSpec) -> pa.Table:
    """Without Beam: the features of every endpoint-window in `batches` (what `WindowFeatures` gives)."""
    # The partials merge associatively, so how records are grouped into batches changes no feature.
    joined = coalesced_batches(batches, _WINDOW_BATCH_ROWS)
    parts = [part for part in (partial_windows(batch, spec) for batch in joined) if part is not None]
    if not parts:
        return window_table_schema(spec.table).empty_table()
    return window_table(merge_partials(parts), spec)


def batch_runs(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[list[pa.RecordBatch]]:
    """Consecutive batches of one schema grouped into runs of about `rows` rows."""
    waiting: list[pa.RecordBatch] = []
    waiting_rows = 0
    for batch in batches:
        if waiting and (batch.schema != waiting[0].schema or waiting_rows >= rows):
            yield waiting
            waiting, waiting_rows = [], 0
        waiting.append(batch)
        waiting_rows += batch.num_rows
    if waiting:
        yield waiting


def coalesced_batches(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """`batch_runs` joined into batches, for work whose fixed cost per call outweighs its cost per row
    (Acero's group-by costs ~10 ms a call, which dominated windowing the parsers' 10,000-row batches)."""
    return (pa.concat_batches(run) for run in batch_runs(batches, rows))


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
