"""`detect --follow`: the live pipeline's wiring, its output folder and its run until Ctrl-C.

The output folder contract for a live run: OUT is new, empty, or the folder of an earlier
live run, which the run continues (its pane files are named by content, so panes computed
again are not written twice). The lock is held for the whole run. Files appear in place as
windows close (no staging: a pane is final when written, by an atomic rename), and
`summary.json` and `.beamlytics-manifest.json` are rewritten every `refresh` seconds and at
the end, listing every file written so far.

Two ways to stop. Ctrl-C: the panes of every window the watermark has closed are written
whole, the windows still open are left unjudged (a restart judges them on all their records),
and the run ends. The drain file (`--drain-file`): the input is complete, every open window
closes and is written, then the run ends; what a replay of finished logs wants.
Restarts: the follower's positions live in the runner's checkpoint, which a new run does not
have, so a restarted run reads its source again from the start (folder: every file; Kafka:
`--kafka-start`) and rebuilds each endpoint's detector from the same records; a pane it
computes again has the same bytes, hence the same name, and is not written twice.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

import apache_beam as beam
import grpc
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics import schemas
from beamlytics.detectors.endpoint import DetectorConfig
from beamlytics.features import WindowSpec
from beamlytics.detectors.verdict import VerdictSettings
from beamlytics.live import panes
from beamlytics.live.baseline import LiveBaseline
from beamlytics.live.kafka import KafkaSpec, topics_from
from beamlytics.pipelines import outputs
from beamlytics.detectors.base import Status
from beamlytics.pipelines.detect import REJECTED_ORDER, SCORE_ORDER, VERDICT_ORDER
from beamlytics.transforms import live, progress
from beamlytics.transforms.progress import TallyCounts
from beamlytics.transforms.score import ENDPOINTS_FORGOTTEN, ENDPOINTS_STARTED, ScoreEndpoints
from beamlytics.transforms.windows import WindowFeatures

ENTRIES = ("anomalies", "verdicts", "rejected", "summary.json")
KAFKA_SCHEME = "kafka://"
# Set on Ctrl-C or SIGTERM (or by a caller in another thread): the run ends after the closed windows' panes.
STOP = threading.Event()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class LiveSettings:
    source: live.LiveSource
    spec: WindowSpec
    detector: DetectorConfig
    endpoint_idle_us: int | None = None  # an endpoint idle this long (event time) is forgotten; None: never
    kafka_output: tuple[str, str] | None = None  # (bootstrap, topic) for the anomalies as JSON messages
    baseline: LiveBaseline | None = None  # a batch run's features/: calibration and the verdicts' population
    verdict: VerdictSettings = VerdictSettings()


def source_of(inputs: Sequence[str], table: str, allowed_lateness_us: int, poll_us: int, kafka_start: str,
              drain_file: str | None = None) -> live.LiveSource:
    """Folders, or Kafka topics (never both: one watermark per source); ValueError says what is wrong."""
    kafka = [name for name in inputs if name.startswith(KAFKA_SCHEME)]
    if kafka and len(kafka) != len(inputs):
        raise ValueError("--follow reads either folders or Kafka topics, not both in one run")
    if table not in ("dns", "http"):
        raise ValueError(f"--follow builds the dns and http tables; {table} needs every log of a connection at once")
    if kafka:
        brokers = sorted({urlsplit(name).netloc for name in kafka})
        if len(brokers) != 1 or not brokers[0]:
            raise ValueError("give one Kafka cluster: kafka://HOST:PORT/TOPIC[,TOPIC]")
        topics = topics_from([urlsplit(name).path.strip("/") for name in kafka])
        if not topics:
            raise ValueError(f"no topic in {kafka[0]}: kafka://HOST:PORT/TOPIC[,TOPIC]")
        return live.LiveSource(table, allowed_lateness_us, kafka=KafkaSpec(brokers[0], topics, kafka_start),
                               poll_seconds=poll_us / 1e6, drain_file=drain_file)
    missing = [name for name in inputs if not os.path.exists(name)]
    if missing:
        raise ValueError(f"no such file or folder: {missing[0]}")
    return live.LiveSource(table, allowed_lateness_us, folders=tuple(os.path.abspath(name) for name in inputs),
                           poll_seconds=poll_us / 1e6, drain_file=drain_file)


def kafka_output_of(name: str | None, source: live.LiveSource) -> tuple[str, str] | None:
    """`--kafka-output`: kafka://HOST:PORT/TOPIC, or TOPIC alone on the cluster the run reads."""
    if name is None:
        return None
    if name.startswith(KAFKA_SCHEME):
        parts = urlsplit(name)
        topic = parts.path.strip("/")
        if not parts.netloc or not topic or "," in topic:
            raise ValueError(f"--kafka-output {name}: give kafka://HOST:PORT/TOPIC, one topic")
        return parts.netloc, topic
    if source.kafka is None:
        raise ValueError(f"--kafka-output {name}: a run reading folders names the cluster: kafka://HOST:PORT/{name}")
    if not name or "/" in name or "," in name:
        raise ValueError(f"--kafka-output {name!r}: give one topic name, or kafka://HOST:PORT/TOPIC")
    return source.kafka.bootstrap, name


def build_live(pipeline: beam.Pipeline, settings: LiveSettings, output: str) -> None:
    followed = pipeline | "Follow" >> live.FollowSource(settings.source)
    windows = followed["records"] | "Windows" >> WindowFeatures(settings.spec, "beam")
    scores = windows | "Score" >> ScoreEndpoints(settings.detector, streaming=True,
                                                 idle_timeout_us=settings.endpoint_idle_us, baseline=settings.baseline)
    if settings.baseline is None:
        # No population to judge against (docs/guide.md, live): a pane holds the features each endpoint's own
        # detector calls anomalous, as batch `detect` marks them in scores/.
        reported = scores | "OwnAnomalies" >> beam.Map(
            lambda table: table.filter(pc.equal(table.column("status"), Status.ANOMALY)))
    else:
        judged = scores | "Judge" >> live.JudgePanes(settings.baseline, settings.verdict)
        reported = judged["reported"]
        judged[live.VERDICTS_TAG] | "WriteVerdictPanes" >> beam.FlatMap(
            _window_panes, os.path.join(output, "verdicts"), VERDICT_ORDER)
    reported | "WriteAnomalyPanes" >> beam.FlatMap(_window_panes, os.path.join(output, "anomalies"), SCORE_ORDER)
    if settings.kafka_output is not None:
        reported | "SendAnomalies" >> live.SendAnomalies(*settings.kafka_output)
    (
        followed[live.REJECTED_TAG]
        | "WriteRejectedPanes" >> beam.Map(_rejected_pane, os.path.join(output, "rejected"))
    )
    followed[live.COUNTS_TAG] | "TallyCounts" >> TallyCounts()


def _window_panes(table: pa.Table, directory: str, order: tuple[str, ...]) -> list[str]:
    """One file per endpoint-window: a timer may judge several windows at once, and how many depends on when
    the watermark moved; per window, the file's bytes (hence its name) are the same on every run."""
    written = []
    for start in sorted(pc.unique(table.column("window_start")).to_pylist()):
        window = table.filter(pc.equal(table.column("window_start"), pa.scalar(start, schemas.TIMESTAMP)))
        label = f"{window.column('window_start')[0].value:020d}"
        written.append(panes.write_pane(window, directory, order, label))
    return written


def _rejected_pane(table: pa.Table, directory: str) -> str | None:
    return panes.write_pane(table, directory, REJECTED_ORDER, "rejected")


def _write_baseline_rejected(baseline: LiveBaseline, folder: str) -> None:
    """The baseline's rows that cannot be a training window, dead-lettered once per run as batch does; the
    workers read the same files again and skip the same rows."""
    rejected = baseline.load().rejected
    if rejected:
        table = pa.Table.from_pylist([item.as_row() for item in rejected], schema=schemas.REJECTED)
        panes.write_pane(table, os.path.join(folder, "rejected"), REJECTED_ORDER, "baseline")


def prepare_folder(folder: str) -> None:
    """Refuse a folder holding anything but an earlier live run's result (the lock must be held)."""
    outputs.recover(folder)
    earlier = outputs.read_manifest(folder)
    if earlier is not None and earlier.command != panes.LIVE_COMMAND:
        raise outputs.OutputError(f"output folder {folder} holds the result of beamlytics {earlier.command}; "
                                  "a live run writes into a new or empty folder, or continues an earlier live run's")
    foreign = sorted(name for name in os.listdir(folder)
                     if name not in (*ENTRIES, outputs.MANIFEST, outputs.LOCK) and not name.endswith(".tmp"))
    if foreign:
        raise outputs.OutputError(f"output folder {folder} holds files beamlytics did not write ({foreign[0]}); "
                                  "choose an empty or new --output folder")


def refresh(folder: str, extra: dict, running: bool) -> dict:
    """Rewrite summary.json, then the manifest of everything written so far."""
    summary = panes.live_summary(folder, extra, running)
    panes.write_summary(folder, summary)
    present = [name for name in ENTRIES if os.path.exists(os.path.join(folder, name))]
    files = []
    for relative in outputs._files_under(folder, present):
        if not relative.endswith("/") and not os.path.basename(relative).startswith("."):
            files.append((relative, *outputs.size_and_sha256(os.path.join(folder, relative))))
    manifest = outputs.Manifest(panes.LIVE_COMMAND, tuple(files))
    temporary = os.path.join(folder, f"{outputs.MANIFEST}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(manifest.to_bytes())
    os.replace(temporary, os.path.join(folder, outputs.MANIFEST))
    return summary


def run_live(options, settings: LiveSettings, output: str, refresh_seconds: float, quiet: bool) -> dict:
    """Run until stopped (Ctrl-C, `STOP`) or drained (the drain file); the final summary."""
    folder = os.path.abspath(output)
    os.makedirs(folder, exist_ok=True)
    fd = outputs.acquire_lock(folder)
    extra = {"table": settings.spec.table, "key": settings.spec.key, "window_seconds": settings.spec.window_us / 1e6,
             "detector": settings.detector.name, "calibration_windows": settings.detector.new_detector().n_init,
             "allowed_lateness_seconds": settings.source.allowed_lateness_us / 1e6,
             "endpoint_idle_seconds": None if settings.endpoint_idle_us is None else settings.endpoint_idle_us / 1e6,
             "kafka_output": None if settings.kafka_output is None else KAFKA_SCHEME + "/".join(settings.kafka_output),
             "baseline": None if settings.baseline is None else settings.baseline.directory}
    if settings.baseline is not None:
        extra.update(alarm_rate=settings.verdict.alarm_rate, min_records=settings.verdict.min_records,
                     allow_entries=len(settings.verdict.allow.entries))
    STOP.clear()
    progress.reset_local_counts()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    results = []

    def stop(signum, frame):
        STOP.set()
        if not quiet:
            print("beamlytics: stopping: the closed windows are written; open ones wait for the next run",
                  file=sys.stderr)

    def counted() -> dict:
        counts = progress.merged_counts(results[0] if results else None)
        started, forgotten = (counts.get(name, 0) for name in (ENDPOINTS_STARTED, ENDPOINTS_FORGOTTEN))
        return {**extra, "records_read": counts.get("read", 0), "endpoints_started": started,
                "endpoints_forgotten": forgotten, "endpoints_held": started - forgotten}

    try:
        prepare_folder(folder)
        if settings.baseline is not None:
            _write_baseline_rejected(settings.baseline, folder)
        pipeline = beam.Pipeline(options=options)
        build_live(pipeline, settings, folder)
        _take_signals(stop)
        result = pipeline.run()
        # Starting the job server, Beam put its own Ctrl-C handler first, which kills Prism before ours can
        # cancel the job: ours again, and the server stops at exit, after the cancel.
        _take_signals(stop)
        results.append(result)
        while not _finished(result, refresh_seconds):
            if STOP.is_set():
                _quiet_worker_channels()
                # Every pane of a closed window is written in one atomic step, so cancelling between
                # them loses none: what is not written yet is computed again by the next run.
                try:
                    result.cancel()
                except (ValueError, grpc.RpcError):
                    pass  # the job service went first (Ctrl-C reached the whole process group): it is over
                _finished(result, 120.0, stopping=True)
                break
            summary = refresh(folder, counted(), running=True)
            if not quiet:
                print(f"beamlytics: live: {summary['records_read']} records read, "
                      f"{summary['anomalies']} anomalies in {summary['anomaly_panes']} panes, "
                      f"{summary['rejected']} rejected ({summary['late']} late)", file=sys.stderr)
        return refresh(folder, counted(), running=False)
    finally:
        try:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        except ValueError:
            pass
        outputs.release_lock(folder, fd)


def _take_signals(stop) -> None:
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, stop)
    except ValueError:
        pass  # not the main thread: the caller stops the run with STOP or the drain file


class _MainThreadOnly:
    """A text stream that passes on what the main thread writes and drops what other threads write."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self.stream.write(text)
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _quiet_worker_channels() -> None:
    """After our cancel, the bundles in flight fail: Prism logs "pipeline canceled", the in-process SDK worker
    prints the traceback of each failed bundle to stderr and logs it, and its gRPC threads end on their closed
    channels with a traceback each. A stop the user asked for is not a failure: from here Beam's loggers keep
    only critical messages and stderr carries the main thread's lines alone. Both stay so, as the worker's
    threads end after the run returns."""
    for name in ("apache_beam", "PrismJobServer"):  # Beam logs Prism's output under its job server's class
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if not isinstance(sys.stderr, _MainThreadOnly):
        sys.stderr = _MainThreadOnly(sys.stderr)


def _finished(result, seconds: float, stopping: bool = False) -> bool:
    """Whether the run ended within `seconds` (sooner on STOP, unless already `stopping`); raise if it failed."""
    from apache_beam.runners.runner import PipelineState

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (stopping or not STOP.is_set()):
        try:
            state = result.state
        except (ValueError, grpc.RpcError):
            if stopping:
                return True  # the job service is gone after our cancel: the run is over
            raise
        if PipelineState.is_terminal(state):
            # After our own cancel the runner may call the run failed: its workers lost their channel.
            if not stopping and state not in (PipelineState.DONE, PipelineState.CANCELLED):
                raise RuntimeError(f"the live pipeline ended {state}")
            return True
        time.sleep(0.2)
    return False


def run_follow(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    """`detect --follow`: check the arguments (UsageError, exit 2), then run until stopped."""
    from beamlytics.hunts.allow import AllowList, AllowListError
    from beamlytics.pipelines import cli, runners

    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args):
        beam_args = ["--runner=PrismRunner", *beam_args]  # the DirectRunner runs no unbounded pipeline
    options = cli.beam_options(runners.with_engine_options([*beam_args, "--streaming"]))
    config = cli.detector_config(args)
    try:
        # No lateness is a valid choice: records out of order by any amount are then dead letters.
        lateness = 0 if re.fullmatch(r"\s*0+(\.0*)?\s*[a-z]*\s*", args.allowed_lateness) else \
            cli.duration_us(args.allowed_lateness)
        poll, every = cli.duration_us(args.poll), cli.duration_us(args.refresh)
        spec = WindowSpec(args.table, args.key, args.window,
                          args.slot if config.detector_class.input_kind == "slots" else None)
        source = source_of(args.inputs, args.table, lateness, poll, args.kafka_start, args.drain_file)
        kafka_output = kafka_output_of(args.kafka_output, source)
        idle = None if args.endpoint_idle.strip().lower() == "never" else cli.duration_us(args.endpoint_idle)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise cli.UsageError(str(error)) from None
    if args.train_until is not None:
        raise cli.UsageError("--follow does not take --train-until: give --baseline, a batch run's features/")
    if args.hunts.strip().lower() != "none":
        raise cli.UsageError("--follow does not run hunts: they judge a UTC day at once (run batch detect --hunts)")
    if args.allow and not args.baseline:
        raise cli.UsageError("--follow --allow needs --baseline: without one no verdicts are made to allow")
    baseline, verdict = None, VerdictSettings()
    if args.baseline:
        if "://" in args.baseline or not os.path.isdir(args.baseline):
            raise cli.UsageError(f"--follow --baseline takes a local features/ folder: no such folder {args.baseline}")
        baseline = LiveBaseline(os.path.abspath(args.baseline), spec, config.features)
        if not baseline.files():
            raise cli.UsageError(f"--baseline {args.baseline} holds no .parquet files: "
                                 "give the features/ folder of an earlier detect run")
        try:
            allow = AllowList.read(args.allow) if args.allow else AllowList()
            verdict = VerdictSettings(args.alarm_rate, args.min_records, allow)
        except (AllowListError, ValueError) as error:
            raise cli.UsageError(str(error)) from None
    if args.query:  # refused, not ignored: the live sources do not run the row SQL yet
        raise cli.UsageError("--follow does not take --query yet: filter the records upstream, or run batch detect")
    cli.check_output_folder(args.output)
    try:
        summary = run_live(options, LiveSettings(source, spec, config, idle, kafka_output, baseline, verdict),
                           args.output, every / 1e6, args.quiet)
    except outputs.OutputError as error:
        raise cli.UsageError(str(error)) from None
    print(json.dumps(summary, indent=1, sort_keys=True))
    print(f"output written to {args.output}")
    return 0
