"""End-to-end `detect` on the DirectRunner (local FnApiRunner), on two inputs:
the real WRCCDC dns.log.gz (53k rows, few endpoints) and generated Zeek logs with many
endpoint-windows (where the windowing approach matters).

Prints, measured in this run, for each input:
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

from beamlytics import features, synthetic
from beamlytics.detectors.endpoint import DetectorConfig, EndpointScorer
from beamlytics.inputs import expand_inputs
from beamlytics.parsers import formats
from beamlytics.pipelines import cli
from benchmarks.common import DATA_DIR, Result

DNS_LOG = DATA_DIR / "logs" / "zeek" / "wrccdc2018" / "dns.log.gz"
MANY_WINDOWS = synthetic.Scenario(hours=12, clients=150, queries_per_minute=2.0, anomalous_client="10.0.0.13")
DETECTOR_PARAMS = {"gaussian": {}, "spot": {}, "poisson": {"slot_seconds": 1.0}}


def _detect(inputs: Path, output: Path, *options: str) -> tuple[float, dict]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["detect", "--table", "dns", "--window", "60s", "--output", str(output), *options,
                           str(inputs)])
    seconds = time.perf_counter() - start
    if status:
        raise RuntimeError(f"detect failed with status {status}")
    return seconds, json.loads((output / "summary.json").read_text())


def _parse_seconds(inputs: Path) -> tuple[float, int]:
    start = time.perf_counter()
    rows = sum(item.records.num_rows for item in formats.parse_paths(expand_inputs([str(inputs)]), "dns")
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


def _measure(label: str, inputs: Path, folder: Path) -> list[Result]:
    results = []
    parse_seconds, rows = _parse_seconds(inputs)
    timings = {}
    for windowing in ("key", "beam"):
        seconds, summary = _detect(inputs, folder / windowing, "--windowing", windowing)
        timings[windowing] = seconds
        if summary["records"] != rows:
            raise RuntimeError("detect and parse disagree on the number of records")
    same = pq.read_table(folder / "key" / "features").equals(pq.read_table(folder / "beam" / "features"))
    print(f"{label}: {rows} rows, {summary['windows']} endpoint-windows; key and beam windowing give "
          f"the same features: {same}")
    results.append(Result(f"{label}: detect gaussian, windowing=key", rows / timings["key"], "rows/s",
                          "parse alone", rows / parse_seconds))
    results.append(Result(f"{label}: detect gaussian, windowing=key", rows / timings["key"], "rows/s",
                          "windowing=beam", rows / timings["beam"]))
    for detector in DETECTOR_PARAMS:
        seconds, summary = _detect(inputs, folder / detector, "--detector", detector)
        scoring = _scoring_seconds(folder / detector, detector)
        print(f"{label}: {detector} scoring {summary['windows']} windows takes {scoring:.3f} s alone, "
              f"{100 * scoring / seconds:.1f}% of the {seconds:.2f} s detect run")
        results.append(Result(f"{label}: detect {detector}", rows / seconds, "rows/s",
                              "parse alone", rows / parse_seconds))
    return results


def run() -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if DNS_LOG.exists():
            results += _measure("WRCCDC dns.log.gz", DNS_LOG, folder / "wrccdc")
        else:
            print(f"skipped the real log: {DNS_LOG} not found (set BEAMLYTICS_DATA to the data folder)")
        generated = folder / "generated"
        synthetic.write_zeek_logs(str(generated), MANY_WINDOWS)
        results += _measure("generated, 150 hosts x 12 h", generated, folder / "many")
    return results


if __name__ == "__main__":
    for result in run():
        print(result.line())
