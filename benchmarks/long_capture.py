"""Long captures for honest capture benchmarks, and timing of reference tools as commands.

A reference tool run as a command (tshark, nfstream in its own Python) pays a start-up
(process, libraries, dissector tables) on every run. On the shared captures, a few
thousand packets long, that start-up is most of the tool's time and the ratio says
nothing about per-packet cost. So the benchmarks repeat a real capture back to back,
each copy shifted in time, until the reference's start-up (measured on a one-packet
capture) is under 5 % of its run, and report per-packet cost at two lengths: a cost that
stays flat as the capture doubles is what a long capture will cost. At each length the two
are timed A B A B (best of each) and both wall and CPU seconds are kept: on a shared machine
CPU time is the steadier of the two, so start-up share and ratios are read in CPU seconds.
"""
from __future__ import annotations

import gzip
import math
import os
import resource
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

STARTUP_SHARE = 0.05  # the most of a reference run its start-up may take
# Seconds between one copy's last packet and the next copy's first: past every idle and
# DNS timeout, so a copy's flows and queries never merge with the previous copy's.
COPY_SPACING_S = 600
MAX_COPIES = 256
ROUNDS = 2  # A B A B at each of the two reported lengths


def _records(raw: bytes) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """(file header, [(seconds, microseconds, rest of record)]) of a little-endian µs pcap."""
    if raw[:4] != b"\xd4\xc3\xb2\xa1":
        raise ValueError("a little-endian microsecond pcap is needed as the benchmark seed")
    records, offset = [], 24
    while offset + 16 <= len(raw):
        seconds, micros, caplen = struct.unpack_from("<III", raw, offset)
        records.append((seconds, micros, raw[offset + 8 : offset + 16 + caplen]))
        offset += 16 + caplen
    return raw[:24], records


def read_seed(path: Path) -> bytes:
    with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as stream:
        return stream.read()


def write_copies(seed: bytes, copies: int, out: Path) -> int:
    """Write `copies` copies of the pcap `seed` one after the other to `out`; records written."""
    header, records = _records(seed)
    span = records[-1][0] - records[0][0] + 1 + COPY_SPACING_S
    with open(out, "wb") as sink:
        sink.write(header)
        for copy in range(copies):
            shift = copy * span
            for seconds, micros, rest in records:
                sink.write(struct.pack("<II", seconds + shift, micros))
                sink.write(rest)
    return copies * len(records)


def command_seconds(command: Sequence[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of a command, its output discarded; CPU counts every
    thread and child of it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(list(command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def call_seconds(function: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call in this process."""
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - start, time.process_time() - start_cpu


@dataclass
class Length:
    """One capture length measured: packets, and the best wall and CPU seconds of each side."""

    packets: int
    ours_s: float
    reference_s: float
    ours_cpu_s: float = math.inf
    reference_cpu_s: float = math.inf

    def line(self, startup_cpu_s: float) -> str:
        per_packet = 1e6 / self.packets
        return (f"  {self.packets:>10,} packets: ours {self.ours_cpu_s * per_packet:5.2f} µs/packet CPU "
                f"({self.ours_s * per_packet:.2f} wall), reference {self.reference_cpu_s * per_packet:5.2f} µs/packet "
                f"CPU ({self.reference_s * per_packet:.2f} wall; start-up {startup_cpu_s / self.reference_cpu_s:.1%} "
                f"of its CPU), ratio {self.reference_cpu_s / self.ours_cpu_s:.2f}x CPU, "
                f"{self.reference_s / self.ours_s:.2f}x wall")


def measure_lengths(seed: bytes, folder: Path, ours: Callable[[Path], object],
                    reference: Callable[[Path], Sequence[str]],
                    timed: Callable[[Sequence[str]], tuple[float, float]] = command_seconds
                    ) -> tuple[float, list[Length]]:
    """The reference's start-up in CPU seconds, and both tools at two lengths (n and 2n
    copies of `seed`), n grown until start-up is under `STARTUP_SHARE` of the reference's
    CPU time (or n reaches `MAX_COPIES`; the printed share then shows it). `timed` runs a
    command and gives its (wall, CPU) seconds.

    The length is found with the reference alone and in CPU seconds: timing ours at every
    trial length, and wall seconds that a loaded machine stretches, made the search itself
    the longest part of the run (over 23 minutes at load 15-27)."""
    one, path = folder / "one.pcap", folder / "long.pcap"
    header, records = _records(seed)
    one.write_bytes(header + struct.pack("<II", records[0][0], records[0][1]) + records[0][2])
    startup = min(timed(reference(one))[1] for _ in range(3))

    def reference_cpu(copies: int) -> float:
        write_copies(seed, copies, path)
        return timed(reference(path))[1]

    def measure(copies: int) -> Length:
        length = Length(write_copies(seed, copies, path), math.inf, math.inf)
        for _ in range(ROUNDS):  # A B A B: both sides see the same load
            wall, cpu = call_seconds(lambda: ours(path))
            length.ours_s, length.ours_cpu_s = min(length.ours_s, wall), min(length.ours_cpu_s, cpu)
            wall, cpu = timed(reference(path))
            length.reference_s, length.reference_cpu_s = min(length.reference_s, wall), min(length.reference_cpu_s, cpu)
        return length

    copies, spent = 1, reference_cpu(1)
    while startup / spent >= STARTUP_SHARE and copies < MAX_COPIES:
        work = max(spent - startup, 1e-3)
        # A quarter more than the estimate asks for: per-copy cost is noisy on a busy machine, and
        # the best of the timed rounds is below this one run (at a tenth more, start-up was 5.5 %).
        wanted = math.ceil(1.25 * copies * startup * (1 - STARTUP_SHARE) / STARTUP_SHARE / work)
        copies = min(MAX_COPIES, max(copies + 1, wanted))
        spent = reference_cpu(copies)
    lengths = [measure(copies), measure(2 * copies)]
    path.unlink()
    return startup, lengths


def tshark_command() -> str | None:
    """tshark from PATH, or the one BEAMLYTICS_TSHARK names (e.g. unpacked into a cache dir)."""
    return os.environ.get("BEAMLYTICS_TSHARK") or shutil.which("tshark")
