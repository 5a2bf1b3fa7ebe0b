"""Progress of a long run on stderr: one updating line on a terminal, plain periodic lines otherwise.

The counts come from wherever the runner exposes them while it runs (see `run_with_progress`):
the tallies of DoFns running in this process, and the Beam counters of the PipelineResult.
A runner that gives neither until the end still shows the elapsed time, then the totals.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, TextIO

# What the line shows, in order, with the summary counts they come from.
SHOWN = (("files_read", "files"), ("records", "records"), ("rejected", "rejected"),
         ("windows", "windows"), ("scores", "scores"), ("anomalies", "anomalies"))


def progress_line(counts: Mapping[str, int], elapsed_s: float, total_files: int | None = None) -> str:
    parts = []
    for name, label in SHOWN:
        value = counts.get(name)
        if name == "files_read" and total_files is not None:
            parts.append(f"{label} {value or 0:,}/{total_files:,}")
        elif value is None:
            continue
        else:
            parts.append(f"{label} {value:,}")
    minutes, seconds = divmod(int(elapsed_s), 60)
    parts.append(f"elapsed {minutes}:{seconds:02d}")
    return ", ".join(parts)


@dataclass
class ProgressReporter:
    """Writes `progress_line`s to `stream`: rewritten in place on a TTY, every `plain_interval_s` otherwise."""

    read_counts: Callable[[], Mapping[str, int]]
    total_files: int | None = None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    tty_interval_s: float = 0.5
    plain_interval_s: float = 10.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    @property
    def interval_s(self) -> float:
        return self.tty_interval_s if self.tty else self.plain_interval_s

    def show(self, final: bool = False) -> None:
        line = progress_line(self._counts(), self.clock() - self.started, self.total_files)
        if self.tty:
            padded = line.ljust(self._width)
            self._width = len(line)
            self.stream.write("\r" + padded + ("\n" if final else ""))
        else:
            self.stream.write(("done: " if final else "progress: ") + line + "\n")
        self.stream.flush()

    def _counts(self) -> Mapping[str, int]:
        try:
            return self.read_counts()
        except Exception:  # noqa: BLE001 - a runner that cannot report must not stop the run
            return {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="beamlytics-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.show()

    def stop(self) -> None:
        """Stop the updates and write the final line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.show(final=True)
