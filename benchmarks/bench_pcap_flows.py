"""Packets per second of pcap -> named_flows, beside nfstream on the same long capture.

The capture (82,582 packets of short localhost TCP connections) is repeated back to back,
each copy 600 s after the previous one so that its flows are new ones, until nfstream's
start-up (its Python, the library, the meter process) is under 5 % of its run (see
`benchmarks.long_capture`); both are timed at that length and twice it. nfstream runs
one meter (one core) and no dissection, its cheapest setting, in the Python named by
BEAMLYTICS_NFSTREAM_PYTHON or, if it has nfstream, this one. The packet layer alone
(`iter_packets`) is timed too, to show how much of our time is spent before the flow table.
The long-capture rates are packets per CPU second (ours: process time of the parse; nfstream:
getrusage of its process and children), the steadier figure on a shared machine.
Run: python -m benchmarks.bench_pcap_flows
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from beamlytics.parsers import packets, pcap_flows
from beamlytics.parsers.base import Batch
from benchmarks.common import DATA_DIR, Result, best_seconds
from benchmarks.long_capture import measure_lengths, read_seed

CAPTURE = DATA_DIR / "pcaps/bench/zeek_echo-connections.pcap.gz"
_NFSTREAM = (
    "import sys, nfstream\n"
    "streamer = nfstream.NFStreamer(source=sys.argv[1], statistical_analysis=False, n_dissections=0, n_meters=1)\n"
    "print(sum(1 for _ in streamer))\n"
)


def count_packets(path: Path) -> int:
    with open(path, "rb") as stream:
        return sum(1 for _ in packets.iter_packets(str(path), stream))


def our_flows(path: Path) -> int:
    with open(path, "rb") as stream:
        items = pcap_flows.flows_from_packets(str(path), packets.iter_packets(str(path), stream))
        return sum(item.records.num_rows for item in items if isinstance(item, Batch))


def nfstream_python() -> str | None:
    named = os.environ.get("BEAMLYTICS_NFSTREAM_PYTHON")
    if named:
        return named
    return sys.executable if importlib.util.find_spec("nfstream") else None


def run() -> list[Result]:
    seed = read_seed(CAPTURE)
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "capture.pcap"
        plain.write_bytes(seed)
        total = count_packets(plain)
        results = [Result("pcap -> packets only (iter_packets)", total / best_seconds(lambda: count_packets(plain)),
                          "packets/s")]
        python = nfstream_python()
        if python is None:
            print("note: nfstream not found (this Python or BEAMLYTICS_NFSTREAM_PYTHON): our rate alone")
            results.append(Result("pcap -> named_flows (echo-connections)",
                                  total / best_seconds(lambda: our_flows(plain)), "packets/s"))
            return results
        done = subprocess.run([python, "-c", _NFSTREAM, str(plain)], capture_output=True, text=True, check=True)
        flows, reference_flows = our_flows(plain), int(done.stdout)
        if flows != reference_flows:
            print(f"note: {flows} flows here, {reference_flows} in nfstream")
        startup, lengths = measure_lengths(seed, Path(folder), our_flows,
                                           lambda path: [python, "-c", _NFSTREAM, str(path)])
    print(f"nfstream start-up (one-packet capture): {startup:.2f} CPU s")
    for length in lengths:
        print(length.line(startup))
    return results + [
        Result(f"pcap -> named_flows ({length.packets:,} packets)", length.packets / length.ours_cpu_s,
               "packets/CPU s", "nfstream 1 meter", length.packets / length.reference_cpu_s)
        for length in lengths
    ]


def main() -> None:
    for result in run():
        print(result.line())


if __name__ == "__main__":
    main()
