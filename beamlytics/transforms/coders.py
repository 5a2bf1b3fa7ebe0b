"""The coder of elements that hold Arrow tables: pickled as before, sized without being encoded.

Beam estimates the mean byte size of every PCollection by encoding a sample of its elements (the
first ten of each output of a bundle, then about ten per doubling): with `PickleCoder`, the default
for untyped elements, that pickles whole record batches, partials and shard results, most of which
never leave the step that made them (at 4 M records 1.86 of 2.53 CPU s of pickling; docs/benchmarks.md).
Typed with one of `ARROW_ELEMENTS` (or `transforms.score.ShardResult`), a PCollection encodes exactly
as before and its size sample adds up its Arrow tables' bytes instead.
"""
from __future__ import annotations

import dataclasses
import pickle

import pyarrow as pa
from apache_beam import coders, typehints

from beamlytics.features import WindowPartials

_SMALL = 8  # a scalar's share of an estimate: ints, strings and the like beside tables of megabytes


def arrow_size(value) -> int:
    """About how many bytes `value` holds: its Arrow tables' and batches' rows (`nbytes`: a slice's own, not
    its whole buffers'), walked through dataclasses, tuples, lists and dicts."""
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        return value.nbytes
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (tuple, list)):
        return sum(arrow_size(item) for item in value)
    if isinstance(value, dict):
        return sum(arrow_size(item) for item in value.values())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(arrow_size(getattr(value, field.name)) for field in dataclasses.fields(value))
    return _SMALL


class ArrowElementCoder(coders.Coder):
    """`PickleCoder`'s bytes (the same protocol), with `arrow_size` as the size estimate."""

    def encode(self, value) -> bytes:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes):
        return pickle.loads(encoded)

    def estimate_size(self, value) -> int:
        return arrow_size(value)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return typehints.Any

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


ARROW_ELEMENTS = (pa.Table, pa.RecordBatch, WindowPartials)
for _type in ARROW_ELEMENTS:
    coders.registry.register_coder(_type, ArrowElementCoder)
