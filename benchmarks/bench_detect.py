"""End-to-end `detect` on the WRCCDC dns.log.gz, on the DirectRunner (local FnApiRunner).

Prints, measured in this run:
- detect rows/s, against parsing alone (the floor any pipeline pays);
- the two windowings (`key` vs `beam`), same input, same results;
- for each detector, how long scoring the run's windows takes without Beam, as a share of
  the whole detect run.

    python -m benchmarks.bench_detect
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from beamlytics import features
from beamlytics.detectors.endpoint import DetectorConfig, EndpointScorer
from beamlytics.parsers import formats
from beamlytics.pipelines import cli
from benchmarks.common import DATA_DIR, Result

DNS_LOG = DATA_DIR / "logs" / "zeek" / "wrccdc2018" / "dns.log.gz"
DETECTOR_PARAMS = {"gaussian": {}, "spot": {}, "poisson": {"slot_seconds": 1.0}}


def _detect(output: Path, *options: str) -> tuple[float, dict]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["detect", "--table", "dns", "--window", "60s", "--output", str(output), *options,
                           str(DNS_LOG)])
    seconds = time.perf_counter() - start
    if status:
        raise RuntimeError(f"detect failed with status {status}")
    return seconds, json.loads((output / "summary.json").read_text())


def _parse_seconds() -> tuple[float, int]:
    start = time.perf_counter()
    rows = sum(item.records.num_rows for item in formats.parse_paths([str(DNS_LOG)], "dns")
               if isinstance(item, formats.Batch))
    return time.perf_counter() - start, rows


def _scoring_seconds(output: Path, detector: str) -> float:
    """Scoring the run's own windows with plain Python: the detector's cost, Beam left out."""
    spec = features.WindowSpec("dns", "c_ip", 60_000_000, 1_000_000 if detector == "poisson" else None)
    windows = [features.window_from_row(row, spec) for row in pq.read_table(output / "features").to_pylist()]
    chosen = ("records",) if detector == "poisson" else features.DEFAULT_FEATURES["dns"]
    config = DetectorConfig(detector, DETECTOR_PARAMS[detector], chosen)
    by_endpoint: dict[str, list] = {}
    for window in windows:
        by_endpoint.setdefault(window.key, []).append(window)
    start = time.perf_counter()
    for own in by_endpoint.values():
        scorer = EndpointScorer(config)
        for window in sorted(own, key=lambda w: w.window_start):
            scorer.score(window)
    return time.perf_counter() - start


def run() -> list[Result]:
    if not DNS_LOG.exists():
        print(f"skipped: {DNS_LOG} not found (set BEAMLYTICS_DATA to the data folder)")
        return []
    results = []
    parse_seconds, rows = _parse_seconds()
    with tempfile.TemporaryDirectory() as folder:
        timings = {}
        for windowing in ("key", "beam"):
            out = Path(folder) / windowing
            seconds, summary = _detect(out, "--windowing", windowing)
            timings[windowing] = seconds
            if summary["records"] != rows:
                raise RuntimeError("detect and parse disagree on the number of records")
        same = (pq.read_table(Path(folder) / "key" / "features").equals(
            pq.read_table(Path(folder) / "beam" / "features")))
        print(f"windowing key vs beam: same features = {same}; {summary['windows']} endpoint-windows")
        results.append(Result("detect gaussian, windowing=key (rows/s)", rows / timings["key"], "rows/s",
                              "parse alone", rows / parse_seconds))
        results.append(Result("detect gaussian, windowing=key vs beam", rows / timings["key"], "rows/s",
                              "windowing=beam", rows / timings["beam"]))
        for detector in DETECTOR_PARAMS:
            out = Path(folder) / detector
            seconds, summary = _detect(out, "--detector", detector)
            scoring = _scoring_seconds(out, detector)
            print(f"detector {detector}: scoring {summary['windows']} windows took {scoring:.3f} s alone, "
                  f"{100 * scoring / seconds:.1f}% of the {seconds:.2f} s detect run")
            results.append(Result(f"detect {detector} (rows/s)", rows / seconds, "rows/s",
                                  "parse alone", rows / parse_seconds))
    return results


if __name__ == "__main__":
    for result in run():
        print(result.line())
