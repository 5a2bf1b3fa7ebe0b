"""Real logs of every line format, cut at many offsets, plain and recompressed (gzip, bzip2, xz):
every record before the cut is still parsed, exactly as when the whole lines before the cut
are parsed on their own, nothing raises, and the reader's count covers every unit."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from pathlib import Path

import pytest

from beamlytics.parsers import formats
from beamlytics.parsers.base import Batch, Read, Rejected, open_input, read_head
from tests.conftest import shared_data

# Enough of each file to hold many records; larger files are cut to their first lines.
PREFIX_BYTES = 96 << 10
CUTS_PER_FILE = 5
COMPRESSORS = {
    "plain": lambda data: data,
    "gz": lambda data: gzip.compress(data, compresslevel=6, mtime=0),
    "bz2": bz2.compress,
    "xz": lzma.compress,
}
PAIRING_KINDS = {"log_dns_complete", "log_http_complete"}  # a cut line may change its transaction's row


def decompress_what_survives(kind: str, cut: bytes) -> bytes:
    """What an independent streaming decompressor gets out of a cut stream, up to the damage."""
    if kind == "plain":
        return cut
    decompressor = {"gz": lambda: zlib.decompressobj(wbits=31), "bz2": bz2.BZ2Decompressor,
                    "xz": lzma.LZMADecompressor}[kind]()
    out = []
    for start in range(0, len(cut), 256):
        try:
            out.append(decompressor.decompress(cut[start:start + 256]))
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
            break
    return b"".join(out)


def line_logs() -> list[tuple[Path, str, str]]:
    """(file, table, kind) of every real line-format log that feeds a table."""
    found = []
    for path in sorted(shared_data("logs").rglob("*")):
        if not path.is_file() or path.name.endswith((".md", "LICENSE")) or "suricata" in path.parts:
            continue
        with open_input(str(path)) as stream:
            identified = formats.identify(path.name, read_head(stream))
        if identified is None or identified[0] == "pcap":
            continue
        fmt, kind = identified
        for table in sorted(formats.FORMATS[fmt].TABLES.get(kind, ())):
            found.append((path, table, kind))
    return found


def parse_file(path: Path, table: str) -> tuple[dict[int, dict], list[Rejected], int, int]:
    """Rows by line position, dead letters, units accounted for, and the readers' count."""
    rows, dead, units, read = {}, [], 0, 0
    for item in formats.parse_paths([str(path)], table):
        if isinstance(item, Batch):
            units += item.units
            for row in item.records.to_pylist():
                del row["source_file"]
                rows[row["source_pos"]] = row
        elif isinstance(item, Rejected):
            units += item.units
            dead.append(item)
        elif isinstance(item, Read):
            read += item.units
    return rows, dead, units, read


def whole_lines(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def test_cut_files_keep_every_record_before_the_cut(tmp_path):
    logs = line_logs()
    assert {path.parts[-2] for path, _, _ in logs} >= {"squid", "bind", "dazn_1mbit_exp0", "zat_tsv", "zat_json"}
    checked = 0
    for number, (path, table, kind) in enumerate(logs):
        with open_input(str(path)) as stream:
            original = whole_lines(read_head(stream, PREFIX_BYTES))
        for compression, compress in COMPRESSORS.items():
            packed = compress(original)
            for cut_number in range(1, CUTS_PER_FILE + 1):
                offset = len(packed) * cut_number // (CUTS_PER_FILE + 1) + number % 7
                folder = tmp_path / f"{number}-{compression}-{cut_number}"
                (folder / "cut").mkdir(parents=True)
                (folder / "prefix").mkdir()
                cut_file, prefix_file = folder / "cut" / path.name, folder / "prefix" / path.name
                cut_file.write_bytes(packed[:offset])
                prefix_file.write_bytes(whole_lines(decompress_what_survives(compression, packed[:offset])))

                rows, dead, units, read = parse_file(cut_file, table)
                expected, _, _, _ = parse_file(prefix_file, table)
                where = f"{path} {compression} cut at {offset}"
                assert units == read, where
                if kind in PAIRING_KINDS:
                    assert set(expected) <= set(rows), where
                else:
                    assert {pos: rows.get(pos) for pos in expected} == expected, where
                assert not any(item.reason == "unrecognised format" for item in dead) or not expected, where
                checked += 1
    assert checked == len(logs) * len(COMPRESSORS) * CUTS_PER_FILE
