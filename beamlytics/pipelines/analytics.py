"""The NetLytics commands: `query` (SQL), `domain-traffic`, `top-dns`, `what` and `cluster`.

Inputs are raw logs, parsed on the way by the `parse` pipeline into the output folder (with its
rejected/ records and summary.json), and/or earlier `parse` output folders, read as they are.
The analytic runs on the whole table in this process (DuckDB or Arrow): OUT/result.parquet and
OUT/result.csv hold its answer.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

import pyarrow as pa

from beamlytics.analytics.cluster import ALGORITHMS

COMMANDS = ("query", "domain-traffic", "top-dns", "what", "cluster")
_TABLE_OF = {"domain-traffic": "named_flows", "top-dns": "dns", "what": "named_flows"}


def add_commands(commands, add_read_arguments: Callable) -> None:
    query = commands.add_parser("query", help="SQL over a data table (DuckDB), the table named netlytics",
                                description="Write the SELECT's rows to OUT/result.parquet and OUT/result.csv. "
                                "The table is called netlytics (as in NetLytics) and by its own name.")
    query.add_argument("sql", metavar="SQL", help='e.g. "SELECT name, SUM(s_bytes) AS traffic FROM netlytics '
                       'GROUP BY name ORDER BY traffic DESC"')
    add_read_arguments(query)
    for command, text in (("domain-traffic", "top names by bytes (NetLytics' DomainTraffic), named_flows"),
                          ("top-dns", "top resolvers by queries (NetLytics' TopDNSServers), dns")):
        parser = commands.add_parser(command, help=text, description=f"{text}; OUT/result.parquet and .csv.")
        add_read_arguments(parser)
        parser.add_argument("--top", type=int, default=50, metavar="N", help="rows listed (50)")
    what = commands.add_parser("what", help="WHAT cloud service meter: bytes per core domain, named_flows",
                               description="Learn each core domain's bag of domains, give every flow to a "
                               "service, write bytes per service to OUT/result.parquet and .csv (docs/analytics.md).")
    add_read_arguments(what)
    what.add_argument("--cores", required=True, help="comma-separated core domains (CORES), e.g. www.netflix.com")
    what.add_argument("--ow", type=float, default=10.0, help="observation window after a core visit, seconds (10)")
    what.add_argument("--gap", type=float, default=10.0, help="client silence before a core visit counts, seconds (10)")
    what.add_argument("--ew", type=float, default=5.0, help="evaluation window for classification, seconds (5)")
    what.add_argument("--minfreq", type=float, default=0.05, help="share of visits a bag domain needs (0.05)")
    what.add_argument("--top", type=int, default=50, metavar="N_TOP", help="services listed (50)")
    cluster = commands.add_parser("cluster", help="KMeans, BisectingKMeans, GaussianMixture or DBSCAN over a table",
                                  description="Write the input rows with their feature vector, cluster id (-1: "
                                  "DBSCAN noise) and, for the mixture, probability to OUT/result.parquet.")
    add_read_arguments(cluster)
    cluster.add_argument("--algorithm", required=True, choices=ALGORITHMS)
    cluster.add_argument("--numerical", default="", help="comma-separated numerical columns, e.g. c_bytes,s_bytes")
    cluster.add_argument("--categorical", default="", help="comma-separated columns one-hot encoded, e.g. proto")
    cluster.add_argument("--normalise", action="store_true", help="standardise each feature (mean 0, σ 1)")
    cluster.add_argument("--k", type=int, default=2, help="clusters (kmeans, bisecting_kmeans, gaussian_mixture; 2)")
    cluster.add_argument("--seed", type=int, default=0, help="random seed of the fit (0)")
    cluster.add_argument("--eps", type=float, default=0.5, help="dbscan: neighbourhood radius (0.5)")
    cluster.add_argument("--min-points", type=int, default=5, help="dbscan: neighbours of a core point (5)")
    cluster.add_argument("--fit-rows", type=int, default=100_000,
                         help="the model is fitted on the first this many rows, then labels every row (100000)")


def _analytic(args: argparse.Namespace) -> Callable[[pa.Table], pa.Table]:
    from beamlytics.analytics import domains, sql, what
    from beamlytics.pipelines import cli

    if args.command == "query":
        return lambda table: sql.run_query(args.sql, {args.table: table})
    if args.command == "cluster":
        return lambda table: _cluster(table, args)
    if args.top < 1:
        raise cli.UsageError("--top must be at least 1")
    if args.command == "domain-traffic":
        return lambda table: domains.top_domains(table, args.top)
    if args.command == "top-dns":
        return lambda table: domains.top_dns_servers(table, args.top)
    try:
        config = what.WhatConfig(frozenset(name.strip() for name in args.cores.split(",") if name.strip()),
                                 args.ow, args.gap, args.ew, args.minfreq, args.top)
    except ValueError as error:
        raise cli.UsageError(str(error)) from None
    return lambda table: what.service_traffic(table, config)


def _cluster(table: pa.Table, args: argparse.Namespace) -> pa.Table:
    from beamlytics.analytics.cluster import cluster_table
    from beamlytics.pipelines import cli

    params = ({"eps": args.eps, "min_points": args.min_points} if args.algorithm == "dbscan"
              else {"k": args.k, "seed": args.seed})
    try:
        return cluster_table(table, args.algorithm, _names(args.numerical), _names(args.categorical),
                             args.normalise, args.fit_rows, **params)
    except ValueError as error:
        raise cli.UsageError(" ".join(str(error).split())) from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    # cli imports this module to register the commands, so its helpers are looked up at run time.
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from beamlytics.analytics.sql import QueryError
    from beamlytics.analytics.tables import load_table, parse_output_files
    from beamlytics.inputs import DayRange, InputError, parse_day
    from beamlytics.pipelines import cli, outputs
    from beamlytics.pipelines.detect import build_parse
    from beamlytics.transforms.read import in_day_range

    needed = _TABLE_OF.get(args.command)
    if needed and args.table != needed:
        raise cli.UsageError(f"{args.command} runs on the {needed} table, not {args.table}")
    analytic = _analytic(args)
    options = cli.beam_options(beam_args)
    try:
        days = DayRange(parse_day(args.start_day), parse_day(args.end_day))
    except InputError as error:
        raise cli.UsageError(str(error)) from None
    parsed = {path: parse_output_files(path, args.table) for path in args.inputs}
    earlier = sorted(file for files in parsed.values() if files for file in files)
    raw = [path for path, files in parsed.items() if files is None]
    cli.check_output_folder(args.output)
    patterns = list(args.inputs)
    settings = None
    if raw:
        args.inputs = raw
        settings = cli._read_settings(args)
    with outputs.open_output(args.output, args.command, args.overwrite, patterns,
                             [*(settings.inputs if settings else []), *earlier]) as staging:
        if settings is not None:
            cli._run(options, lambda pipeline: build_parse(pipeline, settings, staging), args.quiet)
            earlier += sorted(os.path.join(staging, args.table, name)
                              for name in os.listdir(os.path.join(staging, args.table)) if name.endswith(".parquet"))
        # Raw logs were cut to the days while parsed; parse folders are cut here, by the same rule.
        records = in_day_range(load_table(earlier, args.table), args.table, days)
        try:
            result = analytic(records)
        except QueryError as error:
            raise cli.UsageError(f"SQL: {error}") from None
        pq.write_table(result, os.path.join(staging, "result.parquet"))
        if args.command != "cluster":  # list columns (the feature vector) have no CSV form
            pcsv.write_csv(result, os.path.join(staging, "result.csv"))
    if not records.num_rows:
        print(f"beamlytics {args.command}: the {args.table} table is empty"
              + (f" between {args.start_day or 'the start'} and {args.end_day or 'the end'}" if days.bounded else ""),
              file=sys.stderr)
    print(f"{result.num_rows} result rows from {records.num_rows} {args.table} records")
    return cli._report(args.output)
