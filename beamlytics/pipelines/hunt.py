"""The `hunt` command: read records, run the chosen hunts over each horizon, write ranked findings.

Writes OUT/hunts/*.parquet (sorted by hunt and rank), OUT/rejected/ and OUT/summary.json.
Beam is imported only when a pipeline is built, as by the other commands: the command line
registers this one without paying for it.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from beamlytics import options_catalog as catalog

if TYPE_CHECKING:
    import apache_beam as beam

    from beamlytics.hunts.allow import AllowList
    from beamlytics.hunts.config import HuntConfig
    from beamlytics.parsers.formats import Plan
    from beamlytics.pipelines.detect import ReadSettings

FINDING_ORDER = ("hunt", "rank")


def add_arguments(parser: argparse.ArgumentParser, duration: type) -> None:
    parser.add_argument("--hunt", required=True, metavar="HUNTS",
                        help="comma-separated: beacon,long,strobe,scan (named_flows) or dns_tunnel (dns)")
    parser.add_argument("--allow", metavar="FILE",
                        help="allow-list: hosts, CIDR networks, registered domains, optionally with a hunt name")
    parser.add_argument("--horizon", type=duration, default=catalog.DAY_US,
                        help="span judged together, aligned to UTC midnight: 1d (default), 12h, ...")
    parser.add_argument("--slide", type=duration, metavar="DURATION",
                        help="start a horizon every DURATION (sliding; must divide --horizon); default: tumbling")
    parser.add_argument("--cap", type=int, default=catalog.HUNT_CAP,
                        help=f"timestamps/targets kept per key; keys beyond it are marked capped ({catalog.HUNT_CAP})")


    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a hunt parameter, e.g. beacon_min_connections=10 or long_thresholds=1800,7200,14400,"
                        "28800 (names and defaults: docs/hunts.md)")


# Parameters the command line sets with options of their own.
_OWN_OPTIONS = ("horizon_us", "slide_us", "cap")


def hunt_config(horizon_us: int, slide_us: int | None, cap: int, params: Sequence[str]) -> HuntConfig:
    """The configuration from the options and NAME=VALUE parameters; ValueError naming what is wrong."""
    from beamlytics.hunts.config import HuntConfig

    names = sorted(field.name for field in dataclasses.fields(HuntConfig) if field.name not in _OWN_OPTIONS)
    values: dict = {"horizon_us": horizon_us, "slide_us": slide_us, "cap": cap}
    for param in params:
        name, equals, text = param.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or name not in names:
            raise ValueError(f"unknown hunt parameter {param!r}; choose from {', '.join(names)}")
        default = getattr(HuntConfig, name)
        try:
            if isinstance(default, tuple):
                values[name] = tuple(float(item) for item in text.split(","))
                if len(values[name]) != len(default):
                    raise ValueError(f"{name} takes {len(default)} comma-separated numbers")
            else:
                values[name] = type(default)(text)
        except ValueError as error:
            raise ValueError(f"bad value for {name}: {text!r} ({error})") from None
    return HuntConfig(**values)


@dataclass
class HuntSettings:
    read: ReadSettings
    hunts: frozenset
    config: HuntConfig
    allow: AllowList


def listed_when(config: HuntConfig) -> dict[str, str]:
    """What a key needs to be listed at all: the summary says it, so that an empty result explains itself."""
    return {
        "beacon": f"a pair with >= {config.beacon_min_connections} distinct connection seconds, fewer connections "
                  f"than a strobe, and a RITA beacon score >= {config.beacon_thresholds[0]:g}%",
        "long": f"a pair connected for >= {config.long_thresholds[0]:g} s in total",
        "strobe": f"a pair with >= {config.strobe_threshold / 8:g} connections (1/8 of a strobe)",
        "vertical_scan": f"a source that failed on >= {config.vertical_thresholds[0]:g} ports of one destination",
        "horizontal_scan": f"a source that failed on one port of >= {config.horizontal_thresholds[0]:g} hosts",
        "dns_tunnel": f"a registered domain with >= {config.tunnel_subdomain_thresholds[0]:g} distinct subdomains",
    }


def build_hunt(pipeline: beam.Pipeline, settings: HuntSettings, output: str) -> Plan:
    """Wire the hunt pipeline; returns what reading will do (files to parse, skipped, rejected)."""
    from beamlytics.hunts.config import OUTPUT_HUNTS
    from beamlytics.hunts.findings import FINDINGS
    from beamlytics.pipelines.detect import _read, _write_rejected_and_summary
    from beamlytics.transforms.hunt import HuntFindings
    from beamlytics.transforms.write import SortedFolder

    reader = _read(settings.read)
    read = pipeline | "Read" >> reader
    table = settings.read.table
    result = read["records"] | "Hunt" >> HuntFindings(table, settings.hunts, settings.config, settings.allow)
    config = settings.config
    explained = listed_when(config)
    extra = {
        "table": table, "hunts": sorted(settings.hunts), "horizon_seconds": config.horizon_seconds,
        "slide_seconds": config.step_us / 1e6,
        "cap": config.cap, "alarm": config.alarm, "allow_entries": len(settings.allow.entries),
        "listed_when": {output_hunt: explained[output_hunt]
                        for name in sorted(settings.hunts) for output_hunt in OUTPUT_HUNTS[name]},
        "skipped": reader.plan.skipped,
    }
    _write_rejected_and_summary(read, output, extra, [result["counts"]],
                                results=[(result["findings"], SortedFolder(f"{output}/hunts", FINDINGS, FINDING_ORDER))])
    return reader.plan


def run(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    # cli imports this module to register the command, so its helpers are looked up at run time.
    from beamlytics.hunts import check_hunts
    from beamlytics.hunts.allow import AllowList, AllowListError
    from beamlytics.pipelines import cli, outputs

    options = cli.beam_options(beam_args)  # first: an unknown option also swallows the word after it
    read = cli._read_settings(args)
    try:
        hunts = check_hunts(args.table, [name.strip() for name in args.hunt.split(",") if name.strip()])
        config = hunt_config(args.horizon, args.slide, args.cap, args.param)
        allow = AllowList.read(args.allow) if args.allow else AllowList()
    except (ValueError, AllowListError) as error:
        raise cli.UsageError(str(error)) from None
    settings = HuntSettings(read, hunts, config, allow)
    with outputs.open_output(args.output, "hunt", args.overwrite, [*args.inputs, *filter(None, [args.allow])],
                             read.inputs) as staging:
        cli._run(options, lambda pipeline: build_hunt(pipeline, settings, staging), args.quiet)
    return cli._report(args.output)
