"""Lines per second of the Squid, Tstat, Argus and BIND connectors, each beside a reference read of
the same bytes in the same run: pyarrow.csv for space-separated Tstat and comma-separated Argus, a plain
`for line in file: line.split()` loop (the floor of any per-line reader) for Squid and BIND.

The real samples are small, so each is replicated in memory (`REPEAT` times) for timing.
Run: python -m benchmarks.bench_logs
"""
from __future__ import annotations

import io

import pyarrow.csv as pacsv

from beamlytics.parsers import argus, bind, squid, tstat
from beamlytics.parsers.base import Batch
from benchmarks.common import DATA_DIR, Result, best_seconds

REPEAT = 50


def parse_all(module, data: bytes, kind: str, table: str) -> int:
    items = module.parse("bench", io.BufferedReader(io.BytesIO(data)), kind, table)
    return sum(item.units for item in items if isinstance(item, Batch))


def split_loop(data: bytes) -> int:
    return sum(1 for line in io.BytesIO(data) if line.split() is not None)


def arrow_csv(data: bytes, delimiter: str = " ") -> int:
    options = pacsv.ParseOptions(delimiter=delimiter, quote_char=False)
    read = pacsv.ReadOptions(skip_rows=1, autogenerate_column_names=True)
    return pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=options).num_rows


def replicated(path, keep_header: bool) -> bytes:
    data = path.read_bytes()
    if not keep_header:
        return data * REPEAT
    header, _, body = data.partition(b"\n")
    return header + b"\n" + body * REPEAT


def bind_sample() -> bytes:
    # No real BIND log is public: repeat the quoted lines of every generation.
    return (DATA_DIR / "logs/bind/bind_query_log_lines_from_public_sources.log").read_bytes() * 2000


def measure(name: str, data: bytes, run, reference_name: str, reference) -> Result:
    lines = data.count(b"\n")
    return Result(name, lines / best_seconds(run), "lines/s", reference_name, lines / best_seconds(reference))


def run() -> list[Result]:
    squid_data = b"".join(
        replicated(DATA_DIR / f"logs/squid/{name}", False) for name in ("beats_access1.log", "beats_access2.log"))
    tcp = replicated(DATA_DIR / "logs/tstat/dazn_1mbit_exp0/log_tcp_complete", True)
    dns = replicated(DATA_DIR / "logs/tstat/dazn_1mbit_exp0/log_dns_complete", True)
    bind_data = bind_sample()
    flows = replicated(DATA_DIR / "labelled/argus/test2-malicious.binetflow", True)
    results = [
        measure("squid access.log -> http", squid_data, lambda: parse_all(squid, squid_data, "access", "http"),
                "line.split() loop", lambda: split_loop(squid_data)),
        measure("tstat log_tcp_complete -> named_flows", tcp,
                lambda: parse_all(tstat, tcp, "log_tcp_complete", "named_flows"), "pyarrow.csv", lambda: arrow_csv(tcp)),
        measure("tstat log_dns_complete -> dns", dns, lambda: parse_all(tstat, dns, "log_dns_complete", "dns"),
                "pyarrow.csv", lambda: arrow_csv(dns)),
        measure("argus binetflow -> named_flows", flows,
                lambda: parse_all(argus, flows, "binetflow", "named_flows"), "pyarrow.csv",
                lambda: arrow_csv(flows, ",")),
        measure("bind queries -> dns", bind_data, lambda: parse_all(bind, bind_data, "queries", "dns"),
                "line.split() loop", lambda: split_loop(bind_data)),
    ]
    return results


if __name__ == "__main__":
    for result in run():
        print(result.line())
