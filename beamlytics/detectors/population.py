"""The population prior: every endpoint-window of a run, pooled per (table, key kind, feature). No Beam.

An endpoint's own detector needs 5–50 windows of its history before it judges one; an
attacker is malicious from its first packet. The pooled values of all endpoints of the same
kind give a tail model from the first window: SPOT's extreme-value (GPD) tail, fitted with
`spot.Spot` on the pool, turns any value into a tail probability and any risk into a threshold.

The pool is bounded and the same whatever the arrival order or sharding: every value carries
a stable hash of its (endpoint, window, feature); a pool keeps the `capacity` entries with
the smallest (hash, value), a bottom-k sample that merges associatively and is exact while a
run has at most `capacity` endpoint-windows.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.detectors.spot import Spot, tail_probability

CAPACITY = 50_000  # pooled values kept per (table, key kind, feature)
MIN_POOL = 100  # fewer endpoint-windows than this give no population model
LEVEL = 0.98  # the share of the pool under the excess threshold, as SPOT's default

PoolKey = tuple[str, str, str]  # (table, key kind, feature)
Pool = list[tuple[int, float]]  # (hash, value), ascending, at most CAPACITY entries


def entry_hash(table: str, key_kind: str, key: str, window_start: int, feature: str) -> int:
    """A 64-bit hash of one endpoint-window's feature, the same on every run and machine."""
    text = f"{table}|{key_kind}|{key}|{window_start}|{feature}".encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def merge_pools(pools: Iterable[Pool], capacity: int = CAPACITY) -> Pool:
    """The `capacity` smallest (hash, value) entries of all pools: associative and order-free."""
    return _smallest([entry for pool in pools for entry in pool], capacity)


def _smallest(entries: list[tuple[int, float]], capacity: int) -> Pool:
    """`heapq.nsmallest(capacity, entries)`, sorted by numpy: its Python loop was most of a large run's pooling."""
    if not entries:
        return []
    hashes = np.fromiter((entry[0] for entry in entries), np.uint64, len(entries))
    values = np.fromiter((entry[1] for entry in entries), np.float64, len(entries))
    kept = np.lexsort((values, hashes))[:capacity]
    return list(zip(hashes[kept].tolist(), values[kept].tolist()))


def pools_of(windows: pa.Table, feature_names: Sequence[str], capacity: int = CAPACITY) -> dict[PoolKey, Pool]:
    """Pools of a table of endpoint-windows (features.table_of_windows columns); non-finite values are left out."""
    tables = windows.column("table").to_pylist()
    kinds = windows.column("key_kind").to_pylist()
    keys = windows.column("key").to_pylist()
    starts = pc.cast(windows.column("window_start"), pa.int64()).to_pylist()
    pools: dict[PoolKey, Pool] = {}
    for feature in feature_names:
        values = pc.cast(windows.column(feature), pa.float64()).to_numpy(zero_copy_only=False)
        by_kind: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for table, kind, key, start, value in zip(tables, kinds, keys, starts, values.tolist()):
            if math.isfinite(value):
                by_kind.setdefault((table, kind), []).append((entry_hash(table, kind, key, start, feature), value))
        for (table, kind), entries in by_kind.items():
            pools[(table, kind, feature)] = _smallest(entries, capacity)
    return pools


def merge_pool_maps(maps: Iterable[Mapping[PoolKey, Pool]], capacity: int = CAPACITY) -> dict[PoolKey, Pool]:
    gathered: dict[PoolKey, list[Pool]] = {}
    for pools in maps:
        for key, pool in pools.items():
            gathered.setdefault(key, []).append(pool)
    return {key: merge_pools(found, capacity) for key, found in sorted(gathered.items())}


@dataclass(frozen=True)
class FeatureTail:
    """The population of one feature: its sorted pooled values and SPOT's upper tail fitted on them."""

    values: np.ndarray  # ascending
    spot: Spot | None  # None when the pool has no tail to fit (too small, constant)
    reason: str | None = None  # why there is no model

    @classmethod
    def fit(cls, values: Iterable[float]) -> "FeatureTail":
        data = np.sort(np.asarray(list(values), dtype=float))
        if data.size < MIN_POOL:
            return cls(data, None, f"population too small ({data.size} endpoint-windows, needs {MIN_POOL})")
        # Ascending order makes SPOT's P² quantile, which depends on order, a function of the pool alone.
        spot = Spot(q=1e-3, level=LEVEL)
        try:
            spot.fit(data.tolist())
        except ValueError:
            return cls(data, None, "population has no upper tail (nearly constant)")
        if not (math.isfinite(spot.gamma) and math.isfinite(spot.sigma) and spot.sigma > 0):
            return cls(data, None, "population has no upper tail (nearly constant)")
        return cls(data, spot)

    @functools.cached_property  # asked once per judged feature row: a pool's median is computed once
    def median(self) -> float:
        return float(np.median(self.values)) if self.values.size else math.nan

    def probabilities(self, observed: np.ndarray) -> np.ndarray:
        """P(a population window ≥ value): the share of the pool at or above it up to the excess
        threshold, the fitted GPD tail beyond it. NaN where there is no model or no value."""
        observed = np.asarray(observed, dtype=float)
        if self.spot is None:
            return np.full(observed.shape, math.nan)
        at_or_above = (self.values.size - np.searchsorted(self.values, observed, side="left")) / self.values.size
        beyond = observed > self.spot.excess_threshold
        result = np.where(beyond, 0.0, at_or_above)
        for index in np.flatnonzero(beyond & np.isfinite(observed)):
            result[index] = tail_probability(self.spot, float(observed[index]))
        result[~np.isfinite(observed)] = math.nan
        return result

    def threshold(self, risk: float) -> float:
        """The value a window exceeds with probability `risk` (within the tail the model covers)."""
        if self.spot is None:
            return math.nan
        share = self.spot.Nt / self.spot.n
        if risk >= share:  # inside the body: the empirical quantile
            return float(np.quantile(self.values, 1.0 - risk, method="higher"))
        return float(self.spot.quantile(risk))


@dataclass(frozen=True)
class Population:
    """Tail models per (table, key kind, feature)."""

    tails: Mapping[PoolKey, FeatureTail]

    @classmethod
    def fit(cls, pools: Mapping[PoolKey, Pool]) -> "Population":
        return cls({key: FeatureTail.fit(value for _, value in pool) for key, pool in sorted(pools.items())})

    @classmethod
    def of_windows(cls, windows: pa.Table, feature_names: Sequence[str]) -> "Population":
        return cls.fit(pools_of(windows, feature_names))

    def tail(self, table: str, key_kind: str, feature: str) -> FeatureTail | None:
        return self.tails.get((table, key_kind, feature))


EMPTY = Population({})
