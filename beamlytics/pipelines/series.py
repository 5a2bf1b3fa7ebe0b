"""`beamlytics series`: per-host daily series from aggregate counts, judged by SPOT, S-H-ESD and a weekly band.

Writes OUT/flags.parquet (host, day, count, spot, shesd, band), OUT/rejected/rejected.parquet (rows that
could not be read: line and reason) and, with matplotlib, OUT/series.png (one panel per host).
With `--from-detect DETECT_OUT --feature F`, the series are instead each endpoint's feature F window by
window from a detect run's features/ folder, judged by S-H-ESD: OUT/flags.parquet (key, window_start,
value, shesd) and OUT/rejected/ (unreadable files). The whole
series is needed at once (S-H-ESD and the band fit every day together), and aggregates are small, so this
runs in one process, without a Beam pipeline.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from beamlytics.pipelines import cli, outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", nargs="?",
                        help="CSV of counts per day and host (and peer), with a header")
    parser.add_argument("--from-detect", metavar="DETECT_OUT",
                        help="instead of INPUT: the output folder of a detect run, whose features/ give the series")
    parser.add_argument("--feature", default="records", help="--from-detect: the feature judged (records)")
    parser.add_argument("--key", help="--from-detect: only this endpoint (default: every endpoint)")
    parser.add_argument("--period", type=int, help="--from-detect: windows per season (default: detected)")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="folder for flags.parquet, rejected/, series.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier series result in OUT (never files beamlytics did not write)")
    parser.add_argument("--day-column", default="date", help="column of the day, YYYY-MM-DD (date)")
    parser.add_argument("--host-column", default="l_ipn", help="column of the host (l_ipn)")
    parser.add_argument("--count-column", default="f", help="column of the count, summed per host and day (f)")
    parser.add_argument("--spot-q", type=_open_unit, default=1e-3, help="SPOT's anomaly probability (0.001)")
    parser.add_argument("--spot-n-init", type=int, default=30, help="days that calibrate SPOT (30)")
    parser.add_argument("--shesd-alpha", type=_open_unit, default=0.05, help="S-H-ESD's significance (0.05)")
    parser.add_argument("--shesd-max-anoms", type=_open_unit, default=0.1,
                        help="S-H-ESD's largest share of anomalous days, below 0.5 (0.1)")
    parser.add_argument("--band-width", type=_open_unit, default=0.99,
                        help="probability the weekly band's interval covers a normal day (0.99)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw series.png")


def _open_unit(text: str) -> float:
    value = cli.finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beamlytics import schemas
    from beamlytics.series import daily

    if args.spot_n_init < 5:
        raise cli.UsageError("--spot-n-init must be at least 5 (SPOT's first quantile needs 5 values)")
    if args.shesd_max_anoms >= 0.5:
        raise cli.UsageError("--shesd-max-anoms must be below 0.5: ESD needs a majority of normal days")
    if (args.input is None) == (args.from_detect is None):
        raise cli.UsageError("give either INPUT (a CSV of daily counts) or --from-detect DETECT_OUT")
    if args.from_detect is not None:
        return _run_from_detect(args)
    if not os.path.isfile(args.input):
        raise cli.UsageError(f"{args.input}: no such file")
    plot = not args.no_plot and importlib.util.find_spec("matplotlib") is not None
    cli.check_output_folder(args.output)
    settings = daily.SeriesSettings(spot_q=args.spot_q, spot_n_init=args.spot_n_init, shesd_alpha=args.shesd_alpha,
                                    shesd_max_anoms=args.shesd_max_anoms, band_width=args.band_width)
    try:
        all_series, rejected = daily.read_daily_counts(args.input, args.day_column, args.host_column,
                                                       args.count_column)
    except (ValueError, UnicodeError) as error:
        raise cli.UsageError(str(error)) from None
    table = daily.flags_table(all_series, settings)
    with outputs.open_output(args.output, "series", args.overwrite, [args.input], [args.input]) as staging:
        pq.write_table(table, os.path.join(staging, "flags.parquet"))
        os.makedirs(os.path.join(staging, "rejected"), exist_ok=True)
        pq.write_table(pa.Table.from_pylist([r.as_row() for r in rejected], schema=schemas.REJECTED),
                       os.path.join(staging, "rejected", "rejected.parquet"))
        if plot and all_series:
            daily.plot_panels(all_series, table, os.path.join(staging, "series.png"), settings.band_width)
    if not all_series:
        print(f"no series: {args.input} has no readable row ({len(rejected)} rejected, see rejected/)",
              file=sys.stderr)
        return 0
    counts = {name: int(sum(table.column(name).to_pylist())) for name in daily.DETECTOR_NAMES}
    print(f"{len(all_series)} hosts × {all_series[0].days.size} days; flagged host-days: "
          + ", ".join(f"{name} {count}" for name, count in counts.items())
          + f"; {len(rejected)} rows rejected; written to {args.output.rstrip('/')}/")
    return 0


def _run_from_detect(args: argparse.Namespace) -> int:
    import glob

    import pyarrow as pa
    import pyarrow.parquet as pq

    from beamlytics import schemas
    from beamlytics.series import windows

    if args.period is not None and args.period < 2:
        raise cli.UsageError("--period must be at least 2 windows")
    folder = os.path.join(args.from_detect, "features")
    if not os.path.isdir(folder):
        raise cli.UsageError(f"--from-detect {args.from_detect}: no features/ folder (not a detect output folder)")
    files = sorted(glob.glob(os.path.join(glob.escape(folder), "*.parquet")))
    cli.check_output_folder(args.output)
    try:
        rows, rejected = windows.read_features(files, args.feature, args.key)
        series = windows.build_series(rows)
        table = windows.shesd_table(series, args.period, args.shesd_alpha, args.shesd_max_anoms)
    except ValueError as error:
        raise cli.UsageError(str(error)) from None
    with outputs.open_output(args.output, "series", args.overwrite, [args.from_detect], files) as staging:
        pq.write_table(table, os.path.join(staging, "flags.parquet"))
        os.makedirs(os.path.join(staging, "rejected"), exist_ok=True)
        pq.write_table(pa.Table.from_pylist([r.as_row() for r in rejected], schema=schemas.REJECTED),
                       os.path.join(staging, "rejected", "rejected.parquet"))
    if not series:
        why = f"no endpoint {args.key}" if args.key else "no endpoint-window"
        print(f"no series: {folder} holds {why} ({len(rejected)} files rejected, see rejected/)", file=sys.stderr)
        return 0
    flagged = int(sum(table["shesd"].to_pylist()))
    print(f"{len(series)} endpoints, {table.num_rows} windows of {args.feature}; S-H-ESD flagged {flagged}; "
          f"{len(rejected)} files rejected; written to {args.output.rstrip('/')}/")
    return 0
