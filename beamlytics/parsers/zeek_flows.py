"""Named flows from Zeek: conn.log rows, each named from the ssl, http and dns logs beside it.

A flow is named by the TLS SNI of its connection (ssl.log, same uid), else by the HTTP Host
of its connection (http.log, same uid), else by the latest DNS answer, at or before the flow
started, in which the same client resolved a name to the flow's server address. Flows that
nothing names are kept with a null name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.parsers.base import BATCH_ROWS, Batch, Read, Rejected
from beamlytics.parsers.zeek_reader import MAX_LINE_BYTES, READ_ERRORS, SOURCE_TOOL, Records, read_log
from beamlytics.parsers.zeek_tables import CONN_FIELDS, flow_batch, table_batches

GROUP_KINDS = ("conn", "ssl", "http", "dns")
_SSL_FIELDS = {"uid": "string", "server_name": "string"}
_HTTP_FIELDS = {"uid": "string", "host": "string"}
_DNS_FIELDS = {"ts": "time", "id.orig_h": "addr", "query": "string", "answers": "vector[string]"}
# File-name parts that are not the rotation interval.
_SUFFIXES = {"log", "json", "gz", "bz2", "xz"}


@dataclass(frozen=True)
class NamedFlowGroup:
    """The logs of one directory and rotation interval that name each other's flows.

    Only tuples of paths, one per log kind: code that lists a group's files can walk them all.
    """

    conn: tuple[str, ...]
    ssl: tuple[str, ...] = ()
    http: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def rotation_interval(base_name: str) -> str:
    """`conn.04:00:00-05:00:00.log.gz` -> `04:00:00-05:00:00`; `conn.log` -> ``."""
    parts = base_name.split(".")[1:]
    while parts and parts[-1] in _SUFFIXES:
        parts.pop()
    return ".".join(parts)


def named_flow_groups(files: list[tuple[str, str]]) -> list[NamedFlowGroup]:
    """Group (path, kind) pairs by directory and rotation interval; groups without conn are dropped."""
    grouped: dict[tuple[str, str], dict[str, list[str]]] = {}
    for path, kind in files:
        if kind not in GROUP_KINDS:
            continue
        directory, _, base_name = path.rpartition("/")
        paths = grouped.setdefault((directory, rotation_interval(base_name)), {k: [] for k in GROUP_KINDS})
        paths[kind].append(path)
    return [
        NamedFlowGroup(*(tuple(sorted(paths[kind])) for kind in GROUP_KINDS))
        for _, paths in sorted(grouped.items())
        if paths["conn"]
    ]


def parse_named_flows(
    group: NamedFlowGroup, open_stream: Callable[[str], BinaryIO], batch_rows: int = BATCH_ROWS,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[Batch | Rejected | Read]:
    """Named flows of a group's conn logs; `open_stream(path)` gives a decompressed stream
    (e.g. `base.open_input`).

    Lines of the ssl/http/dns logs count as units too: they are reported in a first
    batch without rows. Rejections from every file of the group are passed on.
    """
    units = 0
    naming: dict[str, list[Records]] = {}
    for kind, wanted in (("ssl", _SSL_FIELDS), ("http", _HTTP_FIELDS), ("dns", _DNS_FIELDS)):
        naming[kind] = []
        for item in _read_files(getattr(group, kind), open_stream, wanted, max_line_bytes):
            if isinstance(item, (Rejected, Read)):
                yield item
            else:
                naming[kind].append(item)
                units += item.num_rows
    if units:
        yield Batch("named_flows", schemas.empty_batch(schemas.NAMED_FLOWS), units)
    namer = FlowNamer(
        by_uid(naming["ssl"], "server_name"), by_uid(naming["http"], "host"), dns_answers(naming["dns"])
    )
    for path in group.conn:
        yield from table_batches(
            "named_flows", path, _read_files((path,), open_stream, CONN_FIELDS, max_line_bytes), namer.name, batch_rows
        )


def _read_files(
    paths: Iterable[str], open_stream: Callable[[str], BinaryIO], wanted: Mapping[str, str], max_line_bytes: int
) -> Iterator[Records | Rejected | Read]:
    for path in paths:
        try:
            stream = open_stream(path)
        except READ_ERRORS as error:
            yield Rejected(path, 0, f"cannot open: {error}", "", SOURCE_TOOL, units=0)
            continue
        with contextlib.closing(stream):
            yield from read_log(path, stream, wanted, max_line_bytes)


# ---------------------------------------------------------------------------------------
# Naming


def by_uid(records: list[Records], column: str) -> pa.RecordBatch:
    """uid -> the first non-empty value of `column` logged for that connection."""
    table = pa.RecordBatch.from_pydict(
        {"uid": _concat(records, "uid", pa.string()), "name": _concat(records, column, pa.string())}
    )
    named = pc.and_(table["uid"].is_valid(), pc.fill_null(pc.not_equal(table["name"], ""), False))
    table = table.filter(named)
    first = pc.index_in(pc.unique(table["uid"]), value_set=table["uid"])
    return table.take(first)


def dns_answers(records: list[Records]) -> pa.RecordBatch:
    """One row per DNS answer: (client, address, ts, name), in log order."""
    answers = _concat(records, "answers", pa.list_(pa.string()))
    parents = pc.list_parent_indices(answers)
    table = pa.RecordBatch.from_pydict(
        {
            "client": pc.take(_concat(records, "id.orig_h", pa.string()), parents),
            "address": answers.flatten(),
            "ts": pc.take(_concat(records, "ts", pa.int64()), parents),
            "name": pc.take(_concat(records, "query", pa.string()), parents),
        }
    )
    complete = pc.and_(table["client"].is_valid(), table["address"].is_valid())
    return table.filter(complete)


def _concat(records: list[Records], column: str, data_type: pa.DataType) -> pa.Array:
    arrays = [r.columns[column] for r in records]
    return pa.concat_arrays(arrays) if arrays else pa.array([], data_type)


@dataclass(frozen=True)
class FlowNamer:
    sni: pa.RecordBatch  # uid, name
    http_host: pa.RecordBatch  # uid, name
    dns: pa.RecordBatch  # client, address, ts, name

    @classmethod
    def empty(cls) -> FlowNamer:
        return cls(by_uid([], "server_name"), by_uid([], "host"), dns_answers([]))

    def name(self, source: str, conn: Records) -> pa.RecordBatch:
        columns = conn.columns
        candidates = (
            ("sni", _lookup(self.sni, columns["uid"])),
            ("http_host", _lookup(self.http_host, columns["uid"])),
            ("dns", _latest_dns_name(self.dns, columns["id.orig_h"], columns["id.resp_h"], columns["ts"])),
        )
        name = pa.nulls(conn.num_rows, pa.string())
        name_source = pa.nulls(conn.num_rows, pa.string())
        # Weakest first, so each stronger source overwrites it where it has a name.
        for label, found in reversed(candidates):
            named = found.is_valid()
            name = pc.if_else(named, found, name)
            name_source = pc.if_else(named, label, name_source)
        return flow_batch(source, conn, name, name_source)


def _lookup(table: pa.RecordBatch, uids: pa.Array) -> pa.Array:
    return pc.take(table["name"], pc.index_in(uids, value_set=table["uid"]))


def _latest_dns_name(dns: pa.RecordBatch, clients: pa.Array, servers: pa.Array, starts: pa.Array) -> pa.Array:
    """As-of join: for each flow, the name of the last answer (client, server) at or before its start.

    Both sides are put on one integer scale, key id * 2^32 + rank of the time, so one sorted
    search finds the candidate; it counts only if its key is the flow's. Answers with the
    same key and time keep log order, so the later line wins.
    """
    if dns.num_rows == 0 or len(clients) == 0:
        return pa.nulls(len(clients), pa.string())
    flow_keys = pc.binary_join_element_wise(clients, servers, "\t")
    dns_keys = pc.binary_join_element_wise(dns["client"], dns["address"], "\t")
    key_ids = pc.dictionary_encode(pa.concat_arrays([dns_keys, flow_keys])).indices
    key_ids = pc.fill_null(key_ids, -1).to_numpy().astype(np.int64)
    # No nulls here: the reader rejects rows without ts.
    times = np.concatenate([dns["ts"].to_numpy(), starts.to_numpy()])
    time_ranks = np.unique(times, return_inverse=True)[1].astype(np.int64)
    scale = (key_ids << 32) | time_ranks
    dns_scale, flow_scale = scale[: dns.num_rows], scale[dns.num_rows :]
    dns_key_ids, flow_key_ids = key_ids[: dns.num_rows], key_ids[dns.num_rows :]

    order = np.argsort(dns_scale, kind="stable")
    found = np.searchsorted(dns_scale[order], flow_scale, side="right") - 1
    candidate = order[np.maximum(found, 0)]
    # A flow without client or server address has key -1 and matches nothing.
    matched = (found >= 0) & (dns_key_ids[candidate] == flow_key_ids) & (flow_key_ids >= 0)
    return pc.take(dns["name"], pa.array(candidate, mask=~matched))
