"""`detect --follow` run unbounded on Prism: a folder receiving rotated and growing logs, and a real Kafka broker.

Each run's anomalies must equal batch `detect`'s on the same records (ignoring the file
layout), and a run stopped mid-stream then started again must lose nothing and report
nothing twice. Prism and the Kafka broker come from `beamlytics runners install prism kafka`;
without them these tests skip (fail under CI=true).
"""
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beamlytics import schemas, synthetic
from beamlytics.live.kafka import anomaly_messages
from beamlytics.pipelines import cli
from beamlytics.pipelines.detect import SCORE_ORDER
from beamlytics.pipelines.runners import ENGINES, cache_dir, installed

pytestmark = pytest.mark.engines

SCENARIO = synthetic.Scenario(hours=3, clients=8, anomalous_client="10.0.0.3", anomaly_start_minute=120)
DETECTORS = {"gaussian": [], "spot": ["--n-init", "20"], "poisson": []}
_NUMERIC = {"time": float, "interval": float, "double": float, "port": int, "count": int, "int": int}


def require(engine):
    if installed(ENGINES[engine], cache_dir()) is None:
        reason = f"{engine} is not installed in {cache_dir()} (run `beamlytics runners install {engine}`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def zeek_logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zeek")
    return Path(synthetic.write_zeek_logs(str(folder), SCENARIO))


def log_parts(path: Path) -> tuple[bytes, list[bytes]]:
    """The `#` header block of a TSV log and its record lines."""
    lines = path.read_bytes().splitlines(keepends=True)
    records = [line for line in lines if not line.startswith(b"#")]
    header = b"".join(line for line in lines[:lines.index(records[0])])
    return header, records


def as_json(path: Path) -> list[bytes]:
    """A TSV Zeek log's records as the zeek-kafka plugin sends them: JSON with `_path`."""
    header, records = log_parts(path)
    meta = {line.split(b"\t", 1)[0][1:].decode(): line.rstrip(b"\n").split(b"\t")[1:] for line in header.splitlines()}
    fields, kinds = [f.decode() for f in meta["fields"]], [k.decode() for k in meta["types"]]
    kind_of_log = meta["path"][0].decode()
    out = []
    for line in records:
        record = {"_path": kind_of_log}
        for name, kind, value in zip(fields, kinds, line.rstrip(b"\n").decode().split("\t")):
            if value == "-":
                continue
            if kind.startswith(("vector", "set")):
                inner = _NUMERIC.get(kind.split("[", 1)[1].rstrip("]"), str)
                record[name] = [] if value == "(empty)" else [inner(item) for item in value.split(",")]
            elif kind == "bool":
                record[name] = value == "T"
            else:
                record[name] = _NUMERIC.get(kind, str)(value)
        out.append(json.dumps(record).encode())
    return out


def anomalies(out: Path, folder: str = "anomalies") -> list[dict]:
    files = sorted((out / folder).glob("*.parquet"))
    if not files:
        return []
    table = pa.concat_tables([pq.read_table(path) for path in files])
    if folder == "scores":  # batch: the rows each endpoint's own detector calls anomalous, as live panes hold
        table = table.filter(pc.equal(table.column("status"), "anomaly"))
    table = table.select(schemas.SCORES.names)  # the columns batch scores/ and live panes share
    return table.sort_by([(name, "ascending") for name in SCORE_ORDER]).to_pylist()


@pytest.fixture(scope="module")
def batch_anomalies(zeek_logs, tmp_path_factory):
    """Batch `detect` on the DirectRunner, per detector: the reference every live run is held to."""
    found = {}

    def reference(detector):
        if detector not in found:
            out = tmp_path_factory.mktemp(f"batch-{detector}")
            assert cli.main(["detect", "--table", "dns", "--detector", detector, *DETECTORS[detector], "--quiet",
                             "--output", str(out), str(zeek_logs / "dns.log")]) == 0
            found[detector] = anomalies(out, "scores")
            assert found[detector], "the reference found no anomaly: the comparison would prove nothing"
        return found[detector]

    return reference


def start_following(inputs, out, detector, drain, extra=()):
    # A process per run, as a user runs it: runners keep process-wide state that must not leak between runs.
    return subprocess.Popen([sys.executable, "-m", "beamlytics.pipelines.cli", "detect", "--follow", "--table", "dns",
                             "--detector", detector, *DETECTORS[detector], "--poll", "200ms", "--refresh", "2s",
                             "--quiet", "--drain-file", str(drain), "--output", str(out), *extra, *map(str, inputs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def follow(inputs, out, detector, drain, extra=()):
    run = start_following(inputs, out, detector, drain, extra)
    _, errors = run.communicate(timeout=600)
    assert run.returncode == 0, errors[-3000:]
    return run.returncode


def in_thread(work):
    errors = []

    def run():
        try:
            work()
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@pytest.mark.parametrize("detector", ["gaussian", "spot"])
def test_a_folder_receiving_rotated_and_growing_logs_gives_the_batch_anomalies(
        detector, zeek_logs, batch_anomalies, tmp_path):
    require("prism")
    header, records = log_parts(zeek_logs / "dns.log")
    watched, out, drain = tmp_path / "zeek", tmp_path / "out", tmp_path / "drain"
    watched.mkdir()
    current = watched / "dns.log"
    third = len(records) // 3

    def zeek_writes():
        current.write_bytes(header + b"".join(records[:third]))
        time.sleep(2)
        with open(current, "ab") as handle:  # a record cut in two by the writer
            handle.write(b"".join(records[third:2 * third]) + records[2 * third][:15])
        time.sleep(2)
        with open(current, "ab") as handle:
            handle.write(records[2 * third][15:])
        (watched / "2024-05-01").mkdir()
        os.rename(current, watched / "2024-05-01" / "dns.00:00:00-02:00:00.log")  # Zeek's rotation
        current.write_bytes(header + b"".join(records[2 * third + 1:]))
        time.sleep(2)
        drain.touch()

    writer, errors = in_thread(zeek_writes)
    assert follow([watched], out, detector, drain) == 0
    writer.join()
    assert not errors
    assert anomalies(out) == batch_anomalies(detector)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["running"] is False and summary["late"] == 0 and summary["rejected"] == 0
    listed = {item["path"] for item in json.loads((out / ".beamlytics-manifest.json").read_text())["files"]}
    assert listed == {str(path.relative_to(out)) for path in out.rglob("*.parquet")} | {"summary.json"}


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory):
    require("kafka")
    from beamlytics.live.broker import KafkaBroker, kafka_libs

    broker = KafkaBroker(kafka_libs(), tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


def produce(broker, topic, values):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    for value in values:
        producer.send(topic, value)
    producer.flush()
    producer.close()


def consume(broker, topic):
    """Every (key, value) on the topic's partitions, read from the start until none comes for 5 s."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000, group_id=None)
    try:
        return [(message.key, message.value) for message in consumer]
    finally:
        consumer.close()


def test_kafka_records_of_all_logs_on_one_topic_give_the_batch_anomalies(kafka_broker, zeek_logs, batch_anomalies,
                                                                        tmp_path):
    require("prism")
    topic = "zeek-all"
    kafka_broker.create_topic(topic)
    # conn records on the same topic are told apart by `_path` and are not the dns table's.
    values = as_json(zeek_logs / "conn.log")[:200] + as_json(zeek_logs / "dns.log") + [b"{not json"]
    out, drain = tmp_path / "out", tmp_path / "drain"

    def producer():
        produce(kafka_broker, topic, values)
        time.sleep(3)
        drain.touch()

    writer, errors = in_thread(producer)
    kafka_broker.create_topic("siem")
    assert follow([f"kafka://{kafka_broker.bootstrap}/{topic}"], out, "poisson", drain, ["--kafka-output", "siem"]) == 0
    writer.join()
    assert not errors
    assert anomalies(out) == batch_anomalies("poisson")
    # The SIEM topic holds one message per anomaly row of the panes, keyed by endpoint, window and feature.
    panes = pa.concat_tables([pq.read_table(path) for path in sorted((out / "anomalies").glob("*.parquet"))])
    assert sorted(consume(kafka_broker, "siem")) == anomaly_messages(panes)
    summary = json.loads((out / "summary.json").read_text())
    # Records read are the dns table's: the conn records and the broken line are not.
    assert summary["records_read"] == len(as_json(zeek_logs / "dns.log"))
    assert summary["kafka_output"] == f"kafka://{kafka_broker.bootstrap}/siem"
    rejected = pq.read_table(next((out / "rejected").glob("*.parquet"))).to_pylist()
    assert [(row["source_file"], row["position"]) for row in rejected] == [(f"kafka://{topic}/0", len(values) - 1)]


def test_a_run_stopped_mid_stream_and_started_again_loses_nothing_and_reports_nothing_twice(
        kafka_broker, zeek_logs, batch_anomalies, tmp_path):
    require("prism")
    topic = "zeek-dns"
    kafka_broker.create_topic(topic)
    values = as_json(zeek_logs / "dns.log")
    out, drain = tmp_path / "out", tmp_path / "drain"
    source = f"kafka://{kafka_broker.bootstrap}/{topic}"
    produce(kafka_broker, topic, values[:len(values) * 3 // 4])  # past the injected burst

    run = start_following([source], out, "gaussian", drain)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "anomalies").glob("*.parquet")):
        time.sleep(0.5)
    time.sleep(1)
    run.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr[-3000:]  # a stop asked for is no failure
    first = anomalies(out)
    assert first
    assert json.loads((out / "summary.json").read_text())["running"] is False

    def rest():
        produce(kafka_broker, topic, values[len(values) * 3 // 4:])
        time.sleep(3)
        drain.touch()

    writer, errors = in_thread(rest)
    assert follow([source], out, "gaussian", drain) == 0  # the same folder: the run continues it
    writer.join()
    assert not errors
    final = anomalies(out)
    expected = batch_anomalies("gaussian")
    assert final == expected  # nothing lost, and no (endpoint, window, feature) twice
    assert all(row in expected for row in first)  # what the first run wrote was already final


DNS_HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n"
              b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\tqtype_name"
              b"\trcode_name\n"
              b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tstring\tstring\n")


def idle_gap_records(returning_as: str) -> list[tuple[int, list[bytes]]]:
    """(minute, lines) of three steady clients and one, 10.0.0.9, busy for 30 minutes, silent for two hours,
    then back quiet with a burst; its records after the gap are written as `returning_as`'s."""
    import random

    rng = random.Random(11)
    minutes = []
    for minute in range(200):
        lines = []
        clients = [("10.0.0.1", 6), ("10.0.0.2", 7), ("10.0.0.4", 5)]
        if minute < 30:
            clients.append(("10.0.0.9", 50))
        elif minute >= 150:
            clients.append((returning_as, 60 if minute == 185 else 5))
        for client, count in clients:
            for serial in range(count + rng.randrange(3)):
                second = 1714521600 + minute * 60 + rng.randrange(60)
                name = f"h{rng.randrange(10_000 if count == 60 else 12)}.example"
                lines.append((second, f"{second}.{serial:06d}\tC{minute}x{serial}\t{client}\t5353\t10.0.0.254\t53\t"
                                      f"udp\t{serial}\t{name}\tA\tNOERROR\n".encode()))
        minutes.append((minute, [line for _, line in sorted(lines)]))
    return minutes


def test_an_endpoint_idle_past_endpoint_idle_is_forgotten_and_judged_afresh_when_it_returns(tmp_path):
    """On Prism, with --endpoint-idle 1h: after two hours of silence the client's windows are judged as a new
    client's, which batch `detect` shows by giving its returning records another address."""
    require("prism")
    reference = {}
    for name, returning in (("renamed", "10.0.0.99"), ("continued", "10.0.0.9")):
        log = tmp_path / name / "dns.log"
        log.parent.mkdir()
        log.write_bytes(DNS_HEADER + b"".join(line for _, lines in idle_gap_records(returning) for line in lines))
        assert cli.main(["detect", "--table", "dns", "--detector", "gaussian", "--quiet",
                         "--output", str(tmp_path / f"batch-{name}"), str(log)]) == 0
        reference[name] = [{**row, "key": "10.0.0.9" if row["key"] == "10.0.0.99" else row["key"]}
                           for row in anomalies(tmp_path / f"batch-{name}", "scores")]
    expected = sorted(reference["renamed"], key=lambda row: [row[name] for name in SCORE_ORDER])
    back = datetime.datetime(2024, 5, 1, 2, 30, tzinfo=datetime.timezone.utc)
    assert [row for row in expected if row["key"] == "10.0.0.9" and row["window_start"] >= back], \
        "the returning client's burst must be an anomaly of a fresh detector"
    assert expected != sorted(reference["continued"], key=lambda row: [row[name] for name in SCORE_ORDER]), \
        "a detector that remembered the busy client must judge its return otherwise, or the test proves nothing"

    records = idle_gap_records("10.0.0.9")
    watched, out, drain = tmp_path / "zeek", tmp_path / "out", tmp_path / "drain"
    watched.mkdir()

    def zeek_writes():  # the busy half hour, the two silent hours (other clients only), the return: three polls
        with open(watched / "dns.log", "wb") as handle:
            handle.write(DNS_HEADER)
            for first, end in ((0, 30), (30, 150), (150, 200)):
                handle.write(b"".join(line for minute, lines in records[first:end] for line in lines))
                handle.flush()
                time.sleep(2)
        drain.touch()

    writer, errors = in_thread(zeek_writes)
    assert follow([watched], out, "gaussian", drain, ["--endpoint-idle", "1h"]) == 0
    writer.join()
    assert not errors
    assert anomalies(out) == expected
    assert json.loads((out / "summary.json").read_text())["endpoint_idle_seconds"] == 3600


def reference_verdicts(baseline_features: Path, run_features: Path, detector: str):
    """What batch `detect` makes of the run's windows, calibrated on the baseline's and judged against the
    baseline's population: its scorer (`score_table`) and judge (`verdict.judge`) on the features both
    batch runs wrote."""
    from beamlytics import baseline as baseline_rows, features
    from beamlytics.detectors.population import Population
    from beamlytics.detectors.verdict import VerdictSettings, judge
    from beamlytics.detectors.endpoint import score_table

    spec = features.WindowSpec("dns", "c_ip", 60_000_000)
    config = cli.detector_config(cli.build_parser().parse_args(["detect", "--table", "dns", "--detector", detector,
                                                                *DETECTORS[detector], "--output", "x", "x"]))

    def windows(folder, train):
        found = [item._replace(train=train) for path in sorted(folder.glob("*.parquet"))
                 for item in baseline_rows.baseline_windows(pq.read_table(path), spec, str(path))]
        return features.table_of_windows(found, "dns")

    calibration = windows(baseline_features, True)
    scores = score_table(pa.concat_tables([calibration, windows(run_features, False)]), config)
    settings = VerdictSettings()
    population = Population.of_windows(calibration, config.features, settings.min_records)
    verdicts, reported, _ = judge(scores, population, settings)
    return verdicts, reported


def rows(table: pa.Table, order) -> list[dict]:
    return table.sort_by([(name, "ascending") for name in order]).to_pylist()


def test_with_a_baseline_live_verdicts_equal_batch_judged_against_the_baseline_population(zeek_logs, tmp_path):
    require("prism")
    normal_day = synthetic.Scenario(day=datetime.date(2024, 4, 30), hours=3, clients=8, anomalous_client="10.0.0.3",
                                    anomaly_queries_per_minute=0, seed=3)
    base_logs = Path(synthetic.write_zeek_logs(str(tmp_path / "base-logs"), normal_day))
    detector = "spot"
    for name, log, extra in (("base", base_logs, []), ("batch", zeek_logs, ["--baseline", str(tmp_path / "base/features")])):
        assert cli.main(["detect", "--table", "dns", "--detector", detector, *DETECTORS[detector], "--quiet",
                         *extra, "--output", str(tmp_path / name), str(log / "dns.log")]) == 0
    verdicts, reported = reference_verdicts(tmp_path / "base/features", tmp_path / "batch/features", detector)
    alarms = verdicts.filter(pc.equal(verdicts.column("status"), "alarm"))
    assert "10.0.0.3" in alarms.column("key").to_pylist(), "the burst must alarm, or the test proves little"
    # Batch `detect --baseline` pools the run's own windows, which a live run has not seen yet: not the same.
    own_population = pa.concat_tables([pq.read_table(path) for path in sorted((tmp_path / "batch/verdicts").glob("*"))])
    assert rows(own_population, ("key", "window_start")) != rows(verdicts, ("key", "window_start"))

    watched, out, drain = tmp_path / "zeek", tmp_path / "out", tmp_path / "drain"
    watched.mkdir()
    header, records = log_parts(zeek_logs / "dns.log")

    def zeek_writes():
        with open(watched / "dns.log", "wb") as handle:
            for part in (records[:len(records) // 2], records[len(records) // 2:]):
                handle.write((b"" if handle.tell() else header) + b"".join(part))
                handle.flush()
                time.sleep(2)
        drain.touch()

    writer, errors = in_thread(zeek_writes)
    assert follow([watched], out, detector, drain, ["--baseline", str(tmp_path / "base/features")]) == 0
    writer.join()
    assert not errors
    live_verdicts = pa.concat_tables([pq.read_table(path) for path in sorted((out / "verdicts").glob("*.parquet"))])
    order = ("key", "window_start")
    assert rows(live_verdicts, order) == rows(verdicts, order)
    assert anomalies(out) == rows(reported.select(schemas.SCORES.names), SCORE_ORDER)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdicts"] == verdicts.num_rows and summary["baseline"] == str(tmp_path / "base/features")


def test_a_drain_file_present_at_the_start_replays_the_logs_and_ends(zeek_logs, batch_anomalies, tmp_path):
    """The whole input is one backlog closed at once; the run ends with the batch anomalies."""
    require("prism")
    out, drain = tmp_path / "out", tmp_path / "drain"
    drain.touch()
    started = time.monotonic()
    run = start_following([zeek_logs], out, "gaussian", drain)
    _, errors = run.communicate(timeout=300)
    assert run.returncode == 0, errors[-3000:]
    assert time.monotonic() - started < 200
    assert anomalies(out) == batch_anomalies("gaussian")
