"""Synthetic Zeek logs with a known anomaly: demo data and test fixtures.

Clients query a resolver at Poisson rates and open connections to the names they
resolved; one client, for a few minutes, fires hundreds of queries for random names under
one domain that all fail (NXDOMAIN), as DNS tunnelling or a DGA would. Everything is drawn
from a seeded generator, so the same arguments give the same bytes.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np

RESOLVER = "10.0.0.53"
DOMAINS = [f"{name}.example.com" for name in (
    "www", "mail", "cdn", "api", "static", "login", "news", "video", "docs", "git", "chat", "maps")]
SERVER_OF = {domain: f"192.0.2.{index + 10}" for index, domain in enumerate(DOMAINS)}

_HEADER = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\t{path}
#open\t{opened}
#fields\t{fields}
#types\t{types}
"""
_DNS_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("proto", "enum"), ("trans_id", "count"), ("rtt", "interval"), ("query", "string"),
    ("qclass", "count"), ("qclass_name", "string"), ("qtype", "count"), ("qtype_name", "string"),
    ("rcode", "count"), ("rcode_name", "string"), ("AA", "bool"), ("TC", "bool"), ("RD", "bool"),
    ("RA", "bool"), ("Z", "count"), ("answers", "vector[string]"), ("TTLs", "vector[interval]"),
    ("rejected", "bool"),
]
_CONN_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("proto", "enum"), ("service", "string"), ("duration", "interval"),
    ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "string"), ("missed_bytes", "count"),
    ("history", "string"), ("orig_pkts", "count"), ("orig_ip_bytes", "count"), ("resp_pkts", "count"),
    ("resp_ip_bytes", "count"),
]
_SSL_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("version", "string"), ("server_name", "string"), ("established", "bool"),
]


@dataclass(frozen=True)
class Scenario:
    day: dt.date = dt.date(2024, 5, 1)
    hours: int = 4
    clients: int = 20
    queries_per_minute: float = 3.0
    anomalous_client: str = "10.0.0.13"
    anomaly_start_minute: int = 150
    anomaly_minutes: int = 5
    anomaly_queries_per_minute: int = 240
    tunnel_domain: str = "t.exfil.example.net"
    seed: int = 7

    def __post_init__(self) -> None:
        # A host that only exists during its burst has no normal behaviour to stray from.
        if self.anomalous_client not in self.client_addresses():
            raise ValueError(f"the anomalous client {self.anomalous_client} is not one of the {self.clients} clients")

    def client_addresses(self) -> list[str]:
        return [f"10.0.0.{index + 1}" for index in range(self.clients)]

    @property
    def start_us(self) -> int:
        start = dt.datetime(self.day.year, self.day.month, self.day.day, tzinfo=dt.timezone.utc)
        return int(start.timestamp()) * 1_000_000

    def anomaly_window_starts_us(self, window_us: int) -> list[int]:
        """Starts of the windows that hold the injected burst."""
        first = self.start_us + self.anomaly_start_minute * 60_000_000
        last = first + self.anomaly_minutes * 60_000_000 - 1
        return list(range(first - first % window_us, last + 1, window_us))


def _ts(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _write(path: str, log: str, fields, rows: list[list[str]], opened_us: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_HEADER.format(
            path=log,
            opened=dt.datetime.fromtimestamp(opened_us / 1e6, dt.timezone.utc).strftime("%Y-%m-%d-%H-%M-%S"),
            fields="\t".join(name for name, _ in fields),
            types="\t".join(kind for _, kind in fields),
        ))
        for row in rows:
            handle.write("\t".join(row) + "\n")
        handle.write("#close\t" + dt.datetime.fromtimestamp(opened_us / 1e6, dt.timezone.utc)
                     .strftime("%Y-%m-%d-%H-%M-%S") + "\n")


def write_zeek_logs(folder: str, scenario: Scenario = Scenario()) -> str:
    """Write dns.log, conn.log and ssl.log for `scenario` under `folder/YYYY-MM-DD/`; return that path."""
    rng = np.random.default_rng(scenario.seed)
    day_folder = os.path.join(folder, scenario.day.isoformat())
    os.makedirs(day_folder, exist_ok=True)
    span_us = scenario.hours * 3_600_000_000
    minutes = scenario.hours * 60

    events = []  # (time µs, client, name, nxdomain)
    for client in scenario.client_addresses():
        count = rng.poisson(scenario.queries_per_minute * minutes)
        times = np.sort(rng.integers(0, span_us, size=count))
        names = rng.choice(DOMAINS, size=count)
        events.extend((int(t), client, str(name), False) for t, name in zip(times, names))
    burst_start = scenario.anomaly_start_minute * 60_000_000
    burst = rng.integers(burst_start, burst_start + scenario.anomaly_minutes * 60_000_000,
                         size=scenario.anomaly_queries_per_minute * scenario.anomaly_minutes)
    for t in np.sort(burst):
        label = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz234567"), size=32))
        events.append((int(t), scenario.anomalous_client, f"{label}.{scenario.tunnel_domain}", True))
    events.sort()

    dns_rows, conn_rows, ssl_rows = [], [], []
    for number, (offset, client, name, nxdomain) in enumerate(events):
        ts = scenario.start_us + offset
        uid = f"C{number:09d}"
        port = str(1024 + (number * 7919) % 60000)
        rtt_us = int(rng.integers(500, 30_000))
        answers, ttls, rcode = ("-", "-", ("3", "NXDOMAIN")) if nxdomain else (
            SERVER_OF[name], "300.000000", ("0", "NOERROR"))
        dns_rows.append([_ts(ts), uid, client, port, RESOLVER, "53", "udp", str(number % 65536),
                         f"{rtt_us / 1e6:.6f}", name, "1", "C_INTERNET", "1", "A", rcode[0], rcode[1],
                         "F", "F", "T", "T", "0", answers, ttls, "F"])
        conn_rows.append([_ts(ts), uid, client, port, RESOLVER, "53", "udp", "dns", f"{rtt_us / 1e6:.6f}",
                          "40", "56", "SF", "0", "Dd", "1", "68", "1", "84"])
        if not nxdomain:
            tls_uid = f"T{number:09d}"
            tls_ts = ts + rtt_us + 1000
            tls_port = str(1024 + (number * 104729) % 60000)
            sent, received = int(rng.integers(500, 5000)), int(rng.integers(2000, 200000))
            conn_rows.append([_ts(tls_ts), tls_uid, client, tls_port, SERVER_OF[name], "443", "tcp", "ssl",
                              f"{rng.uniform(0.05, 2.0):.6f}", str(sent), str(received), "SF", "0", "ShADadFf",
                              str(sent // 1000 + 4), str(sent + 200), str(received // 1400 + 4),
                              str(received + 300)])
            ssl_rows.append([_ts(tls_ts + 20_000), tls_uid, client, tls_port, SERVER_OF[name], "443",
                             "TLSv13", name, "T"])
    conn_rows.sort(key=lambda row: row[0])
    _write(os.path.join(day_folder, "dns.log"), "dns", _DNS_FIELDS, dns_rows, scenario.start_us)
    _write(os.path.join(day_folder, "conn.log"), "conn", _CONN_FIELDS, conn_rows, scenario.start_us)
    _write(os.path.join(day_folder, "ssl.log"), "ssl", _SSL_FIELDS, ssl_rows, scenario.start_us)
    return day_folder
