"""Hunts: RITA's beacon arithmetic by hand, planted attacks in generated traffic, real captures, determinism."""
import base64
import json
import random
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beamlytics import schemas
from beamlytics.hunts import run_hunts, stats
from beamlytics.hunts.allow import AllowList, AllowListError
from beamlytics.hunts.config import DAY_US, HuntConfig
from beamlytics.hunts.aggregate import merge_all
from beamlytics.hunts.flows import PAIRS, beacon_evidence, failed_attempts, timestamp_score
from beamlytics.parsers import formats
from beamlytics.parsers.base import Batch, Rejected
from beamlytics.pipelines import cli
from beamlytics.transforms.hunt import HuntFindings
from tests.conftest import collect, shared_data

DAY = 19_800 * DAY_US  # 2024-03-18 00:00 UTC
FLOW_HUNTS = ["beacon", "long", "strobe", "scan"]
ALARM = HuntConfig().alarm


def flows(rows: list[dict]) -> pa.RecordBatch:
    columns = {name: [row.get(name) for row in rows] for name in schemas.NAMED_FLOWS.names
               if name not in ("source_tool", "source_file", "source_pos")}
    columns.update(source_tool=["test"] * len(rows), source_file=["generated"] * len(rows),
                   source_pos=list(range(1, len(rows) + 1)))
    return schemas.batch_from_columns(schemas.NAMED_FLOWS, columns, len(rows))


def dns(rows: list[dict]) -> pa.RecordBatch:
    columns = {name: [row.get(name) for row in rows] for name in ("c_ip", "s_ip", "query", "req_type", "req_time")}
    columns.update(source_tool=["test"] * len(rows), source_file=["generated"] * len(rows),
                   source_pos=list(range(1, len(rows) + 1)))
    return schemas.batch_from_columns(schemas.DNS, columns, len(rows))


def flow(src, dst, start_us, *, port=443, proto="tcp", seconds=1.0, c_bytes=500, s_bytes=1500, state="SF",
         c_pkt=6, s_pkt=6, name=None):
    return {"c_ip": src, "s_ip": dst, "c_port": 50_000, "s_port": port, "proto": proto, "c_bytes": c_bytes,
            "s_bytes": s_bytes, "c_pkt": c_pkt, "s_pkt": s_pkt, "time_start": start_us,
            "time_end": start_us + int(seconds * 1e6), "conn_state": state, "name": name}


def benign_flows(rng: np.random.Generator, hosts: int = 30) -> list[dict]:
    """Office traffic: working-hours sessions of bursts to shared servers, heavy-tailed sizes and durations."""
    servers = [f"198.51.100.{n}" for n in range(1, 41)]
    rows = []
    for host in range(hosts):
        src = f"10.1.0.{host + 1}"
        for _ in range(rng.poisson(8)):
            dst = servers[int(rng.zipf(1.6)) % len(servers)]
            moment = rng.uniform(8, 18) * 3600
            for _ in range(1 + rng.poisson(10)):
                moment += rng.exponential(20)
                rows.append(flow(src, dst, DAY + int(moment * 1e6), seconds=float(rng.lognormal(1, 1.5)),
                                 c_bytes=int(rng.lognormal(7, 1.5)), s_bytes=int(rng.lognormal(9, 2)),
                                 name=f"site{dst.rsplit('.', 1)[1]}.example"))
    return rows


def planted_flows(rng: np.random.Generator) -> list[dict]:
    rows = []
    # A beacon: every 5 minutes all day, a few seconds of jitter, near-constant size.
    for index in range(288):
        start = DAY + index * 300_000_000 + int(rng.integers(-3_000_000, 3_000_000))
        rows.append(flow("10.1.0.99", "203.0.113.50", max(start, DAY), c_bytes=310 + int(rng.integers(0, 4)),
                         s_bytes=1_200, name="update.evil.example"))
    # A long connection: one SSH session held for 11 hours, and one still open.
    rows.append(flow("10.1.0.98", "192.0.2.22", DAY + 3_600_000_000, port=22, seconds=11 * 3600, state="SF"))
    rows.append(flow("10.1.0.98", "192.0.2.22", DAY + 20 * 3_600_000_000, port=22, seconds=600, state="S1"))
    # A vertical scan of 1024 ports, refused or unanswered.
    for port in range(1, 1025):
        rows.append(flow("10.1.0.97", "10.1.0.20", DAY + 10 * 3_600_000_000 + port * 1_000, port=port, seconds=0,
                         c_bytes=0, s_bytes=0, c_pkt=1, s_pkt=1 if port % 2 else 0, state="REJ" if port % 2 else "S0"))
    # A horizontal scan of port 445 over a /24.
    for host in range(1, 255):
        rows.append(flow("10.1.0.96", f"10.2.0.{host}", DAY + 12 * 3_600_000_000 + host * 5_000, port=445,
                         seconds=0, c_bytes=0, s_bytes=0, c_pkt=2, s_pkt=0, state="S0"))
    return rows


@pytest.fixture(scope="module")
def generated():
    rng = np.random.default_rng(7)
    return benign_flows(rng), planted_flows(rng)


def by_hunt(table: pa.Table, hunt: str) -> list[dict]:
    return table.filter(pc.equal(table["hunt"], hunt)).to_pylist()


# ------------------------------------------------------------------ RITA's arithmetic, by hand

def test_quartiles_are_medians_of_halves():
    assert stats.quartiles(np.array([40, 50, 60, 62, 64, 80, 100])) == (50, 62, 80)  # odd: median left out
    assert stats.quartiles(np.array([1, 2, 3, 4, 5, 6, 7, 8])) == (2.5, 4.5, 6.5)  # even: halves of 4


def test_timestamp_score_of_a_hand_worked_series():
    times = np.cumsum([0, 60, 40, 100, 50, 64, 62, 80])  # intervals 60 40 100 50 64 62 80 seconds
    # Sorted intervals: 40 50 60 62 64 80 100. Median Q2 = 62; Q1 = median(40, 50, 60) = 50;
    # Q3 = median(64, 80, 100) = 80. Bowley = (50 + 80 - 2·62) / (80 - 50) = 6/30 = 0.2.
    skew = (50 + 80 - 2 * 62) / (80 - 50)
    # |interval - 62| = 22 12 2 0 2 18 38 → sorted 0 2 2 12 18 22 38 → MAD = 12; score = (62 - 12) / 62.
    mad_score = (62 - 12) / 62
    result = timestamp_score(times)
    assert result["ts_skew"] == pytest.approx(skew)
    assert result["ts_mad_s"] == 12
    assert result["ts_score"] == round(((1 - skew) + mad_score) / 2, 3) == 0.803


def test_small_spread_counts_as_no_skew():
    # Intervals 58 59 60 60 60 61 90: Q1 = 59, Q3 = 61, spread 2 < 10 s: RITA calls that symmetric.
    times = np.cumsum([0, 58, 59, 60, 60, 60, 61, 90])
    assert timestamp_score(times)["ts_skew"] == 0.0


def test_beacon_score_of_an_hourly_beacon_by_hand():
    config = HuntConfig()
    start_s = DAY // 1_000_000
    times = np.array([start_s + hour * 3600 for hour in range(24)])  # on the hour, 24 times
    sizes = np.full(24, 800)
    evidence = beacon_evidence(times, sizes, int(times[0]), int(times[-1]), start_s, config)
    # Intervals all 3600: no skew, MAD 0 → timestamp score 1; constant size → data-size score 1.
    assert evidence["ts_score"] == 1.0 and evidence["ds_score"] == 1.0
    # One connection in each of 24 hourly bins: coefficient of variation 0 → histogram score 1.
    assert evidence["hist_score"] == 1.0 and evidence["hours_seen"] == 24
    # Coverage = ceil(23 h / 24 h · 1000) / 1000 = 0.959; consistency = min(1, 24/12) = 1; the max is taken.
    assert evidence["dur_coverage"] == 0.959 and evidence["dur_consistency"] == 1.0
    assert evidence["beacon_score"] == 1.0


def test_beacon_score_of_a_burst_in_one_hour_by_hand():
    config = HuntConfig()
    start_s = DAY // 1_000_000
    times = start_s + np.cumsum([0, 60, 40, 100, 50, 64, 62, 80])
    evidence = beacon_evidence(times, np.full(8, 100), int(times[0]), int(times[-1]), start_s, config)
    # Histogram: 8 connections in 1 of 24 bins: mean 1/3, σ = sqrt(((8-1/3)² + 23·(1/3)²)/24) = 1.60,
    # CV 4.8 > 1 → 0; fewer than 11 bars → no bimodal fit; fewer than 6 hours → duration 0.
    assert evidence["hist_score"] == 0 and evidence["dur_score"] == 0
    assert evidence["beacon_score"] == round(0.25 * 0.803 + 0.25 * 1.0, 3) == 0.451


def test_bucketed_scores_interpolate_between_thresholds():
    thresholds = (3_600, 14_400, 28_800, 43_200)
    assert stats.bucket_score(3_599, thresholds) == 0
    assert stats.bucket_score(3_600, thresholds) == 0.25
    assert stats.bucket_score(9_000, thresholds) == pytest.approx(0.25 + 0.25 * 5_400 / 10_800)
    assert stats.bucket_score(50_000, thresholds) == 1.0


def test_entropy_of_known_strings():
    assert stats.shannon_entropy("aaaa") == 0
    assert stats.shannon_entropy("abcd") == 2.0
    assert stats.shannon_entropy("aabb") == 1.0


# ------------------------------------------------------------------ planted attacks in generated traffic

def test_planted_attacks_rank_first_and_benign_traffic_stays_low(generated):
    benign, planted = generated
    result = run_hunts([flows(benign + planted)], "named_flows", FLOW_HUNTS)
    findings = result.findings
    expected_first = {"beacon": ("10.1.0.99", "203.0.113.50"), "long": ("10.1.0.98", "192.0.2.22"),
                      "vertical_scan": ("10.1.0.97", "10.1.0.20"), "horizontal_scan": ("10.1.0.96", None)}
    planted_sources = {"10.1.0.99", "10.1.0.98", "10.1.0.97", "10.1.0.96"}
    for hunt, (src, dst) in expected_first.items():
        rows = by_hunt(findings, hunt)
        assert (rows[0]["rank"], rows[0]["src"], rows[0]["dst"]) == (1, src, dst), hunt
        assert rows[0]["score"] >= ALARM, hunt
        benign_scores = [row["score"] for row in rows if row["src"] not in planted_sources]
        assert max(benign_scores, default=0) < ALARM, hunt
    long = by_hunt(findings, "long")[0]
    assert json.loads(long["evidence"])["open_connections"] == 1
    assert json.loads(long["evidence"])["total_duration_s"] == 11 * 3600 + 600
    assert by_hunt(findings, "horizontal_scan")[0]["port"] == 445
    assert result.counts["alarms.beacon"] == 1 and result.counts["findings.strobe"] == 0


def test_benign_traffic_alone_raises_no_alarm(generated):
    benign, _ = generated
    findings = run_hunts([flows(benign)], "named_flows", FLOW_HUNTS).findings
    assert findings.num_rows == 0 or pc.max(findings["score"]).as_py() < ALARM
    # Every benign pair is judged as a beacon, and all stay under RITA's 50% listing threshold.
    config = HuntConfig()
    pairs = merge_all(PAIRS, PAIRS.partials(flows(benign), config), config)
    raw = [beacon_evidence(np.array(p["times"]), np.array(p["sizes"]), p["first"], p["last"], key[0] // 1_000_000,
                           config) for key, p in pairs.items()]
    assert len(raw) > 100 and all(evidence is not None for evidence in raw)
    assert max(evidence["beacon_score"] for evidence in raw) < 0.5


def test_strobe_over_an_hour_horizon():
    config = HuntConfig(horizon_us=3_600_000_000)  # strobe = one connection a second: 3600 in the hour
    rows = [flow("10.1.0.95", "10.1.0.30", DAY + index * 800_000, port=53, proto="udp") for index in range(4_000)]
    rows += [flow("10.1.0.5", "10.1.0.30", DAY + index * 9_000_000, port=53, proto="udp") for index in range(400)]
    findings = run_hunts([flows(rows)], "named_flows", ["strobe", "beacon"], config).findings
    strobes = by_hunt(findings, "strobe")
    assert [(row["src"], row["score"]) for row in strobes] == [("10.1.0.95", 1.0)]
    assert all(row["src"] != "10.1.0.95" for row in by_hunt(findings, "beacon"))  # strobes are not beacons


def base32_label(rng: random.Random, length: int) -> str:
    return base64.b32encode(rng.randbytes(length)).decode("ascii").rstrip("=").lower()[:length]


def generated_dns() -> list[dict]:
    rng = random.Random(3)
    words = ["www", "mail", "api", "cdn", "img", "static", "login", "news", "docs", "shop", "media", "assets"]
    rows = []
    for index in range(6_000):
        domain = rng.choice(["example.com", "example.co.uk", "provider.net", "maps.org", "video.example.net"])
        # A CDN-like zone with hundreds of distinct, short, wordy names.
        name = f"{rng.choice(words)}{rng.randint(1, 400)}.{domain}" if domain == "provider.net" else \
            f"{rng.choice(words)}.{domain}"
        rows.append({"c_ip": f"10.1.0.{rng.randint(1, 30)}", "query": name, "req_type": rng.choice(["A", "AAAA"]),
                     "req_time": DAY + index * 10_000_000})
    for index in range(1_500):
        payload = ".".join(base32_label(rng, 50) for _ in range(2))
        rows.append({"c_ip": "10.1.0.66", "query": f"{payload}.t.tunnel-domain.org.", "req_type": "TXT",
                     "req_time": DAY + index * 40_000_000})
    return rows


def test_planted_dns_tunnel_ranks_first():
    findings = run_hunts([dns(generated_dns())], "dns", ["dns_tunnel"]).findings
    rows = findings.to_pylist()
    assert (rows[0]["dst"], rows[0]["rank"]) == ("tunnel-domain.org", 1)
    assert rows[0]["score"] >= ALARM
    assert json.loads(rows[0]["evidence"])["clients"] == ["10.1.0.66"]
    assert all(row["score"] < ALARM for row in rows[1:])  # provider.net: many names, but short and wordy


def test_reverse_lookups_are_not_tunnels():
    rng = random.Random(5)
    # IPv6 PTR names: 32 random hex nibbles, long and high-entropy like a tunnel's, but no payload.
    nibbles = [".".join(rng.choice("0123456789abcdef") for _ in range(28)) for _ in range(2_000)]
    reverse = [{"query": f"{name}.8.b.d.0.1.0.0.2.ip6.arpa", "req_type": "PTR", "req_time": DAY} for name in nibbles]
    control = [{"query": f"{name}.example.org", "req_type": "PTR", "req_time": DAY} for name in nibbles]
    result = run_hunts([dns(reverse)], "dns", ["dns_tunnel"])
    assert result.findings.num_rows == 0 and result.counts["unattributed"] == len(reverse)  # counted, not lost
    assert run_hunts([dns(control)], "dns", ["dns_tunnel"]).findings["score"].to_pylist()[0] >= ALARM


def test_hunts_that_do_not_fit_the_table_are_refused():
    with pytest.raises(ValueError, match="dns_tunnel"):
        run_hunts([], "named_flows", ["dns_tunnel"])


# ------------------------------------------------------------------ failed attempts, caps, allow-list

def test_failed_attempts_from_conn_state_or_packet_counts():
    rows = [flow("a", "b", DAY, state="REJ"), flow("a", "b", DAY, state="SF"),
            flow("a", "b", DAY, state="RSTO", c_pkt=3, s_pkt=1),  # SYN, SYN-ACK, ACK, RST: a connect() probe
            flow("a", "b", DAY, state="RSTO", c_pkt=8, s_pkt=70),  # a page, then the browser reset
            flow("a", "b", DAY, state=None, c_pkt=1, s_pkt=1),  # SYN, RST back: no handshake
            flow("a", "b", DAY, state=None, c_pkt=8, s_pkt=7),  # a conversation
            flow("a", "b", DAY, state=None, proto="udp", c_pkt=1, s_pkt=0),  # never answered
            flow("a", "b", DAY, state=None, proto="udp", c_pkt=1, s_pkt=1),
            flow("a", "b", DAY, state=None, c_pkt=None, s_pkt=None)]  # no state, no packet counts (ssl.log): unknown
    table = pa.Table.from_batches([flows(rows)])
    assert failed_attempts(table).to_pylist() == [True, False, True, False, True, False, True, False, None]


def test_cap_bounds_lists_and_marks_the_key(generated):
    _, planted = generated
    config = HuntConfig(cap=100)
    result = run_hunts([flows(planted)], "named_flows", ["scan"], config)
    vertical = by_hunt(result.findings, "vertical_scan")[0]
    assert vertical["capped"] and vertical["connections"] == 1024  # counts stay exact
    assert json.loads(vertical["evidence"])["failed_ports"] == 100
    assert result.counts["capped.vertical_scan"] == 1


def test_allow_list_suppresses_hosts_networks_domains_and_pairs(generated):
    benign, planted = generated
    allow = AllowList.parse([
        "# known good",
        "10.1.0.97            # the vulnerability scanner",
        "10.2.0.0/24 scan     # this network may be swept",
        "evil.example beacon  # apex of update.evil.example",
        "192.0.2.22 strobe    # another hunt: does not touch the long connection",
    ])
    result = run_hunts([flows(benign + planted)], "named_flows", FLOW_HUNTS, allow=allow)
    sources = {(row["hunt"], row["src"]) for row in result.findings.to_pylist()}
    assert ("vertical_scan", "10.1.0.97") not in sources
    assert ("beacon", "10.1.0.99") not in sources
    assert ("long", "10.1.0.98") in sources
    assert result.counts["suppressed.vertical_scan"] == 1 and result.counts["suppressed.beacon"] == 1
    # The horizontal scan's targets are not a finding's src/dst: only a host or network that is one suppresses.
    assert ("horizontal_scan", "10.1.0.96") in sources


@pytest.mark.parametrize("line, message", [
    ("10.0.0.0/33", "not a network"), ("example.com teleport", "unknown hunt"), ("a b c", "expected"),
    ("..", "not a host"),
])
def test_allow_list_errors_name_the_line(line, message):
    with pytest.raises(AllowListError, match=f"line 2: .*{message}"):
        AllowList.parse(["10.0.0.1", line])


# ------------------------------------------------------------------ order, Beam, command line

def shuffled_batches(rows: list[dict], seed: int, make=flows) -> list[pa.RecordBatch]:
    order = list(rows)
    random.Random(seed).shuffle(order)
    cut = len(order) // 3
    return [make(order[:cut]), make(order[cut:2 * cut]), make(order[2 * cut:])]


def comparable(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def test_same_findings_whatever_the_order_and_batching(generated):
    benign, planted = generated
    rows = benign + planted
    reference = comparable(run_hunts([flows(rows)], "named_flows", FLOW_HUNTS).findings)
    for seed in (1, 2):
        assert comparable(run_hunts(shuffled_batches(rows, seed), "named_flows", FLOW_HUNTS).findings) == reference
    dns_rows = generated_dns()
    dns_reference = comparable(run_hunts([dns(dns_rows)], "dns", ["dns_tunnel"]).findings)
    assert comparable(run_hunts(shuffled_batches(dns_rows, 5, dns), "dns", ["dns_tunnel"]).findings) == dns_reference


def test_sliding_horizons_judge_every_horizon_that_holds_the_records(generated):
    _, planted = generated
    config = HuntConfig(horizon_us=2 * 3_600_000_000, slide_us=3_600_000_000)
    findings = run_hunts([flows(planted)], "named_flows", ["scan"], config).findings
    vertical = by_hunt(findings, "vertical_scan")
    # The scan runs at 10:00-10:01 UTC: the horizons starting 09:00 and 10:00 both hold all of it.
    starts = sorted(row["horizon_start"].hour for row in vertical)
    assert starts == [9, 10] and {row["connections"] for row in vertical} == {1024}
    with pytest.raises(ValueError, match="divide"):
        HuntConfig(horizon_us=DAY_US, slide_us=7 * 3_600_000_000)


@pytest.mark.parametrize("config", [HuntConfig(), HuntConfig(horizon_us=6 * 3_600_000_000, slide_us=3_600_000_000)],
                         ids=["day", "sliding"])
def test_beam_pipeline_equals_the_plain_functions(generated, config):
    benign, planted = generated
    rows = benign + planted
    reference = comparable(run_hunts([flows(rows)], "named_flows", FLOW_HUNTS, config).findings)
    batches = shuffled_batches(rows, 11)
    transform = HuntFindings("named_flows", frozenset(FLOW_HUNTS), config)
    found = collect(lambda pipeline: (pipeline | beam.Create(batches) | transform)["findings"])
    table = pa.Table.from_pylist(sorted(found, key=lambda row: (row["hunt"], row["rank"])),
                                 schema=run_hunts([], "named_flows", FLOW_HUNTS).findings.schema)
    assert comparable(table) == reference


def write_conn_log(path: Path, rows: list[dict]) -> None:
    """Zeek JSON conn.log lines for generated flows."""
    lines = []
    for index, row in enumerate(rows):
        lines.append(json.dumps({
            "ts": row["time_start"] / 1e6, "uid": f"C{index}", "id.orig_h": row["c_ip"], "id.orig_p": row["c_port"],
            "id.resp_h": row["s_ip"], "id.resp_p": row["s_port"], "proto": row["proto"],
            "duration": (row["time_end"] - row["time_start"]) / 1e6, "orig_bytes": row["c_bytes"],
            "resp_bytes": row["s_bytes"], "conn_state": row["conn_state"], "orig_pkts": row["c_pkt"],
            "resp_pkts": row["s_pkt"]}))
    path.write_text("\n".join(lines) + "\n")


def test_command_writes_ranked_findings_byte_identical_in_any_order_and_runner_mode(generated, tmp_path):
    _, planted = generated
    outputs = []
    for seed in (1, 2):
        folder = tmp_path / f"logs{seed}"
        folder.mkdir()
        order = list(planted)
        random.Random(seed).shuffle(order)
        write_conn_log(folder / "conn.log", order)
        (folder / "notes.bin").write_bytes(b"\x00\x01 not a log")  # dead-lettered, not fatal
        allow = tmp_path / "allow.txt"
        allow.write_text("10.1.0.96 scan\n")
        out = tmp_path / f"out{seed}"
        # The second run also changes runner mode: several worker processes, other bundles.
        runner = [] if seed == 1 else ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
        status = cli.main(["hunt", "--table", "named_flows", "--hunt", "beacon,long,strobe,scan", "--allow", str(allow),
                           "--param", "alarm=0.6", "--output", str(out), str(folder), *runner])
        assert status == 0
        outputs.append(out)
    first, second = ((out / "hunts" / "part-00000-of-00001.parquet").read_bytes() for out in outputs)
    assert first == second
    table = pq.read_table(outputs[0] / "hunts")
    assert [(row["hunt"], row["rank"], row["src"]) for row in table.to_pylist() if row["rank"] == 1] == [
        ("beacon", 1, "10.1.0.99"), ("long", 1, "10.1.0.98"), ("vertical_scan", 1, "10.1.0.97")]
    summary = json.loads((outputs[0] / "summary.json").read_text())
    assert summary["records"] == len(planted) and summary["suppressed.horizontal_scan"] == 1
    rejected = pq.read_table(outputs[0] / "rejected").to_pylist()
    assert summary["rejected_files"] == 1 and rejected[0]["source_file"].endswith("notes.bin")
    assert summary["findings.strobe"] == 0 and "strobe" in summary["listed_when"] and summary["alarm"] == 0.6


@pytest.mark.parametrize("args, message", [
    (["--table", "named_flows", "--hunt", "dns_tunnel"], "do not apply to the named_flows table"),
    (["--table", "dns", "--hunt", "beacon"], "do not apply to the dns table"),
    (["--table", "named_flows", "--hunt", "scan", "--allow", "/nonexistent/allow"], "cannot read the allow-list"),
    (["--table", "named_flows", "--hunt", "scan", "--param", "nope=1"], "unknown hunt parameter"),
    (["--table", "named_flows", "--hunt", "scan", "--param", "vertical_thresholds=9,8,7,6"], "must increase"),
    (["--table", "named_flows", "--hunt", "scan", "--slide", "7h"], "divide the horizon"),
])
def test_user_errors_end_with_one_line(args, message, generated, tmp_path, capsys):
    _, planted = generated
    write_conn_log(tmp_path / "conn.log", planted[:10])
    status = cli.main(["hunt", *args, "--output", str(tmp_path / "out"), str(tmp_path / "conn.log")])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1 and message in error


# ------------------------------------------------------------------ real captures and logs

def read_records(paths: list[str], table: str) -> list[pa.RecordBatch]:
    items = list(formats.parse_paths([str(path) for path in paths], table))
    assert not [item for item in items if isinstance(item, Rejected)]
    return [item.records for item in items if isinstance(item, Batch) and item.records.num_rows]


def test_real_vertical_scan_ranks_first(tmp_path):
    # The file's name does not say conn.log, and Zeek JSON has no #path header: link it under the name Zeek gives.
    (tmp_path / "conn.log").symlink_to(shared_data("labelled/portscans/vertical_conn.log"))
    rows = by_hunt(run_hunts(read_records([tmp_path / "conn.log"], "named_flows"), "named_flows", FLOW_HUNTS).findings,
                   "vertical_scan")
    assert (rows[0]["src"], rows[0]["dst"]) == ("192.168.1.9", "45.33.32.156")  # nmap -> scanme.nmap.org
    assert rows[0]["score"] >= ALARM


def test_real_horizontal_spread_ranks_first_below_the_alarm():
    rows = by_hunt(run_hunts(read_records([shared_data("labelled/portscans/horizontal_conn.log")], "named_flows"),
                             "named_flows", FLOW_HUNTS).findings, "horizontal_scan")
    # 10 unanswered hosts on port 80 (S0): past Slips' 5, short of Zeek's 25, so listed but not an alarm.
    assert (rows[0]["src"], rows[0]["port"]) == ("10.0.2.112", 80)
    assert json.loads(rows[0]["evidence"])["failed_hosts"] == 10
    assert rows[0]["score"] < ALARM


def test_real_syn_scan_capture_ranks_first():
    findings = run_hunts(read_records([shared_data("pcaps/attacks/ndpi_synscan.pcap")], "named_flows"),
                         "named_flows", FLOW_HUNTS).findings
    top = by_hunt(findings, "vertical_scan")[0]
    assert (top["src"], top["dst"]) == ("172.16.0.8", "64.13.134.52")
    assert top["score"] >= 0.99 and json.loads(top["evidence"])["failed_ports"] >= 990


@pytest.mark.parametrize("capture", ["pcaps/mixed/nfstream_skype.pcap", "pcaps/mixed/ndpi_netflix.pcap",
                                     "pcaps/mixed/ndpi_1kxun.pcap", "pcaps/tls/ndpi_alexa-app.pcapng",
                                     "pcaps/http/csanders_http_espn.pcapng"])
def test_real_benign_captures_raise_no_flow_alarm(capture):
    # WRCCDC has no conn.log, so everyday application captures are the flow hunts' background.
    findings = run_hunts(read_records([shared_data(capture)], "named_flows"), "named_flows", FLOW_HUNTS).findings
    assert findings.num_rows == 0 or pc.max(findings["score"]).as_py() < ALARM


def test_real_dns2tcp_tunnel_ranks_first():
    findings = run_hunts(read_records([shared_data("pcaps/dns/dns2tcp_tunnel_netrack_2018-03-23.pcap")], "dns"),
                         "dns", ["dns_tunnel"]).findings.to_pylist()
    assert (findings[0]["dst"], findings[0]["score"]) == ("hidemyself.org", 1.0)


def test_real_labelled_tunnel_names_outrank_plain_dns():
    import csv

    path = shared_data("labelled/dns_tunnel_netrack/test.csv")
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        labelled = [(label, query) for label, query in csv.reader(handle)]
    rows = [{"c_ip": "10.0.0.1", "query": query, "req_time": DAY + index} for index, (_, query) in enumerate(labelled)]
    findings = run_hunts([dns(rows)], "dns", ["dns_tunnel"]).findings.to_pylist()
    from beamlytics.schemas.domains import split_name

    tunnel_domains = {split_name(query)[0] for label, query in labelled if label == "1"}
    plain_domains = {split_name(query)[0] for label, query in labelled if label == "0"}
    assert not tunnel_domains & plain_domains - {None}
    assert findings[0]["dst"] in tunnel_domains and findings[1]["dst"] in tunnel_domains
    assert all(row["score"] < ALARM for row in findings if row["dst"] in plain_domains)


def test_real_wrccdc_background_stays_below_the_alarm():
    batches = read_records([shared_data("logs/zeek/wrccdc2018/dns.log.gz")], "dns")
    findings = run_hunts(batches, "dns", ["dns_tunnel"]).findings
    assert findings.num_rows == 0  # no zone reaches RITA's 100 distinct subdomains in these 21 minutes
    # Even listing every zone with a single subdomain, none reaches the alarm.
    everything = run_hunts(batches, "dns", ["dns_tunnel"], HuntConfig(tunnel_subdomain_thresholds=(1, 500, 800, 1000)))
    assert everything.findings.num_rows > 100
    assert pc.max(everything.findings["score"]).as_py() < ALARM
