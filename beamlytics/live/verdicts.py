"""Verdicts while the traffic flows: each window judged against the population of the windows closed by its end.

Batch `detect` pools every endpoint-window of the run, later ones included; a live run cannot
wait for the end. Here the windows ending at T are judged once every window ending by T is
scored, against the pool of exactly those windows (theirs included): a prequential population,
the same whatever order the windows arrived in. So a live verdict equals the verdict batch
`detect` gives that window on the records of the windows ending by T, and the windows of the
run's last end are judged against the very population batch `detect` fits on the same records.
The pool is `population`'s bounded bottom-k sample, so the state it needs stays bounded. No Beam.
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.detectors.population import CAPACITY, Pool, PoolKey, Population, entry_hash, merge_pool_maps, merge_pools
from beamlytics.detectors.verdict import VerdictSettings, judge


def pools_of_scores(scores: pa.Table, capacity: int = CAPACITY) -> dict[PoolKey, Pool]:
    """The pools of the endpoint-windows behind score rows (one row per window and feature holds its value):
    the same entries `population.pools_of` takes from the windows' feature columns."""
    gathered: dict[PoolKey, list[tuple[int, float]]] = {}
    columns = [scores.column(name).to_pylist() for name in ("table", "key_kind", "key", "feature")]
    starts = pc.cast(scores.column("window_start"), pa.int64()).to_pylist()
    values = pc.cast(scores.column("value"), pa.float64()).to_numpy(zero_copy_only=False).tolist()
    for table, kind, key, feature, start, value in zip(*columns, starts, values):
        if math.isfinite(value):
            gathered.setdefault((table, kind, feature), []).append((entry_hash(table, kind, key, start, feature), value))
    return {pool_key: merge_pools([entries], capacity) for pool_key, entries in sorted(gathered.items())}


def judge_closed(scores: pa.Table, pools: Mapping[PoolKey, Pool], settings: VerdictSettings,
                 capacity: int = CAPACITY) -> Iterator[tuple[int, pa.Table, pa.Table, dict, dict[PoolKey, Pool]]]:
    """Score rows of closed windows → per window end T, oldest first: (T, verdicts, reported anomaly rows,
    counts, the pools after T). `pools` holds the windows that ended before the first T."""
    ends = pc.cast(scores.column("window_end"), pa.int64()).to_numpy(zero_copy_only=False)
    for end in np.unique(ends).tolist():
        closing = scores.filter(pa.array(ends == end))
        pools = merge_pool_maps([pools, pools_of_scores(closing, capacity)], capacity)
        verdicts, reported, counts = judge(closing, Population.fit(pools), settings)
        yield end, verdicts, reported, counts, pools
