"""Hunts over named_flows: beacons, long connections and strobes per source→destination pair, and scans.

Beacon scoring follows RITA v5: a timestamp score (Bowley skewness and MAD of the intervals),
a data-size score (the same on bytes per connection), a histogram score (connections per
hour of the horizon: flat or two-level) and a duration score (how much of the horizon the
pair spans, or its longest run of active hours), averaged with equal weights.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.hunts import stats
from beamlytics.hunts.aggregate import LIST, MAX, MIN, SET, SUM, Family, group, micros, with_horizons
from beamlytics.hunts.config import FAILED_STATES, OPEN_STATES, RESET_STATES, HuntConfig
from beamlytics.hunts.findings import finding

NAMES_KEPT = 16  # names per pair shown as evidence and matched against the allow-list


def _timed_pairs(batch: pa.RecordBatch, config: HuntConfig) -> pa.Table:
    """The flows that can be attributed: both endpoints and a start time known; plus their horizon."""
    table = pa.Table.from_batches([batch])
    known = pc.and_(pc.and_(pc.is_valid(table["c_ip"]), pc.is_valid(table["s_ip"])), pc.is_valid(table["time_start"]))
    table = table.filter(known)
    return with_horizons(table, micros(table["time_start"]).to_numpy(zero_copy_only=False), config)


def failed_attempts(table: pa.Table) -> pa.Array:
    """True for attempts that never became a working connection, null where nothing says.

    Zeek's conn_state says so directly; a reset counts when the server sent at most one
    packet (its SYN-ACK). Flows built from captures carry no conn_state, and there an attempt
    failed when the server never answered, or, over TCP, answered with one packet at most
    (a RST or a SYN-ACK, then nothing): no data ever came back. A flow with neither a state
    nor the server's packet count (a Zeek ssl.log connection, say) is unknown, not failed.
    """
    state = table["conn_state"]
    s_pkt = pc.fill_null(table["s_pkt"], 0)
    server_silent = pc.less_equal(s_pkt, 1)
    by_state = pc.or_(pc.is_in(state, pa.array(sorted(FAILED_STATES))),
                      pc.and_(pc.is_in(state, pa.array(sorted(RESET_STATES))), server_silent))
    tcp = pc.equal(pc.fill_null(table["proto"], ""), "tcp")
    inferred = pc.or_(pc.equal(s_pkt, 0), pc.and_(tcp, server_silent))
    unknown = pa.nulls(len(state), pa.bool_())
    return pc.if_else(pc.is_valid(state), by_state, pc.if_else(pc.is_valid(table["s_pkt"]), inferred, unknown))


# ---------------------------------------------------------------- pairs: beacon, long, strobe

def _build_pairs(batch: pa.RecordBatch, config: HuntConfig) -> pa.Table:
    table = _timed_pairs(batch, config)
    start_us = micros(table["time_start"])
    end_us = micros(table["time_end"])
    duration = pc.fill_null(pc.max_element_wise(pc.subtract(end_us, start_us), 0), 0)
    is_open = pc.or_(pc.is_null(end_us), pc.fill_null(pc.is_in(table["conn_state"], pa.array(sorted(OPEN_STATES))), False))
    size = pc.add(pc.fill_null(table["c_bytes"], 0), pc.fill_null(table["s_bytes"], 0))
    seconds = pa.array(np.floor_divide(start_us.to_numpy(zero_copy_only=False), 1_000_000), pa.int64())
    columns = pa.table({
        "horizon": table["horizon"], "src": table["c_ip"], "dst": table["s_ip"],
        "times": seconds, "sizes": size, "connections": pa.array(np.ones(table.num_rows, np.int64)),
        "duration_us": duration, "longest_us": duration, "open": pc.cast(is_open, pa.int64()),
        "bytes": size, "first": seconds, "last": seconds, "names": table["name"],
    })
    return group(columns, ("horizon", "src", "dst"), [
        ("times", "list"), ("sizes", "list"), ("connections", "sum"), ("duration_us", "sum"),
        ("longest_us", "max"), ("open", "sum"), ("bytes", "sum"), ("first", "min"), ("last", "max"),
        ("names", "distinct"),
    ])


def _judge_pairs(key: tuple, partial: dict, config: HuntConfig, hunts: frozenset) -> list[dict]:
    judges = {"strobe": _strobe, "long": _long, "beacon": _beacon}
    found = (judges[name](key, partial, config) for name in sorted(hunts) if name in judges)
    return [row for row in found if row is not None]


def _pair_finding(hunt: str, score: float, key: tuple, partial: dict, config: HuntConfig, evidence: dict,
                  summary: str) -> dict:
    horizon_start, src, dst = key
    return finding(hunt, score, (horizon_start, horizon_start + config.horizon_us), partial["connections"],
                   partial["capped"], evidence, summary, src=src, dst=dst, names=partial["names"])


def _strobe(key: tuple, partial: dict, config: HuntConfig) -> dict | None:
    connections, threshold = partial["connections"], config.strobe_threshold
    score = stats.round3(stats.bucket_score(connections, (threshold / 8, threshold / 4, threshold / 2, threshold)))
    if score == 0:
        return None
    per_second = round(connections / config.horizon_seconds, 3)
    evidence = {"connections": connections, "strobe_threshold": threshold, "per_second": per_second}
    return _pair_finding("strobe", score, key, partial, config, evidence,
                         f"{key[1]} opened {connections} connections to {key[2]} in the horizon ({per_second} a second).")


def _long(key: tuple, partial: dict, config: HuntConfig) -> dict | None:
    total = partial["duration_us"] / 1e6
    score = stats.round3(stats.bucket_score(total, config.long_thresholds))
    if score == 0:
        return None
    evidence = {"total_duration_s": round(total, 3), "longest_s": round(partial["longest_us"] / 1e6, 3),
                "open_connections": partial["open"], "connections": partial["connections"], "bytes": partial["bytes"],
                "thresholds_s": list(config.long_thresholds)}
    return _pair_finding("long", score, key, partial, config, evidence,
                         f"{key[1]} was connected to {key[2]} for {_hours(total)} in total over "
                         f"{partial['connections']} connection(s), {partial['open']} still open.")


def _beacon(key: tuple, partial: dict, config: HuntConfig) -> dict | None:
    if partial["connections"] >= config.strobe_threshold:
        return None  # RITA does not score strobes as beacons: they are their own finding
    evidence = beacon_evidence(np.array(partial["times"], np.int64), np.array(partial["sizes"], np.int64),
                               partial["first"], partial["last"], key[0] // 1_000_000, config)
    if evidence is None:
        return None
    score = stats.round3(stats.bucket_score(evidence["beacon_score"] * 100, config.beacon_thresholds))
    if score == 0:
        return None
    return _pair_finding("beacon", score, key, partial, config, evidence,
                         f"{key[1]} connected to {key[2]} {partial['connections']} times, typically every "
                         f"{evidence['interval_median_s']:g} s with {evidence['size_median']:g} bytes, "
                         f"in {evidence['hours_seen']} of {config.histogram_bins} hours "
                         f"(beacon score {evidence['beacon_score']:.3f}).")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def timestamp_score(times: np.ndarray) -> dict | None:
    """RITA's timestamp score over whole-second connection times; None with fewer than 3 non-zero intervals."""
    intervals = np.diff(np.sort(times)).astype(float)
    intervals = intervals[intervals > 0]
    if len(intervals) < 3:
        return None
    score, skew, mad = stats.regularity_score(intervals, score_when_tiny=1.0)
    return {"ts_score": score, "ts_skew": round(skew, 6), "ts_mad_s": mad,
            "interval_median_s": float(np.median(intervals))}


def size_score(sizes: np.ndarray) -> dict | None:
    if len(sizes) < 3:
        return None
    values = np.sort(sizes.astype(float))
    score, skew, mad = stats.regularity_score(values, score_when_tiny=0.0)
    return {"ds_score": score, "ds_skew": round(skew, 6), "ds_mad": mad, "size_median": float(np.median(values))}


def hourly_histogram(times: np.ndarray, start_s: int, span_s: float, bins: int) -> np.ndarray:
    """Connections per bin of the horizon; a time on the last edge counts in the last bin."""
    index = np.floor((times - start_s) / (span_s / bins)).astype(np.int64)
    return np.bincount(np.clip(index, 0, bins - 1), minlength=bins)


def histogram_score(histogram: np.ndarray, config: HuntConfig) -> dict:
    """max(1 - coefficient of variation, bimodal fit); also the bars and longest run the duration score needs."""
    bars = int(np.count_nonzero(histogram))
    mean = histogram.mean()
    cv = histogram.std() / mean if mean > 0 else math.inf
    cv_score = 0.0 if cv > 1 else stats.round3(1 - cv)
    # Bars of similar height (within 5% of the tallest) are one mode: jitter is not a second level.
    bin_size = math.ceil(histogram.max() * config.histogram_mode_sensitivity)
    heights: dict[int, int] = {}
    for height in histogram[histogram > 0]:
        level = int(height // bin_size * bin_size)
        heights[level] = heights.get(level, 0) + 1
    bimodal = 0.0
    if bars >= config.histogram_bimodal_min_hours:
        top_two = sum(sorted(heights.values(), reverse=True)[:2])
        bimodal = min(1.0, stats.round3(top_two / max(bars - config.histogram_bimodal_outlier_removal, 1)))
    return {"hist_score": max(cv_score, bimodal), "hist_cv_score": cv_score, "hist_bimodal_score": bimodal,
            "hours_seen": bars, "longest_run_hours": longest_run(histogram)}


def longest_run(histogram: np.ndarray) -> int:
    """Longest run of consecutive non-empty bins, wrapping from the end of the horizon to its start."""
    active = np.concatenate([histogram, histogram]) > 0
    best = run = 0
    for on in active:
        run = run + 1 if on else 0
        best = max(best, run)
    return min(best, len(histogram))


def duration_score(first_s: int, last_s: int, span_s: float, bars: int, run: int, config: HuntConfig) -> dict:
    coverage = consistency = 0.0
    if bars >= config.duration_min_hours:
        coverage = min(1.0, math.ceil((last_s - first_s) / span_s * 1000) / 1000)
        consistency = min(1.0, math.ceil(run / config.duration_ideal_hours * 1000) / 1000)
    return {"dur_score": max(coverage, consistency), "dur_coverage": coverage, "dur_consistency": consistency}


def beacon_evidence(times: np.ndarray, sizes: np.ndarray, first_s: int, last_s: int, horizon_start_s: int,
                    config: HuntConfig) -> dict | None:
    """All of RITA's sub-scores and the weighted beacon score; None when the pair is too sparse to judge."""
    if len(np.unique(times)) < config.beacon_min_connections:
        return None
    timing, sizing = timestamp_score(times), size_score(sizes)
    if timing is None or sizing is None:
        return None
    histogram = hourly_histogram(times, horizon_start_s, config.horizon_seconds, config.histogram_bins)
    shape = histogram_score(histogram, config)
    span = duration_score(first_s, last_s, config.horizon_seconds, shape["hours_seen"], shape["longest_run_hours"],
                          config)
    parts = (timing["ts_score"], sizing["ds_score"], span["dur_score"], shape["hist_score"])
    score = stats.round3(sum(weight * part for weight, part in zip(config.beacon_weights, parts)))
    return {**timing, **sizing, **shape, **span, "beacon_score": score, "connections_scored": int(len(times))}


PAIRS = Family(
    name="pairs", keys=("horizon", "src", "dst"),
    columns={"times": (LIST, None), "sizes": (LIST, None), "connections": (SUM, None), "duration_us": (SUM, None),
             "longest_us": (MAX, None), "open": (SUM, None), "bytes": (SUM, None), "first": (MIN, None),
             "last": (MAX, None), "names": (SET, NAMES_KEPT)},
    build=_build_pairs, judge=_judge_pairs,
)


# ---------------------------------------------------------------- scans

def _scan_columns(batch: pa.RecordBatch, config: HuntConfig, vertical: bool) -> pa.Table:
    table = _timed_pairs(batch, config)
    failed = failed_attempts(table)
    proto = pc.fill_null(table["proto"], "?")
    if vertical:
        target = pc.binary_join_element_wise(proto, pc.cast(pc.fill_null(table["s_port"], -1), pa.string()), "/")
        keys = {"src": table["c_ip"], "dst": table["s_ip"]}
    else:
        target = table["s_ip"]
        keys = {"src": table["c_ip"], "proto": proto, "port": table["s_port"]}
    columns = pa.table({
        "horizon": table["horizon"], **keys,
        "failed_targets": pc.if_else(failed, target, pa.scalar(None, pa.string())), "targets": target,
        "connections": pa.array(np.ones(table.num_rows, np.int64)), "failed": pc.cast(failed, pa.int64()),
    })
    key_names = ("horizon", "src", "dst") if vertical else ("horizon", "src", "proto", "port")
    return group(columns, key_names, [("failed_targets", "distinct"), ("targets", "distinct"),
                                      ("connections", "sum"), ("failed", "sum")])


def _judge_scan(hunt: str, key: tuple, partial: dict, config: HuntConfig, hunts: frozenset) -> list[dict]:
    if "scan" not in hunts:
        return []
    vertical = hunt == "vertical_scan"
    thresholds = config.vertical_thresholds if vertical else config.horizontal_thresholds
    failed_targets = len(partial["failed_targets"])
    score = stats.round3(stats.bucket_score(failed_targets, thresholds))
    if score == 0:
        return []
    connections = partial["connections"]
    failed_share = round(partial["failed"] / connections, 3)
    what = "ports" if vertical else "hosts"
    evidence = {f"failed_{what}": failed_targets, f"distinct_{what}": len(partial["targets"]),
                "failed_share": failed_share, "connections": connections, "thresholds": list(thresholds),
                f"sample_{what}": partial["failed_targets"][:20]}
    horizon = (key[0], key[0] + config.horizon_us)
    if vertical:
        _, src, dst = key
        summary = (f"{src} tried {failed_targets} ports of {dst} without a working connection "
                   f"({failed_share:.0%} of {connections} attempts failed).")
        return [finding(hunt, score, horizon, connections, partial["capped"], evidence, summary, src=src, dst=dst)]
    _, src, proto, port = key
    summary = (f"{src} tried {proto}/{port} on {failed_targets} hosts without a working connection "
               f"({failed_share:.0%} of {connections} attempts failed).")
    return [finding(hunt, score, horizon, connections, partial["capped"], evidence, summary,
                    src=src, proto=proto, port=port)]


_SCAN_COLUMNS = {"failed_targets": (SET, None), "targets": (SET, None), "connections": (SUM, None),
                 "failed": (SUM, None)}

VERTICAL = Family(
    name="vertical_scan", keys=("horizon", "src", "dst"), columns=_SCAN_COLUMNS,
    build=functools.partial(_scan_columns, vertical=True), judge=functools.partial(_judge_scan, "vertical_scan"),
)
HORIZONTAL = Family(
    name="horizontal_scan", keys=("horizon", "src", "proto", "port"), columns=_SCAN_COLUMNS,
    build=functools.partial(_scan_columns, vertical=False), judge=functools.partial(_judge_scan, "horizontal_scan"),
)
