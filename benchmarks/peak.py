"""Run a command and write its wall seconds, peak RSS and CPU seconds to a file: `python -m benchmarks.peak RESULT CMD...`.

Why a process between the benchmark and the command: Linux keeps a process's peak RSS across fork and exec, so a
command started straight from a benchmark that holds 3 GiB reports at least 3 GiB, whatever it used itself. Started
from this small process, the command's peak is its own (and, `wait4` being what it is, that of its largest child).
CPU seconds (user + system) are the command's and its children's: beside the wall time they show how many cores
it kept busy (polars threads, Beam's workers).
"""
import os
import subprocess
import sys
import time


def main(result: str, command: list[str]) -> int:
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    with open(result, "w", encoding="ascii") as sink:
        sink.write(f"{seconds} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}\n")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
