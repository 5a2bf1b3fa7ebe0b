"""The command line never fails silently and never prints a traceback (issue 8).

Each user mistake ends with exit status 2 and one line on stderr naming it; each empty
result says why on stderr and in summary.json; long runs report progress.
"""
import argparse
import gc
import importlib.metadata
import importlib.util
import io
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamlytics import baseline, features, schemas, synthetic
from beamlytics import options_catalog as catalog
from beamlytics.features import WindowSpec
from beamlytics.parsers.base import Rejected
from beamlytics.pipelines import cli
from beamlytics.pipelines.progress import ProgressReporter, progress_line
from tests.conftest import shared_data

SCENARIO = synthetic.Scenario(hours=1, clients=3, anomalous_client="10.0.0.2", anomaly_start_minute=30,
                              anomaly_minutes=2)
SQUID_LINE = "1286536308.779    180 192.168.0.224 TCP_MISS/200 411 GET http://example.com/ - DIRECT/1.2.3.4 text/html\n"


@pytest.fixture(scope="module")
def zeek_logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zeek")
    synthetic.write_zeek_logs(str(folder), SCENARIO)
    return folder


def dns_log(folder: Path) -> Path:
    return next(folder.rglob("dns.log"))


def data_lines(path: Path) -> int:
    return sum(1 for line in open(path, encoding="utf-8") if line.strip() and not line.startswith("#"))


def run(capsys, *argv):
    """(exit status, stderr lines) of `beamlytics argv...`, in this process."""
    status = cli.main([str(arg) for arg in argv])
    return status, capsys.readouterr().err.splitlines()


def assert_one_line_error(status, lines, *fragments):
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("beamlytics")
    for fragment in fragments:
        assert fragment in lines[0]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# --- options: misspelt, unknown runner, remote paths without their extra, output a file, empty folder

def test_misspelt_beam_option_is_an_error_not_a_prefix(capsys, zeek_logs, tmp_path):
    status, lines = run(capsys, "detect", "--table", "dns", "--output", tmp_path / "out", "--direct_num_worker=2",
                        zeek_logs)
    assert_one_line_error(status, lines, "unrecognised option: --direct_num_worker=2")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, fragment", [(["--direct_num_workers=abc"], "invalid int value: 'abc'"),
                                              (["--runner"], "--runner: expected one argument")])
def test_bad_beam_option_value_is_one_line(capsys, zeek_logs, tmp_path, option, fragment):
    status, lines = run(capsys, "detect", "--table", "dns", "--output", tmp_path / "out", zeek_logs, *option)
    assert_one_line_error(status, lines, fragment)


def test_our_own_options_are_not_abbreviated(capsys, zeek_logs, tmp_path):
    status, lines = run(capsys, "detect", "--table", "dns", "--outp", tmp_path / "out", zeek_logs)
    assert_one_line_error(status, lines, "--output")


@pytest.mark.parametrize("runner", ["FooRunner", "json.JSONDecoder"])
def test_unknown_runner_is_refused_and_never_imported(capsys, zeek_logs, tmp_path, runner):
    status, lines = run(capsys, "detect", "--table", "dns", "--output", tmp_path / "out", f"--runner={runner}",
                        zeek_logs)
    assert_one_line_error(status, lines, f"unknown runner: {runner}", "DirectRunner")


def test_runner_named_without_its_suffix_is_accepted(capsys, zeek_logs, tmp_path):
    out = tmp_path / "out"
    status, _ = run(capsys, "parse", "--table", "dns", "--output", out, "--runner=direct", "--quiet", zeek_logs)
    assert status == 0
    assert summary_of(out)["records"] == data_lines(dns_log(zeek_logs))


def test_runner_option_checks_are_one_line(capsys, zeek_logs, tmp_path):
    status, lines = run(capsys, "detect", "--table", "dns", "--output", tmp_path / "out", "--runner=DataflowRunner",
                        zeek_logs)
    assert status == 2
    errors = [line for line in lines if line.startswith("beamlytics")]
    assert len(errors) == 1 and "Missing required option: project." in errors[0]


@pytest.mark.parametrize("scheme, extra", [("gs", "gcp"), ("s3", "aws")])
@pytest.mark.parametrize("role", ["input", "--output"])
def test_remote_path_without_its_extra_names_the_extra(capsys, zeek_logs, tmp_path, scheme, extra, role):
    module = cli.FILESYSTEM_EXTRAS[scheme][1]
    try:
        if importlib.util.find_spec(module) is not None:
            pytest.skip(f"{module} is installed: the {scheme}:// filesystem works here")
    except ModuleNotFoundError:
        pass
    remote = f"{scheme}://bucket/logs"
    paths = (["--output", remote, zeek_logs] if role == "--output" else ["--output", tmp_path / "out", remote])
    status, lines = run(capsys, "detect", "--table", "dns", *paths)
    assert_one_line_error(status, lines, remote, f"pip install 'beamlytics[{extra}]'")


def test_setup_offers_the_filesystem_extras():
    text = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert '"gcp": ["apache-beam[gcp]' in text and '"aws": ["apache-beam[aws]' in text


def test_output_naming_a_file_is_one_line(capsys, zeek_logs, tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("the user's\n")
    status, lines = run(capsys, "detect", "--table", "dns", "--output", existing, zeek_logs)
    assert_one_line_error(status, lines, str(existing))
    assert existing.read_text() == "the user's\n"


def test_empty_input_folder_is_one_line(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, lines = run(capsys, "parse", "--table", "dns", "--output", tmp_path / "out", empty)
    assert_one_line_error(status, lines, str(empty))


# --- Beam stays out of --help; Beam's noise stays out of a run

def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["detect", "--help"], ["--version"], ["evaluate", "--help"],
                                  ["detect", "--table", "dns", "--output", "x", "--k", "nan", "."]])
def test_help_version_and_option_errors_do_not_import_beam(argv):
    # pandas and scipy cost --help half a second; they load only when a detector or report needs them.
    result = python("import sys\nfrom beamlytics.pipelines import cli\n"
                    f"status = cli.main({argv!r})\n"
                    "print(status, *(name in sys.modules for name in ('apache_beam', 'pandas', 'scipy')))")
    status, beam_loaded, pandas_loaded, scipy_loaded = result.stdout.split()[-4:]
    assert (beam_loaded, pandas_loaded, scipy_loaded) == ("False", "False", "False"), result.stdout
    assert int(status) == (2 if "--k" in argv else 0)


def subcommands() -> list[str]:
    (commands,) = [action for action in cli.build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return sorted(commands.choices)


HEAVY_MODULES = ("apache_beam", "pyarrow", "numpy")


def run_and_list_heavy_modules(argv: list[str]) -> tuple[int, str, list[str]]:
    """Exit status, stdout before the last line, and which of HEAVY_MODULES `cli.main(argv)` imported."""
    result = python("import sys\nfrom beamlytics.pipelines import cli\n"
                    f"status = cli.main({argv!r})\n"
                    f"print(status, *(name for name in {HEAVY_MODULES!r} if name in sys.modules))")
    *text, last = result.stdout.splitlines()
    status, *loaded = last.split()
    return int(status), "\n".join(text), loaded


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["report"],
                                  *([command, "--help"] for command in subcommands())], ids=" ".join)
def test_help_version_and_light_commands_import_neither_beam_nor_arrow(argv):
    # pyarrow and numpy took `detect --help` from 0.14 to 0.46 CPU seconds (docs/benchmarks.md): the choices
    # and defaults the options show come from beamlytics.options_catalog, which imports neither.
    status, _, loaded = run_and_list_heavy_modules(argv)
    assert loaded == []
    assert status == (2 if argv == ["report"] else 0)


@pytest.mark.parametrize(("command", "shown"), [
    ("detect", ["--format {auto,argus,bind,nfstream,pcap,squid,suricata,tstat,zeek}", "--table {dns,http,named_flows}",
                "--key {c_ip,s_ip,name,domain}", "--windowing {key,beam}",
                "--detector {dspot,gaussian,iqr,poisson,spot}", "skipped (1048576)", "as a bomb (200)",
                "TO exclusive (1970..2100)", "false alarms (0.005)", "not judged (3)",
                "dns: records,nxdomain_ratio,max_subdomains,max_subdomain_entropy,txt_null_any_ratio;"]),
    ("hunt", ["--table {dns,http,named_flows}", "marked capped (86400)", "as a bomb (200)"]),
    ("evaluate", ["--detector {dspot,gaussian,iqr,poisson,spot}", "--table {dns,http,named_flows}",
                  "--format {auto,argus,bind,nfstream,pcap,squid,suricata,tstat,zeek}"]),
    ("demo", ["--detector {dspot,gaussian,iqr,poisson,spot}"]),
    ("cluster", ["--algorithm {kmeans,bisecting_kmeans,gaussian_mixture,dbscan}", "--key {c_ip,s_ip,name,domain}"]),
])
def test_help_shows_the_choices_and_defaults_written_out_here(command, shown):
    status, text, _ = run_and_list_heavy_modules([command, "--help"])
    unwrapped = "".join(text.split())  # argparse wraps lines, long words too, at the terminal's width
    assert status == 0
    assert [fragment for fragment in shown if "".join(fragment.split()) not in unwrapped] == []


def test_help_defaults_are_what_runs():
    parser = cli.build_parser()
    detect, _ = parser.parse_known_args(["detect", "--table", "dns", "--output", "o", "in"])
    assert (detect.time_range, detect.max_line_bytes, detect.max_decompression_ratio, detect.alarm_rate,
            detect.min_records) == ("1970..2100", 1 << 20, 200, 5e-3, 3)
    hunt, _ = parser.parse_known_args(["hunt", "--table", "named_flows", "--hunt", "beacon", "--output", "o", "in"])
    assert (hunt.horizon, hunt.cap) == (86_400_000_000, 86_400)


def test_the_catalog_names_what_the_heavy_modules_hold():
    from beamlytics.detectors.registry import DETECTORS
    from beamlytics.hunts.config import HuntConfig
    from beamlytics.parsers.formats import FORMATS

    assert sorted(catalog.TABLE_NAMES) == sorted(schemas.TABLES)
    assert sorted(catalog.FORMAT_NAMES) == sorted(FORMATS)
    assert sorted(catalog.DETECTOR_NAMES) == sorted(DETECTORS)
    assert (HuntConfig().cap, HuntConfig().horizon_us) == (86_400, 86_400_000_000)
    assert set(catalog.KEYS) == {"c_ip", "s_ip", "name", "domain"}


@pytest.mark.parametrize("chosen, expected", [(None, "system"), ("mimalloc", "mimalloc")])
def test_the_cli_gives_arrow_the_system_allocator_unless_the_user_chose(chosen, expected):
    # mimalloc held ~70 MiB more at the peak of a 50 k-record detect (docs/benchmarks.md, issue 14)
    environment = {name: value for name, value in os.environ.items() if name != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        environment["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    result = subprocess.run([sys.executable, "-c", "from beamlytics.pipelines import cli\ncli.main(['--version'])\n"
                             "import pyarrow\nprint(pyarrow.default_memory_pool().backend_name)"],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.stdout.split()[-1] == expected, result.stderr


def test_a_command_gets_its_options_when_used():
    parser = cli.build_parser()
    args, rest = parser.parse_known_args(["detect", "--table", "dns", "--output", "out", "--window", "5m", "logs"])
    assert (args.command, args.table, args.window, args.detector, args.inputs, rest) == (
        "detect", "dns", 300_000_000, "gaussian", ["logs"], [])
    args, _ = parser.parse_known_args(["cluster", "--table", "named_flows", "--output", "o", "--algorithm", "dbscan",
                                       "in"])
    assert (args.algorithm, args.key, args.window, args.k) == ("dbscan", "c_ip", 60_000_000, 2)


def test_version_comes_from_the_package_metadata():
    result = subprocess.run([sys.executable, "-m", "beamlytics.pipelines.cli", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.strip() == f"beamlytics {importlib.metadata.version('beamlytics')}"


def test_a_detect_run_prints_no_beam_import_or_coder_warnings(zeek_logs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "beamlytics.pipelines.cli", "detect", "--table", "dns",
                             "--output", str(tmp_path / "out"), "--quiet", str(zeek_logs)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "apitools" not in result.stderr
    assert "may not be deterministic" not in result.stderr
    assert "WARNING" not in result.stderr


def test_real_warnings_still_reach_the_user():
    result = python("import logging\nfrom beamlytics.pipelines import cli\ncli.silence_foreign_warnings()\n"
                    "logging.warning('apitools not found, and bigquery ...')\nlogging.warning('disk almost full')")
    assert "apitools" not in result.stderr
    assert "disk almost full" in result.stderr


# --- empty results say why

def test_all_scores_calibrating_says_how_many_windows_are_needed(capsys, zeek_logs, tmp_path):
    out = tmp_path / "out"
    status, lines = run(capsys, "detect", "--table", "dns", "--detector", "spot", "--window", "5m", "--quiet",
                        "--output", out, zeek_logs)
    assert status == 0
    scores = pq.read_table(out / "scores").to_pylist()
    # One hour in 5-minute windows is 12 windows per endpoint: fewer than the 50 SPOT calibrates on.
    assert len(scores) == 3 * 12 * len(features.DEFAULT_FEATURES["dns"])
    assert {row["status"] for row in scores} == {"calibrating"}
    summary = summary_of(out)
    assert summary["scores"] == summary["calibrating"] == len(scores)
    note = [line for line in summary["notes"] if "calibrating" in line]
    assert len(note) == 1 and "50 windows per endpoint" in note[0] and "--n-init" in note[0]
    assert f"beamlytics: {note[0]}" in lines


def test_all_calibrating_note_goes_once_n_init_is_met(capsys, zeek_logs, tmp_path):
    out = tmp_path / "out"
    status, _ = run(capsys, "detect", "--table", "dns", "--detector", "spot", "--window", "5m", "--n-init", "5",
                    "--quiet", "--output", out, zeek_logs)
    assert status == 0
    summary = summary_of(out)
    statuses = pq.read_table(out / "scores", columns=["status"]).column("status").to_pylist()
    # At least the first 5 windows of each series calibrate; a tail fit that fails keeps calibrating longer.
    assert 3 * 5 * len(features.DEFAULT_FEATURES["dns"]) <= summary["calibrating"] < len(statuses)
    assert summary["calibrating"] == statuses.count("calibrating")
    assert not any("calibrating" in line for line in summary["notes"])


def test_real_21_minute_log_with_spot_defaults_is_all_calibrating(capsys, tmp_path):
    logs = shared_data("logs/zeek/wrccdc2018")
    out = tmp_path / "out"
    status, lines = run(capsys, "detect", "--table", "dns", "--detector", "spot", "--quiet", "--output", out, logs)
    assert status == 0
    statuses = pq.read_table(out / "scores", columns=["status"]).column("status").to_pylist()
    assert statuses and set(statuses) == {"calibrating"}
    assert any(f"all {len(statuses):,} scores are still calibrating" in line for line in lines)


def test_skipped_files_are_named_with_the_reason(capsys, zeek_logs, tmp_path):
    out = tmp_path / "out"
    status, lines = run(capsys, "parse", "--table", "dns", "--quiet", "--output", out, zeek_logs)
    assert status == 0
    skipped = summary_of(out)["skipped"]
    conn = str(next(zeek_logs.rglob("conn.log")))
    assert skipped[conn] == "zeek conn feeds named_flows, not dns"
    assert sorted(skipped) == sorted(str(p) for p in zeek_logs.rglob("*.log") if p.name != "dns.log")
    assert lines == []  # files of other tables beside the dns logs are the normal case: named, not warned about


def test_table_no_input_feeds_is_written_empty_and_explained(capsys, tmp_path):
    squid = tmp_path / "access.log"
    squid.write_text(SQUID_LINE)
    out = tmp_path / "out"
    status, lines = run(capsys, "parse", "--table", "dns", "--quiet", "--output", out, squid)
    assert status == 0
    table = pq.read_table(out / "dns")
    assert table.num_rows == 0 and table.schema.names == schemas.TABLES["dns"].names
    summary = summary_of(out)
    assert summary["skipped"] == {str(squid): "squid access feeds http, named_flows, not dns"}
    assert summary["notes"] == [line.removeprefix("beamlytics: ") for line in lines]
    assert "no input file feeds the dns table" in lines[0]


def test_table_with_rows_gets_no_empty_file(capsys, zeek_logs, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "dns", "--quiet", "--output", str(out), str(zeek_logs)]) == 0
    assert not (out / "dns" / "empty.parquet").exists()
    assert pq.read_table(out / "dns").num_rows == data_lines(dns_log(zeek_logs))


def test_every_input_rejected_exits_non_zero_and_says_so(capsys, tmp_path):
    garbage = tmp_path / "dns.log"
    garbage.write_bytes(b"\x00\x01 not a log at all\n" * 3)
    out = tmp_path / "out"
    status, lines = run(capsys, "parse", "--table", "dns", "--format", "zeek", "--quiet", "--output", out, garbage)
    assert status == 1
    assert len(lines) == 1 and "every input was rejected" in lines[0]
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert [row["source_file"] for row in rejected] == [str(garbage)]
    assert summary_of(out)["parsed"] == 0


@pytest.mark.parametrize("counts, expected", [
    ({"parsed": 10, "records": 0, "out_of_day_range": 10, "table": "dns"},
     "no dns record falls in --start-day/--end-day: all 10 records are outside it"),
    ({"parsed": 0, "records": 0, "rejected": 0, "files": 1, "table": "http"}, "the inputs hold no http records"),
    ({"parsed": 4, "records": 4, "scores": 8, "calibrating": 7, "table": "dns"}, None),
    ({"parsed": 4, "records": 4, "scores": 8, "calibrating": 8, "calibration_windows": 10, "detector": "gaussian",
      "table": "dns"}, "all 8 scores are still calibrating: the gaussian detector needs 10 windows per endpoint"),
])
def test_explain_names_the_reason_for_an_empty_result(counts, expected):
    from beamlytics.summary import explain

    notes = explain(counts)
    assert notes == [] if expected is None else (len(notes) == 1 and notes[0].startswith(expected))


# --- progress

class FakeStream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_line_shows_files_of_total_records_and_elapsed():
    line = progress_line({"files_read": 3, "records": 1_234_567, "windows": 10}, 125.4, total_files=7)
    assert line == "files 3/7, records 1,234,567, windows 10, elapsed 2:05"


@pytest.mark.parametrize("tty", [True, False])
def test_progress_reporter_updates_in_place_on_a_tty_and_prints_lines_otherwise(tty):
    now = [0.0]
    counts = {"files_read": 1}
    stream = FakeStream(tty)
    reporter = ProgressReporter(lambda: counts, total_files=2, stream=stream, clock=lambda: now[0])
    now[0] = 61.0
    reporter.show()
    counts["files_read"] = 2
    reporter.stop()
    if tty:
        assert stream.getvalue() == "\rfiles 1/2, elapsed 1:01\rfiles 2/2, elapsed 1:01\n"
    else:
        assert stream.getvalue() == "progress: files 1/2, elapsed 1:01\ndone: files 2/2, elapsed 1:01\n"


def test_progress_reporter_survives_a_runner_that_cannot_report():
    def broken():
        raise RuntimeError("no metrics on this runner")

    stream = FakeStream(False)
    ProgressReporter(broken, stream=stream, clock=lambda: 0.0).stop()
    assert stream.getvalue() == "done: elapsed 0:00\n"


def test_detect_reports_progress_with_the_run_counts_and_quiet_silences_it(capsys, zeek_logs, tmp_path):
    status, lines = run(capsys, "detect", "--table", "dns", "--output", tmp_path / "loud", zeek_logs)
    assert status == 0
    records = data_lines(dns_log(zeek_logs))
    summary = summary_of(tmp_path / "loud")
    windows, scores = summary["windows"], summary["scores"]
    assert scores == windows * len(features.DEFAULT_FEATURES["dns"])
    assert lines[-1].startswith(f"done: files 1/1, records {records:,}, windows {windows:,}, scores {scores:,}, ")
    assert all(line.startswith(("progress: ", "done: ")) for line in lines)  # stderr is not a TTY here
    status, lines = run(capsys, "detect", "--table", "dns", "--quiet", "--output", tmp_path / "quiet", zeek_logs)
    assert status == 0 and lines == []


def test_release_memory_frees_garbage_held_in_reference_cycles():
    class Node:
        pass

    enabled = gc.isenabled()
    gc.disable()  # so that only release_memory can collect the cycle
    try:
        node = Node()
        node.self = node
        node.payload = bytearray(1 << 20)
        alive = weakref.ref(node)
        del node
        assert alive() is not None  # unreachable, but a cycle: reference counting alone keeps it
        cli.release_memory()
        assert alive() is None
    finally:
        if enabled:
            gc.enable()


def test_the_cli_freezes_every_object_before_the_interpreters_last_collections():
    # A hook registered before the CLI is imported runs after the CLI's own: atexit runs them last in, first out.
    result = python("import atexit, gc\natexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
                    "from beamlytics.pipelines import cli\ncli.main(['--version'])")
    assert result.stdout.split()[-2:] == ["frozen", "True"], result.stdout + result.stderr


# --- bad values

@pytest.mark.parametrize("option, fragment", [
    (["--k", "nan"], "--k: not a finite number"),
    (["--k", "inf"], "--k: not a finite number"),
    (["--max-decompression-ratio", "nan"], "--max-decompression-ratio: not a finite number"),
    (["--detector", "spot", "--q=-inf"], "--q: not a finite number"),
    (["--features", ","], "--features ',' names no feature"),
    (["--start-day", "2024-05-03", "--end-day", "2024-05-01"], "--start-day 2024-05-03 is after --end-day"),
    (["--window", "1000000000d"], "--window: '1000000000d' is longer than record times reach"),
    (["--slot", "1000000000d"], "--slot"),
])
def test_bad_values_end_with_one_line(capsys, zeek_logs, tmp_path, option, fragment):
    status, lines = run(capsys, "detect", "--table", "dns", "--output", tmp_path / "out", *option, zeek_logs)
    assert_one_line_error(status, lines, fragment)


def test_empty_baseline_folder_is_one_line(capsys, zeek_logs, tmp_path):
    empty = tmp_path / "features"
    empty.mkdir()
    status, lines = run(capsys, "detect", "--table", "dns", "--output", tmp_path / "out", "--baseline", empty,
                        zeek_logs)
    assert_one_line_error(status, lines, f"--baseline {empty} holds no .parquet files")


def test_longest_window_still_runs(capsys, zeek_logs, tmp_path):
    out = tmp_path / "out"
    status, _ = run(capsys, "detect", "--table", "dns", "--quiet", "--window", f"{baseline.MAX_US // 86_400_000_000}d",
                    "--output", out, zeek_logs)
    assert status == 0
    assert summary_of(out)["windows"] == SCENARIO.clients  # one window holds each client's whole hour


# --- the baseline reader rejects a bad row instead of crashing

def features_table(rows: list[dict]) -> pa.Table:
    """A features/ table whose timestamps may lie beyond what datetime holds: written as raw microseconds."""
    schema = features.feature_schema("dns")
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_timestamp(field.type):
            columns[field.name] = pa.array(values, pa.int64()).cast(field.type)
        else:
            columns[field.name] = pa.array(values, field.type)
    return pa.table(columns, schema=schema)


def feature_values(**overrides) -> dict:
    row = {"table": "dns", "key_kind": "c_ip", "key": "10.0.0.1", "window_start": SCENARIO.start_us,
           "window_end": SCENARIO.start_us + 60_000_000, "records": 3}
    row.update({name: 1.0 for name in features.FEATURES["dns"] if name != "records"})
    row.update(overrides)
    return row


YEAR_10000_US = 253402300800 * 1_000_000


def test_baseline_windows_rejects_bad_rows_and_keeps_the_rest():
    rows = [feature_values(), feature_values(window_start=YEAR_10000_US, window_end=YEAR_10000_US + 60_000_000),
            feature_values(key=None), feature_values(records=-1), feature_values(key_kind="s_ip"),
            feature_values(key="10.0.0.2")]
    items = list(baseline.baseline_windows(features_table(rows), WindowSpec("dns"), "base.parquet"))
    rejected = [item for item in items if isinstance(item, Rejected)]
    windows = [item for item in items if not isinstance(item, Rejected)]
    assert [(r.position, r.reason) for r in rejected] == [
        (2, "window_start missing or outside years 1-9999"), (3, "no endpoint key"), (4, "records missing or negative")]
    assert [(w.key, w.window_start, w.records, w.train) for w in windows] == [
        ("10.0.0.1", SCENARIO.start_us, 3, True), ("10.0.0.2", SCENARIO.start_us, 3, True)]


def test_baseline_file_without_feature_columns_is_rejected_whole():
    table = pa.table({"table": ["dns"], "key": ["10.0.0.1"]})
    [item] = baseline.baseline_windows(table, WindowSpec("dns"), "other.parquet")
    assert isinstance(item, Rejected) and item.position == 0 and "no column key_kind" in item.reason


def test_detect_with_a_year_10000_baseline_row_dead_letters_it(capsys, zeek_logs, tmp_path):
    base = tmp_path / "normal"
    assert cli.main(["detect", "--table", "dns", "--quiet", "--output", str(base), str(zeek_logs)]) == 0
    good = pq.read_table(base / "features")
    bad = features_table([feature_values(window_start=YEAR_10000_US, window_end=YEAR_10000_US + 60_000_000)])
    pq.write_table(bad, base / "features" / "zz-bad.parquet")
    out = tmp_path / "watch"
    status, lines = run(capsys, "detect", "--table", "dns", "--quiet", "--baseline", base / "features",
                        "--output", out, zeek_logs)
    assert status == 0, lines
    assert summary_of(out)["baseline_rejected"] == 1
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert [(r["source_file"], r["position"], r["reason"]) for r in rejected] == [
        (str(base / "features" / "zz-bad.parquet"), 1, "window_start missing or outside years 1-9999")]
    assert good.num_rows > 0


# --- evaluate and demo: no traceback for a user mistake

@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "--labels", "{tmp}/missing.csv", "--output", "{tmp}/eval", "--scores", "{tmp}"], "missing.csv"),
    (["evaluate", "--labels", "{labels}", "--output", "{file}", "--scores", "{tmp}"], "is a file, not a folder"),
    (["evaluate", "--labels", "{labels}", "--output", "{tmp}/eval", "--scores", "{tmp}/nope"], "no such run folder"),
    (["evaluate", "--labels", "{labels}", "--output", "{tmp}/eval", "--table", "dns", "--betas", "nan", "{tmp}"],
     "not a finite number"),
    (["evaluate", "--labels", "{labels}", "--output", "{tmp}/eval", "--table", "dns", "{tmp}/nope"],
     "no such file or folder"),
    (["evaluate", "--labels", "{labels}", "--output", "{tmp}/eval", "--table", "dnz", "{tmp}"], "--table"),
    (["demo", "--output", "{file}"], "is a file, not a folder"),
    (["demo", "--detector", "nope"], "--detector"),
])
def test_evaluate_and_demo_mistakes_are_one_line(capsys, tmp_path, argv, fragment):
    labels = tmp_path / "labels.csv"
    labels.write_text("key,is_anomaly,time\n10.0.0.1,1,2024-05-01T00:00:00\n")
    existing = tmp_path / "file.txt"
    existing.write_text("x")
    filled = [arg.format(tmp=tmp_path, labels=labels, file=existing) for arg in argv]
    status, lines = run(capsys, *filled)
    assert_one_line_error(status, lines, fragment)


def test_demo_output_that_cannot_be_created_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    status, lines = run(capsys, "demo", "--output", blocker / "inside")
    assert_one_line_error(status, lines, str(blocker))
