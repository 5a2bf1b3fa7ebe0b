"""Scaling: the `detect` pipeline with 1 and 2 workers, on the DirectRunner (multi_processing) and Prism.

The input is ONE generated Zeek dns.log (the four time slices of `bench_detect`'s input
concatenated, so the log holds several header blocks and `#close` lines): a single big
file is the case that used to be one element parsed by one worker. Each run is its own
process and times the pipeline only (build and run), not the interpreter start nor the
incident report `detect` writes afterwards in the launcher (`report.finish_detect`, one
process whatever the runner). Outputs of every run must be byte-identical to the first's.

    python -m benchmarks.run scale                              # 2 M records
    BEAMLYTICS_BENCH_QUICK=1 python -m benchmarks.run scale     # 250 k records
    BEAMLYTICS_BENCH_RECORDS=4000000 python -m benchmarks.run scale
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_detect import CACHE, QUICK, generate_logs
from benchmarks.common import Result

RECORDS = int(os.environ.get("BEAMLYTICS_BENCH_RECORDS") or (250_000 if QUICK else 2_000_000))
HOSTS = 1_000
OUTPUTS = ("scores", "anomalies", "features", "rejected")
ENGINES = {
    "DirectRunner multi_processing": lambda workers: [
        "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"],
    "PrismRunner": lambda workers: ["--runner=PrismRunner", f"--sdk_worker_parallelism={workers}"],
}


def one_file(records: int, hosts: int) -> Path:
    """The generated slices of `bench_detect` as one log, cached beside them."""
    path = CACHE / f"scale-{records}-{hosts}.log"
    if not path.exists():
        slices = generate_logs(CACHE / f"{records}-{hosts}", records, hosts)
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as out:
            for piece in sorted(slices.iterdir()):
                out.write(piece.read_bytes())
        partial.rename(path)
    return path


def run_pipeline(output: str, inputs: str, beam_args: list[str]) -> float:
    """Seconds to build and run `detect`'s pipeline (as the CLI wires it) into `output`."""
    import apache_beam as beam

    from beamlytics import features
    from beamlytics.detectors.endpoint import DetectorConfig
    from beamlytics.inputs import total_bytes
    from beamlytics.pipelines import cli, runners
    from beamlytics.pipelines.detect import DetectSettings, ReadSettings, build_detect
    from beamlytics.transforms.write import default_shards

    spec = features.WindowSpec("dns", "c_ip", 60_000_000)
    settings = DetectSettings(ReadSettings([inputs], "dns"), spec,
                              DetectorConfig("gaussian", {}, features.DEFAULT_FEATURES["dns"]),
                              shards=default_shards(total_bytes([inputs])))
    options = cli.beam_options(runners.with_engine_options(beam_args))
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build_detect(pipeline, settings, output)
    pipeline.run().wait_until_finish()
    return time.perf_counter() - start


def outputs_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in OUTPUTS:
        for path in sorted((folder / name).glob("*.parquet")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _timed_run(output: Path, inputs: Path, beam_args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the launching process, of its finished child processes)."""
    command = [sys.executable, "-m", "benchmarks.bench_scale", str(output), str(inputs), *beam_args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    wall, own, children = (float(word) for word in done.stdout.split()[-3:])
    return wall, own, children


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run() -> list[Result]:
    inputs = one_file(RECORDS, HOSTS)
    print(f"input: {inputs} ({inputs.stat().st_size / 2**20:.0f} MiB, {RECORDS:,} records, one file)", flush=True)
    results, reference = [], None
    with tempfile.TemporaryDirectory(prefix="beamlytics-scale-") as work:
        for engine, options in ENGINES.items():
            seconds, loads, cpu = {}, [], {}
            for workers in (1, 2):
                output = Path(work) / f"{engine.split()[0]}-{workers}"
                try:
                    seconds[workers], *cpu[workers] = _timed_run(output, inputs, options(workers))
                    loads.append(os.getloadavg()[0])  # on a shared machine the figures mean little without it
                except RuntimeError as error:
                    print(f"{engine}, {workers} worker(s): not measured: {str(error).splitlines()[-1]}", flush=True)
                    break
                digest = outputs_digest(output)
                reference = reference or digest
                if digest != reference:
                    raise AssertionError(f"{engine} with {workers} worker(s) wrote other bytes than the first run")
            if len(seconds) == 2:
                print(f"{engine:<32} 1 worker {seconds[1]:7.1f} s   2 workers {seconds[2]:7.1f} s   "
                      f"speed-up {seconds[1] / seconds[2]:.2f}x   outputs identical   "
                      f"load average {loads[0]:.1f} / {loads[1]:.1f}", flush=True)
                # Load distorts CPU seconds less than wall time: the launcher (the runner, or Prism's
                # LOOPBACK harness) against its child processes (SDK workers, the Prism binary).
                print(" " * 33 + "   ".join(f"{n} worker(s): CPU {cpu[n][0]:.1f} s launcher, {cpu[n][1]:.1f} s children"
                                            for n in (1, 2)), flush=True)
                results.append(Result(f"detect pipeline, {engine}, 2 workers", RECORDS / seconds[2], "records/s",
                                      "1 worker", RECORDS / seconds[1]))
    return results


if __name__ == "__main__":
    wall = run_pipeline(sys.argv[1], sys.argv[2], sys.argv[3:])
    print(f"{wall:.3f} {_cpu_seconds(resource.RUSAGE_SELF):.2f} {_cpu_seconds(resource.RUSAGE_CHILDREN):.2f}")
