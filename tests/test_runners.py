"""`beamlytics runners`: the engine cache, its verification, the options it fills in, and Dataflow staging."""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamlytics.pipelines import runners

REPO = Path(__file__).resolve().parents[1]


class FakeFetch:
    """Writes a known file and counts its calls, standing in for `go install` / `mvn`."""

    def __init__(self, content=b"engine bytes"):
        self.calls = 0
        self.content = content

    def __call__(self, target):
        self.calls += 1
        (target / "engine.bin").write_bytes(self.content)


def fake_engine(fetch, version="1.0"):
    return runners.Engine("fake", version, "engine.bin", fetch)


def test_cache_folder_comes_from_the_option_then_the_environment_then_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(runners.CACHE_ENV, raising=False)
    assert runners.cache_dir() == tmp_path / "xdg" / "beamlytics" / "runners"
    monkeypatch.setenv(runners.CACHE_ENV, str(tmp_path / "env"))
    assert runners.cache_dir() == tmp_path / "env"
    assert runners.cache_dir(str(tmp_path / "given")) == tmp_path / "given"


def test_install_fetches_once_records_the_checksum_and_a_rerun_only_verifies(tmp_path):
    fetch = FakeFetch()
    engine = fake_engine(fetch)
    found, fetched = runners.install(engine, tmp_path)
    assert fetched and fetch.calls == 1
    assert found.path.read_bytes() == b"engine bytes"
    manifest = json.loads((found.path.parent / runners.MANIFEST).read_text())
    assert manifest["sha256"] == {"engine.bin": hashlib.sha256(b"engine bytes").hexdigest()}
    again, fetched = runners.install(engine, tmp_path)
    assert not fetched and fetch.calls == 1 and again == found


def test_a_damaged_or_outdated_install_is_fetched_again(tmp_path):
    fetch = FakeFetch()
    found, _ = runners.install(fake_engine(fetch), tmp_path)
    found.path.write_bytes(b"truncated")
    assert runners.installed(fake_engine(fetch), tmp_path) is None
    runners.install(fake_engine(fetch), tmp_path)
    assert fetch.calls == 2 and found.path.read_bytes() == b"engine bytes"
    assert runners.installed(fake_engine(fetch, version="2.0"), tmp_path) is None


def test_a_failed_fetch_leaves_no_install_behind(tmp_path):
    def failing(target):
        (target / "engine.bin").write_bytes(b"half")
        raise runners.EngineError("`tool` failed (exit 1): no such artifact")

    with pytest.raises(runners.EngineError):
        runners.install(fake_engine(failing), tmp_path)
    assert runners.installed(fake_engine(failing), tmp_path) is None
    assert [p.name for p in (tmp_path / "fake").iterdir()] == []


def test_a_cache_inside_a_checkout_is_ignored_by_git(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    runners.install(fake_engine(FakeFetch()), tmp_path / ".runners")
    status = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"],
                            check=True, capture_output=True, text=True)
    assert status.stdout == ""


def test_a_missing_tool_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runners.EngineError, match="^mvn not found on PATH"):
        runners.fetch_flink_job_server(tmp_path)


def test_a_failing_tool_is_reported_with_its_command_and_first_error(tmp_path, monkeypatch):
    tool = tmp_path / "go"
    tool.write_text("#!/bin/sh\necho 'go: downloading x'\necho 'go: module example: not found' >&2\nexit 1\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runners.EngineError) as raised:
        runners.fetch_prism(tmp_path)
    assert str(raised.value) == (f"`go install {runners.PRISM_PACKAGE}@{runners.PRISM_VERSION}` failed (exit 1): "
                                 "go: module example: not found")


def installed_cache(tmp_path):
    for engine in runners.ENGINES.values():
        folder = tmp_path / engine.name / engine.version.replace("/", "-")
        (folder / engine.filename).parent.mkdir(parents=True)
        (folder / engine.filename).write_bytes(engine.name.encode())
        (folder / runners.MANIFEST).write_text(json.dumps(
            {"version": engine.version, "sha256": {engine.filename: hashlib.sha256(engine.name.encode()).hexdigest()}}))
    return tmp_path


def test_prism_and_flink_options_come_from_the_cache_unless_given(tmp_path):
    cache = installed_cache(tmp_path)
    prism = runners.installed(runners.ENGINES["prism"], cache).path
    jar = runners.installed(runners.ENGINES["flink"], cache).path
    assert runners.with_engine_options(["--runner=PrismRunner"], cache) == [
        "--runner=PrismRunner", f"--prism_location={prism}"]
    assert runners.with_engine_options(["--runner", "PrismRunner", "--prism_location=/mine"], cache) == [
        "--runner", "PrismRunner", "--prism_location=/mine"]
    assert runners.with_engine_options(["--runner=FlinkRunner"], cache) == [
        "--runner=FlinkRunner", f"--flink_job_server_jar={jar}", "--flink_version=1.20", "--flink_master=[local]"]
    given = ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--flink_version=1.19",
             "--flink_job_server_jar=/my.jar"]
    assert runners.with_engine_options(given, cache) == given
    assert runners.with_engine_options(["--direct_num_workers=2"], cache) == ["--direct_num_workers=2"]


def test_prism_is_left_to_beam_when_not_installed(tmp_path):
    assert runners.with_engine_options(["--runner=PrismRunner"], tmp_path) == ["--runner=PrismRunner"]


def beamlytics(*args, cache):
    return subprocess.run([sys.executable, "-m", "beamlytics.pipelines.cli", "runners", *args],
                          capture_output=True, text=True, env={**os.environ, runners.CACHE_ENV: str(cache)})


def test_the_command_lists_versions_and_paths(tmp_path):
    cache = installed_cache(tmp_path)
    result = beamlytics(cache=cache)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"prism\t{runners.PRISM_VERSION}\t{cache / 'prism' / runners.PRISM_VERSION / 'prism'}"
    assert lines[-1] == f"cache: {cache}"
    assert "not installed" in beamlytics(cache=tmp_path / "empty").stdout


def test_an_unknown_engine_is_one_line_and_exit_2(tmp_path):
    result = beamlytics("install", "spark", cache=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "beamlytics runners: error: unknown engine: spark (choose from prism, flink, flink-cluster, kafka)")
    assert "Traceback" not in result.stderr


def test_dataflow_options_of_the_readme_validate():
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    readme = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west1",
              "--temp_location=gs://my-bucket/tmp", "--setup_file=./setup.py",
              "--sdk_container_image=europe-west1-docker.pkg.dev/my-project/beam/beamlytics:0.1.0"]
    assert PipelineOptionsValidator(PipelineOptions(readme), DataflowRunner()).validate() == []
    errors = PipelineOptionsValidator(PipelineOptions(["--runner=DataflowRunner", "--region=europe-west1",
                                                       "--temp_location=gs://my-bucket/tmp"]),
                                      DataflowRunner()).validate()
    assert errors == ["Missing required option: project."]


def test_setup_file_staging_builds_a_package_with_every_module(tmp_path):
    from apache_beam.runners.portability.stager import Stager

    options = PipelineOptions(["--setup_file", str(REPO / "setup.py"), "--sdk_location=container"])
    resources = Stager.create_job_resources(options, str(tmp_path))
    assert any(resource.role_payload.endswith(b"workflow.tar.gz") for resource in resources)
    [built] = tmp_path.glob("beamlytics-*.tar.gz")
    with tarfile.open(built) as archive:
        packaged = {name.split("/", 1)[1] for name in archive.getnames() if name.endswith(".py")}
    sources = {str(p.relative_to(REPO)) for p in (REPO / "beamlytics").rglob("*.py")}
    assert sources <= packaged
