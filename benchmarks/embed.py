"""Embed an attack's records into benign background records: plain functions, no Beam.

An attack table (beamlytics' `dns` or `named_flows` schema, parsed from a capture or log)
is moved into the background's time span and onto a chosen address, and the union is
written back as Zeek JSON logs, so `beamlytics detect` reads it exactly as it reads any log.

- Times: every attack time moves by one whole-microsecond offset, so the attack's first
  record lands `offset` after the background's first record; gaps inside the attack stay.
- Fields: what the background never sets is unset in the attack too (`fields_like`).
- Addresses: the attacker becomes `target` (a background host, or a new address); every
  other attack address becomes an address of 198.18.0.0/15 (RFC 2544's benchmarking range,
  absent from the background), numbered in sorted order, so victims never merge with
  background hosts and the mapping is the same on every run.
- Aliases: the attacker's other addresses in a capture (its IPv6 link-local beside its IPv4
  lease: the same network interface, `capture_aliases`) are placed like any other address,
  so a detector keyed by address still sees two keys; the metrics count both as the
  attacker (`placed_aliases` says where they went).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.parsers import packets
from beamlytics.parsers.base import Batch, Rejected, decompressed
from beamlytics.parsers.formats import parse_paths

VICTIM_NETWORK = ipaddress.ip_network("198.18.0.0/15")
ADDRESS_COLUMNS = ("c_ip", "s_ip")
TIME_COLUMNS = {"dns": ("req_time", "resp_time"), "named_flows": ("time_start", "time_end")}


@dataclass(frozen=True)
class Parsed:
    table: pa.Table
    rejected: int


def parse_table(paths: list[str], table: str) -> Parsed:
    """Every record of `paths` for `table`, with beamlytics' own parsers; rejections counted."""
    batches, rejected = [], 0
    for item in parse_paths(paths, table):
        if isinstance(item, Batch) and item.records.num_rows:
            batches.append(item.records)
        elif isinstance(item, Rejected):
            rejected += 1
    schema = schemas.TABLES[table]
    return Parsed(pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table(), rejected)


def time_span(table: pa.Table, kind: str) -> tuple[int, int]:
    """First and last event time of `table`, in epoch microseconds."""
    micros = pc.cast(table[schemas.EVENT_TIME_COLUMN[kind]], pa.int64())
    return pc.min(micros).as_py(), pc.max(micros).as_py()


def shift_times(table: pa.Table, kind: str, offset_us: int) -> pa.Table:
    """`table` with every time column moved by `offset_us` microseconds."""
    for column in TIME_COLUMNS[kind]:
        index = table.schema.get_field_index(column)
        micros = pc.add(pc.cast(table[column], pa.int64()), offset_us)
        table = table.set_column(index, table.schema.field(index), pc.cast(micros, schemas.TIMESTAMP))
    return table


def address_map(table: pa.Table, attacker: str, target: str) -> dict[str, str]:
    """attacker → target; every other address of `table` → the next address of VICTIM_NETWORK."""
    others = set()
    for column in ADDRESS_COLUMNS:
        others.update(value for value in table[column].to_pylist() if value is not None)
    others.discard(attacker)
    mapping = {attacker: target}
    for number, address in enumerate(sorted(others), start=1):
        mapping[address] = str(VICTIM_NETWORK[number])
    return mapping


def remap_addresses(table: pa.Table, mapping: dict[str, str]) -> pa.Table:
    for column in ADDRESS_COLUMNS:
        index = table.schema.get_field_index(column)
        values = [None if value is None else mapping[value] for value in table[column].to_pylist()]
        table = table.set_column(index, table.schema.field(index), pa.array(values, pa.string()))
    return table


def fields_like(attack: pa.Table, background: pa.Table) -> pa.Table:
    """The attack with every field the background never sets made null too, and no flow
    length where the background's flows have none.

    A field known only for the attacker (bytes, packets, connection state, when the
    background's flows come from ssl.log) would be a giveaway no real network offers.
    """
    for index, field in enumerate(attack.schema):
        if background[field.name].null_count == background.num_rows and attack[field.name].null_count < attack.num_rows:
            attack = attack.set_column(index, field, pa.nulls(attack.num_rows, field.type))
    if "time_end" in attack.column_names and pc.all(pc.equal(background["time_end"], background["time_start"])).as_py():
        # Flows of unknown length end where they start: the attack's lengths are unknown too.
        attack = attack.set_column(attack.schema.get_field_index("time_end"), "time_end", attack["time_start"])
    return attack


def place_attack(attack: pa.Table, kind: str, attacker: str, target: str, start_us: int) -> pa.Table:
    """The attack moved so its first record is at `start_us`, the attacker renamed `target`."""
    attack_start, _ = time_span(attack, kind)
    moved = shift_times(attack, kind, start_us - attack_start)
    return remap_addresses(moved, address_map(attack, attacker, target))


def placed_aliases(attack: pa.Table, attacker: str, aliases: Iterable[str]) -> dict[str, str]:
    """alias → the address `place_attack` gives it, for those of `aliases` that `attack` holds (whatever the
    target: the other addresses are numbered without it)."""
    mapping = address_map(attack, attacker, attacker)
    return {alias: mapping[alias] for alias in aliases if alias in mapping}


# --- the attacker's aliases in a capture ----------------------------------------------------

# An interface's own addresses in practice: an IPv4 lease, an IPv4 or IPv6 link-local, a global IPv6 or a
# container bridge's. A MAC sending for more carries other hosts' traffic (a router, a gateway): its
# addresses are not one host's.
MAX_INTERFACE_ADDRESSES = 4
_ETHERNET = 1
_BROADCAST = ipaddress.ip_address("255.255.255.255")


def sources_by_mac(path: str) -> dict[str, set[str]] | None:
    """The outer IP source addresses of a capture's Ethernet frames, by the frames' source MAC (as
    aa:bb:cc:dd:ee:ff); None when `path` is not a capture (a log: no link layer). Damaged records and frames of
    other link types are passed over: this only names addresses, it parses no records."""
    with open(path, "rb") as raw:
        stream = decompressed(raw)
        if packets.capture_format(stream.peek(12)[:12]) is None:
            return None
        sources: dict[str, set[str]] = {}
        for record in packets.capture_records(path, stream):
            if isinstance(record, Rejected) or record[2] != _ETHERNET:
                continue
            source = _ip_source(record[3])
            if source is not None:
                sources.setdefault(record[3][6:12].hex(":"), set()).add(source)
    return sources


def _ip_source(frame: bytes) -> str | None:
    """The IP source address of an Ethernet frame, its datagram found as beamlytics' packet decoder finds it (after
    any VLAN tags); None for other payloads (ARP, LLDP...) and for a frame cut short."""
    try:
        start = packets.network_start(_ETHERNET, frame)
    except packets.BadPacket:
        return None
    if start is None:
        return None
    ethertype, offset = start
    if ethertype == packets.ETH_IPV4 and len(frame) >= offset + 20 and frame[offset] >> 4 == 4:
        return packets.address_text(frame[offset + 12:offset + 16])
    if ethertype == packets.ETH_IPV6 and len(frame) >= offset + 40 and frame[offset] >> 4 == 6:
        return packets.address_text(frame[offset + 8:offset + 24])
    return None


def aliases_of(sources: dict[str, set[str]], attacker: str) -> tuple[str, ...]:
    """The attacker's other addresses, sorted: those its MACs (every MAC sending as `attacker`) send as too,
    leaving out addresses no one host owns (unspecified, broadcast, multicast) and every MAC sending for more
    than MAX_INTERFACE_ADDRESSES of the rest (a gateway's: an attacker behind it has no aliases there)."""
    aliases: set[str] = set()
    for addresses in sources.values():
        own = {address for address in addresses if not _shared(address)}
        if attacker in own and len(own) <= MAX_INTERFACE_ADDRESSES:
            aliases |= own
    aliases.discard(attacker)
    return tuple(sorted(aliases))


def _shared(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_unspecified or ip.is_multicast or ip == _BROADCAST


def capture_aliases(path: str, attacker: str) -> tuple[str, ...] | None:
    """`aliases_of` the capture at `path`; None for a log, which has no link layer to tell them by."""
    sources = sources_by_mac(path)
    return None if sources is None else aliases_of(sources, attacker)


def new_address(background: pa.Table, network: str = "10.250.0.0/16") -> str:
    """The first host address of `network` the background never uses: a host with no history."""
    used = set()
    for column in ADDRESS_COLUMNS:
        used.update(background[column].to_pylist())
    return next(str(host) for host in ipaddress.ip_network(network).hosts() if str(host) not in used)


def clean_history_host(background: pa.Table, kind: str, before_us: int, window_us: int,
                       alarmed: set[str]) -> str:
    """The client with the most active windows before `before_us` that no detector alarmed on.

    Ties go to the smaller address, so the choice is the same on every run.
    """
    micros = pc.cast(background[schemas.EVENT_TIME_COLUMN[kind]], pa.int64()).to_numpy()
    clients = np.asarray(background["c_ip"].to_pylist(), dtype=object)
    history = micros < before_us
    windows: dict[str, set[int]] = {}
    for client, start in zip(clients[history], micros[history] // window_us):
        windows.setdefault(client, set()).add(int(start))
    candidates = [(-len(starts), client) for client, starts in windows.items() if client not in alarmed]
    return min(candidates)[1]


# --- Zeek JSON -----------------------------------------------------------------------------

_CODES = {
    "req_class": {name: code for code, name in schemas.CLASS_NAMES.items()},
    "req_type": {name: code for code, name in schemas.TYPE_NAMES.items()},
    "resp_code": {name: code for code, name in schemas.RCODE_NAMES.items()},
}
_NUMERIC_PREFIX = {"req_class": "CLASS", "req_type": "TYPE", "resp_code": "RCODE"}


def _code(column: str, name: str | None) -> int | None:
    if name is None:
        return None
    known = _CODES[column].get(name)
    return known if known is not None else int(name.removeprefix(_NUMERIC_PREFIX[column]))


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else round(value.timestamp(), 6)


def _without_nulls(record: dict) -> str:
    # Zeek's JSON writer leaves unset fields out; sorted keys keep the bytes the same every run.
    return json.dumps({name: value for name, value in record.items() if value is not None}, sort_keys=True)


def dns_zeek_json(table: pa.Table) -> Iterator[str]:
    """One Zeek dns.log JSON line per row of a `dns` table, in event-time order."""
    for row in _sorted_rows(table, "dns"):
        flags = set((row["flags"] or "").split())
        rtt = None if row["resp_time"] is None else round((row["resp_time"] - row["req_time"]).total_seconds(), 6)
        yield _without_nulls({
            **_zeek_endpoints(row), "ts": _epoch(row["req_time"]), "uid": row["uid"], "proto": row["proto"],
            "trans_id": row["trans_id"], "query": row["query"], "rtt": rtt,
            "qclass": _code("req_class", row["req_class"]), "qtype": _code("req_type", row["req_type"]),
            "rcode": _code("resp_code", row["resp_code"]),
            **({flag: flag in flags for flag in ("AA", "TC", "RD", "RA")} if row["flags"] is not None else {}),
            "answers": row["answers"], "TTLs": None if row["answer_ttls"] is None else [float(t) for t in row["answer_ttls"]],
        })


def conn_zeek_json(table: pa.Table) -> Iterator[str]:
    """One Zeek conn.log JSON line per row of a `named_flows` table, in event-time order."""
    for row in _sorted_rows(table, "named_flows"):
        duration = (row["time_end"] - row["time_start"]).total_seconds() if row["time_end"] else None
        yield _without_nulls({
            **_zeek_endpoints(row), "ts": _epoch(row["time_start"]), "proto": row["proto"],
            # Flows built from captures have no Zeek uid; the capture position names them.
            "uid": row["uid"] or f"P{row['source_pos']}",
            "duration": None if duration is None else round(duration, 6), "conn_state": row["conn_state"],
            "orig_pkts": row["c_pkt"], "resp_pkts": row["s_pkt"],
            "orig_ip_bytes": row["c_bytes"], "resp_ip_bytes": row["s_bytes"],
        })


def _zeek_endpoints(row: dict) -> dict:
    return {"id.orig_h": row["c_ip"], "id.orig_p": row["c_port"], "id.resp_h": row["s_ip"], "id.resp_p": row["s_port"]}


def _sorted_rows(table: pa.Table, kind: str) -> Iterable[dict]:
    order = pc.sort_indices(table, sort_keys=[(schemas.EVENT_TIME_COLUMN[kind], "ascending"),
                                              ("source_file", "ascending"), ("source_pos", "ascending")])
    return table.take(order).to_pylist()


ZEEK_WRITERS = {"dns": ("dns.log", dns_zeek_json), "named_flows": ("conn.log", conn_zeek_json)}


def write_zeek(table: pa.Table, kind: str, folder: str) -> str:
    """`table` as a Zeek JSON log in `folder` (dns.log or conn.log); its path."""
    name, lines = ZEEK_WRITERS[kind]
    path = f"{folder}/{name}"
    with open(path, "w", encoding="utf-8") as out:
        for line in lines(table):
            out.write(line + "\n")
    return path
