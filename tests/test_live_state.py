"""Live detection without a runner: idle expiry of endpoint state, the Kafka messages of anomalies and the
option that sends them."""
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from apache_beam.utils.timestamp import Timestamp

from beamlytics import schemas
from beamlytics.detectors.endpoint import DetectorConfig, EndpointScorer, EndpointWindow, score_table
from beamlytics.features import table_of_windows
from beamlytics.live.kafka import KafkaSpec, anomaly_messages
from beamlytics.transforms.score import _ScoreInEventTimeOrder, idle_expiry

MINUTE = 60_000_000
HOUR = 60 * MINUTE
T0 = 1714521600_000000  # 2024-05-01, on every window grid used here
CONFIG = DetectorConfig("gaussian", {"n_init": 3}, ("records", "distinct_names"))


def window(key, minute, records, names=None, length=MINUTE):
    start = T0 + minute * MINUTE
    return EndpointWindow("dns", "c_ip", key, start, start + length, records,
                          {"records": float(records), "distinct_names": float(names if names is not None else records)})


class Bag:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)

    def read(self):
        return list(self.items)

    def clear(self):
        self.items = []


class Value:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class Timer:
    def __init__(self):
        self.at = None

    def set(self, timestamp):
        self.at = timestamp.micros

    def clear(self):
        self.at = None


class OneEndpoint:
    """The streaming scorer's state of one endpoint, driven as a runner would: windows in, timers fired."""

    def __init__(self, idle_timeout_us):
        self.scorer = _ScoreInEventTimeOrder(CONFIG, idle_timeout_us)
        self.pending, self.training, self.detectors = Bag(), Bag(), Value()
        self.next_flush, self.expires_at = Value(), Value()
        self.flush = Timer()
        self.rows = []
        self.firings = 0

    def arrive(self, item):
        self.scorer.process((item.endpoint, item), pending=self.pending, training=self.training,
                            next_flush=self.next_flush, flush=self.flush)

    def advance(self, watermark_us):
        """Fire the timer while it is due."""
        while self.flush.at is not None and self.flush.at <= watermark_us:
            at, self.flush.at = self.flush.at, None
            self.firings += 1
            for table in self.scorer.on_flush(Timestamp(micros=at), self.pending, self.training, self.detectors,
                                              self.next_flush, self.expires_at, self.flush):
                self.rows += table.to_pylist()

    def state(self):
        return (self.pending.read(), self.training.read(), self.detectors.read(), self.next_flush.read(),
                self.expires_at.read())


def test_expiry_is_the_idle_time_after_the_last_window_rounded_up_to_the_window_grid():
    assert idle_expiry(window("a", 0, 1), HOUR) == T0 + 61 * MINUTE
    # 5-minute windows and a 12-minute timeout: the next window boundary at or after 12 minutes past the end.
    assert idle_expiry(window("a", 0, 1, length=5 * MINUTE), 12 * MINUTE) == T0 + 20 * MINUTE


def batch_scores(windows):
    """`score_table` on the windows, in the streaming scorer's order: window by window, feature by feature."""
    rows = score_table(table_of_windows(windows, "dns"), CONFIG).to_pylist()
    return sorted(rows, key=lambda row: (row["window_start"], CONFIG.features.index(row["feature"])))


def scored_by(windows, scorer):
    rows = [row for item in windows for row in scorer.score(item)]
    return pa.Table.from_pylist(rows, schema=schemas.ANOMALIES).to_pylist()


def test_an_idle_endpoints_state_is_gone_and_it_comes_back_as_a_new_endpoint():
    rng = np.random.default_rng(5)
    before = [window("10.0.0.1", minute, int(rng.integers(5, 9))) for minute in range(8)]
    after = [window("10.0.0.1", minute, records) for minute, records in zip(range(90, 96), [40, 41, 6, 7, 39, 5])]
    endpoint = OneEndpoint(HOUR)
    for item in before:
        endpoint.arrive(item)
        endpoint.advance(item.window_end)
    # Before the expiry the scores are the batch scores of the same windows.
    assert endpoint.rows == batch_scores(before)
    assert endpoint.state()[2] is not None and endpoint.expires_at.read() == T0 + 68 * MINUTE
    endpoint.advance(T0 + 68 * MINUTE - 1)
    assert endpoint.state()[2] is not None  # idle 59 minutes: still known
    endpoint.advance(T0 + 68 * MINUTE)
    assert endpoint.state() == ([], [], None, None, None)
    endpoint.rows = []
    for item in after:
        endpoint.arrive(item)
        endpoint.advance(item.window_end)
    # A fresh detector calibrates again on the returning windows; one that remembered would call 40 an anomaly.
    assert endpoint.rows == scored_by(after, EndpointScorer(CONFIG))
    assert endpoint.rows != scored_by(after, _continued(before))
    assert {row["status"] for row in endpoint.rows[:6]} == {"calibrating"}


def _continued(before):
    scorer = EndpointScorer(CONFIG)
    scored_by(before, scorer)
    return scorer


def test_a_window_after_the_expiry_starts_fresh_even_when_it_arrives_before_the_expiry_timer_fires():
    before = [window("h", minute, 6 + minute % 2) for minute in range(5)]
    late_comer = window("h", 65, 50)  # starts at the expiry (T0 + 65 min) exactly
    endpoint = OneEndpoint(HOUR)
    for item in before:
        endpoint.arrive(item)
    endpoint.advance(before[-1].window_end)
    endpoint.arrive(late_comer)  # the watermark jumped: flush and expiry are due together
    endpoint.advance(late_comer.window_end)
    assert endpoint.rows[-2:] == scored_by([late_comer], EndpointScorer(CONFIG))


def test_a_backlog_closed_by_one_watermark_step_is_scored_in_one_firing_in_event_time_order():
    """A replay (or a drain file present at the start) closes a day of windows at once; firing per window read
    and rewrote the bag each time, which made such a run on Prism outlast 400 s."""
    rng = np.random.default_rng(9)
    windows = [window("b", minute, int(rng.integers(4, 9))) for minute in range(300)]
    endpoint = OneEndpoint(HOUR)
    for index in rng.permutation(len(windows)):  # the step's windows come in any order
        endpoint.arrive(windows[index])
    endpoint.advance(windows[-1].window_end)
    assert endpoint.firings == 1
    assert endpoint.rows == batch_scores(windows)
    assert endpoint.pending.read() == [] and endpoint.flush.at == idle_expiry(windows[-1], HOUR)


def test_without_an_idle_timeout_the_endpoint_is_kept_and_scored_as_batch():
    windows = [window("k", minute, 5 + minute % 3) for minute in (*range(6), *range(200, 206))]
    endpoint = OneEndpoint(None)
    for item in windows:
        endpoint.arrive(item)
        endpoint.advance(item.window_end)
    assert endpoint.flush.at is None and endpoint.expires_at.read() is None
    assert endpoint.rows == batch_scores(windows)


def test_an_anomaly_is_one_kafka_message_keyed_by_endpoint_window_and_feature():
    row = {"table": "dns", "key_kind": "c_ip", "key": "10.0.0.3", "feature": "distinct_names",
           "window_start": T0, "window_end": T0 + MINUTE, "value": 412.0, "detector": "population",
           "status": "anomaly", "score": 7.5, "threshold": math.nan, "direction": "up",
           "evidence": '{"p_value": 3e-08}', "params": '{"k": 3.0}', "records": 420}
    table = pa.Table.from_pylist([row], schema=schemas.ANOMALIES)
    [(key, value)] = anomaly_messages(table)
    assert key == b"dns|c_ip|10.0.0.3|1714521600000000|distinct_names"
    assert json.loads(value) == {
        "table": "dns", "key_kind": "c_ip", "key": "10.0.0.3", "feature": "distinct_names",
        "window_start": "2024-05-01T00:00:00Z", "window_end": "2024-05-01T00:01:00Z", "value": 412.0,
        "detector": "population", "status": "anomaly", "score": 7.5, "threshold": None, "direction": "up",
        "evidence": {"p_value": 3e-08}, "params": {"k": 3.0}, "records": 420}
    two = pa.concat_tables([table, table.set_column(2, schemas.ANOMALIES.field("key"), pa.array(["10.0.0.1"]))])
    assert [key for key, _ in anomaly_messages(two)] == [b"dns|c_ip|10.0.0.1|1714521600000000|distinct_names", key]
    assert anomaly_messages(two.take([1, 0])) == anomaly_messages(two)


def test_the_kafka_output_names_one_topic_on_the_cluster_read_or_its_own():
    from beamlytics.pipelines.live import kafka_output_of
    from beamlytics.transforms.live import LiveSource

    from_kafka = LiveSource("dns", 0, kafka=KafkaSpec("localhost:9092", ("zeek-dns",)))
    from_folder = LiveSource("dns", 0, folders=("/logs",))
    assert kafka_output_of(None, from_folder) is None
    assert kafka_output_of("anomalies", from_kafka) == ("localhost:9092", "anomalies")
    assert kafka_output_of("kafka://siem:9093/alerts", from_folder) == ("siem:9093", "alerts")
    with pytest.raises(ValueError, match="names the cluster: kafka://HOST:PORT/alerts"):
        kafka_output_of("alerts", from_folder)
    with pytest.raises(ValueError, match="one topic"):
        kafka_output_of("kafka://siem:9093/a,b", from_folder)


@pytest.mark.parametrize("arguments, message", [
    (["--endpoint-idle", "a while", "LOGS"], "not a duration: 'a while'"),
    (["--kafka-output", "alerts", "LOGS"], "--kafka-output alerts: a run reading folders names the cluster"),
])
def test_live_option_mistakes_end_with_one_line_and_exit_2(arguments, message, tmp_path, capsys):
    from beamlytics.pipelines import cli

    (tmp_path / "logs").mkdir()
    arguments = [str(tmp_path / "logs") if item == "LOGS" else item for item in arguments]
    assert cli.main(["detect", "--follow", "--table", "dns", "--output", str(tmp_path / "out"), *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and not (tmp_path / "out").exists()
