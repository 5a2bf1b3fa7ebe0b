"""`beamlytics evaluate`: a detector's or a hunt's precision, recall, F1 and ROC AUC on labelled data.

Either scores every cell of a grid (Poisson: window lengths × β, default the seed notebook's
30/40/50 s × β ∈ {0, .3, .5, .7, 1}; any other detector: window lengths) as `detect --detector D`
would, in one pipeline that parses the inputs once, into OUT/runs/<cell>/scores/; or evaluates
earlier runs given with `--scores` (detect) or `--findings` (hunt). Then prints on one screen
the best of, for the Poisson detector η and each health model's Ra, for another detector its
anomalies per endpoint-window, for a hunt its findings per key, the confusion matrix and
metrics; warns on stderr about labels that match nothing scored; and writes every row to
OUT/results.csv and OUT/results.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any

from beamlytics import options_catalog as catalog
from beamlytics.pipelines import cli, outputs

DEFAULT_WINDOWS = "30s,40s,50s"
DEFAULT_BETAS = "0,0.3,0.5,0.7,1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="logs or captures to run the detection on")
    parser.add_argument("--labels", required=True,
                        help="CSV or Parquet with key, is_anomaly and window_start (per window) or time (per record)")
    parser.add_argument("--output", required=True, metavar="OUT", help="folder for runs/, results.csv, results.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier evaluate result in OUT (never files beamlytics did not write)")
    parser.add_argument("--scores", nargs="+", metavar="RUN_DIR",
                        help="evaluate these earlier detect outputs instead of running the detection")
    parser.add_argument("--findings", nargs="+", metavar="RUN_DIR",
                        help="evaluate these earlier `beamlytics hunt` outputs, per key (labels' key: src, or the domain)")
    parser.add_argument("--detector", default="poisson", choices=sorted(catalog.DETECTOR_NAMES),
                        help="detector to run or whose --scores to judge (poisson)")
    parser.add_argument("--format", default="auto", choices=["auto", *sorted(catalog.FORMAT_NAMES)],
                        help="input format, as for detect (auto)")
    parser.add_argument("--table", choices=sorted(catalog.TABLE_NAMES),
                        help="data table to build from the inputs: dns, http or named_flows")
    parser.add_argument("--key", default="c_ip", choices=["c_ip", "s_ip", "name"],
                        help="the endpoint, as for detect (c_ip)")
    parser.add_argument("--windows", default=DEFAULT_WINDOWS, help=f"window lengths of the grid ({DEFAULT_WINDOWS})")
    parser.add_argument("--betas", default=DEFAULT_BETAS, help=f"β values of the grid ({DEFAULT_BETAS})")
    parser.add_argument("--slot", default="1s", help="slot length (1s)")
    parser.add_argument("--health-model", help="detector's health model (its default: sigmoid)")
    parser.add_argument("--ra-threshold", type=cli.finite_float, help="detector's Ra alarm level (its default: 0.7)")
    parser.add_argument("--eta-threshold", type=cli.finite_float,
                        help="η counts as positive above this (default: the run's β; with --scores 0.3)")


def run(args: argparse.Namespace) -> int:
    from beamlytics import evaluation  # pandas: only when evaluating, not for `beamlytics --help`

    if importlib.util.find_spec("matplotlib") is None:
        raise cli.UsageError("evaluate draws results.png with matplotlib: pip install 'beamlytics[plot]'")
    cli.check_output_folder(args.output)
    for option, paths in (("--scores", args.scores), ("--findings", args.findings)):
        for path in paths or ():
            if not os.path.exists(path):
                raise cli.UsageError(f"{option} {path}: no such run folder")
    earlier = [*(args.scores or []), *(args.findings or [])]
    read = [*args.inputs, args.labels, *earlier]
    try:
        grid = None if earlier else _grid(args)  # bad grid values are told before any file is touched
        labels = evaluation.read_labels(args.labels)
        # The grid's runs and the report are one result: all of it appears in OUT, or none.
        with outputs.open_output(args.output, "evaluate", args.overwrite, read,
                                 [path for path in read if os.path.isfile(path)]) as staging:
            rows = _hunt_rows(args.findings, labels) if args.findings else _detector_rows(args, grid, staging, labels)
            results = evaluation.results_table(rows)
            print(evaluation.format_results(results))
            evaluation.write_report(results, staging)
    except (OSError, ValueError, argparse.ArgumentTypeError) as error:
        print(f"beamlytics evaluate: error: {error}", file=sys.stderr)
        return 2
    folder = args.output.rstrip("/")
    print(f"results written to {folder}/results.csv and {folder}/results.png")
    return 0


def _detector_rows(args: argparse.Namespace, grid: tuple[dict[str, float], list[float]] | None, staging: str,
                   labels) -> list[dict]:
    from beamlytics import evaluation

    rows = []
    for name, window_seconds, beta, scores_dir in _scored_runs(args, grid, staging):
        scores = evaluation.read_scores([scores_dir])
        if args.detector != "poisson":
            metrics, warnings = evaluation.evaluate_detector(scores, labels)
            _warn(name, warnings)
            rows.append({"run": name, "window_seconds": window_seconds, "score": args.detector, **metrics})
            continue
        joined, unscored = evaluation.join_labels(scores, labels)
        cut = args.eta_threshold if args.eta_threshold is not None else (0.3 if beta is None else beta)
        for row in evaluation.evaluate(joined, cut):
            rows.append({"run": name, "window_seconds": window_seconds, "beta": beta,
                         "unscored_positives": unscored, **row})
    return rows


def _hunt_rows(runs: list[str], labels) -> list[dict]:
    from beamlytics import evaluation

    rows = []
    for run_dir in runs:
        findings = evaluation.read_findings([run_dir])
        keys = set(findings["src"].fillna(findings["dst"]).dropna())
        hunt_rows, warnings = evaluation.evaluate_hunts(findings, labels, sorted(keys))
        _warn(run_dir, warnings)
        rows += [{"run": run_dir, "score": f"hunt {row.pop('hunt')}", **row} for row in hunt_rows]
    return rows


def _warn(run: str, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"beamlytics evaluate: warning: {run}: {warning}", file=sys.stderr)


def _grid(args: argparse.Namespace) -> tuple[dict[str, float], list[float]]:
    """The window lengths (text → seconds) and β values of the grid, checked."""
    if not args.inputs or not args.table:
        raise ValueError("give INPUT files and --table to run the detection, or --scores RUN_DIR")
    windows = {window: cli.duration_us(window) / 1e6 for window in _split(args.windows)}
    cli.duration_us(args.slot)
    # β is the Poisson detector's alone: another detector's grid is its window lengths.
    betas = [cli.finite_float(value) for value in _split(args.betas)] if args.detector == "poisson" else [None]
    if not windows or not betas:
        raise ValueError("--windows and --betas each need at least one value")
    return windows, betas


def _scored_runs(args: argparse.Namespace, grid: tuple[dict[str, float], list[float]] | None,
                 output: str) -> list[tuple[str, float | None, float | None, str]]:
    """(name, window seconds, β, scores folder) of every run to evaluate."""
    if grid is None:
        return [(path, None, None, path) for path in args.scores]
    cells = _grid_cells(args, grid, output)
    _run_grid(args, cells, output)
    return [(cell.name, cell.window_seconds, cell.beta, cell.folder) for cell in cells]


@dataclass(frozen=True)
class GridCell:
    """One detection of the grid: its window, β and detector, checked as `detect` checks them."""

    name: str
    window: str
    window_seconds: float
    beta: float | None
    folder: str  # OUT/runs/<cell>: its scores/ go there
    spec: Any  # features.WindowSpec
    config: Any  # detectors.endpoint.DetectorConfig


def _grid_cells(args: argparse.Namespace, grid: tuple[dict[str, float], list[float]], output: str) -> list[GridCell]:
    """The grid's cells, each argument checked by `detect`'s own parser (a bad one is told before any run)."""
    from beamlytics import features

    parser = cli.build_parser()
    windows, betas = grid
    cells = []
    for window, window_seconds in windows.items():
        for beta in betas:
            name = f"window={window}" + ("" if beta is None else f" beta={beta:g}")
            folder = os.path.join(output, "runs", f"w{window}" + ("" if beta is None else f"_b{beta:g}"))
            detect_args = parser.parse_args(_detect_argv(args, window, beta, folder))
            config = cli.detector_config(detect_args)
            slots = detect_args.slot if config.detector_class.input_kind == "slots" else None
            try:
                spec = features.WindowSpec(args.table, args.key, detect_args.window, slots)
            except ValueError as error:
                raise cli.UsageError(f"{name}: {error}") from None
            cells.append(GridCell(name, window, window_seconds, beta, folder, spec, config))
    return cells


def _run_grid(args: argparse.Namespace, cells: list[GridCell], output: str) -> None:
    """One pipeline for the whole grid: the inputs are parsed once, windowed once per window length, and
    scored once per cell into OUT/runs/<cell>/scores/; what could not be read goes to OUT/rejected/."""
    first = cli.build_parser().parse_args(_detect_argv(args, cells[0].window, cells[0].beta, output))
    first.command = "evaluate"  # for its notes on stderr
    read = cli._read_settings(first)  # the inputs, formats and read limits exactly as detect takes them
    cli._run(cli.beam_options([]), lambda pipeline: build_grid(pipeline, read, cells, output), quiet=False)


def build_grid(pipeline, read, cells: list[GridCell], output: str):
    """Wire the grid's pipeline; returns what reading will do, as `build_detect` does."""
    from beamlytics import schemas
    from beamlytics.pipelines.detect import REJECTED_ORDER, SCORE_ORDER
    from beamlytics.transforms.read import ReadRecords
    from beamlytics.transforms.score import ScoreEndpoints
    from beamlytics.transforms.windows import WindowFeatures
    from beamlytics.transforms.write import WriteSortedParquet

    reader = ReadRecords(read.inputs, read.table, read.format, read.days, read.parser_options)
    records = pipeline | "Read" >> reader
    records["rejected"] | "WriteRejected" >> WriteSortedParquet(f"{output}/rejected", schemas.REJECTED,
                                                                REJECTED_ORDER)
    windowed = {}
    for cell in cells:
        if cell.spec not in windowed:
            windowed[cell.spec] = records["records"] | f"Windows {cell.window}" >> WindowFeatures(cell.spec)
        scores = windowed[cell.spec] | f"Score {cell.name}" >> ScoreEndpoints(cell.config)
        scores | f"Write {cell.name}" >> WriteSortedParquet(f"{cell.folder}/scores", schemas.SCORES, SCORE_ORDER)
    return reader.plan


def _detect_argv(args: argparse.Namespace, window: str, beta: float | None, out: str) -> list[str]:
    argv = ["detect", "--format", args.format, "--table", args.table, "--key", args.key, "--window", window,
            "--detector", args.detector, "--output", out]
    if args.detector != "poisson":
        return [*argv, *args.inputs]
    argv += ["--slot", args.slot, "--beta", str(beta)]
    if args.health_model:
        argv += ["--health-model", args.health_model]
    if args.ra_threshold is not None:
        argv += ["--ra-threshold", str(args.ra_threshold)]
    return [*argv, *args.inputs]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
