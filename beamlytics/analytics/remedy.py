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
A (resolver, ASN) is reported when both stages find it:
1. over its `asn`-inconsistent pairs, the ASN answers at least `min_domains` registered domains: a rogue
   resolver sends many domains to the few servers it controls, while a resolver near a CDN node differs on
   a domain or two;
2. NetLytics' second rule (`code_5_find_anomalies_res_asn.py`), over *all* the resolver's answers with an
   address in that ASN: they cover more registered domains than the median ASN does, they are more answers
   per registered domain than the median (ASN, registered domain) gets — both medians over the answers of
   the pairs that are not inconsistent, trace-wide, as NetLytics' `params.json` — and at least two of
   clen, nip and ttl take one value only (NetLytics' "fixed features": a rogue server's answers are all
   alike, a CDN's vary). Registered domains come from the Public Suffix List (NetLytics: 40 suffixes), and
   the fixed TTL is the answer's largest, the `ttl` feature (NetLytics: every record's).

Memory: a pair keeps at most `max_pair_values` distinct values per set (`PairStats`); a pair that had more
is marked `truncated` in the pairs and report, and counted (`Verdict.truncated_pairs`).
"""
from __future__ import annotations

import functools
import ipaddress
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.schemas.domains import split_name

FEATURES = ("clen", "nip", "ttl", "asn")
# Distinct values a (resolver, domain) pair keeps per set (clients, servers, each feature's values): a hostile
# resolver answering with endless addresses or TTLs costs at most this much per pair.
MAX_PAIR_VALUES = 1000
REPORT_SCHEMA = pa.schema([
    pa.field("resolver", pa.string()),
    pa.field("asn", pa.string()),  # an AS number, or the network standing for unmapped addresses
    pa.field("registered_domains", pa.int64()),
    pa.field("domains", pa.string()),  # the inconsistent domains sent to this ASN, space separated, sorted
    pa.field("servers", pa.string()),  # the addresses returned for them, space separated, sorted
    pa.field("features", pa.string()),  # the inconsistencies seen on those domains, in FEATURES order
    pa.field("responses", pa.int64()),  # the resolver's answers for those domains
    pa.field("clients", pa.int64()),  # distinct clients that received them
    # The second stage, over all the resolver's answers into the ASN (see the module docstring):
    pa.field("asn_domains", pa.int64()),  # registered domains it sends there
    pa.field("answers_per_domain", pa.float64()),
    pa.field("fixed_features", pa.string()),  # of clen, nip, ttl: those with one value only
    pa.field("median_domains_per_asn", pa.float64()),  # the levels it exceeds, from the trace's consistent answers
    pa.field("median_answers_per_domain", pa.float64()),
    pa.field("truncated", pa.bool_()),  # some pair hit max_pair_values: its counts are lower bounds
])
PAIR_SCHEMA = pa.schema([
    pa.field("resolver", pa.string()),
    pa.field("domain", pa.string()),
    pa.field("responses", pa.int64()),
    pa.field("features", pa.string()),  # the inconsistent features, in FEATURES order, space separated
    pa.field("truncated", pa.bool_()),
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
    max_pair_values: int = MAX_PAIR_VALUES

    def __post_init__(self):
        if min(self.min_resolutions, self.min_resolvers, self.min_agree, self.min_domains, self.ttl_granularity,
               self.max_pair_values) < 1:
            raise ValueError("min-resolutions, min-resolvers, min-agree, min-domains, max-pair-values and the TTL "
                             "granularity must be at least 1")
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
    """What one resolver answered for one domain: value -> how many answers had it, per feature.

    Every set and counter keeps at most `cap` distinct values, the smallest ones: those are the same
    whatever order batches are merged in, so a cut pair judges alike on every runner. `truncated` says
    that some set of this pair (or of a part merged into it) had more; its counts are then lower bounds.
    """
    cap: int = MAX_PAIR_VALUES
    responses: int = 0
    clen: Counter = field(default_factory=Counter)
    nip: Counter = field(default_factory=Counter)
    ttl: Counter = field(default_factory=Counter)
    asn: Counter = field(default_factory=Counter)
    # asn -> [answers with an address in it, then the (up to) two smallest clen, nip and ttl of those answers]:
    # REMeDy's second stage asks, per (resolver, ASN), whether a feature took one value only.
    by_asn: dict = field(default_factory=dict)
    servers: set = field(default_factory=set)  # (asn, address)
    clients: set = field(default_factory=set)
    truncated: bool = False

    def merge(self, other: PairStats) -> PairStats:
        self.responses += other.responses
        for name in ("clen", "nip", "ttl", "asn"):
            getattr(self, name).update(getattr(other, name))
        for asn, (answers, *values) in other.by_asn.items():
            mine = self.by_asn.setdefault(asn, [0, (), (), ()])
            mine[0] += answers
            mine[1:] = [_two_smallest(old, new) for old, new in zip(mine[1:], values)]
        self.servers |= other.servers
        self.clients |= other.clients
        self.truncated = self.truncated or other.truncated
        self.bound()
        return self

    def add_answer(self, asn: str, clen: int, nip: int, ttl: int) -> None:
        entry = self.by_asn.setdefault(asn, [0, (), (), ()])
        entry[0] += 1
        entry[1:] = [_two_smallest(old, (new,)) for old, new in zip(entry[1:], (clen, nip, ttl))]

    def bound(self) -> None:
        """Cut every set and counter to its `cap` smallest values, noting that it happened."""
        for name in ("clen", "nip", "ttl", "asn"):
            counter = getattr(self, name)
            if len(counter) > self.cap:
                setattr(self, name, Counter({value: counter[value] for value in sorted(counter)[: self.cap]}))
                self.truncated = True
        if len(self.by_asn) > len(self.asn):  # the ASNs cut from the counter go from the per-ASN answers too
            self.by_asn = {asn: entry for asn, entry in self.by_asn.items() if asn in self.asn}
        for name in ("servers", "clients"):
            values = getattr(self, name)
            if len(values) > self.cap:
                setattr(self, name, set(sorted(values)[: self.cap]))
                self.truncated = True


def _two_smallest(old: tuple, new) -> tuple:
    """Enough of a feature's values to tell whether it took one value only, whatever the merge order."""
    return tuple(sorted(set(old).union(new))[:2])


def merge_all(stats: Iterable[PairStats]) -> PairStats:
    """One PairStats holding all of `stats` (which are left as they were)."""
    total = None
    for item in stats:
        total = PairStats(cap=item.cap) if total is None else total
        total.merge(item)
    return total if total is not None else PairStats()


def _address(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def pair_stats(dns: pa.Table, lookup: AsnLookup, ttl_granularity: int = 5, max_values: int = MAX_PAIR_VALUES
               ) -> dict[tuple[str, str], PairStats]:
    """(resolver, domain) -> PairStats over the recursive, answered, addressed responses of a dns table."""
    recursive = pc.and_(pc.match_substring_regex(pc.fill_null(dns["flags"], ""), r"(^| )RD( |$)"),
                        pc.match_substring_regex(pc.fill_null(dns["flags"], ""), r"(^| )RA( |$)"))
    keep = pc.and_(pc.and_(pc.equal(pc.fill_null(dns["resp_code"], ""), "NOERROR"), recursive),
                   pc.and_(pc.is_valid(dns["s_ip"]), pc.is_valid(dns["query"])))
    kept = dns.filter(keep).select(["s_ip", "query", "c_ip", "answers", "answer_ttls"])
    pairs: dict[tuple[str, str], PairStats] = defaultdict(lambda: PairStats(cap=max_values))
    for resolver, query, client, answers, ttls in zip(*(kept[name].to_pylist() for name in kept.column_names)):
        addresses = {address for address in map(_address, answers or []) if address is not None}
        domain = query.strip().rstrip(".").lower()
        if not addresses or not domain:
            continue
        stats = pairs[(resolver, domain)]
        stats.responses += 1
        clen = len(answers) - sum(1 for text in answers if _address(text) is not None)
        largest = max((ttl for ttl in ttls or [] if ttl is not None), default=0)
        ttl = math.ceil(largest / ttl_granularity) * ttl_granularity
        stats.clen[clen] += 1
        stats.nip[len(addresses)] += 1
        stats.ttl[ttl] += 1
        asns = set()
        for address in sorted(addresses):
            asn = lookup(address)
            stats.asn[asn] += 1
            stats.servers.add((asn, str(address)))
            asns.add(asn)
        for asn in sorted(asns):
            stats.add_answer(asn, clen, len(addresses), ttl)
        if client is not None:
            stats.clients.add(client)
    for stats in pairs.values():
        stats.bound()
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


@dataclass(frozen=True)
class Thresholds:
    """REMeDy's second-stage levels, from the consistent answers of the whole trace (NetLytics' params.json medians)."""
    domains_per_asn: float  # registered domains an ASN serves: the median over ASNs
    answers_per_domain: float  # answers an (ASN, registered domain) gets: the median over those


def thresholds(pairs: Mapping[tuple[str, str], PairStats], inconsistent: Mapping[tuple[str, str], tuple[str, ...]]
               ) -> Thresholds:
    """The medians over every answer of a pair that is not inconsistent (0 where there is none)."""
    domains: dict[str, set] = defaultdict(set)
    answers: Counter = Counter()
    for (resolver, domain), stats in pairs.items():
        if (resolver, domain) in inconsistent:
            continue
        registered = registered_domain(domain)
        for asn, (count, *_) in stats.by_asn.items():
            domains[asn].add(registered)
            answers[(asn, registered)] += count
    return Thresholds(float(np.median([len(names) for names in domains.values()])) if domains else 0.0,
                      float(np.median(list(answers.values()))) if answers else 0.0)


def registered_domain(domain: str) -> str:
    return split_name(domain)[0] or domain


def suspicious_resolvers(pairs: Mapping[tuple[str, str], PairStats],
                         inconsistent: Mapping[tuple[str, str], tuple[str, ...]], config: RemedyConfig) -> pa.Table:
    """The report: the (resolver, ASN) rows that both stages find (see the module docstring)."""
    levels = thresholds(pairs, inconsistent)
    groups: dict[tuple[str, str], list[tuple[str, PairStats, tuple[str, ...]]]] = defaultdict(list)
    answered: dict[tuple[str, str], list[tuple[str, list]]] = defaultdict(list)  # every answer into the ASN
    for (resolver, domain), stats in pairs.items():
        flagged = inconsistent.get((resolver, domain), ())
        for asn, entry in stats.by_asn.items():
            answered[(resolver, asn)].append((domain, entry))
            if "asn" in flagged:
                groups[(resolver, asn)].append((domain, stats, flagged))
    rows = []
    for (resolver, asn), members in sorted(groups.items()):
        registered = {registered_domain(domain) for domain, _, _ in members}
        if len(registered) < config.min_domains:
            continue
        second = _second_stage(answered[(resolver, asn)], levels)
        if second is None:
            continue
        seen = {name for _, _, flagged in members for name in flagged}
        rows.append({
            "resolver": resolver, "asn": asn, "registered_domains": len(registered),
            "domains": " ".join(sorted(domain for domain, _, _ in members)),
            "servers": " ".join(sorted({address for _, stats, _ in members for server_asn, address in stats.servers
                                        if server_asn == asn}, key=_address_order)),
            "features": " ".join(name for name in FEATURES if name in seen),
            "responses": sum(stats.responses for _, stats, _ in members),
            "clients": len(set().union(*(stats.clients for _, stats, _ in members))),
            **second,
            "truncated": any(stats.truncated for _, stats, _ in members),
        })
    rows.sort(key=lambda row: (-row["registered_domains"], row["resolver"], row["asn"]))
    return pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)


def _second_stage(answered: list[tuple[str, list]], levels: Thresholds) -> dict | None:
    """NetLytics' (resolver, ASN) rule over all the resolver's answers into the ASN, or None when it does not hold:
    more registered domains than an ASN's median, more answers per registered domain than an (ASN, domain)'s
    median, and at least two of clen, nip and ttl with one value only."""
    registered = {registered_domain(domain) for domain, _ in answered}
    per_domain = sum(entry[0] for _, entry in answered) / len(registered)
    fixed = [name for index, name in ((1, "clen"), (2, "nip"), (3, "ttl"))
             if len(functools.reduce(_two_smallest, (entry[index] for _, entry in answered), ())) == 1]
    if len(registered) <= levels.domains_per_asn or per_domain <= levels.answers_per_domain or len(fixed) < 2:
        return None
    return {"asn_domains": len(registered), "answers_per_domain": per_domain, "fixed_features": " ".join(fixed),
            "median_domains_per_asn": levels.domains_per_asn,
            "median_answers_per_domain": levels.answers_per_domain}


def _address_order(text: str):
    address = ipaddress.ip_address(text)
    return address.version, address


def pairs_table(pairs: Mapping[tuple[str, str], PairStats],
                inconsistent: Mapping[tuple[str, str], tuple[str, ...]]) -> pa.Table:
    """Every inconsistent (resolver, domain) pair with its answers and features, sorted."""
    rows = [{"resolver": resolver, "domain": domain, "responses": pairs[(resolver, domain)].responses,
             "features": " ".join(flagged), "truncated": pairs[(resolver, domain)].truncated}
            for (resolver, domain), flagged in sorted(inconsistent.items())]
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


class Verdict(NamedTuple):
    report: pa.Table  # the suspicious (resolver, ASN) rows
    pairs: pa.Table  # every inconsistent (resolver, domain) pair
    truncated_pairs: int  # pairs (of all, not only the inconsistent) whose sets were cut to `max_pair_values`


def judge(pairs: Mapping[tuple[str, str], PairStats], config: RemedyConfig) -> Verdict:
    """The verdict from the merged pair statistics."""
    inconsistent = inconsistent_pairs(pairs, config)
    return Verdict(suspicious_resolvers(pairs, inconsistent, config), pairs_table(pairs, inconsistent),
                   sum(1 for stats in pairs.values() if stats.truncated))


def remedy(dns: pa.Table, config: RemedyConfig = RemedyConfig(), lookup: AsnLookup | None = None) -> Verdict:
    """REMeDy over a whole dns table in this process."""
    return judge(pair_stats(dns, lookup or AsnLookup(), config.ttl_granularity, config.max_pair_values), config)


def pair_items(dns: pa.Table, lookup: AsnLookup, config: RemedyConfig) -> Iterator[tuple[tuple[str, str], PairStats]]:
    """The pair statistics of one batch, as (key, stats) elements to merge across batches."""
    yield from sorted(pair_stats(dns, lookup, config.ttl_granularity, config.max_pair_values).items())
