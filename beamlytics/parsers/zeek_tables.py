"""From Zeek log columns to beamlytics' tables: which fields each table reads, and how."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.parsers.base import Batch, Read, Rejected
from beamlytics.parsers.zeek_columns import cast_lenient, list_offsets
from beamlytics.parsers.zeek_reader import SOURCE_TOOL, Records

ENDPOINT_FIELDS = {"id.orig_h": "addr", "id.orig_p": "port", "id.resp_h": "addr", "id.resp_p": "port"}

DNS_FIELDS = {
    "ts": "time",
    "uid": "string",
    **ENDPOINT_FIELDS,
    "proto": "enum",
    "trans_id": "count",
    "rtt": "interval",  # absent from Bro 2.x logs: then no response time
    "query": "string",
    "qclass": "count",
    "qtype": "count",
    "rcode": "count",
    "AA": "bool",
    "TC": "bool",
    "RD": "bool",
    "RA": "bool",
    "answers": "vector[string]",
    "TTLs": "vector[interval]",
}

# cookie, set_cookie, content_type, content_range and server are not in Zeek's default
# http.log; logs extended by scripts that add them get them mapped.
HTTP_FIELDS = {
    "ts": "time",
    "uid": "string",
    **ENDPOINT_FIELDS,
    "method": "string",
    "host": "string",
    "uri": "string",
    "referrer": "string",
    "user_agent": "string",
    "cookie": "string",
    "set_cookie": "string",
    "status_code": "count",
    "content_type": "string",
    "resp_mime_types": "vector[string]",
    "content_range": "string",
    "server": "string",
    "request_body_len": "count",
    "response_body_len": "count",
}

CONN_FIELDS = {
    "ts": "time",
    "uid": "string",
    **ENDPOINT_FIELDS,
    "proto": "enum",
    "duration": "interval",
    "orig_pkts": "count",
    "resp_pkts": "count",
    "orig_ip_bytes": "count",
    "resp_ip_bytes": "count",
    "conn_state": "string",
}

_DNS_FLAG_BITS = ("AA", "TC", "RD", "RA")


@functools.cache
def _dns_flag_strings() -> pa.Array:
    """Every combination of the four flags Zeek logs, rendered once (on first use: a module-level
    `pa.array` imports pandas, 0.25 s of every `beamlytics --help`)."""
    return pa.array(
        [
            schemas.flags_string(flag for bit, flag in enumerate(_DNS_FLAG_BITS) if code >> (3 - bit) & 1)
            for code in range(16)
        ]
    )


def timestamps(micros: pa.Array) -> pa.Array:
    return micros.cast(schemas.TIMESTAMP)


def _int32(values: pa.Array) -> pa.Array:
    # Ports and DNS ids fit; a corrupt out-of-range value becomes null rather than failing the batch.
    return cast_lenient(values, pa.int32())


def _endpoints(columns: dict[str, pa.Array]) -> dict[str, pa.Array]:
    return {
        "c_ip": columns["id.orig_h"],
        "c_port": _int32(columns["id.orig_p"]),
        "s_ip": columns["id.resp_h"],
        "s_port": _int32(columns["id.resp_p"]),
    }


def _provenance(source: str, records: Records) -> dict[str, pa.Array]:
    return {
        "source_tool": pa.repeat(pa.scalar(SOURCE_TOOL), records.num_rows),
        "source_file": pa.repeat(pa.scalar(source), records.num_rows),
        "source_pos": records.positions,
    }


def _code_names(codes: pa.Array, name_of: Callable[[int], str]) -> pa.Array:
    """Mnemonics of numeric codes; a log has few distinct codes, so name each once."""
    distinct = pc.drop_null(pc.unique(codes))
    names = pa.array([name_of(code) for code in distinct.to_pylist()], pa.string())
    return pc.take(names, pc.index_in(codes, value_set=distinct))


def _dns_flags(columns: dict[str, pa.Array]) -> pa.Array:
    """Flags from the AA/TC/RD/RA booleans; null where the log has none of them."""
    code = np.zeros(len(columns["AA"]), dtype=np.int64)
    logged = np.zeros(len(code), dtype=bool)
    for flag in _DNS_FLAG_BITS:
        code = code * 2 + pc.fill_null(columns[flag], False).to_numpy(zero_copy_only=False)
        logged |= columns[flag].is_valid().to_numpy(zero_copy_only=False)
    return pc.take(_dns_flag_strings(), pa.array(code, mask=~logged))


def _whole_seconds(micros_lists: pa.ListArray) -> pa.Array:
    seconds = pc.divide(micros_lists.flatten(), 1_000_000)
    return pa.ListArray.from_arrays(list_offsets(micros_lists), seconds, mask=micros_lists.is_null())


def _first_elements(lists: pa.ListArray) -> pa.Array:
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    starts = list_offsets(lists).to_numpy()[:-1]
    return pc.take(lists.flatten(), pa.array(starts, mask=lengths == 0))


def dns_batch(source: str, records: Records) -> pa.RecordBatch:
    columns = records.columns
    ts = columns["ts"]
    values = {
        **_endpoints(columns),
        "proto": columns["proto"],
        "trans_id": _int32(columns["trans_id"]),
        "query": columns["query"],
        "req_class": _code_names(columns["qclass"], schemas.class_name),
        "req_type": _code_names(columns["qtype"], schemas.type_name),
        "resp_code": _code_names(columns["rcode"], schemas.rcode_name),
        "flags": _dns_flags(columns),
        "answers": columns["answers"],
        "answer_ttls": _whole_seconds(columns["TTLs"]),
        "req_time": timestamps(ts),
        "resp_time": timestamps(pc.add(ts, columns["rtt"])),
        "uid": columns["uid"],
        **_provenance(source, records),
    }
    return schemas.batch_from_columns(schemas.DNS, values, records.num_rows)


def http_batch(source: str, records: Records) -> pa.RecordBatch:
    columns = records.columns
    values = {
        **_endpoints(columns),
        "method": columns["method"],
        "host": columns["host"],
        "path": columns["uri"],
        "referrer": columns["referrer"],
        "user_agent": columns["user_agent"],
        "req_cookie": columns["cookie"],
        "set_cookie": columns["set_cookie"],
        "status_code": _int32(columns["status_code"]),
        "content_type": pc.coalesce(columns["content_type"], _first_elements(columns["resp_mime_types"])),
        "content_range": columns["content_range"],
        "server": columns["server"],
        "request_body_len": columns["request_body_len"],
        "response_body_len": columns["response_body_len"],
        "req_time": timestamps(columns["ts"]),
        "uid": columns["uid"],
        **_provenance(source, records),
    }
    return schemas.batch_from_columns(schemas.HTTP, values, records.num_rows)


def flow_batch(source: str, records: Records, name: pa.Array, name_source: pa.Array) -> pa.RecordBatch:
    """conn.log rows as named flows; bytes are IP-level, like flows built from captures."""
    columns = records.columns
    ts = columns["ts"]
    # Zeek leaves duration unset for single-packet connections: they end where they start.
    duration = pc.fill_null(columns["duration"], 0)
    values = {
        **_endpoints(columns),
        "proto": columns["proto"],
        "name": name,
        "name_source": name_source,
        "c_pkt": columns["orig_pkts"],
        "s_pkt": columns["resp_pkts"],
        "c_bytes": columns["orig_ip_bytes"],
        "s_bytes": columns["resp_ip_bytes"],
        "time_start": timestamps(ts),
        "time_end": timestamps(pc.add(ts, duration)),
        "conn_state": columns["conn_state"],
        "uid": columns["uid"],
        **_provenance(source, records),
    }
    return schemas.batch_from_columns(schemas.NAMED_FLOWS, values, records.num_rows)


def table_batches(
    table: str,
    source: str,
    items: Iterable[Records | Rejected | Read],
    convert: Callable[[str, Records], pa.RecordBatch],
    batch_rows: int,
) -> Iterator[Batch | Rejected | Read]:
    """`Batch`es of `table` from what `read_log` yielded, converted by `convert`."""
    converted = (item if isinstance(item, (Rejected, Read)) else convert(source, item) for item in items)
    return rebatch(table, converted, batch_rows)


def rebatch(
    table: str, items: Iterable[pa.RecordBatch | Rejected | Read], batch_rows: int
) -> Iterator[Batch | Rejected | Read]:
    """`Batch`es of at most `batch_rows` rows, each row's line counting as one unit.

    Record batches are sliced, never concatenated (zero-copy); a block Arrow read is large
    except on the slow path, so few batches come out short. Rejections pass straight through.
    """
    for item in items:
        if isinstance(item, (Rejected, Read)):
            yield item
            continue
        for start in range(0, item.num_rows, batch_rows):
            piece = item.slice(start, batch_rows)
            yield Batch(table, piece, piece.num_rows)
