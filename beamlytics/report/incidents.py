"""Incidents: runs of reported verdicts of one endpoint, with what explains them. No Beam.

`detect` gives every endpoint-window one ranked verdict (OUT/verdicts/); an analyst wants
"this host, from 02:30 to 02:35, did this". Consecutive or overlapping reported windows (alarms
the allow-list does not suppress) of one endpoint merge into one incident, ranked by its best
verdict score; its measures say how far the windows went from what the endpoint usually does
(its own earlier normal windows, or the population for a host never seen before) and the
alarm level each fired feature crossed; one pass over its records gives the peers, names and
ports involved and where in the input files the records are.
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import features, schemas
from beamlytics.parsers.base import Batch
from beamlytics.parsers.formats import parse_paths
from beamlytics.report import words

TOP = 10  # peers, names and ports kept per incident
TRACKED_VALUES = 100_000  # distinct peers/names/ports counted exactly per incident
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# Parquet key-value metadata of the incidents file: how to read the records again.
INPUTS_METADATA = b"beamlytics.inputs"


def micros(value: Any) -> int:
    """µs since the epoch of an Arrow timestamp as Python gives it (datetime) or an int."""
    if isinstance(value, int):
        return value
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def incident_id(table: str, key_kind: str, key: str, start_us: int) -> str:
    return hashlib.sha1(f"{table}|{key_kind}|{key}|{start_us}".encode("utf-8")).hexdigest()[:16]


@dataclass
class Span:
    """Reported windows of one endpoint that touch or overlap: one incident."""

    table: str
    key_kind: str
    key: str
    start_us: int
    end_us: int
    rows: list[Mapping[str, Any]] = field(default_factory=list)  # its verdict rows, one per window
    feature_rows: list[Mapping[str, Any]] = field(default_factory=list)  # its windows' fired features (anomalies/)

    @property
    def endpoint(self) -> tuple[str, str, str]:
        return self.table, self.key_kind, self.key

    @property
    def incident_id(self) -> str:
        return incident_id(self.table, self.key_kind, self.key, self.start_us)

    @property
    def window_starts(self) -> list[int]:
        return sorted({micros(row["window_start"]) for row in self.rows})

    def peak(self) -> Mapping[str, Any]:
        """The verdict with the highest score (a missing score counts lowest); ties: the earliest."""
        return min(self.rows, key=lambda row: (-_score(row), micros(row["window_start"])))

    def peak_feature_row(self) -> Mapping[str, Any] | None:
        """The anomalies/ row of the peak window's most significant feature, if it was written."""
        peak = self.peak()
        wanted = (micros(peak["window_start"]), peak["features_fired"][0] if peak["features_fired"] else None)
        return next((row for row in self.feature_rows
                     if (micros(row["window_start"]), row["feature"]) == wanted), None)

    def fired(self) -> dict[str, Mapping[str, Any]]:
        """Per feature that fired in some window: its most significant verdict evidence, most significant first."""
        best: dict[str, Mapping[str, Any]] = {}
        for row in self.rows:
            for entry in row["evidence"]:
                if entry["fired"] and (entry["feature"] not in best
                                       or _p(entry) < _p(best[entry["feature"]])):
                    best[entry["feature"]] = entry
        return dict(sorted(best.items(), key=lambda item: (_p(item[1]), item[0])))


def _score(row: Mapping[str, Any]) -> float:
    score = row.get("score")
    return -math.inf if score is None or not math.isfinite(score) else float(score)


def _p(entry: Mapping[str, Any]) -> float:
    return math.inf if entry.get("p_value") is None else entry["p_value"]


def is_reported(verdicts: pa.Table) -> pa.ChunkedArray:
    """Whether each verdict is one an analyst is shown: an alarm the allow-list does not suppress."""
    return pc.and_(pc.equal(verdicts.column("status"), "alarm"), pc.invert(verdicts.column("allowed")))


def reported(verdicts: pa.Table) -> pa.Table:
    return verdicts.filter(is_reported(verdicts))


def merge_windows(verdict_rows: Iterable[Mapping[str, Any]],
                  feature_rows: Iterable[Mapping[str, Any]] = ()) -> list[Span]:
    """Reported verdict rows (`schemas.VERDICTS`) → spans, ordered by endpoint and start, whatever the input order;
    each span also takes the fired features' rows (`schemas.ANOMALIES`) of its windows.

    A window that starts at or before the end of the span so far joins it: adjacent windows
    (start == previous end) and overlapping ones (sliding or mixed lengths) both merge; a gap of
    even one normal window starts a new incident.
    """
    ordered = sorted(verdict_rows, key=lambda row: (
        row["table"], row["key_kind"], row["key"], micros(row["window_start"]), micros(row["window_end"])))
    spans: list[Span] = []
    for row in ordered:
        start, end = micros(row["window_start"]), micros(row["window_end"])
        endpoint = (row["table"], row["key_kind"], row["key"])
        current = spans[-1] if spans else None
        if current is not None and current.endpoint == endpoint and start <= current.end_us:
            current.end_us = max(current.end_us, end)
            current.rows.append(row)
        else:
            spans.append(Span(*endpoint, start, end, [row]))
    span_of = {(*span.endpoint, start): span for span in spans for start in span.window_starts}
    for row in sorted(feature_rows, key=lambda row: (micros(row["window_start"]), row["feature"])):
        span = span_of.get((row["table"], row["key_kind"], row["key"], micros(row["window_start"])))
        if span is not None:
            span.feature_rows.append(row)
    return spans


@dataclass(frozen=True)
class Measure:
    feature: str
    fired: bool
    peak: float | None
    usual: float | None
    threshold: float | None


def measures(span: Span, feature_rows: Sequence[Mapping[str, Any]], usual: Mapping[str, float],
             names: Sequence[str]) -> list[Measure]:
    """Per feature: the most extreme value of the span's windows (lowest for a feature that fired low),
    and for a feature that fired the alarm level its most significant window had to cross."""
    fired = span.fired()
    low = {row["feature"] for row in span.feature_rows if row["direction"] == "down"}
    inside = [row for row in feature_rows if span.start_us <= micros(row["window_start"]) < span.end_us]
    result = []
    for name in names:
        values = [float(row[name]) for row in inside if row.get(name) is not None]
        if not values:  # features/ lacks the window: fall back on the verdicts' own values
            values = [float(entry["value"]) for row in span.rows for entry in row["evidence"]
                      if entry["feature"] == name and entry["value"] is not None]
        peak = (min(values) if name in low else max(values)) if values else None
        threshold = fired[name]["threshold"] if name in fired else None
        result.append(Measure(name, name in fired, peak, usual.get(name), threshold))
    return result


class UsualValues:
    """What an endpoint usually does: medians of its earlier windows that were not anomalous.

    An endpoint with no earlier normal window (a new host, or one anomalous from its first
    window) is compared with the median of all endpoints' normal windows instead. The rows stay
    numpy columns, sorted by endpoint and window start: an incident's medians are a slice of them
    (a million feature rows as Python dicts cost most of the report at 1 M records, 10,000 hosts).
    """

    def __init__(self, feature_table: pa.Table, anomalous: set[tuple[str, str, str, int]], names: Sequence[str]):
        self.names = list(names)
        keys = pa.array(sorted({key for _, _, key, _ in anomalous}), pa.string())
        involved = pc.fill_null(pc.is_in(feature_table.column("key"), value_set=keys), False)
        chosen = feature_table.filter(involved)
        chosen = chosen.append_column("start_us", pc.cast(chosen.column("window_start"), pa.int64()))
        chosen = chosen.take(pc.sort_indices(chosen, [(name, "ascending")
                                                      for name in ("table", "key_kind", "key", "start_us")]))
        self.starts = chosen.column("start_us").to_numpy()
        self.values = {name: chosen.column(name).to_numpy(zero_copy_only=False).astype(float) for name in self.names}
        self.valid = {name: chosen.column(name).is_valid().to_numpy(zero_copy_only=False) for name in self.names}
        # Each endpoint's rows are one slice [first, end) of the sorted columns.
        rows = chosen.num_rows
        opens = np.ones(rows, dtype=bool)  # the row opens its endpoint's slice
        if rows > 1:
            same = np.ones(rows - 1, dtype=bool)
            for name in ("table", "key_kind", "key"):
                column = chosen.column(name)
                same &= pc.fill_null(pc.equal(column.slice(1), column.slice(0, rows - 1)), False).to_numpy(
                    zero_copy_only=False)
            opens[1:] = ~same
        firsts = np.flatnonzero(opens)
        ends = np.append(firsts[1:], rows)
        heads = chosen.select(["table", "key_kind", "key"]).take(pa.array(firsts, pa.int64()))
        self.slices: dict[tuple[str, str, str], tuple[int, int]] = {
            endpoint: (int(first), int(end))
            for endpoint, first, end in zip(zip(*(heads.column(name).to_pylist() for name in heads.column_names)),
                                            firsts, ends)}
        self.normal = np.ones(len(self.starts), dtype=bool)
        anomalous_starts = collections.defaultdict(list)
        for table, key_kind, key, start in anomalous:
            anomalous_starts[(table, key_kind, key)].append(start)
        for endpoint, starts in anomalous_starts.items():
            first, end = self.slices.get(endpoint, (0, 0))
            self.normal[first:end] = ~np.isin(self.starts[first:end], starts)
        uninvolved = feature_table.filter(pc.invert(involved))
        self.population = {}
        for name in self.names:
            values = np.concatenate([uninvolved.column(name).to_numpy(zero_copy_only=False).astype(float),
                                     self.values[name][self.normal & self.valid[name]]])
            values = values[~np.isnan(values)]
            if values.size:
                self.population[name] = float(np.median(values))

    def rows_between(self, endpoint: tuple[str, str, str], start_us: int, end_us: int) -> list[dict]:
        """The endpoint's feature rows with start_us <= window start < end_us, oldest first (µs starts)."""
        first, end = self.slices.get(endpoint, (0, 0))
        low, high = first + np.searchsorted(self.starts[first:end], [start_us, end_us])
        return [{"window_start": int(self.starts[row]),
                 **{name: float(self.values[name][row]) if self.valid[name][row] else None for name in self.names}}
                for row in range(low, high)]

    def before(self, endpoint: tuple[str, str, str], start_us: int) -> tuple[dict[str, float], str]:
        """(medians, where they come from) for the endpoint's normal windows before `start_us`."""
        first, end = self.slices.get(endpoint, (0, 0))
        before = first + int(np.searchsorted(self.starts[first:end], start_us))
        earlier = self.normal[first:before]
        if earlier.any():
            medians = {}
            for name in self.names:
                values = self.values[name][first:before][earlier & self.valid[name][first:before]]
                if values.size:
                    medians[name] = median(values)
            return medians, "own history"
        if self.population:
            return dict(self.population), "population median"
        return {}, "none"


def median(values: np.ndarray) -> float:
    """`np.median` of a non-empty float array, the same bits, without its per-call overhead (which was most of
    the report at 1 M records, 10,000 hosts: 40,000 calls, one per incident and feature)."""
    if np.isnan(values).any():
        return math.nan
    half = values.size // 2
    if values.size % 2:
        return float(np.partition(values, half)[half])
    low, high = np.partition(values, [half - 1, half])[half - 1:half + 1]
    return float((low + high) / 2)


class BoundedCounter(collections.Counter):
    """A span's counts of at most `TRACKED_VALUES` distinct values (`_count_values` fills it): a tunnel of
    millions of random names must not take the memory with it. Values already seen keep being counted, so
    the top values stay right; distinct counts become lower bounds (`full` says so)."""

    def __init__(self):
        super().__init__()
        self.full = False


class AgentRarity:
    """How many distinct clients of the whole run send each HTTP user agent: a rare agent (one host's own
    tool, malware's hard-coded string) stands out beside the browsers every host shares. At most
    `TRACKED_VALUES` (agent, client) pairs are kept; an agent first seen after that has no count."""

    def __init__(self):
        self.clients: dict[str, set[str]] = collections.defaultdict(set)
        self.all_clients: set[str] = set()
        self.pairs = 0

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        # One chunk: the group-by lists the pairs in an order that depends on the chunks, and past the bound
        # that order decides which pairs are kept.
        pairs = pa.table({"agent": batch.column("user_agent"), "client": batch.column("c_ip")}).combine_chunks()
        pairs = pairs.drop_null()
        distinct = pairs.group_by(["agent", "client"], use_threads=False).aggregate([])
        for agent, client in zip(distinct.column("agent").to_pylist(), distinct.column("client").to_pylist()):
            known = self.clients.get(agent)
            if known is not None and client in known:
                continue
            if self.pairs < TRACKED_VALUES:
                self.clients[agent].add(client)
                self.pairs += 1
            if len(self.all_clients) < TRACKED_VALUES:
                self.all_clients.add(client)

    def rarest(self, agents: Mapping[str, int]) -> tuple[str, int, int] | None:
        """(agent, its records among `agents`, clients of the run that send it) of the counted agent the fewest
        clients send; ties: the most records, then by name."""
        counted = [(len(self.clients[agent]), -records, agent) for agent, records in agents.items()
                   if agent in self.clients]
        if not counted:
            return None
        clients, records, agent = min(counted)
        return agent, -records, clients


@dataclass
class RecordTally:
    """What one pass over an incident's records found."""

    records: int = 0
    peers: BoundedCounter = field(default_factory=BoundedCounter)
    names: BoundedCounter = field(default_factory=BoundedCounter)
    ports: BoundedCounter = field(default_factory=BoundedCounter)
    agents: BoundedCounter = field(default_factory=BoundedCounter)  # http user agents
    files: dict[str, list[int]] = field(default_factory=dict)  # source_file -> [first, last, records]


def _top(counter: collections.Counter) -> list[dict[str, Any]]:
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:TOP]
    return [{"value": value, "count": count} for value, count in ranked]


def span_records(batch: pa.RecordBatch, spec: features.WindowSpec,
                 spans: Sequence[Span]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(index of span, the batch's records that belong to it), for the spans the batch touches."""
    keys = spec.keys(batch)
    wanted = pa.array(sorted({span.key for span in spans}), pa.string())
    chosen_rows = pc.fill_null(pc.is_in(keys, value_set=wanted), False)
    candidates, keys = batch.filter(chosen_rows), keys.filter(chosen_rows)
    if candidates.num_rows == 0:
        return
    times = pc.cast(candidates.column(schemas.EVENT_TIME_COLUMN[spec.table]), pa.int64())
    # Rows ordered by (key, time) once; each span is then two bisections, not a pass over the batch.
    timed = np.flatnonzero(times.is_valid().to_numpy(zero_copy_only=False))
    encoded = pc.dictionary_encode(keys.take(pa.array(timed)))
    codes = encoded.indices.to_numpy()
    code_of = {key: code for code, key in enumerate(encoded.dictionary.to_pylist())}
    times_of_timed = times.take(pa.array(timed)).to_numpy()
    order = np.lexsort((times_of_timed, codes))
    sorted_codes, sorted_times = codes[order], times_of_timed[order]
    for index, span in enumerate(spans):
        code = code_of.get(span.key)
        if code is None:
            continue
        first, end = np.searchsorted(sorted_codes, [code, code + 1])
        low, high = first + np.searchsorted(sorted_times[first:end], [span.start_us, span.end_us])
        if high > low:
            yield index, candidates.take(pa.array(timed[np.sort(order[low:high])]))


CHUNK_ROWS = 1 << 20  # kept records tallied at once: per-call overhead amortised, memory bounded


class _SpanIndex:
    """Finds the span of every record at once. Spans of one endpoint must not overlap (as `merge_windows`
    gives them): each (key, time) then falls in at most one span. Times are replaced by their rank among the
    spans' starts and ends, so (key code, rank) packs into one int64 without overflow and one `searchsorted`
    over the packed starts places every record."""

    def __init__(self, spans: Sequence[Span]):
        self.keys = pa.array(sorted({span.key for span in spans}), pa.string())
        code_of = {key: code for code, key in enumerate(self.keys.to_pylist())}
        self.bounds = np.unique(np.array([t for span in spans for t in (span.start_us, span.end_us)], np.int64))
        self.width = len(self.bounds) + 1
        codes = np.array([code_of[span.key] for span in spans], np.int64)
        starts = codes * self.width + self._rank([span.start_us for span in spans])
        ends = codes * self.width + self._rank([span.end_us for span in spans])
        self.order = np.argsort(starts, kind="stable")
        self.starts, self.ends = starts[self.order], ends[self.order]

    def _rank(self, times) -> np.ndarray:
        return np.searchsorted(self.bounds, np.asarray(times, np.int64), side="right")

    def of(self, keys: pa.Array, times: pa.Array) -> np.ndarray:
        """Index of the span of each (key, time), -1 for none (a null key or time, or outside every span)."""
        codes = pc.index_in(keys, value_set=self.keys)
        known = pc.and_(codes.is_valid(), times.is_valid()).to_numpy(zero_copy_only=False)
        packed = (pc.fill_null(codes, 0).to_numpy().astype(np.int64) * self.width
                  + self._rank(pc.fill_null(times, 0).to_numpy()))
        place = np.searchsorted(self.starts, packed, side="right") - 1
        inside = known & (place >= 0) & (packed < self.ends[np.maximum(place, 0)])
        return np.where(inside, self.order[np.maximum(place, 0)], -1)


def tally_records(batches: Iterable[pa.RecordBatch], spec: features.WindowSpec,
                  spans: Sequence[Span], agents: AgentRarity | None = None) -> list[RecordTally]:
    """One pass over the records: each span's peers, names, ports and record positions, and with `agents` the
    run's clients per user agent. Every record gets its span at once (`_SpanIndex`); the spans' records are
    counted by Arrow group-bys over all spans together, so Python work is per distinct value of a span, not
    per record or per span and batch."""
    index = _SpanIndex(spans) if spans else None
    name_column = features.NAME_COLUMN[spec.table]
    chosen, seen = [], 0
    # The runs as tables, their batches not copied: joining them (`features.coalesced_batches`) copied every kept
    # record (0.3-0.8 CPU s profiled at 4 M records), and the tally's Arrow calls take a table's chunks as they are.
    # A kept file holds one parser batch (10,000 records at 4 M).
    for chunk in map(pa.Table.from_batches, features.batch_runs(batches, CHUNK_ROWS)):
        if agents is not None:
            agents.add(chunk)
        if index is not None:
            times = pc.cast(chunk.column(schemas.EVENT_TIME_COLUMN[spec.table]), pa.int64())
            span = index.of(spec.keys(chunk), times)
            inside = span >= 0
            rows = np.flatnonzero(inside)
            # A filter goes chunk by chunk; a take (pyarrow 25) joins the chunks first, copying every record.
            kept = chunk.select([spec.peer_column, name_column, "s_port", "source_file", "source_pos",
                                 *(["user_agent"] if "user_agent" in chunk.schema.names else [])]).filter(inside)
            columns = {"span": pa.array(span[rows]), "seq": pa.array(rows + seen),
                       "peers": kept.column(spec.peer_column), "names": kept.column(name_column),
                       "ports": pc.cast(kept.column("s_port"), pa.string()),
                       "file": kept.column("source_file"), "pos": kept.column("source_pos")}
            if "user_agent" in kept.schema.names:
                columns["agents"] = kept.column("user_agent")
            chosen.append(pa.table(columns))
        seen += chunk.num_rows
    tallies = [RecordTally() for _ in spans]
    if not chosen:
        return tallies
    records = pa.concat_tables(chosen)
    for span, count in enumerate(np.bincount(records.column("span").to_numpy(), minlength=len(spans))):
        tallies[span].records = int(count)
    for column in ("peers", "names", "ports", "agents"):
        if column in records.column_names:
            _count_values(records, column, tallies)
    per_file = records.group_by(["span", "file"], use_threads=False).aggregate(
        [("pos", "min"), ("pos", "max"), ("pos", "count")])
    for span, source, first, last, count in zip(*(per_file.column(name).to_pylist()
                                                  for name in ("span", "file", "pos_min", "pos_max", "pos_count"))):
        tallies[span].files[source] = [first, last, count]
    return tallies


def _count_values(records: pa.Table, column: str, tallies: Sequence[RecordTally]) -> None:
    """Each span's counts of `column`'s values (nulls left out). Past `TRACKED_VALUES` distinct values of a
    span, the later ones (by first appearance in the records) are not kept and its counter says it is full,
    as counting record by record and stopping at the bound would."""
    counted = records.select(["span", column, "seq"]).filter(pc.is_valid(records.column(column))).group_by(
        ["span", column], use_threads=False).aggregate([("seq", "min"), ("seq", "count")])
    counted = counted.take(pc.sort_indices(counted, [("span", "ascending"), ("seq_min", "ascending")]))
    spans = counted.column("span").to_numpy()
    group_first = np.searchsorted(spans, spans, side="left")  # rows of one span are contiguous now
    admitted = (np.arange(len(spans)) - group_first) < TRACKED_VALUES
    for span in np.unique(spans[~admitted]):
        getattr(tallies[span], column).full = True
    kept = counted.filter(pa.array(admitted))
    for span, value, count in zip(*(kept.column(name).to_pylist() for name in ("span", column, "seq_count"))):
        getattr(tallies[span], column)[value] = count


@dataclass(frozen=True)
class Inputs:
    """How `detect` read its records, so that incidents can be traced back to them."""

    paths: tuple[str, ...]
    format: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"paths": list(self.paths), "format": self.format, "options": dict(self.options)},
                          sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Inputs":
        loaded = json.loads(data)
        return cls(tuple(loaded["paths"]), loaded["format"], loaded["options"])

    @property
    def local(self) -> bool:
        """Whether the records can be read again here: `parse_paths` opens local files only."""
        return not any("://" in path for path in self.paths)

    def record_batches(self, table: str, paths: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The parsed records of `paths` (default: all inputs); what cannot be parsed is in OUT/rejected already."""
        chosen = list(self.paths if paths is None else paths)
        for item in parse_paths(chosen, table, self.format, self.options):
            if isinstance(item, Batch) and item.records.num_rows:
                yield item.records

    def files_for(self, source_files: Iterable[str]) -> list[str]:
        """Inputs needed to parse `source_files` again: the files and, for Zeek flows named by their
        sibling ssl/http/dns logs, the other inputs of the same folders."""
        folders = {os.path.dirname(path) for path in source_files}
        return [path for path in self.paths if os.path.dirname(path) in folders]


def build_incidents(verdict_table: pa.Table, anomaly_table: pa.Table, feature_table: pa.Table,
                    window_seconds: float, batches: Iterable[pa.RecordBatch] | None) -> pa.Table:
    """`schemas.INCIDENTS` rows of the reported verdicts, ranked by peak verdict score; `anomaly_table` holds
    their fired features' rows (for the detector's own reason); `batches` None when the records cannot be read."""
    spans = merge_windows(reported(verdict_table).to_pylist(), anomaly_table.to_pylist())
    if not spans:
        return schemas.INCIDENTS.empty_table()
    table = spans[0].table
    spec = features.WindowSpec(table, spans[0].key_kind)
    names = list(features.FEATURES[table])
    anomalous = {(*span.endpoint, start) for span in spans for start in span.window_starts}
    usual = UsualValues(feature_table, anomalous, names)
    agents = AgentRarity() if table == "http" else None
    tallies = tally_records(batches, spec, spans, agents) if batches is not None else None

    rows = []
    for index, span in enumerate(spans):
        medians, usual_from = usual.before(span.endpoint, span.start_us)
        span_measures = measures(span, usual.rows_between(span.endpoint, span.start_us, span.end_us), medians, names)
        tally = tallies[index] if tallies is not None else None
        peak = span.peak()
        fired = span.fired()
        row = {
            "incident_id": span.incident_id,
            "table": span.table, "key_kind": span.key_kind, "key": span.key,
            "start": span.start_us, "end": span.end_us,
            "windows": len(span.window_starts),
            "window_seconds": window_seconds,
            "detector": peak["detector"],
            "peak_score": peak["score"],
            "peak_feature": (peak["features_fired"] or [*fired, "records"])[0],
            "peak_window_start": micros(peak["window_start"]),
            "features_fired": list(fired),
            "measures": [vars(measure) for measure in span_measures],
            "usual_from": usual_from,
            **_tally_columns(tally, span),
        }
        rarest = agents.rarest(tally.agents) if agents is not None and tally is not None else None
        row["evidence"] = words.incident_evidence(row, peak, span.peak_feature_row(),
                                                  rarest and (*rarest, len(agents.all_clients)))
        rows.append(row)
    rows.sort(key=lambda row: (-_score({"score": row["peak_score"]}), row["key"], row["start"], row["incident_id"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return pa.Table.from_pylist(rows, schema=schemas.INCIDENTS)


def _tally_columns(tally: RecordTally | None, span: Span) -> dict[str, Any]:
    if tally is None:
        return {"records": None, "distinct_peers": None, "distinct_names": None, "distinct_exact": None,
                "top_peers": None,
                "top_names": None, "top_ports": None, "top_domains": None, "record_files": None}
    return {
        "records": tally.records,
        "distinct_peers": len(tally.peers),
        "distinct_names": len(tally.names),
        "distinct_exact": not (tally.peers.full or tally.names.full or tally.ports.full),
        "top_peers": _top(tally.peers),
        "top_names": _top(tally.names),
        "top_ports": _top(tally.ports),
        "top_domains": _top(collections.Counter(words.parent_domain(name) for name in tally.names)),
        "record_files": [{"source_file": path, "first_pos": first, "last_pos": last, "records": count}
                         for path, (first, last, count) in sorted(tally.files.items())],
    }


def incident_records(incident: Mapping[str, Any], inputs: Inputs) -> pa.Table:
    """The parsed records behind one incident, in file and position order."""
    spec = features.WindowSpec(incident["table"], incident["key_kind"])
    span = Span(incident["table"], incident["key_kind"], incident["key"], micros(incident["start"]),
                micros(incident["end"]))
    recorded = incident.get("record_files") or []
    ranges = {entry["source_file"]: (entry["first_pos"], entry["last_pos"]) for entry in recorded}
    paths = inputs.files_for(ranges) if recorded else list(inputs.paths)
    chosen = []
    for batch in inputs.record_batches(spec.table, paths):
        chosen.extend(records for _, records in span_records(batch, spec, [span]))
    if not chosen:
        return schemas.TABLES[spec.table].empty_table()
    records = pa.Table.from_batches(chosen)
    return records.take(pc.sort_indices(records, [("source_file", "ascending"), ("source_pos", "ascending")]))
