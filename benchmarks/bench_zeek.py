"""Zeek dns.log -> Arrow parse rate, against pyarrow.csv reading the same TSV raw.

The reference reads the data lines (the `#` header lines skipped) with every column as a
string: the least any TSV reader must do. beamlytics also finds the header blocks, types
the columns, maps codes to mnemonics and builds `schemas.DNS` batches. Both sides start
from the decompressed bytes in memory, so gzip time counts for neither.

    python -m benchmarks.bench_zeek
"""

from __future__ import annotations

import gzip
import io

import pyarrow as pa
import pyarrow.csv as pa_csv

from beamlytics.parsers import zeek
from beamlytics.parsers.base import Batch
from benchmarks.common import DATA_DIR, Result, best_seconds

DNS_LOG = DATA_DIR / "logs" / "zeek" / "wrccdc2018" / "dns.log.gz"


def _parse_rows(data: bytes) -> int:
    return sum(item.records.num_rows for item in zeek.parse("dns.log", io.BytesIO(data), "dns", "dns")
               if isinstance(item, Batch))


def _raw_csv_rows(data_lines: bytes, columns: int) -> int:
    names = [f"c{i}" for i in range(columns)]
    table = pa_csv.read_csv(
        pa.py_buffer(data_lines),
        pa_csv.ReadOptions(column_names=names),
        pa_csv.ParseOptions(delimiter="\t", quote_char=False),
        pa_csv.ConvertOptions(column_types={name: pa.string() for name in names}),
    )
    return table.num_rows


def run() -> list[Result]:
    if not DNS_LOG.exists():
        print(f"skipped: {DNS_LOG} not found (set BEAMLYTICS_DATA to the data folder)")
        return []
    data = gzip.decompress(DNS_LOG.read_bytes())
    lines = data.splitlines(keepends=True)
    data_lines = b"".join(line for line in lines if not line.startswith(b"#"))
    fields_line = next(line for line in lines if line.startswith(b"#fields"))
    columns = len(fields_line.rstrip(b"\n").split(b"\t")) - 1

    rows = _parse_rows(data)
    if rows != _raw_csv_rows(data_lines, columns):
        raise RuntimeError("beamlytics and pyarrow.csv disagree on the number of rows")
    ours = best_seconds(lambda: _parse_rows(data), repeat=5)
    reference = best_seconds(lambda: _raw_csv_rows(data_lines, columns), repeat=5)
    return [
        Result(
            name="zeek dns.log (WRCCDC, TSV) -> Arrow dns",
            rate=rows / ours,
            unit="rows/s",
            reference_name="pyarrow.csv raw strings",
            reference_rate=rows / reference,
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result.line())
