"""nfstream's post-mortem flow statistics over pcap flows, and a plugin interface for user flow metrics.

`flow_features(source, items, metrics)` runs the same flow table as `pcap_flows.flows_from_packets`
(same flows, same order, same timeouts) and gives one row per flow: its 5-tuple and first/last packet
time (to join with `named_flows`), then each metric's columns. `NFStatistics` is nfstream's
`statistical_analysis=True` set, under nfstream's names:
- packet sizes (IP total length, nfstream's accounting_mode=1): min/mean/stddev/max per direction
  (`src2dst` = client to server, `dst2src`) and both (`bidirectional`);
- packet inter-arrival times in ms, between consecutive packets of the flow (or of the direction):
  min/mean/stddev/max; as in nfstream, times are whole milliseconds (a packet's µs time // 1000), and
  a flow with fewer than two packets has 0 for all four (nfstream's value, not a measurement);
- TCP flag counts: packets carrying SYN, CWR, ECE, URG, ACK, PSH, RST, FIN, per direction and both.
Standard deviations are sample ones (n − 1), 0 below two values, as nfstream's.

A user metric is a `FlowMetric` (nfstream's NFPlugin: `on_init`, `on_update`, `on_expire`) whose state
is per flow and whose `columns` name its output; instances are passed in code, never loaded by name.
The rows are a separate table (`flow_features`, not `named_flows`) so every parser's `named_flows`
output keeps its schema.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

from beamlytics import schemas
from beamlytics.parsers.base import Rejected
from beamlytics.parsers.packets import Packet
from beamlytics.parsers.pcap_flows import expired_flows, flow_table, proto_name

TABLE = "flow_features"
KEY_FIELDS = [
    pa.field("c_ip", pa.string()), pa.field("c_port", pa.int32()), pa.field("s_ip", pa.string()),
    pa.field("s_port", pa.int32()), pa.field("proto", pa.string()),
    pa.field("time_start", schemas.TIMESTAMP), pa.field("time_end", schemas.TIMESTAMP),
]
DIRECTIONS = ("bidirectional", "src2dst", "dst2src")
FLAGS = (("syn", 0x02), ("cwr", 0x80), ("ece", 0x40), ("urg", 0x20), ("ack", 0x10), ("psh", 0x08),
         ("rst", 0x04), ("fin", 0x01))


class FlowMetric(ABC):
    """A user flow metric: one state per flow, told of its first packet, each later one, and its end.

    `from_client` says whether the packet went client to server. `on_expire` returns the flow's
    values, one per entry of `columns` (name → Arrow type), in that order.
    """

    columns: Mapping[str, pa.DataType]

    @abstractmethod
    def on_init(self, packet: Packet, from_client: bool) -> Any: ...

    @abstractmethod
    def on_update(self, state: Any, packet: Packet, from_client: bool) -> None: ...

    @abstractmethod
    def on_expire(self, state: Any) -> Sequence[Any]: ...


class _Summary:
    """Count, min, max and Welford's mean and M2 of a stream of numbers."""

    __slots__ = ("n", "minimum", "maximum", "mean", "m2")

    def __init__(self) -> None:
        self.n = 0
        self.minimum = self.maximum = self.mean = self.m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        if self.n == 1 or x < self.minimum:
            self.minimum = x
        if self.n == 1 or x > self.maximum:
            self.maximum = x
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def values(self) -> tuple[float, float, float, float]:
        stddev = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return self.minimum, self.mean, stddev, self.maximum


class _DirectionState:
    __slots__ = ("sizes", "gaps", "last_ms", "flags")

    def __init__(self) -> None:
        self.sizes = _Summary()
        self.gaps = _Summary()
        self.last_ms: int | None = None
        self.flags = [0] * len(FLAGS)

    def add(self, packet: Packet) -> None:
        now_ms = packet.ts_us // 1000
        self.sizes.add(float(packet.ip_bytes))
        if self.last_ms is not None:
            self.gaps.add(float(now_ms - self.last_ms))
        self.last_ms = now_ms
        for index, (_, bit) in enumerate(FLAGS):
            if packet.tcp_flags & bit:
                self.flags[index] += 1


class NFStatistics(FlowMetric):
    """nfstream's post-mortem statistics (see the module docstring), under nfstream's column names."""

    columns: Mapping[str, pa.DataType] = {
        **{f"{d}_{stat}_ps": pa.float64() for d in DIRECTIONS for stat in ("min", "mean", "stddev", "max")},
        **{f"{d}_{stat}_piat_ms": pa.float64() for d in DIRECTIONS for stat in ("min", "mean", "stddev", "max")},
        **{f"{d}_{flag}_packets": pa.int64() for d in DIRECTIONS for flag, _ in FLAGS},
    }

    def on_init(self, packet: Packet, from_client: bool) -> list[_DirectionState]:
        state = [_DirectionState(), _DirectionState(), _DirectionState()]
        self.on_update(state, packet, from_client)
        return state

    def on_update(self, state: list[_DirectionState], packet: Packet, from_client: bool) -> None:
        state[0].add(packet)
        state[1 if from_client else 2].add(packet)

    def on_expire(self, state: list[_DirectionState]) -> list[Any]:
        sizes = [value for direction in state for value in direction.sizes.values()]
        gaps = [value for direction in state for value in direction.gaps.values()]
        return [*sizes, *gaps, *(count for direction in state for count in direction.flags)]


def features_schema(metrics: Sequence[FlowMetric]) -> pa.Schema:
    fields = list(KEY_FIELDS)
    seen = {field.name for field in fields}
    for metric in metrics:
        for name, kind in metric.columns.items():
            if name in seen:
                raise ValueError(f"flow metric column {name!r} is defined twice")
            seen.add(name)
            fields.append(pa.field(name, kind))
    return pa.schema(fields)


def flow_features(source: str, items: Iterable[Packet | Rejected | None],
                  metrics: Sequence[FlowMetric] = (NFStatistics(),),
                  options: Mapping[str, Any] | None = None) -> Iterator[pa.RecordBatch | Rejected]:
    """One record batch per expiry of flows (the flows of `flows_from_packets`, in its order);
    Rejected items pass through. `options`: `active_timeout`, `idle_timeout` as for flows."""
    metrics = tuple(metrics)
    schema = features_schema(metrics)
    for item in expired_flows(items, flow_table(options, metrics)):
        if item.__class__ is list:
            if item:
                yield pa.RecordBatch.from_pylist([_row(flow, metrics, schema) for flow in item], schema=schema)
        elif item.__class__ is not int:
            yield item


def _row(flow, metrics: Sequence[FlowMetric], schema: pa.Schema) -> dict[str, Any]:
    values: list[Any] = [flow.c_ip, flow.c_port, flow.s_ip, flow.s_port, proto_name(flow.proto),
                         flow.first_us, flow.last_us]
    for metric, state in zip(metrics, flow.metrics or ()):
        produced = list(metric.on_expire(state))
        if len(produced) != len(metric.columns):
            raise ValueError(f"{type(metric).__name__}.on_expire gave {len(produced)} values "
                             f"for {len(metric.columns)} columns")
        values += produced
    return dict(zip(schema.names, values))


def features_of_capture(path: str, metrics: Sequence[FlowMetric] = (NFStatistics(),),
                        options: Mapping[str, Any] | None = None) -> tuple[pa.Table, list[Rejected]]:
    """`flow_features` of a capture file (pcap, pcapng, gzipped or not) as one table, with its dead letters."""
    from beamlytics.parsers import packets

    opener = _open_capture(path)
    batches, rejected = [], []
    with opener as stream:
        for item in flow_features(path, packets.iter_packets(path, stream), metrics, options):
            (rejected if isinstance(item, Rejected) else batches).append(item)
    return pa.Table.from_batches(batches, schema=features_schema(tuple(metrics))), rejected


def _open_capture(path: str):
    import gzip

    return gzip.open(path) if path.endswith(".gz") else open(path, "rb")
