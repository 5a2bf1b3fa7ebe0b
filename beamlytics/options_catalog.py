"""The names and defaults the command line offers, in a module that imports only the standard library.

`beamlytics SUB --help` lists these choices and defaults; the modules that use them (parsers, features,
baseline, detectors, hunts, analytics) import them from here, so what the help says and what runs are one
definition, and no `--help` pays for numpy, pyarrow or Beam.
"""
from __future__ import annotations

import datetime as dt

# The keys of schemas.TABLES, of each parser module's FORMAT and of each detector class's name: those
# modules need pyarrow and numpy, so these lists repeat their names and tests/test_cli.py checks they agree.
TABLE_NAMES = ("dns", "http", "named_flows")
FORMAT_NAMES = ("zeek", "squid", "tstat", "argus", "suricata", "bind", "pcap", "nfstream")
DETECTOR_NAMES = ("gaussian", "iqr", "spot", "dspot", "poisson")

# A dns key that no record carries: the registered domain of `query`, derived per batch.
DOMAIN_KEY = "registered_domain"

# Endpoint keys an operator can choose, per table: option value -> column.
KEY_COLUMNS = {
    "dns": {"c_ip": "c_ip", "s_ip": "s_ip", "name": "query", "domain": DOMAIN_KEY},
    "http": {"c_ip": "c_ip", "s_ip": "s_ip", "name": "host"},
    "named_flows": {"c_ip": "c_ip", "s_ip": "s_ip", "name": "name"},
}
KEYS = tuple(dict.fromkeys(key for columns in KEY_COLUMNS.values() for key in columns))

# Features of each table, in output order (docs/guide.md, "Window features", says what each means).
# Ratios are fractions of the window's records.
FEATURES = {
    "dns": ("records", "distinct_peers", "distinct_names", "nxdomain_ratio", "unanswered_ratio",
            "max_query_length", "distinct_domains", "max_subdomains", "mean_subdomain_length",
            "max_subdomain_length", "mean_subdomain_entropy", "max_subdomain_entropy", "txt_null_any_ratio",
            "zero_ttl_ratio"),
    "http": ("records", "distinct_peers", "distinct_names", "error_ratio", "request_bytes",
             "response_bytes", "distinct_uris", "mean_uri_length", "max_uri_length", "client_error_ratio",
             "server_error_ratio", "post_ratio", "other_method_ratio", "distinct_user_agents"),
    "named_flows": ("records", "distinct_peers", "distinct_names", "distinct_ports", "c_pkt", "s_pkt",
                    "c_bytes", "s_bytes", "failed_ratio", "mean_duration", "max_duration", "active_flows",
                    "active_seconds", "max_peer_ports", "max_port_peers", "max_service_connections", "icmp_ratio"),
}
# What a hunter looks at first: volume, fan-out, failures, and the shape of names and URIs. Few: each default
# adds its benign spread to the verdict's combined statistic (docs/evaluation.md measured three more flow features).
DEFAULT_FEATURES = {
    "dns": ("records", "nxdomain_ratio", "max_subdomains", "max_subdomain_entropy", "txt_null_any_ratio"),
    "http": ("records", "distinct_names", "error_ratio", "max_uri_length", "distinct_user_agents"),
    "named_flows": ("records", "distinct_peers", "distinct_ports", "failed_ratio", "c_bytes", "active_seconds"),
}

# How records are placed in windows (see transforms/windows.py).
WINDOWINGS = ("key", "beam")

# Issue 9's budget itself: the verdict's p is calibrated on the population, so this is the share of benign
# judged windows expected to alarm (measured: 0.35 % on the attack benchmark, docs/evaluation.md).
DEFAULT_ALARM_RATE = 5e-3
DEFAULT_MIN_RECORDS = 3

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# The times Python's datetime holds, which every reader of the outputs converts to.
MIN_US = (dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc) - _EPOCH) // dt.timedelta(microseconds=1)
MAX_US = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc) - _EPOCH) // dt.timedelta(
    microseconds=1)

# Real logs compress 5-50x; a stream beyond this ratio is treated as a decompression bomb
# once it is past FREE_BYTES (small files may compress better than any ratio).
MAX_DECOMPRESSION_RATIO = 200
# A "line" longer than this is not text from a logging tool: it is rejected and reading
# resumes after its newline, so one hostile line never costs memory or the rest of the file.
MAX_LINE_BYTES = 1 << 20
DEFAULT_TIME_RANGE = "1970..2100"

DAY_US = 86_400_000_000
HUNT_CAP = 86_400  # timestamps/sizes/targets kept per key; beyond it the key is marked capped

CLUSTER_ALGORITHMS = ("kmeans", "bisecting_kmeans", "gaussian_mixture", "dbscan")
