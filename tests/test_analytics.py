"""NetLytics' analytics: SQL (DuckDB vs pandas), domain traffic, top DNS servers, WHAT on planted services."""
from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.analytics.cluster import cluster_table
from beamlytics.analytics.domains import top_dns_servers, top_domains
from beamlytics.analytics.sql import QueryError, run_query
from beamlytics.analytics.what import UNKNOWN, WhatConfig, generalise_name, learn_bags, service_traffic

T0 = int(dt.datetime(2024, 5, 1, 8, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)


def flows_table(rows: list[dict]) -> pa.Table:
    """A named_flows table with the schema's columns; `rows` give the ones that matter here."""
    schema = schemas.TABLES["named_flows"].empty_table().schema
    columns = {}
    for column in schema:
        values = [row.get(column.name) for row in rows]
        if column.name in ("time_start", "time_end"):
            values = [None if value is None else T0 + value for value in values]
            columns[column.name] = pa.array(values, pa.int64()).cast(column.type)
        elif column.name == "source_pos":
            columns[column.name] = pa.array(range(len(rows)), column.type)
        elif column.name in ("source_tool", "source_file"):
            columns[column.name] = pa.array(["test"] * len(rows), column.type)
        else:
            columns[column.name] = pa.array(values, column.type)
    return pa.table(columns, schema=schema)


def random_flows(seed: int, n: int = 2000) -> pa.Table:
    rng = np.random.default_rng(seed)
    names = [f"host{i}.example.com" for i in range(40)]
    rows = [{"c_ip": f"10.0.0.{rng.integers(1, 30)}", "name": names[rng.integers(0, 40)],
             "s_bytes": int(rng.integers(0, 10**6)), "c_bytes": int(rng.integers(0, 10**4)),
             "time_start": int(rng.integers(0, 86_400 * 10**6))} for _ in range(n)]
    return flows_table(rows)


def test_sql_matches_pandas_by_both_table_names():
    table = random_flows(1)
    frame = table.to_pandas()
    expected = (frame.groupby("name")["s_bytes"].sum().reset_index(name="traffic")
                .sort_values(["traffic", "name"], ascending=[False, True]).reset_index(drop=True))
    for name in ("netlytics", "named_flows"):
        got = run_query(f"SELECT name, SUM(s_bytes) AS traffic FROM {name} GROUP BY name "
                        "ORDER BY traffic DESC, name", {"named_flows": table}).to_pandas()
        assert got["name"].tolist() == expected["name"].tolist()
        assert got["traffic"].astype("int64").tolist() == expected["traffic"].tolist()


def test_sql_filters_like_pandas():
    table = random_flows(2)
    frame = table.to_pandas()
    got = run_query("SELECT c_ip, COUNT(*) AS n FROM netlytics WHERE c_bytes > 5000 GROUP BY c_ip ORDER BY c_ip",
                    {"named_flows": table}).to_pandas()
    expected = frame[frame["c_bytes"] > 5000].groupby("c_ip").size().sort_index()
    assert got["c_ip"].tolist() == expected.index.tolist()
    assert got["n"].tolist() == expected.tolist()


@pytest.mark.parametrize("sql", ["SELECT nope FROM netlytics", "SELEC 1", "CREATE TABLE t (a INT)", "SELECT 1; SELECT 2",
                                 "SELECT * FROM read_csv('/etc/passwd')"])
def test_sql_errors_are_one_line(sql):
    with pytest.raises(QueryError) as error:
        run_query(sql, {"named_flows": random_flows(3, 10)})
    assert "\n" not in str(error.value)


def test_domain_traffic_hand_worked_on_squid_like_nulls():
    # Squid flows: one direction's bytes unknown, sometimes no name (NetLytics' DomainTraffic crashed here).
    table = flows_table([
        {"name": "a.com", "c_bytes": 100, "s_bytes": None},
        {"name": "b.com", "c_bytes": None, "s_bytes": 500},
        {"name": "a.com", "c_bytes": 50, "s_bytes": 400},
        {"name": None, "c_bytes": 7, "s_bytes": 3},
        {"name": "c.com", "c_bytes": None, "s_bytes": None},
        {"name": "d.com", "c_bytes": 300, "s_bytes": 250},
    ])
    # a.com 100 + 50 + 400 = 550 ties d.com 300 + 250 = 550: the name breaks the tie.
    assert top_domains(table, 3).to_pylist() == [
        {"name": "a.com", "bytes": 550, "flows": 2}, {"name": "d.com", "bytes": 550, "flows": 1},
        {"name": "b.com", "bytes": 500, "flows": 1}]
    assert top_domains(table, 10).to_pylist()[3:] == [{"name": None, "bytes": 10, "flows": 1},
                                                     {"name": "c.com", "bytes": 0, "flows": 1}]


def test_top_dns_servers_match_a_counter():
    rng = np.random.default_rng(4)
    resolvers = [f"192.0.2.{rng.integers(1, 12)}" for _ in range(500)]
    dns = pa.table({"s_ip": resolvers})
    counts = Counter(resolvers)
    expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:5]
    assert [(row["resolver"], row["queries"]) for row in top_dns_servers(dns, 5).to_pylist()] == expected


def test_generalise_name_collapses_cdn_labels_and_digits():
    assert generalise_name("r3---sn-4g5e6nsz.googlevideo.com") == "CD---sn-X.googlevideo.com"
    assert generalise_name("d1a2b3.cloudfront.net") == "X.cloudfront.net"
    assert generalise_name("ipv4-c12-mxp001.nflxvideo.net") == "ipvD-CD-mxpD.nflxvideo.net"


SERVICES = {
    "www.netflix.com": ["api.netflix.com", "ipv4-c12-mxp001.nflxvideo.net", "fonts.gstatic.com"],
    "www.youtube.com": ["i.ytimg.com", "r3---sn-4g5e6nsz.googlevideo.com", "fonts.gstatic.com"],
}


def planted_sessions(seed: int) -> tuple[pa.Table, Counter]:
    """Clients visiting one service per session (core then its domains within seconds), and unrelated browsing
    long after: the bytes each service caused are known by construction."""
    rng = np.random.default_rng(seed)
    rows, truth = [], Counter()
    for session in range(120):
        client = f"10.1.0.{session % 7}"
        start = session * 120 * 10**6  # sessions 2 minutes apart: every core visit follows > GAP of silence
        core = sorted(SERVICES)[rng.integers(0, 2)]
        offsets = [0, *sorted(rng.integers(1, 4 * 10**6, size=len(SERVICES[core])))]
        for offset, name in zip(offsets, [core, *SERVICES[core]]):
            size = int(rng.integers(1_000, 100_000))
            rows.append({"c_ip": client, "name": name, "time_start": start + int(offset),
                         "time_end": start + int(offset) + 500_000, "c_bytes": size // 10, "s_bytes": size})
            truth[core] += size // 10 + size
        size = int(rng.integers(1_000, 100_000))
        rows.append({"c_ip": client, "name": f"news{rng.integers(0, 3)}.example.org", "time_start": start + 60 * 10**6,
                     "time_end": start + 61 * 10**6, "c_bytes": 0, "s_bytes": size})
        truth[UNKNOWN] += size
    order = rng.permutation(len(rows))  # arrival order must not matter
    return flows_table([rows[i] for i in order]), truth


def test_what_meters_planted_services():
    flows, truth = planted_sessions(5)
    config = WhatConfig(frozenset(SERVICES), ow=10, gap=10, ew=5, minfreq=0.05)
    bags = learn_bags(flows, config)
    assert set(bags.weights["www.netflix.com"]) == {"api.netflix.com", "ipvD-CD-mxpD.nflxvideo.net",
                                                    "fonts.gstatic.com"}
    # A domain in every core's bag says nothing about which: TF-IDF weight log10(2/2) = 0.
    assert bags.weights["www.youtube.com"]["fonts.gstatic.com"] == 0
    assert bags.weights["www.youtube.com"]["C.ytimg.com"] == pytest.approx(np.log10(2))
    got = {row["service"]: row["bytes"] for row in service_traffic(flows, config, bags).to_pylist()}
    assert got == dict(truth)


def test_what_parameters_are_seconds():
    # NetLytics divided millisecond times by 1000 twice: a 5 s EW then spanned 5000 s. Here the core at 0 s
    # (lasting 0 s) opens [0, 5 s]; the bag flow at 3 s extends it to 8 s; the one at 9 s is outside.
    names = [("www.netflix.com", 0), ("api.netflix.com", 3), ("api.netflix.com", 9)]
    flows = flows_table([{"c_ip": "10.0.0.1", "name": name, "time_start": at * 10**6, "time_end": at * 10**6,
                          "c_bytes": 1, "s_bytes": 10 ** (i + 1)} for i, (name, at) in enumerate(names)])
    config = WhatConfig(frozenset({"www.netflix.com"}), ow=10, gap=10, ew=5, minfreq=0.05)
    bags = learn_bags(flows, config)
    assert bags.visits["www.netflix.com"] == 1
    got = {row["service"]: row["bytes"] for row in service_traffic(flows, config, bags).to_pylist()}
    assert got == {"www.netflix.com": 11 + 101, UNKNOWN: 1001}


def blobs_table(seed: int) -> tuple[pa.Table, np.ndarray]:
    """Three groups of hosts (bytes, packets, protocol) and the matrix built independently: raw numbers, then
    one-hot protocol columns in sorted order (tcp, udp)."""
    rng = np.random.default_rng(seed)
    centres = [(1e3, 10, "tcp"), (5e4, 40, "udp"), (2e5, 200, "tcp")]
    rows = [(rng.normal(b, b / 20), rng.normal(p, p / 20), proto) for b, p, proto in centres for _ in range(60)]
    table = pa.table({"bytes": [r[0] for r in rows], "pkts": [r[1] for r in rows], "proto": [r[2] for r in rows]})
    matrix = np.array([[r[0], r[1], r[2] == "tcp", r[2] == "udp"] for r in rows], dtype=float)
    return table, matrix


@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting_kmeans", "gaussian_mixture", "dbscan"])
def test_clusters_are_sklearns_on_the_same_matrix(algorithm):
    from sklearn.cluster import DBSCAN, BisectingKMeans, KMeans
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    table, matrix = blobs_table(6)
    scaled = StandardScaler().fit_transform(matrix)
    reference = {"kmeans": KMeans(n_clusters=3, random_state=7, n_init=10),
                 "bisecting_kmeans": BisectingKMeans(n_clusters=3, random_state=7),
                 "gaussian_mixture": GaussianMixture(n_components=3, random_state=7),
                 "dbscan": DBSCAN(eps=0.5, min_samples=4)}[algorithm]
    expected = reference.fit_predict(scaled)
    params = {"eps": 0.5, "min_points": 4} if algorithm == "dbscan" else {"k": 3, "seed": 7}
    got = cluster_table(table, algorithm, ["bytes", "pkts"], ["proto"], normalise=True, **params)
    assert got["cluster"].to_pylist() == expected.tolist()
    assert np.allclose(np.array(got["features"].to_pylist()), scaled)
    assert len(set(expected[:60])) == 1 and len(set(expected)) == 3  # the planted groups are found
    if algorithm == "gaussian_mixture":
        assert np.allclose(got["probability"].to_numpy(), reference.predict_proba(scaled).max(axis=1))


@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting_kmeans", "gaussian_mixture"])
def test_runinference_assigns_what_the_fitted_model_predicts(algorithm):
    import apache_beam as beam

    from beamlytics.analytics.cluster import fit_features, make_model
    from beamlytics.transforms.analytics import AssignClusters
    from tests.conftest import collect

    table, _ = blobs_table(8)
    features = fit_features(table, ["bytes", "pkts"], ["proto"], True)
    sample = table.take(list(range(0, table.num_rows, 3)))  # fitted on a third of the rows
    model = make_model(algorithm, k=3, seed=1).fit(features.matrix(sample))
    batches = [(start, table.slice(start, 50)) for start in range(0, table.num_rows, 50)]
    got = {position: (label, probability) for position, label, probability
           in collect(lambda pipeline: pipeline | beam.Create(batches) | AssignClusters(features, model))}
    vectors = features.matrix(table)
    assert [got[i][0] for i in range(table.num_rows)] == model.predict(vectors).tolist()
    probabilities = np.array([got[i][1] for i in range(table.num_rows)])
    if algorithm == "gaussian_mixture":
        assert np.allclose(probabilities, model.predict_proba(vectors).max(axis=1))
    else:
        assert np.isnan(probabilities).all()


@pytest.mark.parametrize("sql", [
    "SELECT * FROM netlytics ORDER BY c_ip LIMIT 3", "SELECT c_ip, count(*) FROM netlytics GROUP BY c_ip",
    "SELECT DISTINCT * FROM netlytics", "SELECT * FROM netlytics WHERE c_port > (SELECT avg(c_port) FROM netlytics)",
    "SELECT * REPLACE (count(*) OVER () AS c_port) FROM netlytics", "SELECT * FROM netlytics UNION SELECT * FROM dns",
    "SELECT c_ip FROM netlytics", "DELETE FROM netlytics"])
def test_a_detect_query_that_depends_on_the_batch_or_drops_columns_is_refused(sql):
    from beamlytics.analytics.sql import check_row_query

    with pytest.raises(QueryError):
        check_row_query(sql, "dns")


def test_a_row_query_gives_the_same_records_however_the_input_is_cut():
    from beamlytics.analytics.sql import check_row_query, query_batch

    sql = "SELECT * REPLACE (lower(name) AS name) FROM netlytics WHERE proto = 'tcp' AND c_bytes > 100"
    check_row_query(sql, "named_flows")
    rng = np.random.default_rng(3)
    table = flows_table([{"proto": ["tcp", "udp"][i % 2], "c_bytes": int(rng.integers(0, 200)), "name": f"Host{i}.COM"}
                         for i in range(300)])
    parts = [batch for start in range(0, 300, 37) for batch in query_batch(table.slice(start, 37), sql, "named_flows")]
    got = pa.Table.from_batches(parts)
    frame = table.to_pandas()
    expected = frame[(frame["proto"] == "tcp") & (frame["c_bytes"] > 100)]
    assert got["source_pos"].to_pylist() == expected["source_pos"].tolist()
    assert got["name"].to_pylist() == expected["name"].str.lower().tolist()
    assert got.schema.equals(table.schema)
