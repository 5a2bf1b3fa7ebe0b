"""What a live run writes: one Parquet file per pane, atomically, and a summary refreshed from them.

A pane file is named by its first window and the hash of its bytes: a pane that a restarted
run computes again is the same file, found already there and not written twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from beamlytics.transforms.write import parquet_bytes

LIVE_COMMAND = "detect --follow"


def write_pane(table: pa.Table, directory: str, order: tuple[str, ...], label: str) -> str | None:
    """Write the rows of `table`, sorted by `order` (`-name`: descending), as one file of `directory`; the path,
    or None if empty."""
    if table.num_rows == 0:
        return None
    data = parquet_bytes(table.sort_by([(name[1:], "descending") if name.startswith("-") else (name, "ascending")
                                        for name in order]))
    path = os.path.join(directory, f"{label}-{hashlib.sha256(data).hexdigest()[:16]}.parquet")
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # readers see the whole pane or none of it
    return path


def folder_rows(directory: str) -> tuple[int, int]:
    """(files, rows) of the Parquet files in `directory`, from their footers."""
    if not os.path.isdir(directory):
        return 0, 0
    files = sorted(name for name in os.listdir(directory) if name.endswith(".parquet"))
    return len(files), sum(pq.ParquetFile(os.path.join(directory, name)).metadata.num_rows for name in files)


def late_rows(directory: str) -> int:
    if not os.path.isdir(directory):
        return 0
    count = 0
    for name in sorted(os.listdir(directory)):
        if name.endswith(".parquet"):
            reasons = pq.read_table(os.path.join(directory, name), columns=["reason"]).column("reason")
            count += sum(1 for reason in reasons.to_pylist() if reason.startswith("late:"))
    return count


def live_summary(output: str, extra: dict, running: bool) -> dict:
    panes, anomalies = folder_rows(os.path.join(output, "anomalies"))
    rejected_files, rejected = folder_rows(os.path.join(output, "rejected"))
    summary = {**extra, "running": running, "anomaly_panes": panes, "anomalies": anomalies,
               "rejected": rejected, "late": late_rows(os.path.join(output, "rejected"))}
    if extra.get("baseline"):  # only a run with a population writes verdicts
        summary["verdict_panes"], summary["verdicts"] = folder_rows(os.path.join(output, "verdicts"))
    notes = []
    if not anomalies:
        notes.append("no anomaly yet: windows are written as the watermark closes them, and each endpoint's "
                     f"detector first calibrates on {extra.get('calibration_windows')} windows")
    summary["notes"] = notes
    return summary


def write_summary(output: str, summary: dict) -> None:
    path = os.path.join(output, "summary.json")
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)
