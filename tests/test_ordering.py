"""Sorting through string ranks gives Arrow's own order of the strings, nulls and NaNs included."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.ordering import sort_indices, sorted_by, value_ranks


def test_ranks_are_the_code_point_order_of_distinct_values_and_nulls_stay_null():
    column = pa.chunked_array([["b", None, "ä"], ["Z", "b", "a"]])
    # By code point "Z" < "a" < "b" < "ä", as Python's sorted() orders them.
    assert sorted({"b", "ä", "Z", "a"}) == ["Z", "a", "b", "ä"]
    assert value_ranks(column).to_pylist() == [2, None, 3, 0, 2, 1]


def test_sort_indices_equal_arrow_sorting_the_strings_themselves():
    rng = np.random.default_rng(14)
    rows = 5000
    score = rng.random(rows).round(2)
    score[rng.random(rows) < 0.1] = np.nan
    keys = rng.choice(["10.0.0.1", "10.0.0.10", "10.0.0.2", "fe80::1", "", "é"], rows).tolist()
    table = pa.table({
        "score": pa.array(score, mask=rng.random(rows) < 0.1),
        "table": pa.chunked_array([rng.choice(["dns", "named_flows"], rows // 2).tolist(),
                                   rng.choice(["dns", "named_flows"], rows - rows // 2).tolist()]),
        "key": pa.array([None if rng.random() < 0.05 else key for key in keys], pa.string()),
        "window_start": pa.array(rng.integers(0, 5, rows) * 60_000_000, pa.timestamp("us", tz="UTC")),
        "feature": pa.array(rng.choice(["records", "nxdomain_ratio", "Zed"], rows).tolist(), pa.large_string()),
    })
    for keys_ in ([("table", "ascending"), ("key", "ascending"), ("window_start", "ascending"), ("feature", "ascending")],
                  [("score", "descending"), ("table", "ascending"), ("key", "ascending"), ("window_start", "ascending")],
                  [("key", "descending"), ("feature", "descending")]):
        assert sort_indices(table, keys_).equals(pc.sort_indices(table, keys_))


def test_integer_keys_with_nulls_ties_and_overflowing_ranges_sort_as_arrow_does():
    rng = np.random.default_rng(8)
    rows = 3000
    small = rng.integers(-3, 4, rows)
    table = pa.table({
        "small": pa.array(small, pa.int32(), mask=rng.random(rows) < 0.1),  # ties: a stable order is tested
        "wide": pa.array(rng.integers(-(1 << 62), 1 << 62, rows), pa.int64()),  # radix beyond 63 bits: Arrow sorts
        "unsigned": pa.array(rng.integers(0, 3, rows), pa.uint16()),
        "nothing": pa.array([None] * rows, pa.int64()),
        "name": pa.array(rng.choice(["b", "a", None], rows).tolist(), pa.string()),
    })
    for keys in ([("small", "descending"), ("name", "ascending")],
                 [("unsigned", "ascending"), ("nothing", "descending"), ("small", "ascending")],
                 [("small", "ascending"), ("wide", "descending")],
                 [("name", "descending"), ("unsigned", "descending")]):
        assert sort_indices(table, keys).equals(pc.sort_indices(table, keys))
    assert sort_indices(table.slice(0, 0), [("small", "ascending")]).equals(
        pc.sort_indices(table.slice(0, 0), [("small", "ascending")]))


def test_a_table_sorted_by_keys_is_arrows_order_and_an_ordered_one_is_not_copied():
    rng = np.random.default_rng(9)
    rows = 2000
    table = pa.table({"key": pa.array(rng.choice(["x", "w", "y"], rows).tolist()),
                      "start": pa.array(rng.integers(0, 50, rows), pa.int64()),
                      "value": pa.array(rng.random(rows))})
    keys = [("key", "ascending"), ("start", "ascending")]
    ordered = sorted_by(table, keys)
    assert ordered.equals(table.take(pc.sort_indices(table, keys)))
    assert sorted_by(ordered, keys) is ordered
    ties_reversed = pa.table({"key": ["a", "a", "b"], "start": [2, 1, 3]})  # in order by "key" alone, not by both
    assert sorted_by(ties_reversed, [("key", "ascending")]) is ties_reversed
    assert sorted_by(ties_reversed, keys).column("start").to_pylist() == [1, 2, 3]
