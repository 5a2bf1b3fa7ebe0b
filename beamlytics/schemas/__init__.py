"""Arrow schemas of beamlytics' data tables (dns, http, named_flows) and of its outputs.

Every parser, whatever tool wrote its input, emits batches of exactly these schemas, so
windowing, features and detectors never care where a record came from. The provenance
columns (`source_tool`, `source_file`, `source_pos`) let an analyst go from an anomaly back
to the line or packet behind it.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Zeek's connection uid: the key that joins a record to every other Zeek log of the same
# connection. Null where the source has none.
UID_FIELD = pa.field("uid", pa.string())

PROVENANCE_FIELDS = [
    pa.field("source_tool", pa.string(), nullable=False),  # zeek, squid, tstat, argus, suricata, bind, pcap, nfstream
    pa.field("source_file", pa.string(), nullable=False),
    # 1-based line number in the (decompressed) log, or 1-based packet number in a capture.
    pa.field("source_pos", pa.int64(), nullable=False),
]

DNS = pa.schema(
    [
        pa.field("c_ip", pa.string()),
        pa.field("c_port", pa.int32()),
        pa.field("s_ip", pa.string()),
        pa.field("s_port", pa.int32()),
        pa.field("proto", pa.string()),  # udp | tcp
        pa.field("trans_id", pa.int32()),
        pa.field("query", pa.string()),
        pa.field("req_class", pa.string()),  # mnemonic: IN, CH, ... (see CLASS_NAMES)
        pa.field("req_type", pa.string()),  # mnemonic: A, AAAA, ... (see TYPE_NAMES)
        pa.field("resp_code", pa.string()),  # NOERROR, NXDOMAIN, ...; null when unanswered
        pa.field("flags", pa.string()),  # set header flags, space separated, in FLAG_ORDER
        pa.field("answers", pa.list_(pa.string())),
        pa.field("answer_types", pa.list_(pa.string())),  # null where the source does not say
        pa.field("answer_ttls", pa.list_(pa.int64())),
        pa.field("req_time", TIMESTAMP),
        pa.field("resp_time", TIMESTAMP),  # null when unanswered or unknown
        UID_FIELD,
        *PROVENANCE_FIELDS,
    ]
)

HTTP = pa.schema(
    [
        pa.field("c_ip", pa.string()),
        pa.field("c_port", pa.int32()),
        pa.field("s_ip", pa.string()),
        pa.field("s_port", pa.int32()),
        pa.field("method", pa.string()),
        pa.field("host", pa.string()),
        pa.field("path", pa.string()),
        pa.field("referrer", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("req_cookie", pa.string()),
        pa.field("set_cookie", pa.string()),
        pa.field("status_code", pa.int32()),
        pa.field("content_type", pa.string()),
        pa.field("content_range", pa.string()),
        pa.field("server", pa.string()),
        pa.field("request_body_len", pa.int64()),
        pa.field("response_body_len", pa.int64()),
        pa.field("req_time", TIMESTAMP),
        pa.field("resp_time", TIMESTAMP),
        pa.field("user", pa.string()),  # authenticated user (Squid's ident/user field)
        pa.field("cache_result", pa.string()),  # Squid's result code, e.g. TCP_MISS/200 -> TCP_MISS
        UID_FIELD,
        *PROVENANCE_FIELDS,
    ]
)

NAMED_FLOWS = pa.schema(
    [
        pa.field("c_ip", pa.string()),
        pa.field("c_port", pa.int32()),
        pa.field("s_ip", pa.string()),
        pa.field("s_port", pa.int32()),
        pa.field("proto", pa.string()),  # tcp | udp | icmp | ...
        pa.field("name", pa.string()),  # null for flows nothing could name: kept, not dropped
        pa.field("name_source", pa.string()),  # sni | http_host | dns | squid_url | tstat | ndpi
        pa.field("c_pkt", pa.int64()),
        pa.field("s_pkt", pa.int64()),
        pa.field("c_bytes", pa.int64()),
        pa.field("s_bytes", pa.int64()),
        pa.field("tcp_flags", pa.string()),  # flags seen in either direction, e.g. "SAFR"
        pa.field("time_start", TIMESTAMP),
        pa.field("time_end", TIMESTAMP),
        # Zeek's conn_state vocabulary (S0, REJ, SF, RSTO, ...) where the source gives or implies it.
        pa.field("conn_state", pa.string()),
        # nDPI's application and its category (e.g. "TLS.YouTube", "Media"), from `--format nfstream` only:
        # null for every other source. Columns of this table, not a side table, so named_flows keeps one shape.
        pa.field("application", pa.string()),
        pa.field("application_category", pa.string()),
        UID_FIELD,
        *PROVENANCE_FIELDS,
    ]
)

TABLES: dict[str, pa.Schema] = {"dns": DNS, "http": HTTP, "named_flows": NAMED_FLOWS}

# Event time of a record: what windows are cut on.
EVENT_TIME_COLUMN = {"dns": "req_time", "http": "req_time", "named_flows": "time_start"}

REJECTED = pa.schema(
    [
        pa.field("source_tool", pa.string()),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),  # line/packet number; 0 = whole file
        pa.field("reason", pa.string(), nullable=False),
        pa.field("excerpt", pa.string()),
    ]
)

# One row per (endpoint, window, feature) that a detector scored, anomalous or not.
SCORES = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("key_kind", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("window_start", TIMESTAMP, nullable=False),
        pa.field("window_end", TIMESTAMP, nullable=False),
        pa.field("value", pa.float64()),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # see detectors.base.Status
        pa.field("score", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("direction", pa.string()),  # up | down | null
        pa.field("evidence", pa.string()),  # JSON object, sorted keys
    ]
)

ANOMALIES = pa.schema(
    [
        *SCORES,
        pa.field("params", pa.string(), nullable=False),  # detector parameters, JSON
        pa.field("records", pa.int64()),  # records of the endpoint in the window
    ]
)

# One row per endpoint-window: the features' tail probabilities combined into one ranked verdict
# (see detectors/verdict.py); `scores/` keeps the per-feature rows.
VERDICTS = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("key_kind", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("window_start", TIMESTAMP, nullable=False),
        pa.field("window_end", TIMESTAMP, nullable=False),
        pa.field("records", pa.int64()),
        pa.field("detector", pa.string(), nullable=False),  # the endpoint's own detector
        pa.field("status", pa.string(), nullable=False),  # alarm | normal | unjudged
        pa.field("reason", pa.string()),  # why unjudged: too_few_records | no_model
        pa.field("allowed", pa.bool_(), nullable=False),  # an alarm the allow-list suppresses
        pa.field("p_value", pa.float64()),  # combined tail probability: the harmonic rule against the population (verdict)
        # max(-log10 p_value, the hunt finding's level): finite, larger is more anomalous (detectors.verdict)
        pa.field("score", pa.float64()),
        pa.field("features_fired", pa.list_(pa.string()), nullable=False),  # most significant first
        pa.field("evidence", pa.list_(pa.struct([
            pa.field("feature", pa.string()),
            pa.field("fired", pa.bool_()),
            pa.field("value", pa.float64()),
            pa.field("expected", pa.float64()),  # the population median
            pa.field("threshold", pa.float64()),  # the value the feature had to exceed
            pa.field("p_value", pa.float64()),  # uncorrected
            pa.field("judged_by", pa.string()),  # population | own history
        ])), nullable=False),
        # The strongest hunt finding over the window's records (beamlytics.hunts.marks), if any.
        pa.field("hunt", pa.string()),  # beacon | long | strobe | vertical_scan | horizontal_scan | dns_tunnel
        pa.field("hunt_score", pa.float64()),  # the finding's score in [0, 1]; at 0.5 (RITA "low") it alarms
        pa.field("hunt_evidence", pa.string()),  # the finding's sentence
    ]
)

# One value among an incident's records and how often it occurs: records for a peer, name or
# port; distinct names under it for a domain.
_VALUE_COUNT = pa.struct([pa.field("value", pa.string()), pa.field("count", pa.int64())])

# One row per incident: consecutive or overlapping reported verdicts (alarms not allowed) of one endpoint.
INCIDENTS = pa.schema(
    [
        pa.field("incident_id", pa.string(), nullable=False),  # hash of table|key_kind|key|start
        pa.field("rank", pa.int64(), nullable=False),  # 1 = highest peak verdict score
        pa.field("table", pa.string(), nullable=False),
        pa.field("key_kind", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("start", TIMESTAMP, nullable=False),  # start of the first anomalous window
        pa.field("end", TIMESTAMP, nullable=False),  # end of the last one
        pa.field("windows", pa.int64(), nullable=False),  # reported windows merged
        pa.field("window_seconds", pa.float64(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("peak_score", pa.float64()),  # the best verdict score of its windows
        pa.field("peak_feature", pa.string(), nullable=False),
        pa.field("peak_window_start", TIMESTAMP, nullable=False),
        pa.field("features_fired", pa.list_(pa.string()), nullable=False),
        # Per feature: the most extreme window value in the incident, the usual value, and for a fired
        # feature the alarm level its verdict had to exceed, in the feature's units (else null).
        pa.field("measures", pa.list_(pa.struct([
            pa.field("feature", pa.string()),
            pa.field("fired", pa.bool_()),
            pa.field("peak", pa.float64()),
            pa.field("usual", pa.float64()),
            pa.field("threshold", pa.float64()),
        ])), nullable=False),
        pa.field("usual_from", pa.string(), nullable=False),  # own history | population median | none
        pa.field("records", pa.int64()),  # records of the endpoint in [start, end); null if unreadable
        pa.field("distinct_peers", pa.int64()),
        pa.field("distinct_names", pa.int64()),
        # False when more distinct values came than are tracked: the distinct counts are lower bounds.
        pa.field("distinct_exact", pa.bool_()),
        pa.field("top_peers", pa.list_(_VALUE_COUNT)),
        pa.field("top_names", pa.list_(_VALUE_COUNT)),
        pa.field("top_ports", pa.list_(_VALUE_COUNT)),
        pa.field("top_domains", pa.list_(_VALUE_COUNT)),  # parent domains (last two labels) of the names
        # Where the records are: per source file, the first and last position and how many.
        pa.field("record_files", pa.list_(pa.struct([
            pa.field("source_file", pa.string()),
            pa.field("first_pos", pa.int64()),
            pa.field("last_pos", pa.int64()),
            pa.field("records", pa.int64()),
        ]))),
        pa.field("evidence", pa.string(), nullable=False),  # what happened and why, in words
    ]
)

FLAG_ORDER = ("QR", "AA", "TC", "RD", "RA", "Z", "AD", "CD")

# RFC 1035 / IANA DNS parameters, so every source renders codes the same way.
TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR",
    36: "KX", 37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP",
    45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3",
    51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS", 60: "CDNSKEY",
    61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 99: "SPF",
    249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY",
    256: "URI", 257: "CAA",
}
CLASS_NAMES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}


def type_name(code: int) -> str:
    """Mnemonic of a DNS RR type; RFC 3597 `TYPEnnn` for types without one."""
    return TYPE_NAMES.get(code, f"TYPE{code}")


def class_name(code: int) -> str:
    return CLASS_NAMES.get(code, f"CLASS{code}")


def rcode_name(code: int) -> str:
    return RCODE_NAMES.get(code, f"RCODE{code}")


def flags_string(flags: Iterable[str]) -> str:
    """Render a set of DNS header flags in the one canonical order."""
    present = set(flags)
    return " ".join(flag for flag in FLAG_ORDER if flag in present)


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def batch_from_columns(schema: pa.Schema, columns: Mapping[str, Any], num_rows: int) -> pa.RecordBatch:
    """Build a batch of `schema` from whichever columns a source has; the rest are null.

    Values may be Python lists or Arrow arrays. Timestamps may be given as
    `pa.timestamp("us", tz="UTC")` arrays or as integer microseconds since the epoch.
    """
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise KeyError(f"columns not in schema: {sorted(unknown)}")
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        if values is None:
            arrays.append(pa.nulls(num_rows, field.type))
        elif isinstance(values, (pa.Array, pa.ChunkedArray)):
            arrays.append(values if values.type == field.type else values.cast(field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
