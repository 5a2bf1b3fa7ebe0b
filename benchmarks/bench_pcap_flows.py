"""Packets per second of pcap -> named_flows, beside nfstream on the same plain pcap.

The capture (82,582 packets of short localhost TCP connections) is decompressed once to a
temporary file so both read the same bytes from disk; nfstream runs one meter (one core)
and no dissection, its cheapest setting. The packet layer alone (`iter_packets`) is timed
too, to show how much of our time is spent before the flow table.
Run: python -m benchmarks.bench_pcap_flows
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

from beamlytics.parsers import packets, pcap_flows
from beamlytics.parsers.base import Batch
from benchmarks.common import DATA_DIR, Result, best_seconds

CAPTURE = DATA_DIR / "pcaps/bench/zeek_echo-connections.pcap.gz"


def count_packets(path: Path) -> int:
    with open(path, "rb") as stream:
        return sum(1 for _ in packets.iter_packets(str(path), stream))


def our_flows(path: Path) -> int:
    with open(path, "rb") as stream:
        items = pcap_flows.flows_from_packets(str(path), packets.iter_packets(str(path), stream))
        return sum(item.records.num_rows for item in items if isinstance(item, Batch))


def nfstream_flows(path: Path) -> int:
    import nfstream  # the reference; only needed here

    streamer = nfstream.NFStreamer(source=str(path), statistical_analysis=False, n_dissections=0, n_meters=1)
    return sum(1 for _ in streamer)


def run() -> list[Result]:
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "capture.pcap"
        with gzip.open(CAPTURE) as source, open(plain, "wb") as out:
            shutil.copyfileobj(source, out)
        total = count_packets(plain)
        flows = our_flows(plain)
        reference_flows = nfstream_flows(plain)
        if flows != reference_flows:
            print(f"note: {flows} flows here, {reference_flows} in nfstream")
        ours = total / best_seconds(lambda: our_flows(plain))
        reference = total / best_seconds(lambda: nfstream_flows(plain))
        packet_layer = total / best_seconds(lambda: count_packets(plain))
    return [
        Result("pcap -> named_flows (echo-connections)", ours, "packets/s", "nfstream 1 meter", reference),
        Result("pcap -> packets only (iter_packets)", packet_layer, "packets/s"),
    ]


def main() -> None:
    for result in run():
        print(result.line())


if __name__ == "__main__":
    main()
