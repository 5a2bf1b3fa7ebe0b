"""pcap -> dns table: DNS messages per second, ours against tshark on the same capture.

    python -m benchmarks.bench_pcap_dns

Both sides read the file from disk on one core: ours builds the whole `dns` table (Arrow
batches); tshark decodes every frame and prints the query names of the DNS ones
(`-T fields -e dns.qry.name -Y dns`, output to /dev/null), timed as a subprocess.
"""
from __future__ import annotations

import shutil
import subprocess

from beamlytics.parsers import pcap
from beamlytics.parsers.base import Batch, open_input
from benchmarks.common import DATA_DIR, Result, best_seconds

CAPTURE = DATA_DIR / "pcaps" / "dns" / "dns2tcp_tunnel_netrack_2018-03-23.pcap"
DNS_MESSAGES = 9_070  # every frame of this capture is one DNS message (tshark and STATS.json)


def _ours() -> int:
    rows = 0
    with open_input(str(CAPTURE)) as stream:
        for item in pcap.parse(str(CAPTURE), stream, "pcap", "dns"):
            if isinstance(item, Batch):
                rows += item.records.num_rows
    return rows


def _tshark() -> None:
    command = ["tshark", "-n", "-r", str(CAPTURE), "-T", "fields", "-e", "dns.qry.name", "-Y", "dns"]
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def run() -> list[Result]:
    if not CAPTURE.exists():
        print(f"skipped: {CAPTURE} not found")
        return []
    result = Result(f"pcap -> dns ({CAPTURE.name})", DNS_MESSAGES / best_seconds(_ours), "msgs/s")
    if shutil.which("tshark"):
        result.reference_name = "tshark"
        result.reference_rate = DNS_MESSAGES / best_seconds(_tshark)
    return [result]


if __name__ == "__main__":
    for line in run():
        print(line.line())
