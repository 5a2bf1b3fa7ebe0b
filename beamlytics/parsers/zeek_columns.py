"""Zeek values as Arrow columns: one canonical Arrow type per Zeek type, from either rendering.

`time`/`interval` become int64 microseconds, `count`/`int`/`port` int64, `bool` bool,
strings have Zeek's `\\xHH` escapes undone, and containers become lists of those. TSV columns
arrive as Arrow's CSV reader parsed them (`text_column`), JSON columns as its JSON reader
inferred them (`json_column`); both give the same values for the same record.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MICROS = pa.int64()
_SECONDS_PATTERN = r"^-?[0-9]+(\.[0-9]*)?$"
_INTEGER_PATTERN = r"^-?[0-9]{1,18}$"
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def value_kind(zeek_type: str) -> str:
    """Which canonical Arrow representation a Zeek type gets: micros, int, bool, list or string."""
    if zeek_type in ("time", "interval"):
        return "micros"
    if zeek_type in ("count", "int", "port"):
        return "int"
    if zeek_type == "bool":
        return "bool"
    if zeek_type.startswith(("vector[", "set[", "table[")):
        return "list"
    return "string"


def element_type(zeek_type: str) -> str:
    return zeek_type[zeek_type.index("[") + 1 : -1]


def arrow_type(zeek_type: str) -> pa.DataType:
    kind = value_kind(zeek_type)
    if kind == "list":
        return pa.list_(arrow_type(element_type(zeek_type)))
    return {"micros": MICROS, "int": pa.int64(), "bool": pa.bool_(), "string": pa.string()}[kind]


# ---------------------------------------------------------------------------------------
# Escapes


def unescape_bytes(raw: bytes) -> bytes:
    return _ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), raw)


def unescape_text(text: str) -> str:
    # Bytes that do not form UTF-8 stay visible as \xhh rather than turning into U+FFFD.
    return unescape_bytes(text.encode("utf-8")).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------
# Column conversion to canonical types. Each returns (values, bad): `bad` marks rows whose
# value was present but unreadable as its type, or is None when there are none.

Bad = pa.Array | None


def _bad_where(original: pa.Array, converted: pa.Array) -> Bad:
    if converted.null_count == original.null_count:
        return None  # nothing present was lost: the common case, checked for free
    return pc.and_(original.is_valid(), converted.is_null())


def cast_lenient(values: pa.Array, to: pa.DataType) -> pa.Array:
    """Cast, with null for each value that does not cast (found by halving, as bad values are rare)."""
    try:
        return values.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(values) == 1:
            return pa.nulls(1, to)
        half = len(values) // 2
        return pa.concat_arrays([cast_lenient(values[:half], to), cast_lenient(values[half:], to)])


def _micros_from_seconds(seconds: pa.Array) -> pa.Array:
    """Seconds (any numeric type) to rounded int64 microseconds; null where not finite or too big."""
    micros = pc.round(pc.multiply(seconds.cast(pa.float64()), 1e6))
    try:
        return micros.cast(MICROS)  # refuses NaN, infinities and overflow: then screen them out
    except pa.ArrowInvalid:
        usable = pc.and_(pc.is_finite(micros), pc.less(pc.abs(micros), 9e18))
        return pc.if_else(usable, micros, None).cast(MICROS)


def unescape(values: pa.Array) -> pa.Array:
    """Undo Zeek's \\xHH escapes; only the (rare) values holding one go through Python."""
    escaped = pc.fill_null(pc.match_substring(values, "\\x"), False)
    if not pc.any(escaped).as_py():
        return values
    fixed = [unescape_text(text) for text in values.filter(escaped).to_pylist()]
    return pc.replace_with_mask(values, escaped, pa.array(fixed, pa.string()))


def list_offsets(lists: pa.ListArray) -> pa.Array:
    """Offsets into `lists.flatten()`: they start at 0 even when `lists` is a slice."""
    offsets = lists.offsets
    return pc.subtract(offsets, offsets[0])


def _rebuild_list(lists: pa.ListArray, values: pa.Array, element_bad: Bad) -> tuple[pa.Array, Bad]:
    """Lists with converted elements; a row is bad when any of its elements is."""
    rebuilt = pa.ListArray.from_arrays(list_offsets(lists), values, mask=lists.is_null())
    if element_bad is None:
        return rebuilt, None
    bad_rows = np.zeros(len(lists), dtype=bool)
    parents = pc.list_parent_indices(lists).to_numpy()
    bad_rows[parents[element_bad.to_numpy(zero_copy_only=False)]] = True
    return rebuilt, pa.array(bad_rows)


def text_column(
    parsed: pa.Array, zeek_type: str, empty_field: str, set_separator: str, escapes: bool
) -> tuple[pa.Array, Bad]:
    """Finish a TSV column as `tsv_reader` parsed it: scalars arrive typed, unset as null.

    `escapes` says whether the lines hold any `\\x` at all, so clean blocks skip the search.
    """
    kind = value_kind(zeek_type)
    if kind in ("micros", "int", "bool") and pa.types.is_string(parsed.type):
        return _text_values(parsed, zeek_type, escapes)  # #types declared something else
    if kind == "micros":
        converted = _micros_from_seconds(parsed)
        return converted, _bad_where(parsed, converted)
    if kind in ("int", "bool"):
        return parsed, None
    empty = pc.equal(parsed, pa.scalar(empty_field))
    # Most columns never hold the empty marker; replacing values copies the whole column.
    has_empty = empty.true_count > 0
    if kind == "string":
        return _text_strings(pc.if_else(empty, pa.scalar(""), parsed) if has_empty else parsed, escapes), None
    lists = pc.split_pattern(pc.if_else(empty, None, parsed) if has_empty else parsed, set_separator)
    values, element_bad = _text_values(lists.flatten(), element_type(zeek_type), escapes)
    rebuilt, bad = _rebuild_list(lists, values, element_bad)
    return (pc.if_else(empty, pa.scalar([], rebuilt.type), rebuilt) if has_empty else rebuilt), bad


def _text_strings(values: pa.Array, escapes: bool) -> pa.Array:
    return unescape(values) if escapes else values


def _text_values(texts: pa.Array, zeek_type: str, escapes: bool) -> tuple[pa.Array, Bad]:
    """Values still in text (container elements, odd columns): convert as Arrow would have."""
    kind = value_kind(zeek_type)
    if kind == "string":
        return _text_strings(texts, escapes), None
    if kind == "bool":
        true = pc.equal(texts, pa.scalar("T"))
        converted = pc.if_else(pc.or_(true, pc.equal(texts, pa.scalar("F"))), true, None)
    elif kind == "micros":
        converted = _micros_from_seconds(_cast_text(texts, _SECONDS_PATTERN, pa.float64()))
    else:
        converted = _cast_text(texts, _INTEGER_PATTERN, pa.int64())
    return converted, _bad_where(texts, converted)


def _cast_text(present: pa.Array, pattern: str, to: pa.DataType) -> pa.Array:
    """Cast numbers written as text, the whole column at once while that works.

    Only a column with a bad value goes the slow way: values not in Zeek's decimal form
    are dropped, the rest cast one stretch at a time. (The fast cast also takes "1e3",
    which Zeek never writes; non-finite numbers are caught by the caller.)
    """
    try:
        return present.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        well_formed = pc.if_else(pc.match_substring_regex(present, pattern), present, None)
        return cast_lenient(well_formed, to)


def json_column(column: pa.Array, zeek_type: str) -> tuple[pa.Array, Bad]:
    """Convert a column as pyarrow.json inferred it (types may vary from block to block)."""
    kind, source_type = value_kind(zeek_type), column.type
    if pa.types.is_null(source_type):
        return pa.nulls(len(column), arrow_type(zeek_type)), None
    if kind == "list":
        if not pa.types.is_list(source_type):
            return pa.nulls(len(column), arrow_type(zeek_type)), column.is_valid()
        values, element_bad = json_column(column.flatten(), element_type(zeek_type))
        return _rebuild_list(column, values, element_bad)
    if kind == "micros" and (pa.types.is_string(source_type) or pa.types.is_timestamp(source_type)):
        converted = cast_lenient(column, pa.timestamp("us", tz="UTC")).cast(MICROS)
    elif kind == "micros" and _is_number(source_type):
        converted = _micros_from_seconds(column)
    elif kind == "int" and _is_number(source_type):
        converted = cast_lenient(column, pa.int64())
    elif kind == "bool" and pa.types.is_boolean(source_type):
        converted = column
    elif kind == "string" and pa.types.is_string(source_type):
        converted = unescape(column)
    elif kind == "string" and not pa.types.is_nested(source_type):
        converted = cast_lenient(column, pa.string())
    else:
        converted = pa.nulls(len(column), arrow_type(zeek_type))
    return converted, _bad_where(column, converted)


def _is_number(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type)
