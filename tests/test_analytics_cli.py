"""The NetLytics commands end to end: raw logs and parse folders in, result.parquet/.csv out, one-line errors."""
from __future__ import annotations

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
