"""`beamlytics ...` as the CLI runs it, with the wall seconds of its phases written to a JSON file.

    python -m benchmarks.detect_phases TIMINGS.json detect --table dns ... INPUTS

Phases: `pipeline` (building and running the Beam pipeline), `report` (the incident report
written after it), and `rest` (imports, option checks, the summary: the process's time
from this module's start minus the two). The timers wrap the CLI's own functions, whatever
their arguments, so the run is the one `beamlytics detect` makes; `benchmarks/bench_detect.py`
runs detect this way to print where the time of the run it measures went.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def _timed(phases: dict[str, float], name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def main(argv: list[str]) -> int:
    timings, arguments = Path(argv[0]), argv[1:]
    from beamlytics.pipelines import cli, report

    phases: dict[str, float] = {}
    cli._run = _timed(phases, "pipeline", cli._run)
    report.finish_detect = _timed(phases, "report", report.finish_detect)
    status = cli.main(arguments)
    phases["rest"] = time.perf_counter() - STARTED - sum(phases.values())
    timings.write_text(json.dumps(phases, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
