"""NetLytics' DomainTraffic (top names by bytes) and TopDNSServers (top resolvers by queries).

Null-safe where NetLytics crashed: Squid flows have no byte count for one direction and
sometimes no name; a missing count adds nothing, a missing name is its own (null) row.
Ties are broken by name so that the same input always gives the same list.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def top_domains(flows: pa.Table, n: int = 50) -> pa.Table:
    """The `n` names with the most bytes (client + server) in a named_flows table: name, bytes, flows."""
    total = pc.add(pc.fill_null(flows["c_bytes"], 0), pc.fill_null(flows["s_bytes"], 0))
    grouped = pa.table({"name": flows["name"], "bytes": total}).group_by("name", use_threads=False).aggregate(
        [("bytes", "sum"), ([], "count_all")])
    ranked = grouped.rename_columns(["name", "bytes", "flows"]).select(["name", "bytes", "flows"])
    return _top(ranked, "bytes", "name", n)


def top_dns_servers(dns: pa.Table, n: int = 50) -> pa.Table:
    """The `n` resolvers (s_ip) asked the most queries in a dns table: resolver, queries."""
    grouped = pa.table({"resolver": dns["s_ip"]}).group_by("resolver", use_threads=False).aggregate(
        [([], "count_all")])
    ranked = grouped.rename_columns(["resolver", "queries"]).select(["resolver", "queries"])
    return _top(ranked, "queries", "resolver", n)


def _top(table: pa.Table, measure: str, label: str, n: int) -> pa.Table:
    if n < 1:
        raise ValueError("N must be at least 1")
    order = pc.sort_indices(table, [(measure, "descending"), (label, "ascending")])
    return table.take(order[:n])
