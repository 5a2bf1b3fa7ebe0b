"""The output folder of `detect`, read for analysts: OUT/incidents/, the report, `show`'s text.

Everything here reads the finished folder (verdicts/, anomalies/, features/, scores/, rejected/,
summary.json) through Beam's FileSystems, so it works the same after any runner and again,
later, on an old folder.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beamlytics import features, schemas
from beamlytics.manifest import MANIFEST
from beamlytics.report import evidence, html, incidents, words
from beamlytics.transforms.write import parquet_bytes, write_file

INCIDENTS_FILE = "incidents/part-00000-of-00001.parquet"
REPORT_FILE = "report.html"
_ROWS_AT_ONCE = 1024  # rows decoded at a time, up to a file's last wanted one (`_read_rows`)
_SHOWN_COLUMNS = {
    "dns": ("req_time", "c_ip", "s_ip", "query", "req_type", "resp_code", "answers"),
    "http": ("req_time", "c_ip", "s_ip", "method", "host", "path", "status_code", "response_body_len"),
    "named_flows": ("time_start", "c_ip", "s_ip", "s_port", "proto", "name", "c_bytes", "s_bytes", "conn_state"),
}


class ReportError(Exception):
    """A missing or unreadable output folder or incident: told to the user in one line."""


def read_folder(folder: str, schema: pa.Schema | None = None, keys: Sequence[str] | None = None) -> pa.Table:
    """All Parquet files of an output folder as one table (local or any Beam filesystem).

    With `keys`, only those endpoints' rows (`_read_rows`): outputs are sorted by key, so of the
    whole of scores/ only the runs of those endpoints are decoded.
    """
    if keys is None:
        return pa.concat_tables([_read_parquet(path, schema) for path in _parquet_files(folder)])
    wanted = pa.array(sorted(keys), pa.string())
    return pa.concat_tables([_read_rows(path, schema, ["key"], lambda table: pc.is_in(table.column("key"), wanted))
                             for path in _parquet_files(folder)])


def read_reported(folder: str) -> pa.Table:
    """The verdicts of a verdicts/ folder that an analyst is shown (`incidents.reported`), in the folder's order.

    Each file is ranked by score, so its alarms are its first rows: the rest (99.7 % of them at 4 M
    records), whose nested evidence made reading the whole folder most of the incidents' CPU time, is
    not decoded (docs/benchmarks.md: "ninth session: the incident report's reads").
    """
    return pa.concat_tables([_read_rows(path, schemas.VERDICTS, ["status", "allowed"], incidents.is_reported)
                             for path in _parquet_files(folder)])


def _parquet_files(folder: str) -> list[str]:
    matches = FileSystems.match([f"{folder.rstrip('/')}/*.parquet"])[0].metadata_list
    if not matches:
        raise ReportError(f"no Parquet files in {folder} (is this a beamlytics detect output?)")
    return sorted(m.path for m in matches)


@contextlib.contextmanager
def _parquet_file(path: str, schema: pa.Schema) -> Iterator[pq.ParquetFile]:
    """One output file open for reading, or a one-line error if it is not one `schema` describes."""
    try:
        with FileSystems.open(path) as handle:
            parquet = pq.ParquetFile(handle)
            if parquet.schema_arrow.names != schema.names:
                raise ReportError(f"{path} has other columns than this beamlytics writes (an older version?): "
                                  "run beamlytics detect again")
            yield parquet
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None


def _read_parquet(path: str, schema: pa.Schema) -> pa.Table:
    """One output file in `schema` (its key-value metadata kept)."""
    with _parquet_file(path, schema) as parquet:
        return _cast(parquet.read(), schema)


def _read_rows(path: str, schema: pa.Schema, columns: Sequence[str],
               wanted: Callable[[pa.Table], pa.ChunkedArray]) -> pa.Table:
    """The rows of one output file for which `wanted` (of its `columns`) is true, in the file's order.

    Only `columns` are read whole. The rest is decoded only in row groups that hold a wanted row, and
    there only up to the last one: the rows a report wants are runs of a sorted file (an endpoint's
    rows, or the head of a file ranked by score), and decoding a file's pages cannot skip ahead.
    """
    with _parquet_file(path, schema) as parquet:
        chosen = np.flatnonzero(pc.fill_null(wanted(parquet.read(columns=list(columns))), False).to_numpy(
            zero_copy_only=False))
        parts, first = [parquet.schema_arrow.empty_table()], 0
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            inside = chosen[(chosen >= first) & (chosen < first + size)] - first
            if inside.size:
                batches, rows = [], 0
                for batch in parquet.iter_batches(batch_size=_ROWS_AT_ONCE, row_groups=[group]):
                    batches.append(batch)
                    rows += batch.num_rows
                    if rows > inside[-1]:
                        break
                parts.append(pa.Table.from_batches(batches, parquet.schema_arrow).take(pa.array(inside)))
            first += size
        return _cast(pa.concat_tables(parts), schema)


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.cast(schema.with_metadata(table.schema.metadata))


def read_summary(output: str) -> dict[str, Any]:
    path = f"{output.rstrip('/')}/summary.json"
    if not FileSystems.exists(path):
        raise ReportError(f"no summary.json in {output} (is this a beamlytics detect output?)")
    try:
        with FileSystems.open(path) as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None


def write_incidents(output: str, inputs: incidents.Inputs) -> pa.Table:
    """OUT/incidents/ from the other outputs and the records the pipeline kept (`evidence`; without them the
    incidents' records are unknown), the inputs recorded in its metadata for `show`."""
    output = output.rstrip("/")
    summary = read_summary(output)
    table_name = summary["table"]
    verdicts = read_reported(f"{output}/verdicts")
    anomalies = read_folder(f"{output}/anomalies", schemas.ANOMALIES)
    feature_table = read_folder(f"{output}/features", features.feature_schema(table_name))
    kept = evidence.kept_files(output)
    batches = evidence.batches(kept) if kept else None
    found = incidents.build_incidents(verdicts, anomalies, feature_table, float(summary["window_seconds"]), batches)
    found = found.replace_schema_metadata({incidents.INPUTS_METADATA: inputs.to_json()})
    write_file(f"{output}/{INCIDENTS_FILE}", parquet_bytes(found))
    return found


def read_incidents(output: str) -> tuple[pa.Table, incidents.Inputs | None]:
    path = f"{output.rstrip('/')}/{INCIDENTS_FILE}"
    if not FileSystems.exists(path):
        raise ReportError(f"no incidents in {output}: run beamlytics detect with --output {output} first")
    table = _read_parquet(path, schemas.INCIDENTS)
    recorded = (table.schema.metadata or {}).get(incidents.INPUTS_METADATA)
    return table, incidents.Inputs.from_json(recorded) if recorded else None


def printable(value: Any, width: int | None = None) -> str:
    """Text safe for a terminal: control characters from hostile logs are shown escaped."""
    text = "" if value is None else str(value)
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[int] | None = None) -> str:
    cells = [[printable(value, widths[i] if widths else None) for i, value in enumerate(row)] for row in rows]
    sizes = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    lines = ["  ".join(header.ljust(size) for header, size in zip(headers, sizes)).rstrip()]
    lines += ["  ".join(cell.ljust(size) for cell, size in zip(row, sizes)).rstrip() for row in cells]
    return "\n".join(lines)


def top_incidents(table: pa.Table, summary: Mapping[str, Any], count: int = 10) -> str:
    """The highest-ranked incidents as a terminal table, or why there are none (from the run's `summary`)."""
    if table.num_rows == 0:
        return why_no_incidents(summary)
    rows = [
        (row["rank"], row["incident_id"], row["key"], f"{row['start']:%Y-%m-%d %H:%M}",
         words.duration((row["end"] - row["start"]).total_seconds()), words.number(row["peak_score"]),
         ",".join(row["features_fired"]), words.summary_of(row["evidence"]))
        for row in table.slice(0, count).to_pylist()
    ]
    heading = (f"{table.num_rows} incident(s) from {summary.get('alarms', 0):,} reported endpoint-window(s); "
               f"top {len(rows)} by verdict score (details: beamlytics show ID OUT):")
    return heading + "\n" + text_table(
        ("rank", "incident", "endpoint", "start (UTC)", "lasted", "score", "features", "what"), rows,
        (5, 16, 40, 16, 8, 8, 40, 90))


def why_no_incidents(summary: Mapping[str, Any]) -> str:
    """Why a run reported nothing, from its summary's verdict counts."""
    verdicts = summary.get("verdicts", 0)
    if verdicts == 0:
        return "no incidents: no endpoint-window was scored (no record had a time and a key; see summary.json)"
    too_few, no_model = summary.get("unjudged_too_few_records", 0), summary.get("unjudged_no_model", 0)
    judged = verdicts - too_few - no_model
    text = (f"no incidents: none of {judged:,} judged endpoint-windows went beyond what --alarm-rate "
            f"{summary.get('alarm_rate', 0):g} allows (a higher rate finds more, with more false alarms)" if judged
            else f"no incidents: none of the {verdicts:,} endpoint-windows could be judged")
    if summary.get("allowed"):
        text += f"; {summary['allowed']:,} alarm(s) were suppressed by the allow-list"
    if too_few:
        text += f"; {too_few:,} window(s) had fewer than --min-records {summary.get('min_records')} records"
    if no_model:
        text += f"; {no_model:,} window(s) had nothing to be judged by"
    return text


def write_report(output: str, destination: str | None = None) -> str:
    """The HTML report of `output`, written to `destination` (default OUT/report.html); its path.

    OUT/report.html belongs to the detect run that wrote it (it is in the folder's manifest): it is
    written again only when the bytes stay the same, since the output contract refuses a folder
    whose listed files changed.
    """
    output = output.rstrip("/")
    summary = read_summary(output)
    found, _ = read_incidents(output)
    shown_keys = sorted(set(found.column("key").to_pylist()[:html.DETAILED]))
    scores = read_folder(f"{output}/scores", schemas.SCORES, shown_keys)
    rejected = read_folder(f"{output}/rejected", schemas.REJECTED)
    anomalies = read_folder(f"{output}/anomalies", schemas.ANOMALIES)
    params = json.loads(anomalies.column("params")[0].as_py()) if anomalies.num_rows else {}
    # The title names the run, not the folder: the run writes it in a staging folder of another name.
    title = (f"beamlytics report: {summary.get('table')} by {summary.get('key')}, "
             f"{summary.get('detector')} detector, {words.duration(float(summary.get('window_seconds', 0)))} windows")
    page = html.render(summary, found, scores, rejected, params, title=title, reported=anomalies).encode("utf-8")
    path = destination or f"{output}/{REPORT_FILE}"
    if destination is None and FileSystems.exists(path):
        with FileSystems.open(path) as handle:
            if handle.read() == page:
                return path
    if destination is None and FileSystems.exists(f"{output}/{MANIFEST}"):
        raise ReportError(f"{path} belongs to the detect run that wrote {output} and would change: "
                          "write this report elsewhere with --html FILE")
    write_file(path, page)
    return path


def show(incident_prefix: str, output: str, limit: int) -> str:
    if limit < 0:
        raise ReportError("--limit must be 0 (all records) or more")
    found, inputs = read_incidents(output)
    matches = [row for row in found.to_pylist() if row["incident_id"].startswith(incident_prefix.lower())]
    if not matches:
        raise ReportError(f"no incident {incident_prefix!r} in {output} (beamlytics report {output} lists them)")
    if len(matches) > 1:
        raise ReportError(f"{incident_prefix!r} matches {len(matches)} incidents: give more of the id")
    incident = matches[0]
    lines = [
        f"incident {incident['incident_id']} (rank {incident['rank']} of {found.num_rows})",
        f"endpoint  {incident['key_kind']} {printable(incident['key'])} in {incident['table']}",
        f"time      {incident['start']:%Y-%m-%d %H:%M:%S} to {incident['end']:%Y-%m-%d %H:%M:%S} UTC "
        f"({incident['windows']} reported windows of {words.duration(incident['window_seconds'])})",
        f"verdict   score {words.number(incident['peak_score'])} at its worst, most of it from "
        f"{incident['peak_feature']}; the endpoint's own detector: {incident['detector']}",
        f"evidence  {printable(incident['evidence'])}",
        "",
        text_table(("feature", "fired", "peak", "usual", "alarm level"), [
            (m["feature"], "yes" if m["fired"] else "", words.number(m["peak"]) if m["peak"] is not None else "",
             words.number(m["usual"]) if m["usual"] is not None else "",
             words.number(m["threshold"]) if m["threshold"] is not None else "")
            for m in incident["measures"]]),
    ]
    for label, column in html.TOP_LISTS:
        if incident[column]:
            lines.append(f"top {label}: " + ", ".join(f"{printable(entry['value'], 80)} ({entry['count']})"
                                                        for entry in incident[column]))
    lines.append("")
    lines.append(_records_text(incident, inputs, limit))
    return "\n".join(lines)


def _records_text(incident: dict, inputs: incidents.Inputs | None, limit: int) -> str:
    if inputs is None:
        return "records: the incidents file does not say which inputs were read"
    if not inputs.local:
        return "records: the inputs are on a remote filesystem, which show cannot read yet"
    missing = [path for path in inputs.files_for(e["source_file"] for e in incident["record_files"] or [])
               if "://" not in path and not os.path.exists(path)]
    if missing:
        return f"records: input {missing[0]} is no longer there; the positions are in record_files"
    records = incidents.incident_records(incident, inputs)
    where = ", ".join(f"{entry['source_file']} positions {entry['first_pos']}-{entry['last_pos']}"
                      for entry in incident["record_files"] or [])
    columns = [*_SHOWN_COLUMNS[incident["table"]], "source_file", "source_pos"]
    shown = records.slice(0, limit) if limit else records
    rows = [[_cell(row[name]) for name in columns] for row in shown.select(columns).to_pylist()]
    text = f"{records.num_rows} record(s) from {where or 'the inputs'}:\n"
    text += text_table(columns, rows, [60] * len(columns))
    if shown.num_rows < records.num_rows:
        text += f"\n... {records.num_rows - shown.num_rows} more (--limit 0 shows all)"
    return text


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return "" if value is None else str(value)
