"""The faster paths of detect give what the plain ones they replaced gave."""
import hashlib
import heapq
import math

import numpy as np
import pyarrow as pa

from beamlytics.detectors.population import Pool, merge_pools, pools_of


def test_merged_pools_are_the_smallest_entries_heapq_picks():
    rng = np.random.default_rng(7)
    hashes = rng.integers(0, 2**64, size=3000, dtype=np.uint64).tolist()
    hashes[:40] = [2**64 - 1] * 20 + [0] * 20  # the extremes of a 64-bit hash, and ties broken by value
    values = rng.normal(size=3000).round(1).tolist()
    entries = list(zip(hashes, values))
    pools = [Pool(np.array(hashes[start:start + 700], np.uint64), np.array(values[start:start + 700]))
             for start in range(0, 3000, 700)]
    for capacity in (1, 100, 2999, 5000):
        merged = merge_pools(pools, capacity)
        assert list(zip(merged.hashes.tolist(), merged.values.tolist())) == heapq.nsmallest(capacity, entries)
    assert len(merge_pools([Pool(np.empty(0, np.uint64), np.empty(0))] * 2, 10)) == 0


def reference_pools(rows: list[dict], feature_names, capacity):
    """The pools as a plain loop computes them: a blake2b and a Python tuple per endpoint-window."""
    pools = {}
    for feature in feature_names:
        by_kind = {}
        for row in rows:
            value = row[feature]
            if value is not None and math.isfinite(value):
                text = f"{row['table']}|{row['key_kind']}|{row['key']}|{row['window_start']}"  # the window, not the feature
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
                by_kind.setdefault((row["table"], row["key_kind"]), []).append((int.from_bytes(digest, "big"), value))
        for (table, kind), entries in by_kind.items():
            pools[(table, kind, feature)] = heapq.nsmallest(capacity, entries)
    return pools


def test_pools_hash_and_keep_what_one_blake2b_per_window_did():
    rng = np.random.default_rng(3)
    size = 2_000
    # Two kinds of key in one table, non-ASCII and long keys (a blake2b block is 128 bytes), NaN and ±inf left out.
    keys = [f"host-{i % 37}" for i in range(size - 3)] + ["ñandú.example", "x" * 300, "10.0.0.1"]
    records = rng.integers(1, 50, size=size).astype(float)
    ratio = rng.random(size)
    ratio[::97], ratio[5], ratio[6] = math.nan, math.inf, -math.inf
    table = pa.table({
        "table": ["dns"] * size,
        "key_kind": ["c_ip" if i % 3 else "name" for i in range(size)],
        "key": keys,
        "window_start": pa.array(1_700_000_000_000_000 + 60_000_000 * (np.arange(size) // 37),
                                 pa.timestamp("us", tz="UTC")),
        "records": records,
        "nxdomain_ratio": ratio,
    })
    rows = table.to_pylist()
    # The first version hashed the start as integer microseconds.
    for row, start in zip(rows, table.column("window_start").cast(pa.int64()).to_pylist()):
        row["window_start"] = start
    for capacity in (50, 5_000):
        found = pools_of(table, ("records", "nxdomain_ratio"), capacity)
        expected = reference_pools(rows, ("records", "nxdomain_ratio"), capacity)
        assert sorted(found) == sorted(expected)
        for key, pool in found.items():
            assert list(zip(pool.hashes.tolist(), pool.values.tolist())) == expected[key], key
