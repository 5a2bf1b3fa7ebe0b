"""The output folder contract: nothing a run did not write is ever deleted, mixed or read back.

Runs that must be killed or run side by side are real subprocesses of the command line.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beamlytics import synthetic
from beamlytics.pipelines import cli, outputs
from tests.conftest import scaled

SMALL = synthetic.Scenario(hours=1, clients=5, queries_per_minute=10, anomalous_client="10.0.0.3",
                           anomaly_start_minute=30, anomaly_minutes=3)
COMMAND = [sys.executable, "-m", "beamlytics.pipelines.cli"]


def tree_bytes(folder: Path, hidden: bool = False) -> dict[str, bytes]:
    """Every file under `folder` by relative path; beamlytics' own hidden entries only if `hidden`."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and (hidden or not str(path.relative_to(folder)).startswith(".beamlytics-"))}


def data_rows(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line and not line.startswith("#"))


def assert_matches_its_manifest(out: Path, command: str) -> None:
    """What is visible in `out` is exactly what its manifest lists, with the sizes and hashes recorded."""
    manifest = json.loads((out / outputs.MANIFEST).read_text())
    assert manifest["tool"] == "beamlytics" and manifest["command"] == command
    listed = {item["path"]: (item["size"], item["sha256"]) for item in manifest["files"]}
    visible = tree_bytes(out)
    assert set(visible) == set(listed)
    for path, data in visible.items():
        assert (len(data), hashlib.sha256(data).hexdigest()) == listed[path], path


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> Path:
    return Path(synthetic.write_zeek_logs(str(tmp_path_factory.mktemp("small")), SMALL)) / "dns.log"


@pytest.fixture(scope="module")
def big_log(tmp_path_factory, small_log) -> Path:
    """A dns.log long enough (16 × SMALL, an hour apart) that a detect run can be killed halfway."""
    lines = small_log.read_text().splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#") and not line.startswith("#close")]
    rows = [line.split("\t", 1) for line in lines if not line.startswith("#")]
    body = [f"{float(ts) + copy * 3600:.6f}\t{rest}" for copy in range(16) for ts, rest in rows]
    path = tmp_path_factory.mktemp("big") / "dns.log"
    path.write_text("".join(header + body))
    return path


def run(*argv: str, capsys=None) -> tuple[int, str]:
    status = cli.main(list(argv))
    return status, capsys.readouterr().err if capsys else ""


def refused(capsys, *argv: str) -> str:
    """The one line a refused command ends with."""
    status, err = run(*argv, capsys=capsys)
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("beamlytics ")]
    assert len(lines) == 1, err
    return lines[0]


def test_the_sandbox_reproduction_is_refused_and_the_logs_stay(tmp_path, capsys):
    sandbox = tmp_path / "sandbox"
    (sandbox / "dns").mkdir(parents=True)
    logs = Path(synthetic.write_zeek_logs(str(tmp_path / "zeek"), SMALL))
    for name in ("dns.log", "conn.log"):
        (sandbox / "dns" / name).write_bytes((logs / name).read_bytes())
    before = tree_bytes(sandbox, hidden=True)
    line = refused(capsys, "parse", "--table", "dns", "--output", str(sandbox), str(sandbox / "dns"))
    assert "contains the input folder" in line
    line = refused(capsys, "parse", "--table", "dns", "--output", str(sandbox / "dns"), str(sandbox / "dns"))
    assert "inside the input folder" in line
    line = refused(capsys, "parse", "--table", "dns", "--output", str(sandbox), str(sandbox / "dns" / "dns.log"))
    assert "contains the input" in line
    assert tree_bytes(sandbox, hidden=True) == before


def test_user_files_beside_and_inside_the_output_survive_every_command(tmp_path, small_log, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("key,time,is_anomaly\n10.0.0.3,0,1\n")
    assert run("detect", "--detector", "poisson", "--table", "dns", "--output", str(tmp_path / "run"),
               str(small_log))[0] == 0
    home = tmp_path / "home"
    (home / "out" / "mine").mkdir(parents=True)
    (home / "notes.txt").write_text("beside the output\n")
    (home / "out" / "mine" / "keep.txt").write_text("inside the output\n")
    (home / "out" / "summary.json").write_text('{"mine": true}\n')  # named like an output, but the user's
    before = tree_bytes(home, hidden=True)
    read = ["--table", "dns", "--output", str(home / "out"), str(small_log)]
    evaluate = ["evaluate", "--labels", str(labels), "--scores", str(tmp_path / "run"), "--output", str(home / "out")]
    for argv in (["parse", *read], ["detect", *read], ["parse", "--overwrite", *read],
                 ["detect", "--overwrite", *read], evaluate, [*evaluate, "--overwrite"]):
        line = refused(capsys, *argv)
        assert line.endswith(f"output folder {home / 'out'} holds files beamlytics did not write (mine and 1 more); "
                             "choose an empty or new --output folder"), line
    assert tree_bytes(home, hidden=True) == before

    # Beside the user's files, each command writes only its own folder.
    assert run("detect", "--table", "dns", "--output", str(home / "detected"), str(small_log))[0] == 0
    assert run(*evaluate[:-1], str(home / "evaluated"))[0] == 0
    assert run("demo", "--output", str(home))[0] == 0
    for folder, command in (("detected", "detect"), ("evaluated", "evaluate"), ("zeek", "demo"), ("detect", "detect")):
        assert_matches_its_manifest(home / folder, command)
    after = tree_bytes(home, hidden=True)
    assert {path: after[path] for path in before} == before


def test_demo_keeps_what_it_did_not_write(tmp_path, capsys):
    (tmp_path / "demo" / "zeek").mkdir(parents=True)
    (tmp_path / "demo" / "zeek" / "capture.log").write_text("the user's\n")
    line = refused(capsys, "demo", "--output", str(tmp_path / "demo"))
    assert "capture.log" in line
    assert (tmp_path / "demo" / "zeek" / "capture.log").read_text() == "the user's\n"
    assert sorted(os.listdir(tmp_path / "demo" / "zeek")) == ["capture.log"]


def test_parse_then_detect_into_one_folder_is_refused_until_overwrite(tmp_path, small_log, capsys):
    out = tmp_path / "out"
    assert run("parse", "--table", "dns", "--output", str(out), str(small_log))[0] == 0
    assert_matches_its_manifest(out, "parse")
    parsed = tree_bytes(out, hidden=True)
    assert pq.read_table(out / "dns").num_rows == data_rows(small_log)

    line = refused(capsys, "detect", "--table", "dns", "--output", str(out), str(small_log))
    assert "holds the result of an earlier beamlytics parse (dns, rejected, summary.json)" in line
    assert "--overwrite" in line
    assert tree_bytes(out, hidden=True) == parsed
    line = refused(capsys, "parse", "--table", "dns", "--output", str(out), str(small_log))
    assert "earlier beamlytics parse" in line

    (tmp_path / "beside.txt").write_text("mine\n")
    assert run("detect", "--overwrite", "--table", "dns", "--output", str(out), str(small_log))[0] == 0
    assert_matches_its_manifest(out, "detect")
    assert not (out / "dns").exists()  # the earlier parse's table went with its result
    assert {"anomalies", "scores", "features", "rejected", "summary.json"} <= set(os.listdir(out))
    assert (tmp_path / "beside.txt").read_text() == "mine\n"
    detected = tree_bytes(out, hidden=True)
    line = refused(capsys, "detect", "--overwrite", "--baseline", str(out / "features"), "--table", "dns",
                   "--output", str(out), str(small_log))
    assert f"contains the input folder {out / 'features'}" in line  # replacing it would delete the baseline
    assert tree_bytes(out, hidden=True) == detected


def test_overwrite_replaces_the_earlier_run_and_refuses_changed_files(tmp_path, small_log, capsys):
    out = tmp_path / "out"
    argv = ["parse", "--table", "dns", "--output", str(out), str(small_log)]
    assert run(*argv)[0] == 0
    first = tree_bytes(out, hidden=True)
    assert run(argv[0], "--overwrite", *argv[1:])[0] == 0
    assert tree_bytes(out, hidden=True) == first  # the same input gives the same bytes, manifest included

    summary = out / "summary.json"
    summary.write_text(summary.read_text() + "note: checked by hand\n")
    line = refused(capsys, argv[0], "--overwrite", *argv[1:])
    assert "summary.json changed since beamlytics wrote it" in line
    summary.write_bytes(first["summary.json"])
    (out / "dns" / "extra.parquet").write_bytes(b"mine")
    line = refused(capsys, argv[0], "--overwrite", *argv[1:])
    assert "extra.parquet was not written by beamlytics" in line
    assert (out / "dns" / "extra.parquet").read_bytes() == b"mine"

    (out / "dns" / "extra.parquet").unlink()
    (out / "dns" / "mine").mkdir()
    assert "dns/mine/ was not written by beamlytics" in refused(capsys, argv[0], "--overwrite", *argv[1:])
    (out / "dns" / "mine").rmdir()
    (out / outputs.MANIFEST).write_text("{not json")
    assert "not a readable beamlytics manifest" in refused(capsys, argv[0], "--overwrite", *argv[1:])


def test_output_that_is_a_file_is_refused(tmp_path, small_log, capsys):
    target = tmp_path / "report.txt"
    target.write_text("mine\n")
    line = refused(capsys, "parse", "--table", "dns", "--output", str(target), str(small_log))
    assert line.endswith(f"--output {target} is a file, not a folder")
    line = refused(capsys, "parse", "--table", "dns", "--output", str(target / "out"), str(small_log))
    assert line.endswith(f"cannot lock output folder {target / 'out'}: Not a directory")
    assert target.read_text() == "mine\n"


def test_an_output_folder_inside_an_input_folder_is_not_read_back(tmp_path, small_log, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "dns.log").write_bytes(small_log.read_bytes())
    assert run("parse", "--table", "dns", "--output", str(logs / "parsed"), str(logs / "dns.log"))[0] == 0
    first = tree_bytes(logs / "parsed")
    capsys.readouterr()

    status, err = run("parse", "--table", "dns", "--output", str(tmp_path / "again"), str(logs), capsys=capsys)
    assert status == 0
    assert f"not reading {logs / 'parsed'}: it is a beamlytics output folder" in err
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["rejected"] == 0 and summary["files"] == 1
    assert tree_bytes(tmp_path / "again") == first  # the same records, read from the one log

    status, err = run("parse", "--table", "dns", "--output", str(tmp_path / "globbed"), f"{logs}/**", capsys=capsys)
    assert status == 0
    assert f"not reading {logs / 'parsed'}: it is a beamlytics output folder" in err
    assert tree_bytes(tmp_path / "globbed") == first
    line = refused(capsys, "parse", "--table", "dns", "--output", str(tmp_path / "o"), f"{logs}/*/dns/*")
    assert "matches only files in beamlytics output folders" in line


def test_an_earlier_result_read_as_input_gives_its_data_not_its_bookkeeping(tmp_path, capsys):
    # The demo writes its logs as a result of its own (manifest and all), then detects on that folder.
    assert run("demo", "--output", str(tmp_path / "demo"))[0] == 0
    assert (tmp_path / "demo" / "zeek" / outputs.MANIFEST).is_file()
    summary = json.loads((tmp_path / "demo" / "detect" / "summary.json").read_text())
    # The manifest is beamlytics' own: neither parsed nor rejected as an unrecognised log.
    assert summary.get("rejected_files", 0) == 0 and summary["dead_letters"] == 0
    assert set(summary["skipped"]) == {str(tmp_path / "demo" / "zeek" / "2024-05-01" / name)
                                       for name in ("conn.log", "ssl.log")}


def test_inputs_empty_folder_fifo_and_dangling_link(tmp_path, small_log, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(capsys, "parse", "--table", "dns", "--output", str(tmp_path / "o1"), str(empty))
    assert line.endswith(f"folder {empty} has no files")

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "dns.log").write_bytes(small_log.read_bytes())
    os.symlink(tmp_path / "rotated-away.log", logs / "old.log")
    os.mkfifo(logs / "pipe.log")
    # A FIFO nobody writes to blocks whoever opens it: a subprocess, so that a hang fails instead of stalling.
    done = subprocess.run([*COMMAND, "parse", "--table", "dns", "--output", str(tmp_path / "o2"), str(logs)],
                          capture_output=True, text=True, timeout=scaled(120))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "o2"
    rejected = {row["source_file"]: row for row in pq.read_table(out / "rejected").to_pylist()}
    assert set(rejected) == {str(logs / "old.log"), str(logs / "pipe.log")}
    assert rejected[str(logs / "pipe.log")]["reason"] == "cannot open: not a regular file: a FIFO"
    dangling = f"cannot open: dangling symbolic link to {tmp_path / 'rotated-away.log'}"
    assert rejected[str(logs / "old.log")]["reason"] == dangling
    assert {row["position"] for row in rejected.values()} == {0}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected_files"] == 2 and summary["records"] == data_rows(small_log)

    done = subprocess.run([*COMMAND, "parse", "--table", "dns", "--output", str(tmp_path / "o3"),
                           str(logs / "pipe.log")], capture_output=True, text=True, timeout=scaled(120))
    # The FIFO was the only input: every input rejected is a failed run (exit 1), told, not hung.
    assert done.returncode == 1 and json.loads((tmp_path / "o3" / "summary.json").read_text())["rejected_files"] == 1


def _start(out: Path, log: Path, *extra: str) -> subprocess.Popen:
    # Ctrl-C's default restored: a shell starts background jobs (`pytest ... &`) with SIGINT ignored, and the
    # child would inherit that and never be interrupted.
    return subprocess.Popen([*COMMAND, "detect", "--table", "dns", "--output", str(out), *extra, str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, process: subprocess.Popen, limit: float = 120.0) -> bool:
    """Poll until `predicate()`; False if the process ended first."""
    deadline = time.monotonic() + scaled(limit)
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out")


def _staging_exists(out: Path) -> bool:
    return any(name.startswith(outputs.STAGING_PREFIX) for name in os.listdir(out)) if out.is_dir() else False


def _staged(out: Path, table: str) -> bool:
    """The running pipeline has written its `table` output into the staging folder (not yet moved into place)."""
    return any(out.glob(f"{outputs.STAGING_PREFIX}*/{table}/*.parquet"))


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_the_earlier_result_or_nothing(tmp_path, small_log, big_log, signal_number):
    out = tmp_path / "out"
    assert cli.main(["detect", "--table", "dns", "--output", str(out), str(small_log)]) == 0
    earlier = small_result = tree_bytes(out, hidden=True)
    # Each point is a state of the run seen on disk, so that the signal comes there however slow the machine is
    # (the dead letters and features are written first; scores, verdicts and the report follow).
    points = [("lock taken", lambda: (out / outputs.LOCK).exists()),
              ("staging made", lambda: _staging_exists(out)),
              ("pipeline running", lambda: _staged(out, "rejected")),
              ("pipeline further on", lambda: _staged(out, "features"))]
    killed_halfway = 0
    for name, reached in points:
        process = _start(out, big_log, "--overwrite")
        if _wait_for(reached, process):
            process.send_signal(signal_number)
        _, err = process.communicate(timeout=scaled(120))
        if signal_number != signal.SIGKILL:  # cleaned up on the way out
            assert not _staging_exists(out), name
        if process.returncode == 0 or (out / outputs.MANIFEST).read_bytes() != earlier[outputs.MANIFEST]:
            # The run was done before the signal came (SIGINT and SIGTERM are ignored during the final moves).
            assert_matches_its_manifest(out, "detect")
            assert json.loads((out / "summary.json").read_text())["records"] == data_rows(big_log)
            earlier = tree_bytes(out, hidden=True)
            continue
        assert tree_bytes(out) == {k: v for k, v in earlier.items() if not k.startswith(".beamlytics-")}, name
        assert process.returncode != 0, (name, err[-2000:])
        killed_halfway += earlier == small_result
    assert killed_halfway >= 2, "the runs ended before they could be killed: the test input is too small"

    assert cli.main(["detect", "--overwrite", "--table", "dns", "--output", str(out), str(small_log)]) == 0
    assert_matches_its_manifest(out, "detect")
    assert tree_bytes(out, hidden=True) == small_result
    assert not _staging_exists(out) and not (out / outputs.LOCK).exists()


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, small_log, big_log, capsys):
    out = tmp_path / "out"
    first = _start(out, big_log)
    assert _wait_for(lambda: _staging_exists(out), first)
    line = refused(capsys, "detect", "--table", "dns", "--output", str(out), str(small_log))
    assert f"is being written by another beamlytics run (pid {first.pid} on " in line
    _, err = first.communicate(timeout=scaled(300))
    assert first.returncode == 0, err
    assert_matches_its_manifest(out, "detect")
    assert json.loads((out / "summary.json").read_text())["records"] == data_rows(big_log)
    assert sum(pq.read_table(out / "features").column("records").to_pylist()) == data_rows(big_log)


def test_a_lock_left_by_a_dead_run_does_not_block(tmp_path, small_log):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / outputs.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                "started": "2026-01-01T00:00:00+00:00"}))
    assert cli.main(["parse", "--table", "dns", "--output", str(out), str(small_log)]) == 0
    assert_matches_its_manifest(out, "parse")
    assert not (out / outputs.LOCK).exists()


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs, not even the rollback of the run itself."""


@pytest.mark.parametrize("moves_before_death", range(7))
def test_death_in_the_middle_of_the_final_moves_is_rolled_back_by_the_next_run(
        tmp_path, small_log, monkeypatch, moves_before_death):
    out = tmp_path / "out"
    assert cli.main(["parse", "--table", "dns", "--output", str(out), str(small_log)]) == 0
    earlier = tree_bytes(out, hidden=True)
    staging = out / f"{outputs.STAGING_PREFIX}dead"
    (staging / "anomalies").mkdir(parents=True)
    (staging / outputs.RUN_MARKER).write_text("detect pid 1 on host\n")
    (staging / "anomalies" / "part-00000-of-00001.parquet").write_bytes(b"new anomalies")
    (staging / "summary.json").write_text('{"new": true}\n')

    moves = []

    def dying(move):
        def move_or_die(source, target):
            if len(moves) == moves_before_death:
                raise Killed
            moves.append(source)
            move(source, target)
        return move_or_die

    # 3 earlier entries move aside, 2 new ones move in, then the manifest: death after 0..5 of the 6 moves
    monkeypatch.setattr(outputs.os, "rename", dying(os.rename))
    monkeypatch.setattr(outputs.os, "replace", dying(os.replace))
    if moves_before_death < 6:
        with pytest.raises(Killed):
            outputs.install(str(out), str(staging), "detect", outputs.read_manifest(str(out)))
        monkeypatch.undo()
        assert staging.exists()
        outputs.recover(str(out))
        assert tree_bytes(out, hidden=True) == earlier
    else:
        outputs.install(str(out), str(staging), "detect", outputs.read_manifest(str(out)))
        assert_matches_its_manifest(out, "detect")
        assert tree_bytes(out)["summary.json"] == b'{"new": true}\n'
    assert not staging.exists()


def test_a_staging_folder_without_a_marker_is_the_users(tmp_path, small_log, capsys):
    out = tmp_path / "out"
    (out / f"{outputs.STAGING_PREFIX}mine").mkdir(parents=True)
    (out / f"{outputs.STAGING_PREFIX}mine" / "notes.txt").write_text("mine\n")
    line = refused(capsys, "parse", "--table", "dns", "--output", str(out), str(small_log))
    assert f"holds files beamlytics did not write ({outputs.STAGING_PREFIX}mine)" in line
    assert (out / f"{outputs.STAGING_PREFIX}mine" / "notes.txt").read_text() == "mine\n"


def test_remote_outputs_stage_and_rename_through_beam_filesystems(tmp_path):
    """The object-store path, run on a local folder: it uses only Beam's FileSystems calls."""
    from apache_beam.io.filesystems import FileSystems

    prefix = str(tmp_path / "bucket" / "run")
    with outputs.remote_output(prefix, "parse") as staging:
        FileSystems.mkdirs(f"{staging}/dns")  # local folders only; object stores need none
        for name, data in (("dns/a.parquet", b"aaaa"), ("summary.json", b"{}\n")):
            with FileSystems.create(f"{staging}/{name}") as handle:
                handle.write(data)
        assert not (tmp_path / "bucket" / "run" / "summary.json").exists()  # nothing in place before the end
    files = {path: data for path, data in tree_bytes(Path(prefix), hidden=True).items()
             if not path.startswith(outputs.STAGING_PREFIX)}
    assert files.keys() == {"dns/a.parquet", "summary.json", outputs.MANIFEST}
    assert_matches_its_manifest(Path(prefix), "parse")

    with pytest.raises(outputs.OutputError, match="never replaces or deletes remote objects"):
        with outputs.remote_output(prefix, "parse"):
            pass
    assert (Path(prefix) / "dns" / "a.parquet").read_bytes() == b"aaaa"

    failed = str(tmp_path / "bucket" / "failed")
    with pytest.raises(RuntimeError):
        with outputs.remote_output(failed, "parse") as staging:
            FileSystems.mkdirs(staging)
            with FileSystems.create(f"{staging}/summary.json") as handle:
                handle.write(b"half")
            raise RuntimeError("the pipeline failed")
    assert not [path for path in Path(failed).rglob("*") if path.is_file()]


def test_input_folders_with_link_loops_and_devices_are_listed_once_and_never_opened(tmp_path, small_log):
    from beamlytics.inputs import select_inputs, unreadable_reason

    logs = tmp_path / "logs"
    (logs / "day").mkdir(parents=True)
    (logs / "day" / "dns.log").write_bytes(small_log.read_bytes())
    os.symlink(logs, logs / "day" / "back-up")  # a loop: followed once, not forever
    os.symlink("/dev/null", logs / "null.log")
    selection = select_inputs([str(logs)])
    assert selection.paths == [str(logs / "day" / "dns.log"), str(logs / "null.log")]
    assert unreadable_reason(str(logs / "null.log")) == "not a regular file: a character device"
    assert unreadable_reason(str(logs / "day" / "dns.log")) is None
    assert unreadable_reason(str(logs)) == "not a regular file: a folder"
