"""Hunt findings as evidence for `detect`'s verdicts: which endpoint-windows hold a finding's records.

A finding judges a key over a horizon (a source→destination pair, a source and port, a
registered domain); an endpoint-window carries it when one of its records belongs to that key
and horizon, so a scan marks the windows where the scanning happened, not the scanner's whole
day. Each window keeps its strongest finding (highest score; ties by hunt name, then sentence),
so the marks are the same in any order of records, batches and findings. No Beam.
"""
from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.schemas import domains

PAIR_HUNTS = ("beacon", "long", "strobe", "vertical_scan")  # keyed by (src, dst)


class Mark(NamedTuple):
    """The strongest finding over an endpoint-window's records."""

    hunt: str
    score: float  # the finding's score, [0, 1]
    summary: str  # the finding's sentence: its evidence in words


def _stronger(mark: Mark, other: Mark) -> bool:
    return (-mark.score, mark.hunt, mark.summary) < (-other.score, other.hunt, other.summary)


def strongest(marks: Iterable[tuple[str, int, Mark]]) -> dict[tuple[str, int], Mark]:
    """(key, window start µs, mark) triples → the strongest mark per window, whatever their order."""
    best: dict[tuple[str, int], Mark] = {}
    for key, start, mark in marks:
        held = best.get((key, start))
        if held is None or _stronger(mark, held):
            best[(key, start)] = mark
    return best


def _record_columns(batch: pa.RecordBatch, spec) -> pa.Table | None:
    """The records of `batch` that have an endpoint-window, with the columns findings are matched on."""
    keys = spec.keys(batch)
    time_column = schemas.EVENT_TIME_COLUMN[spec.table]
    placeable = pc.and_(pc.is_valid(batch.column(time_column)), pc.is_valid(keys))
    batch, keys = batch.filter(placeable), keys.filter(placeable)
    if batch.num_rows == 0:
        return None
    times = pc.cast(batch.column(time_column), pa.int64()).to_numpy(zero_copy_only=False)
    columns = {"key": keys, "time": pa.array(times), "window_start": pa.array(times - np.mod(times, spec.window_us))}
    if spec.table == "dns":
        columns["domain"] = domains.registered_domain(batch.column("query"))
    else:
        columns.update(src=batch.column("c_ip"), dst=batch.column("s_ip"),
                       proto=pc.fill_null(batch.column("proto"), "?"), port=batch.column("s_port"))
    return pa.table(columns)


def _joined(columns: Sequence[pa.Array]) -> pa.Array:
    """One string per row of the key columns, to match records and findings on (null where a part is)."""
    return pc.binary_join_element_wise(*(pc.cast(column, pa.string()) for column in columns), "\x1f")


def finding_marks(batch: pa.RecordBatch, spec, findings: Sequence[Mapping]) -> list[tuple[str, int, Mark]]:
    """(key, window start µs, mark) for each endpoint-window of `batch` holding records of a finding
    (`hunts.findings.FINDINGS` rows): same pair (beacon, long, strobe, vertical scan), same source
    and port (horizontal scan) or same registered domain (DNS tunnel), inside the finding's horizon."""
    if not findings:
        return []
    records = _record_columns(batch, spec)
    if records is None:
        return []
    if spec.table == "dns":
        matches = [(("domain",), ("dst",), ("dns_tunnel",))]
    else:
        matches = [(("src", "dst"), ("src", "dst"), PAIR_HUNTS),
                   (("src", "proto", "port"), ("src", "proto", "port"), ("horizontal_scan",))]
    found = []
    for record_keys, finding_keys, hunts in matches:
        # Findings are few, records many: an Arrow membership test first, Python only for the matching rows.
        wanted: dict[str, list[tuple[int, int, Mark]]] = {}
        for row in findings:
            if row["hunt"] in hunts and all(row[name] is not None for name in finding_keys):
                joined = "\x1f".join(str(row[name]) for name in finding_keys)
                wanted.setdefault(joined, []).append((row["horizon_start"], row["horizon_end"],
                                                      Mark(row["hunt"], row["score"], row["summary"])))
        if not wanted:
            continue
        record_key = _joined([records[name] for name in record_keys])
        rows = np.flatnonzero(pc.fill_null(pc.is_in(record_key, pa.array(sorted(wanted), pa.string())),
                                           False).to_numpy(zero_copy_only=False))
        if rows.size == 0:
            continue
        picked = pa.array(rows)
        for joined, key, start, time in zip(record_key.take(picked).to_pylist(),
                                            records["key"].take(picked).to_pylist(),
                                            records["window_start"].take(picked).to_pylist(),
                                            records["time"].take(picked).to_pylist()):
            found.extend((key, start, mark) for first, last, mark in wanted[joined] if first <= time < last)
    return [(key, start, mark) for (key, start), mark in sorted(strongest(found).items())]
