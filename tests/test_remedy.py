"""REMeDy on generated DNS tables: a planted rogue resolver among honest ones, with a generated pyasn file."""
from __future__ import annotations

import ipaddress
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamlytics import schemas
from beamlytics.analytics.remedy import (
    AsnDatabaseError, AsnLookup, PairStats, RemedyConfig, Thresholds, merge_all, pair_stats, remedy, thresholds,
)
from beamlytics.pipelines import cli

pyasn = pytest.importorskip("pyasn")

HONEST = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"]
ROGUE = "198.18.0.66"
RESOLVERS = [*HONEST, ROGUE]
# Each domain's true servers: its own /24 and AS number, a CNAME before the address, 300 s TTLs.
SERVICES = {f"bank{n}.com": (f"198.51.{n}.10", 64500 + n) for n in range(1, 5)}
SERVICES.update({"login.bank1.com": ("198.51.1.20", 64501), "news.example.org": ("198.51.9.10", 64509)})
ROGUE_SERVER, ROGUE_ASN = "203.0.113.7", 64666
# A CDN answers from two networks, each through two or more resolvers: inconsistent with nobody.
CDN = "video.cdn.net"
CDN_SERVERS = {"192.0.2.1": "198.51.20.5", "192.0.2.2": "198.51.20.5"}
CDN_DEFAULT = "198.51.21.5"
UNMAPPED = "100.64.5.5"  # not in the ASN file: stands for 100.64.0.0/16
REPEATS = 3
# The rogue's many clients ask its manipulated names often: NetLytics' second rule wants more answers per
# registered domain than the median (ASN, domain) gets.
ROGUE_REPEATS = 12
MANIPULATED = ("bank1.com", "login.bank1.com", "bank2.com", "bank3.com")

IPASN_LINES = [f"198.51.{n}.0/24\t{64500 + n}" for n in range(1, 10)] + [
    "198.51.20.0/24\t64520", "198.51.21.0/24\t64521", f"203.0.113.0/24\t{ROGUE_ASN}"]


def write_ipasn(path) -> str:
    """A pyasn IPASN file, in the format pyasn_util_convert.py writes (comments, then prefix TAB asn)."""
    path.write_text("; IP-ASN32-DAT file\n; generated for the REMeDy tests\n" + "\n".join(IPASN_LINES) + "\n")
    return str(path)


def answer(resolver: str, domain: str, repeat: int = 0) -> tuple[list[str], list[int]]:
    if resolver == ROGUE and domain in MANIPULATED:
        return [ROGUE_SERVER], [86400]
    if domain == CDN:
        return [f"edge.{CDN}", CDN_SERVERS.get(resolver, CDN_DEFAULT)], [60, 20]
    if resolver == "192.0.2.3" and domain == "news.example.org":
        return [f"www.{domain}", UNMAPPED], [300, 300]
    address, _ = SERVICES[domain]
    return [f"edge.{domain}", address], [300, 300]


def planted_rows(rogue_repeats: int = ROGUE_REPEATS, answer=answer) -> list[dict]:
    rows = []
    for resolver in RESOLVERS:
        for domain in [*SERVICES, CDN]:
            repeats = rogue_repeats if resolver == ROGUE and domain in MANIPULATED else REPEATS
            for repeat in range(repeats):
                answers, ttls = answer(resolver, domain, repeat)
                rows.append({"c_ip": f"10.0.{RESOLVERS.index(resolver)}.{repeat + 1}", "s_ip": resolver,
                             "query": domain.upper() + "." if repeat == 2 else domain, "resp_code": "NOERROR",
                             "flags": "QR RD RA", "answers": answers, "answer_ttls": ttls})
    # Ignored: answers that are not a recursive resolver's, failures, and answers without an address.
    rows.append({"s_ip": ROGUE, "query": "bank4.com", "resp_code": "NOERROR", "flags": "QR AA",
                 "answers": [ROGUE_SERVER], "answer_ttls": [86400]})
    rows.append({"s_ip": ROGUE, "query": "bank4.com", "resp_code": "NXDOMAIN", "flags": "QR RD RA"})
    rows.append({"s_ip": ROGUE, "query": "bank4.com", "resp_code": "NOERROR", "flags": "QR RD RA",
                 "answers": ["only.a.cname.example"], "answer_ttls": [99999]})
    return rows


def dns_table(rows: list[dict]) -> pa.Table:
    schema = schemas.TABLES["dns"].empty_table().schema
    filled = [{"source_tool": "test", "source_file": "generated", "source_pos": position, **row}
              for position, row in enumerate(rows)]
    return pa.Table.from_pylist(filled, schema=schema)


CONFIG = RemedyConfig(min_resolutions=len(RESOLVERS) * REPEATS, min_resolvers=3, min_agree=2, min_domains=3)


def test_the_planted_rogue_resolver_is_reported_with_its_domains(tmp_path):
    report, pairs, truncated = remedy(dns_table(planted_rows()), CONFIG,
                                      AsnLookup(write_ipasn(tmp_path / "ipasn.dat")))
    # Worked by hand: the rogue answers 4 names of 3 registered domains from one server, without the CNAME
    # and with a day-long TTL; nobody else returns its ASN for them. Second stage: the consistent answers put
    # one registered domain in each ASN (median 1) and give the (ASN, domain)s 6, 12, 15, 15, 15, 18 and 30
    # answers (cdn.net in 64520 and 64521, bank2, bank3, example.org, bank4 through all six resolvers,
    # bank1.com's two names through the five honest ones): median 15. The rogue's 48 answers into its ASN
    # cover 3 registered domains (16 each > 15) and its clen, nip and ttl never vary.
    assert report.to_pylist() == [{
        "resolver": ROGUE, "asn": str(ROGUE_ASN), "registered_domains": 3,
        "domains": "bank1.com bank2.com bank3.com login.bank1.com", "servers": ROGUE_SERVER,
        "features": "clen ttl asn", "responses": 4 * ROGUE_REPEATS, "clients": ROGUE_REPEATS,
        "asn_domains": 3, "answers_per_domain": 16.0, "fixed_features": "clen nip ttl",
        "median_domains_per_asn": 1.0, "median_answers_per_domain": 15.0, "truncated": False}]
    # The honest resolver with one odd answer is inconsistent on that domain, but sends one domain only.
    assert pairs.to_pylist() == [
        {"resolver": "192.0.2.3", "domain": "news.example.org", "responses": REPEATS, "features": "asn",
         "truncated": False},
        *({"resolver": ROGUE, "domain": domain, "responses": ROGUE_REPEATS, "features": "clen ttl asn",
           "truncated": False} for domain in ("bank1.com", "bank2.com", "bank3.com", "login.bank1.com"))]
    assert truncated == 0


def test_the_second_rule_wants_many_answers_per_domain(tmp_path):
    # The same rogue with as few clients as every resolver has: 12 answers for 3 registered domains, 4 each,
    # not above the median 15 (the consistent answers are those of the test above).
    lookup = AsnLookup(write_ipasn(tmp_path / "ipasn.dat"))
    rows = planted_rows(rogue_repeats=REPEATS)
    report, pairs, _ = remedy(dns_table(rows), CONFIG, lookup)
    assert report.num_rows == 0
    assert [row["resolver"] for row in pairs.to_pylist()].count(ROGUE) == 4  # the first stage still finds them
    inconsistent = {(row["resolver"], row["domain"]): tuple(row["features"].split()) for row in pairs.to_pylist()}
    assert thresholds(pair_stats(dns_table(rows), lookup), inconsistent) == Thresholds(1.0, 15.0)


MIRROR = "192.0.2.4"  # an honest resolver's local cache for the banks, in a network of its own
MIRROR_SERVERS, MIRROR_ASN = ("203.0.114.1", "203.0.114.2"), 64777


def _mirror_answer(varying: bool):
    def mirrored(resolver: str, domain: str, repeat: int = 0):
        if resolver != MIRROR or domain not in MANIPULATED:
            return answer(resolver, domain, repeat)
        chain = [f"cache.{domain}", f"m.cache.{domain}"]
        if varying and repeat % 2:  # two servers and a short TTL every other time, as a CDN's answers go
            return [*chain, *MIRROR_SERVERS], [120, 120, 120, 120]
        return [*chain, MIRROR_SERVERS[0]], [300, 300, 300]
    return mirrored


@pytest.mark.parametrize("varying", [True, False])
def test_the_second_rule_wants_answers_that_never_vary(tmp_path, varying):
    ipasn = tmp_path / "ipasn.dat"
    write_ipasn(ipasn)
    ipasn.write_text(ipasn.read_text() + f"203.0.114.0/24\t{MIRROR_ASN}\n")
    rows = planted_rows(answer=_mirror_answer(varying))
    for extra in range(ROGUE_REPEATS - REPEATS):  # as busy as the rogue on those names
        rows += [{"c_ip": f"10.0.9.{extra}", "s_ip": MIRROR, "query": domain, "resp_code": "NOERROR",
                  "flags": "QR RD RA", **dict(zip(("answers", "answer_ttls"),
                                                 _mirror_answer(varying)(MIRROR, domain, extra + REPEATS)))}
                 for domain in MANIPULATED]
    report, pairs, _ = remedy(dns_table(rows), CONFIG, AsnLookup(str(ipasn)))
    features = {(row["resolver"], row["domain"]): row["features"] for row in pairs.to_pylist()}
    # Both stages by hand. First: the mirror's ASN and its two-CNAME chains are its own, on 3 registered domains.
    assert all(features[(MIRROR, domain)] == "clen asn" for domain in MANIPULATED)
    # Second: without the rogue's and the mirror's pairs, bank1.com gets 4 x 6 answers, bank2/bank3 12 each,
    # bank4 18, example.org 15, cdn.net 6 and 12: median 12; both send 48 answers for 3 domains, 16 each.
    rows_by_resolver = {row["resolver"]: row for row in report.to_pylist()}
    assert rows_by_resolver[ROGUE]["median_answers_per_domain"] == 12.0
    if varying:  # nip and ttl vary: only clen is fixed, and one fixed feature is not enough
        assert set(rows_by_resolver) == {ROGUE}
    else:
        assert set(rows_by_resolver) == {ROGUE, MIRROR}
        assert rows_by_resolver[MIRROR]["fixed_features"] == "clen nip ttl"
        assert rows_by_resolver[MIRROR]["answers_per_domain"] == 16.0


def test_registered_domains_not_names_are_counted():
    config = RemedyConfig(CONFIG.min_resolutions, 3, 2, min_domains=4)
    report, pairs, _ = remedy(dns_table(planted_rows()), config)
    assert report.num_rows == 0  # bank1.com and login.bank1.com are one registered domain
    assert pairs.num_rows == 5


def test_without_an_asn_file_each_address_stands_for_its_16():
    table = dns_table(planted_rows())
    stats = pair_stats(table, AsnLookup())
    assert set(stats[(ROGUE, "bank2.com")].asn) == {"203.0.0.0/16"}
    assert set(stats[("192.0.2.1", "bank2.com")].asn) == {"198.51.0.0/16"}
    # Every true server is in 198.51.0.0/16: that one network serves 6 registered domains, the median, and
    # the rogue's 3 do not exceed it. Lumping networks together hides a rogue: give an --asn-db.
    report, pairs, _ = remedy(table, CONFIG)
    assert report.num_rows == 0 and pairs.num_rows == 5


def test_a_domain_with_too_few_answers_or_resolvers_is_not_judged():
    rows = planted_rows()
    busiest = len(HONEST) * REPEATS + ROGUE_REPEATS  # the answers of each manipulated name
    assert remedy(dns_table(rows), RemedyConfig(min_resolutions=busiest + 1)).pairs.num_rows == 0
    assert remedy(dns_table(rows), RemedyConfig(min_resolutions=1, min_resolvers=7, min_agree=2)).pairs.num_rows == 0


def test_pair_statistics_are_an_independent_count_of_the_rows(tmp_path):
    lookup = AsnLookup(write_ipasn(tmp_path / "ipasn.dat"))
    pairs = pair_stats(dns_table(planted_rows()), lookup)
    bank2 = pairs[(ROGUE, "bank2.com")]
    many = ROGUE_REPEATS
    assert (bank2.responses, dict(bank2.clen), dict(bank2.nip), dict(bank2.ttl), dict(bank2.asn)) == (
        many, {0: many}, {1: many}, {86400: many}, {str(ROGUE_ASN): many})
    assert bank2.by_asn == {str(ROGUE_ASN): [many, (0,), (1,), (86400,)]}
    assert bank2.servers == {(str(ROGUE_ASN), ROGUE_SERVER)} and len(bank2.clients) == many
    cdn = pairs[("192.0.2.3", CDN)]
    assert dict(cdn.ttl) == {60: REPEATS} and dict(cdn.clen) == {1: REPEATS} and dict(cdn.asn) == {"64521": REPEATS}
    assert (ROGUE, "bank4.com") in pairs and pairs[(ROGUE, "bank4.com")].responses == REPEATS  # others ignored
    assert len(pairs) == len(RESOLVERS) * (len(SERVICES) + 1)


def test_a_pair_keeps_at_most_max_pair_values_per_set_whatever_the_merge_order():
    # A hostile resolver: one name answered with 40 networks, TTLs and clients.
    rows = [{"c_ip": f"10.1.0.{n}", "s_ip": ROGUE, "query": "flood.example", "resp_code": "NOERROR",
             "flags": "QR RD RA", "answers": [f"{n + 1}.2.3.4"], "answer_ttls": [100 + 5 * n]} for n in range(40)]
    table = dns_table(rows)
    whole = pair_stats(table, AsnLookup(), max_values=10)[(ROGUE, "flood.example")]
    networks = sorted(f"{n + 1}.2.0.0/16" for n in range(40))[:10]  # the 10 smallest, as text
    assert whole.truncated and whole.responses == 40 and sum(whole.nip.values()) == 40
    assert sorted(whole.ttl) == [100 + 5 * n for n in range(10)]
    assert sorted(whole.asn) == networks and sorted(whole.by_asn) == networks
    assert whole.clients == set(sorted(f"10.1.0.{n}" for n in range(40))[:10])
    assert len(whole.servers) == 10
    parts = [pair_stats(table.slice(start, 7), AsnLookup(), max_values=10)[(ROGUE, "flood.example")]
             for start in range(0, 40, 7)]
    forward, backward = merge_all(parts), merge_all(reversed(parts))
    assert forward == backward == whole
    assert remedy(table, RemedyConfig(min_resolutions=1, min_resolvers=1, min_agree=1, max_pair_values=10)
                  ).truncated_pairs == 1
    assert not pair_stats(table, AsnLookup(), max_values=40)[(ROGUE, "flood.example")].truncated


def test_asn_lookup_is_longest_prefix_of_the_file_with_the_netlytics_fallbacks(tmp_path):
    lookup = AsnLookup(write_ipasn(tmp_path / "ipasn.dat"))
    networks = [(ipaddress.ip_network(line.split("\t")[0]), line.split("\t")[1]) for line in IPASN_LINES]

    def by_hand(text: str) -> str:
        matches = [(net.prefixlen, asn) for net, asn in networks if ipaddress.ip_address(text) in net]
        return max(matches)[1] if matches else str(ipaddress.ip_network(f"{text}/16", strict=False))

    for text in ["198.51.3.200", "203.0.113.254", "100.64.5.5", "8.8.8.8", "198.51.20.5"]:
        assert lookup(ipaddress.ip_address(text)) == by_hand(text)
    assert lookup(ipaddress.ip_address("127.0.0.1")) == "127.0.0.1"
    assert lookup(ipaddress.ip_address("2001:db8::1")) == "2001:db8::/32"


def test_a_file_pyasn_cannot_read_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.dat"
    bad.write_text("this is not an ipasn file\n")
    with pytest.raises(AsnDatabaseError, match="not a pyasn IPASN file"):
        AsnLookup(str(bad))


def test_the_beam_transform_gives_the_in_process_answer(tmp_path):
    import apache_beam as beam

    from beamlytics.transforms.analytics import FindRogueResolvers
    from tests.conftest import collect

    table = dns_table(planted_rows())
    lookup = AsnLookup(write_ipasn(tmp_path / "ipasn.dat"))
    batches = [table.slice(start, 7) for start in range(0, table.num_rows, 7)]
    [verdict] = collect(lambda pipeline: pipeline | beam.Create(batches) | FindRogueResolvers(CONFIG, lookup))
    expected = remedy(table, CONFIG, lookup)
    assert verdict.report.equals(expected.report) and verdict.pairs.equals(expected.pairs)
    assert verdict.report.num_rows == 1 and verdict.truncated_pairs == expected.truncated_pairs == 0


def _zeek_dns_log(folder) -> str:
    """The planted rows as a Zeek dns.log, for the command end to end."""
    from beamlytics import synthetic

    day = folder / "2024-05-01"
    day.mkdir(parents=True)
    rows = []
    for number, row in enumerate(r for r in planted_rows() if r.get("answers") and "RA" in r["flags"]):
        rows.append([synthetic._ts(1_714_550_400_000_000 + number * 1000), f"C{number:06d}", row.get("c_ip", "10.9.9.9"), "5353",
                     row["s_ip"], "53", "udp", str(number), "0.001000", row["query"], "1", "C_INTERNET", "1", "A",
                     "0", "NOERROR", "F", "F", "T", "T", "0", ",".join(row["answers"]),
                     ",".join(f"{ttl}.000000" for ttl in row["answer_ttls"]), "F"])
    synthetic._write(str(day / "dns.log"), "dns", synthetic._DNS_FIELDS, rows, 1_714_550_400_000_000)
    return str(day)


def test_the_command_reports_the_rogue_resolver_from_raw_logs(tmp_path, capsys):
    logs = _zeek_dns_log(tmp_path / "logs")
    out = tmp_path / "out"
    argv = ["remedy", logs, "--table", "dns", "--asn-db", write_ipasn(tmp_path / "ipasn.dat"), "--output", str(out),
            "--min-resolutions", str(CONFIG.min_resolutions), "--quiet"]
    assert cli.main(argv) == 0
    report = pq.read_table(out / "result.parquet")
    assert report["resolver"].to_pylist() == [ROGUE] and report["asn"].to_pylist() == [str(ROGUE_ASN)]
    # The runner's merged pair statistics judge as the in-process function does on the parsed records.
    parsed = pq.read_table(out / "dns", schema=schemas.TABLES["dns"])
    expected_report, expected_pairs, _ = remedy(parsed, CONFIG, AsnLookup(str(tmp_path / "ipasn.dat")))
    assert report.equals(expected_report) and pq.read_table(out / "pairs.parquet").equals(expected_pairs)
    assert expected_pairs.num_rows == 5
    assert (out / "result.csv").is_file() and (out / "rejected").is_dir() and (out / "summary.json").is_file()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_output_file_holds_the_report_and_the_pairs_beside_it(tmp_path, capsys, suffix):
    logs = _zeek_dns_log(tmp_path / "logs")
    common = ["remedy", logs, "--table", "dns", "--asn-db", write_ipasn(tmp_path / "ipasn.dat"),
              "--min-resolutions", str(CONFIG.min_resolutions), "--quiet"]
    assert cli.main([*common, "--output", str(tmp_path / "folder")]) == 0
    target = tmp_path / f"rogue{suffix}"
    assert cli.main([*common, "--output", str(target)]) == 0
    pairs = tmp_path / f"rogue.pairs{suffix}"
    if suffix == ".csv":
        assert target.read_bytes() == (tmp_path / "folder" / "result.csv").read_bytes()
        assert pairs.read_bytes() == (tmp_path / "folder" / "pairs.csv").read_bytes()
    else:
        assert pq.read_table(target).equals(pq.read_table(tmp_path / "folder" / "result.parquet"))
        assert pq.read_table(pairs).equals(pq.read_table(tmp_path / "folder" / "pairs.parquet"))
    assert (tmp_path / "rogue.rejected.parquet").is_file()
    # A second run must not replace the pairs file unless told to.
    target.unlink()
    capsys.readouterr()
    assert cli.main([*common, "--output", str(target)]) == 2
    assert f"rogue.pairs{suffix} exists" in capsys.readouterr().err and not target.exists()
    assert cli.main([*common, "--output", str(target), "--overwrite"]) == 0


def test_truncated_pairs_are_said_on_stderr(tmp_path, capsys):
    logs = _zeek_dns_log(tmp_path / "logs")
    assert cli.main(["remedy", logs, "--table", "dns", "--min-resolutions", str(CONFIG.min_resolutions),
                     "--max-pair-values", "2", "--output", str(tmp_path / "out"), "--quiet"]) == 0
    # Every (resolver, domain) pair has at least 3 clients (one per repeat), more than 2: all 42 are cut.
    pairs = len(RESOLVERS) * (len(SERVICES) + 1)
    assert f"{pairs} (resolver, domain) pairs had more than 2 distinct values" in capsys.readouterr().err
    assert pq.read_table(tmp_path / "out" / "pairs.parquet")["truncated"].to_pylist() == [True] * 5


@pytest.mark.parametrize("extra, message", [
    (["--asn-db", "/nonexistent/ipasn.dat"], "no such file"),
    (["--min-agree", "9"], "min-agree cannot exceed min-resolvers"),
    (["--table", "http"], "runs on the dns table"),
])
def test_user_mistakes_end_with_one_line(tmp_path, capsys, extra, message):
    logs = _zeek_dns_log(tmp_path / "logs")
    code = cli.main(["remedy", logs, "--table", "dns", "--output", str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "result.csv")
