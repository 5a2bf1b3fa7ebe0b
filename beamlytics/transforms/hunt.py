"""Hunts as Beam transforms: record batches → per-key partials → merged per key → ranked findings.

The work is done by `beamlytics.hunts`; this module only wires it. Keys carry their horizon
start, so in batch every horizon is judged on all of its records, whatever the runner and
its parallelism; merges are exact and order-free, so results equal `run_hunts`'.
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam

from beamlytics.hunts import families, judge, summary_counts, unattributed, zero_counts
from beamlytics.hunts.aggregate import Family
from beamlytics.hunts.allow import AllowList
from beamlytics.hunts.config import HuntConfig
from beamlytics.hunts.findings import rank_findings


class MergePartials(beam.CombineFn):
    """Exact merge of one family's partials of a key; the accumulator is a partial itself."""

    def __init__(self, family: Family, config: HuntConfig):
        self.family = family
        self.config = config

    def create_accumulator(self):
        return self.family.empty()

    def add_input(self, accumulator, partial):
        return self.family.merge(accumulator, partial, self.config)

    def merge_accumulators(self, accumulators):
        merged = self.family.empty()
        for accumulator in accumulators:
            merged = self.family.merge(merged, accumulator, self.config)
        return merged

    def extract_output(self, accumulator):
        return accumulator


@dataclass
class HuntFindings(beam.PTransform):
    """RecordBatches of `table` → `{"findings": ranked finding rows, "counts": (name, n) pairs}`."""

    table: str
    hunts: frozenset
    config: HuntConfig = HuntConfig()
    allow: AllowList = AllowList()

    def __post_init__(self):
        super().__init__()

    def expand(self, batches):
        config, hunts, allow = self.config, self.hunts, self.allow
        judged_parts = []
        for family in families(hunts):
            judged_parts.append(
                batches
                | f"Partials{family.name}" >> beam.FlatMap(family.partials, config)
                | f"Merge{family.name}" >> beam.CombinePerKey(MergePartials(family, config))
                | f"Judge{family.name}" >> beam.FlatMapTuple(
                    lambda key, partial, family=family: judge(family, key, partial, config, hunts, allow))
            )
        judged = judged_parts | "AllJudged" >> beam.Flatten()
        findings = (
            judged
            | "NotAllowed" >> beam.FlatMapTuple(lambda row, suppressed: [] if suppressed else [row])
            | "ByHunt" >> beam.Map(lambda row: (row["hunt"], row))
            | "GatherHunt" >> beam.GroupByKey()
            | "Rank" >> beam.FlatMapTuple(lambda hunt, rows: rank_findings(rows))
        )
        table = self.table
        counts = (
            judged | "FindingCounts" >> beam.FlatMap(lambda item: summary_counts([item], config)),
            batches | "Unattributed" >> beam.Map(lambda batch: ("unattributed", unattributed(batch, table))),
            batches.pipeline | "ZeroCounts" >> beam.Create([*zero_counts(hunts), ("unattributed", 0)]),
        ) | "AllHuntCounts" >> beam.Flatten()
        return {"findings": findings, "counts": counts}
