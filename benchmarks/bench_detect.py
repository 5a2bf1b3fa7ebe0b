"""`detect` beside a polars reference script (`benchmarks/reference_detect.py`), on generated Zeek dns logs.

For each input size, A B A B: `beamlytics detect` (gaussian, 60 s windows per client, the
default features) and the reference doing the same, each in its own process, timed with its
peak RSS. The features and verdicts of both must be equal, or the benchmark fails. Then:
- per-stage costs of beamlytics' plain-Python path (parse, window, score, write), and of the
  timed run itself (`benchmarks/detect_phases.py`): its pipeline, the Beam overhead (the pipeline
  minus those stages), the incident report after it and the rest (imports, options), beside the
  reference's own stages;
- a cost model fitted to each: seconds = fixed + per record + per endpoint-window;
- on the largest input, 2 workers against 1 (`--direct_running_mode=multi_processing`).

    python -m benchmarks.run detect                              # every size: minutes
    BEAMLYTICS_BENCH_QUICK=1 python -m benchmarks.run detect     # every size / 20

Generated inputs are cached under $BEAMLYTICS_BENCH_CACHE (default: the system's temp folder),
outside the repository.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from beamlytics import features, schemas
from beamlytics.detectors.endpoint import DetectorConfig, score_table
from beamlytics.inputs import expand_inputs
from beamlytics.parsers import formats
from beamlytics.transforms.write import parquet_bytes
from benchmarks.common import Result

QUICK = os.environ.get("BEAMLYTICS_BENCH_QUICK", "") not in ("", "0")
CACHE = Path(os.environ.get("BEAMLYTICS_BENCH_CACHE", tempfile.gettempdir())) / "beamlytics-bench-detect"
START_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z
HOURS = 12
FILES = 4  # the input is split in time over this many files, so workers can share the parsing
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
SPEC = features.WindowSpec("dns", "c_ip", 60_000_000)
CONFIG = DetectorConfig("gaussian", {}, features.DEFAULT_FEATURES["dns"])


@dataclass(frozen=True)
class Size:
    label: str
    records: int
    hosts: int


SIZES = [Size("50 k", 50_000, 50), Size("1 M, 200 hosts", 1_000_000, 200),
         Size("1 M, 10,000 hosts", 1_000_000, 10_000), Size("4 M", 4_000_000, 1_000)]
if QUICK:
    SIZES = [Size(f"{size.label} / 20", size.records // 20, max(size.hosts // 20, 10)) for size in SIZES]

_FIELDS = ("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto trans_id rtt query qclass qclass_name qtype "
           "qtype_name rcode rcode_name AA TC RD RA Z answers TTLs rejected").split()
_TYPES = ("time string addr port addr port enum count interval string count string count string count string "
          "bool bool bool bool count vector[string] vector[interval] bool").split()


def generate_logs(folder: Path, records: int, hosts: int, seed: int = 1) -> Path:
    """Zeek dns.log files: `hosts` clients querying 300 names over 12 h, 2% NXDOMAIN, and one
    client's 5-minute burst of failing queries (so verdicts include anomalies)."""
    complete = folder.with_name(folder.name + ".complete")  # beside, not in, the input folder
    if complete.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    span_us = HOURS * 3_600_000_000
    times = np.sort(rng.integers(0, span_us, size=records)) + START_US
    clients = rng.integers(0, hosts, size=records)
    names = rng.integers(0, 300, size=records)
    failed = rng.random(records) < 0.02
    in_burst = (times >= START_US + span_us // 2) & (times < START_US + span_us // 2 + 300_000_000)
    burst = in_burst & (rng.random(records) < 0.3)
    clients[burst], failed[burst] = 0, True
    addresses = [f"10.{1 + host // 65536}.{host // 256 % 256}.{host % 256}" for host in range(hosts)]
    header = "#separator \\x09\n" + "".join(f"#{name}\t{value}\n" for name, value in (
        ("set_separator", ","), ("empty_field", "(empty)"), ("unset_field", "-"),
        ("path", "dns"), ("open", "2024-05-01-00-00-00"), ("fields", "\t".join(_FIELDS)), ("types", "\t".join(_TYPES))))
    bounds = np.linspace(0, records, FILES + 1).astype(int)
    for part, (first, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        lines = [
            f"{t // 1_000_000}.{t % 1_000_000:06d}\tC{number}\t{addresses[client]}\t{1024 + number % 60000}\t"
            f"10.0.0.53\t53\tudp\t{number % 65536}\t0.001000\tn{name}.example.com\t1\tC_INTERNET\t1\tA\t"
            + ("3\tNXDOMAIN\tF\tF\tT\tT\t0\t-\t-\tF" if fail else "0\tNOERROR\tF\tF\tT\tT\t0\t192.0.2.1\t300.000000\tF")
            for number, t, client, name, fail in zip(range(first, end), times[first:end].tolist(),
                                                    clients[first:end].tolist(), names[first:end].tolist(),
                                                    failed[first:end].tolist())
        ]
        (folder / f"dns.{part:02d}.log").write_text(header + "\n".join(lines) + "\n#close\t2024-05-01-12-00-00\n")
    complete.write_text("")
    return folder


def _timed(command: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB, of the largest process) and CPU seconds of a command run to completion, measured
    by `benchmarks.peak` so that this process's own memory is not counted in the command's."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "peak"
        process = subprocess.run([sys.executable, "-m", "benchmarks.peak", str(result), *command],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if process.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.decode()[-2000:]}")
        seconds, kib, cpu = result.read_text().split()
    return float(seconds), int(kib) / 1024, float(cpu)


def _ours(inputs: Path, output: Path, *options: str) -> tuple[float, float, float]:
    """`beamlytics detect` timed; its phases (pipeline, report, rest) go to OUTPUT's sibling .phases.json."""
    return _timed([sys.executable, "-m", "benchmarks.detect_phases", str(_phases_file(output)), "detect",
                   "--table", "dns", "--window", "60s", "--output", str(output), *options, str(inputs)])


def _phases_file(output: Path) -> Path:
    return output.with_name(output.name + ".phases.json")  # beside: detect owns its output folder


def _reference(inputs: Path, output: Path) -> tuple[float, float, float]:
    return _timed([sys.executable, "-m", "benchmarks.reference_detect", "--output", str(output), str(inputs)])


def _plain(table: pa.Table, names: list[str]) -> pa.Table:
    """Only the values: nullability, chunking and string offset widths left out."""
    order = [(name, "ascending") for name in ("key", "window_start", "feature") if name in names]
    columns = {}
    for name in names:
        column = table.column(name).combine_chunks()
        columns[name] = column.cast(pa.string()) if pa.types.is_large_string(column.type) else column
    return pa.table(columns).sort_by(order)


def _population_free(verdicts: pa.Table) -> pa.Table:
    """Our verdicts reduced to what the reference decides without a population: unjudged for too few records,
    or judged (alarm, normal, or unjudged for want of a model, which needs the population)."""
    few = pc.fill_null(pc.equal(verdicts.column("reason"), "too_few_records"), False)
    return pa.table({"key": verdicts.column("key"), "window_start": verdicts.column("window_start"),
                     "status": pc.if_else(few, "unjudged", "judged"),
                     "reason": pc.if_else(few, "too_few_records", pa.scalar(None, pa.string()))})


def disagreements(ours: Path, reference: Path) -> list[str]:
    """The outputs on which beamlytics and the reference differ (features, per-feature statuses, verdicts)."""
    feature_columns = ["key", "window_start", *CONFIG.features]
    status_columns = ["key", "window_start", "feature", "status"]
    verdict_columns = ["key", "window_start", "status", "reason"]
    pairs = {
        "features": (pq.read_table(ours / "features"), pq.read_table(reference / "features.parquet"), feature_columns),
        "scores": (pq.read_table(ours / "scores"), pq.read_table(reference / "scores.parquet"), status_columns),
        "verdicts": (_population_free(pq.read_table(ours / "verdicts")), pq.read_table(reference / "verdicts.parquet"),
                     verdict_columns),
    }
    return [name for name, (mine, theirs, columns) in pairs.items()
            if not _plain(mine, columns).equals(_plain(theirs, columns))]


def stage_seconds(inputs: Path) -> dict[str, float]:
    """beamlytics' plain-Python path, stage by stage, in this process (the report: see `detect_phases`)."""
    seconds = {}
    start = time.perf_counter()
    batches = [item.records for item in formats.parse_paths(expand_inputs([str(inputs)]), "dns")
               if isinstance(item, formats.Batch)]
    seconds["parse"] = time.perf_counter() - start
    start = time.perf_counter()
    windows = features.window_features(batches, SPEC)
    seconds["window"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_table(windows, CONFIG)
    seconds["score"] = time.perf_counter() - start
    start = time.perf_counter()
    found = scores.filter(pc.equal(scores.column("status"), "anomaly"))
    for table, schema in ((scores, schemas.SCORES), (found, schemas.ANOMALIES),
                          (windows, features.feature_schema("dns"))):
        parquet_bytes(table.select(schema.names))
    seconds["write"] = time.perf_counter() - start
    return seconds


def fit_cost_model(records: list[int], windows: list[int], seconds: list[float]) -> tuple[float, float, float]:
    """Least squares: seconds = fixed + per_record * records + per_window * endpoint-windows."""
    design = np.column_stack([np.ones(len(records)), records, windows])
    (fixed, per_record, per_window), *_ = np.linalg.lstsq(design, np.asarray(seconds), rcond=None)
    return fixed, per_record, per_window


def run() -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as work:
        return _run(Path(work))


def _run(work: Path) -> list[Result]:
    results, rows, model = [], [], {"records": [], "windows": [], "ours": [], "reference": []}
    for size in SIZES:
        inputs = generate_logs(CACHE / f"{size.records}-{size.hosts}", size.records, size.hosts)
        ours, theirs = [], []
        outputs = work / inputs.name  # beamlytics refuses to write over an earlier result: one folder per size
        for attempt in range(2):  # A B A B: both see the same machine load
            ours.append(_ours(inputs, outputs / f"ours-{attempt}"))
            theirs.append(_reference(inputs, outputs / f"reference-{attempt}"))
        differ = disagreements(outputs / "ours-0", outputs / "reference-0")
        if differ:
            raise RuntimeError(f"{size.label}: beamlytics and the reference disagree on {', '.join(differ)}")
        windows = json.loads((outputs / "ours-0" / "summary.json").read_text())["windows"]
        (our_seconds, _, our_cpu), (their_seconds, _, their_cpu) = min(ours), min(theirs)
        stages = stage_seconds(inputs)
        phases = json.loads(_phases_file(outputs / f"ours-{ours.index(min(ours))}").read_text())
        reference_stages = json.loads((outputs / "reference-0" / "timings.json").read_text())
        rows.append((size, windows, our_seconds, their_seconds, max(r for _, r, _ in ours),
                     max(r for _, r, _ in theirs), stages, phases, reference_stages, our_cpu, their_cpu))
        for name, value in (("records", size.records), ("windows", windows), ("ours", our_seconds),
                            ("reference", their_seconds)):
            model[name].append(value)
        results.append(Result(f"detect gaussian, {size.label}", size.records / our_seconds, "records/s",
                              "polars script", size.records / their_seconds))

    print(f"{'input':<22}{'endpoint-windows':>17}{'ours s':>9}{'script s':>10}{'time x':>8}"
          f"{'ours MiB':>10}{'script MiB':>12}{'RSS x':>7}{'ours CPU s':>12}{'script CPU s':>14}  same results")
    for size, windows, our_seconds, their_seconds, our_rss, their_rss, *_, our_cpu, their_cpu in rows:
        print(f"{size.label:<22}{windows:>17,}{our_seconds:>9.2f}{their_seconds:>10.2f}"
              f"{our_seconds / their_seconds:>8.1f}{our_rss:>10.0f}{their_rss:>12.0f}{our_rss / their_rss:>7.1f}"
              f"{our_cpu:>12.2f}{their_cpu:>14.2f}  yes")
    print("per stage, seconds. ours: parse, window, score, write on the plain-Python path in one process; of the "
          "timed run: its pipeline, beam = pipeline - those stages, report (after the pipeline), rest (imports, "
          "options, summary):")
    for size, _, our_seconds, _, _, _, stages, phases, reference_stages, *_ in rows:
        ours_text = ", ".join(f"{name} {value:.2f}" for name, value in stages.items())
        theirs_text = ", ".join(f"{name} {value:.2f}" for name, value in reference_stages.items())
        print(f"  {size.label:<22} ours: {ours_text}; pipeline {phases['pipeline']:.2f}, "
              f"beam {phases['pipeline'] - sum(stages.values()):.2f}, report {phases['report']:.2f}, "
              f"rest {phases['rest']:.2f} | script: {theirs_text}")
    for who in ("ours", "reference"):
        fixed, per_record, per_window = fit_cost_model(model["records"], model["windows"], model[who])
        print(f"cost model, {who}: {fixed:.2f} s + {per_record * 1e6:.2f} µs/record "
              f"+ {per_window * 1e6:.1f} µs/endpoint-window")

    largest = generate_logs(CACHE / f"{SIZES[-1].records}-{SIZES[-1].hosts}", SIZES[-1].records, SIZES[-1].hosts)
    one = min(_ours(largest, work / f"one-{attempt}")[0] for attempt in range(2))
    two = min(_ours(largest, work / f"two-{attempt}", *TWO_WORKERS)[0] for attempt in range(2))
    print(f"{SIZES[-1].label}: 1 worker {one:.2f} s, 2 workers {two:.2f} s: {one / two:.2f}x faster; "
          f"2 workers: {two / rows[-1][3]:.1f}x the script's time")
    results.append(Result(f"detect gaussian, {SIZES[-1].label}, 2 workers", SIZES[-1].records / two, "records/s",
                          "1 worker", SIZES[-1].records / one))
    return results


if __name__ == "__main__":
    for result in run():
        print(result.line())
