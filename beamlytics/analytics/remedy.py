"""REMeDy, NetLytics' rogue DNS resolver detection: resolvers whose answers disagree with every other resolver's.

Only answers a resolver gave as a recursive resolver count: NOERROR, RD and RA set, at least one address
among the answers. Each answer is reduced to its CNAME chain length (answers that are not addresses), its
number of addresses, the largest TTL (rounded up to `ttl_granularity` seconds, as NetLytics) and the ASNs
of its addresses. ASNs come from a pyasn IP→ASN file (`--asn-db`); an address it does not cover, or every
address without a file, stands for its /16 (IPv6: /32) network, and 127.0.0.0/16 addresses for themselves,
as in NetLytics.

Per domain asked through at least `min_resolvers` resolvers `min_resolutions` times, a resolver's
(resolver, domain) pair is inconsistent on:
- `clen`, `nip`, `asn`: when none of the values it returned is returned by at least `min_agree` resolvers
  (NetLytics compared value frequencies, so one busy rogue resolver outvoted the others; here resolvers vote);
- `ttl`: when all its TTLs exceed the domain's boxplot fence Q3 + 1.5 IQR over each resolver's largest TTL
  (NetLytics took its "IQR" from the 15th percentile).
A resolver is suspicious when, over its `asn`-inconsistent pairs, one ASN answers at least `min_domains`
registered domains: a rogue resolver sends many domains to the few servers it controls, while a resolver
near a CDN node differs on a domain or two.
"""
from __future__ import annotations

import ipaddress
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.schemas.domains import split_name

FEATURES = ("clen", "nip", "ttl", "asn")
REPORT_SCHEMA = pa.schema([
    pa.field("resolver", pa.string()),
    pa.field("asn", pa.string()),  # an AS number, or the network standing for unmapped addresses
    pa.field("registered_domains", pa.int64()),
    pa.field("domains", pa.string()),  # the inconsistent domains sent to this ASN, space separated, sorted
    pa.field("servers", pa.string()),  # the addresses returned for them, space separated, sorted
    pa.field("features", pa.string()),  # the inconsistencies seen on those domains, in FEATURES order
    pa.field("responses", pa.int64()),  # the resolver's answers for those domains
    pa.field("clients", pa.int64()),  # distinct clients that received them
])
PAIR_SCHEMA = pa.schema([
    pa.field("resolver", pa.string()),
    pa.field("domain", pa.string()),
    pa.field("responses", pa.int64()),
    pa.field("features", pa.string()),  # the inconsistent features, in FEATURES order, space separated
])


class AsnDatabaseError(ValueError):
    """The IP→ASN file cannot be read: its path and pyasn's reason, in one line."""


@dataclass(frozen=True)
class RemedyConfig:
    min_resolutions: int = 50  # NetLytics' default
    min_resolvers: int = 3
    min_agree: int = 2
    min_domains: int = 3
    ttl_granularity: int = 5

    def __post_init__(self):
        if min(self.min_resolutions, self.min_resolvers, self.min_agree, self.min_domains, self.ttl_granularity) < 1:
            raise ValueError("min-resolutions, min-resolvers, min-agree, min-domains and the TTL granularity "
                             "must be at least 1")
        if self.min_agree > self.min_resolvers:
            raise ValueError("min-agree cannot exceed min-resolvers: no domain could have a normal value")


class AsnLookup:
    """IP → ASN (as text) from a pyasn IPASN file, else the address's network, as NetLytics."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._database = None
        if path is not None:
            try:
                import pyasn
            except ImportError:
                raise AsnDatabaseError("--asn-db needs pyasn: pip install 'beamlytics[remedy]'") from None
            try:
                self._database = pyasn.pyasn(path)
            except (OSError, RuntimeError, ValueError) as error:
                raise AsnDatabaseError(f"--asn-db {path}: not a pyasn IPASN file ({error})") from None

    def __call__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        text = str(address)
        if address.version == 4 and text.startswith("127.0."):
            return text
        if self._database is not None:
            asn = self._database.lookup(text)[0]
            if asn is not None:
                return str(asn)
        prefix = 16 if address.version == 4 else 32
        return str(ipaddress.ip_network(f"{text}/{prefix}", strict=False))

    def __reduce__(self):
        # pyasn's database is a C object: a worker reloads it from the same file.
        return AsnLookup, (self.path,)


@dataclass
class PairStats:
    """What one resolver answered for one domain: value -> how many answers had it, per feature."""
    responses: int = 0
    clen: Counter = field(default_factory=Counter)
    nip: Counter = field(default_factory=Counter)
    ttl: Counter = field(default_factory=Counter)
    asn: Counter = field(default_factory=Counter)
    servers: dict = field(default_factory=dict)  # asn -> addresses
    clients: set = field(default_factory=set)

    def merge(self, other: PairStats) -> PairStats:
        self.responses += other.responses
        for name in ("clen", "nip", "ttl", "asn"):
            getattr(self, name).update(getattr(other, name))
        for asn, addresses in other.servers.items():
            self.servers.setdefault(asn, set()).update(addresses)
        self.clients |= other.clients
        return self


def merge_all(stats: Iterable[PairStats]) -> PairStats:
    """One PairStats holding all of `stats` (which are left as they were)."""
    total = PairStats()
    for item in stats:
        total.merge(item)
    return total


def _address(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def pair_stats(dns: pa.Table, lookup: AsnLookup, ttl_granularity: int = 5) -> dict[tuple[str, str], PairStats]:
    """(resolver, domain) -> PairStats over the recursive, answered, addressed responses of a dns table."""
    recursive = pc.and_(pc.match_substring_regex(pc.fill_null(dns["flags"], ""), r"(^| )RD( |$)"),
                        pc.match_substring_regex(pc.fill_null(dns["flags"], ""), r"(^| )RA( |$)"))
    keep = pc.and_(pc.and_(pc.equal(pc.fill_null(dns["resp_code"], ""), "NOERROR"), recursive),
                   pc.and_(pc.is_valid(dns["s_ip"]), pc.is_valid(dns["query"])))
    kept = dns.filter(keep).select(["s_ip", "query", "c_ip", "answers", "answer_ttls"])
    pairs: dict[tuple[str, str], PairStats] = defaultdict(PairStats)
    for resolver, query, client, answers, ttls in zip(*(kept[name].to_pylist() for name in kept.column_names)):
        addresses = {address for address in map(_address, answers or []) if address is not None}
        domain = query.strip().rstrip(".").lower()
        if not addresses or not domain:
            continue
        stats = pairs[(resolver, domain)]
        stats.responses += 1
        stats.clen[len(answers) - sum(1 for text in answers if _address(text) is not None)] += 1
        stats.nip[len(addresses)] += 1
        largest = max((ttl for ttl in ttls or [] if ttl is not None), default=0)
        stats.ttl[math.ceil(largest / ttl_granularity) * ttl_granularity] += 1
        for address in sorted(addresses):
            asn = lookup(address)
            stats.asn[asn] += 1
            stats.servers.setdefault(asn, set()).add(str(address))
        if client is not None:
            stats.clients.add(client)
    return dict(pairs)


def inconsistent_pairs(pairs: Mapping[tuple[str, str], PairStats], config: RemedyConfig
                       ) -> dict[tuple[str, str], tuple[str, ...]]:
    """(resolver, domain) -> its inconsistent features (in FEATURES order), for the pairs that have any."""
    by_domain: dict[str, dict[str, PairStats]] = defaultdict(dict)
    for (resolver, domain), stats in pairs.items():
        by_domain[domain][resolver] = stats
    found = {}
    for domain, resolvers in sorted(by_domain.items()):
        if len(resolvers) < config.min_resolvers or sum(s.responses for s in resolvers.values()) < config.min_resolutions:
            continue
        voters = {name: Counter(value for stats in resolvers.values() for value in getattr(stats, name))
                  for name in ("clen", "nip", "asn")}
        largest_ttls = np.array([max(stats.ttl) for stats in resolvers.values()], dtype=float)
        q1, q3 = np.percentile(largest_ttls, [25, 75])
        fence = q3 + 1.5 * (q3 - q1)
        for resolver, stats in sorted(resolvers.items()):
            flagged = tuple(name for name in FEATURES if (
                all(ttl > fence for ttl in stats.ttl) if name == "ttl"
                else all(voters[name][value] < config.min_agree for value in getattr(stats, name))))
            if flagged:
                found[(resolver, domain)] = flagged
    return found


def suspicious_resolvers(pairs: Mapping[tuple[str, str], PairStats],
                         inconsistent: Mapping[tuple[str, str], tuple[str, ...]], config: RemedyConfig) -> pa.Table:
    """The report: one row per (resolver, ASN) that answers `min_domains` registered domains inconsistently."""
    by_domain_votes: dict[str, Counter] = defaultdict(Counter)
    for (_, domain), stats in pairs.items():
        by_domain_votes[domain].update(stats.asn.keys())
    groups: dict[tuple[str, str], list[tuple[str, PairStats, tuple[str, ...]]]] = defaultdict(list)
    for (resolver, domain), flagged in inconsistent.items():
        if "asn" not in flagged:
            continue
        stats = pairs[(resolver, domain)]
        for asn in stats.asn:
            groups[(resolver, asn)].append((domain, stats, flagged))
    rows = []
    for (resolver, asn), members in sorted(groups.items()):
        registered = {split_name(domain)[0] or domain for domain, _, _ in members}
        if len(registered) < config.min_domains:
            continue
        seen = {name for _, _, flagged in members for name in flagged}
        rows.append({
            "resolver": resolver, "asn": asn, "registered_domains": len(registered),
            "domains": " ".join(sorted(domain for domain, _, _ in members)),
            "servers": " ".join(sorted({address for _, stats, _ in members for address in stats.servers[asn]},
                                       key=_address_order)),
            "features": " ".join(name for name in FEATURES if name in seen),
            "responses": sum(stats.responses for _, stats, _ in members),
            "clients": len(set().union(*(stats.clients for _, stats, _ in members))),
        })
    rows.sort(key=lambda row: (-row["registered_domains"], row["resolver"], row["asn"]))
    return pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)


def _address_order(text: str):
    address = ipaddress.ip_address(text)
    return address.version, address


def pairs_table(pairs: Mapping[tuple[str, str], PairStats],
                inconsistent: Mapping[tuple[str, str], tuple[str, ...]]) -> pa.Table:
    """Every inconsistent (resolver, domain) pair with its answers and features, sorted."""
    rows = [{"resolver": resolver, "domain": domain, "responses": pairs[(resolver, domain)].responses,
             "features": " ".join(flagged)} for (resolver, domain), flagged in sorted(inconsistent.items())]
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def judge(pairs: Mapping[tuple[str, str], PairStats], config: RemedyConfig) -> tuple[pa.Table, pa.Table]:
    """(report of suspicious resolvers, inconsistent pairs) from the merged pair statistics."""
    inconsistent = inconsistent_pairs(pairs, config)
    return suspicious_resolvers(pairs, inconsistent, config), pairs_table(pairs, inconsistent)


def remedy(dns: pa.Table, config: RemedyConfig = RemedyConfig(), lookup: AsnLookup | None = None
           ) -> tuple[pa.Table, pa.Table]:
    """REMeDy over a whole dns table in this process: (report, inconsistent pairs)."""
    return judge(pair_stats(dns, lookup or AsnLookup(), config.ttl_granularity), config)


def pair_items(dns: pa.Table, lookup: AsnLookup, ttl_granularity: int) -> Iterator[tuple[tuple[str, str], PairStats]]:
    """The pair statistics of one batch, as (key, stats) elements to merge across batches."""
    yield from sorted(pair_stats(dns, lookup, ttl_granularity).items())
