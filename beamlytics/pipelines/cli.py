"""The `beamlytics` command: parse, detect, evaluate, demo, runners.

Options this command does not know are handed to Beam (`--runner`, `--direct_num_workers`,
`--setup_file`, ...), after checking that Beam knows them: a mistyped option ends the run
with one line, instead of being silently dropped.
"""
from __future__ import annotations

import argparse
import datetime as dt
import inspect
import os
import re
import shutil
import sys
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beamlytics import features, schemas
from beamlytics.detectors.endpoint import DetectorConfig
from beamlytics.detectors.registry import DETECTORS
from beamlytics.inputs import DayRange, InputError, expand_inputs, parse_day
from beamlytics.parsers.formats import FORMATS, tables_of
from beamlytics.pipelines import demo, evaluate, runners
from beamlytics.pipelines.detect import OUTPUTS, DetectSettings, ReadSettings, build_detect, build_parse
from beamlytics.transforms.windows import WINDOWINGS

_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}

# Detector options: command-line name -> constructor parameter. Each applies only to the
# detectors whose constructor takes that parameter.
DETECTOR_OPTIONS = {
    "k": ("k", float, "gaussian: width of the band in σ (3); iqr: fence distance in IQRs (1.5)"),
    "n_init": ("n_init", int, "windows an endpoint needs before it is judged (calibration)"),
    "history": ("history", int, "iqr: how many recent windows the quartiles come from"),
    "q": ("q", float, "spot/dspot: risk, the probability of an anomaly per window (e.g. 1e-4)"),
    "level": ("level", float, "spot/dspot: quantile where the tail starts (0.98)"),
    "max_excess": ("max_excess", int, "spot/dspot: excesses kept to fit the tail (500)"),
    "depth": ("depth", int, "dspot: windows in the moving average that removes drift (10)"),
    "tails": ("tails", str, "spot/dspot: which tail raises alarms: up, down or both"),
    "beta": ("beta", float, "poisson: η level where the score turns against health"),
    "health_model": ("health_model", str, "poisson: sigmoid, logistic, exponential, recovery or kalman"),
    "ra_threshold": ("ra_threshold", float, "poisson: anomaly when the endpoint's health Ra falls below this"),
}


class UsageError(Exception):
    """A mistake in the command line or its inputs, told to the user in one line."""


def duration_us(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 60s, 5m, 1h, 500ms)")
    value = float(match[1]) * _UNITS_US[match[2] or "s"]
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a positive whole number of microseconds: {text!r}")
    return int(value)


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
    parser.add_argument("--format", default="auto", choices=["auto", *sorted(FORMATS)],
                        help="input format; auto recognises each file by its content (default)")
    parser.add_argument("--table", required=True, choices=sorted(schemas.TABLES),
                        help="the data table to build: dns, http or named_flows")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="output folder (local or any Beam filesystem); earlier beamlytics outputs in it are replaced")
    parser.add_argument("--start-day", help="first day to read, YYYY-MM-DD (UTC): by dated folders/names and record times")
    parser.add_argument("--end-day", help="last day to read, YYYY-MM-DD, inclusive")
    parser.add_argument("--active-timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="captures → named_flows: a flow longer than this is split (1800)")
    parser.add_argument("--idle-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="captures → named_flows: a flow silent this long ends (120)")


def _add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", default="c_ip", choices=["c_ip", "s_ip", "name"],
                        help="the endpoint: client IP (default), server IP, or the queried/requested name")
    parser.add_argument("--window", type=duration_us, default=duration_us("60s"),
                        help="tumbling event-time window, e.g. 30s, 5m, 1h (60s)")
    parser.add_argument("--windowing", choices=WINDOWINGS, default="key",
                        help="key: window start in the grouping key (fast, batch); beam: Beam FixedWindows (streaming)")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="gaussian",
                        help="gaussian (mean ± kσ), iqr (boxplot fences), spot, dspot, poisson (default gaussian)")
    parser.add_argument("--features", help="comma-separated features to score; defaults per table: "
                        + "; ".join(f"{t}: {','.join(f)}" for t, f in features.DEFAULT_FEATURES.items())
                        + ". All: " + "; ".join(f"{t}: {','.join(f)}" for t, f in features.FEATURES.items()))
    parser.add_argument("--slot", type=duration_us, default=duration_us("1s"),
                        help="poisson: slot length; the detector sees record counts per slot (1s)")
    parser.add_argument("--baseline", metavar="FEATURES_DIR",
                        help="calibrate on the features/ folder of an earlier run (e.g. a normal day)")
    parser.add_argument("--train-until", type=timestamp_us, metavar="TIMESTAMP",
                        help="windows ending by this UTC time calibrate the detectors and are not judged")
    parser.add_argument("--shards", type=int, default=1, help="Parquet files per output folder (1)")
    group = parser.add_argument_group("detector parameters (defaults are each detector's own)")
    for option, (_, kind, text) in DETECTOR_OPTIONS.items():
        group.add_argument("--" + option.replace("_", "-"), dest=option, type=kind, help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beamlytics",
        description="Find anomalous hosts in network logs and packet captures with Apache Beam. "
        "Options not listed here are Beam pipeline options (--runner, --direct_num_workers, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    parse = commands.add_parser("parse", help="normalize inputs into a Parquet table",
                                description="Read logs/captures into OUT/<table>/*.parquet, "
                                "with OUT/rejected/ and OUT/summary.json.")
    _add_read_arguments(parse)
    detect = commands.add_parser("detect", help="score endpoints window by window and report anomalies",
                                 description="Write OUT/anomalies/, OUT/scores/, OUT/features/, "
                                 "OUT/rejected/ and OUT/summary.json.")
    _add_read_arguments(detect)
    _add_detect_arguments(detect)
    evaluation = commands.add_parser("evaluate", help="precision/recall/F1/ROC AUC of the Poisson score against labels")
    evaluate.add_arguments(evaluation)
    demonstration = commands.add_parser("demo", help="generate demo Zeek logs with a known anomaly and find it")
    demo.add_arguments(demonstration)
    runners.add_arguments(commands.add_parser("runners", help="install and list the Prism and Flink engines"))
    return parser


def detector_config(args: argparse.Namespace) -> DetectorConfig:
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
    elif args.features:
        chosen = tuple(name.strip() for name in args.features.split(",") if name.strip())
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
    """Beam's own options, refusing anything Beam would silently ignore."""
    checker = argparse.ArgumentParser(add_help=False)
    for options_class in _all_subclasses(PipelineOptions):
        try:
            options_class._add_argparse_args(checker)
        except argparse.ArgumentError:
            continue  # an option several classes declare
    _, unknown = checker.parse_known_args(list(beam_args))
    if unknown:
        raise UsageError(f"unrecognised option: {unknown[0]} (see beamlytics COMMAND --help)")
    return PipelineOptions(list(beam_args))


def _all_subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _all_subclasses(subclass)


def _read_settings(args: argparse.Namespace) -> ReadSettings:
    try:
        days = DayRange(parse_day(args.start_day), parse_day(args.end_day))
        paths = expand_inputs(args.inputs, days)
    except InputError as error:
        raise UsageError(str(error)) from None
    if args.format != "auto" and args.table not in tables_of(args.format):
        raise UsageError(f"{args.format} inputs do not give a {args.table} table")
    options = {"active_timeout": args.active_timeout, "idle_timeout": args.idle_timeout}
    return ReadSettings(paths, args.table, args.format, days, options)


def _clear_outputs(output: str) -> None:
    """Remove earlier beamlytics outputs only: other files in the folder are the user's."""
    if "://" in output:
        return
    for name in OUTPUTS:
        path = os.path.join(output, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path):
            os.remove(path)


def run_parse(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    options = beam_options(beam_args)  # first: an unknown option also swallows the word after it
    settings = _read_settings(args)
    _clear_outputs(args.output)
    with beam.Pipeline(options=options) as pipeline:
        build_parse(pipeline, settings, args.output.rstrip("/"))
    return _report(args.output)


def run_detect(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    options = beam_options(beam_args)  # first: an unknown option also swallows the word after it
    read = _read_settings(args)
    config = detector_config(args)
    try:
        spec = features.WindowSpec(args.table, args.key, args.window,
                                   args.slot if config.detector_class.input_kind == "slots" else None)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.shards < 1:
        raise UsageError("--shards must be at least 1")
    if args.baseline and not os.path.isdir(args.baseline) and "://" not in args.baseline:
        raise UsageError(f"no such baseline folder: {args.baseline}")
    settings = DetectSettings(read, spec, config, args.windowing, args.baseline, args.train_until, args.shards)
    _clear_outputs(args.output)
    with beam.Pipeline(options=options) as pipeline:
        build_detect(pipeline, settings, args.output.rstrip("/"))
    return _report(args.output)


def _report(output: str) -> int:
    summary_path = f"{output.rstrip('/')}/summary.json"
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as handle:
            print(handle.read().strip())
    print(f"output written to {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if args.command in ("parse", "detect"):
        beam_args = runners.with_engine_options(beam_args)
    try:
        if args.command == "parse":
            return run_parse(args, beam_args)
        if args.command == "detect":
            return run_detect(args, beam_args)
        if beam_args:
            raise UsageError(f"unrecognised option: {beam_args[0]}")
        if args.command == "evaluate":
            return evaluate.run(args)
        if args.command == "runners":
            return runners.run(args)
        return demo.run(args)
    except UsageError as error:
        print(f"beamlytics {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
