"""WHAT, NetLytics' cloud service meter: the traffic each service of interest (a core domain) causes.

Training learns, per core domain, its bag of domains: the names a client contacts within OW
seconds after contacting the core following GAP seconds of silence, kept when they follow at
least MINFREQ of the core's visits and weighted by how specific they are to that core (TF-IDF).
Classification then gives each flow to the core whose open window (EW seconds, extended by
each flow it claims) holds the flow's name in its bag, else UNKNOWN.

NetLytics divided the millisecond times by 1000 twice, so its OW/GAP/EW acted as thousands of
seconds; here record times are microseconds and every parameter is in seconds.
The arbitration NetLytics applies when one core's visit opens inside another core's window
(`is_valid_trigger`) is not reproduced: a core flow always opens its own window.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNKNOWN = "UNKNOWN"
_US = 1_000_000
_DAY_US = 86_400 * _US


@dataclass(frozen=True)
class WhatConfig:
    cores: frozenset
    ow: float = 10.0  # seconds
    gap: float = 10.0
    ew: float = 5.0
    minfreq: float = 0.05
    n_top: int = 50

    def __post_init__(self):
        if not self.cores:
            raise ValueError("CORES names no core domain")
        if min(self.ow, self.gap, self.ew) <= 0 or not 0 < self.minfreq <= 1 or self.n_top < 1:
            raise ValueError("OW, GAP and EW must be positive, MINFREQ in (0, 1], N_TOP at least 1")


@dataclass
class Bags:
    """Each core's bag: filtered domain -> weight."""
    weights: dict = field(default_factory=dict)
    visits: Counter = field(default_factory=Counter)


_GENERALISE = [
    (re.compile(r"[a-z0-9]+\.profile\..*\.cloudfront\.net"), "X.cloudfront.net"),
    (re.compile(r"[a-z0-9]+\.cloudfront\.net"), "X.cloudfront.net"),
    (re.compile(r"---sn-.*\.googlevideo\.com"), "---sn-X.googlevideo.com"),
    (re.compile(r"---sn-.*\.c\.pack\.google\.com"), "---sn-X.c.pack.google.com"),
    (re.compile(r"\d+"), "D"),
    (re.compile(r"((?<=[-._D])|^)[a-z](?=[-._D])"), "C"),
]


def generalise_name(name: str) -> str:
    """Collapse the parts of a name that vary between servers of one service (CDN labels, digits)."""
    for pattern, replacement in _GENERALISE:
        name = pattern.sub(replacement, name)
    return name


def _rows(flows: pa.Table) -> list[tuple]:
    """(start µs, end µs, client, name, bytes) for each timed, named flow, in time order (ties by position)."""
    start = pc.cast(flows["time_start"], pa.int64())
    end = pc.cast(pc.coalesce(flows["time_end"], flows["time_start"]), pa.int64())
    total = pc.add(pc.fill_null(flows["c_bytes"], 0), pc.fill_null(flows["s_bytes"], 0))
    keep = pc.and_(pc.is_valid(start), pc.and_(pc.is_valid(flows["c_ip"]), pc.is_valid(flows["name"])))
    columns = [col.filter(keep).to_pylist() for col in (start, end, flows["c_ip"], flows["name"], total)]
    order = np.lexsort((np.arange(len(columns[0])), np.asarray(columns[0], dtype=np.int64)))
    return [tuple(column[i] for column in columns) for i in order]


def learn_bags(flows: pa.Table, config: WhatConfig) -> Bags:
    """The bag of domains of each core, from the flows that follow a client's silent-then-core visits."""
    ow, gap = config.ow * _US, config.gap * _US
    last_seen: dict = {}
    open_windows: dict = {}  # client -> (core, start)
    counts: dict = defaultdict(Counter)
    visits: Counter = Counter()
    for start, _, client, name, _ in _rows(flows):
        previous = last_seen.get(client)
        last_seen[client] = start
        window = open_windows.get(client)
        if window is not None and start - window[1] > ow:
            del open_windows[client]
            window = None
        if name in config.cores and (previous is None or start - previous > gap):
            open_windows[client] = (name, start)
            visits[name] += 1
        elif window is not None:
            counts[window[0]][generalise_name(name)] += 1
    kept = {core: {domain: n / visits[core] for domain, n in sorted(bag.items()) if n / visits[core] >= config.minfreq}
            for core, bag in sorted(counts.items())}
    kept = {core: bag for core, bag in kept.items() if bag}
    cores_with = Counter(domain for bag in kept.values() for domain in bag)
    weights = {core: {domain: freq * math.log10(len(kept) / cores_with[domain]) for domain, freq in bag.items()}
               for core, bag in kept.items()}
    return Bags(weights, visits)


def classify(flows: pa.Table, bags: Bags, config: WhatConfig) -> list[str]:
    """The service of each timed, named flow in the order of `_rows` (per client, per UTC day, as NetLytics)."""
    ew = config.ew * _US
    windows: dict = defaultdict(dict)  # (client, day) -> core -> (start, end)
    services = []
    for start, end, client, name, _ in _rows(flows):
        open_cores = windows[(client, start // _DAY_US)]
        for core in [core for core, (_, until) in open_cores.items() if until < start]:
            del open_cores[core]
        if name in config.cores:
            open_cores[name] = (start, start + (end - start) + ew)
            services.append(name)
            continue
        generalised = generalise_name(name)
        service = UNKNOWN
        for core, (opened, until) in sorted(open_cores.items(), key=lambda item: -item[1][0]):
            if generalised in bags.weights.get(core, {}):
                service = core
                open_cores[core] = (opened, max(until, start + (end - start) + ew))
                break
        services.append(service)
    return services


def service_traffic(flows: pa.Table, config: WhatConfig, bags: Bags | None = None) -> pa.Table:
    """Bytes and flows per service (the top N_TOP; ties by name), learning the bags from `flows` unless given."""
    bags = learn_bags(flows, config) if bags is None else bags
    rows = _rows(flows)
    totals: Counter = Counter()
    counts: Counter = Counter()
    for (_, _, _, _, size), service in zip(rows, classify(flows, bags, config)):
        totals[service] += size
        counts[service] += 1
    ranked = sorted(totals, key=lambda service: (-totals[service], service))[:config.n_top]
    return pa.table({"service": pa.array(ranked, pa.string()),
                     "bytes": pa.array([totals[s] for s in ranked], pa.int64()),
                     "flows": pa.array([counts[s] for s in ranked], pa.int64())})
