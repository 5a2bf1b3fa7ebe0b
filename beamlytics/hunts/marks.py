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


def _findings_on(findings: Sequence[Mapping], hunts: Sequence[str], keys: Sequence[str]) -> pa.Table:
    rows = [finding for finding in findings if finding["hunt"] in hunts]
    columns = {name: [row[name] for row in rows] for name in (*keys, "hunt", "score", "summary")}
    columns["horizon_start"] = pa.array([row["horizon_start"] for row in rows], pa.int64())
    columns["horizon_end"] = pa.array([row["horizon_end"] for row in rows], pa.int64())
    if "port" in columns:
        columns["port"] = pa.array(columns["port"], pa.int32())
    return pa.table({name: columns[name] if isinstance(columns[name], pa.Array) else
                     pa.array(columns[name], pa.float64() if name == "score" else pa.string())
                     for name in columns})


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
        wanted = _findings_on(findings, hunts, finding_keys)
        if wanted.num_rows == 0:
            continue
        joined = records.join(wanted, list(record_keys), list(finding_keys), join_type="inner", use_threads=False)
        inside = pc.and_(pc.greater_equal(joined["time"], joined["horizon_start"]),
                         pc.less(joined["time"], joined["horizon_end"]))
        joined = joined.filter(inside)
        found.extend(zip(joined["key"].to_pylist(), joined["window_start"].to_pylist(),
                         map(Mark, joined["hunt"].to_pylist(), joined["score"].to_pylist(),
                             joined["summary"].to_pylist())))
    return [(key, start, mark) for (key, start), mark in sorted(strongest(found).items())]
