"""Every detector and every table on the real engines gives the DirectRunner's bytes.

The engines come from `beamlytics runners install` (the cache in $BEAMLYTICS_RUNNERS or the
user's cache folder). Without them these tests skip and say so; under CI=true an engine that
CI provisions and that is missing is a failure, so CI can never pass by skipping them.
"""
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beamlytics import synthetic
from beamlytics.pipelines import runners
from tests.conftest import scaled, shared_data
from tests.test_pipeline import SCENARIO, output_bytes

pytestmark = pytest.mark.engines

# The Flink job server stays out: Maven Central serves none here (docs/runners.md).
PROVISIONED_IN_CI = {"prism", "flink-cluster"}

# Each case: the engines it needs, and its Beam options given the shared local Flink cluster.
ENGINE_CASES = {
    "prism": (["prism"], lambda cluster: ["--runner=PrismRunner"]),
    "flink-embedded": (["flink"], lambda cluster: ["--runner=FlinkRunner"]),
    "flink-cluster-parallelism-2": (["flink", "flink-cluster"], lambda cluster: [
        "--runner=FlinkRunner", f"--flink_master={cluster().address}", "--parallelism=2",
        "--environment_type=LOOPBACK"]),
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


def require(engine):
    found = runners.installed(runners.ENGINES[engine], runners.cache_dir())
    if found is None:
        reason = f"{engine} is not installed in {runners.cache_dir()} (run `beamlytics runners install {engine}`)"
        if engine not in PROVISIONED_IN_CI:
            reason += "; CI does not provision it: Maven Central serves no Beam Flink job server here (docs/runners.md)"
        if os.environ.get("CI") == "true" and engine in PROVISIONED_IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory):
    """One local Flink cluster for the whole session, started on first use (and tried once)."""
    started, failures = [], []

    def cluster():
        if failures:
            pytest.fail(failures[0])
        if not started:
            home = require("flink-cluster").path.parents[1]
            local = runners.LocalFlinkCluster(home, tmp_path_factory.mktemp("flink"))
            try:
                local.start(timeout=scaled(180))  # stops what it started when it fails
            except runners.EngineError as error:
                failures.append(str(error))
                raise
            started.append(local)
        return started[0]

    yield cluster
    for running in started:
        running.stop()


def engine_args(engine_case, flink_cluster):
    engines, options = ENGINE_CASES[engine_case]
    for engine in engines:
        require(engine)
    return options(flink_cluster)


def run(command, out, options):
    # A subprocess per run: runners keep process-wide state that must not leak between them.
    result = subprocess.run([sys.executable, "-m", "beamlytics.pipelines.cli", *command, "--output", str(out),
                             *options], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("engine_case", ENGINE_CASES)
@pytest.mark.parametrize("detector", DETECT_CASES)
def test_detect_gives_the_direct_runners_bytes(engine_case, detector, zeek_logs, direct_outputs, flink_cluster,
                                               tmp_path):
    options = engine_args(engine_case, flink_cluster)
    command = ["detect", "--table", "dns", "--detector", detector, *DETECT_CASES[detector], str(zeek_logs)]
    reference = direct_outputs(f"detect-{detector}", command)
    run(command, tmp_path, options)
    assert output_bytes(tmp_path) == reference
    # Not anomalies: at the default alarm rate this small day may have none; every window has a verdict.
    assert pq.read_table(tmp_path / "verdicts").num_rows > 0


def table_inputs(table, zeek_logs):
    # The synthetic day has no HTTP log: the http table comes from the shared Zeek sample,
    # whose corrupt http.log.corrupt.gz also sends rows to the dead-letter output.
    return [str(shared_data("logs/zeek/zat_tsv"))] if table == "http" else [str(zeek_logs)]


@pytest.mark.parametrize("engine_case", ENGINE_CASES)
@pytest.mark.parametrize("table", ["dns", "http", "named_flows"])
def test_parse_gives_the_direct_runners_bytes(engine_case, table, zeek_logs, direct_outputs, flink_cluster,
                                              tmp_path):
    options = engine_args(engine_case, flink_cluster)
    command = ["parse", "--table", table, *table_inputs(table, zeek_logs)]
    reference = direct_outputs(f"parse-{table}", command)
    run(command, tmp_path, options)
    assert output_bytes(tmp_path) == reference
    assert pq.read_table(tmp_path / table).num_rows > 0


def listening_addresses(pids):
    """Local addresses of the TCP sockets these processes listen on, from /proc."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:  # the JVM closed it since the listing: not a socket it listens on
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                packed = bytes.fromhex(host)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = b"".join(packed[i:i + 4][::-1] for i in range(0, len(packed), 4))
                address = ipaddress.ip_address(words)
                addresses.append((getattr(address, "ipv4_mapped", None) or address, int(port, 16)))
    return addresses


def test_the_local_flink_cluster_offers_two_slots_and_listens_on_localhost_only(flink_cluster):
    cluster = flink_cluster()
    deadline = time.monotonic() + scaled(30)
    while not (overview := cluster.overview()) and time.monotonic() < deadline:
        time.sleep(0.5)  # its REST server answers {} (no reply in 5 s) while the machine is busy
    assert (overview["taskmanagers"], overview["slots-total"], overview["flink-version"]) == (
        1, 2, runners.FLINK_RELEASE)
    addresses = listening_addresses(process.pid for process in cluster.processes)
    assert (ipaddress.ip_address("127.0.0.1"), cluster.rest_port) in addresses
    assert all(address.is_loopback for address, _ in addresses), addresses
