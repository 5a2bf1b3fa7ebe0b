"""The verdict (`detectors.verdict.judge`) alone, on the shards a real `detect` run hands it. No Beam in `time`.

    python -m benchmarks.bench_judge capture DIR detect --table dns --window 60s --quiet --output OUT INPUTS
    python -m benchmarks.bench_judge time DIR [--repeat N] [--profile FILE] [--digest yes]

`capture` runs the CLI in this process with `judge` wrapped so that each call's arguments (a shard's score
rows, the population's tails, the settings, the hunts' marks) are pickled into DIR before judging: the
shards exactly as the pipeline cuts them. `time` judges the saved shards again, as `_JudgeShard` does (one
`Population` for all, its combined tail fitted on first use), and prints the CPU seconds (process time)
of judging all of them, per repeat; `--profile` writes a cProfile of the first repeat; `--digest` prints the
SHA-256 of all shards' verdicts and reported rows (as Parquet) and counts, to compare two versions' outputs.
`time` unpickles DIR's files: give it only a folder this tool's own `capture` wrote, never one from elsewhere.
"""
from __future__ import annotations

import cProfile
import hashlib
import io
import json
import pickle
import sys
import time
from pathlib import Path


def capture(directory: Path, arguments: list[str]) -> int:
    from beamlytics.pipelines import cli
    from beamlytics.transforms import score

    directory.mkdir(parents=True, exist_ok=True)
    judge, calls = score.judge, []

    def saving(scores, population, settings, marks=None):
        with (directory / f"shard-{len(calls):04d}.pkl").open("wb") as out:
            pickle.dump((scores, dict(population.tails), settings, marks), out, protocol=5)
        calls.append(scores.num_rows)
        return judge(scores, population, settings, marks)

    score.judge = saving
    status = cli.main(arguments)
    print(f"{len(calls)} shards, {sum(calls):,} score rows saved in {directory}", file=sys.stderr)
    return status


def digest(results) -> str:
    import pyarrow.parquet as pq

    hashed = hashlib.sha256()
    for verdicts, reported, counts in results:
        for table in (verdicts, reported):
            out = io.BytesIO()
            pq.write_table(table.combine_chunks(), out)
            hashed.update(out.getvalue())
        hashed.update(json.dumps(counts, sort_keys=True).encode())
    return hashed.hexdigest()


def timed(directory: Path, repeat: int, profile: str | None, digested: bool) -> int:
    from beamlytics.detectors.population import Population
    from beamlytics.detectors.verdict import judge

    shards = []
    for path in sorted(directory.glob("shard-*.pkl")):
        with path.open("rb") as saved:
            shards.append(pickle.load(saved))
    rows = sum(scores.num_rows for scores, *_ in shards)
    for attempt in range(repeat):
        population = Population(dict(sorted(shards[0][1].items())))
        profiler = cProfile.Profile() if profile and attempt == 0 else None
        start = time.process_time()
        if profiler:
            profiler.enable()
        results = [judge(scores, population, settings, marks) for scores, _, settings, marks in shards]
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        print(f"judge: {len(shards)} shards, {rows:,} score rows, {time.process_time() - start:.3f} CPU s"
              + (" (profiled)" if profiler else ""))
    if digested:
        print(f"digest: {digest(results)}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "capture":
        return capture(Path(argv[1]), argv[2:])
    if len(argv) >= 2 and argv[0] == "time":
        options = dict(zip(argv[2::2], argv[3::2]))
        return timed(Path(argv[1]), int(options.get("--repeat", 3)), options.get("--profile"),
                     options.get("--digest") == "yes")
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
