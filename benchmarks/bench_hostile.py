"""Time and peak memory of reading generated hostile files: each case runs in a fresh process,
so its peak RSS is its own. Files are generated in a temporary folder and deleted after.

    python -m benchmarks.bench_hostile            # every case
    python -m benchmarks.bench_hostile nul_tail   # one case
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

SQUID_LINE = b"1157689312.049   5006 10.105.21.199 TCP_MISS/200 19763 CONNECT login.yahoo.com:443 u DIRECT/209.73.177.115 -\n"
ZEEK_HEADER = (b"#separator \\x09\n#path\tdns\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tquery\n"
               b"#types\ttime\tstring\taddr\tport\taddr\tport\tstring\n")
MIB = 1 << 20


def _gzip_stream(path: Path, pieces) -> None:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as handle:
        for piece, times in pieces:
            for _ in range(times):
                handle.write(compressor.compress(piece))
        handle.write(compressor.flush())


def _nul_tail(path: Path) -> tuple[str, str]:
    with open(path / "access.log", "wb") as handle:
        handle.write(SQUID_LINE * 100)
        zeros = bytes(MIB)
        for _ in range(512):
            handle.write(zeros)
    return str(path / "access.log"), "http"


def _zeek_nul_tail(path: Path) -> tuple[str, str]:
    line = b"1521911720.865716\tC1\t10.0.0.1\t5000\t10.0.0.53\t53\ta.example\n"
    with open(path / "dns.log", "wb") as handle:
        handle.write(ZEEK_HEADER + line * 100)
        zeros = bytes(MIB)
        for _ in range(512):
            handle.write(zeros)
    return str(path / "dns.log"), "dns"


def _gzip_bomb(path: Path) -> tuple[str, str]:
    _gzip_stream(path / "access.log.gz", [(SQUID_LINE * 100, 1), (bytes(MIB), 4 << 10)])  # 4 GiB of NULs
    return str(path / "access.log.gz"), "http"


def _blank_lines(path: Path) -> tuple[str, str]:
    _gzip_stream(path / "dns.log.gz", [(ZEEK_HEADER, 1), (b"\n" * MIB, 3)])  # 3 M empty lines: each a dead letter
    return str(path / "dns.log.gz"), "dns"


def _junk_lines(path: Path) -> tuple[str, str]:
    _gzip_stream(path / "dns.log.gz", [(ZEEK_HEADER, 1), (b"x\n" * MIB, 3)])  # 3 M one-field lines
    return str(path / "dns.log.gz"), "dns"


def _long_line(path: Path) -> tuple[str, str]:
    with open(path / "access.log", "wb") as handle:
        handle.write(SQUID_LINE * 100 + b"x" * (64 * MIB) + b"\n" + SQUID_LINE * 100)
    return str(path / "access.log"), "http"


CASES = {"nul_tail": _nul_tail, "zeek_nul_tail": _zeek_nul_tail, "gzip_bomb": _gzip_bomb, "blank_lines": _blank_lines, "junk_lines": _junk_lines,
         "long_line": _long_line}


@dataclass
class HostileResult:
    case: str
    seconds: float
    peak_mib: float
    counts: dict

    def line(self) -> str:
        return f"{self.case:<14} {self.seconds:7.1f} s  peak RSS {self.peak_mib:7.0f} MiB  {json.dumps(self.counts)}"


def measure(case: str) -> dict:
    """Parse one generated case in this process (run through `run`, in a fresh one)."""
    from beamlytics.parsers import formats
    from beamlytics.parsers.base import Batch, Read, Rejected

    with tempfile.TemporaryDirectory() as folder:
        path, table = CASES[case](Path(folder))
        start = time.perf_counter()
        counts = {"rows": 0, "dead_letters": 0, "rejected_units": 0, "read": 0}
        for item in formats.parse_paths([path], table):
            if isinstance(item, Batch):
                counts["rows"] += item.records.num_rows
            elif isinstance(item, Rejected):
                counts["dead_letters"] += 1
                counts["rejected_units"] += item.units
            elif isinstance(item, Read):
                counts["read"] += item.units
        seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "seconds": seconds, "peak_mib": peak_mib, "counts": counts}


def run(names: list[str] | None = None):
    for case in names or CASES:
        result = subprocess.run([sys.executable, "-m", "benchmarks.bench_hostile", "--measure", case],
                                capture_output=True, text=True, check=True)
        yield HostileResult(**json.loads(result.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(sys.argv[2])))
    else:
        for outcome in run(sys.argv[1:]):
            print(outcome.line(), flush=True)
