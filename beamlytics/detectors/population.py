"""The population prior: every judged endpoint-window of a run, pooled per (table, key kind, feature). No Beam.

An endpoint's own detector needs 5–50 windows of its history before it judges one; an
attacker is malicious from its first packet. The pooled values of all endpoints of the same
kind give a tail model from the first window: SPOT's extreme-value (GPD) tail, fitted with
`spot.Spot` on the pool, turns any value into a tail probability and any risk into a threshold.

The pool is bounded and the same whatever the arrival order or sharding: every value carries
a stable hash of its endpoint-window; a pool keeps the `capacity` entries with the smallest
(hash, value), a bottom-k sample that merges associatively and is exact while a run has at
most `capacity` endpoint-windows. The hash leaves the feature out, so the pools of one kind
sample the same windows and join on it: the population of whole windows, on which the
verdict's combined statistic is calibrated (`CombinedTail`), under whatever dependence the
features have.
"""
from __future__ import annotations

import dataclasses
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
_SMALLEST = 5e-324  # p is floored here so that −log p stays finite
_SMALLEST_TERM_P = 1e-300  # and here so that 1 / p does

PoolKey = tuple[str, str, str]  # (table, key kind, feature)


@dataclass(frozen=True, eq=False)
class Pool:
    """A bottom-k sample: (hash, value) entries ascending by hash then value, at most CAPACITY of them.

    Two numpy columns rather than a Python tuple per entry: pools are merged per shard and
    pickled between workers, and 50,000 tuples per feature were most of the pooling's cost.
    """

    hashes: np.ndarray  # uint64
    values: np.ndarray  # float64, all finite

    def __len__(self) -> int:
        return self.hashes.size

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Pool) and np.array_equal(self.hashes, other.hashes)
                and np.array_equal(self.values, other.values))


def _hashes(identities: Sequence[bytes]) -> np.ndarray:
    """The 64-bit blake2b of each `table|key kind|key|window start` identity, the same on every run and machine:
    one C call per entry, no Python int per entry."""
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(identity, digest_size=8).digest() for identity in identities])
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


def merge_pools(pools: Iterable[Pool], capacity: int = CAPACITY) -> Pool:
    """The `capacity` smallest (hash, value) entries of all pools: associative and order-free."""
    pools = list(pools)
    return _smallest(np.concatenate([np.empty(0, np.uint64), *(pool.hashes for pool in pools)]),
                     np.concatenate([np.empty(0, np.float64), *(pool.values for pool in pools)]), capacity)


def _smallest(hashes: np.ndarray, values: np.ndarray, capacity: int) -> Pool:
    """`heapq.nsmallest(capacity, zip(hashes, values))` as a pool."""
    return _kept(hashes, values, _by_hash(hashes), capacity)


def _by_hash(hashes: np.ndarray) -> np.ndarray | None:
    """The order of distinct `hashes`, ascending; None when two are equal (the values then decide).

    Hashes are of distinct endpoint-windows, so equal ones are a 64-bit collision or the same window pooled
    twice; without them one stable sort of the hashes (runs of sorted pools merge cheaply) orders the entries
    as sorting (hash, value) pairs does, and a kind's features share it (docs/benchmarks.md)."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    return order if not np.any(ordered[1:] == ordered[:-1]) else None


def _kept(hashes: np.ndarray, values: np.ndarray, order: np.ndarray | None, capacity: int) -> Pool:
    """The pool of the `capacity` smallest entries, `order` the hashes' if known distinct."""
    kept = (np.lexsort((values, hashes)) if order is None else order)[:capacity]
    return Pool(hashes[kept], values[kept])


def pools_of(windows: pa.Table, feature_names: Sequence[str], capacity: int = CAPACITY,
             min_records: int = 0) -> dict[PoolKey, Pool]:
    """Pools of a table of endpoint-windows (features.table_of_windows columns); non-finite values are left out.

    Only windows of at least `min_records` records are pooled: the verdict judges no others (`--min-records`),
    so the population's p is the share of *judged* windows at or beyond a value and the alarm rate the share
    of judged windows that alarm. Pooling the small windows too made it a share of all windows: the two
    differed by the share judged (75 % of the attack benchmark's flow windows, docs/evaluation.md)."""
    if min_records > 0:
        windows = windows.filter(pc.fill_null(pc.greater_equal(windows.column("records"), min_records), False))
    pools: dict[PoolKey, Pool] = {}
    for (table, kind), rows in _rows_by_kind(windows).items():
        # The hashed text of every endpoint-window built by Arrow once, not formatted per feature.
        identities = pc.binary_join_element_wise(
            table, kind, pc.cast(rows.column("key"), pa.string()),
            pc.cast(pc.cast(rows.column("window_start"), pa.int64()), pa.string()),
            "|")
        hashes = _hashes(pc.cast(identities, pa.binary()).to_pylist())
        order = _by_hash(hashes)
        for feature in feature_names:
            values = pc.cast(rows.column(feature), pa.float64()).to_numpy(zero_copy_only=False)
            finite = np.isfinite(values)
            if order is None:
                pools[(table, kind, feature)] = _smallest(hashes[finite], values[finite], capacity)
            else:  # the finite entries in the kind's order
                pools[(table, kind, feature)] = _kept(hashes, values, order[finite[order]], capacity)
    return pools


def _rows_by_kind(windows: pa.Table) -> dict[tuple[str, str], pa.Table]:
    """The rows of `windows` per (table, key kind): a run has one or a few."""
    kinds = windows.select(["table", "key_kind"]).group_by(["table", "key_kind"], use_threads=False).aggregate([])
    by_kind = {}
    for table, kind in zip(kinds.column("table").to_pylist(), kinds.column("key_kind").to_pylist()):
        if kinds.num_rows == 1:
            return {(table, kind): windows}
        by_kind[(table, kind)] = windows.filter(
            pc.and_(pc.equal(windows.column("table"), table), pc.equal(windows.column("key_kind"), kind)))
    return by_kind


@dataclass(frozen=True)
class FeatureTail:
    """The population of one feature: its sorted pooled values and SPOT's upper tail fitted on them."""

    values: np.ndarray  # ascending
    spot: Spot | None  # None when the pool has no tail to fit (too small, constant)
    reason: str | None = None  # why there is no model
    pool: Pool | None = None  # the values by window hash, for joining the features of a kind; None: not joinable

    @classmethod
    def of_pool(cls, pool: Pool) -> "FeatureTail":
        return dataclasses.replace(cls.fit(pool.values), pool=pool)

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
        tail = beyond & np.isfinite(observed)
        # The GPD in Python once per distinct value: windows share counts (51,751 rows beyond, 4 M records).
        distinct, inverse = np.unique(observed[tail], return_inverse=True)
        result[tail] = np.array([tail_probability(self.spot, value) for value in distinct.tolist()],
                                dtype=float)[inverse.ravel()]
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


# How a window's features are combined; the default first. harmonic and fisher are each a sum of one term per judged
# feature, a term that grows as its p falls (monotone); omnibus is the smaller of those two sums' calibrated p's.
# Each is referred to the population's windows the same way.
COMBINATION_RULES = ("harmonic", "fisher", "omnibus")
_SUMS = {"harmonic": ("harmonic",), "fisher": ("fisher",), "omnibus": ("harmonic", "fisher")}  # what each adds up


def combination_terms(probabilities: np.ndarray, rule: str) -> np.ndarray:
    """Each row's term of a sum rule's statistic; 0 for a row without a finite p.

    harmonic: 1 / p, so a window's sum is m over the harmonic mean p-value (Wilson 2019) of its m judged features
    (p floored at 1e-300: the sum of up to 10^8 such terms is still a finite float); fisher: −2 ln p (p floored at
    the smallest float)."""
    finite = np.isfinite(probabilities)
    p = np.where(finite, probabilities, 1.0)
    if rule == "fisher":
        terms = -2.0 * np.log(np.maximum(p, _SMALLEST))
    elif rule == "harmonic":
        terms = 1.0 / np.maximum(p, _SMALLEST_TERM_P)
    else:
        raise ValueError(f"unknown sum rule {rule!r} (one of {', '.join(_SUMS['omnibus'])})")
    return np.where(finite, terms, 0.0)


def rule_terms(probabilities: np.ndarray, rule: str) -> np.ndarray:
    """Each row's terms of every sum the rule combines: one column per sum (`combination_terms`)."""
    if rule not in _SUMS:
        raise ValueError(f"unknown combination rule {rule!r} (one of {', '.join(COMBINATION_RULES)})")
    return np.column_stack([combination_terms(probabilities, name) for name in _SUMS[rule]])


def combined_statistic(terms: np.ndarray, window_of_row: np.ndarray, windows: int) -> np.ndarray:
    """Per window, the sum of its rows' `combination_terms` (per column, if a `rule_terms` table); 0 for a window
    with none. It grows when any p falls: monotone in every feature."""
    if terms.ndim == 2:
        return np.column_stack([combined_statistic(column, window_of_row, windows) for column in terms.T])
    return np.bincount(window_of_row, weights=terms, minlength=windows)


def feature_p_reaching(limit: float, rule: str) -> float:
    """The feature p whose term alone reaches a statistic of `limit` (the inverse of a sum rule's term; 1 when any
    p does)."""
    if rule == "fisher":
        return min(1.0, math.exp(-limit / 2.0))
    return 1.0 / limit if limit > 1.0 else 1.0


@dataclass(frozen=True)
class CombinedTail:
    """The population's own distribution of the combined statistic over its whole windows.

    The statistic (by default Σ 1 / p, m over the harmonic mean p-value of the m judged features) is referred to the
    windows of the population, not to a distribution that assumes independent features: the share of pooled
    windows whose statistic is at least a window's (SPOT's tail beyond the body) is its p, so at an alarm rate r
    about r of the population's windows alarm, whatever the features' dependence, and adding a feature costs no
    Bonferroni factor. The harmonic sum is led by the smallest p (one extreme feature is enough: a vertical scan's
    ports) and still adds moderate ones; Fisher's −2 Σ ln p rewards several moderate ones more (a horizontal scan's
    peers, ports and flows together) and lets ordinary features dilute one extreme one. The omnibus rule takes
    the smaller of the two sums' population p's, −ln of which is its statistic, referred to the population once
    more (`parts` are the two sums' tails), so that picking the better of two tests costs nothing in the alarm
    rate (docs/evaluation.md measures all three).
    """

    statistics: FeatureTail
    features: tuple[str, ...]  # the features it combines
    rule: str = COMBINATION_RULES[0]
    parts: tuple[FeatureTail, ...] = ()  # omnibus: the tails of the sums whose smaller p it refers

    def statistic(self, sums: np.ndarray) -> np.ndarray:
        """Per window, its statistic from its `combined_statistic` sums (one row per window, one column per sum)."""
        return _statistic(sums, self.parts)

    def probabilities(self, statistic: np.ndarray) -> np.ndarray:
        return self.statistics.probabilities(statistic)

    def threshold(self, alarm_rate: float) -> float:
        """The statistic at which a window alarms at `alarm_rate`."""
        return self.statistics.threshold(alarm_rate)

    def feature_p_alarming(self, alarm_rate: float) -> float:
        """The feature p at which one feature alone alarms its window at `alarm_rate` (omnibus: where either sum
        alone reaches the smaller p that alarms)."""
        limit = self.threshold(alarm_rate)
        if not self.parts:
            return feature_p_reaching(limit, self.rule)
        smaller = math.exp(-limit)
        return max(feature_p_reaching(part.threshold(smaller), name)
                   for name, part in zip(_SUMS[self.rule], self.parts))


def _statistic(sums: np.ndarray, parts: tuple[FeatureTail, ...]) -> np.ndarray:
    """A sum rule's statistic is its one sum; the omnibus rule's is −ln of the smaller of its sums' p's among
    `parts` (p floored at the smallest float), which grows as either p falls."""
    if not parts:
        return sums[:, 0]
    smaller = np.minimum.reduce([part.probabilities(sums[:, column]) for column, part in enumerate(parts)])
    return -np.log(np.maximum(smaller, _SMALLEST))


def combined_tail(tails: Mapping[str, FeatureTail], rule: str) -> CombinedTail | None:
    """The combined statistic's tail over the windows the pools of one kind share; None when they cannot be joined
    (a tail without its pool) or too few windows have one."""
    modelled = {feature: tail for feature, tail in sorted(tails.items()) if tail.spot is not None}
    if not modelled or any(tail.pool is None for tail in modelled.values()):
        return None
    # A full pool holds the windows up to its largest hash; the others are complete: windows below every full
    # pool's cut are exactly the population's (64-bit hashes: collisions are ignored).
    cut = min((int(tail.pool.hashes[-1]) for tail in modelled.values() if len(tail.pool) >= CAPACITY),
              default=None)
    window_hashes = np.unique(np.concatenate([tail.pool.hashes for tail in modelled.values()]))
    if cut is not None:
        window_hashes = window_hashes[window_hashes <= np.uint64(cut)]
    probabilities, rows = [], []
    for tail in modelled.values():
        position = np.searchsorted(window_hashes, tail.pool.hashes)
        present = position < window_hashes.size
        present[present] = window_hashes[position[present]] == tail.pool.hashes[present]
        probabilities.append(tail.probabilities(tail.pool.values[present]))
        rows.append(position[present])
    sums = combined_statistic(rule_terms(np.concatenate(probabilities), rule), np.concatenate(rows),
                              window_hashes.size)
    parts = ()
    if len(_SUMS[rule]) > 1:
        parts = tuple(FeatureTail.fit(column) for column in sums.T)
        if any(part.spot is None for part in parts):
            return None
    fitted = FeatureTail.fit(_statistic(sums, parts))
    return CombinedTail(fitted, tuple(modelled), rule, parts) if fitted.spot is not None else None


@dataclass(frozen=True)
class Population:
    """Tail models per (table, key kind, feature), and per (table, key kind) the combined statistic's."""

    tails: Mapping[PoolKey, FeatureTail]
    rule: str = COMBINATION_RULES[0]  # how a window's features are combined

    @classmethod
    def fit(cls, pools: Mapping[PoolKey, Pool]) -> "Population":
        return cls({key: FeatureTail.of_pool(pool) for key, pool in sorted(pools.items())})

    @functools.cached_property  # fitted once per population, when a verdict first asks
    def _combined(self) -> dict[tuple[str, str], CombinedTail | None]:
        kinds: dict[tuple[str, str], dict[str, FeatureTail]] = {}
        for (table, kind, feature), tail in sorted(self.tails.items()):
            kinds.setdefault((table, kind), {})[feature] = tail
        return {kind: combined_tail(tails, self.rule) for kind, tails in kinds.items()}

    def combined(self, table: str, key_kind: str) -> CombinedTail | None:
        return self._combined.get((table, key_kind))

    @classmethod
    def of_windows(cls, windows: pa.Table, feature_names: Sequence[str], min_records: int = 0) -> "Population":
        return cls.fit(pools_of(windows, feature_names, min_records=min_records))

    def tail(self, table: str, key_kind: str, feature: str) -> FeatureTail | None:
        return self.tails.get((table, key_kind, feature))


EMPTY = Population({})
