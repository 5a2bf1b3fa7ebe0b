"""Packet captures (pcap, pcapng) as a parser format: the `pcap` kind feeds dns, http and
named_flows.

Every table is built from the same packet stream (`packets.iter_packets`); the table
modules only see decoded packets, so link layers, fragments and broken files are handled
in one place and every capture record is counted once, whichever table is asked for. The
packet reader's own count of the records it delivered comes last, as a `Read`.
"""
from __future__ import annotations

from typing import Any, BinaryIO, Iterator, Mapping

from beamlytics.parsers import pcap_dns, pcap_flows, pcap_http
from beamlytics.parsers.base import BATCH_ROWS, ParseItem, Read
from beamlytics.parsers.packets import PacketReader, capture_format

FORMAT = "pcap"
TABLES = {"pcap": frozenset({"dns", "http", "named_flows"})}

_BUILDERS = {
    "dns": pcap_dns.dns_from_packets,
    "http": pcap_http.http_from_packets,
    "named_flows": pcap_flows.flows_from_packets,
}


def sniff(name: str, head: bytes) -> str | None:
    """"pcap" for a pcap (any magic number: µs/ns, either byte order) or pcapng capture."""
    return "pcap" if capture_format(head) else None


def parse(
    source: str,
    stream: BinaryIO,
    kind: str,
    table: str,
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[ParseItem]:
    if table not in TABLES["pcap"]:
        raise ValueError(f"captures feed {sorted(TABLES['pcap'])}, not {table!r}")
    return _parse_table(source, stream, table, batch_rows, options)


def _parse_table(source: str, stream: BinaryIO, table: str, batch_rows: int, options: Mapping[str, Any] | None
                 ) -> Iterator[ParseItem]:
    reader = PacketReader(source, stream)
    yield from _BUILDERS[table](source, iter(reader), batch_rows, options)
    yield Read(source, reader.delivered)
