"""nfstream's flow statistics over our pcap flows: a hand-worked flow, nfstream itself on shared captures,
and the user metric interface (init/update/expire) from a Beam pipeline."""
from __future__ import annotations

import importlib.util
import math
import statistics
import sys
import tempfile
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pytest

from beamlytics.parsers import packets, pcap_flows
from beamlytics.parsers.base import Rejected
from beamlytics.parsers.flow_stats import FlowMetric, NFStatistics, features_of_capture, flow_features
from beamlytics.parsers.packets import Packet
from tests.conftest import collect, shared_data

sys.path.insert(0, str(Path(__file__).parent / "expected"))
import record_flows_http as reference  # noqa: E402  (the nfstream helpers test_pcap_flows uses)

HAVE_NFSTREAM = importlib.util.find_spec("nfstream") is not None
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
CLIENT, SERVER = ("10.0.0.1", 40000), ("10.0.0.2", 80)


def tcp(number: int, ms: float, from_client: bool, flags: int, size: int, payload: bytes = b"") -> Packet:
    (src, sport), (dst, dport) = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
    return Packet(number, int(1_700_000_000_000_000 + ms * 1000), src, dst, 6, sport, dport, flags, number, size,
                  payload)


HANDSHAKE = [
    tcp(1, 0.0, True, SYN, 60),
    tcp(2, 10.4, False, SYN | ACK, 60),
    tcp(3, 12.9, True, ACK, 52),
    tcp(4, 40.0, True, PSH | ACK, 152, b"x" * 100),
    tcp(5, 100.0, False, PSH | ACK, 1052, b"y" * 1000),
    tcp(6, 101.0, True, FIN | ACK, 52),
]


def rows_of(items, metrics=(NFStatistics(),)) -> list[dict]:
    return [row for batch in flow_features("t.pcap", items, metrics) if not isinstance(batch, Rejected)
            for row in batch.to_pylist()]


def test_hand_worked_flow():
    [row] = rows_of(HANDSHAKE)
    assert (row["c_ip"], row["c_port"], row["s_ip"], row["s_port"], row["proto"]) == (*CLIENT, *SERVER, "tcp")
    sizes, client_sizes, server_sizes = [60, 60, 52, 152, 1052, 52], [60, 52, 152, 52], [60, 1052]
    # whole milliseconds, as nfstream: 0, 10, 12, 40, 100, 101
    gaps, client_gaps, server_gaps = [10, 2, 28, 60, 1], [12, 28, 61], [90]
    for direction, values, spaces in (("bidirectional", sizes, gaps), ("src2dst", client_sizes, client_gaps),
                                      ("dst2src", server_sizes, server_gaps)):
        assert row[f"{direction}_min_ps"] == min(values) and row[f"{direction}_max_ps"] == max(values)
        assert row[f"{direction}_mean_ps"] == pytest.approx(statistics.mean(values))
        assert row[f"{direction}_stddev_ps"] == pytest.approx(statistics.stdev(values))
        assert row[f"{direction}_min_piat_ms"] == min(spaces) and row[f"{direction}_max_piat_ms"] == max(spaces)
        assert row[f"{direction}_mean_piat_ms"] == pytest.approx(statistics.mean(spaces))
        expected_sd = statistics.stdev(spaces) if len(spaces) > 1 else 0.0
        assert row[f"{direction}_stddev_piat_ms"] == pytest.approx(expected_sd)
    assert [row[f"bidirectional_{f}_packets"] for f in ("syn", "ack", "psh", "fin", "rst")] == [2, 5, 2, 1, 0]
    assert [row[f"src2dst_{f}_packets"] for f in ("syn", "ack", "psh", "fin")] == [1, 3, 1, 1]
    assert [row[f"dst2src_{f}_packets"] for f in ("syn", "ack", "psh", "fin")] == [1, 2, 1, 0]


def test_same_flows_in_same_order_as_named_flows():
    second_flow = [Packet(7 + i, 1_700_000_000_000_000 + i, "10.0.0.3", "10.0.0.4", 17, 5000, 53, 0, 0, 40, b"q")
                   for i in range(2)]
    items = [*HANDSHAKE, *second_flow]
    named = [row for batch in pcap_flows.flows_from_packets("t.pcap", iter(items)) if not isinstance(batch, Rejected)
             for row in batch.records.to_pylist()]
    features = rows_of(iter(items))
    assert [(r["c_ip"], r["s_port"], r["time_start"]) for r in features] == [
        (r["c_ip"], r["s_port"], r["time_start"]) for r in named]
    assert features[1]["bidirectional_syn_packets"] == 0 and features[1]["dst2src_max_ps"] == 0.0


class PayloadBytes(FlowMetric):
    """A user's metric: payload bytes each way and how many times it was told of the flow's end."""

    columns = {"client_payload": pa.int64(), "server_payload": pa.int64(), "expired": pa.int64()}

    def on_init(self, packet, from_client):
        state = {"client": 0, "server": 0, "expired": 0}
        self.on_update(state, packet, from_client)
        return state

    def on_update(self, state, packet, from_client):
        state["client" if from_client else "server"] += len(packet.payload)

    def on_expire(self, state):
        state["expired"] += 1
        return [state["client"], state["server"], state["expired"]]


def test_user_metric_alongside_nfstream_statistics():
    [row] = rows_of(iter(HANDSHAKE), (NFStatistics(), PayloadBytes()))
    assert (row["client_payload"], row["server_payload"], row["expired"]) == (100, 1000, 1)
    assert row["src2dst_max_ps"] == 152


def test_user_metric_in_a_beam_pipeline():
    path = shared_data("pcaps/mixed/zeek_wikipedia.pcap")
    direct, _ = features_of_capture(str(path), (PayloadBytes(),))

    def build(pipeline):
        return (pipeline | beam.Create([str(path)])
                | beam.FlatMap(lambda p: features_of_capture(p, (PayloadBytes(),))[0].to_pylist()))

    assert sorted(collect(build), key=lambda r: (r["time_start"], r["c_port"])) == sorted(
        direct.to_pylist(), key=lambda r: (r["time_start"], r["c_port"]))
    assert sum(r["client_payload"] + r["server_payload"] for r in direct.to_pylist()) > 0


def test_duplicate_column_refused():
    with pytest.raises(ValueError, match="twice"):
        rows_of(iter(HANDSHAKE), (PayloadBytes(), PayloadBytes()))


# Left out: pcaps/tls/ndpi_sites.pcapng, whose timestamps go backwards: nfstream reports two of its flows
# starting seconds after their first packet, with 0 ms gaps; we keep each packet's own time.
NFSTREAM_CAPTURES = ["pcaps/mixed/zeek_wikipedia.pcap", "pcaps/mixed/ndpi_1kxun.pcap",
                     "pcaps/mixed/nfstream_skype.pcap", "pcaps/attacks/ndpi_synscan.pcap",
                     "pcaps/http/csanders_http_espn.pcapng", "pcaps/tls/ndpi_alexa-app.pcapng",
                     "pcaps/attacks/ndpi_icmp-tunnel.pcap"]


def _by_tuple(rows: list[dict], ends) -> dict:
    """Flows by (sorted ends, occurrence), with nfstream's src2dst/dst2src turned to our client/server."""
    found, seen = {}, {}
    for row in rows:
        first, second = ends(row)
        key = tuple(sorted([first, second]))
        seen[key] = seen.get(key, 0) + 1
        found[(key, seen[key])] = (row, first <= second)
    return found


@pytest.mark.skipif(not HAVE_NFSTREAM, reason="nfstream not installed")
@pytest.mark.parametrize("name", NFSTREAM_CAPTURES)
def test_statistics_equal_nfstream(name):
    import nfstream

    path = shared_data(name)
    ours, _ = features_of_capture(str(path))
    with tempfile.TemporaryDirectory() as folder:
        theirs = nfstream.NFStreamer(source=str(reference.plain_capture(path, folder)), statistical_analysis=True,
                                     n_dissections=0, accounting_mode=1, n_meters=1).to_pandas()
    ours_rows = sorted(ours.to_pylist(), key=lambda r: r["time_start"])
    their_rows = theirs.sort_values("bidirectional_first_seen_ms", kind="stable").to_dict("records")
    mine = _by_tuple(ours_rows, lambda r: ((r["c_ip"], r["c_port"]), (r["s_ip"], r["s_port"])))
    other = _by_tuple(their_rows, lambda r: ((r["src_ip"], r["src_port"]), (r["dst_ip"], r["dst_port"])))
    assert mine.keys() == other.keys()
    columns = list(NFStatistics.columns)
    for key, (row, our_order) in mine.items():
        their_row, their_order = other[key]
        for column in columns:
            their_column = column
            if our_order != their_order:  # nfstream's src is the other end
                their_column = column.replace("src2dst", "@").replace("dst2src", "src2dst").replace("@", "dst2src")
            assert math.isclose(row[column], their_row[their_column], rel_tol=1e-9, abs_tol=1e-9), (key, column)
