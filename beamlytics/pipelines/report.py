"""The `report` and `show` commands, and what `detect` does once its pipeline is done.

Only argument definitions here: the work (and the Beam and Arrow imports it needs) is in
`beamlytics.report.folder`, imported when a command runs, as the CLI imports Beam only then.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

COMMANDS = ("show", "report")


def add_commands(commands) -> None:
    """The `show` and `report` subcommands, on the `beamlytics` command's subparsers."""
    show = commands.add_parser("show", help="print an incident and the records behind it",
                               description="Print one incident of OUT/incidents/ with its parsed records.")
    show.add_argument("incident", metavar="INCIDENT_ID", help="an incident id (or its first characters)")
    show.add_argument("output", metavar="OUT", help="the output folder of beamlytics detect")
    show.add_argument("--limit", type=int, default=50, help="records to print (50; 0 for all)")
    report = commands.add_parser("report", help="write the HTML report of a detect output again",
                                 description="Write one self-contained HTML file: incidents ranked by score, "
                                 "plots, evidence, what was read and rejected. detect writes OUT/report.html "
                                 "itself; this writes it again, or elsewhere with --html.")
    report.add_argument("output", metavar="OUT", help="the output folder of beamlytics detect")
    report.add_argument("--html", metavar="FILE", help="where to write the report (default OUT/report.html)")


def finish_detect(output: str, paths: Sequence[str], fmt: str, options: Mapping[str, Any]) -> str:
    """After the detect pipeline, in its output (staging) folder: OUT/incidents/ and OUT/report.html; returns
    the top incidents as a terminal table, which detect prints last."""
    from beamlytics.report import evidence, folder, incidents

    try:
        found = folder.write_incidents(output, incidents.Inputs(tuple(paths), fmt, dict(options)))
    finally:
        evidence.remove(output)
    folder.write_report(output)
    return folder.top_incidents(found, folder.read_summary(output))


def run(args: argparse.Namespace) -> int:
    """The `show` and `report` commands."""
    from beamlytics.report import folder

    try:
        if args.command == "show":
            print(folder.show(args.incident, args.output, args.limit))
        else:
            print(f"report written to {folder.write_report(args.output, args.html)}")
    except folder.ReportError as error:
        print(f"beamlytics {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
