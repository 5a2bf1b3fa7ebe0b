"""The `beamlytics` command: parse, detect, evaluate, demo, runners.

Options this command does not know are handed to Beam (`--runner`, `--direct_num_workers`,
`--setup_file`, ...), after checking that Beam knows them: a mistyped option ends the run
with one line, instead of being silently dropped. Every mistake a user can fix ends with
one line on stderr and exit status 2.

Beam is imported only once a pipeline is about to run: `--help`, `--version` and a
mistyped option answer at once, without Beam's import-time chatter.
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime as dt
import gc
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from beamlytics import options_catalog as catalog
from beamlytics.pipelines import analytics, outputs, report, runners

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

    from beamlytics.detectors.endpoint import DetectorConfig
    from beamlytics.pipelines.detect import ReadSettings

_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
# Filesystems the README advertises, the Beam extra that brings each, and a module that extra installs.
FILESYSTEM_EXTRAS = {"gs": ("gcp", "google.cloud.storage"), "s3": ("aws", "boto3")}
# Beam's import-time warning that is about Beam's optional BigQuery client, never about this run.
_FOREIGN_WARNINGS = ("apitools not found",)

# Every object is frozen at exit, before the interpreter's last collections, which then skip the imported modules'
# objects (mostly Beam's) instead of walking them: 0.3 CPU s of a 50 k-record detect (docs/benchmarks.md). No output
# waits on a collection: each is written and closed before `main` returns; reference counting still frees the rest.
atexit.register(gc.freeze)


class UsageError(Exception):
    """A mistake in the command line or its inputs, told to the user in one line."""


class CommandParser(argparse.ArgumentParser):
    """argparse that takes no abbreviations, reports a mistake in one line (exit status 2), and adds a
    command's `arguments` only when that command is parsed or its help shown.

    Abbreviations are off because options this parser does not know go to Beam: with them,
    `--direct_num_worker=2` would be taken for `--direct_num_workers` by one parser and not the other.
    Arguments wait so that `beamlytics --help` and `--version` neither declare every command's options nor
    import the modules that declare them. Their choices and defaults come from `beamlytics.options_catalog`,
    so a command's own `--help` imports no numpy, pyarrow or Beam either.
    """

    def __init__(self, *args, arguments: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._arguments = arguments

    def _add_arguments(self) -> None:
        arguments, self._arguments = self._arguments, None
        if arguments is not None:
            arguments(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_arguments()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_arguments()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_arguments()
        return super().format_help()

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def duration_us(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 60s, 5m, 1h, 500ms)")
    value = float(match[1]) * _UNITS_US[match[2] or "s"]
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a positive whole number of microseconds: {text!r}")
    # Record times end with year 9999 (what datetime and the parsers hold): a longer window has no meaning,
    # and window ends past it overflow 64-bit microseconds.
    if value > catalog.MAX_US:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than record times reach "
                                         f"(at most {catalog.MAX_US // _UNITS_US['d']}d)")
    return int(value)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


# Detector options: command-line name -> constructor parameter. Each applies only to the
# detectors whose constructor takes that parameter.
DETECTOR_OPTIONS = {
    "k": ("k", finite_float, "gaussian: width of the band in σ (3); iqr: fence distance in IQRs (1.5)"),
    "n_init": ("n_init", int, "windows an endpoint needs before it is judged (calibration)"),
    "history": ("history", int, "iqr: how many recent windows the quartiles come from"),
    "q": ("q", finite_float, "spot/dspot: risk, the probability of an anomaly per window (e.g. 1e-4)"),
    "level": ("level", finite_float, "spot/dspot: quantile where the tail starts (0.98)"),
    "max_excess": ("max_excess", int, "spot/dspot: excesses kept to fit the tail (500)"),
    "depth": ("depth", int, "dspot: windows in the moving average that removes drift (10)"),
    "tails": ("tails", str, "spot/dspot: which tail raises alarms: up, down or both"),
    "beta": ("beta", finite_float, "poisson: η level where the score turns against health"),
    "health_model": ("health_model", str, "poisson: sigmoid, logistic, exponential, recovery or kalman"),
    "ra_threshold": ("ra_threshold", finite_float, "poisson: anomaly when the endpoint's health Ra falls below this"),
}


def timestamp_us(text: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a timestamp: {text!r} (example: 2024-05-01T00:00:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


def _add_read_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="log files, captures, folders (searched recursively) or globs")
    parser.add_argument("--format", default="auto", choices=["auto", *sorted(catalog.FORMAT_NAMES)],
                        help="input format; auto recognises each file by its content (default)")
    parser.add_argument("--table", required=True, choices=sorted(catalog.TABLE_NAMES),
                        help="the data table to build: dns, http or named_flows")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="output folder (local or any Beam filesystem): new, empty, or holding an earlier result")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier beamlytics result in OUT (never files beamlytics did not write)")
    parser.add_argument("--start-day", help="first day to read, YYYY-MM-DD (UTC): by dated folders/names and record times")
    parser.add_argument("--end-day", help="last day to read, YYYY-MM-DD, inclusive")
    parser.add_argument("--active-timeout", type=finite_float, default=1800.0, metavar="SECONDS",
                        help="captures → named_flows: a flow longer than this is split (1800)")
    parser.add_argument("--idle-timeout", type=finite_float, default=120.0, metavar="SECONDS",
                        help="captures → named_flows: a flow silent this long ends (120)")
    parser.add_argument("--time-range", default=catalog.DEFAULT_TIME_RANGE, metavar="FROM..TO",
                        help="records timed outside are rejected; years or YYYY-MM-DD, TO exclusive "
                        f"({catalog.DEFAULT_TIME_RANGE})")
    parser.add_argument("--year", type=int, help="year of log times that have none (BIND via syslog); else they stay untimed")
    parser.add_argument("--timezone", metavar="ZONE",
                        help="IANA zone of log times written without one (BIND), e.g. Europe/Paris (default UTC)")
    parser.add_argument("--max-line-bytes", type=int, default=catalog.MAX_LINE_BYTES, metavar="BYTES",
                        help=f"longer lines are rejected and skipped ({catalog.MAX_LINE_BYTES})")
    parser.add_argument("--split-bytes", type=int, metavar="BYTES",
                        help="uncompressed Zeek, Squid, BIND and Tstat flow logs bigger than this are read "
                        "in ranges of about this size, in parallel (32 MiB)")
    parser.add_argument("--max-decompression-ratio", type=finite_float, default=catalog.MAX_DECOMPRESSION_RATIO,
                        metavar="RATIO", help="a compressed file growing beyond this ratio is cut off as a bomb "
                        f"({catalog.MAX_DECOMPRESSION_RATIO})")
    parser.add_argument("--quiet", action="store_true", help="no progress reports on stderr")


def _add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    from beamlytics.live import options as live_options

    _add_read_arguments(parser)
    parser.add_argument("--key", default="c_ip", choices=catalog.KEYS,
                        help="the endpoint: client IP (default), server IP, the queried/requested name, "
                        "or (dns) the registered domain of the query")
    parser.add_argument("--window", type=duration_us, default=duration_us("60s"),
                        help="tumbling event-time window, e.g. 30s, 5m, 1h (60s)")
    parser.add_argument("--windowing", choices=catalog.WINDOWINGS, default="key",
                        help="key: window start in the grouping key (fast, batch); beam: Beam FixedWindows (streaming)")
    parser.add_argument("--detector", choices=sorted(catalog.DETECTOR_NAMES), default="gaussian",
                        help="gaussian (mean ± kσ), iqr (boxplot fences), spot, dspot, poisson (default gaussian)")
    parser.add_argument("--features", help="comma-separated features to score; defaults per table: "
                        + "; ".join(f"{t}: {','.join(f)}" for t, f in catalog.DEFAULT_FEATURES.items())
                        + ". All: " + "; ".join(f"{t}: {','.join(f)}" for t, f in catalog.FEATURES.items()))
    parser.add_argument("--slot", type=duration_us, default=duration_us("1s"),
                        help="poisson: slot length; the detector sees record counts per slot (1s)")
    parser.add_argument("--baseline", metavar="FEATURES_DIR",
                        help="calibrate on the features/ folder of an earlier run (e.g. a normal day)")
    parser.add_argument("--train-until", type=timestamp_us, metavar="TIMESTAMP",
                        help="windows ending by this UTC time calibrate the detectors and are not judged")
    parser.add_argument("--shards", type=int, help="Parquet files per output folder (default: one per 16 MiB of "
                        "input, at most 64; the rows are the same whatever the count)")
    parser.add_argument("--alarm-rate", type=float, default=catalog.DEFAULT_ALARM_RATE, metavar="RISK",
                        help="the share of benign endpoint-windows allowed to alarm: higher finds more, "
                        f"and raises more false alarms ({catalog.DEFAULT_ALARM_RATE:g})")
    parser.add_argument("--min-records", type=int, default=catalog.DEFAULT_MIN_RECORDS,
                        help=f"windows with fewer records are scored but not judged ({catalog.DEFAULT_MIN_RECORDS})")
    parser.add_argument("--allow", metavar="FILE", help="allow-list: hosts, CIDR networks, registered domains, "
                        "optionally with a feature name; their alarms are scored, counted, not reported")
    parser.add_argument("--hunts", default="none", metavar="HUNTS",
                        help="hunts whose findings over a UTC day are evidence in the verdicts: none (default), all "
                        "(beacon,long,strobe,scan on named_flows, dns_tunnel on dns, none on http), or a "
                        "comma-separated list; a finding at score 0.5 alarms its windows (docs/hunts.md); "
                        "costs memory with the records (docs/guide.md)")
    parser.add_argument("--query", metavar="SQL", help="row-by-row SQL over the records first, the table named "
                        "netlytics, e.g. \"SELECT * FROM netlytics WHERE proto = 'tcp'\" (docs/analytics.md)")
    group = parser.add_argument_group("detector parameters (defaults are each detector's own)")
    for option, (_, kind, text) in DETECTOR_OPTIONS.items():
        group.add_argument("--" + option.replace("_", "-"), dest=option, type=kind, help=text)
    live_options.add_arguments(parser)


def _add_hunt_arguments(parser: argparse.ArgumentParser) -> None:
    from beamlytics.pipelines import hunt

    _add_read_arguments(parser)
    hunt.add_arguments(parser, duration_us)


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from beamlytics.pipelines import evaluate

    evaluate.add_arguments(parser)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from beamlytics.pipelines import demo

    demo.add_arguments(parser)


def _add_series_arguments(parser: argparse.ArgumentParser) -> None:
    from beamlytics.pipelines import series

    series.add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="beamlytics",
        description="Find anomalous hosts in network logs and packet captures with Apache Beam. "
        "Options not listed here are Beam pipeline options (--runner, --direct_num_workers, ...).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("parse", help="normalize inputs into a Parquet table",
                        description="Read logs/captures into OUT/<table>/*.parquet, "
                        "with OUT/rejected/ and OUT/summary.json.", arguments=_add_read_arguments)
    commands.add_parser("detect", help="score endpoints window by window and report anomalies",
                        description="Write OUT/verdicts/ (ranked), OUT/incidents/, OUT/report.html, "
                        "OUT/anomalies/, OUT/scores/, OUT/features/, OUT/rejected/ and OUT/summary.json, "
                        "and print the top incidents.", arguments=_add_detect_arguments)
    commands.add_parser("hunt", help="RITA-style hunts over a day: beacons, long connections, strobes, "
                        "scans, DNS tunnels", description="Write OUT/hunts/*.parquet, OUT/rejected/ and "
                        "OUT/summary.json.", arguments=_add_hunt_arguments)
    commands.add_parser("evaluate", help="precision/recall/F1/ROC AUC of a detector or a hunt against labels",
                        arguments=_add_evaluate_arguments)
    commands.add_parser("demo", help="generate demo Zeek logs with a known anomaly and find it",
                        arguments=_add_demo_arguments)
    commands.add_parser("runners", help="install and list the Prism and Flink engines", arguments=runners.add_arguments)
    commands.add_parser("series", help="per-host daily series from aggregate counts: SPOT, "
                        "S-H-ESD and a weekly forecast band", arguments=_add_series_arguments)
    report.add_commands(commands)
    analytics.add_commands(commands, _add_read_arguments)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("beamlytics")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from beamlytics import __version__

        return __version__


def detector_config(args: argparse.Namespace) -> DetectorConfig:
    from beamlytics import features
    from beamlytics.detectors.endpoint import DetectorConfig
    from beamlytics.detectors.registry import DETECTORS

    cls = DETECTORS[args.detector]
    accepted = inspect.signature(cls).parameters
    params = {}
    for option, (param, _, _) in DETECTOR_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if param not in accepted:
            raise UsageError(f"--{option.replace('_', '-')} does not apply to the {args.detector} detector")
        params[param] = value
    if "slot_seconds" in accepted:
        params["slot_seconds"] = args.slot / 1e6
    if cls.input_kind == "slots":
        chosen = ("records",)
    elif args.features is not None:
        chosen = tuple(name.strip() for name in args.features.split(",") if name.strip())
        if not chosen:
            raise UsageError(f"--features {args.features!r} names no feature; "
                             f"choose from {', '.join(features.FEATURES[args.table])}")
    else:
        chosen = features.DEFAULT_FEATURES[args.table]
    unknown = [name for name in chosen if name not in features.FEATURES[args.table]]
    if unknown:
        raise UsageError(f"unknown feature(s) for {args.table}: {', '.join(unknown)}; "
                         f"choose from {', '.join(features.FEATURES[args.table])}")
    try:
        return DetectorConfig(args.detector, params, chosen)
    except (TypeError, ValueError) as error:
        raise UsageError(f"bad {args.detector} parameters: {error}") from None


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's own options, refusing anything Beam would silently ignore or could not run."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    checker = _BeamOptionsCheck(add_help=False, allow_abbrev=False)
    for options_class in _all_subclasses(PipelineOptions):
        try:
            options_class._add_argparse_args(checker)
        except argparse.ArgumentError:
            continue  # an option several classes declare
    _, unknown = checker.parse_known_args(list(beam_args))
    if unknown:
        raise UsageError(f"unrecognised option: {unknown[0]} (see beamlytics COMMAND --help)")
    # Worker processes (multi_processing, portable runners) log every step at INFO: keep their warnings only.
    quiet_workers = [] if any(arg.startswith("--default_sdk_harness_log_level") for arg in beam_args) else [
        "--default_sdk_harness_log_level=WARNING"]
    options = PipelineOptions([*beam_args, *quiet_workers])
    runner = options.view_as(StandardOptions).runner
    if runner is not None:
        # Only Beam's own runners, by name: a dotted path would import whatever module it names.
        known = {path.rsplit(".", 1)[-1]: path for path in StandardOptions.ALL_KNOWN_RUNNERS}
        lowered = {name.lower(): name for name in known}
        name = lowered.get(runner.lower()) or lowered.get(runner.lower() + "runner")
        if name is None:
            raise UsageError(f"unknown runner: {runner} (choose from {', '.join(sorted(known))})")
        options.view_as(StandardOptions).runner = name
    return options


class _BeamOptionsCheck(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"Beam option {message}")


def silence_foreign_warnings() -> None:
    """Drop the warning Beam logs about its optional BigQuery client whenever it is imported."""
    root = logging.getLogger()
    if not any(isinstance(existing, _ForeignWarnings) for existing in root.filters):
        root.addFilter(_ForeignWarnings())


class _ForeignWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_FOREIGN_WARNINGS)


def check_filesystem(path: str, role: str) -> None:
    """A remote path needs Beam's filesystem for it, which comes with an extra: say which, before a traceback."""
    if "://" not in path:
        return
    scheme = path.split("://", 1)[0].lower()
    if scheme in FILESYSTEM_EXTRAS:
        extra, module = FILESYSTEM_EXTRAS[scheme]
        try:
            installed = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing too
            installed = False
        if not installed:
            raise UsageError(f"{role} {path}: {scheme}:// needs an extra: pip install 'beamlytics[{extra}]'")
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        raise UsageError(f"{role} {path}: no Beam filesystem reads {scheme}:// paths") from None


def _all_subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _all_subclasses(subclass)


def check_output_folder(output: str) -> None:
    check_filesystem(output, "--output")
    if "://" not in output and os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output} is a file, not a folder")


def _read_settings(args: argparse.Namespace) -> ReadSettings:
    from beamlytics.inputs import DayRange, InputError, parse_day, select_inputs
    from beamlytics.parsers.formats import tables_of
    from beamlytics.parsers.validate import check_read_options
    from beamlytics.pipelines.detect import ReadSettings

    for path in args.inputs:
        check_filesystem(path, "input")
    check_output_folder(args.output)
    try:
        days = DayRange(parse_day(args.start_day), parse_day(args.end_day))
        if days.start and days.end and days.start > days.end:
            raise UsageError(f"--start-day {days.start} is after --end-day {days.end}")
        selection = select_inputs(args.inputs, days)
    except InputError as error:
        raise UsageError(str(error)) from None
    for folder in selection.skipped_outputs:
        print(f"beamlytics {args.command}: not reading {folder}: it is a beamlytics output folder", file=sys.stderr)
    paths = selection.paths
    if args.format != "auto" and args.table not in tables_of(args.format):
        raise UsageError(f"{args.format} inputs do not give a {args.table} table")
    options = {"active_timeout": args.active_timeout, "idle_timeout": args.idle_timeout,
               "time_range": args.time_range, "year": args.year, "timezone": args.timezone,
               "max_line_bytes": args.max_line_bytes, "max_decompression_ratio": args.max_decompression_ratio,
               "split_bytes": args.split_bytes}
    try:
        check_read_options(options)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return ReadSettings(paths, args.table, args.format, days, options)


def run_parse(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    from beamlytics.pipelines.detect import build_parse

    options = beam_options(beam_args)  # first: an unknown option also swallows the word after it
    settings = _read_settings(args)
    with outputs.open_output(args.output, "parse", args.overwrite, args.inputs, settings.inputs) as staging:
        _run(options, lambda pipeline: build_parse(pipeline, settings, staging), args.quiet)
    return _report(args.output)


def run_detect(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    from beamlytics import features
    from beamlytics.detectors.verdict import VerdictSettings
    from beamlytics.hunts import detect_hunts
    from beamlytics.hunts.allow import AllowList, AllowListError
    from beamlytics.inputs import total_bytes
    from beamlytics.pipelines.detect import DetectSettings, baseline_files, build_detect
    from beamlytics.transforms.write import default_shards

    if args.follow:
        from beamlytics.pipelines.live import run_follow

        return run_follow(args, beam_args)
    options = beam_options(beam_args)  # first: an unknown option also swallows the word after it
    read = _read_settings(args)
    config = detector_config(args)
    try:
        spec = features.WindowSpec(args.table, args.key, args.window,
                                   args.slot if config.detector_class.input_kind == "slots" else None)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.shards is not None and args.shards < 1:
        raise UsageError("--shards must be at least 1")
    if args.baseline:
        check_filesystem(args.baseline, "--baseline")
        if "://" not in args.baseline and not os.path.isdir(args.baseline):
            raise UsageError(f"no such baseline folder: {args.baseline}")
        if not baseline_files(args.baseline):
            raise UsageError(f"--baseline {args.baseline} holds no .parquet files: "
                             "give the features/ folder of an earlier detect run")
    shards = args.shards or default_shards(total_bytes(read.inputs))
    try:
        allow = AllowList.read(args.allow) if args.allow else AllowList()
        verdict = VerdictSettings(args.alarm_rate, args.min_records, allow)
        hunts = detect_hunts(args.hunts, args.table)
    except (AllowListError, ValueError) as error:
        raise UsageError(str(error)) from None
    if args.query:
        from beamlytics.analytics.sql import QueryError, check_row_query

        try:
            check_row_query(args.query, args.table)
        except QueryError as error:
            raise UsageError(f"--query: {error}") from None
    settings = DetectSettings(read, spec, config, args.windowing, args.baseline, args.train_until, shards, verdict,
                              args.query, hunts)
    with outputs.open_output(args.output, "detect", args.overwrite,
                             [*args.inputs, *filter(None, [args.baseline, args.allow])],
                             read.inputs) as staging:
        _run(options, lambda pipeline: build_detect(pipeline, settings, staging), args.quiet)
        top_incidents = report.finish_detect(staging, read.inputs, read.format, read.parser_options)
    status = _report(args.output)
    print(top_incidents)  # last: what an analyst looks at first, below the summary's counts
    return status


def _run(options: PipelineOptions, build: Callable, quiet: bool) -> None:
    """Build the pipeline (`build` returns the read plan) and run it, reporting progress on stderr unless `quiet`."""
    # What is alive now (the imported modules, mostly Beam's: ~130,000 objects) lives as long as the process:
    # frozen, the collector's full passes during the run skip it. Unfrozen after, so that whatever the run
    # leaves behind stays collectable, however many runs a process makes.
    gc.freeze()
    try:
        _build_and_run(options, build, quiet)
        release_memory()  # while still frozen: this full pass, too, skips the modules
    finally:
        gc.unfreeze()


def _build_and_run(options: PipelineOptions, build: Callable, quiet: bool) -> None:
    import apache_beam as beam

    from beamlytics.pipelines.progress import ProgressReporter
    from beamlytics.transforms import progress

    try:
        pipeline = beam.Pipeline(options=options)
    except ImportError as error:  # e.g. the DataflowRunner without the Google Cloud extra
        raise UsageError(f"{error} (pip install 'beamlytics[gcp]')") from None
    except ValueError as error:  # the runner's own option checks, e.g. Dataflow without --project
        raise UsageError(" ".join(str(error).split())) from None
    total_files = len(build(pipeline).sources)
    progress.reset_local_counts()
    results = []
    reporter = ProgressReporter(lambda: progress.merged_counts(results[0] if results else None), total_files)
    if not quiet:
        reporter.start()
    try:
        # The in-process DirectRunner returns from run() only when done; others return at once
        # and their counters are polled until wait_until_finish returns.
        results.append(pipeline.run())
        results[0].wait_until_finish()
    finally:
        if not quiet:
            reporter.stop()


def release_memory() -> None:
    """Free what a finished pipeline left behind before the next phase (detect's report) allocates on top of it.

    The runner's state (every stage's buffered elements) is left in reference cycles, which Python frees only at
    its next full collection; and glibc keeps freed heap pages unless told to return them. At 1 M records x
    10,000 hosts the incident report set `detect`'s peak RSS on top of ~580 MiB of such garbage (docs/benchmarks.md).
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None)
        if hasattr(libc, "malloc_trim"):  # glibc's; other C libraries (musl) have none
            libc.malloc_trim(0)


def _report(output: str) -> int:
    """Print the summary; its notes, on stderr, say why a result is empty. Exit 1 when nothing could be read."""
    from apache_beam.io.filesystems import FileSystems

    from beamlytics import summary

    summary_path = f"{output.rstrip('/')}/summary.json"
    if not FileSystems.exists(summary_path):
        print(f"output written to {output}")
        return 0
    with FileSystems.open(summary_path) as handle:
        text = handle.read().decode("utf-8")
    print(text.strip())
    print(f"output written to {output}")
    written = json.loads(text)
    for note in written.get("notes", []):
        print(f"beamlytics: {note}", file=sys.stderr)
    return 1 if summary.all_rejected(written) else 0


def main(argv: Sequence[str] | None = None) -> int:
    silence_foreign_warnings()
    # Before pyarrow is imported, and inherited by worker processes: the system allocator returns what
    # a stage freed, where Arrow's default (mimalloc) kept ~70 MiB more at the peak of a 50 k-record
    # detect (docs/benchmarks.md, issue 14) for no measured gain in time. A user's choice stands.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    parser = build_parser()
    try:
        args, beam_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as done:  # --help, --version, or a mistake argparse told in one line
        return done.code if isinstance(done.code, int) else 2
    if args.command in ("parse", "detect", "hunt", *analytics.COMMANDS):
        beam_args = runners.with_engine_options(beam_args)
    try:
        if args.command == "parse":
            return run_parse(args, beam_args)
        if args.command == "detect":
            return run_detect(args, beam_args)
        if args.command == "hunt":
            from beamlytics.pipelines import hunt

            return hunt.run(args, beam_args)
        if args.command in analytics.COMMANDS:
            return analytics.run(args, beam_args)
        if beam_args:
            raise UsageError(f"unrecognised option: {beam_args[0]}")
        if args.command in report.COMMANDS:
            return report.run(args)
        if args.command == "evaluate":
            from beamlytics.pipelines import evaluate

            return evaluate.run(args)
        if args.command == "runners":
            return runners.run(args)
        if args.command == "series":
            from beamlytics.pipelines import series

            return series.run(args)
        from beamlytics.pipelines import demo

        return demo.run(args)
    except (UsageError, outputs.OutputError) as error:
        print(f"beamlytics {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # outside a pipeline, e.g. a folder that cannot be created: the user's to fix
        print(f"beamlytics {args.command}: error: {error}", file=sys.stderr)
        return 2
    except outputs.Terminated:
        print(f"beamlytics {args.command}: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, as shells report a run SIGTERM ended
    except KeyboardInterrupt:
        print(f"beamlytics {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
