"""The HTML report: one self-contained file, inline SVG plots, no script, nothing fetched at view time.

Every text that came from the inputs (names, paths, excerpts of rejected lines) is escaped:
the logs under analysis may well be hostile.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import math
from html import escape
from typing import Any, Mapping, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.report import words
from beamlytics.report.incidents import micros

TOP_LISTS = (("peers", "top_peers"), ("names", "top_names"), ("ports", "top_ports"), ("domains", "top_domains"))
DETAILED = 50  # incidents shown with plots
LISTED = 1000  # incidents in the ranking table; the page stays openable on a noisy run
PLOTTED_FEATURES = 3
CONTEXT_WINDOWS = 60  # windows shown on either side of an incident, at least
WIDTH, HEIGHT, MARGIN = 880, 200, 48

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
.evidence { background: #fff8e6; border-left: 4px solid #e0a030; padding: .4em .8em; }
.num { text-align: right; font-variant-numeric: tabular-nums; } code { font-size: .95em; }
svg.plot { display: block; margin: .5em 0; } .muted { color: #777; }
"""


def render(summary: Mapping[str, Any], incidents: pa.Table, scores: pa.Table, rejected: pa.Table,
           params: Mapping[str, Any], title: str = "beamlytics report", reported: pa.Table | None = None) -> str:
    """The page; `params` are the detector's parameters (anomalies' `params`), for the bands; `reported`,
    the anomalies/ rows (the fired features of reported verdicts), marks the windows that alarmed."""
    ranked = incidents.to_pylist()
    detailed = ranked[:DETAILED]
    series = _series_of(scores, detailed)
    alarms = _alarm_windows(reported)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _summary_section(summary, params, len(ranked)),
        _rejected_section(rejected),
        _ranking_section(ranked),
    ]
    for incident in detailed:
        parts.append(_incident_section(incident, series, params, alarms))
    if len(ranked) > DETAILED:
        parts.append(f'<p class="muted">The other {len(ranked) - DETAILED:,} incidents are in the table above; '
                     "<code>beamlytics show ID OUT</code> prints any of them.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_section(summary: Mapping[str, Any], params: Mapping[str, Any], incident_count: int) -> str:
    facts = [
        ("table", summary.get("table")), ("endpoint key", summary.get("key")),
        ("window", words.duration(float(summary.get("window_seconds", 0)))), ("detector", summary.get("detector")),
        ("files read", summary.get("files")), ("files skipped (feed another table)", summary.get("skipped_files")),
        ("input units read", summary.get("read")), ("parsed", summary.get("parsed")),
        ("rejected", summary.get("rejected")), ("records", summary.get("records")),
        ("records without time or key", summary.get("untimed")), ("endpoint-windows", summary.get("windows")),
        ("not judged: fewer records than --min-records", summary.get("unjudged_too_few_records")),
        ("not judged: nothing to judge them by", summary.get("unjudged_no_model")),
        ("alarm rate (share of normal windows allowed to alarm)", summary.get("alarm_rate")),
        ("endpoint-windows that alarmed, reported", summary.get("alarms")),
        ("alarms the allow-list suppressed", summary.get("allowed")), ("incidents", incident_count),
    ]
    rows = "".join(f"<tr><th>{escape(label)}</th><td class=num>{escape(_fact(value))}</td></tr>"
                   for label, value in facts if value is not None)
    settings = ", ".join(f"{name} = {value}" for name, value in sorted(params.items()))
    shown = f'<p class="muted">Detector parameters: {escape(settings)}</p>' if settings else ""
    return f"<h2>What was read</h2><table>{rows}</table>{shown}"


def _fact(value: Any) -> str:
    return words.number(value) if isinstance(value, (int, float)) else str(value)


def _rejected_section(rejected: pa.Table) -> str:
    if rejected.num_rows == 0:
        return "<h2>Rejected input</h2><p>Nothing was rejected: every line, packet and file was read.</p>"
    reasons: dict[str, list] = collections.defaultdict(list)
    for row in rejected.select(["source_file", "position", "reason", "excerpt"]).to_pylist():
        reasons[row["reason"]].append(row)
    rows = []
    for reason, entries in sorted(reasons.items(), key=lambda item: (-len(item[1]), item[0])):
        first = entries[0]
        example = f"{first['source_file']}:{first['position']}"
        rows.append(f"<tr><td class=num>{len(entries):,}</td><td>{escape(reason)}</td><td><code>{escape(example)}"
                    f"</code><br><code>{escape((first['excerpt'] or '')[:120])}</code></td></tr>")
    return ("<h2>Rejected input</h2><p>Lines, packets or files that could not be read, by reason "
            "(all of them are in <code>OUT/rejected/</code>):</p>"
            "<table><tr><th>count</th><th>reason</th><th>first example</th></tr>" + "".join(rows) + "</table>")


def _ranking_section(ranked: Sequence[Mapping[str, Any]]) -> str:
    if not ranked:
        return "<h2>Incidents</h2><p>No incidents: no window of any endpoint was reported.</p>"
    rows = "".join(
        f"<tr><td class=num>{row['rank']}</td><td>{_incident_link(row)}</td><td>{escape(row['key'])}</td>"
        f"<td>{row['start']:%Y-%m-%d %H:%M}</td><td>{words.duration((row['end'] - row['start']).total_seconds())}</td>"
        f"<td class=num>{escape(words.number(row['peak_score']))}</td>"
        f"<td>{escape(', '.join(row['features_fired']))}</td><td>{escape(words.summary_of(row['evidence']))}</td></tr>"
        for row in ranked[:LISTED])
    rest = (f'<p class="muted">{len(ranked) - LISTED:,} lower-ranked incidents are not listed here; they are all in '
            "<code>OUT/incidents/</code>.</p>" if len(ranked) > LISTED else "")
    return ("<h2>Incidents, highest verdict score first</h2><p class=muted>An incident is a run of consecutive "
            "reported windows of one endpoint. Its score is that of its worst window: −log10 of the chance that a "
            "normal window goes as far (3 means 1 in 1,000).</p><table><tr><th>rank</th><th>incident</th>"
            "<th>endpoint</th><th>start (UTC)</th><th>lasted</th><th>score</th><th>features</th><th>what</th></tr>"
            + rows + "</table>" + rest)


def _incident_link(row: Mapping[str, Any]) -> str:
    """The id, linked to its section where it has one (the top DETAILED)."""
    code = f"<code>{row['incident_id']}</code>"
    return f'<a href="#i{row["incident_id"]}">{code}</a>' if row["rank"] <= DETAILED else code


def _incident_section(incident: Mapping[str, Any], series: Mapping[tuple, list], params: Mapping[str, Any],
                      alarms: Mapping[tuple, frozenset]) -> str:
    endpoint = (incident["table"], incident["key_kind"], incident["key"])
    plots = [plot_svg(series.get((*endpoint, feature), []), incident, feature, params,
                      alarms.get((*endpoint, feature), frozenset()))
             for feature in incident["features_fired"][:PLOTTED_FEATURES]]
    tops = []
    for label, column in TOP_LISTS:
        if incident[column]:
            cells = "".join(f"<tr><td>{escape(entry['value'])}</td><td class=num>{entry['count']:,}</td></tr>"
                            for entry in incident[column])
            counted = "names" if column == "top_domains" else "records"
            tops.append(f"<table><tr><th>top {label}</th><th>{counted}</th></tr>{cells}</table>")
    files = "".join(f"<li><code>{escape(entry['source_file'])}</code> positions {entry['first_pos']:,}–"
                    f"{entry['last_pos']:,} ({entry['records']:,} records)</li>"
                    for entry in incident["record_files"] or [])
    return (
        f"<section id=\"i{incident['incident_id']}\"><h2>#{incident['rank']} {escape(incident['key_kind'])} "
        f"{escape(incident['key'])}, {incident['start']:%Y-%m-%d %H:%M}–{incident['end']:%H:%M} UTC</h2>"
        f"<p class=evidence>{escape(incident['evidence'])}</p>{''.join(plots)}"
        f"<div style=\"display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start\">{''.join(tops)}</div>"
        + (f"<p>Records:</p><ul>{files}</ul>" if files else "")
        + f"<p class=muted><code>beamlytics show {incident['incident_id']} OUT</code> prints them.</p></section>"
    )


def _alarm_windows(reported: pa.Table | None) -> dict[tuple, frozenset]:
    """Window starts (µs) of the reported fired features, per (table, key_kind, key, feature)."""
    if reported is None:
        return {}
    found: dict[tuple, set] = collections.defaultdict(set)
    for row in reported.select(["table", "key_kind", "key", "feature", "window_start"]).to_pylist():
        found[(row["table"], row["key_kind"], row["key"], row["feature"])].add(micros(row["window_start"]))
    return {key: frozenset(starts) for key, starts in found.items()}


def _series_of(scores: pa.Table, incidents: Sequence[Mapping[str, Any]]) -> dict[tuple, list]:
    """Score rows of the features the detailed incidents fired on, per (table, key_kind, key, feature): only the
    plotted features' rows and the columns `plot_svg` reads become Python objects (all of an endpoint's rows, with
    their times as datetimes, cost a second at 50 k records once the alarm budget gave 50 detailed incidents)."""
    if not incidents or scores.num_rows == 0:
        return {}
    keys = pa.array(sorted({incident["key"] for incident in incidents}), pa.string())
    plotted = pa.array(sorted({feature for incident in incidents
                               for feature in incident["features_fired"][:PLOTTED_FEATURES]}), pa.string())
    wanted = pc.and_(pc.is_in(scores.column("key"), value_set=keys),
                     pc.is_in(scores.column("feature"), value_set=plotted))
    chosen = scores.filter(wanted).select(["table", "key_kind", "key", "feature", "window_start", "value",
                                           "evidence", "detector"])
    # µs as ints: a timezone-aware datetime per row was most of the cost, and `micros` takes either.
    chosen = chosen.set_column(4, "window_start", pc.cast(chosen.column("window_start"), pa.int64()))
    series: dict[tuple, list] = collections.defaultdict(list)
    for row in chosen.to_pylist():
        series[(row["table"], row["key_kind"], row["key"], row["feature"])].append(row)
    for rows in series.values():
        rows.sort(key=lambda row: row["window_start"])
    return series


class _Point(NamedTuple):
    time: float  # µs, the middle of the window
    value: float
    low: float | None  # the band the detector accepted, where it has one
    high: float | None
    expected: float | None  # poisson: records expected at the learned rate
    alarm: bool


def plot_svg(rows: Sequence[Mapping[str, Any]], incident: Mapping[str, Any], feature: str,
             params: Mapping[str, Any], alarm_starts: frozenset = frozenset()) -> str:
    """The feature of the endpoint over time: the band its own detector held it to, the alarm level its verdict
    had to cross (the incident's measure), and the reported windows (`alarm_starts`, µs) marked."""
    start, end = micros(incident["start"]), micros(incident["end"])
    window_us = int(incident["window_seconds"] * 1e6)
    context = max(CONTEXT_WINDOWS * window_us, 2 * (end - start))
    shown = [row for row in rows if start - context <= micros(row["window_start"]) < end + context]
    if not shown:
        return f'<p class="muted">No scores of {escape(feature)} to plot.</p>'
    half = window_us / 2
    points = []
    for row in shown:
        if row["value"] is None or not math.isfinite(row["value"]):
            continue
        evidence = json.loads(row["evidence"] or "{}")
        low, high = words.limits(row["detector"], evidence, params)
        expected = (words.expected_records(evidence, params, incident["window_seconds"])
                    if row["detector"] == "poisson" else None)
        points.append(_Point(micros(row["window_start"]) + half, row["value"], low, high, expected,
                             micros(row["window_start"]) in alarm_starts))
    if not points:
        return f'<p class="muted">No values of {escape(feature)} to plot.</p>'
    x0, x1 = start - context, end + context
    level = next((m["threshold"] for m in incident.get("measures") or () if m["feature"] == feature
                  and m["threshold"] is not None and math.isfinite(m["threshold"])), None)
    values = [v for p in points for v in (p.value, p.high, p.expected) if v is not None]
    values += [level] if level is not None else []
    # The axis follows the values and upper limits; a lower limit below them (mean - kσ < 0) is clipped.
    y0 = min(0.0, *(p.value for p in points))
    y1 = max(values) * 1.08 if max(values) > y0 else y0 + 1.0

    def x(t: int) -> float:
        return MARGIN + (t - x0) / (x1 - x0) * (WIDTH - 2 * MARGIN)

    def y(v: float) -> float:
        return HEIGHT - 24 - (v - y0) / (y1 - y0) * (HEIGHT - 44)

    parts = [f'<svg class="plot" data-feature="{escape(feature)}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
             f'<title>{escape(feature)} of {escape(incident["key"])}</title>',
             f'<rect x="{x(start):.1f}" y="10" width="{max(x(end) - x(start), 1):.1f}" height="{HEIGHT - 34}" '
             'fill="#fde0dc"/>']
    for run in _runs([(p.time, max(p.low, y0) if p.low is not None else y0, p.high)
                      for p in points if p.high is not None]):
        upper = " ".join(f"{x(t):.1f},{y(high):.1f}" for t, _, high in run)
        lower = " ".join(f"{x(t):.1f},{y(low):.1f}" for t, low, _ in reversed(run))
        parts.append(f'<polygon class="band" points="{upper} {lower}" fill="#d8e6f3" stroke="#9bb8d6"/>')
    expected = [(p.time, p.expected) for p in points if p.expected is not None]
    if expected:
        parts.append('<polyline class="expected" fill="none" stroke="#e08030" stroke-dasharray="4 3" points="'
                     + " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in expected) + '"/>')
    if level is not None:
        parts.append(f'<line class="level" x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{y(level):.1f}" '
                     f'y2="{y(level):.1f}" stroke="#c03030" stroke-dasharray="2 3"/>')
    parts.append('<polyline class="series" fill="none" stroke="#3060a0" stroke-width="1.3" points="'
                 + " ".join(f"{x(p.time):.1f},{y(p.value):.1f}" for p in points) + '"/>')
    parts += [f'<circle class="alarm" cx="{x(p.time):.1f}" cy="{y(p.value):.1f}" r="3.5" fill="#c03030"/>'
              for p in points if p.alarm]
    legend = "band: values its own detector accepted" if any(p.high is not None for p in points) else \
        "orange: records expected at its learned rate" if expected else ""
    legend += ("; " if legend else "") + "dotted red: alarm level" if level is not None else ""
    parts += [
        f'<text x="{MARGIN}" y="{HEIGHT - 6}" font-size="11">{_time(x0)}</text>',
        f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - 6}" font-size="11" text-anchor="end">{_time(x1)} UTC</text>',
        f'<text x="{MARGIN - 4}" y="{y(y1) + 10:.1f}" font-size="11" text-anchor="end">'
        f'{escape(words.number(y1))}</text>',
        f'<text x="{MARGIN - 4}" y="{y(y0):.1f}" font-size="11" text-anchor="end">{escape(words.number(y0))}</text>',
        f'<text x="{MARGIN + 4}" y="14" font-size="12" font-weight="bold">{escape(feature)} per '
        f'{escape(words.duration(incident["window_seconds"]))}</text>',
        "</svg>",
        f'<p class="muted">Red: reported windows; shaded: the incident; {escape(legend)}.</p>',
    ]
    return "".join(parts)


def _runs(points: Sequence[tuple]) -> list[list[tuple]]:
    """Points split where consecutive ones are far apart, so a band is not drawn across a gap."""
    runs: list[list[tuple]] = []
    step = _step(points)
    for point in points:
        if runs and point[0] - runs[-1][-1][0] <= 2 * step:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


def _step(points: Sequence[tuple]) -> float:
    gaps = sorted(b[0] - a[0] for a, b in zip(points, points[1:]))
    return gaps[len(gaps) // 2] if gaps else 1.0


def _time(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)).strftime("%Y-%m-%d %H:%M")
