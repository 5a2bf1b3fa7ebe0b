"""Event time of a live source: the watermark it promises, and which records came too late for it.

The watermark trails the newest event time seen by the allowed lateness: a record up to that
much older than the newest is still on time, and its window waits for it, so out-of-order
records within the lateness are scored exactly as if they had come in order. A record older
than the watermark would land in a window that may already be closed: it is set apart as a
dead letter and counted, never dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.parsers.base import Rejected


@dataclass
class EventClock:
    allowed_lateness_us: int
    newest_us: int | None = None  # the newest event time seen on time, by the polls ended
    _arriving_us: int | None = None  # the newest of the poll under way

    @property
    def watermark_us(self) -> int | None:
        return None if self.newest_us is None else self.newest_us - self.allowed_lateness_us

    def admit(self, batch: pa.RecordBatch, table: str) -> tuple[pa.RecordBatch, list[Rejected]]:
        """The batch's on-time records (and those without a time), and a dead letter for each late one.

        The watermark moves only at `end_poll`: the records of one poll are one arrival, whatever
        their order inside it or the order in which its files were read.
        """
        times = pc.cast(batch.column(schemas.EVENT_TIME_COLUMN[table]), pa.int64())
        watermark = self.watermark_us
        if watermark is None:
            late = np.zeros(batch.num_rows, dtype=bool)
        else:
            late = pc.fill_null(pc.less(times, pa.scalar(watermark, pa.int64())), False).to_numpy(
                zero_copy_only=False)
        on_time = batch.filter(pa.array(~late))
        newest = pc.max(pc.cast(on_time.column(schemas.EVENT_TIME_COLUMN[table]), pa.int64())).as_py()
        if newest is not None and (self._arriving_us is None or newest > self._arriving_us):
            self._arriving_us = newest
        dead = []
        if late.any():
            rows = batch.filter(pa.array(late))
            for time_us, source, position, tool in zip(
                    pc.cast(rows.column(schemas.EVENT_TIME_COLUMN[table]), pa.int64()).to_pylist(),
                    rows.column("source_file").to_pylist(), rows.column("source_pos").to_pylist(),
                    rows.column("source_tool").to_pylist()):
                behind = (watermark - time_us) / 1e6
                dead.append(Rejected(source, position, f"late: event time {behind:.3f} s behind the watermark, "
                                     f"beyond --allowed-lateness {self.allowed_lateness_us / 1e6:g} s",
                                     source_tool=tool))
        return on_time, dead

    def end_poll(self) -> None:
        if self._arriving_us is not None and (self.newest_us is None or self._arriving_us > self.newest_us):
            self.newest_us = self._arriving_us
        self._arriving_us = None
