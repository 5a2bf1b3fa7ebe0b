"""Live detection without a runner: the Kafka messages of anomalies and the option that sends them."""
import json
import math

import pyarrow as pa
import pytest

from beamlytics import schemas
from beamlytics.live.kafka import KafkaSpec, anomaly_messages

MINUTE = 60_000_000
T0 = 1714521600_000000  # 2024-05-01


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
    (["--kafka-output", "alerts", "LOGS"], "--kafka-output alerts: a run reading folders names the cluster"),
])
def test_live_option_mistakes_end_with_one_line_and_exit_2(arguments, message, tmp_path, capsys):
    from beamlytics.pipelines import cli

    (tmp_path / "logs").mkdir()
    arguments = [str(tmp_path / "logs") if item == "LOGS" else item for item in arguments]
    assert cli.main(["detect", "--follow", "--table", "dns", "--output", str(tmp_path / "out"), *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and not (tmp_path / "out").exists()
