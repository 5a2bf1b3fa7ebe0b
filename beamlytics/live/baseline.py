"""`detect --follow --baseline DIR`: a batch run's features/ as fixed, plain data for the live scorer.

The live path cannot pool the run's own windows as batch `detect` does (they are not all there
until the run ends), so with a baseline the population is the baseline's windows: read once per
worker, the same on every worker and every run. The baseline's windows also calibrate each
endpoint's detectors before its first live window, as batch `detect --baseline` does.
"""
from __future__ import annotations

import functools
import os
from collections import defaultdict
from dataclasses import dataclass

import pyarrow.parquet as pq

from beamlytics import baseline, features
from beamlytics.detectors.endpoint import EndpointWindow
from beamlytics.detectors.population import Population
from beamlytics.features import WindowSpec
from beamlytics.parsers.base import Rejected


@dataclass(frozen=True)
class LoadedBaseline:
    windows: tuple[EndpointWindow, ...]  # in the files' order
    rejected: tuple[Rejected, ...]
    table: str
    feature_names: tuple[str, ...]

    def by_endpoint(self) -> dict[str, list[EndpointWindow]]:
        found: dict[str, list[EndpointWindow]] = defaultdict(list)
        for window in self.windows:
            found[window.endpoint].append(window)
        return dict(found)

    def population(self, min_records: int) -> Population:
        """The windows of at least `min_records` records (those a verdict judges) pooled per (table, key kind,
        feature), as batch `detect` pools its run's windows."""
        if not self.windows:
            return Population({})
        return Population.of_windows(features.table_of_windows(list(self.windows), self.table), self.feature_names,
                                     min_records)


@dataclass(frozen=True)
class LiveBaseline:
    """Where the baseline is and which series of it to read (`feature_names`: the detector's features)."""

    directory: str
    spec: WindowSpec
    feature_names: tuple[str, ...]

    def files(self) -> list[str]:
        return sorted(os.path.join(self.directory, name) for name in os.listdir(self.directory)
                      if name.endswith(".parquet"))

    def load(self) -> LoadedBaseline:
        """Every training window of the spec's series, and a dead letter for each row or file that is not one."""
        every, rejected = [], []
        for path in self.files():
            for item in baseline.file_windows(functools.partial(pq.read_table, path), self.spec, path):
                if isinstance(item, Rejected):
                    rejected.append(item)
                else:
                    every.append(item)
        return LoadedBaseline(tuple(every), tuple(rejected), self.spec.table, self.feature_names)
