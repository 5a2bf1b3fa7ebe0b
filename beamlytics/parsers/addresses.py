"""IP addresses as text, one canonical way on every Python version.

`ipaddress` prints IPv4-mapped IPv6 addresses as `::ffff:102:304` up to Python 3.12 and as
`::ffff:1.2.3.4` from 3.13; endpoint keys must not change with the interpreter. Text from
logs is therefore parsed by `ipaddress` (which validates it) and written by the same
formatter the capture reader uses for packed addresses (`packets.address_text`: RFC 5952,
mapped addresses as `::ffff:1.2.3.4`), so a log and a capture of the same traffic give the
same keys. A zone (`fe80::1%eth0`) is kept.
"""
from __future__ import annotations

import ipaddress

import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.parsers.packets import address_text

# An IPv4 address already in canonical form: most values, kept without any Python work.
_CANONICAL_IPV4 = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"


def canonical_address(text: str) -> str | None:
    """The canonical text of one address, or None when `text` is not an IP address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    zone = f"%{address.scope_id}" if isinstance(address, ipaddress.IPv6Address) and address.scope_id else ""
    return address_text(address.packed) + zone


def normalise_addresses(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(canonical addresses, invalid mask) of a string array; nulls stay null and are not invalid.

    Canonical IPv4 text is recognised by one regex kernel; only the distinct other values
    go through `ipaddress`, so a block costs Python work per distinct address, not per row.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.cast(values, pa.string())
    simple = pc.fill_null(pc.match_substring_regex(values, _CANONICAL_IPV4), True)
    others = pc.unique(values.filter(pc.invert(simple)))
    if not len(others):
        return values, pc.invert(simple)  # all false
    canonical = pa.array([canonical_address(text) for text in others.to_pylist()], pa.string())
    looked_up = pc.take(canonical, pc.index_in(values, value_set=others))
    normalised = pc.if_else(simple, values, looked_up)
    invalid = pc.and_(pc.invert(simple), pc.is_null(looked_up))
    return normalised, invalid
