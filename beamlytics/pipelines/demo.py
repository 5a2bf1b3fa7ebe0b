"""`beamlytics demo`: generate Zeek logs with a known anomaly, run `detect`, and check it was found."""
from __future__ import annotations

import argparse
import os

from beamlytics import options_catalog as catalog
from beamlytics.pipelines import outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo-out", metavar="OUT",
                        help="folder for the generated logs (OUT/zeek) and the detection (OUT/detect)")
    parser.add_argument("--detector", default="poisson", choices=sorted(catalog.DETECTOR_NAMES),
                        help="detector to run (default poisson: the burst is a change of request rate, "
                        "which the Poisson model judges against each host's own learned rate)")


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from beamlytics import synthetic
    from beamlytics.pipelines import cli  # the demo drives the real command line
    from beamlytics.report import folder

    cli.check_output_folder(args.output)
    scenario = synthetic.Scenario()
    logs = os.path.join(args.output, "zeek")
    # The demo regenerates what an earlier demo wrote; files it did not write are still refused.
    with outputs.open_output(logs, "demo", True, [], []) as staging:
        synthetic.write_zeek_logs(staging, scenario)
    print(f"wrote synthetic Zeek logs to {logs} (anomaly: {scenario.anomalous_client}, "
          f"minute {scenario.anomaly_start_minute} for {scenario.anomaly_minutes} minutes)")
    detect_out = os.path.join(args.output, "detect")
    status = cli.main(["detect", "--table", "dns", "--window", "60s", "--detector", args.detector,
                       "--overwrite", "--output", detect_out, logs])
    if status:
        return status
    anomalies = pq.read_table(os.path.join(detect_out, "anomalies")).to_pylist()
    expected = set(scenario.anomaly_window_starts_us(60_000_000))
    found = {int(row["window_start"].timestamp()) * 1_000_000 for row in anomalies
             if row["key"] == scenario.anomalous_client}
    if expected <= found:
        print(f"\nfound the injected anomaly: {scenario.anomalous_client} in all {len(expected)} of its windows")
    else:
        print(f"\nMISSED the injected anomaly: {len(expected & found)} of {len(expected)} windows of "
              f"{scenario.anomalous_client} reported")
    print(f"HTML report: {os.path.join(detect_out, folder.REPORT_FILE)} (beamlytics show INCIDENT_ID "
          f"{detect_out} prints an incident's records)")
    return 0 if expected <= found else 1
