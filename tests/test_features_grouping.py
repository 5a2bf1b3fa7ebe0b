"""Windowing's own group-by (integer codes, sorted) against Acero's hash group-by as the reference, and the merge of
partials that compares only rows of shared windows against deduplicating every row."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from beamlytics import features


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in table.column_names])


def _random_table(seed: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    keys = rng.choice(np.array(["a", "b", "ccc", "", "dd"], dtype=object), rows)
    keys[rng.random(rows) < 0.1] = None

    def values(dtype, low, high):
        return pa.array(rng.integers(low, high, rows).astype(dtype), mask=rng.random(rows) < 0.3)
    return pa.table({
        "key": pa.array(keys.tolist(), pa.string()),
        "window_start": pa.array(rng.integers(-2, 3, rows) * 60_000_000),
        "small": values(np.int32, -50, 50),
        "wide": values(np.int64, -(1 << 40), 1 << 40),
        "unsigned": values(np.uint64, 0, 1 << 40),
        # Mostly null: some groups have no valid value at all.
        "sparse": pa.array(rng.integers(-9, 9, rows), mask=rng.random(rows) < 0.97),
    })


@pytest.mark.parametrize("seed, rows", [(1, 0), (2, 1), (3, 40), (4, 3000)])
def test_aggregate_equals_acero_group_by(seed, rows):
    table = _random_table(seed, rows)
    keys = ["key", "window_start"]
    columns = ["small", "wide", "unsigned", "sparse"]
    aggregations = {"records": ("small", "count_all"), "valid": ("sparse", "count")}
    aggregations |= {f"{function}_{column}": (column, function) for column in columns for function in ("sum", "max")}
    ours = features._aggregate(table, keys, aggregations)

    grouped = table.group_by(keys, use_threads=False).aggregate(
        [([], "count_all"), ("sparse", "count")]
        + [(column, function) for column in columns for function in ("sum", "max")])
    reference = pa.table({**{key: grouped.column(key) for key in keys}, "records": grouped.column("count_all"),
                          "valid": grouped.column("sparse_count"),
                          **{f"{function}_{column}": grouped.column(f"{column}_{function}")
                             for column in columns for function in ("sum", "max")}})
    assert ours.schema == reference.schema
    assert _sorted(ours).equals(_sorted(reference))
    assert ours.column("sum_sparse").null_count > 0 or rows < 40  # groups without a valid value stay null


def test_aggregate_refuses_a_column_whose_sums_would_depend_on_order():
    table = pa.table({"key": ["a", "a"], "x": [0.1, 0.2]})
    with pytest.raises(TypeError):
        features._aggregate(table, ["key"], {"x": ("x", "sum")})


@pytest.mark.parametrize("seed, rows", [(5, 0), (6, 7), (7, 5000)])
def test_distinct_rows_are_the_distinct_rows(seed, rows):
    table = _random_table(seed, rows).select(["key", "window_start", "small"])
    ours = features._distinct_rows(table)
    assert ours.num_rows == len(set(zip(*(table.column(name).to_pylist() for name in table.column_names))))
    assert _sorted(ours).equals(_sorted(table.group_by(table.column_names, use_threads=False).aggregate([])))


def test_row_codes_stay_exact_when_their_product_would_overflow():
    rng = np.random.default_rng(8)
    # Five columns of ~6,000 distinct values: a naive product of their sizes needs 63 bits and more.
    table = pa.table({f"c{n}": pa.array(rng.integers(0, 6000, 20_000)) for n in range(5)})
    table = pa.concat_tables([table, table.slice(0, 500)])  # some rows twice
    codes, _ = features._row_codes(table, table.column_names)
    rows = list(zip(*(table.column(name).to_pylist() for name in table.column_names)))
    first_code = {}
    for row, code in zip(rows, codes.tolist()):
        first_code.setdefault(row, code)
        assert first_code[row] == code
    assert len(set(codes.tolist())) == len(set(rows))


def _part(rows: list[tuple[str, int, str]]) -> features.WindowPartials:
    """A partial with one distinct-value table, from (key, window_start, value) rows (deduplicated)."""
    rows = sorted(set(rows))
    windows = sorted({(key, start) for key, start, _ in rows})
    measures = pa.table({"key": [key for key, _ in windows], "window_start": [start for _, start in windows],
                         "records": [sum(1 for row in rows if row[:2] == window) for window in windows]})
    distinct = pa.table({"key": [row[0] for row in rows], "window_start": [row[1] for row in rows],
                         "value": [row[2] for row in rows]})
    return features.WindowPartials(measures, {"names": distinct})


def test_merging_compares_only_rows_of_shared_windows_and_loses_no_duplicate():
    first = _part([("a", 0, "x"), ("a", 0, "y"), ("a", 60, "x"), ("b", 60, "z"), ("b", 0, "x")])
    # Shares windows (a, 0) and (b, 60); (a, 60) has a shared key and a shared start but is not shared itself.
    second = _part([("a", 0, "x"), ("a", 0, "z"), ("b", 60, "z"), ("a", 120, "x"), ("c", 60, "x")])
    third = _part([("d", 0, "x")])  # shares nothing
    merged = features.merge_partials([first, second, third])
    expected = {("a", 0, "x"), ("a", 0, "y"), ("a", 60, "x"), ("b", 60, "z"), ("b", 0, "x"), ("a", 0, "z"),
                ("a", 120, "x"), ("c", 60, "x"), ("d", 0, "x")}
    table = merged.distinct["names"]
    got = list(zip(*(table.column(name).to_pylist() for name in ("key", "window_start", "value"))))
    assert sorted(got) == sorted(expected)
    measures = merged.measures
    records = dict(zip(zip(measures.column("key").to_pylist(), measures.column("window_start").to_pylist()),
                       measures.column("records").to_pylist()))
    assert records == {("a", 0): 4, ("a", 60): 1, ("b", 60): 2, ("b", 0): 1, ("a", 120): 1, ("c", 60): 1, ("d", 0): 1}


def test_merging_partials_without_shared_windows_keeps_every_row():
    first, second = _part([("a", 0, "x"), ("a", 0, "y")]), _part([("a", 60, "x"), ("b", 0, "x")])
    merged = features.merge_partials([first, second])
    assert merged.distinct["names"].num_rows == 4
    assert merged.measures.num_rows == 3


@pytest.mark.parametrize("value", ["", "dns", '{"k": 3.0}', "é€😀"])
@pytest.mark.parametrize("count", [0, 1, 1000])
def test_repeated_columns_hold_the_value_each_row(value, count):
    from beamlytics.detectors.endpoint import repeated
    column = repeated(value, count)
    column.validate(full=True)
    assert column.type == pa.string() and column.to_pylist() == [value] * count


@pytest.mark.parametrize("labels", [
    np.array([3, 0, 3, 1, 0, 0, 2, 3]),  # shard numbers (the 16-bit radix sort)
    np.array([120_000_000, -60_000_000, 120_000_000, 0, 70_000 << 20, 0, -60_000_000, 5]),  # window starts
])
def test_split_table_keeps_each_labels_rows_in_their_order(labels):
    table = pa.table({"row": np.arange(len(labels)), "name": [f"r{i}" for i in range(len(labels))]})
    pieces = features.split_table(table, labels)
    assert sorted(pieces) == sorted(set(labels.tolist()))
    for label, piece in pieces.items():
        assert piece.equals(table.filter(pa.array(labels == label)))


def test_split_tables_pieces_travel_without_the_rest_of_the_table():
    rows = 40_000
    table = pa.table({"row": np.arange(rows), "name": [f"name-{i}" for i in range(rows)]})
    pieces = features.split_table(table, np.arange(rows) % 4)
    whole = len(features.pack(table))
    assert all(len(features.pack(piece)) < whole / 3 for piece in pieces.values())
    assert all(features.unpack(features.pack(piece)).equals(piece) for piece in pieces.values())


def test_merging_slices_of_a_larger_table_holds_none_of_it():
    first = _part([("a", 0, "x"), ("a", 60, "x"), ("b", 60, "z")])
    second = _part([("a", 0, "x"), ("a", 0, "y"), ("b", 60, "z"), ("c", 60, "x")])
    # Parts as the Beam path has them: slices of a larger table (one batch's partials of every shard).
    padded = pa.concat_tables([first.distinct["names"]] * 50).combine_chunks()
    first = features.WindowPartials(first.measures, {"names": padded.slice(0, 3)})
    merged = features.merge_partials([first, second])
    table = merged.distinct["names"]
    got = list(zip(*(table.column(name).to_pylist() for name in ("key", "window_start", "value"))))
    assert sorted(got) == [("a", 0, "x"), ("a", 0, "y"), ("a", 60, "x"), ("b", 60, "z"), ("c", 60, "x")]
    # A union of the slices as they are would hold the whole padded table (peak RSS +150-260 MiB at 4 M).
    assert table.get_total_buffer_size() < padded.get_total_buffer_size()
