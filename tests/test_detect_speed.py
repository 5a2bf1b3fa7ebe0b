"""The faster paths of detect give what the plain ones they replaced gave."""
import heapq

import numpy as np

from beamlytics.detectors.population import merge_pools


def test_merged_pools_are_the_smallest_entries_heapq_picks():
    rng = np.random.default_rng(7)
    hashes = rng.integers(0, 2**64, size=3000, dtype=np.uint64).tolist()
    hashes[:40] = [2**64 - 1] * 20 + [0] * 20  # the extremes of a 64-bit hash, and ties broken by value
    values = rng.normal(size=3000).round(1).tolist()
    entries = list(zip(hashes, values))
    pools = [entries[start:start + 700] for start in range(0, 3000, 700)]
    for capacity in (1, 100, 2999, 5000):
        assert merge_pools(pools, capacity) == heapq.nsmallest(capacity, entries)
    assert merge_pools([[], []], 10) == []
