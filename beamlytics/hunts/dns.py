"""DNS tunnelling per registered domain.

RITA's C2-over-DNS measure is the number of distinct subdomains queried under one
registered domain: a tunnel encodes each message in a fresh name. Busy CDN and cloud zones
also have many distinct names, but short, wordy ones; tunnel names are long, high-entropy
and often asked as TXT or NULL records, whose answers carry the most payload. The score is
the geometric mean of the volume score and that payload score, so a domain needs both.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.hunts import stats
from beamlytics.hunts.aggregate import SET, SUM, Family, group, micros, with_horizons
from beamlytics.hunts.config import HuntConfig
from beamlytics.hunts.findings import finding
from beamlytics.schemas import domains

PAYLOAD_TYPES = ("TXT", "NULL")
CLIENTS_KEPT = 16


def _build_domains(batch: pa.RecordBatch, config: HuntConfig) -> pa.Table:
    table = pa.Table.from_batches([batch]).filter(pc.is_valid(batch.column("req_time")))
    registered, subdomains = domains.split_names(table["query"])
    keep = pc.and_(pc.is_valid(registered), pc.invert(domains.is_reverse_zone(registered)))
    table, registered, subdomains = table.filter(keep), registered.filter(keep), subdomains.filter(keep)
    lengths, entropy = stats.subdomain_measures(subdomains)
    columns = pa.table({
        "domain": registered,
        "queries": pa.array(np.ones(table.num_rows, np.int64)),
        "named": pc.cast(pc.is_valid(subdomains), pa.int64()),
        "subdomains": subdomains, "length": lengths, "entropy_mbit": entropy,
        "payload_type": pc.cast(pc.is_in(pc.fill_null(table["req_type"], ""), pa.array(PAYLOAD_TYPES)), pa.int64()),
        "clients": table["c_ip"],
    })
    columns = with_horizons(columns, micros(table["req_time"]).to_numpy(zero_copy_only=False), config)
    return group(columns, ("horizon", "domain"), [
        ("queries", "sum"), ("named", "sum"), ("subdomains", "distinct"), ("length", "sum"),
        ("entropy_mbit", "sum"), ("payload_type", "sum"), ("clients", "distinct"),
    ])


def tunnel_scores(unique_subdomains: int, mean_length: float, mean_entropy: float, payload_share: float,
                  config: HuntConfig) -> dict:
    volume = stats.bucket_score(unique_subdomains, config.tunnel_subdomain_thresholds)
    length = stats.bucket_score(mean_length, config.tunnel_length_thresholds)
    entropy = stats.bucket_score(mean_entropy, config.tunnel_entropy_thresholds)
    payload = (length + entropy + payload_share) / 3
    return {"volume_score": stats.round3(volume), "length_score": stats.round3(length),
            "entropy_score": stats.round3(entropy), "payload_score": stats.round3(payload),
            "score": stats.round3(math.sqrt(volume * payload))}


def _judge_domain(key: tuple, partial: dict, config: HuntConfig, hunts: frozenset) -> list[dict]:
    if "dns_tunnel" not in hunts:
        return []
    horizon_start, domain = key
    unique = len(partial["subdomains"])
    if unique < config.tunnel_subdomain_thresholds[0]:
        return []
    queries, named = partial["queries"], partial["named"]
    mean_length = partial["length"] / named if named else 0.0
    mean_entropy = partial["entropy_mbit"] / named / 1000 if named else 0.0
    payload_share = partial["payload_type"] / queries
    scores = tunnel_scores(unique, mean_length, mean_entropy, payload_share, config)
    if scores["score"] == 0:
        return []
    evidence = {**scores, "unique_subdomains": unique, "queries": queries, "mean_subdomain_length": round(mean_length, 3),
                "mean_entropy_bits": round(mean_entropy, 3), "txt_null_share": round(payload_share, 3),
                "clients": partial["clients"], "sample_subdomains": partial["subdomains"][:5]}
    summary = (f"{unique} distinct names were queried under {domain} ({queries} queries), on average "
               f"{mean_length:.0f} characters at {mean_entropy:.2f} bits/char, {payload_share:.0%} TXT/NULL.")
    return [finding("dns_tunnel", scores["score"], (horizon_start, horizon_start + config.horizon_us), queries,
                    partial["capped"], evidence, summary, dst=domain)]


DOMAINS = Family(
    name="dns_tunnel", keys=("horizon", "domain"),
    columns={"queries": (SUM, None), "named": (SUM, None), "subdomains": (SET, None), "length": (SUM, None),
             "entropy_mbit": (SUM, None), "payload_type": (SUM, None), "clients": (SET, CLIENTS_KEPT)},
    build=_build_domains, judge=_judge_domain,
)
