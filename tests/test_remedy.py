"""REMeDy on generated DNS tables: a planted rogue resolver among honest ones, with a generated pyasn file."""
from __future__ import annotations

import ipaddress
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamlytics import schemas
from beamlytics.analytics.remedy import AsnDatabaseError, AsnLookup, RemedyConfig, pair_stats, remedy
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

IPASN_LINES = [f"198.51.{n}.0/24\t{64500 + n}" for n in range(1, 10)] + [
    "198.51.20.0/24\t64520", "198.51.21.0/24\t64521", f"203.0.113.0/24\t{ROGUE_ASN}"]


def write_ipasn(path) -> str:
    """A pyasn IPASN file, in the format pyasn_util_convert.py writes (comments, then prefix TAB asn)."""
    path.write_text("; IP-ASN32-DAT file\n; generated for the REMeDy tests\n" + "\n".join(IPASN_LINES) + "\n")
    return str(path)


def answer(resolver: str, domain: str) -> tuple[list[str], list[int]]:
    if resolver == ROGUE and domain in ("bank1.com", "login.bank1.com", "bank2.com", "bank3.com"):
        return [ROGUE_SERVER], [86400]
    if domain == CDN:
        return [f"edge.{CDN}", CDN_SERVERS.get(resolver, CDN_DEFAULT)], [60, 20]
    if resolver == "192.0.2.3" and domain == "news.example.org":
        return [f"www.{domain}", UNMAPPED], [300, 300]
    address, _ = SERVICES[domain]
    return [f"edge.{domain}", address], [300, 300]


def planted_rows() -> list[dict]:
    rows = []
    for resolver in RESOLVERS:
        for domain in [*SERVICES, CDN]:
            for repeat in range(REPEATS):
                answers, ttls = answer(resolver, domain)
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
    report, pairs = remedy(dns_table(planted_rows()), CONFIG, AsnLookup(write_ipasn(tmp_path / "ipasn.dat")))
    # Worked by hand: the rogue answers 4 names of 3 registered domains from one server, without the CNAME
    # and with a day-long TTL; nobody else returns its ASN for them.
    assert report.to_pylist() == [{
        "resolver": ROGUE, "asn": str(ROGUE_ASN), "registered_domains": 3,
        "domains": "bank1.com bank2.com bank3.com login.bank1.com", "servers": ROGUE_SERVER,
        "features": "clen ttl asn", "responses": 4 * REPEATS, "clients": REPEATS}]
    # The honest resolver with one odd answer is inconsistent on that domain, but sends one domain only.
    assert pairs.to_pylist() == [
        {"resolver": "192.0.2.3", "domain": "news.example.org", "responses": REPEATS, "features": "asn"},
        *({"resolver": ROGUE, "domain": domain, "responses": REPEATS, "features": "clen ttl asn"}
          for domain in ("bank1.com", "bank2.com", "bank3.com", "login.bank1.com"))]


def test_registered_domains_not_names_are_counted():
    config = RemedyConfig(CONFIG.min_resolutions, 3, 2, min_domains=4)
    report, pairs = remedy(dns_table(planted_rows()), config)
    assert report.num_rows == 0  # bank1.com and login.bank1.com are one registered domain
    assert pairs.num_rows == 5


def test_without_an_asn_file_each_address_stands_for_its_16():
    report, _ = remedy(dns_table(planted_rows()), CONFIG)
    assert report["asn"].to_pylist() == ["203.0.0.0/16"]


def test_a_domain_with_too_few_answers_or_resolvers_is_not_judged():
    rows = planted_rows()
    assert remedy(dns_table(rows), RemedyConfig(min_resolutions=len(RESOLVERS) * REPEATS + 1))[1].num_rows == 0
    assert remedy(dns_table(rows), RemedyConfig(min_resolutions=1, min_resolvers=7, min_agree=2))[1].num_rows == 0


def test_pair_statistics_are_an_independent_count_of_the_rows(tmp_path):
    lookup = AsnLookup(write_ipasn(tmp_path / "ipasn.dat"))
    pairs = pair_stats(dns_table(planted_rows()), lookup)
    bank2 = pairs[(ROGUE, "bank2.com")]
    assert (bank2.responses, dict(bank2.clen), dict(bank2.nip), dict(bank2.ttl), dict(bank2.asn)) == (
        REPEATS, {0: REPEATS}, {1: REPEATS}, {86400: REPEATS}, {str(ROGUE_ASN): REPEATS})
    cdn = pairs[("192.0.2.3", CDN)]
    assert dict(cdn.ttl) == {60: REPEATS} and dict(cdn.clen) == {1: REPEATS} and dict(cdn.asn) == {"64521": REPEATS}
    assert (ROGUE, "bank4.com") in pairs and pairs[(ROGUE, "bank4.com")].responses == REPEATS  # others ignored
    assert len(pairs) == len(RESOLVERS) * (len(SERVICES) + 1)


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
    [(report, pairs)] = collect(lambda pipeline: pipeline | beam.Create(batches) | FindRogueResolvers(CONFIG, lookup))
    expected_report, expected_pairs = remedy(table, CONFIG, lookup)
    assert report.equals(expected_report) and pairs.equals(expected_pairs)


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
    expected_report, expected_pairs = remedy(parsed, CONFIG, AsnLookup(str(tmp_path / "ipasn.dat")))
    assert report.equals(expected_report) and pq.read_table(out / "pairs.parquet").equals(expected_pairs)
    assert expected_pairs.num_rows == 5
    assert (out / "result.csv").is_file() and (out / "rejected").is_dir() and (out / "summary.json").is_file()


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
