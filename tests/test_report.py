"""Evidence in words, the `show` and `report` commands, the HTML report in a real headless Chromium."""
import collections
import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beamlytics import features, schemas, synthetic
from beamlytics.pipelines import cli
from beamlytics.report import folder, html, incidents, words
from tests.test_incidents import ALARM_RATE, SCENARIO, detect_synthetic

MINUTE = 60_000_000
T0 = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("table, key_kind, feature, value, text", [
    ("dns", "c_ip", "records", 2114, "2,114 queries"),
    ("dns", "c_ip", "records", 1, "1 query"),
    ("dns", "c_ip", "distinct_peers", 1, "1 distinct server"),
    ("dns", "name", "distinct_peers", 12, "12 distinct clients"),
    ("http", "c_ip", "distinct_names", 3, "3 distinct hosts"),
    ("dns", "c_ip", "nxdomain_ratio", 0.94, "94% answered NXDOMAIN"),
    ("http", "c_ip", "error_ratio", 0.5, "50% HTTP errors"),
    ("named_flows", "c_ip", "c_bytes", 1_234_567, "1.23 MB sent"),
    ("named_flows", "c_ip", "s_pkt", 1, "1 packet received"),
    ("dns", "c_ip", "max_query_length", 63, "a longest name of 63 characters"),
])
def test_quantities_carry_their_units(table, key_kind, feature, value, text):
    assert words.quantity(table, key_kind, feature, value) == text


def score_row(detector, evidence, params, value=20.0, threshold=16.0, direction="up", score=1.0, feature="records"):
    return {"table": "dns", "key_kind": "c_ip", "feature": feature, "detector": detector, "value": value,
            "threshold": threshold, "direction": direction, "score": score, "evidence": json.dumps(evidence),
            "params": json.dumps(params)}


def test_gaussian_reason_counts_standard_deviations_from_the_mean():
    row = score_row("gaussian", {"mean": 10.0, "std": 2.0, "n": 30}, {"k": 3.0})
    assert words.reason(row, 60) == ("20 queries is 5 standard deviations above this endpoint's mean of 10 "
                                     "over 30 windows (limit 16, k = 3)")


def test_iqr_reason_names_the_quartiles_and_the_fence():
    row = score_row("iqr", {"q1": 2.0, "q3": 3.0, "iqr": 1.0, "n": 29}, {"k": 1.5}, value=5.0, threshold=4.5)
    assert words.reason(row, 60) == ("5 queries is above the fence 4.5: this endpoint's middle half of 29 windows "
                                     "lies between 2 and 3, and the fence is 1.5 times that spread beyond it")


def test_poisson_reason_turns_the_rate_per_slot_into_records_per_window():
    # λ = 0.05 records per 2-second slot → 1.5 records per minute.
    row = score_row("poisson", {"lambda": 0.05, "Ra": 0.2}, {"slot_seconds": 2.0}, value=217.0, threshold=0.7,
                    score=0.61)
    assert words.reason(row, 60) == ("217 queries in 1 min; its learned rate gives about 1.5 per 1 min; the jump "
                                     "brought its health score (1 while it behaves as learned) down to 0.2, below "
                                     "the alarm level 0.7")


def test_spot_reason_gives_the_risk_and_the_chance():
    row = score_row("spot", {"up_anomaly_threshold": 16.0, "probability": 2e-6}, {"q": 1e-4})
    assert words.reason(row, 60) == ("20 queries is above the level 16 that extreme-value statistics of this "
                                     "endpoint's history put at a risk of 0.0001 per window; a value this extreme "
                                     "has a chance of 2e-06 per window")


def test_spot_reason_when_the_fitted_tail_ends_below_the_value():
    row = score_row("spot", {"up_anomaly_threshold": 6.0, "probability": 0.0}, {"q": 1e-4}, value=7.0, threshold=6.0)
    assert words.reason(row, 60).endswith("; the fitted tail ends below it (a chance of 0)")


def test_limits_are_in_the_features_units():
    assert words.limits("gaussian", {"mean": 10.0, "std": 2.0}, {"k": 3.0}) == (4.0, 16.0)
    assert words.limits("iqr", {"q1": 2.0, "q3": 4.0, "iqr": 2.0}, {}) == (-1.0, 7.0)
    assert words.limits("spot", {"up_anomaly_threshold": 9.0}, {}) == (None, 9.0)
    assert words.limits("poisson", {"lambda": 0.1}, {}) == (None, None)


def incident(**overrides):
    measures = [
        {"feature": "records", "fired": True, "peak": 480.0, "usual": 12.0, "threshold": 30.0},
        {"feature": "distinct_names", "fired": False, "peak": 470.0, "usual": 10.0, "threshold": None},
        {"feature": "nxdomain_ratio", "fired": False, "peak": 0.9, "usual": 0.0, "threshold": None},
    ]
    row = {"table": "dns", "key_kind": "c_ip", "key": "10.1.2.3", "start": T0, "end": T0 + 4 * MINUTE,
           "window_seconds": 60.0, "records": 2114, "distinct_names": 1873, "distinct_peers": 2,
           "top_domains": [{"value": "pirate.sea", "count": 1870}, {"value": "example.com", "count": 3}],
           "measures": measures, "features_fired": ["records"], "usual_from": "own history"}
    row.update(overrides)
    return row


def peak_verdict(judged_by="own history", p_value=1 / 9645):
    """The verdict of an incident's busiest window: queries and distinct names fired."""
    return {"table": "dns", "window_start": T0 + 2 * MINUTE, "p_value": p_value, "evidence": [
        {"feature": "records", "fired": True, "value": 480.0, "expected": 3.0, "threshold": 30.0,
         "p_value": p_value / 2, "judged_by": judged_by},
        {"feature": "nxdomain_ratio", "fired": True, "value": 0.9, "expected": 0.0, "threshold": 0.25,
         "p_value": p_value, "judged_by": judged_by},
        {"feature": "distinct_peers", "fired": False, "value": 2.0, "expected": 1.0, "threshold": 4.0,
         "p_value": 0.5, "judged_by": judged_by}]}


def test_incident_evidence_in_words():
    peak_row = score_row("gaussian", {"mean": 12.0, "std": 6.0, "n": 100}, {"k": 3.0}, value=480.0, threshold=30.0)
    assert words.incident_evidence(incident(), peak_verdict(), peak_row) == (
        "2,114 queries to 1,873 distinct names (1,870 of them under pirate.sea) with 2 distinct servers in 4 min; "
        "at most 480 queries, 470 distinct names, 90% answered NXDOMAIN in 1 min; usual for this host in 1 min: "
        "12 queries, 10 distinct names, 0% answered NXDOMAIN. Why: in its worst 1 min (from 00:02 UTC), 480 queries "
        "where the alarm level was 30 and the median of all hosts 3; 90% answered NXDOMAIN where the alarm level was "
        "25% and the median of all hosts 0%: unusual both for its own history and among all hosts; a normal window "
        "goes this far with a chance of 1 in 9,645; its own gaussian detector: 480 queries is 78 standard deviations "
        "above this endpoint's mean of 12 over 100 windows (limit 30, k = 3).")


def test_a_new_host_is_compared_with_the_population_and_unread_records_fall_back_on_windows():
    text = words.incident_evidence(incident(usual_from="population median", records=None),
                                   peak_verdict("population", p_value=1e-9))
    assert text.startswith("480 queries in its busiest window in 4 min;")
    assert "usual for hosts here (it has no history of its own) in 1 min: 12 queries" in text
    assert text.endswith("unusual among all hosts (too little history of its own to judge it by); a normal window "
                         "goes this far with a chance of less than 1 in a million.")
    for jargon in ("λ", "lambda", "eta", "fD", "C2", "Ra"):
        assert jargon not in text


def plotted_rows(detector, statuses, values, evidence):
    return [{"table": "dns", "key_kind": "c_ip", "key": "h", "feature": "records", "detector": detector,
             "window_start": T0 + i * MINUTE, "window_end": T0 + (i + 1) * MINUTE, "value": value,
             "status": status, "evidence": json.dumps(evidence), "threshold": None}
            for i, (status, value) in enumerate(zip(statuses, values))]


def test_plot_marks_every_reported_window_and_draws_the_band_and_the_alarm_level():
    # Minute 2 its own detector calls anomalous, but its verdict did not report it: it is not marked.
    statuses = ["normal"] * 2 + ["anomaly"] + ["normal"] * 2 + ["anomaly", "anomaly"] + ["normal"] * 3
    rows = plotted_rows("gaussian", statuses, [3, 4, 9, 5, 4, 90, 80, 4, 3, 4], {"mean": 4.0, "std": 1.0})
    incident = {"start": T0 + 5 * MINUTE, "end": T0 + 7 * MINUTE, "window_seconds": 60.0, "key": "h"}
    reported = frozenset({T0 + 5 * MINUTE, T0 + 6 * MINUTE})
    svg = html.plot_svg(rows, incident, "records", {"k": 3.0}, reported)
    assert svg.count('class="alarm"') == 2
    assert svg.count('class="band"') == 1
    assert svg.count('class="series"') == 1
    assert 'class="level"' not in svg  # the incident has no measure: no alarm level to draw
    measured = {**incident, "measures": [{"feature": "records", "threshold": 40.0}]}
    [level_y] = re.findall(r'class="level" x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)"', html.plot_svg(
        rows, measured, "records", {"k": 3.0}, reported))
    # y runs from 0 at HEIGHT - 24 up to 1.08 × the largest value (90) at 20.
    top = 90 * 1.08
    assert float(level_y) == pytest.approx(html.HEIGHT - 24 - 40.0 / top * (html.HEIGHT - 44), abs=0.1)


def test_poisson_plot_draws_the_expected_rate_instead_of_a_band():
    rows = plotted_rows("poisson", ["normal", "anomaly"], [3, 90], {"lambda": 0.05})
    svg = html.plot_svg(rows, {"start": T0 + MINUTE, "end": T0 + 2 * MINUTE, "window_seconds": 60.0, "key": "h"},
                        "records", {"slot_seconds": 1.0})
    assert 'class="expected"' in svg and 'class="band"' not in svg


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    logs, out = detect_synthetic(tmp_path_factory, "gaussian", {"weird.log": "<script>alert(1)</script> not a log\n"})
    return logs, out, Path(folder.write_report(str(out)))


def test_detect_prints_the_top_incidents(tmp_path, capsys):
    logs = tmp_path / "zeek"
    synthetic.write_zeek_logs(str(logs), SCENARIO)
    assert cli.main(["detect", "--table", "dns", "--alarm-rate", ALARM_RATE, "--detector", "poisson",
                     "--output", str(tmp_path / "o"),
                     str(logs)]) == 0
    printed = capsys.readouterr().out
    [table_line] = [line for line in printed.splitlines() if re.match(r"1\s{2,}", line)]
    assert SCENARIO.anomalous_client in table_line
    assert "1 incident(s) from 3 reported endpoint-window(s); top 1 by verdict score" in printed
    assert printed.rstrip().splitlines()[-1] == table_line  # the table comes last, below the summary


def test_show_prints_the_incident_and_its_records(detected, capsys):
    logs, out, _ = detected
    top = folder.read_incidents(str(out))[0].to_pylist()[0]
    assert cli.main(["show", top["incident_id"][:8], str(out), "--limit", "0"]) == 0
    printed = capsys.readouterr().out
    assert top["evidence"] in printed
    dns_log = logs / SCENARIO.day.isoformat() / "dns.log"
    expected = [line.split("\t")[9] for line in dns_log.read_text().splitlines()
                if not line.startswith("#") and line.split("\t")[2] == top["key"]
                and top["start"].timestamp() <= float(line.split("\t")[0]) < top["end"].timestamp()]
    assert f"{len(expected)} record(s)" in printed
    assert all(name in printed for name in expected)


@pytest.mark.parametrize("args, message", [
    (["show", "ffff", "{out}"], "no incident 'ffff' in"),
    (["show", "0", "{out}", "--limit", "-1"], "--limit must be 0 (all records) or more"),
    (["show", "1", "{missing}"], "no incidents in"),
    (["report", "{missing}"], "no summary.json in"),
])
def test_user_errors_of_show_and_report_are_one_line(detected, tmp_path, capsys, args, message):
    _, out, _ = detected
    filled = [arg.format(out=out, missing=tmp_path / "nothing") for arg in args]
    assert cli.main(filled) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]


def test_a_damaged_output_file_is_one_line_not_a_traceback(detected, tmp_path, capsys):
    _, out, _ = detected
    damaged = shutil.copytree(out, tmp_path / "out")
    (damaged / "scores" / "part-00000-of-00001.parquet").write_bytes(b"not parquet")
    assert cli.main(["report", str(damaged)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("beamlytics report: error: cannot read ") and "scores/part-00000-of-00001.parquet" in line


def test_report_is_self_contained_escaped_and_identical_on_every_run(detected, tmp_path):
    _, out, path = detected
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="(?!#)', page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the rejected line's excerpt, escaped
    again = folder.write_report(str(out), str(tmp_path / "again.html"))
    assert Path(again).read_bytes() == path.read_bytes()


def test_every_output_column_is_in_the_guide():
    guide = (REPO / "docs" / "guide.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^### `([a-z_/.]+)`\n(.*?)(?=^### |\Z)", guide, flags=re.M | re.S))
    documented = {
        **schemas.TABLES, "rejected/": schemas.REJECTED, "scores/": schemas.SCORES,
        "anomalies/": schemas.ANOMALIES, "verdicts/": schemas.VERDICTS, "incidents/": schemas.INCIDENTS,
        **{f"features/ ({table})": features.feature_schema(table) for table in schemas.TABLES},
    }
    missing = []
    for name, schema in documented.items():
        section = sections.get(name.split(" ")[0], "")
        missing += [f"{name}.{field.name}" for field in schema if f"| `{field.name}` |" not in section]
    assert not missing, missing


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; "
                                    ".ci/run installs it)")


def headless(url, *flags):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr",
               "--v=1", *flags, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def console_messages(stderr):
    # Chromium logs each console message as `INFO:CONSOLE(12)] "text", source: URL (12)` (older builds: `CONSOLE:12]`).
    return re.findall(r":CONSOLE[:(]\d+\)?\] (.*)", stderr)


@needs_chromium
def test_the_console_check_sees_an_error_when_there_is_one(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('deliberate'); undefinedFunction();</script></body></html>")
    messages = console_messages(headless(page.as_uri(), "--dump-dom").stderr)
    assert any("deliberate" in message for message in messages)


@needs_chromium
def test_report_renders_in_headless_chromium_with_its_plots(detected, tmp_path):
    _, out, path = detected
    found = folder.read_incidents(str(out))[0].to_pylist()
    dumped = headless(path.as_uri(), "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert console_messages(dumped.stderr) == []
    plots = re.findall(r'<svg class="plot"', dumped.stdout)
    expected_plots = sum(min(len(row["features_fired"]), html.PLOTTED_FEATURES) for row in found[:html.DETAILED])
    assert len(plots) == expected_plots > 0
    assert dumped.stdout.count('id="i') == min(len(found), html.DETAILED)

    shot = tmp_path / "report.png"
    headless(path.as_uri(), f"--screenshot={shot}", "--window-size=1000,8000", "--hide-scrollbars")
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round()
    alarm_red = (abs(pixels[..., 0] - 0xC0) < 8) & (abs(pixels[..., 1] - 0x30) < 8) & (abs(pixels[..., 2] - 0x30) < 8)
    assert alarm_red.sum() > 20  # the plots, with their alarm markers, were drawn


def test_an_empty_result_says_why(tmp_path, capsys):
    logs = tmp_path / "zeek"
    synthetic.write_zeek_logs(str(logs), dataclasses.replace(SCENARIO, anomaly_minutes=0))
    out = tmp_path / "out"
    assert cli.main(["detect", "--table", "dns", "--alarm-rate", ALARM_RATE, "--detector", "gaussian", "--k", "100", "--output", str(out),
                     str(logs)]) == 0
    printed = capsys.readouterr().out
    verdicts = pq.read_table(out / "verdicts").to_pylist()
    statuses = collections.Counter(row["status"] for row in verdicts)
    too_few = sum(row["records"] < 3 for row in verdicts)  # the default --min-records
    assert statuses["alarm"] == 0 and too_few > 0
    assert printed.rstrip().splitlines()[-1] == (
        f"no incidents: none of {statuses['normal']:,} judged endpoint-windows went beyond what --alarm-rate "
        f"{ALARM_RATE} allows (a higher rate finds more, with more false alarms); {too_few:,} window(s) had fewer "
        "than --min-records 3 records")
    assert folder.read_incidents(str(out))[0].num_rows == 0
    page = Path(folder.write_report(str(out))).read_text(encoding="utf-8")
    assert "No incidents: no window of any endpoint was reported." in page


def test_an_endpoint_that_is_a_name_is_not_told_its_own_name_count():
    text = words.incident_evidence(incident(key_kind="name", distinct_names=1, top_domains=[]), peak_verdict())
    assert text.startswith("2,114 queries with 2 distinct clients in 4 min; at most 480 queries, "
                           "90% answered NXDOMAIN in 1 min;")


def test_distinct_counts_past_the_tracking_bound_read_as_at_least():
    text = words.incident_evidence(incident(distinct_exact=False), peak_verdict())
    assert text.startswith("2,114 queries to at least 1,873 distinct names (1,870 of them under pirate.sea) with "
                           "at least 2 distinct servers")


def test_a_noisy_run_lists_the_top_incidents_and_details_fewer(tmp_path_factory, monkeypatch):
    _, out = detect_synthetic(tmp_path_factory, "gaussian", alarm_rate="0.3")  # noisy: 30 % of windows may alarm
    found, _ = folder.read_incidents(str(out))
    assert found.num_rows >= 3
    monkeypatch.setattr(html, "LISTED", 2)
    monkeypatch.setattr(html, "DETAILED", 1)
    page = html.render({}, found, schemas.SCORES.empty_table(), schemas.REJECTED.empty_table(), {})
    assert page.count("<tr><td class=num>") == 2
    assert page.count('<a href="#i') == 1 and page.count("<section") == 1
    assert f"{found.num_rows - 2:,} lower-ranked incidents are not listed here" in page


def test_detect_writes_the_report_into_its_manifest_and_report_never_changes_it_silently(detected, tmp_path, capsys):
    _, out, path = detected
    manifest = json.loads((out / ".beamlytics-manifest.json").read_text())
    assert "report.html" in {entry["path"] for entry in manifest["files"]}
    assert cli.main(["report", str(out)]) == 0  # same bytes: nothing to change
    copied = shutil.copytree(out, tmp_path / "out")
    (copied / "report.html").unlink()
    assert cli.main(["report", str(copied)]) == 2
    assert "write this report elsewhere with --html FILE" in capsys.readouterr().err
    assert cli.main(["report", str(copied), "--html", str(tmp_path / "elsewhere.html")]) == 0
    assert (tmp_path / "elsewhere.html").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("row_group_size", [2, 5, 1 << 20])
def test_reading_only_wanted_rows_gives_the_whole_folder_filtered(detected, tmp_path, row_group_size):
    """`read_reported` and `read_folder(keys=)` decode files only up to their last wanted row; here the rows are
    shuffled (alarms not first, endpoints not together) and the row groups small, against a filter of all rows."""
    _, out, _ = detected
    verdicts = folder.read_folder(str(out / "verdicts"), schemas.VERDICTS)
    scores = folder.read_folder(str(out / "scores"), schemas.SCORES)
    assert incidents.reported(verdicts).num_rows >= 2
    order = np.random.default_rng(7)
    for name, table in (("verdicts", verdicts), ("scores", scores)):
        shuffled = table.take(pa.array(order.permutation(table.num_rows)))
        (tmp_path / name).mkdir()
        for part, rows in enumerate(np.array_split(np.arange(shuffled.num_rows), 3)):
            pq.write_table(shuffled.take(pa.array(rows)), tmp_path / name / f"part-{part}.parquet",
                           row_group_size=row_group_size)
    whole = folder.read_folder(str(tmp_path / "verdicts"), schemas.VERDICTS)
    alarms = whole.filter(pc.and_(pc.equal(whole.column("status"), "alarm"), pc.invert(whole.column("allowed"))))
    assert folder.read_reported(str(tmp_path / "verdicts")).equals(alarms)
    keys = sorted(set(scores.column("key").to_pylist()))[:2]
    whole = folder.read_folder(str(tmp_path / "scores"), schemas.SCORES)
    assert folder.read_folder(str(tmp_path / "scores"), schemas.SCORES, keys).equals(
        whole.filter(pc.is_in(whole.column("key"), pa.array(keys))))
