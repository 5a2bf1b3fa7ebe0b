"""Real attacks embedded in real background: does `beamlytics detect` find the attacker?

`python -m benchmarks.run attacks` (defaults only) or `attacks_all` (defaults, then every
detector). Each case is an attack capture or labelled log from `$BEAMLYTICS_DATA`, parsed
by beamlytics' own parsers, moved into the WRCCDC 2018 background (Zeek dns.log; its
ssl.log as flows, since the set has no conn.log) once onto a background host with clean
history and once as a new host (`benchmarks.embed`), and written back as Zeek JSON. The CLI
`beamlytics detect` runs on each, and its `features/` feed an IsolationForest baseline.
Per case: flagged, attacker windows caught, rank of the true host, false alarms per 1,000
benign endpoint-windows (`benchmarks.attack_metrics`), the attacker counted as its placed
address and its aliases (its other addresses in a capture: `embed.capture_aliases`);
IsolationForest also at the same 0.5 % budget (its top 0.5 % of windows). The aggregates re-judge each run at every rate of
`ALARM_RATES`, by the CLI's rule and, in process, by the rules it is compared with (Fisher's,
which it replaced, the omnibus smaller of the two, and Bonferroni's), with a leave-one-case-out
choice of rate for each and the cells whose own benign share is over the budget. See
docs/evaluation.md.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dataclasses

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from beamlytics import schemas
from beamlytics.detectors.population import Population
from beamlytics.detectors.verdict import VerdictSettings, judge
from benchmarks import attack_metrics, embed
from benchmarks.common import DATA_DIR

BACKGROUND = DATA_DIR / "logs" / "zeek" / "wrccdc2018"
WINDOW_US = 60_000_000  # detect's default window
DETECTORS = ("gaussian", "iqr", "spot", "dspot", "poisson")
# Alarm rates the verdicts are re-judged at (exactly: benchmarks.attack_metrics.rejudged), and the benign budget
# (issue 9: at most 0.5 % of the judged benign endpoint-windows flagged) the leave-one-case-out choice must keep.
ALARM_RATES = (0.001, 0.002, 0.005, 0.01)
BENIGN_BUDGET = 0.005
REFERENCE_RULES = ("fisher", "omnibus", "bonferroni")  # re-judged in process beside the CLI's verdicts ("rate")
FAMILIES = ("rate", *REFERENCE_RULES)
# Where the attack starts, as a share of the background's span: a background host then has
# ~12 minutes of history (as in issue 9's measurement); an attack too long for that starts earlier.
START_SHARE, EARLIEST_SHARE = 0.6, 0.25


@dataclass(frozen=True)
class Case:
    name: str
    table: str
    path: str  # under $BEAMLYTICS_DATA
    attacker: str
    why: str  # where the data's own documentation names the attacker


CASES = (
    Case("synscan", "named_flows", "pcaps/attacks/ndpi_synscan.pcap", "172.16.0.8",
         "nDPI: nmap TCP SYN scan; the one host sending SYNs"),
    Case("ssh_brute", "named_flows", "pcaps/attacks/slips_ssh-bruteforce.pcap", "147.32.80.40",
         "Slips README: nmap ssh-brute against 147.32.80.37:902; the one client"),
    Case("icmp_scan", "named_flows", "pcaps/attacks/slips_test12-icmp-portscan.pcap", "192.168.1.109",
         "Slips test12: ICMP-based scan; the one sender"),
    Case("malware_flows", "named_flows", "pcaps/attacks/slips_test7-malicious.pcap", "192.168.2.16",
         "Slips test7: malware-infected host, a Raspberry Pi scanning ports 23/8080/2323/9527 "
         "(its DHCP lease, 299 of 329 flows)"),
    Case("vertical_scan", "named_flows", "labelled/portscans/vertical_conn.log", "192.168.1.9",
         "Slips port-scans/vertical: nmap of scanme.nmap.org (45.33.32.156) from 192.168.1.9"),
    Case("horizontal_scan", "named_flows", "labelled/portscans/horizontal_conn.log", "10.0.2.112",
         "Slips port-scans/horizontal: one port on many hosts; the one originator"),
    Case("argus_vertical_scan", "named_flows", "labelled/argus/test11-portscan.binetflow", "10.8.0.69",
         "Slips test11: Argus flows of a vertical port scan (SOURCES.md); 10.8.0.69 originates all 66 flows"),
    Case("argus_malware_host", "named_flows", "labelled/argus/test2-malicious.binetflow", "10.8.0.69",
         "Slips test2 (SOURCES.md): a malicious capture, all of it malicious, of one host: 10.8.0.69 originates "
         "6,731 of its 6,751 flows and is the destination of the other 20"),
    Case("dns2tcp_tunnel", "dns", "pcaps/dns/dns2tcp_tunnel_netrack_2018-03-23.pcap", "172.17.0.3",
         "netrack: dns2tcp session to *.hidemyself.org; the one client"),
    Case("malware_dns", "dns", "pcaps/attacks/slips_test7-malicious.pcap", "192.168.2.16",
         "Slips test7: the infected host's queries"),
)


@dataclass(frozen=True)
class Line:
    text: str

    def line(self) -> str:
        return self.text


def ssl_as_flows(path: Path) -> pa.Table:
    """WRCCDC ssl.log rows as `named_flows` (one TLS connection each; no bytes, packets or state)."""
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as log:
        fields: list[str] = []
        for number, line in enumerate(log, start=1):
            if line.startswith("#fields"):
                fields = line.rstrip("\n").split("\t")[1:]
            if line.startswith("#"):
                continue
            record = dict(zip(fields, line.rstrip("\n").split("\t")))
            start = pd.Timestamp(float(record["ts"]), unit="s", tz="UTC")
            rows.append({
                "c_ip": record["id.orig_h"], "c_port": int(record["id.orig_p"]),
                "s_ip": record["id.resp_h"], "s_port": int(record["id.resp_p"]), "proto": "tcp",
                "time_start": start, "time_end": start, "uid": record["uid"],
                "source_tool": "zeek", "source_file": str(path), "source_pos": number,
            })
    return pa.Table.from_pylist(rows, schema=schemas.NAMED_FLOWS)


def background_table(table: str) -> pa.Table:
    if table == "dns":
        return embed.parse_table([str(BACKGROUND / "dns.log.gz")], "dns").table
    return ssl_as_flows(BACKGROUND / "ssl.log.gz")


def detect(inputs: list[str], table: str, output: str, detector: str | None) -> None:
    command = [sys.executable, "-m", "beamlytics.pipelines.cli", "detect", "--quiet", "--table", table,
               "--output", output, *(["--detector", detector] if detector else []), *inputs]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_output(output: str, folder: str) -> pd.DataFrame:
    path = Path(output) / folder
    files = sorted(path.glob("*.parquet"))
    return pd.concat([pq.read_table(file).to_pandas() for file in files], ignore_index=True) if files else pd.DataFrame()


def rejudged_verdicts(output: str, features: pd.DataFrame, rule: str) -> pd.DataFrame:
    """The run's verdicts re-judged in process by another rule: its scores/ against a population fitted on its
    features/, combined by one of `population.COMBINATION_RULES` (Fisher's −2 Σ ln p, the rule before the harmonic
    one; the omnibus smaller of the two p's), or ("bonferroni") not joinable across features, so each window's p is
    the Bonferroni-corrected minimum (`verdict._window_tests`' fallback). The references the default rule is
    compared with."""
    scores = read_output(output, "scores")
    if scores.empty:
        return pd.DataFrame()
    names = sorted(scores["feature"].unique())
    windows = pa.Table.from_pandas(features, preserve_index=False)
    population = Population.of_windows(windows, names, VerdictSettings().min_records)
    if rule == "bonferroni":
        population = Population({key: dataclasses.replace(tail, pool=None) for key, tail in population.tails.items()})
    else:
        population = dataclasses.replace(population, rule=rule)
    with_records = scores.merge(features[["table", "key_kind", "key", "window_start", "records"]],
                                on=["table", "key_kind", "key", "window_start"], how="left")
    with_records["params"] = "{}"
    rows = pa.Table.from_pandas(with_records, preserve_index=False).select(schemas.ANOMALIES.names)
    verdicts, _, _ = judge(rows.cast(schemas.ANOMALIES), population, VerdictSettings())
    return verdicts.to_pandas()


def attack_start(background: pa.Table, attack: pa.Table, table: str) -> int:
    first, last = embed.time_span(background, table)
    attack_first, attack_last = embed.time_span(attack, table)
    span, duration = last - first, attack_last - attack_first
    share = min(START_SHARE, max(EARLIEST_SHARE, (span - duration) / span))
    return first + int(share * span)


@dataclass(frozen=True)
class Row:
    case: str
    placement: str
    method: str
    result: attack_metrics.CaseResult
    missed: str | None = None  # for a missed cell of the defaults, its closest attacker window (why it was missed)

    def cells(self) -> list[str]:
        r = self.result
        return [self.case, self.placement, self.method, "yes" if r.flagged else "no",
                f"{r.windows_caught}/{r.attacker_windows}", "-" if r.rank is None else str(r.rank),
                f"{r.alarms_per_1000:.1f}", f"{1000.0 * _benign_share([r]):.1f}"]


HEADER = ["case", "placement", "method", "flagged", "windows", "rank", "alarms/1k benign", "alarms/1k judged benign"]


def run_case(case: Case, attack: pa.Table, background: pa.Table, background_log: str, target: str,
             placement: str, detectors: tuple[str | None, ...], work: str, aliases: tuple[str, ...]) -> list[Row]:
    start_us = attack_start(background, attack, case.table)
    placed = embed.place_attack(attack, case.table, case.attacker, target, start_us)
    attackers = frozenset((target, *embed.placed_aliases(attack, case.attacker, aliases).values()))
    folder = Path(work) / f"{case.name}-{placement}"
    (folder / "attack").mkdir(parents=True)
    embed.write_zeek(placed, case.table, str(folder / "attack"))
    first, last = (pd.Timestamp(t, unit="us", tz="UTC") for t in embed.time_span(placed, case.table))
    rows = []
    for detector in detectors:
        output = str(folder / f"out-{detector or 'default'}")
        detect([background_log, str(folder / "attack")], case.table, output, detector)
        features = read_output(output, "features")
        verdicts = read_output(output, "verdicts")
        run_rate = json.loads((Path(output) / "summary.json").read_text())["alarm_rate"]
        alarms = attack_metrics.rejudged(verdicts, run_rate)
        cli_alarms = verdicts[(verdicts["status"] == "alarm") & ~verdicts["allowed"]] if len(verdicts) else verdicts
        if len(alarms) != len(cli_alarms):
            raise AssertionError(f"{case.name}/{placement}: re-judging at the run's rate gave {len(alarms)} alarms, "
                                 f"the run {len(cli_alarms)}")
        judged = attack_metrics.judged_windows(verdicts)
        result = attack_metrics.case_result(features, alarms, alarms, attackers, first, last, judged)
        missed = None if result.flagged else attack_metrics.closest_attacker_window(verdicts, attackers, first, last)
        rows.append(Row(case.name, placement, f"detect {detector or 'defaults'}", result, missed))
        if detector is None:
            references = [(rule, rejudged_verdicts(output, features, rule)) for rule in REFERENCE_RULES]
            for family, rejudge in (("rate", verdicts), *references):
                for rate in ALARM_RATES:
                    at_rate = attack_metrics.rejudged(rejudge, rate)
                    rows.append(Row(case.name, placement, f"{family} {rate:g}",
                                    attack_metrics.case_result(features, at_rate, at_rate, attackers, first, last,
                                                               attack_metrics.judged_windows(rejudge))))
            forest_alarms, forest_scores = attack_metrics.isolation_forest_scores(features)
            result = attack_metrics.case_result(features, forest_alarms, forest_scores, attackers, first, last)
            rows.append(Row(case.name, placement, "IsolationForest", result))
            at_budget = attack_metrics.top_share(forest_scores, BENIGN_BUDGET)
            result = attack_metrics.case_result(features, at_budget, forest_scores, attackers, first, last)
            rows.append(Row(case.name, placement, f"IsolationForest top {100 * BENIGN_BUDGET:g}%", result))
    return rows


def table_lines(rows: list[Row]) -> list[str]:
    cells = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(cell[i]) for cell in cells) for i in range(len(HEADER))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells]


def aggregate_lines(rows: list[Row]) -> list[str]:
    lines = []
    for method in dict.fromkeys(row.method for row in rows):
        mine = [row.result for row in rows if row.method == method]
        flagged = sum(r.flagged for r in mine)
        top3 = sum(r.rank is not None and r.rank <= 3 for r in mine)
        benign = sum(r.benign_windows for r in mine)
        judged = sum(r.benign_judged for r in mine)
        alarms = sum(r.benign_alarms for r in mine)
        # The budget holds in aggregate when a cell or two is over it by binomial noise: say how many are.
        shares = [_benign_share([r]) for r in mine]
        lines.append(f"aggregate {method}: flagged in {flagged} of {len(mine)}, true host top-3 in {top3} of "
                     f"{len(mine)}, benign alarm rate {100.0 * alarms / judged:.2f}% of judged ({alarms} of {judged}), "
                     f"{100.0 * alarms / benign:.2f}% of all ({benign}); cells over the budget "
                     f"{sum(share > BENIGN_BUDGET for share in shares)} of {len(mine)} (largest "
                     f"{100.0 * max(shares):.2f}%)")
    return lines


def _benign_share(results: list[attack_metrics.CaseResult]) -> float:
    """Benign alarms as a share of the benign windows judged: the unit of issue 9's budget and of the rate."""
    judged = sum(r.benign_judged for r in results)
    return sum(r.benign_alarms for r in results) / judged if judged else 0.0


def leave_one_out_lines(rows: list[Row], family: str = "rate") -> list[str]:
    """For each case: the grid rate flagging most of the other cases' cells with their benign share within the
    budget (ties: the lower rate, fewer alarms), applied to the held-out case's cells."""
    by_rate = {rate: [row for row in rows if row.method == f"{family} {rate:g}"] for rate in ALARM_RATES}
    if not all(by_rate.values()):
        return []
    lines, flagged, cells = [], 0, 0
    for case in dict.fromkeys(row.case for row in by_rate[ALARM_RATES[0]]):
        def fitness(rate: float) -> tuple:
            others = [row.result for row in by_rate[rate] if row.case != case]
            return (_benign_share(others) <= BENIGN_BUDGET, sum(r.flagged for r in others), -rate)
        chosen = max(ALARM_RATES, key=fitness)
        held = [row.result for row in by_rate[chosen] if row.case == case]
        flagged += sum(r.flagged for r in held)
        cells += len(held)
        lines.append(f"leave-one-out {family} {case}: rate {chosen:g} chosen on the others, held-out flagged "
                     f"{sum(r.flagged for r in held)} of {len(held)}, held-out benign {100 * _benign_share(held):.2f}%")
    lines.append(f"leave-one-out {family} total: flagged {flagged} of {cells} held-out cells")
    return lines


def alias_line(case: Case, attack: pa.Table, aliases: tuple[str, ...] | None) -> str:
    """The case's aliases (`embed.capture_aliases`) and the addresses they are placed on, or why it has none."""
    if aliases is None:
        return f"aliases {case.name}: none (a log: no link layer to tell them by)"
    placed = embed.placed_aliases(attack, case.attacker, aliases)
    named = [f"{alias} as {placed[alias]}" if alias in placed else f"{alias} (not in the {case.table} records)"
             for alias in aliases]
    return f"aliases {case.name}: {', '.join(named) or 'none'} (other sources of {case.attacker}'s MAC in the capture)"


def measure(detectors: tuple[str | None, ...]) -> list[Line]:
    rows: list[Row] = []
    alias_lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="beamlytics-attacks-") as work:
        for table in ("named_flows", "dns"):
            background = background_table(table)
            log_folder = Path(work) / f"background-{table}"
            log_folder.mkdir()
            background_log = embed.write_zeek(background, table, str(log_folder))
            # Hosts with clean history: those a default run on the background alone never alarms on.
            detect([background_log], table, str(Path(work) / f"alone-{table}"), None)
            alone = read_output(str(Path(work) / f"alone-{table}"), "verdicts")
            alarmed = set(alone.loc[alone["status"] == "alarm", "key"]) if len(alone) else set()
            newcomer = embed.new_address(background)
            for case in (case for case in CASES if case.table == table):
                attack = embed.fields_like(embed.parse_table([str(DATA_DIR / case.path)], table).table, background)
                host = embed.clean_history_host(background, table, attack_start(background, attack, table),
                                                WINDOW_US, alarmed)
                aliases = embed.capture_aliases(str(DATA_DIR / case.path), case.attacker)
                alias_lines.append(alias_line(case, attack, aliases))
                for placement, target in (("host", host), ("new", newcomer)):
                    rows += run_case(case, attack, background, str(log_folder), target, placement, detectors, work,
                                     aliases or ())
    per_case = [row for row in rows if not row.method.startswith(tuple(f"{family} " for family in FAMILIES))]
    missed = [f"missed {row.case}/{row.placement} ({row.method}): {row.missed}" for row in rows if row.missed]
    return [Line(text) for text in [*alias_lines, *table_lines(per_case), *missed, *aggregate_lines(rows),
                                    *(line for family in FAMILIES for line in leave_one_out_lines(rows, family))]]


@dataclass(frozen=True)
class AttackBenchmark:
    detectors: tuple[str | None, ...]  # None: detect's defaults

    def run(self) -> list[Line]:
        if not BACKGROUND.is_dir():
            return [Line(f"skipped: {BACKGROUND} is missing (set BEAMLYTICS_DATA)")]
        return measure(self.detectors)


DEFAULTS = AttackBenchmark((None,))
EVERY_DETECTOR = AttackBenchmark((None, *DETECTORS))
run = DEFAULTS.run
