"""The NetLytics commands end to end: raw logs and parse folders in, result.parquet/.csv out, one-line errors."""
from __future__ import annotations

import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from beamlytics.analytics.tables import parse_output_files
from beamlytics.pipelines import cli
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """A parse output folder of a real Tstat capture's logs (named_flows)."""
    logs = shared_data("logs/tstat/dazn_1mbit_exp0")
    folder = tmp_path_factory.mktemp("parsed") / "out"
    assert cli.main(["parse", str(logs), "--table", "named_flows", "--output", str(folder), "--quiet"]) == 0
    return folder


@pytest.mark.parametrize("command", ["query", "domain-traffic", "top-dns", "what", "cluster"])
def test_help(command, capsys):
    assert cli.main([command, "--help"]) == 0
    assert "--output" in capsys.readouterr().out


def test_domain_traffic_on_a_parse_folder_matches_pandas(parsed, tmp_path):
    out = tmp_path / "traffic"
    assert cli.main(["domain-traffic", str(parsed), "--table", "named_flows", "--top", "7", "--output", str(out),
                     "--quiet"]) == 0
    frame = pd.concat(pq.read_table(path).to_pandas() for path in parse_output_files(str(parsed), "named_flows"))
    frame["bytes"] = frame["c_bytes"].fillna(0) + frame["s_bytes"].fillna(0)
    expected = (frame.groupby("name", dropna=False)["bytes"].sum().reset_index()
                .sort_values(["bytes", "name"], ascending=[False, True]).head(7))
    got = pd.read_csv(out / "result.csv")
    assert got["name"].tolist() == expected["name"].tolist()
    assert got["bytes"].tolist() == expected["bytes"].astype("int64").tolist()


def test_query_on_raw_logs_equals_query_on_their_parse_folder(parsed, tmp_path):
    sql = "SELECT c_ip, COUNT(*) AS flows, SUM(c_bytes) AS up FROM named_flows GROUP BY c_ip ORDER BY c_ip"
    logs = shared_data("logs/tstat/dazn_1mbit_exp0")
    raw, folder = tmp_path / "raw", tmp_path / "folder"
    assert cli.main(["query", sql, "--table", "named_flows", str(logs), "--output", str(raw), "--quiet"]) == 0
    assert cli.main(["query", sql, "--table", "named_flows", str(parsed), "--output", str(folder), "--quiet"]) == 0
    assert (raw / "result.csv").read_bytes() == (folder / "result.csv").read_bytes()
    assert (raw / "rejected").is_dir() and (raw / "summary.json").is_file()


def test_a_day_range_outside_the_data_gives_an_empty_result_that_says_why(parsed, tmp_path, capsys):
    assert cli.main(["domain-traffic", str(parsed), "--table", "named_flows", "--start-day", "1990-01-01",
                     "--end-day", "1990-01-02", "--output", str(tmp_path / "e2"), "--quiet"]) == 0
    assert "table is empty between 1990-01-01 and 1990-01-02" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["query", "SELECT nope FROM netlytics"], "SQL:"),
    (["query", "DROP TABLE netlytics"], "exactly one SELECT"),
    (["top-dns", "--top", "5"], "runs on the dns table"),
    (["what", "--cores", " , "], "CORES names no core domain"),
])
def test_user_mistakes_end_with_one_line_and_exit_2(parsed, tmp_path, capsys, argv, message):
    code = cli.main([*argv, str(parsed), "--table", "named_flows", "--output", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "result.csv").exists()


def test_an_earlier_result_is_never_overwritten_without_asking(parsed, tmp_path, capsys):
    out = tmp_path / "twice"
    argv = ["domain-traffic", str(parsed), "--table", "named_flows", "--output", str(out), "--quiet"]
    assert cli.main(argv) == 0
    first = (out / "result.csv").read_bytes()
    assert cli.main([*argv[:-1], "--top", "1", "--quiet"]) == 2
    assert (out / "result.csv").read_bytes() == first
    assert cli.main([*argv, "--top", "1", "--overwrite"]) == 0
    assert len((out / "result.csv").read_text().splitlines()) == 2


def test_cluster_on_a_parse_folder_matches_sklearn(parsed, tmp_path):
    import numpy as np
    from sklearn.cluster import KMeans

    out = tmp_path / "clusters"
    assert cli.main(["cluster", str(parsed), "--table", "named_flows", "--algorithm", "kmeans", "--k", "3",
                     "--seed", "4", "--numerical", "c_bytes,s_bytes", "--fit-rows", "40", "--output", str(out),
                     "--quiet"]) == 0
    frame = pd.concat(pq.read_table(path).to_pandas() for path in parse_output_files(str(parsed), "named_flows"))
    matrix = frame[["c_bytes", "s_bytes"]].fillna(0).to_numpy(dtype=float)
    expected = KMeans(n_clusters=3, random_state=4, n_init=10).fit(matrix[:40]).predict(matrix)
    got = pq.read_table(out / "result.parquet")
    assert got["cluster"].to_pylist() == expected.tolist()
    assert np.allclose(np.array(got["features"].to_pylist()), matrix)
    assert got.num_rows == len(frame)


def test_cluster_names_a_missing_column(parsed, tmp_path, capsys):
    code = cli.main(["cluster", str(parsed), "--table", "named_flows", "--algorithm", "dbscan",
                     "--numerical", "bites", "--output", str(tmp_path / "x"), "--quiet"])
    assert code == 2 and "no such column(s): bites" in capsys.readouterr().err


def _flows(parsed) -> pd.DataFrame:
    return pd.concat(pq.read_table(path).to_pandas() for path in parse_output_files(str(parsed), "named_flows"))


def test_cluster_query_preprocessing_clusters_the_selected_rows(parsed, tmp_path):
    from sklearn.cluster import KMeans

    out = tmp_path / "tcp"
    sql = "SELECT c_ip, c_bytes, s_bytes FROM netlytics WHERE proto = 'tcp' AND s_bytes > 1000"
    assert cli.main(["cluster", str(parsed), "--table", "named_flows", "--algorithm", "kmeans", "--k", "2",
                     "--numerical", "c_bytes,s_bytes", "--query", sql, "--output", str(out), "--quiet"]) == 0
    frame = _flows(parsed)
    chosen = frame[(frame["proto"] == "tcp") & (frame["s_bytes"] > 1000)]
    matrix = chosen[["c_bytes", "s_bytes"]].fillna(0).to_numpy(dtype=float)
    got = pq.read_table(out / "result.parquet")
    assert got.column_names == ["c_ip", "c_bytes", "s_bytes", "features", "cluster"]
    assert got["cluster"].to_pylist() == KMeans(n_clusters=2, random_state=0, n_init=10).fit_predict(matrix).tolist()


def test_cluster_of_endpoint_windows_matches_pandas_windows_and_sklearn(parsed, tmp_path):
    import numpy as np
    from sklearn.mixture import GaussianMixture

    out = tmp_path / "windows"
    assert cli.main(["cluster", str(parsed), "--table", "named_flows", "--algorithm", "gaussian_mixture",
                     "--k", "2", "--windows", "--key", "c_ip", "--window", "10s", "--numerical", "records,s_bytes",
                     "--normalise", "--output", str(out), "--quiet"]) == 0
    frame = _flows(parsed).dropna(subset=["time_start", "c_ip"])
    start_us = frame["time_start"].astype("datetime64[us, UTC]").astype("int64")
    frame = frame.assign(window=start_us // 10_000_000 * 10_000_000)
    windows = (frame.groupby(["c_ip", "window"]).agg(records=("c_ip", "size"), s_bytes=("s_bytes", "sum"))
               .reset_index())
    got = pq.read_table(out / "result.parquet").to_pandas()
    got_start = got["window_start"].astype("datetime64[us, UTC]").astype("int64")
    merged = windows.merge(got.assign(window=got_start), left_on=["c_ip", "window"], right_on=["key", "window"],
                           suffixes=("", "_got"))
    # A flow also makes the later windows it lasts into active: those hold no record starting in them.
    assert len(merged) == len(windows) == (got["records"] > 0).sum() > 1
    assert (merged["records"] == merged["records_got"]).all()
    assert np.allclose(merged["s_bytes"], merged["s_bytes_got"])
    matrix = got[["records", "s_bytes"]].to_numpy(dtype=float)
    scaled = (matrix - matrix.mean(axis=0)) / np.where(matrix.std(axis=0) > 0, matrix.std(axis=0), 1)
    reference = GaussianMixture(n_components=2, random_state=0).fit(scaled)
    assert got["cluster"].tolist() == reference.predict(scaled).tolist()
    assert np.allclose(got["probability"], reference.predict_proba(scaled).max(axis=1))


def test_output_x_csv_is_one_file_and_an_existing_file_is_refused(parsed, tmp_path, capsys):
    target = tmp_path / "traffic.csv"
    sql = "SELECT name, SUM(s_bytes) AS traffic FROM netlytics GROUP BY name ORDER BY traffic DESC, name"
    argv = ["query", sql, "--table", "named_flows", str(parsed), "--output", str(target), "--quiet"]
    assert cli.main(argv) == 0
    frame = _flows(parsed)
    expected = (frame.groupby("name", dropna=False)["s_bytes"].sum(min_count=1).reset_index(name="traffic")
                .sort_values(["traffic", "name"], ascending=[False, True], na_position="last"))
    got = pd.read_csv(target)
    assert got["name"].fillna("").tolist() == expected["name"].fillna("").tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traffic.csv"]  # a parse folder leaves no dead letters
    first = target.read_bytes()
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == first
    assert cli.main([*argv, "--overwrite"]) == 0 and target.read_bytes() == first


def test_output_x_parquet_from_raw_logs_keeps_the_dead_letters_beside_it(tmp_path):
    logs = shared_data("logs/tstat/dazn_1mbit_exp0")
    target = tmp_path / "flows.parquet"
    sql = "SELECT c_ip, COUNT(*) AS flows FROM netlytics GROUP BY c_ip ORDER BY c_ip"
    assert cli.main(["query", sql, "--table", "named_flows", str(logs), "--output", str(target), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flows.parquet", "flows.rejected.parquet"]
    from beamlytics import schemas

    assert pq.read_schema(tmp_path / "flows.rejected.parquet").equals(schemas.REJECTED)
    folder = tmp_path / "folder"
    assert cli.main(["query", sql, "--table", "named_flows", str(logs), "--output", str(folder), "--quiet"]) == 0
    assert pq.read_table(target).equals(pq.read_table(folder / "result.parquet"))


def test_a_users_file_beside_the_result_is_never_replaced(parsed, tmp_path, capsys):
    (tmp_path / "top.rejected.parquet").write_text("my notes")
    code = cli.main(["domain-traffic", str(parsed), "--table", "named_flows", "--output", str(tmp_path / "top.csv"),
                     "--overwrite", "--quiet"])
    assert code == 2 and "is not beamlytics' rejected records" in capsys.readouterr().err
    assert (tmp_path / "top.rejected.parquet").read_text() == "my notes" and not (tmp_path / "top.csv").exists()


def test_detect_query_equals_detect_on_the_log_without_those_records(tmp_path, capsys):
    from beamlytics import synthetic

    scenario = synthetic.Scenario(hours=1, clients=3, anomalous_client="10.0.0.2", anomaly_start_minute=30)
    logs = synthetic.write_zeek_logs(str(tmp_path / "logs"), scenario)
    # The reference: the same log with the client's lines cut out by hand.
    cut = tmp_path / "cut" / os.path.basename(logs)
    cut.mkdir(parents=True)
    with open(os.path.join(logs, "dns.log"), encoding="utf-8") as source:
        kept = [line for line in source if line.startswith("#") or line.split("\t")[2] != "10.0.0.2"]
    (cut / "dns.log").write_text("".join(kept), encoding="utf-8")
    queried, reference = tmp_path / "queried", tmp_path / "reference"
    common = ["--table", "dns", "--window", "60s", "--quiet"]
    assert cli.main(["detect", os.path.join(logs, "dns.log"), *common, "--output", str(queried),
                     "--query", "SELECT * FROM netlytics WHERE c_ip <> '10.0.0.2'"]) == 0
    assert cli.main(["detect", str(cut / "dns.log"), *common, "--output", str(reference)]) == 0
    for folder in ("features", "scores"):
        got = pq.read_table(queried / folder).sort_by([("key", "ascending"), ("window_start", "ascending")])
        expected = pq.read_table(reference / folder).sort_by([("key", "ascending"), ("window_start", "ascending")])
        assert got.num_rows > 0 and got.equals(expected)
    assert "10.0.0.2" not in pq.read_table(queried / "features")["key"].to_pylist()
    capsys.readouterr()
    assert cli.main(["detect", os.path.join(logs, "dns.log"), *common, "--output", str(tmp_path / "bad"),
                     "--query", "SELECT c_ip, count(*) FROM netlytics GROUP BY c_ip"]) == 2
    err = capsys.readouterr().err
    assert "--query: a detect query runs row by row" in err and len(err.strip().splitlines()) == 1


def test_a_bad_day_is_refused_before_any_output_is_made(parsed, tmp_path, capsys):
    for output in (tmp_path / "folder", tmp_path / "top.csv"):
        assert cli.main(["domain-traffic", str(parsed), "--table", "named_flows", "--start-day", "2024-13-01",
                         "--output", str(output), "--quiet"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
