"""Follow Kafka topics of Zeek JSON records (the zeek-kafka plugin's format: one JSON object per message).

Topics are either one per log (`zeek-dns`, `dns`: the kind is in the name) or one for all
logs, each record saying its kind in `_path`. The position of every partition is plain data
(`state()`): the splittable DoFn carries it in its restriction, so a checkpointed run resumes
from it, and `start` says where a new run begins.
"""
from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from beamlytics.live.chunks import Chunk
from beamlytics.parsers import zeek
from beamlytics.parsers.base import Rejected, excerpt

STARTS = ("earliest", "latest")
# Records fetched per poll: bounded memory, however far behind the run is.
POLL_RECORDS = 20_000
_KIND_IN_TOPIC = re.compile(r"(?:^|[^a-z])(dns|http|conn|ssl)(?:[^a-z]|$)")


def _kind_of_topic(topic: str) -> str | None:
    found = _KIND_IN_TOPIC.search(topic.lower())
    return found.group(1) if found else None


def _kind_of_record(value: bytes) -> str | None:
    try:
        record = json.loads(value)
    except ValueError:
        return None
    kind = record.get("_path") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) else None


@dataclass(frozen=True)
class KafkaSpec:
    """Where to read: brokers, topics, and where a run without positions starts."""

    bootstrap: str
    topics: tuple[str, ...]
    start: str = "earliest"
    client_options: tuple[tuple[str, object], ...] = ()  # (name, value) of kafka-python consumer settings


class KafkaFollower:
    """Polls the partitions of `spec.topics` for records of logs feeding `table`."""

    def __init__(self, spec: KafkaSpec, table: str, state: dict | None = None, poll_records: int = POLL_RECORDS):
        from kafka import KafkaConsumer  # the `live` extra: only a Kafka run needs it

        self.spec = spec
        self.table = table
        self.poll_records = poll_records
        self.positions: dict[str, int] = dict((state or {}).get("partitions", {}))
        # No group: partitions are assigned by us and positions kept by us (in the restriction), so a
        # consumer group's rebalancing can never move a position behind the pipeline's back.
        self.consumer = KafkaConsumer(bootstrap_servers=spec.bootstrap, enable_auto_commit=False, group_id=None,
                                      max_poll_records=poll_records, **dict(spec.client_options))
        self._assigned: set[str] = set()

    def state(self) -> dict:
        return {"partitions": dict(sorted(self.positions.items()))}

    def _assign(self) -> None:
        from kafka import TopicPartition

        partitions = []
        for topic in self.spec.topics:
            for number in sorted(self.consumer.partitions_for_topic(topic) or ()):
                partitions.append(TopicPartition(topic, number))
        names = {f"{p.topic}/{p.partition}" for p in partitions}
        if names == self._assigned:
            return
        self.consumer.assign(partitions)
        fresh = [p for p in partitions if f"{p.topic}/{p.partition}" not in self.positions]
        if fresh:
            first = (self.consumer.beginning_offsets if self.spec.start == "earliest" else
                     self.consumer.end_offsets)(fresh)
            for partition in fresh:
                self.positions[f"{partition.topic}/{partition.partition}"] = first[partition]
        for partition in partitions:
            self.consumer.seek(partition, self.positions[f"{partition.topic}/{partition.partition}"])
        self._assigned = names

    def poll(self, timeout_ms: int = 500) -> tuple[list[Chunk], list[Rejected]]:
        """Records since the last poll: a chunk per (partition, kind), in offset order."""
        self._assign()
        fetched = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.poll_records)
        chunks, rejected = [], []
        for partition in sorted(fetched, key=lambda p: (p.topic, p.partition)):
            source = f"kafka://{partition.topic}/{partition.partition}"
            by_kind: dict[str, tuple[list[bytes], list[int]]] = {}
            topic_kind = _kind_of_topic(partition.topic)
            for record in fetched[partition]:
                value = record.value or b""
                kind = topic_kind or _kind_of_record(value)
                if b"\n" in value.strip():
                    rejected.append(Rejected(source, record.offset, "a message holds more than one line",
                                             excerpt(value), zeek.FORMAT))
                elif kind is None:
                    rejected.append(Rejected(source, record.offset, "no log kind: neither the topic name nor "
                                             "`_path` says which Zeek log it is", excerpt(value), zeek.FORMAT))
                elif self.table in zeek.TABLES.get(kind, ()):
                    lines, offsets = by_kind.setdefault(kind, ([], []))
                    lines.append(value.strip() + b"\n")
                    offsets.append(record.offset)
                # Records of other logs (conn, ssl, ... for the dns table) are not this run's input.
            for kind, (lines, offsets) in sorted(by_kind.items()):
                chunks.append(Chunk(source, kind, b"".join(lines), tuple(offsets)))
            if fetched[partition]:
                self.positions[f"{partition.topic}/{partition.partition}"] = fetched[partition][-1].offset + 1
        return chunks, rejected

    def caught_up(self) -> bool:
        """Whether every partition has been read to its end offset."""
        from kafka import TopicPartition

        self._assign()
        partitions = [TopicPartition(topic, int(number))
                      for topic, number in (name.rsplit("/", 1) for name in sorted(self._assigned))]
        ends = self.consumer.end_offsets(partitions)
        return all(self.positions[f"{p.topic}/{p.partition}"] >= ends[p] for p in partitions)

    def close(self) -> None:
        self.consumer.close()


def topics_from(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({name for names_ in names for name in names_.split(",") if name}))


def anomaly_messages(reported: pa.Table) -> list[tuple[bytes, bytes]]:
    """Reported anomaly rows (`schemas.ANOMALIES`) → (key, value) Kafka messages, one per row, sorted by key.

    The key names the endpoint, window and feature (`table|key_kind|key|window_start|feature`, the time in
    µs since the epoch): the same anomaly sent again by a restarted run has the same key and the same bytes,
    so a consumer keeping the last value per key sees each anomaly once. The value is the row as JSON, times
    as ISO 8601 UTC, `evidence` and `params` as objects.
    """
    messages = []
    for row in reported.to_pylist():
        start_us = _micros(row["window_start"])
        key = f"{row['table']}|{row['key_kind']}|{row['key']}|{start_us}|{row['feature']}"
        document = {**{name: _finite(value) for name, value in row.items()}, "window_start": _iso(row["window_start"]), "window_end": _iso(row["window_end"]),
                    "evidence": json.loads(row["evidence"]) if row["evidence"] else None,
                    "params": json.loads(row["params"]) if row["params"] else None}
        value = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
        messages.append((key.encode("utf-8"), value.encode("utf-8")))
    return sorted(messages)


def _finite(value):
    """JSON has no NaN: a measure that is not a number is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _micros(moment: datetime.datetime) -> int:
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
