"""Soak: generated Zeek DNS at a steady rate through a local Kafka broker into `detect --follow` on Prism.

`python -m benchmarks.run soak` (quick: 3 minutes per run) or `... soak --minutes 30`. Event time is
the wall clock, so the latency of an anomaly is when its pane file appeared minus its window's end (the
time of the window's last possible record). Needs `beamlytics runners install prism kafka`.

The clients churn: every `CHURN_SECONDS` the oldest of the `CLIENTS` active hosts goes quiet for good
and a new address takes its place, as DHCP leases and laptops do. Two runs on the same traffic, A B:
`--endpoint-idle` at `IDLE` (A), and `never` (B, the reference: every endpoint's state kept). The
endpoints the scorer holds (summary.json) stay flat in A and grow in B; so should memory.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.common import Result

RATE = 400  # records/s, steady
CLIENTS = 40  # active at any time, besides the bursting one
CHURN_SECONDS = 1.0  # one client replaced this often
IDLE = "30s"  # the expiring run's --endpoint-idle: a departed host's state is freed this long after it left
QUICK_MINUTES = 3.0
WINDOW_SECONDS = 5
BURST_EVERY_SECONDS = 30  # one client fires a burst of random names this often ...
BURST_SECONDS = 5  # ... for this long, at 10x its share of the rate


def _rss_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # the process ended between listing and reading
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _memory(broker_pid: int) -> float:
    """RSS in MB of this process (the SDK worker runs in it) and of its children but the broker (Prism)."""
    children = [child for child in _descendants(os.getpid()) if child != broker_pid]
    return _rss_mb() + sum(_rss_mb(child) for child in children)


def _record(now: float, client: str, name: str, serial: int) -> bytes:
    return json.dumps({"_path": "dns", "ts": now, "uid": f"C{serial}", "id.orig_h": client,
                       "id.orig_p": 10000 + serial % 50000, "id.resp_h": "10.1.0.254", "id.resp_p": 53,
                       "proto": "udp", "trans_id": serial % 65536, "query": name, "qtype_name": "A",
                       "rcode_name": "NOERROR"}).encode()


def _client(number: int) -> str:
    """The address of the `number`-th churning client ever seen (10.2.0.1, 10.2.0.2, ...)."""
    return f"10.{2 + number // 65536}.{number // 256 % 256}.{number % 256}"


def _produce(bootstrap: str, topic: str, until: float, counter: list) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    rng, serial, started = random.Random(7), 0, time.time()
    bursting_client = "10.1.0.1"  # never leaves: its bursts fall on a calibrated detector
    while time.time() < until:
        tick = time.time()
        elapsed = tick - started
        oldest = int(elapsed / CHURN_SECONDS)  # the clients numbered oldest .. oldest + CLIENTS - 1 are active
        bursting = elapsed % BURST_EVERY_SECONDS < BURST_SECONDS and elapsed > 60
        for _ in range(RATE // 10):
            share = rng.random()
            if share < (0.2 if bursting else 1 / (CLIENTS + 1)):
                client = bursting_client
                name = f"{rng.getrandbits(40):x}.tunnel.example" if bursting else f"host{rng.randrange(50)}.example"
            else:
                client, name = _client(oldest + rng.randrange(CLIENTS)), f"host{rng.randrange(50)}.example"
            producer.send(topic, _record(time.time(), client, name, serial))
            serial += 1
        time.sleep(max(0.0, 0.1 - (time.time() - tick)))
    producer.flush()
    producer.close()
    counter.append(serial)


def _held(out: Path) -> tuple[int, int] | None:
    """(endpoints started, endpoints held) from the run's summary.json, refreshed every 10 s."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary.get("endpoints_started", 0), summary.get("endpoints_held", 0)


def run(minutes: float = QUICK_MINUTES) -> list[Result]:
    from beamlytics.live.broker import kafka_libs

    libs = kafka_libs()
    if libs is None:
        print("soak: skipped: run `beamlytics runners install prism kafka` first")
        return []
    results = []
    for label, idle in (("A", IDLE), ("B", "never")):
        rate = _soak(libs, minutes, idle, label)
        results.append(Result(f"soak {label}: Kafka -> detect --follow on Prism, --endpoint-idle {idle} (records)",
                              rate, "records/s"))
    return results


def _soak(libs, minutes: float, idle: str, label: str) -> float:
    from beamlytics.live.broker import KafkaBroker
    from beamlytics.pipelines import cli

    with tempfile.TemporaryDirectory() as work:
        broker = KafkaBroker(libs, Path(work) / "kafka")
        broker.start()
        try:
            broker.create_topic("soak-dns")
            out, drain = Path(work) / "out", Path(work) / "drain"
            produced, samples = [], []  # samples: (RSS MB, (endpoints started, held) or None)
            started = time.time()
            until = started + minutes * 60
            producer = threading.Thread(target=_produce, args=(broker.bootstrap, "soak-dns", until, produced),
                                        daemon=True)
            producer.start()

            def watch():
                time.sleep(20)  # past the start: the pipeline is built and running
                while producer.is_alive():
                    samples.append((_memory(broker.process.pid), _held(out)))
                    producer.join(timeout=30 if minutes <= QUICK_MINUTES else 60)
                samples.append((_memory(broker.process.pid), _held(out)))
                drain.touch()

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            code = cli.main(["detect", "--follow", "--table", "dns", "--window", f"{WINDOW_SECONDS}s",
                             "--features", "records,distinct_names", "--n-init", "5", "--poll", "200ms",
                             "--refresh", "10s", "--quiet", "--endpoint-idle", idle, "--output", str(out),
                             "--drain-file", str(drain), f"kafka://{broker.bootstrap}/soak-dns"])
            elapsed = time.time() - started
            watcher.join()
        finally:
            broker.stop()
        latencies = []
        for path in sorted((out / "anomalies").glob("*.parquet")):
            written = os.stat(path).st_mtime
            for end in pq.read_table(path, columns=["window_end"]).column("window_end").to_pylist():
                if end.timestamp() < until:  # the drain at the end closes the last windows at once
                    latencies.append(written - end.timestamp())
        summary = json.loads((out / "summary.json").read_text())
    p50, p99 = (np.percentile(latencies, q) if latencies else float("nan") for q in (50, 99))
    rss = [memory for memory, _ in samples]
    held = " ".join(f"{counts[1]}/{counts[0]}" if counts else "-" for _, counts in samples)
    print(f"soak {label} (--endpoint-idle {idle}): {minutes:g} min, exit {code}, {produced[0]} records produced, "
          f"{summary['anomalies']} anomalies ({len(latencies)} timed), {summary['rejected']} rejected "
          f"({summary['late']} late); {summary['records_read']} read; record->anomaly latency p50 {p50:.2f} s, "
          f"p99 {p99:.2f} s; RSS (this process and Prism) {rss[0]:.0f} MB after 20 s, {rss[-1]:.0f} MB at the end, "
          f"{max(rss):.0f} MB at most ({len(rss)} samples: {' '.join(f'{value:.0f}' for value in rss)}); "
          f"endpoints held/started per sample: {held}; at the end {summary['endpoints_held']} held of "
          f"{summary['endpoints_started']} started", flush=True)
    return produced[0] / elapsed


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=QUICK_MINUTES)
    for result in run(parser.parse_args().minutes):
        print(result.line())
