"""The command-line options of `detect --follow` (no Beam import: `beamlytics --help` stays instant)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live detection (detect --follow)")
    group.add_argument("--follow", action="store_true",
                       help="run until stopped (Ctrl-C): follow INPUT folders of rotating Zeek logs, or Kafka "
                            "topics given as kafka://HOST:PORT/TOPIC[,TOPIC]; anomalies written as windows close")
    group.add_argument("--allowed-lateness", default="0s", metavar="DURATION",
                       help="--follow: records this much older than the newest are still scored in order; "
                            "older ones are dead letters (0s)")
    group.add_argument("--poll", default="1s", metavar="DURATION", help="--follow: time between polls (1s)")
    group.add_argument("--kafka-start", choices=["earliest", "latest"], default="earliest",
                       help="--follow on Kafka: where a new run starts in each partition (earliest)")
    group.add_argument("--drain-file", metavar="PATH",
                       help="--follow: when this file appears, the input is complete: close every open window, "
                            "write it and end")
    group.add_argument("--refresh", default="10s", metavar="DURATION",
                       help="--follow: how often summary.json and the manifest are rewritten (10s)")
    group.add_argument("--endpoint-idle", default="1h", metavar="DURATION",
                       help="--follow: an endpoint with no window for this long (event time) is forgotten, its "
                            "state freed; if it comes back its detectors start afresh (1h; never: keep every one)")
    group.add_argument("--kafka-output", metavar="TOPIC",
                       help="--follow: also send each anomaly as a JSON message to this Kafka topic, for a SIEM: "
                            "TOPIC on the cluster read, or kafka://HOST:PORT/TOPIC")
