"""The NetLytics commands: `query` (SQL), `domain-traffic`, `top-dns`, `what`, `cluster` and `remedy`.

Inputs are raw logs, parsed on the way by the `parse` pipeline into the output folder (with its
rejected/ records and summary.json), and/or earlier `parse` output folders, read as they are.
The analytic runs on the whole table in this process (DuckDB or Arrow), except cluster assignment
(Beam's RunInference) and REMeDy's pair statistics, which run on the chosen runner: OUT/result.parquet
and OUT/result.csv hold its answer.
`--output X.csv` or `X.parquet` writes that one file instead, and beside it remedy's pairs (X.pairs.csv)
and the rejected records of raw inputs (X.rejected.parquet).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import pyarrow as pa

COMMANDS = ("query", "domain-traffic", "top-dns", "what", "cluster", "remedy")
_TABLE_OF = {"domain-traffic": "named_flows", "top-dns": "dns", "what": "named_flows", "remedy": "dns"}
FILE_SUFFIXES = (".csv", ".parquet")
_OTHER_RESULTS = {"remedy": ("pairs",)}  # results besides "result", written beside it as X.pairs.csv


def add_commands(commands, add_read_arguments: Callable) -> None:
    """The NetLytics subcommands; each one's arguments are added when it is used (see `cli.CommandParser`)."""

    def query_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("sql", metavar="SQL", help='e.g. "SELECT name, SUM(s_bytes) AS traffic FROM netlytics '
                            'GROUP BY name ORDER BY traffic DESC"')
        add_read_arguments(parser)

    def with_read_arguments(add_own: Callable) -> Callable:
        def add(parser: argparse.ArgumentParser) -> None:
            add_read_arguments(parser)
            add_own(parser)
        return add

    commands.add_parser("query", help="SQL over a data table (DuckDB), the table named netlytics",
                        description="Write the SELECT's rows to OUT/result.parquet and OUT/result.csv. "
                        "The table is called netlytics (as in NetLytics) and by its own name.",
                        arguments=query_arguments)
    for command, text in (("domain-traffic", "top names by bytes (NetLytics' DomainTraffic), named_flows"),
                          ("top-dns", "top resolvers by queries (NetLytics' TopDNSServers), dns")):
        commands.add_parser(command, help=text, description=f"{text}; OUT/result.parquet and .csv.",
                            arguments=with_read_arguments(_add_top_arguments))
    commands.add_parser("what", help="WHAT cloud service meter: bytes per core domain, named_flows",
                        description="Learn each core domain's bag of domains, give every flow to a "
                        "service, write bytes per service to OUT/result.parquet and .csv (docs/analytics.md).",
                        arguments=with_read_arguments(_add_what_arguments))
    commands.add_parser("cluster", help="KMeans, BisectingKMeans, GaussianMixture or DBSCAN over a table",
                        description="Write the input rows with their feature vector, cluster id (-1: "
                        "DBSCAN noise) and, for the mixture, probability to OUT/result.parquet.",
                        arguments=with_read_arguments(_add_cluster_arguments))
    commands.add_parser("remedy", help="REMeDy: rogue DNS resolvers, from answers inconsistent with "
                        "other resolvers', dns", description="Write the suspicious resolvers (one row per "
                        "resolver and ASN, with their domains) to OUT/result.parquet and .csv, and every "
                        "inconsistent (resolver, domain) pair to OUT/pairs.parquet (docs/analytics.md).",
                        arguments=with_read_arguments(_add_remedy_arguments))


def _add_top_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top", type=int, default=50, metavar="N", help="rows listed (50)")


def _add_what_arguments(what: argparse.ArgumentParser) -> None:
    what.add_argument("--cores", required=True, help="comma-separated core domains (CORES), e.g. www.netflix.com")
    what.add_argument("--ow", type=float, default=10.0, help="observation window after a core visit, seconds (10)")
    what.add_argument("--gap", type=float, default=10.0, help="client silence before a core visit counts, seconds (10)")
    what.add_argument("--ew", type=float, default=5.0, help="evaluation window for classification, seconds (5)")
    what.add_argument("--minfreq", type=float, default=0.05, help="share of visits a bag domain needs (0.05)")
    what.add_argument("--top", type=int, default=50, metavar="N_TOP", help="services listed (50)")


def _add_cluster_arguments(cluster: argparse.ArgumentParser) -> None:
    from beamlytics import options_catalog as catalog
    from beamlytics.pipelines.cli import duration_us

    cluster.add_argument("--algorithm", required=True, choices=catalog.CLUSTER_ALGORITHMS)
    cluster.add_argument("--numerical", default="", help="comma-separated numerical columns, e.g. c_bytes,s_bytes")
    cluster.add_argument("--categorical", default="", help="comma-separated columns one-hot encoded, e.g. proto")
    cluster.add_argument("--normalise", action="store_true", help="standardise each feature (mean 0, σ 1)")
    cluster.add_argument("--k", type=int, default=2, help="clusters (kmeans, bisecting_kmeans, gaussian_mixture; 2)")
    cluster.add_argument("--seed", type=int, default=0, help="random seed of the fit (0)")
    cluster.add_argument("--eps", type=float, default=0.5, help="dbscan: neighbourhood radius (0.5)")
    cluster.add_argument("--min-points", type=int, default=5, help="dbscan: neighbours of a core point (5)")
    cluster.add_argument("--fit-rows", type=int, default=100_000,
                         help="the model is fitted on the first this many rows, then RunInference labels every "
                         "row (100000)")
    cluster.add_argument("--query", metavar="SQL", help="SQL over the table (named netlytics) whose rows are "
                         "clustered instead of the table's, as NetLytics' preprocessing")
    cluster.add_argument("--windows", action="store_true",
                         help="cluster per endpoint-window features (--key, --window) instead of records; "
                         "--numerical defaults to every feature")
    cluster.add_argument("--key", default="c_ip", choices=catalog.KEYS, help="--windows: the endpoint (c_ip)")
    cluster.add_argument("--window", type=duration_us, default=duration_us("60s"),
                         help="--windows: tumbling event-time window, e.g. 5m (60s)")


def _add_remedy_arguments(remedy: argparse.ArgumentParser) -> None:
    remedy.add_argument("--asn-db", metavar="FILE", help="pyasn IPASN file (prefix TAB asn per line, e.g. from "
                        "pyasn_util_convert.py); without it, or where it has no entry, an address stands for its /16")
    remedy.add_argument("--min-resolutions", type=int, default=50,
                        help="answers a domain needs, over all resolvers, to be judged (50)")
    remedy.add_argument("--min-resolvers", type=int, default=3, help="resolvers a domain needs to be judged (3)")
    remedy.add_argument("--min-agree", type=int, default=2,
                        help="resolvers that must return a value for it to be normal (2)")
    remedy.add_argument("--min-domains", type=int, default=3,
                        help="registered domains a resolver must send to one unusual ASN to be reported (3)")
    remedy.add_argument("--max-pair-values", type=int, default=1000,
                        help="distinct values (clients, servers, TTLs, ...) kept per resolver and domain; a pair with "
                        "more is marked truncated and counted (1000)")


def _analytic(args: argparse.Namespace, options) -> Callable[[pa.Table], dict[str, pa.Table]]:
    """The command's analytic: the table -> its named results ("result" first)."""
    from beamlytics.analytics import domains, sql, what
    from beamlytics.pipelines import cli

    if args.command == "query":
        return lambda table: {"result": sql.run_query(args.sql, {args.table: table})}
    if args.command == "cluster":
        return lambda table: {"result": _cluster(table, args, options)}
    if args.command == "remedy":
        return _remedy(args, options)
    if args.top < 1:
        raise cli.UsageError("--top must be at least 1")
    if args.command == "domain-traffic":
        return lambda table: {"result": domains.top_domains(table, args.top)}
    if args.command == "top-dns":
        return lambda table: {"result": domains.top_dns_servers(table, args.top)}
    try:
        config = what.WhatConfig(frozenset(name.strip() for name in args.cores.split(",") if name.strip()),
                                 args.ow, args.gap, args.ew, args.minfreq, args.top)
    except ValueError as error:
        raise cli.UsageError(str(error)) from None
    return lambda table: {"result": what.service_traffic(table, config)}


def _remedy(args: argparse.Namespace, options) -> Callable[[pa.Table], dict[str, pa.Table]]:
    from beamlytics.analytics import remedy
    from beamlytics.pipelines import cli

    try:
        config = remedy.RemedyConfig(args.min_resolutions, args.min_resolvers, args.min_agree, args.min_domains,
                                     max_pair_values=args.max_pair_values)
        if args.asn_db is not None and not os.path.isfile(args.asn_db):
            raise cli.UsageError(f"--asn-db {args.asn_db}: no such file")
        lookup = remedy.AsnLookup(args.asn_db)
    except ValueError as error:
        raise cli.UsageError(str(error)) from None

    return lambda table: _remedy_with_beam(table, config, lookup, options)


def _remedy_with_beam(table: pa.Table, config, lookup, options, batch_rows: int = 50_000) -> dict[str, pa.Table]:
    """REMeDy's report and pairs, the pair statistics computed and merged by `FindRogueResolvers` on the runner."""
    from beamlytics.transforms.analytics import FindRogueResolvers

    found = _on_runner(options, [table.slice(start, batch_rows) for start in range(0, table.num_rows, batch_rows)],
                       FindRogueResolvers(config, lookup), _remedy_tables)
    truncated = found["truncated"][0]["pairs"][0].as_py()
    if truncated:
        print(f"beamlytics remedy: {truncated} (resolver, domain) pairs had more than {config.max_pair_values} "
              "distinct values in a set (--max-pair-values); their counts are lower bounds (column truncated)",
              file=sys.stderr)
    return {name: found[name][0] for name in ("result", "pairs")}


def _remedy_tables(verdict) -> list:
    """(name, part, table) of a REMeDy verdict for `_on_runner`; imports pyarrow itself, as it runs on a worker."""
    import pyarrow as pa

    return [("result", 0, verdict.report), ("pairs", 0, verdict.pairs),
            ("truncated", 0, pa.table({"pairs": [verdict.truncated_pairs]}))]


def _on_runner(options, elements: list, transform, tables_of: Callable) -> dict[str, list[pa.Table]]:
    """Run `elements | transform` on the chosen runner and bring back the tables that `tables_of` makes of each
    output element, as (name, part, table): by name, in part order.

    They come back through Parquet files in a temporary folder, since a runner's workers need not share this
    process's memory.
    """
    import tempfile

    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beamlytics.transforms.write import parquet_bytes, write_file

    def write(element, folder: str) -> list:
        return [write_file(f"{folder}/{name}.{part:012d}.parquet", parquet_bytes(result))
                for name, part, result in tables_of(element)]

    found: dict[str, list[pa.Table]] = {}
    with tempfile.TemporaryDirectory(prefix="beamlytics-analytics-") as folder:
        with beam.Pipeline(options=options) as pipeline:
            _ = (pipeline | "Input" >> beam.Create(elements) | "Analytic" >> transform
                 | "Write" >> beam.FlatMap(write, folder))
        for file in sorted(os.listdir(folder)):
            found.setdefault(file.split(".")[0], []).append(pq.read_table(os.path.join(folder, file)))
    return found


def _cluster_input(table: pa.Table, args: argparse.Namespace) -> pa.Table:
    """What `cluster` clusters: the records, their endpoint-windows (--windows) or a query's rows (--query)."""
    from beamlytics import features
    from beamlytics.analytics import sql

    if args.windows:
        spec = features.WindowSpec(args.table, args.key, args.window)
        windows = features.window_features(table.to_batches(), spec)
        table = windows.drop_columns([name for name in ("slot_counts", features.TRAIN_COLUMN)
                                      if name in windows.column_names])
    if args.query:
        table = sql.run_query(args.query, {args.table if not args.windows else "windows": table})
    return table


def _cluster(table: pa.Table, args: argparse.Namespace, options) -> pa.Table:
    from beamlytics import features
    from beamlytics.analytics.cluster import cluster_table, fit_clusters, with_clusters
    from beamlytics.analytics.sql import QueryError
    from beamlytics.pipelines import cli

    params = ({"eps": args.eps, "min_points": args.min_points} if args.algorithm == "dbscan"
              else {"k": args.k, "seed": args.seed})
    numerical = _names(args.numerical)
    if args.windows and not numerical and not args.categorical:
        numerical = list(features.FEATURES[args.table])
    try:
        table = _cluster_input(table, args)
        if args.algorithm == "dbscan":
            return cluster_table(table, args.algorithm, numerical, _names(args.categorical), args.normalise, **params)
        fitted, model = fit_clusters(table, args.algorithm, numerical, _names(args.categorical), args.normalise,
                                     args.fit_rows, **params)
    except QueryError as error:
        raise cli.UsageError(f"--query: {error}") from None
    except ValueError as error:
        raise cli.UsageError(" ".join(str(error).split())) from None
    labels, probability = _assign_with_beam(table, fitted, model, options)
    return with_clusters(table, fitted, fitted.matrix(table), labels,
                         probability if args.algorithm == "gaussian_mixture" else None)


def _assign_with_beam(table: pa.Table, fitted, model, options, batch_rows: int = 50_000):
    """(cluster ids, probabilities) of every row of `table`, assigned by RunInference on the chosen runner."""
    import apache_beam as beam
    import numpy as np
    import pyarrow as pa

    from beamlytics.transforms.analytics import AssignClusters

    def labels(rows):
        columns = {"position": [row[0] for row in rows], "cluster": [row[1] for row in rows],
                   "probability": [row[2] for row in rows]}
        return [("labels", min(columns["position"]), pa.table(columns))]

    batches = [(start, table.slice(start, batch_rows)) for start in range(0, table.num_rows, batch_rows)]
    parts = _on_runner(options, batches, AssignClusters(fitted, model)
                       | "Batch" >> beam.BatchElements(min_batch_size=10_000, max_batch_size=100_000), labels)
    assigned = pa.concat_tables(parts["labels"]) if parts else pa.table({"position": pa.array([], pa.int64()),
                                                                         "cluster": pa.array([], pa.int64()),
                                                                         "probability": pa.array([], pa.float64())})
    assigned = assigned.sort_by("position")
    return (np.asarray(assigned["cluster"].to_numpy(), dtype=np.int64),
            np.asarray(assigned["probability"].to_numpy(), dtype=float))


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def file_output(output: str) -> str | None:
    """The suffix when `--output` names a result file (X.csv, X.parquet) rather than a folder."""
    return next((suffix for suffix in FILE_SUFFIXES if output.lower().endswith(suffix)), None)


def _check_file_output(args: argparse.Namespace, suffix: str) -> str:
    """The dead-letter file beside the result file; refuses what must not be written or replaced."""
    from beamlytics.pipelines import cli

    if "://" in args.output:
        raise cli.UsageError(f"--output {args.output}: a result file must be local; give a folder for remote output")
    if args.command == "cluster" and suffix == ".csv":
        raise cli.UsageError(f"--output {args.output}: the feature vector of cluster has no CSV form; "
                             "give a .parquet file or a folder")
    rejected = args.output[: -len(suffix)] + ".rejected.parquet"
    for path in (args.output, *_beside_result(args, suffix).values(), rejected):
        if os.path.isdir(path):
            raise cli.UsageError(f"--output {args.output}: {path} is a folder")
        if os.path.lexists(path) and not args.overwrite:
            raise cli.UsageError(f"--output {args.output}: {path} exists; beamlytics never replaces a file "
                                 "unless told to (--overwrite)")
    if os.path.lexists(rejected) and not _is_rejected_file(rejected):
        raise cli.UsageError(f"--output {args.output}: {rejected} exists and is not beamlytics' rejected records: "
                             "move it away")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise cli.UsageError(f"--output {args.output}: no such folder {parent}")
    return rejected


def _beside_result(args: argparse.Namespace, suffix: str) -> dict[str, str]:
    """The command's other results (remedy's pairs) -> the files beside X.csv / X.parquet that hold them."""
    return {name: f"{args.output[: -len(suffix)]}.{name}{suffix}" for name in _OTHER_RESULTS.get(args.command, ())}


def _is_rejected_file(path: str) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beamlytics import schemas

    try:
        return pq.read_schema(path).equals(schemas.REJECTED)
    except (OSError, pa.ArrowException):
        return False


def run(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    # cli imports this module to register the commands, so its helpers are looked up at run time.
    from beamlytics.analytics.tables import parse_output_files
    from beamlytics.inputs import DayRange, InputError, parse_day
    from beamlytics.pipelines import cli

    needed = _TABLE_OF.get(args.command)
    if needed and args.table != needed:
        raise cli.UsageError(f"{args.command} runs on the {needed} table, not {args.table}")
    options = cli.beam_options(beam_args)
    analytic = _analytic(args, options)
    try:
        days = DayRange(parse_day(args.start_day), parse_day(args.end_day))
    except InputError as error:
        raise cli.UsageError(str(error)) from None
    suffix = file_output(args.output)
    rejected_file = _check_file_output(args, suffix) if suffix else None
    parsed = {path: parse_output_files(path, args.table) for path in args.inputs}
    earlier = sorted(file for files in parsed.values() if files for file in files)
    raw = [path for path, files in parsed.items() if files is None]
    if suffix is None:
        cli.check_output_folder(args.output)
    patterns = list(args.inputs)
    settings = None
    if raw:
        args.inputs = raw
        output, args.output = args.output, os.path.dirname(os.path.abspath(args.output)) if suffix else args.output
        settings = cli._read_settings(args)
        args.output = output
    if suffix is None:
        from beamlytics.pipelines import outputs

        with outputs.open_output(args.output, args.command, args.overwrite, patterns,
                                 [*(settings.inputs if settings else []), *earlier]) as staging:
            records, results = _analyse(args, options, settings, earlier, staging, analytic, days)
            _write_results(results, staging)
        code = cli._report(args.output)
    else:
        code, records, results = _run_to_file(args, options, settings, earlier, analytic, days, suffix,
                                              rejected_file)
    _say_why_empty(args, records)
    print(f"{results['result'].num_rows} result rows from {records.num_rows} {args.table} records")
    return code


def _analyse(args, options, settings, earlier: list[str], staging: str, analytic, days):
    """Parse the raw inputs into `staging` (if any), load the table cut to the days, run the analytic."""
    from beamlytics.analytics.sql import QueryError
    from beamlytics.analytics.tables import load_table
    from beamlytics.pipelines import cli
    from beamlytics.pipelines.detect import build_parse
    from beamlytics.transforms.read import in_day_range

    files = list(earlier)
    if settings is not None:
        cli._run(options, lambda pipeline: build_parse(pipeline, settings, staging), args.quiet)
        files += sorted(os.path.join(staging, args.table, name)
                        for name in os.listdir(os.path.join(staging, args.table)) if name.endswith(".parquet"))
    # Raw logs were cut to the days while parsed; parse folders are cut here, by the same rule.
    records = in_day_range(load_table(files, args.table), args.table, days)
    try:
        return records, analytic(records)
    except QueryError as error:
        raise cli.UsageError(f"SQL: {error}") from None


def _write_results(results: dict[str, pa.Table], folder: str) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    for name, table in results.items():
        pq.write_table(table, os.path.join(folder, f"{name}.parquet"))
        if not any(pa.types.is_nested(column.type) for column in table.schema):  # a list has no CSV form
            pcsv.write_csv(table, os.path.join(folder, f"{name}.csv"))


def _run_to_file(args, options, settings, earlier, analytic, days, suffix: str, rejected_file: str):
    """The result as the one file --output names, the raw inputs' dead letters beside it; the summary printed."""
    import json
    import tempfile

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from beamlytics import summary

    parent = os.path.dirname(os.path.abspath(args.output))
    with tempfile.TemporaryDirectory(prefix=".beamlytics-staging-", dir=parent) as staging:
        records, results = _analyse(args, options, settings, earlier, staging, analytic, days)
        moves = []
        for name, target in {"result": args.output, **_beside_result(args, suffix)}.items():
            written = os.path.join(staging, name + suffix)
            if suffix == ".csv":
                pcsv.write_csv(results[name], written)
            else:
                pq.write_table(results[name], written)
            moves.append((written, target))
        code, notes = 0, []
        if settings is not None:
            rejected = pq.read_table(os.path.join(staging, "rejected"))
            pq.write_table(rejected, os.path.join(staging, "rejected.parquet"))
            moves.append((os.path.join(staging, "rejected.parquet"), rejected_file))
            with open(os.path.join(staging, "summary.json"), encoding="utf-8") as handle:
                text = handle.read()
            print(text.strip())
            notes = json.loads(text).get("notes", [])
            code = 1 if summary.all_rejected(json.loads(text)) else 0
        for source, target in moves:
            os.replace(source, target)
    for note in notes:
        print(f"beamlytics: {note}", file=sys.stderr)
    print(f"output written to {', '.join(target for _, target in moves)}")
    return code, records, results


def _say_why_empty(args: argparse.Namespace, records: pa.Table) -> None:
    if records.num_rows:
        return
    bounded = args.start_day or args.end_day
    print(f"beamlytics {args.command}: the {args.table} table is empty"
          + (f" between {args.start_day or 'the start'} and {args.end_day or 'the end'}" if bounded else ""),
          file=sys.stderr)
