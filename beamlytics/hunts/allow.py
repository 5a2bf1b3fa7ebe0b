"""The allow-list: known-good hosts, networks and domains whose findings are suppressed, and counted.

One entry a line, `#` starts a comment:

    10.0.0.5              a host: every finding where it is the source or the destination
    10.1.0.0/16           a network (IPv4 or IPv6)
    example.com           a registered domain: the apex and every name under it
    *.example.com         the same: a wildcard includes the apex
    10.0.0.9  beacon      any of the above, for one hunt only (scan covers both scan hunts)
    10.0.0.9  records     any of the above, for one detect feature only (a (host, feature) pair)
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from beamlytics import features  # the module, not its names: features imports the hunts package in turn
from beamlytics.hunts.config import OUTPUT_HUNTS
from beamlytics.schemas.domains import normalize_name

SCAN_HUNTS = OUTPUT_HUNTS["scan"]
# The hunt options and the finding names they produce: an entry may name either.
HUNT_NAMES = tuple(dict.fromkeys([*OUTPUT_HUNTS, *(name for names in OUTPUT_HUNTS.values() for name in names)]))


class AllowListError(ValueError):
    """A line of the allow-list that is not an address, network or domain, or names an unknown hunt."""


@dataclass(frozen=True)
class Entry:
    kind: str  # host | network | domain
    value: str
    hunt: str | None = None  # a hunt or a detect feature: the only findings the entry suppresses

    def applies_to(self, hunt: str) -> bool:
        return self.hunt is None or self.hunt == hunt or (self.hunt == "scan" and hunt in SCAN_HUNTS)

    def matches(self, entity: str) -> bool:
        if self.kind == "domain":
            name = normalize_name(entity)
            return name is not None and (name == self.value or name.endswith("." + self.value))
        address = _address(entity)
        if address is None:
            return False
        if self.kind == "host":
            return address == ipaddress.ip_address(self.value)
        return address in ipaddress.ip_network(self.value)


def _address(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_entry(text: str) -> Entry:
    words = text.split()
    if len(words) > 2:
        raise AllowListError(f"expected 'ENTRY [HUNT]', got {text!r}")
    hunt = words[1] if len(words) == 2 else None
    feature_names = tuple(dict.fromkeys(name for names in features.FEATURES.values() for name in names))
    if hunt is not None and hunt not in HUNT_NAMES and hunt not in feature_names:
        raise AllowListError(f"unknown hunt or feature {hunt!r} (choose from {', '.join(HUNT_NAMES)}; "
                             f"or {', '.join(feature_names)})")
    value = words[0]
    if value.startswith("*."):
        value = value[2:]
    address = _address(value)
    if address is not None:
        return Entry("host", str(address), hunt)
    if "/" in value:
        try:
            return Entry("network", str(ipaddress.ip_network(value, strict=False)), hunt)
        except ValueError:
            raise AllowListError(f"not a network: {value!r}") from None
    name = normalize_name(value)
    if name is None or any(not label for label in name.split(".")):
        raise AllowListError(f"not a host, network or domain: {value!r}")
    return Entry("domain", name, hunt)


@dataclass(frozen=True)
class AllowList:
    entries: tuple[Entry, ...] = ()

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "allow-list") -> "AllowList":
        entries = []
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                entries.append(parse_entry(text))
            except AllowListError as error:
                raise AllowListError(f"{source} line {number}: {error}") from None
        return cls(tuple(entries))

    @classmethod
    def read(cls, path: str) -> "AllowList":
        try:
            with open(path, encoding="utf-8") as handle:
                return cls.parse(handle, path)
        except (OSError, UnicodeDecodeError) as error:
            raise AllowListError(f"cannot read the allow-list {path}: {error}") from None

    def suppresses(self, row: Mapping) -> bool:
        """True when an entry for this row's hunt matches its source, destination or one of its names."""
        entities = [value for value in (row.get("src"), row.get("dst"), *(row.get("names") or ())) if value]
        return any(entry.applies_to(row["hunt"]) and entry.matches(entity)
                   for entry in self.entries for entity in entities)

    def suppresses_endpoint(self, key: str, feature: str) -> bool:
        """True when an entry for all findings or for this detect feature matches the endpoint's key."""
        return any(entry.applies_to(feature) and entry.matches(key) for entry in self.entries)
