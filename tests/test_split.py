"""Big line files read as byte ranges give what one read of the file gives: same records, dead letters, counts."""
from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pytest

from beamlytics.parsers import formats, limits, splits
from beamlytics.parsers.base import Batch, Read, Rejected

FIELDS = "ts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\trcode_name"
TYPES = "time\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tstring"


def _line(number: int, sep: str = "\t") -> str:
    return sep.join([f"1714521600.{number:06d}", f"C{number}", f"10.0.0.{number % 7}", "1024", "10.0.0.53", "53",
                     "udp", str(number), f"n{number}.example.com", "NOERROR"])


def _header(sep: str = "\t", fields: str = FIELDS, types: str = TYPES) -> str:
    escaped = "\\x09" if sep == "\t" else "\\x" + sep.encode().hex()
    return (f"#separator {escaped}\n#set_separator{sep},\n#empty_field{sep}(empty)\n#unset_field{sep}-\n"
            f"#path{sep}dns\n#open{sep}2024-05-01-00-00-00\n#fields{sep}{fields.replace(chr(9), sep)}\n"
            f"#types{sep}{types.replace(chr(9), sep)}\n")


def awkward_log() -> bytes:
    """Every kind of line a cut can fall in or beside: CRLF, bad lines, empty lines, a second header block
    with another separator and field order, a `#close` in the middle, no newline at the end."""
    swapped = FIELDS.split("\t")
    swapped_types = TYPES.split("\t")
    order = [1, 0, *range(2, len(swapped))]
    text = _header() + "".join(_line(n) + "\n" for n in range(1, 6))
    text += _line(6) + "\r\n" + _line(7) + "\r\n"  # CRLF endings
    text += "not\ta\tzeek line\n\n" + _line(8).replace("1714521600.000008", "yesterday") + "\n"
    text += "#close\t2024-05-01-01-00-00\n"
    text += _header(",", ",".join(swapped[i] for i in order), ",".join(swapped_types[i] for i in order))
    for n in range(9, 14):
        values = _line(n).split("\t")
        text += ",".join(values[i] for i in order) + "\n"
    text += "#fields,ts,uid\n" + "1714521600.000014,C14\n"  # a layout change without a #types line
    text += "#close,2024-05-01-02-00-00\n" + _header() + _line(15) + "\n" + _line(16)
    return text.encode()


def json_log() -> bytes:
    rows = [f'{{"ts":1714521600.{n:06d},"uid":"C{n}","id.orig_h":"10.0.0.{n}","query":"n{n}.example"}}'
            for n in range(1, 9)]
    rows.insert(3, "{broken")
    rows.insert(6, "#not json")
    return ("\n".join(rows) + "\n").encode()


SQUID_NATIVE = "1157689312.{n:03d}   5006 10.105.21.{c} TCP_MISS/200 19763 GET http://h{n}.example/p - DIRECT/209.73.177.115 text/html"
SQUID_COMBINED = '10.1.1.{n} - - [01/Feb/2021:00:00:{n:02d} +0130] "POST /upload HTTP/1.1" 201 - "http://ref.example/" "Mozilla/5.0"'


def squid_log() -> bytes:
    """Native and combined lines, CRLF, a blank line, lines that are not Squid, a bad UTF-8 byte, no final newline."""
    lines = [SQUID_NATIVE.format(n=n, c=n % 5) for n in range(1, 5)] + [SQUID_COMBINED.format(n=5)]
    text = "\n".join(lines) + "\n" + SQUID_NATIVE.format(n=6, c=1) + "\r\n" + "\n" + "garbage line\n"
    text += "#a comment is no Squid line\n" + SQUID_COMBINED.format(n=7) + "\n"
    data = text.encode() + b"1157689312.008 5 10.0.0.\xff TCP_MISS/200 1 GET http://x/ - DIRECT/1.2.3.4 -\n"
    return data + "\n".join(SQUID_NATIVE.format(n=n, c=n % 3) for n in range(9, 13)).encode()


BIND_QUERY = "02-May-2023 13:33:{n:02d}.299 queries: info: client @0x2c 127.0.0.{n}#59751 (w{n}.example): query: w{n}.example IN A +E(0)K (127.0.0.1)"


def bind_log() -> bytes:
    """Queries among other BIND lines, a malformed query, a blank line, CRLF, a cut-off last line."""
    text = "\n".join(BIND_QUERY.format(n=n) for n in range(1, 4)) + "\n"
    text += "02-May-2023 13:33:40.100 general: info: zone example.com/IN: loaded serial 1\n\n"
    text += BIND_QUERY.format(n=4) + "\r\nUnmatched! The rat the cat\n"
    text += "02-May-2023 13:33:42.000 queries: info: client @0x2c 127.0.0.1#5 (d): query: DOMAIN IN TYPE FLAGS (server)\n"
    text += "\n".join(BIND_QUERY.format(n=n) for n in range(5, 9)) + "\n"
    return (text + "02-May-2023 13:33:42.000 queries: info: client 127.0.0.1#5 (d): query: trunc").encode()


TSTAT_CORE = ["c_ip", "c_port", "s_ip", "s_port", "first", "last", "c_pkts_all", "s_pkts_all", "c_bytes_all",
              "s_bytes_all"]
TSTAT_L7 = ["s_ip", "s_port", "c_ip", "c_port", "first", "last", "c_pkts_all", "s_pkts_all", "c_bytes_all",
            "s_bytes_all", "c_tls_SNI"]


def _tstat_line(names: list[str], n: int) -> str:
    values = dict(c_ip=f"10.0.0.{n}", c_port=40000 + n, s_ip="10.9.9.9", s_port=443, first=f"1700000000{n:03d}.5",
                  last=f"1700000001{n:03d}.25", c_pkts_all=n, s_pkts_all=2 * n, c_bytes_all=100 * n,
                  s_bytes_all=300 * n, c_tls_SNI=f"s{n}.example")
    return " ".join(str(values[name]) for name in names)


def tstat_log() -> bytes:
    """A comment first, a data line before any header, a header, a comment that is no header (the columns
    stay), a line of the wrong width and a non-numeric one, then a second header in another column order
    (concatenated logs), CRLF, no final newline."""
    header = lambda prefix, names: prefix + " ".join(f"{name}:{i + 1}" for i, name in enumerate(names))  # noqa: E731
    lines = ["# tstat 3.1 log", _tstat_line(TSTAT_CORE, 1), header("#", TSTAT_CORE)]
    lines += [_tstat_line(TSTAT_CORE, n) for n in range(2, 5)] + ["#just a comment", _tstat_line(TSTAT_CORE, 5)]
    lines += ["10.0.0.6 6 7", _tstat_line(TSTAT_CORE, 7).replace(" 443 ", " https "), ""]
    lines += [header("#31#", TSTAT_L7)] + [_tstat_line(TSTAT_L7, n) for n in range(8, 11)]
    text = "\n".join(lines) + "\n" + _tstat_line(TSTAT_L7, 11) + "\r\n" + _tstat_line(TSTAT_L7, 12)
    return text.encode()


LINE_LOGS = [("access.log", squid_log, "http"), ("queries.log", bind_log, "dns"),
             ("log_tcp_complete", tstat_log, "named_flows")]


def outcome(items) -> tuple[pa.Table | None, list[dict], int, int]:
    """Records sorted by line, dead letters by position, units read and accounted for."""
    batches, dead, read, units = [], [], 0, 0
    for item in items:
        if isinstance(item, Read):
            read += item.units
        elif isinstance(item, Rejected):
            dead.append(item.as_row())
            units += item.units
        elif isinstance(item, Batch):
            units += item.units
            if item.records.num_rows:
                batches.append(item.records)
    table = pa.Table.from_batches(batches).sort_by("source_pos") if batches else None
    return table, sorted(dead, key=lambda row: (row["position"], row["reason"])), read, units


def opener(path: str):
    return open(path, "rb")


def read_whole(path: Path, table: str = "dns", options=None):
    planned = formats.plan([str(path)], table, "auto", opener)
    return outcome(formats.parse_source(planned.sources[0], table, opener, options=options))


def read_split(path: Path, cuts: list[int], table: str = "dns", source: formats.Source | None = None, options=None):
    """Parse `path` in the ranges between `cuts`, each range on its own, as workers would; their dead letters
    then limited per file and reason kind, as `ReadRecords` does."""
    source = source or formats.plan([str(path)], table, "auto", opener).sources[0]
    bounds = [0, *cuts, path.stat().st_size]
    pieces = [splits.ByteRange(str(path), index, start, end) for index, (start, end) in enumerate(zip(bounds, bounds[1:]))]
    indexes = {piece.index: splits.index_of(source, piece, opener) for piece in pieces}
    items, by_kind = [], {}
    for piece in splits.starts_of(source, pieces, indexes, opener):
        for item in formats.parse_source(piece, table, opener, options=options):
            if isinstance(item, Rejected):
                by_kind.setdefault(limits.reason_kind(item.reason), []).append(item)
            else:
                items.append(item)
    per_reason = (options or {}).get("dead_letters_per_reason") or limits.DEAD_LETTERS_PER_REASON
    for letters in by_kind.values():
        items.extend(limits.merge_ranges(letters, per_reason))
    return outcome(items)


def assert_same(whole, split):
    (table, dead, read, units), (split_table, split_dead, split_read, split_units) = whole, split
    assert split_dead == dead
    assert (split_read, split_units) == (read, units)
    assert split_table is not None and split_table.equals(table)


def awkward_cuts(data: bytes) -> list[int]:
    """Every byte around each line end (before and after the CR of a CRLF, at the newline, on the first
    byte of the next line, `#` lines included), and a byte in every 11 elsewhere (mid-line)."""
    ends = [index for index, byte in enumerate(data) if byte == 0x0A]
    near = {cut for end in ends for cut in (end - 1, end, end + 1, end + 2)}
    return sorted(cut for cut in near | set(range(1, len(data), 11)) if 0 < cut < len(data))


@pytest.mark.parametrize("content", [awkward_log, json_log])
def test_two_ranges_cut_at_every_awkward_place_read_as_one(tmp_path, content):
    path = tmp_path / "dns.log"
    path.write_bytes(content())
    whole = read_whole(path)
    assert whole[0] is not None and whole[1]  # the log has records and dead letters to compare
    source = formats.plan([str(path)], "dns", "auto", opener).sources[0]
    for cut in awkward_cuts(path.read_bytes()):
        assert_same(whole, read_split(path, [cut], source=source))


@pytest.mark.parametrize("name, content, table", LINE_LOGS)
def test_line_logs_cut_at_every_awkward_place_read_as_one(tmp_path, name, content, table):
    path = tmp_path / name
    path.write_bytes(content())
    source = formats.plan([str(path)], table, "auto", opener).sources[0]
    assert len(splits.splits_into(source, opener, path.stat().st_size, 64)) > 1
    whole = read_whole(path, table)
    assert whole[0] is not None and whole[1]  # the log has records and dead letters to compare
    for cut in awkward_cuts(path.read_bytes()):
        assert_same(whole, read_split(path, [cut], table, source))


@pytest.mark.parametrize("name, content, table", LINE_LOGS)
def test_line_logs_in_many_small_ranges_read_as_one(tmp_path, name, content, table):
    path = tmp_path / name
    path.write_bytes(content())
    whole = read_whole(path, table)
    size = path.stat().st_size
    for step in (5, 23, 64, 150):
        assert_same(whole, read_split(path, list(range(step, size, step)), table))


@pytest.mark.parametrize("name, content, table", [("dns.log", awkward_log, "dns"), *LINE_LOGS])
def test_the_dead_letter_limit_holds_per_file_however_it_is_cut(tmp_path, name, content, table):
    """With 1 listed per reason kind, the split read lists the same first one and counts the same rest,
    in one dead letter naming the same first unlisted position."""
    path = tmp_path / name
    path.write_bytes(content() + b"\n" + content())  # twice: every kind of bad line comes back
    options = {"dead_letters_per_reason": 1}
    whole = read_whole(path, table, options)
    assert any("more dead letters of this kind not listed" in row["reason"] for row in whole[1])
    source = formats.plan([str(path)], table, "auto", opener).sources[0]
    size = path.stat().st_size
    for step in (7, 40, 131, size // 2):
        assert_same(whole, read_split(path, list(range(step, size, step)), table, source, options))


def test_merging_range_dead_letters_by_hand():
    """Ranges of one file, one reason kind, 2 listed per file. Range A listed lines 5 and 9, then overflowed
    from line 12 (3 more, 4 units); range B listed 30 and 2. The file lists 2 and 5; 9, 30 and A's 3 are
    the 5 more, 6 units, from line 9."""
    a = [Rejected("f", 5, "bad line"), Rejected("f", 9, "bad line", "nine", "squid"),
         limits.overflowed("bad line", Rejected("f", 12, "bad line", "twelve", "squid"), 3, 4, 2)]
    b = [Rejected("f", 30, "bad line"), Rejected("f", 2, "bad line")]
    merged = limits.merge_ranges(b + a, per_reason=2)
    assert [item.position for item in merged[:2]] == [2, 5]
    rest = merged[2]
    assert (rest.position, rest.units, rest.excerpt, rest.source_tool) == (9, 6, "nine", "squid")
    assert rest.reason == "bad line: 5 more dead letters of this kind not listed (the first at position 9; 2 listed)"
    assert limits.merge_ranges(b, per_reason=2) == [b[1], b[0]]  # under the limit: listed, in file order


def test_tstat_ranges_read_under_the_header_in_force(tmp_path):
    """Counted by hand in `tstat_log`: the bad lines, and a range starting after the second header (line 12)
    reads its lines by that header's column order (client 10.0.0.n first in the old order, last in the new)."""
    path = tmp_path / "log_tcp_complete"
    data = tstat_log()
    path.write_bytes(data)
    cut = data.index(_tstat_line(TSTAT_L7, 9).encode())
    table, dead, _, _ = read_split(path, [cut], "named_flows")
    assert [(row["position"], row["reason"].split(",")[0]) for row in dead] == [
        (2, "data line before any Tstat header line"), (9, "expected 10 space-separated fields"),
        (10, "non-numeric value in a numeric Tstat column")]
    rows = table.select(["source_pos", "c_ip", "c_port", "name"]).to_pylist()
    assert rows[-1] == {"source_pos": 17, "c_ip": "10.0.0.12", "c_port": 40012, "name": "s12.example"}
    assert [row["source_pos"] for row in rows] == [4, 5, 6, 8, 13, 14, 15, 16, 17]


def test_tstat_paired_logs_are_read_whole(tmp_path):
    """A DNS or HTTP row pairs a request line with its answers: a cut could part them."""
    path = tmp_path / "log_dns_complete"
    path.write_bytes(b"#c_ip:1 c_port:2 s_ip:3 s_port:4 time:5 entry:6\n" + b"10.0.0.1 1 10.0.0.2 53 1 REQ\n" * 50)
    source = formats.plan([str(path)], "dns", "auto", opener).sources[0]
    assert source.kind == "log_dns_complete"
    assert splits.splits_into(source, opener, path.stat().st_size, 64) == []


def test_many_small_ranges_read_as_one(tmp_path):
    path = tmp_path / "dns.log"
    path.write_bytes(awkward_log())
    whole = read_whole(path)
    size = path.stat().st_size
    for step in (3, 17, 64, 101):
        assert_same(whole, read_split(path, list(range(step, size, step))))


def test_hand_checked_positions_survive_splitting(tmp_path):
    """Line numbers counted by hand in `awkward_log`: the bad lines of its first block."""
    path = tmp_path / "dns.log"
    path.write_bytes(awkward_log())
    _, dead, _, _ = read_split(path, [700, 900])
    by_position = {row["position"]: row["reason"] for row in dead}
    assert by_position[16] == "3 fields where the #fields header has 10"
    assert by_position[17] == "empty line"
    assert by_position[18].startswith("bad time value in ts")


def test_range_reader_owns_the_lines_that_start_in_it():
    data = b"aa\nbb\r\ncc\n\ndd"
    starts = [0, 3, 7, 10, 11]  # line starts, by hand
    for cut in range(len(data) + 1):
        first = splits.RangeReader(io.BytesIO(data), 0, cut).readall() if cut else b""
        rest = splits.RangeReader(io.BytesIO(data), cut, len(data)).readall()
        assert first + rest == data
        owned = [start for start in starts if start < cut]
        assert first == (data[: starts[len(owned)]] if len(owned) < len(starts) else data)


def test_byte_ranges_cover_the_file_once():
    pieces = splits.byte_ranges("f", 10 * 64 + 5, 64)
    assert [(p.start, p.end) for p in pieces][:2] == [(0, 58), (58, 117)]  # 645 bytes in 11 even cuts
    assert len(pieces) == 11 and pieces[-1].end == 645
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    assert splits.byte_ranges("f", 0, 64) == [splits.ByteRange("f", 0, 0, 0)]


def test_compressed_and_small_files_are_read_whole(tmp_path):
    import gzip

    path = tmp_path / "dns.log"
    path.write_bytes(awkward_log())
    packed = tmp_path / "dns.log.gz"
    packed.write_bytes(gzip.compress(awkward_log()))
    source = formats.plan([str(path)], "dns", "auto", opener).sources[0]
    compressed = formats.plan([str(packed)], "dns", "auto", opener).sources[0]
    assert len(splits.splits_into(source, opener, path.stat().st_size, 100)) > 1
    assert splits.splits_into(source, opener, path.stat().st_size, 1 << 20) == []
    assert splits.splits_into(compressed, opener, 10 << 20, 100) == []


def test_read_records_splits_big_files_with_the_same_results(tmp_path):
    """Through Beam: ranges indexed and parsed as separate elements give the unsplit read's records, dead
    letters (one listed per reason kind and file, the rest counted) and summary counts (files counted once)."""
    from collections import Counter

    from beamlytics.transforms.read import ReadRecords
    from tests.conftest import collect

    path = tmp_path / "dns.log"
    path.write_bytes(awkward_log() + b"\n" + b"".join(_line(n).encode() + b"\n" for n in range(17, 60)) + awkward_log())

    def run(split_bytes):
        def build(pipeline):
            options = {"split_bytes": split_bytes, "dead_letters_per_reason": 1}
            read = pipeline | ReadRecords([str(path)], "dns", parser_options=options)
            return (read["records"] | "R" >> beam.Map(lambda batch: ("records", batch)),
                    read["rejected"] | "D" >> beam.Map(lambda row: ("rejected", row)),
                    read["counts"] | "C" >> beam.Map(lambda pair: ("counts", pair))) | beam.Flatten()
        elements = collect(build)
        records = pa.Table.from_batches([b for kind, b in elements if kind == "records"]).sort_by("source_pos")
        rejected = sorted((row for kind, row in elements if kind == "rejected"),
                          key=lambda row: (row["position"], row["reason"]))
        counts = Counter()
        for kind, (name, count) in ((k, v) for k, v in elements if k == "counts"):
            counts[name] += count
        return records, rejected, counts

    import apache_beam as beam

    whole = run(1 << 30)
    split = run(97)
    assert split[0].equals(whole[0]) and split[1] == whole[1] and split[2] == whole[2]
    assert whole[2]["files_read"] == 1 and whole[2]["records"] == whole[0].num_rows
    assert any("more dead letters of this kind not listed" in row["reason"] for row in whole[1])
