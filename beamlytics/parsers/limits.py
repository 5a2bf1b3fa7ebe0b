"""Bounds that keep hostile input from costing unbounded time or memory.

* `RatioLimitedStream`: a decompressed stream that fails, like a damaged one, once it has
  produced far more than its compressed size could honestly hold (a decompression bomb).
  Readers turn that failure into a dead letter for the rest of the file.
* `DeadLetterLimit`: the first `per_reason` dead letters of each kind of reason in a file
  are listed; the rest are counted in one dead letter per reason, so a file of millions of
  bad lines costs a few thousand rows, and no unit goes uncounted. A file read as byte ranges
  is limited per range first (each range's memory stays bounded), then `merge_ranges` makes
  the file's list what one read of it would list.
"""
from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Iterable

from beamlytics.options_catalog import MAX_DECOMPRESSION_RATIO
from beamlytics.parsers.base import Rejected, decompressed

FREE_BYTES = 64 << 20
DEAD_LETTERS_PER_REASON = 1000


class DecompressionLimitError(ValueError):
    """Raised by `RatioLimitedStream`; a ValueError, so readers treat it as a broken stream."""


class RatioLimitedStream(io.BufferedIOBase):
    """`decompressor`'s output, failing once it outgrows `max_ratio` times the bytes it consumed
    from `compressed` (beyond the first `free_bytes`)."""

    def __init__(self, decompressor: BinaryIO, compressed: BinaryIO, max_ratio: float = MAX_DECOMPRESSION_RATIO,
                 free_bytes: int = FREE_BYTES):
        super().__init__()
        self._inner = decompressor
        self._compressed = compressed
        self._max_ratio = max_ratio
        self._free_bytes = free_bytes
        self._produced = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._counted(self._inner.read(size))

    def read1(self, size: int = -1) -> bytes:
        return self._counted(self._inner.read1(size))

    def readinto(self, buffer) -> int:
        return self._checked(self._inner.readinto(buffer))

    def readinto1(self, buffer) -> int:
        return self._checked(self._inner.readinto1(buffer))

    def close(self) -> None:
        self._inner.close()
        super().close()

    def _counted(self, data: bytes) -> bytes:
        self._checked(len(data))
        return data

    def _checked(self, count: int) -> int:
        self._produced += count or 0
        if self._produced > self._free_bytes:
            consumed = max(self._compressed.tell(), 1)
            if self._produced > self._max_ratio * consumed:
                raise DecompressionLimitError(
                    f"decompressed size over {self._max_ratio:g} times the compressed size "
                    f"({self._produced} bytes from {consumed}): a decompression bomb? "
                    "raise --max-decompression-ratio to read it")
        return count


def bounded_decompressed(raw: BinaryIO, max_ratio: float = MAX_DECOMPRESSION_RATIO) -> BinaryIO:
    """`base.decompressed(raw)`, limited to `max_ratio` when it is compressed."""
    stream = decompressed(raw)
    return stream if isinstance(stream, io.BufferedReader) else RatioLimitedStream(stream, raw, max_ratio)


def reason_kind(reason: str) -> str:
    """What dead letters are grouped by: the reason before its first colon, numbers as N."""
    return re.sub(r"\d+", "N", reason.split(":", 1)[0]).strip()


@dataclass
class _Overflow:
    first: Rejected
    units: int = 0
    count: int = 0


@dataclass(frozen=True)
class Overflowed(Rejected):
    """The dead letter standing for the `count` unlisted ones of a reason kind; where and what the first was."""

    count: int = 0


def overflowed(kind: str, first: Rejected, count: int, units: int, per_reason: int) -> Overflowed:
    reason = (f"{kind}: {count} more dead letters of this kind not listed "
              f"(the first at position {first.position}; {per_reason} listed)")
    return Overflowed(first.source, first.position, reason, first.excerpt, first.source_tool, units, count)


def merge_ranges(dead: Iterable[Rejected], per_reason: int = DEAD_LETTERS_PER_REASON) -> list[Rejected]:
    """The dead letters of one reason kind of one file, from its ranges each limited on its own (listed ones
    and `Overflowed`, in any order), as `DeadLetterLimit` over the whole file gives them.

    Every one of the file's first `per_reason` is listed by its own range, and so is the first one
    after them unless its range's `Overflowed` names it: positions being file-absolute, sorting
    the listed ones and taking the earliest unlisted one is enough.
    """
    listed, overflows = [], []
    for item in dead:
        (overflows if isinstance(item, Overflowed) else listed).append(item)
    listed.sort(key=lambda item: (item.position, item.reason, item.excerpt, item.units))
    kept, spilled = listed[:per_reason], listed[per_reason:]
    if not spilled and not overflows:
        return kept
    first = min([*spilled, *overflows], key=lambda item: (item.position, isinstance(item, Overflowed)))
    count = len(spilled) + sum(item.count for item in overflows)
    units = sum(item.units for item in spilled) + sum(item.units for item in overflows)
    return [*kept, overflowed(reason_kind(first.reason), first, count, units, per_reason)]


class DeadLetterLimit:
    """Lists the first `per_reason` dead letters of each reason kind; counts the rest."""

    def __init__(self, per_reason: int = DEAD_LETTERS_PER_REASON):
        self.per_reason = per_reason
        self._listed: dict[str, int] = {}
        self._overflow: dict[str, _Overflow] = {}

    def admit(self, rejected: Rejected) -> bool:
        """Whether to list `rejected`; otherwise it is counted in `rest`."""
        kind = reason_kind(rejected.reason)
        listed = self._listed.get(kind, 0)
        if listed < self.per_reason:
            self._listed[kind] = listed + 1
            return True
        overflow = self._overflow.setdefault(kind, _Overflow(rejected))
        overflow.units += rejected.units
        overflow.count += 1
        return False

    def rest(self) -> Iterator[Rejected]:
        """One dead letter per reason kind that overflowed, standing for every unlisted one."""
        for kind, overflow in self._overflow.items():
            yield overflowed(kind, overflow.first, overflow.count, overflow.units, self.per_reason)
