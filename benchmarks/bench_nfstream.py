"""Packets per second of `--format nfstream` (capture -> named_flows through nfstream) beside nfstream alone.

The reference is NFStreamer with the same settings over the same plain capture, its flows iterated and
nothing else: the ratio is what our reader adds (the copy to a local file, our capture reader framing the
records to find damage, rows into Arrow batches). Both are timed A B A B in wall seconds: nfstream meters in a child
process, which CPU seconds of this one would not count. Needs nfstream in this Python.
Run: python -m benchmarks.run nfstream
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pyarrow.compute as pc

from beamlytics.parsers import formats
from beamlytics.parsers.base import Batch
from benchmarks.common import DATA_DIR, Result, alternating
from benchmarks.long_capture import read_seed

CAPTURE = DATA_DIR / "pcaps/bench/zeek_echo-connections.pcap.gz"


def our_flows(path: Path) -> int:
    return sum(item.records.num_rows for item in formats.parse_paths([str(path)], "named_flows", "nfstream")
               if isinstance(item, Batch))


def nfstream_flows(path: Path) -> int:
    import nfstream

    streamer = nfstream.NFStreamer(source=str(path), n_meters=1, accounting_mode=1, statistical_analysis=True)
    return sum(1 for _ in streamer)


def run() -> list[Result]:
    if importlib.util.find_spec("nfstream") is None:
        print("note: nfstream is not installed in this Python (pip install 'beamlytics[nfstream]'): nothing to time")
        return []
    seed = read_seed(CAPTURE)
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "capture.pcap"
        plain.write_bytes(seed)
        batches = [item.records for item in formats.parse_paths([str(plain)], "named_flows", "nfstream")
                   if isinstance(item, Batch)]
        their_flows = nfstream_flows(plain)
        if sum(batch.num_rows for batch in batches) != their_flows:
            print(f"note: {sum(batch.num_rows for batch in batches)} flows here, {their_flows} from nfstream")
        packets = sum(pc.sum(batch["c_pkt"]).as_py() + pc.sum(batch["s_pkt"]).as_py() for batch in batches)
        ours_s, reference_s = alternating(lambda: our_flows(plain), lambda: nfstream_flows(plain))
    return [Result(f"pcap -> named_flows via nfstream ({packets:,} packets)", packets / ours_s, "packets/s",
                   "NFStreamer alone", packets / reference_s)]


def main() -> None:
    for result in run():
        print(result.line())


if __name__ == "__main__":
    main()
