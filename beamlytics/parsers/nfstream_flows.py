"""Captures read by nfstream itself (`--format nfstream`): `named_flows` rows with nDPI's application names.

nfstream (the `nfstream` extra) meters the capture with its own flow table and nDPI, and each of its
flows becomes one row: `c_*` is nfstream's `src` (the sender of the flow's first packet), `s_*` its
`dst`; packets and bytes each way at the IP level (`accounting_mode=1`, as `--format pcap` counts);
times are nfstream's, whole milliseconds; `tcp_flags` from its per-direction flag counts
(`statistical_analysis`); `name` is nDPI's requested server name (TLS SNI, HTTP Host, DNS query, ...,
`name_source` "ndpi"); `application` and `application_category` are nDPI's (`TLS.YouTube`, `Media`;
`Unknown` where nDPI found nothing). `conn_state` stays null: Zeek's states need to know which side sent
payload, which nfstream does not report, and it is not guessed.

nfstream reads a local file, so the (decompressed) stream is copied to a temporary file first. On the
way our own capture reader frames the same records, because nfstream stops silently where a capture is
damaged (libpcap stops, or reads on out of step): the first damaged record is dead-lettered, saying that
nfstream's flows past it are incomplete. A file nfstream
refuses (its reason), a capture with IP packets of which nfstream made no flow (a link type it does not
decode), and a missing nfstream each give one whole-file dead letter; nothing raises.

The input unit is one nfstream flow (`source_pos` is its 1-based number in nfstream's output order);
the `Read` count is the flows nfstream delivered.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from typing import Any, BinaryIO, Iterator, Mapping

from beamlytics.parsers import pcap, pcap_flows
from beamlytics.parsers.base import BATCH_ROWS, STREAM_ERRORS, ParseItem, Read, Rejected, RowBuffer
from beamlytics.parsers.packets import Packet, PacketReader, capture_records

FORMAT = "nfstream"
TABLES = {"pcap": frozenset({"named_flows"})}
NAME_SOURCE = "ndpi"
MISSING = "nfstream is not installed: pip install 'beamlytics[nfstream]'"
PAST_DAMAGE = "nfstream (libpcap) does not recover from this: its flows past this record are incomplete"
_COPY_BYTES = 1 << 20
# nfstream's per-direction flag counters, in the letter order of `pcap_flows` (F S R P A U E C).
_FLAGS = (("fin", "F"), ("syn", "S"), ("rst", "R"), ("psh", "P"), ("ack", "A"), ("urg", "U"), ("ece", "E"),
          ("cwr", "C"))


# The captures pcap reads: nfstream is chosen by `--format nfstream`, never by sniffing (see formats.py).
sniff = pcap.sniff


def parse(
    source: str,
    stream: BinaryIO,
    kind: str,
    table: str,
    batch_rows: int = BATCH_ROWS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[ParseItem]:
    if table not in TABLES["pcap"]:
        raise ValueError(f"nfstream feeds {sorted(TABLES['pcap'])}, not {table!r}")
    return _parse(source, stream, batch_rows, options or {})


def _parse(source: str, stream: BinaryIO, batch_rows: int, options: Mapping[str, Any]) -> Iterator[ParseItem]:
    try:
        import nfstream
    except ImportError:
        yield _whole_file(source, MISSING)
        return
    timeouts = _timeouts(options)
    if isinstance(timeouts, str):
        yield _whole_file(source, timeouts)
        return
    with tempfile.TemporaryDirectory(prefix="beamlytics-nfstream-") as folder:
        local = os.path.join(folder, "capture")
        with open(local, "wb") as copy:
            damage = _copy_and_walk(source, stream, copy)
        yield from damage
        flows, failure = 0, None
        buffer = RowBuffer("named_flows", FORMAT, source, batch_rows)
        try:
            streamer = nfstream.NFStreamer(source=local, n_meters=1, accounting_mode=1, statistical_analysis=True,
                                           active_timeout=timeouts[0], idle_timeout=timeouts[1])
            for flow in streamer:
                flows += 1
                buffer.append(flows, **flow_row(flow))
                buffer.add_units()
                batch = buffer.take()
                if batch is not None:
                    yield batch
        except (ValueError, OSError, RuntimeError) as error:  # nfstream's reasons for a file it cannot read
            failure = f"nfstream cannot read this capture: {error}"
        # No flow at all: our reader says whether the capture had IP packets nfstream could have metered.
        ip_packets = _ip_packets(local) if flows == 0 and not failure else 0
    last = buffer.flush()
    if last is not None:
        yield last  # the flows nfstream gave before it failed are kept
    if failure:
        yield _whole_file(source, failure)
    elif ip_packets:
        yield _whole_file(source, f"nfstream made no flow of this capture's {ip_packets} IP packets "
                                  "(a link type it does not decode?); --format pcap reads it")
    yield Read(source, flows)


def _timeouts(options: Mapping[str, Any]) -> tuple[int, int] | str:
    """(active, idle) timeouts in whole seconds, nfstream's only unit, or why they cannot be given to it."""
    values = (float(options.get("active_timeout", pcap_flows.DEFAULT_ACTIVE_TIMEOUT)),
              float(options.get("idle_timeout", pcap_flows.DEFAULT_IDLE_TIMEOUT)))
    if not all(value.is_integer() and value >= 0 for value in values):
        return f"nfstream takes whole seconds as timeouts, not {values[0]:g} / {values[1]:g}"
    return int(values[0]), int(values[1])


def _copy_and_walk(source: str, stream: BinaryIO, copy: BinaryIO) -> list[Rejected]:
    """Copy `stream` to `copy` while our capture reader frames its records: the first damage, if any.

    Framing only, no decoding: a record libpcap cannot frame is where nfstream goes wrong, while a packet
    inside a sound record is nfstream's to judge.
    """
    tee = _Tee(stream, copy)
    damage = [Rejected(source, item.position, f"{item.reason}; {PAST_DAMAGE}", item.excerpt, FORMAT, units=0)
              for item in itertools.islice((item for item in capture_records(source, tee)
                                            if isinstance(item, Rejected)), 1)]
    try:
        shutil.copyfileobj(stream, copy, _COPY_BYTES)  # what the reader left: nfstream is given every byte
    except STREAM_ERRORS:
        pass  # a stream that broke: the reader has said where, and nfstream gets what came before
    return damage


def _ip_packets(path: str) -> int:
    with open(path, "rb") as capture:
        return sum(1 for item in PacketReader(path, capture) if item.__class__ is Packet)


class _Tee:
    """A read-only stream that writes everything read from it to `copy`."""

    def __init__(self, stream: BinaryIO, copy: BinaryIO):
        self._stream = stream
        self._copy = copy

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._copy.write(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def flow_row(flow) -> dict[str, Any]:
    """One nfstream NFlow as `named_flows` values (times in µs, from nfstream's milliseconds)."""
    flags = "".join(letter for name, letter in _FLAGS if getattr(flow, f"bidirectional_{name}_packets"))
    return {
        "c_ip": flow.src_ip, "c_port": flow.src_port, "s_ip": flow.dst_ip, "s_port": flow.dst_port,
        "proto": pcap_flows.proto_name(flow.protocol),
        "name": flow.requested_server_name or None, "name_source": NAME_SOURCE if flow.requested_server_name else None,
        "c_pkt": flow.src2dst_packets, "s_pkt": flow.dst2src_packets,
        "c_bytes": flow.src2dst_bytes, "s_bytes": flow.dst2src_bytes,
        "tcp_flags": flags if flow.protocol == pcap_flows.TCP else None,
        "time_start": flow.bidirectional_first_seen_ms * 1000, "time_end": flow.bidirectional_last_seen_ms * 1000,
        "application": flow.application_name or None, "application_category": flow.application_category_name or None,
    }


def _whole_file(source: str, reason: str) -> Rejected:
    return Rejected(source, 0, reason, "", FORMAT, units=0)
