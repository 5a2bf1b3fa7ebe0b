"""The benchmarks, one after the other: `python -m benchmarks.run` runs the quick ones (`QUICK`, all but `LONG`);
add names to pick some, which is how the long ones run: `attacks` and `attacks_all` detect real attacks for
many minutes, `soak` streams through a Kafka broker for 3 minutes twice, A B (or `--minutes N`).

Each compares beamlytics with a reference measured in the same run, so ratios hold across
machines; absolute rates depend on the machine and its load.
"""
from __future__ import annotations

import sys

from benchmarks import (
    bench_attacks, bench_detect, bench_help, bench_hostile, bench_logs, bench_nfstream, bench_pcap_dns, bench_pcap_flows,
    bench_poisson, bench_scale, bench_soak, bench_spot, bench_zeek,
)

BENCHMARKS = {
    "zeek": bench_zeek, "logs": bench_logs, "pcap_dns": bench_pcap_dns, "pcap_flows": bench_pcap_flows,
    "spot": bench_spot, "poisson": bench_poisson, "detect": bench_detect, "hostile": bench_hostile, "scale": bench_scale,
    "nfstream": bench_nfstream, "help": bench_help,
    # Embeds real attacks in real background and runs `detect` on each (minutes, not seconds).
    "attacks": bench_attacks, "attacks_all": bench_attacks.EVERY_DETECTOR,
    "soak": bench_soak,
}
LONG = ("attacks", "attacks_all", "soak")
QUICK = tuple(name for name in BENCHMARKS if name not in LONG)


def main(names: list[str]) -> int:
    minutes = None
    if "--minutes" in names:  # soak's length: `python -m benchmarks.run soak --minutes 30`
        at = names.index("--minutes")
        minutes = float(names[at + 1])
        names = names[:at] + names[at + 2:]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names or QUICK:
        print(f"== {name}", flush=True)
        runs = BENCHMARKS[name].run(minutes) if name == "soak" and minutes else BENCHMARKS[name].run()
        for result in runs:
            print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
