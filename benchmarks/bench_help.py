"""CPU time of `beamlytics SUB --help` for every subcommand, against `beamlytics --help` (issue 14).

`beamlytics --help` imports only the command line's own modules: it is what an instant help costs on this
machine. Each subcommand's help runs in a fresh interpreter, alternated with the reference (A B A B), and
the median of the rounds' CPU seconds (user + sys of the child) is reported, as runs per CPU minute.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

from benchmarks.common import Result

ROUNDS = 5


def subcommands() -> list[str]:
    from beamlytics.pipelines import cli

    (commands,) = [action for action in cli.build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return sorted(commands.choices)


def child_cpu_seconds(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "beamlytics.pipelines.cli", *argv], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "80"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_alternating(ours: list[str], reference: list[str], rounds: int = ROUNDS) -> tuple[float, float]:
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for seconds, argv in zip(times, (ours, reference)):
            seconds.append(child_cpu_seconds(argv))
    return statistics.median(times[0]), statistics.median(times[1])


def run() -> list[Result]:
    results = []
    for command in subcommands():
        ours, reference = median_alternating([command, "--help"], ["--help"])
        results.append(Result(f"{command} --help", 60 / ours, "runs/CPU min", "beamlytics --help", 60 / reference))
    return results


if __name__ == "__main__":
    for result in run():
        print(result.line())
