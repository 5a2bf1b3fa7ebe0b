"""The order verdicts list windows and evidence in, against a row-by-row Python reference."""
import math

import numpy as np
import pyarrow as pa

from beamlytics.detectors.verdict import _windows_in_evidence_order


def _reference(rows: list[dict], p: list[float]):
    """Windows numbered by their first row; within one, rows by (p, NaN last, feature name, row)."""
    number: dict[tuple, int] = {}
    for row in rows:
        number.setdefault((row["table"], row["key_kind"], row["key"], row["window_start"]), len(number))
    group = [number[(row["table"], row["key_kind"], row["key"], row["window_start"])] for row in rows]
    order = sorted(range(len(rows)), key=lambda i: (group[i], 2.0 if math.isnan(p[i]) else p[i],
                                                    rows[i]["feature"], i))
    sizes = np.bincount(group, minlength=len(number))
    return group, order, np.r_[0, np.cumsum(sizes)]


def _chunked(values, rng, type_=None) -> pa.ChunkedArray:
    array = pa.array(values, type_)
    cuts = sorted(rng.integers(0, len(array) + 1, size=2).tolist())
    return pa.chunked_array([array.slice(0, cuts[0]), array.slice(cuts[0], cuts[1] - cuts[0]), array.slice(cuts[1])],
                            array.type)


def test_windows_and_evidence_order_equal_a_row_by_row_sort_over_chunks_unicode_and_nan():
    rng = np.random.default_rng(14)
    for rows_count in (1, 7, 400, 3000):
        columns = {
            "table": rng.choice(["dns", "named_flows", "dnś"], rows_count).tolist(),
            "key_kind": rng.choice(["c_ip", "server", "é"], rows_count).tolist(),
            "key": [f"10.0.{i}" for i in rng.integers(0, 40, rows_count)],
            "window_start": (rng.integers(0, 12, rows_count) * 60_000_000).tolist(),
            # "Z" < "a" < "ä" by code point, as Python sorts: not a locale's order
            "feature": rng.choice(["records", "nxdomain_ratio", "Zed", "ä", "max_x"], rows_count).tolist(),
        }
        p = rng.random(rows_count)
        p[rng.random(rows_count) < 0.2] = np.nan
        p[rng.random(rows_count) < 0.2] = 0.5  # ties in p: feature name, then row, decide
        table = pa.table({name: _chunked(values, rng, pa.timestamp("us", tz="UTC") if name == "window_start"
                                         else None) for name, values in columns.items()})
        group, order, offsets = _windows_in_evidence_order(table, p)
        expected_group, expected_order, expected_offsets = _reference(table.to_pylist(), p.tolist())
        assert group.tolist() == expected_group
        assert order.tolist() == expected_order
        assert offsets.tolist() == expected_offsets.tolist()
