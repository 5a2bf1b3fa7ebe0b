"""The `beamlytics` command end to end, on synthetic Zeek logs with a known anomaly."""
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beamlytics import synthetic
from beamlytics.features import DEFAULT_FEATURES
from beamlytics.pipelines import cli
from tests.conftest import shared_data

SCENARIO = synthetic.Scenario(hours=1, clients=6, anomalous_client="10.0.0.4", anomaly_start_minute=40,
                              anomaly_minutes=3)


@pytest.fixture(scope="module")
def zeek_logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zeek")
    synthetic.write_zeek_logs(str(folder), SCENARIO)
    return folder


def detect(logs, out, *extra):
    # 360 endpoint-windows: a burst of 3 has a population p near 3/360, above the default rate of 0.005.
    status = cli.main(["detect", "--table", "dns", "--alarm-rate", "0.02", "--output", str(out), *extra, str(logs)])
    assert status == 0
    return json.loads((Path(out) / "summary.json").read_text())


def output_bytes(out):
    """Every output file's bytes, by relative path: what must not change between runs."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def data_lines(path):
    return sum(1 for line in open(path, encoding="utf-8") if line.strip() and not line.startswith("#"))


def test_poisson_flags_the_burst_windows_and_nothing_else(zeek_logs, tmp_path):
    summary = detect(zeek_logs, tmp_path, "--detector", "poisson", "--window", "60s")
    dns_log = zeek_logs / SCENARIO.day.isoformat() / "dns.log"
    assert summary["read"] == summary["parsed"] == data_lines(dns_log)
    assert summary["rejected"] == 0
    anomalies = pq.read_table(tmp_path / "anomalies").to_pylist()
    found = {(row["key"], int(row["window_start"].timestamp() * 1e6)) for row in anomalies}
    expected = {(SCENARIO.anomalous_client, start) for start in SCENARIO.anomaly_window_starts_us(60_000_000)}
    assert found == expected
    assert summary["anomalies"] == len(expected)
    evidence = json.loads(anomalies[0]["evidence"])
    assert {"lambda", "mean", "D", "Delta", "Z", "eta", "C2", "Ra"} <= set(evidence)


def test_gaussian_reports_the_injected_host(zeek_logs, tmp_path):
    detect(zeek_logs, tmp_path, "--detector", "gaussian")
    anomalies = pq.read_table(tmp_path / "anomalies").to_pylist()
    burst = set(SCENARIO.anomaly_window_starts_us(60_000_000))
    # Any fired feature: the verdict names the fewest strongest that reach its threshold, not every one.
    flagged = {int(row["window_start"].timestamp() * 1e6) for row in anomalies
               if row["key"] == SCENARIO.anomalous_client}
    assert burst <= flagged
    scores = pq.read_table(tmp_path / "scores")
    features = pq.read_table(tmp_path / "features")
    # One score row per default dns feature and window.
    assert scores.num_rows == features.num_rows * len(DEFAULT_FEATURES["dns"])
    assert sum(features.column("records").to_pylist()) == data_lines(
        zeek_logs / SCENARIO.day.isoformat() / "dns.log")


@pytest.mark.runners
def test_same_bytes_on_every_runner_and_every_run(zeek_logs, tmp_path):
    runs = {
        "direct": [],
        "direct-again": [],
        "multi-processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
    }
    outputs = {}
    for seed, (name, options) in enumerate(runs.items()):
        out = tmp_path / name
        # A subprocess per run: runners keep process-wide state that must not leak between them.
        command = [sys.executable, "-m", "beamlytics.pipelines.cli", "detect", "--table", "dns",
                   "--detector", "spot", "--n-init", "20", "--output", str(out), *options, str(zeek_logs)]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": str(seed)})
        outputs[name] = output_bytes(out)
    reference = outputs.pop("direct")
    assert any(path.startswith("anomalies/") for path in reference)
    for name, files in outputs.items():
        assert files == reference, name


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "beamlytics.pipelines.cli", *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["detect", "--table", "dns", "--output", "OUT", "/no/such/folder"], "no such file or folder: /no/such/folder"),
    (["detect", "--table", "dns", "--output", "OUT", "--widow", "60s", "."], "unrecognised option: --widow"),
    (["detect", "--table", "dns", "--output", "OUT", "--q", "0.1", "."], "--q does not apply to the gaussian detector"),
    (["detect", "--table", "dns", "--output", "OUT", "--window", "sixty", "."], "not a duration"),
    (["detect", "--table", "dns", "--output", "OUT", "--features", "bogus", "."], "unknown feature(s) for dns: bogus"),
])
def test_user_errors_end_with_one_clear_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def rejected_rows(out):
    return pq.read_table(Path(out) / "rejected").to_pylist()


def test_parse_writes_the_table_and_dead_letters_what_it_cannot_read(zeek_logs, tmp_path):
    day = zeek_logs / SCENARIO.day.isoformat()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "dns.log").write_bytes((day / "dns.log").read_bytes())
    (inputs / "notes.bin").write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "dns", "--output", str(out), str(inputs)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = pq.read_table(out / "dns")
    assert records.num_rows == summary["records"] == summary["parsed"] == data_lines(day / "dns.log")
    # the unrecognised file is one dead letter for no units: nothing was read from it
    assert summary["dead_letters"] == summary["rejected_files"] == 1 and summary["rejected"] == 0
    assert summary["read"] == data_lines(day / "dns.log") and summary["unaccounted"] == 0
    [rejected] = rejected_rows(out)
    assert rejected["source_file"].endswith("notes.bin") and rejected["position"] == 0
    assert rejected["reason"] == "unrecognised format"
    positions = sorted(records.column("source_pos").to_pylist())
    assert positions[0] > 8  # line numbers count the header lines: the first record follows them


def test_day_range_selects_folders_and_record_times(tmp_path):
    for day in ("2024-05-01", "2024-05-02"):
        synthetic.write_zeek_logs(str(tmp_path / "zeek"), synthetic.Scenario(
            day=dt.date.fromisoformat(day), hours=1, clients=3, anomalous_client="10.0.0.2"))
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "dns", "--start-day", "2024-05-02", "--output", str(out),
                     str(tmp_path / "zeek")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == 1
    assert summary["records"] == data_lines(tmp_path / "zeek" / "2024-05-02" / "dns.log")
    days = {t.date().isoformat() for t in pq.read_table(out / "dns").column("req_time").to_pylist()}
    assert days == {"2024-05-02"}


def test_real_zeek_folder_runs_through_with_bad_files_dead_lettered(tmp_path):
    zeek = shared_data("logs/zeek")
    summary = detect(zeek, tmp_path, "--table", "http")
    assert summary["read"] == summary["parsed"] + summary["rejected"] and summary["unaccounted"] == 0
    reasons = {Path(row["source_file"]).name: row["reason"] for row in rejected_rows(tmp_path)}
    assert "http.log.corrupt.gz" in reasons
    assert summary["records"] > 0 and summary["windows"] > 0


def test_format_auto_recognises_every_tool(tmp_path):
    samples = {
        "zeek": shared_data("logs/zeek/zat_tsv/dns.log"),
        "bind": shared_data("logs/bind/bind_query_log_lines_from_public_sources.log"),
        "tstat": shared_data("logs/tstat/dazn_1mbit_exp0/log_dns_complete"),
        "pcap": shared_data("pcaps/dns/dsc_dnso1tcp.pcap"),
    }
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "dns", "--output", str(out), *map(str, samples.values())]) == 0
    tools = set(pq.read_table(out / "dns").column("source_tool").to_pylist())
    assert tools == set(samples)


def test_calibrating_on_a_baseline_run_equals_a_training_period(tmp_path):
    """Day 1 calibrates, day 2 is monitored: by an earlier run's features, or by --train-until."""
    logs = tmp_path / "zeek"
    for day, burst_minutes in (("2024-05-01", 0), ("2024-05-02", 5)):  # a normal day, then one with a burst
        synthetic.write_zeek_logs(str(logs), synthetic.Scenario(
            day=dt.date.fromisoformat(day), hours=2, clients=4, anomalous_client="10.0.0.2",
            anomaly_start_minute=60, anomaly_minutes=burst_minutes, seed=int(day[-1])))
    spot = ["--detector", "spot", "--n-init", "30", "--q", "1e-3"]
    detect(logs / "2024-05-01", tmp_path / "day1", *spot)
    detect(logs / "2024-05-02", tmp_path / "day2", *spot, "--baseline", str(tmp_path / "day1" / "features"))
    detect(logs, tmp_path / "both", *spot, "--train-until", "2024-05-02T00:00:00")

    by_baseline = pq.read_table(tmp_path / "day2" / "scores")
    by_period = pq.read_table(tmp_path / "both" / "scores")
    assert by_baseline.num_rows > 0
    assert by_baseline.equals(by_period)
    # A varying series is calibrated by day 1 alone; a constant one (nxdomain_ratio is 0 on normal
    # days) has no tail for SPOT to fit and honestly stays calibrating.
    records = [row["status"] for row in by_baseline.to_pylist() if row["feature"] == "records"]
    assert records and "calibrating" not in records
    found = pq.read_table(tmp_path / "day2" / "anomalies").column("key").to_pylist()
    assert "10.0.0.2" in found
