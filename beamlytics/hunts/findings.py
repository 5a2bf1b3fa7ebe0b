"""The findings table: one row per (hunt, horizon, key) that reached the hunt's base threshold."""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import pyarrow as pa

from beamlytics.schemas import TIMESTAMP

FINDINGS = pa.schema(
    [
        pa.field("hunt", pa.string(), nullable=False),  # beacon, long, strobe, vertical_scan, horizontal_scan, dns_tunnel
        pa.field("rank", pa.int64(), nullable=False),  # 1 = highest score of its hunt
        pa.field("score", pa.float64(), nullable=False),  # [0, 1]; 0.25 base, 0.5 low, 0.75 medium, 1 high
        pa.field("horizon_start", TIMESTAMP, nullable=False),
        pa.field("horizon_end", TIMESTAMP, nullable=False),
        pa.field("src", pa.string()),  # client IP; null for per-domain hunts
        pa.field("dst", pa.string()),  # server IP, or the registered domain; null for horizontal scans
        pa.field("proto", pa.string()),  # horizontal scans: the scanned port's protocol
        pa.field("port", pa.int32()),  # horizontal scans: the scanned port
        pa.field("connections", pa.int64(), nullable=False),  # connections or queries behind the finding
        pa.field("capped", pa.bool_(), nullable=False),  # true when lists were cut at --cap: figures are lower bounds
        pa.field("names", pa.list_(pa.string())),  # names the flows carried (SNI, HTTP host, ...), for allow-listing
        pa.field("evidence", pa.string(), nullable=False),  # JSON object, sorted keys
        pa.field("summary", pa.string(), nullable=False),  # the finding in one plain sentence
    ]
)

# Ties in score are broken by the key, so ranks are the same on every run.
def _sort_key(row: Mapping[str, Any]) -> tuple:
    text_keys = tuple((row[name] is None, row[name] or "") for name in ("src", "dst", "proto"))
    return (-row["score"], row["horizon_start"], *text_keys, -1 if row["port"] is None else row["port"])


def finding(hunt: str, score: float, horizon: tuple[int, int], connections: int, capped: bool,
            evidence: Mapping[str, Any], summary: str, *, src: str | None = None, dst: str | None = None,
            proto: str | None = None, port: int | None = None, names: Iterable[str] = ()) -> dict:
    return {
        "hunt": hunt, "rank": 0, "score": score, "horizon_start": horizon[0], "horizon_end": horizon[1],
        "src": src, "dst": dst, "proto": proto, "port": port, "connections": connections, "capped": capped,
        "names": sorted(names), "evidence": json.dumps(evidence, sort_keys=True), "summary": summary,
    }


def rank_findings(rows: Iterable[dict]) -> list[dict]:
    """Rows of one hunt ordered best first, with `rank` set 1, 2, ..."""
    ordered = sorted(rows, key=_sort_key)
    return [{**row, "rank": position} for position, row in enumerate(ordered, start=1)]


def findings_table(rows: Iterable[dict]) -> pa.Table:
    """Ranked rows of any hunts → the findings table sorted by (hunt, rank)."""
    by_hunt: dict[str, list[dict]] = {}
    for row in rows:
        by_hunt.setdefault(row["hunt"], []).append(row)
    ranked = [row for hunt in sorted(by_hunt) for row in rank_findings(by_hunt[hunt])]
    return pa.Table.from_pylist(ranked, schema=FINDINGS)
