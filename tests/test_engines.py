"""Every detector and every table on the real engines gives the DirectRunner's bytes.

The engines come from `beamlytics runners install` (the cache in $BEAMLYTICS_RUNNERS or the
user's cache folder). Without them these tests skip and say so; under CI=true an engine that
CI provisions and that is missing is a failure, so CI can never pass by skipping them.
"""
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from beamlytics import synthetic
from beamlytics.pipelines import runners
from tests.conftest import shared_data
from tests.test_pipeline import SCENARIO, output_bytes

pytestmark = pytest.mark.engines

# Flink stays out: Maven Central serves no beam-runners-flink-*-job-server here (docs/runners.md).
PROVISIONED_IN_CI = {"prism"}

ENGINE_OPTIONS = {
    "prism": ("prism", ["--runner=PrismRunner"]),
    "flink-embedded": ("flink", ["--runner=FlinkRunner"]),
}

DETECT_CASES = {
    "gaussian": [],
    "iqr": [],
    "spot": ["--n-init", "20"],
    "dspot": ["--n-init", "20", "--depth", "5"],
    "poisson": [],
}


@pytest.fixture(scope="module")
def zeek_logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zeek")
    synthetic.write_zeek_logs(str(folder), SCENARIO)
    return folder


@pytest.fixture(scope="module")
def direct_outputs(tmp_path_factory):
    """DirectRunner outputs by case, each computed once and shared by every engine."""
    cache = {}

    def reference(case, command):
        if case not in cache:
            out = tmp_path_factory.mktemp(f"direct-{case}")
            run(command, out, [])
            cache[case] = output_bytes(out)
        return cache[case]

    return reference


def engine_args(engine_case):
    engine, options = ENGINE_OPTIONS[engine_case]
    if runners.installed(runners.ENGINES[engine], runners.cache_dir()) is None:
        reason = f"{engine} is not installed in {runners.cache_dir()} (run `beamlytics runners install {engine}`)"
        if os.environ.get("CI") == "true" and engine in PROVISIONED_IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return options


def run(command, out, options):
    # A subprocess per run: runners keep process-wide state that must not leak between them.
    result = subprocess.run([sys.executable, "-m", "beamlytics.pipelines.cli", *command, "--output", str(out),
                             *options], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("engine_case", ENGINE_OPTIONS)
@pytest.mark.parametrize("detector", DETECT_CASES)
def test_detect_gives_the_direct_runners_bytes(engine_case, detector, zeek_logs, direct_outputs, tmp_path):
    options = engine_args(engine_case)
    command = ["detect", "--table", "dns", "--detector", detector, *DETECT_CASES[detector], str(zeek_logs)]
    reference = direct_outputs(f"detect-{detector}", command)
    run(command, tmp_path, options)
    assert output_bytes(tmp_path) == reference
    assert pq.read_table(tmp_path / "anomalies").num_rows > 0


def table_inputs(table, zeek_logs):
    # The synthetic day has no HTTP log: the http table comes from the shared Zeek sample,
    # whose corrupt http.log.corrupt.gz also sends rows to the dead-letter output.
    return [str(shared_data("logs/zeek/zat_tsv"))] if table == "http" else [str(zeek_logs)]


@pytest.mark.parametrize("engine_case", ENGINE_OPTIONS)
@pytest.mark.parametrize("table", ["dns", "http", "named_flows"])
def test_parse_gives_the_direct_runners_bytes(engine_case, table, zeek_logs, direct_outputs, tmp_path):
    options = engine_args(engine_case)
    command = ["parse", "--table", table, *table_inputs(table, zeek_logs)]
    reference = direct_outputs(f"parse-{table}", command)
    run(command, tmp_path, options)
    assert output_bytes(tmp_path) == reference
    assert pq.read_table(tmp_path / table).num_rows > 0
