"""pcap -> dns table: packets per second, ours against tshark on the same long capture.

    python -m benchmarks.bench_pcap_dns

The DNS tunnel capture (9,070 packets, each one DNS message) is repeated back to back
until tshark's start-up is under 5 % of its run (see `benchmarks.long_capture`), then
timed at that length and twice it. Both sides read the file from disk on one core: ours
builds the whole `dns` table (Arrow batches); tshark decodes every frame and prints the
query names of the DNS ones (`-T fields -e dns.qry.name -Y dns`, output discarded).
tshark is taken from PATH or from BEAMLYTICS_TSHARK.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from beamlytics.parsers import pcap
from beamlytics.parsers.base import Batch, open_input
from benchmarks.common import DATA_DIR, Result, best_seconds
from benchmarks.long_capture import measure_lengths, read_seed, tshark_command

CAPTURE = DATA_DIR / "pcaps" / "dns" / "dns2tcp_tunnel_netrack_2018-03-23.pcap"
PACKETS = 9_070  # capinfos (STATS.json)


def _ours(path: Path) -> int:
    rows = 0
    with open_input(str(path)) as stream:
        for item in pcap.parse(str(path), stream, "pcap", "dns"):
            if isinstance(item, Batch):
                rows += item.records.num_rows
    return rows


def run() -> list[Result]:
    if not CAPTURE.exists():
        print(f"skipped: {CAPTURE} not found")
        return []
    tshark = tshark_command()
    if tshark is None:
        print("note: tshark not found (PATH or BEAMLYTICS_TSHARK): our rate alone")
        return [Result(f"pcap -> dns ({CAPTURE.name})", PACKETS / best_seconds(lambda: _ours(CAPTURE)), "packets/s")]
    with tempfile.TemporaryDirectory() as folder:
        startup, lengths = measure_lengths(
            read_seed(CAPTURE), Path(folder), _ours,
            lambda path: [tshark, "-n", "-r", str(path), "-T", "fields", "-e", "dns.qry.name", "-Y", "dns"],
        )
    print(f"tshark start-up (one-packet capture): {startup:.2f} CPU s")
    for length in lengths:
        print(length.line(startup))
    return [
        Result(f"pcap -> dns ({length.packets:,} packets)", length.packets / length.ours_s, "packets/s",
               "tshark", length.packets / length.reference_s)
        for length in lengths
    ]


if __name__ == "__main__":
    for line in run():
        print(line.line())
