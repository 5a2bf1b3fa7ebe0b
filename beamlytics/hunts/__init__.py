"""Hunts over a horizon (a UTC day by default), RITA-style: beacons, long connections, strobes, scans, DNS tunnels.

Each hunt groups records by a key (a source→destination pair, a source and port, a
registered domain) within a horizon, merges exact partial aggregates per key and turns
each key into at most one finding with a score in [0, 1], JSON evidence and a sentence.
`run_hunts` does it all in memory; `beamlytics.transforms.hunt` runs the same functions
in a Beam pipeline, and both give the same findings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.schemas import domains
from beamlytics.hunts.aggregate import Family, merge_all
from beamlytics.hunts.allow import AllowList
from beamlytics.hunts.config import HUNTS_OF_TABLE, OUTPUT_HUNTS, HuntConfig
from beamlytics.hunts.dns import DOMAINS
from beamlytics.hunts.findings import findings_table
from beamlytics.hunts.flows import HORIZONTAL, PAIRS, VERTICAL

_FAMILIES_OF_HUNT = {"beacon": (PAIRS,), "long": (PAIRS,), "strobe": (PAIRS,), "scan": (VERTICAL, HORIZONTAL),
                     "dns_tunnel": (DOMAINS,)}


def check_hunts(table: str, hunts: Sequence[str]) -> frozenset:
    """The hunts as a set, or ValueError naming those that do not apply to `table`."""
    known = HUNTS_OF_TABLE.get(table, ())
    wrong = [name for name in hunts if name not in known]
    if wrong or not hunts:
        raise ValueError(f"hunt(s) {', '.join(wrong) or '(none)'} do not apply to the {table} table; "
                         f"choose from {', '.join(known) or 'nothing: only named_flows and dns are hunted'}")
    return frozenset(hunts)


def detect_hunts(text: str, table: str) -> frozenset:
    """`detect --hunts`: all (every hunt of `table`, none for http), none, or a comma-separated list."""
    words = [word.strip() for word in text.split(",") if word.strip()]
    if words == ["all"]:
        return frozenset(HUNTS_OF_TABLE.get(table, ()))
    if words == ["none"]:
        return frozenset()
    return check_hunts(table, words)


def families(hunts: Iterable[str]) -> tuple[Family, ...]:
    chosen: list[Family] = []
    for name in sorted(hunts):
        for family in _FAMILIES_OF_HUNT[name]:
            if family not in chosen:
                chosen.append(family)
    return tuple(chosen)


def unattributed(batch: pa.RecordBatch, table: str) -> int:
    """Records no hunt can place: without an event time, flows without both endpoints, queries
    without a registered domain (IP literals, bare suffixes) or in the reverse zones."""
    placeable = pc.is_valid(batch.column(schemas.EVENT_TIME_COLUMN[table]))
    if table == "named_flows":
        placeable = pc.and_(placeable, pc.and_(pc.is_valid(batch.column("c_ip")), pc.is_valid(batch.column("s_ip"))))
    else:
        registered = domains.registered_domain(batch.column("query"))
        placeable = pc.and_(placeable, pc.and_(pc.is_valid(registered), pc.invert(domains.is_reverse_zone(registered))))
    return batch.num_rows - pc.sum(pc.cast(placeable, pa.int64())).as_py() if batch.num_rows else 0


def judge(family: Family, key: tuple, partial: dict, config: HuntConfig, hunts: frozenset,
          allow: AllowList) -> list[tuple[dict, bool]]:
    """Findings of one merged key, each with whether the allow-list suppresses it."""
    return [(row, allow.suppresses(row)) for row in family.judge(key, partial, config, hunts)]


def summary_counts(judged: Iterable[tuple[dict, bool]], config: HuntConfig) -> list[tuple[str, int]]:
    """(name, count) pairs for the summary: findings, alarms, suppressed and capped, per hunt."""
    counts = []
    for row, suppressed in judged:
        hunt = row["hunt"]
        if suppressed:
            counts.append((f"suppressed.{hunt}", 1))
            continue
        counts.append((f"findings.{hunt}", 1))
        counts.append((f"alarms.{hunt}", int(row["score"] >= config.alarm)))
        counts.append((f"capped.{hunt}", int(row["capped"])))
    return counts


def zero_counts(hunts: Iterable[str]) -> list[tuple[str, int]]:
    """Every count the summary reports, at zero, so that a hunt that found nothing says 0."""
    return [(f"{kind}.{output}", 0) for name in sorted(hunts) for output in OUTPUT_HUNTS[name]
            for kind in ("findings", "alarms", "suppressed", "capped")]


@dataclass
class HuntResult:
    findings: pa.Table
    counts: dict[str, int] = field(default_factory=dict)


def run_hunts(data: Iterable[pa.RecordBatch | pa.Table], table: str, hunts: Sequence[str],
              config: HuntConfig = HuntConfig(), allow: AllowList = AllowList()) -> HuntResult:
    """All findings of `hunts` over record batches (or tables) of `table`, ranked, allow-list applied."""
    chosen = check_hunts(table, hunts)
    batches = [batch for item in data for batch in (item.to_batches() if isinstance(item, pa.Table) else [item])]
    judged = []
    for family in families(chosen):
        merged = merge_all(family, (item for batch in batches for item in family.partials(batch, config)), config)
        for key, partial in merged.items():
            judged.extend(judge(family, key, partial, config, chosen, allow))
    counts = dict(zero_counts(chosen))
    for name, value in summary_counts(judged, config):
        counts[name] += value
    counts["unattributed"] = sum(unattributed(batch, table) for batch in batches)
    return HuntResult(findings_table(row for row, suppressed in judged if not suppressed), counts)
