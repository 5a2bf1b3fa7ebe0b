"""Checks every parsed record passes before it leaves the parsers, whatever its format.

A record is rejected (with its position and the offending value) when a time lies outside
the accepted range (a year-10000 `ts` would only crash a later stage) or an address column
holds something that is not an IP address. Addresses come out in one canonical text
(`addresses.normalise_addresses`). Squid logs a client hostname when `log_fqdn` is on: a
Squid `c_ip` that is a hostname is kept as the client.
"""
from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.options_catalog import DEFAULT_TIME_RANGE
from beamlytics.parsers.addresses import normalise_addresses
from beamlytics.parsers.base import Batch, Rejected, excerpt

ADDRESS_COLUMNS = ("c_ip", "s_ip")
HOSTNAME_CLIENTS = frozenset({"squid"})  # tools that may log a client by name
_HOSTNAME = r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}\.)*[A-Za-z0-9_-]{0,63}\.?$"
_NUMERIC = r"^[0-9.]*$"  # a malformed IPv4 address, not a name


@dataclass(frozen=True)
class TimeRange:
    """Accepted record times, [start_us, end_us) in microseconds since the epoch."""

    start_us: int
    end_us: int

    @classmethod
    def parse(cls, text: str) -> "TimeRange":
        """`FROM..TO`, each a year (`1970`) or a day (`2024-05-01`); TO is exclusive."""
        match = re.fullmatch(r"\s*(\d{4}(?:-\d{2}-\d{2})?)\s*\.\.\s*(\d{4}(?:-\d{2}-\d{2})?)\s*", text)
        if not match:
            raise ValueError(f"time range {text!r} is not FROM..TO with years or YYYY-MM-DD days, e.g. 1970..2100")
        start, end = (_micros(part) for part in match.groups())
        if start >= end:
            raise ValueError(f"time range {text!r} is empty")
        return cls(start, end)

    def describe(self) -> str:
        return f"{_day(self.start_us)}..{_day(self.end_us)}"


def _micros(text: str) -> int:
    day = dt.date(int(text), 1, 1) if len(text) == 4 else dt.date.fromisoformat(text)
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000


def _day(micros: int) -> str:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)).date().isoformat()


def check_read_options(options: Mapping[str, Any]) -> None:
    """Raise ValueError, saying which, when a reading option cannot be used."""
    time_range(options)
    if options.get("timezone"):
        try:
            zoneinfo.ZoneInfo(options["timezone"])
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise ValueError(f"unknown time zone {options['timezone']!r}: use an IANA name such as Europe/Paris") from None
    if options.get("max_line_bytes") is not None and int(options["max_line_bytes"]) < 1:
        raise ValueError("--max-line-bytes must be at least 1")
    if options.get("split_bytes") is not None and int(options["split_bytes"]) < 1:
        raise ValueError("--split-bytes must be at least 1")
    if options.get("max_decompression_ratio") is not None and float(options["max_decompression_ratio"]) <= 1:
        raise ValueError("--max-decompression-ratio must be above 1")


def time_range(options: Mapping[str, Any] | None) -> TimeRange:
    return TimeRange.parse(str((options or {}).get("time_range") or DEFAULT_TIME_RANGE))


def checked(batch: Batch, times: TimeRange) -> Iterator[Batch | Rejected]:
    """`batch` with bad records taken out (each one a `Rejected`), addresses normalised."""
    records = batch.records
    if not records.num_rows:
        yield batch
        return
    reasons: dict[int, str] = {}
    for index, field in enumerate(records.schema):
        if pa.types.is_timestamp(field.type):
            micros = pc.cast(records.column(index), pa.int64())
            bounds = pc.min_max(micros)
            if bounds["min"].as_py() is None or times.start_us <= bounds["min"].as_py() <= bounds["max"].as_py() < times.end_us:
                continue  # the whole column is in range: no mask needed
            outside = pc.or_(pc.less(micros, times.start_us), pc.greater_equal(micros, times.end_us))
            for row in _rows(outside):
                reasons.setdefault(row, f"{field.name} {micros[row].as_py()} us outside the accepted time range "
                                        f"{times.describe()} (--time-range)")
    columns = dict(zip(records.schema.names, records.columns))
    for name in ADDRESS_COLUMNS:
        if name not in columns:
            continue
        logged = columns[name]
        columns[name], invalid = normalise_addresses(logged)
        if not pc.any(invalid).as_py():
            continue
        if name == "c_ip":
            by_name = pc.and_(_matches(logged, _HOSTNAME), pc.invert(_matches(logged, _NUMERIC)))
            by_name = pc.and_(by_name, pc.is_in(records.column("source_tool"), pa.array(sorted(HOSTNAME_CLIENTS))))
            invalid = pc.and_(invalid, pc.invert(by_name))
            columns[name] = pc.if_else(by_name, logged, columns[name])
        for row in _rows(invalid):
            reasons.setdefault(row, f"{name} is not an IP address: {logged[row].as_py()!r}")
    records = pa.RecordBatch.from_arrays(list(columns.values()), schema=records.schema)
    if not reasons:
        yield Batch(batch.table, records, batch.units)
        return
    keep = np.ones(records.num_rows, dtype=bool)
    keep[list(reasons)] = False
    yield Batch(batch.table, records.filter(pa.array(keep)), batch.units - len(reasons))
    tools, files, positions = (records.column(name) for name in ("source_tool", "source_file", "source_pos"))
    for row in sorted(reasons):
        yield Rejected(files[row].as_py(), positions[row].as_py() or 0, reasons[row],
                       excerpt(_row_text(records, row)), tools[row].as_py())


def _matches(values: pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(values, pattern), False)


def _rows(mask: pa.Array) -> list[int]:
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False)).tolist()


def _row_text(records: pa.RecordBatch, row: int) -> str:
    """The record's values, for the dead letter: the line itself is no longer at hand."""
    record = records.slice(row, 1)
    # Times as integer microseconds: a time out of range may be out of Python's datetime range too.
    values = {name: (pc.cast(column, pa.int64()) if pa.types.is_timestamp(column.type) else column)[0].as_py()
              for name, column in zip(record.schema.names, record.columns)}
    return " ".join(f"{name}={value}" for name, value in values.items()
                    if value is not None and name not in ("source_tool", "source_file", "source_pos"))
