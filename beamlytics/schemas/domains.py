"""Registered domains (eTLD+1) of DNS names, from the Public Suffix List shipped with `publicsuffixlist`.

The list is the copy inside the installed package: nothing is downloaded at run time, so a
run is reproducible and works offline; upgrading the package is how the list is refreshed.
Both the ICANN and the private sections are used, so `foo.github.io` is its own registered
domain, as browsers treat it.

Names are looked up once per distinct value of a column: DNS logs repeat the same few
thousand names over millions of rows.
"""
from __future__ import annotations

import functools
import ipaddress

import pyarrow as pa
import pyarrow.compute as pc
from publicsuffixlist import PublicSuffixList

# PTR names of reverse lookups: one distinct "subdomain" per address looked up, no payload.
_REVERSE_ZONES = r"(^|\.)(in-addr|ip6)\.arpa$"


@functools.lru_cache(maxsize=1)
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()


def normalize_name(name: str | None) -> str | None:
    """Lower-case ASCII (punycode) form without the root dot; None for empty names and IP literals."""
    if name is None:
        return None
    text = name.strip().rstrip(".").lower()
    if not text or _is_ip_literal(text):
        return None
    if not text.isascii():
        try:
            text = ".".join(label.encode("idna").decode("ascii") if not label.isascii() else label
                            for label in text.split("."))
        except UnicodeError:
            pass  # not valid IDNA: keep the name as written, it still has a suffix to look up
    return text


def _is_ip_literal(text: str) -> bool:
    # Only dotted digits or text with a colon can be an address: skip the costly parse for names.
    if ":" not in text and not text.replace(".", "").isdigit():
        return False
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)
def split_name(name: str | None) -> tuple[str | None, str | None]:
    """(registered domain, subdomain) of one name; the subdomain is None at the apex.

    Both are None for names that have no registered domain: IP literals, empty names,
    public suffixes themselves (`co.uk`), single labels (`localhost`).
    """
    text = normalize_name(name)
    if text is None:
        return None, None
    registered = _suffix_list().privatesuffix(text)
    if registered is None:
        return None, None
    subdomain = text[: -len(registered) - 1] if len(text) > len(registered) else None
    return registered, subdomain or None


def split_names(names: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(registered domains, subdomains) of a column of names, each distinct name looked up once."""
    if isinstance(names, pa.ChunkedArray):
        names = names.combine_chunks()
    encoded = pc.dictionary_encode(names.cast(pa.string()))
    parts = [split_name(value) for value in encoded.dictionary.to_pylist()]
    registered = pa.array([part[0] for part in parts], pa.string()).take(encoded.indices)
    subdomains = pa.array([part[1] for part in parts], pa.string()).take(encoded.indices)
    return registered, subdomains


def registered_domain(names: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Registered domain of every name (null where there is none), e.g. `a.b.example.co.uk` → `example.co.uk`."""
    return split_names(names)[0]


def subdomain(names: pa.Array | pa.ChunkedArray) -> pa.Array:
    """What is left of the registered domain (`a.b`), null at the apex or where there is no registered domain."""
    return split_names(names)[1]


def is_reverse_zone(registered: pa.Array) -> pa.Array:
    """True for registered domains under in-addr.arpa or ip6.arpa, false elsewhere (also for nulls)."""
    return pc.fill_null(pc.match_substring_regex(registered, _REVERSE_ZONES), False)
