"""Outputs cut in shards: the default count, the rows whatever the count, the bytes whatever the workers."""
from __future__ import annotations

import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamlytics.transforms.write import default_shards
from tests.test_split import _header, _line

MIB = 1 << 20


def test_default_shards_grow_with_the_input():
    assert [default_shards(n) for n in (0, 1, 16 * MIB, 16 * MIB + 1, 160 * MIB, 161 * MIB)] == [1, 1, 1, 2, 10, 11]
    assert default_shards(10 << 40) == 64  # a 10 TiB run still writes a listable folder


def detect_log(folder: Path, hosts: int = 40, minutes: int = 30) -> Path:
    """A Zeek dns.log: `hosts` clients, a query every 20 s each, and one client's burst of queries."""
    lines, number = [], 0
    for second in range(0, minutes * 60, 20):
        for host in range(hosts):
            number += 1
            burst = host == 3 and 600 <= second < 720
            for copy in range(30 if burst else 1):
                stamp = f"{1714521600 + second}.{host * 1000 + copy:06d}"
                lines.append(_line(number).replace("1714521600.%06d" % number, stamp)
                             .replace("\t10.0.0.%d\t" % (number % 7), f"\t10.1.0.{host}\t", 1))
    path = folder / "dns.log"
    path.write_text(_header() + "\n".join(lines) + "\n")
    return path


def squid_log(folder: Path, hosts: int = 30, minutes: int = 30) -> Path:
    """A Squid access.log: `hosts` clients, a request every 20 s each, one client's burst of 404s, bad lines."""
    lines = []
    for second in range(0, minutes * 60, 20):
        for host in range(hosts):
            burst = host == 5 and 600 <= second < 720
            for copy in range(25 if burst else 1):
                status, path = (404, f"/probe/{copy}") if burst else (200, "/index.html")
                lines.append(f"{1714521600 + second}.{host * 10 + copy % 10:03d}     12 10.2.0.{host} TCP_MISS/{status}"
                             f" 1500 GET http://site{host % 4}.example{path} - HIER_DIRECT/10.9.0.{host % 4} text/html")
        lines.append("not a squid line")
    path = folder / "access.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_detect(inputs: Path, output: Path, shards: int, beam_args=(), split_bytes: int | None = None,
               table: str = "dns") -> Path:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beamlytics import features
    from beamlytics.detectors.endpoint import DetectorConfig
    from beamlytics.detectors.verdict import VerdictSettings
    from beamlytics.pipelines.detect import DetectSettings, ReadSettings, build_detect

    spec = features.WindowSpec(table, "c_ip", 60_000_000)
    read = ReadSettings([str(inputs)], table, parser_options={"split_bytes": split_bytes} if split_bytes else {})
    settings = DetectSettings(read, spec, DetectorConfig("gaussian", {}, features.DEFAULT_FEATURES[table]),
                              shards=shards, verdict=VerdictSettings(alarm_rate=0.05))  # a small log: few windows
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        build_detect(pipeline, settings, str(output))
    return output


def folder_bytes(output: Path) -> dict[str, bytes]:
    return {str(path.relative_to(output)): path.read_bytes()
            for name in ("scores", "anomalies", "verdicts", "features", "rejected") for path in sorted((output / name).iterdir())}


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return detect_log(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="module")
def one_shard(log, tmp_path_factory) -> Path:
    return run_detect(log, tmp_path_factory.mktemp("one") / "out", 1)


def test_shards_hold_the_same_rows_each_sorted_each_endpoint_in_one(log, one_shard, tmp_path):
    three = run_detect(log, tmp_path / "out", 3)
    for name, order in (("scores", ["key", "window_start", "feature"]), ("features", ["key", "window_start"])):
        single = pq.read_table(one_shard / name / "part-00000-of-00001.parquet")
        parts = [pq.read_table(three / name / f"part-{shard:05d}-of-00003.parquet") for shard in range(3)]
        assert single.num_rows > 0 and all(part.num_rows for part in parts)
        merged = pa.concat_tables(parts).sort_by([(column, "ascending") for column in order])
        assert merged.equals(single.sort_by([(column, "ascending") for column in order]))
        for shard, part in enumerate(parts):
            assert part.equals(part.sort_by([(column, "ascending") for column in order]))
            # The routing rule, computed here on its own: crc32 of the key's repr, modulo the shard count.
            assert {zlib.crc32(repr(key).encode()) % 3 for key in part.column("key").to_pylist()} == {shard}
    assert pq.read_table(one_shard / "anomalies").num_rows > 0  # the burst is found: there are verdicts to compare


def test_outputs_byte_identical_with_one_and_two_workers_and_split_reads(log, tmp_path):
    """Two worker processes, and the log read in byte ranges, write the bytes one in-process worker writes."""
    one = folder_bytes(run_detect(log, tmp_path / "one", 2))
    two = folder_bytes(run_detect(log, tmp_path / "two", 2, ["--direct_running_mode=multi_processing",
                                                             "--direct_num_workers=2"], split_bytes=log.stat().st_size // 5))
    assert len(one) == 9 and two == one  # 2 shards of scores, anomalies, verdicts and features; one of rejected


def test_a_squid_log_read_in_ranges_by_two_workers_writes_the_same_bytes(tmp_path):
    """The line formats split too: a Squid log cut in 7 ranges, parsed by two worker processes."""
    log = squid_log(tmp_path)
    one = folder_bytes(run_detect(log, tmp_path / "one", 2, table="http"))
    two = folder_bytes(run_detect(log, tmp_path / "two", 2, ["--direct_running_mode=multi_processing",
                                                             "--direct_num_workers=2"],
                                  split_bytes=log.stat().st_size // 7, table="http"))
    assert two == one
    rejected = pq.read_table(tmp_path / "one" / "rejected")
    assert rejected.num_rows == 90 and pq.read_table(tmp_path / "one" / "anomalies").num_rows > 0


def test_incidents_from_the_kept_records_equal_those_of_parsing_the_inputs_again(log, tmp_path):
    """The records the pipeline keeps, read in byte ranges by two workers, tally as a fresh parse of the log does."""
    from beamlytics import features, schemas
    from beamlytics.report import evidence, folder, incidents

    out = run_detect(log, tmp_path / "out", 2, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                     split_bytes=log.stat().st_size // 5)
    assert len(evidence.kept_files(str(out))) > 1
    found = folder.write_incidents(str(out), incidents.Inputs((str(log),)))
    again = incidents.build_incidents(
        folder.read_folder(str(out / "verdicts"), schemas.VERDICTS),
        folder.read_folder(str(out / "anomalies"), schemas.ANOMALIES),
        folder.read_folder(str(out / "features"), features.feature_schema("dns")), 60.0,
        incidents.Inputs((str(log),)).record_batches("dns"))
    assert found.num_rows > 0 and sum(found.column("records").to_pylist()) > 0
    assert found.replace_schema_metadata(None).equals(again)
