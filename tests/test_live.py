"""Live sources without Beam: following rotating Zeek logs, the event clock, chunk positions, pane files."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamlytics import schemas, synthetic
from beamlytics.live.chunks import Chunk, parse_chunk
from beamlytics.live.clock import EventClock
from beamlytics.live.follow import FolderFollower
from beamlytics.live.panes import write_pane
from beamlytics.parsers.base import Batch, Rejected

HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n"
          b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\tqtype_name"
          b"\trcode_name\n"
          b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tstring\tstring\n")


def dns_line(second: int, client: str = "10.0.0.1", name: str = "a.example") -> bytes:
    return (f"{1714521600 + second}.000000\tC{second}\t{client}\t5353\t10.0.0.254\t53\tudp\t{second % 65536}\t"
            f"{name}\tA\tNOERROR\n").encode()


def rows(chunks, table="dns"):
    """(source_pos, query) of every parsed row, and the dead letters."""
    found, dead = [], []
    for chunk in chunks:
        for item in parse_chunk(chunk, table):
            if isinstance(item, Batch):
                found += list(zip(item.records.column("source_pos").to_pylist(),
                                  item.records.column("query").to_pylist()))
            elif isinstance(item, Rejected):
                dead.append(item)
    return found, dead


def test_a_growing_file_is_read_up_to_its_last_complete_line_and_resumed_there(tmp_path):
    log = tmp_path / "dns.log"
    log.write_bytes(HEADER + dns_line(1, name="one.example") + dns_line(2, name="two.example")[:20])
    follower = FolderFollower([str(tmp_path)], "dns")
    assert rows(follower.poll()[0]) == ([(8, "one.example")], [])
    assert follower.poll() == ([], [])  # the half line waits for its newline
    with open(log, "ab") as handle:
        handle.write(dns_line(2, name="two.example")[20:] + dns_line(3, name="three.example"))
    # A follower rebuilt from the state (a resumed checkpoint) continues where the first stopped.
    resumed = FolderFollower([str(tmp_path)], "dns", follower.state())
    assert rows(resumed.poll()[0]) == ([(9, "two.example"), (10, "three.example")], [])


def test_a_rotated_file_keeps_its_cursor_and_the_new_current_file_is_read_from_its_start(tmp_path):
    log = tmp_path / "dns.log"
    log.write_bytes(HEADER + dns_line(1, name="before.example"))
    follower = FolderFollower([str(tmp_path)], "dns")
    assert rows(follower.poll()[0])[0] == [(8, "before.example")]
    with open(log, "ab") as handle:  # written just before the rotation
        handle.write(dns_line(2, name="tail.example"))
    (tmp_path / "2024-05-01").mkdir()
    os.rename(log, tmp_path / "2024-05-01" / "dns.00:00:00-01:00:00.log")
    log.write_bytes(HEADER + dns_line(3, name="after.example"))
    found = rows(follower.poll()[0])[0]
    assert sorted(found) == [(8, "after.example"), (9, "tail.example")]
    assert follower.poll() == ([], [])  # each line once
    assert len(follower.state()["files"]) == 2


def test_a_file_truncated_in_place_is_read_again_from_its_start(tmp_path):
    log = tmp_path / "dns.log"
    log.write_bytes(HEADER + dns_line(1) + dns_line(2))
    follower = FolderFollower([str(tmp_path)], "dns")
    follower.poll()
    log.write_bytes(HEADER + dns_line(3, name="fresh.example"))
    assert rows(follower.poll()[0])[0] == [(8, "fresh.example")]


def test_logs_of_other_tables_are_skipped_once_and_forgotten_when_gone(tmp_path):
    synthetic.write_zeek_logs(str(tmp_path), synthetic.Scenario(hours=1, clients=3, anomalous_client="10.0.0.2"))
    follower = FolderFollower([str(tmp_path)], "dns")
    chunks, _ = follower.poll()
    assert {os.path.basename(chunk.source) for chunk in chunks} == {"dns.log"}
    assert sorted(reason for _, reason in follower.state()["skipped"].values()) == [
        "zeek conn feeds named_flows, not dns", "zeek ssl feeds no table, not dns"]
    for path in tmp_path.rglob("conn.log"):
        path.unlink()
    follower.poll()
    assert len(follower.state()["skipped"]) == 1


def test_a_bad_line_is_a_dead_letter_at_its_line_number(tmp_path):
    (tmp_path / "dns.log").write_bytes(HEADER + dns_line(1) + b"garbage\tline\n" + dns_line(3))
    found, dead = rows(FolderFollower([str(tmp_path)], "dns").poll()[0])
    assert [position for position, _ in found] == [8, 10]
    assert [(item.position, item.source) for item in dead] == [(9, str(tmp_path / "dns.log"))]


def test_kafka_chunks_name_their_offsets():
    record = b'{"_path":"dns","ts":1714521601.0,"uid":"C1","id.orig_h":"10.0.0.1","id.orig_p":1,' \
             b'"id.resp_h":"10.0.0.254","id.resp_p":53,"proto":"udp","trans_id":1,"query":"k.example"}\n'
    chunk = Chunk("kafka://zeek/0", "dns", record + b"{broken\n" + record.replace(b"k.example", b"l.example"),
                  (41, 42, 43))
    found, dead = rows([chunk])
    assert found == [(41, "k.example"), (43, "l.example")]
    assert [item.position for item in dead] == [42]


def dns_batch(seconds):
    table = pa.Table.from_pylist([{"req_time": 1714521600_000000 + s * 1_000_000, "c_ip": "10.0.0.1",
                                   "source_tool": "zeek", "source_file": "f", "source_pos": index + 1}
                                  for index, s in enumerate(seconds)])
    return table.cast(pa.schema([schemas.DNS.field(name) for name in table.column_names])).to_batches()[0]


def test_records_within_the_allowed_lateness_are_on_time_and_later_ones_are_dead_letters():
    clock = EventClock(allowed_lateness_us=10_000_000)
    on_time, dead = clock.admit(dns_batch([100, 120]), "dns")
    assert on_time.num_rows == 2 and dead == []
    on_time, dead = clock.admit(dns_batch([50]), "dns")  # the same poll: one arrival, in any order
    assert on_time.num_rows == 1 and dead == []
    clock.end_poll()
    assert clock.watermark_us == 1714521600_000000 + 110_000_000
    on_time, dead = clock.admit(dns_batch([111, 109, 130]), "dns")
    clock.end_poll()
    assert pc_list(on_time) == [111, 130]
    assert [(item.position, item.reason.split(":")[0]) for item in dead] == [(2, "late")]
    assert "1.000 s behind the watermark" in dead[0].reason


def pc_list(batch):
    return [(value.value - 1714521600_000000) // 1_000_000 for value in batch.column("req_time")]


def test_a_pane_is_written_once_atomically_and_named_by_its_content(tmp_path):
    table = pa.table({"key": ["b", "a"], "value": [2, 1]})
    path = write_pane(table, str(tmp_path), ("key",), "0001")
    again = write_pane(table.take([1, 0]), str(tmp_path), ("key",), "0001")
    assert path == again and os.listdir(tmp_path) == [os.path.basename(path)]
    assert pq.read_table(path).column("key").to_pylist() == ["a", "b"]
    assert write_pane(table.slice(0, 0), str(tmp_path), ("key",), "0001") is None


@pytest.mark.parametrize("arguments, message", [
    (["--table", "named_flows", "LOGS"], "--follow builds the dns and http tables"),
    (["--table", "dns", "LOGS", "kafka://localhost:9092/zeek"], "either folders or Kafka topics, not both"),
    (["--table", "dns", "kafka://localhost:9092/"], "no topic in kafka://localhost:9092/"),
    (["--table", "dns", "--allowed-lateness", "soon", "LOGS"], "not a duration: 'soon'"),
    (["--table", "dns", "--baseline", "x", "LOGS"], "--follow --baseline takes a local features/ folder"),
    (["--table", "dns", "--baseline", "EMPTY", "LOGS"], "holds no .parquet files"),
    (["--table", "dns", "--train-until", "2024-05-01T01:00:00", "LOGS"], "--follow does not take --train-until"),
    (["--table", "dns", "--hunts", "all", "LOGS"], "--follow does not run hunts"),
    (["--table", "dns", "--allow", "LOGS", "LOGS"], "--follow --allow needs --baseline"),
    (["--table", "dns", "--query", "SELECT * FROM netlytics", "LOGS"], "--follow does not take --query"),
])
def test_follow_mistakes_end_with_one_line_and_exit_2(arguments, message, tmp_path, capsys):
    from beamlytics.pipelines import cli

    (tmp_path / "logs").mkdir()
    (tmp_path / "empty").mkdir()
    named = {"LOGS": str(tmp_path / "logs"), "EMPTY": str(tmp_path / "empty")}
    arguments = [named.get(item, item) for item in arguments]
    assert cli.main(["detect", "--follow", "--output", str(tmp_path / "out"), *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and not (tmp_path / "out").exists()


def test_a_live_run_refuses_a_folder_holding_another_commands_result(tmp_path):
    from beamlytics.pipelines import outputs
    from beamlytics.pipelines.live import prepare_folder

    (tmp_path / outputs.MANIFEST).write_bytes(outputs.Manifest("detect", ()).to_bytes())
    with pytest.raises(outputs.OutputError, match="holds the result of beamlytics detect"):
        prepare_folder(str(tmp_path))
    (tmp_path / outputs.MANIFEST).unlink()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(outputs.OutputError, match="did not write \\(notes.txt\\)"):
        prepare_folder(str(tmp_path))
