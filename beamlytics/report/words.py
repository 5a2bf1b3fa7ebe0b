"""Evidence in plain words: counts with their units, and each detector's reason for an alarm.

Detectors write their evidence as JSON in their own vocabulary (σ, quartiles, GPD tails, λ
per slot, health Ra); an analyst reads "260 queries in 1 min, usual for this host 3".
"""
from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Mapping, Sequence

# Detectors whose `threshold` is a value of the feature (Poisson's is a level of its health score).
LIMIT_IN_VALUE_UNITS = frozenset({"gaussian", "iqr", "spot", "dspot", "population"})
_RECORD_UNIT = {"dns": "queries", "http": "requests", "named_flows": "flows"}
_NAME_UNIT = {"dns": "names", "http": "hosts", "named_flows": "names"}
_RATIOS = {"nxdomain_ratio": "answered NXDOMAIN", "unanswered_ratio": "unanswered", "error_ratio": "HTTP errors"}
_BYTES = {"request_bytes": "sent", "c_bytes": "sent", "response_bytes": "received", "s_bytes": "received"}
_PACKETS = {"c_pkt": "sent", "s_pkt": "received"}
_ENDPOINT = {"c_ip": "host", "s_ip": "server", "name": "name", "domain": "domain"}


def number(value: float) -> str:
    """1234 → "1,234", 2.5 → "2.5", 0.0123 → "0.0123"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "?"
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def byte_size(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{number(value)} bytes"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{number(seconds)} s"
    if seconds < 3600:
        return f"{number(seconds / 60)} min"
    if seconds < 86400:
        return f"{number(seconds / 3600)} h"
    return f"{number(seconds / 86400)} d"


_SINGULAR = {"queries": "query", "requests": "request", "flows": "flow", "names": "name", "hosts": "host",
             "servers": "server", "clients": "client", "ports": "port", "packets": "packet"}


def counted(value: float, unit: str) -> str:
    """"1 server", "2 servers": the last word of `unit` agrees with the count."""
    if value == 1:
        head, _, last = unit.rpartition(" ")
        unit = f"{head} {_SINGULAR.get(last, last)}".strip()
    return f"{number(value)} {unit}"


def peer_unit(key_kind: str) -> str:
    return "servers" if key_kind == "c_ip" else "clients"


def quantity(table: str, key_kind: str, feature: str, value: float | None) -> str:
    """A feature value with its unit: "260 queries", "94% answered NXDOMAIN", "1.2 MB sent"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{feature} unknown"
    if feature == "records":
        return counted(value, _RECORD_UNIT[table])
    if feature == "distinct_peers":
        return counted(value, f"distinct {peer_unit(key_kind)}")
    if feature == "distinct_names":
        return counted(value, f"distinct {_NAME_UNIT[table]}")
    if feature == "distinct_ports":
        return counted(value, "distinct server ports")
    if feature in _RATIOS:
        return f"{value * 100:.3g}% {_RATIOS[feature]}"
    if feature == "max_query_length":
        return f"a longest name of {number(value)} characters"
    if feature in _BYTES:
        return f"{byte_size(value)} {_BYTES[feature]}"
    if feature in _PACKETS:
        return f"{counted(value, 'packets')} {_PACKETS[feature]}"
    return f"{feature} {number(value)}"


def parent_domain(name: str) -> str:
    """The last two labels of a name: what random subdomains share."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    return ".".join(labels[-2:])


def dominant_domain(domains: Sequence[Mapping[str, Any]] | None, distinct_names: int | None) -> Mapping | None:
    """The parent domain of most of the names, when there are many names."""
    if not domains or not distinct_names or distinct_names < 5:
        return None
    top = domains[0]
    return top if top["count"] * 2 > distinct_names and "." in top["value"] else None


def limits(detector: str, evidence: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(low, high) values a window had to stay within, in the feature's units; None where the detector has none."""
    if detector == "gaussian" and "mean" in evidence and "std" in evidence:
        k = params.get("k", 3.0)
        return evidence["mean"] - k * evidence["std"], evidence["mean"] + k * evidence["std"]
    if detector == "iqr" and "q1" in evidence and "iqr" in evidence:
        k = params.get("k", 1.5)
        return evidence["q1"] - k * evidence["iqr"], evidence["q3"] + k * evidence["iqr"]
    if detector in ("spot", "dspot"):
        return _finite(evidence.get("down_anomaly_threshold")), _finite(evidence.get("up_anomaly_threshold"))
    if detector == "population":
        return None, _finite(evidence.get("population_threshold"))
    return None, None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def expected_records(evidence: Mapping[str, Any], params: Mapping[str, Any], window_seconds: float) -> float | None:
    """Poisson: the learned rate λ (records per slot) as records per window."""
    rate = evidence.get("lambda")
    if not isinstance(rate, (int, float)):
        return None
    return float(rate) * window_seconds / float(params.get("slot_seconds", 1.0))


def reason(row: Mapping[str, Any], window_seconds: float) -> str:
    """Why the detector called one (endpoint, window, feature) anomalous, in words."""
    evidence = json.loads(row["evidence"] or "{}")
    params = json.loads(row.get("params") or "{}")
    table, key_kind, feature, detector = row["table"], row["key_kind"], row["feature"], row["detector"]
    seen = quantity(table, key_kind, feature, row["value"])
    direction = "above" if row.get("direction") != "down" else "below"
    if detector == "gaussian" and "mean" in evidence:
        std = evidence.get("std") or 0.0
        distance = abs(row["value"] - evidence["mean"]) / std if std else math.inf
        return (f"{seen} is {number(distance)} standard deviations {direction} this endpoint's mean of "
                f"{number(evidence['mean'])} over {number(evidence.get('n', 0))} windows "
                f"(limit {number(row['threshold'])}, k = {number(params.get('k', 3.0))})")
    if detector == "iqr" and "q1" in evidence:
        return (f"{seen} is {direction} the fence {number(row['threshold'])}: this endpoint's middle half of "
                f"{number(evidence.get('n', 0))} windows lies between {number(evidence['q1'])} and "
                f"{number(evidence['q3'])}, and the fence is {number(params.get('k', 1.5))} times that spread "
                f"beyond it")
    if detector in ("spot", "dspot"):
        chance = evidence.get("probability")
        drift = (f" after removing the drift (moving average {number(evidence['moving_average'])})"
                 if "moving_average" in evidence else "")
        odds = "" if not isinstance(chance, (int, float)) else \
            f"; a value this extreme has a chance of {chance:.2g} per window" if chance > 0 else \
            "; the fitted tail ends below it (a chance of 0)"
        return (f"{seen} is {direction} the level {number(row['threshold'])} that extreme-value statistics of this "
                f"endpoint's history put at a risk of {params.get('q', '?')} per window{drift}{odds}")
    if detector == "population":
        chance = evidence.get("p_value")
        odds = f"; a window this extreme has a chance of {chance:.2g} among them" \
            if isinstance(chance, (int, float)) else ""
        return (f"{seen} is above {number(row['threshold'])}, a level few windows of all the endpoints here reach "
                f"(their median: {number(evidence.get('population_median'))}); this endpoint has too little "
                f"history of its own to be judged by it{odds}")
    if detector == "poisson":
        expected = expected_records(evidence, params, window_seconds)
        health = evidence.get("Ra")
        expected_text = f"; its learned rate gives about {number(expected)} per {duration(window_seconds)}" \
            if expected is not None else ""
        health_text = (f"; the jump brought its health score (1 while it behaves as learned) down to "
                       f"{number(health)}, below the alarm level {number(row['threshold'])}"
                       if isinstance(health, (int, float)) else "")
        return f"{seen} in {duration(window_seconds)}{expected_text}{health_text}"
    return f"{seen} (score {number(row.get('score'))}, limit {number(row.get('threshold'))})"


def summary_of(evidence: str) -> str:
    """The first part of an incident's evidence: what it did over the whole incident."""
    return evidence.split("; at most")[0]


def endpoint_noun(key_kind: str, plural: bool = False) -> str:
    """What the endpoint is, in words: "host", "server", "name", "domain"."""
    noun = _ENDPOINT.get(key_kind, "endpoint")
    return noun + "s" if plural else noun


def chance(p: float | None) -> str:
    """A probability as odds an analyst reads: "1 in 9,645", "less than 1 in a million"."""
    if p is None or not math.isfinite(p):
        return "unknown"
    if p >= 0.5:
        return f"{p:.0%}"
    if p < 1e-6:
        return "less than 1 in a million"
    return f"1 in {number(round(1 / p))}"


def incident_evidence(incident: Mapping[str, Any], peak: Mapping[str, Any],
                      peak_feature_row: Mapping[str, Any] | None = None,
                      rarest_agent: tuple[str, int, int, int] | None = None) -> str:
    """What happened (counts over the incident, peak, usual) and why its peak verdict (`schemas.VERDICTS`)
    reported it, in two sentences; `peak_feature_row`, its most significant feature's anomalies/ row, adds the
    endpoint's own detector's reason; `rarest_agent` (http: agent, its requests here, clients of the run that
    send it, clients of the run) a sentence on the rarest user agent."""
    table, key_kind = incident["table"], incident["key_kind"]
    window = incident["window_seconds"]
    span = (incident["end"] - incident["start"]) / 1e6
    by_feature = {measure["feature"]: measure for measure in incident["measures"]}
    if incident["records"] is not None:
        what = counted(incident["records"], _RECORD_UNIT[table])
        at_least = "" if incident.get("distinct_exact", True) else "at least "
        if incident["distinct_names"] and key_kind != "name":  # an endpoint that is a name has one
            what += f" to {at_least}{counted(incident['distinct_names'], 'distinct ' + _NAME_UNIT[table])}"
            domain = dominant_domain(incident["top_domains"], incident["distinct_names"])
            if domain:
                share = "all" if domain["count"] == incident["distinct_names"] else number(domain["count"])
                what += f" ({share} of them under {domain['value']})"
        if incident["distinct_peers"]:
            what += f" with {at_least}{counted(incident['distinct_peers'], 'distinct ' + peer_unit(key_kind))}"
    else:
        what = f"{quantity(table, key_kind, 'records', by_feature['records']['peak'])} in its busiest window"
    shown = _shown_features(incident)
    peak_values = ", ".join(quantity(table, key_kind, name, by_feature[name]["peak"]) for name in shown)
    usual_values = [quantity(table, key_kind, name, by_feature[name]["usual"]) for name in shown
                    if by_feature[name]["usual"] is not None]
    whose = {"own history": f"this {endpoint_noun(key_kind)}",
             "population median": f"{endpoint_noun(key_kind, plural=True)} here (it has no history of its own)"}
    sentence = f"{what} in {duration(span)}; at most {peak_values} in {duration(window)}"
    if usual_values and incident["usual_from"] in whose:
        sentence += f"; usual for {whose[incident['usual_from']]} in {duration(window)}: {', '.join(usual_values)}"
    if rarest_agent is not None:
        agent, requests, senders, clients = rarest_agent
        sentence += (f". Its rarest user agent, {json.dumps(agent)} ({counted(requests, 'requests')}), is sent by "
                     f"{number(senders)} of the {counted(clients, 'clients')} of the run that send one")
    return f"{sentence}. Why: {verdict_reason(peak, key_kind, peak_feature_row, window)}."


def verdict_reason(verdict: Mapping[str, Any], key_kind: str, feature_row: Mapping[str, Any] | None,
                   window_seconds: float) -> str:
    """Why one verdict alarmed: its fired features against the alarm level and all endpoints' median, who judged
    it, the chance of a normal window going as far, and the endpoint's own detector's reason where it judged."""
    table, others = verdict["table"], endpoint_noun(key_kind, plural=True)
    fired = [entry for entry in verdict["evidence"] if entry["fired"]][:3]
    parts = []
    for entry in fired:
        text = quantity(table, key_kind, entry["feature"], entry["value"])
        if entry["threshold"] is not None:
            text += f" where the alarm level was {_level(table, key_kind, entry['feature'], entry['threshold'])}"
        if entry["expected"] is not None:
            text += f" and the median of all {others} {_level(table, key_kind, entry['feature'], entry['expected'])}"
        parts.append(text)
    judged = {e["judged_by"] for e in fired}
    by = (f"unusual both for its own history and among all {others}" if judged == {"own history"} else
          f"unusual among all {others} (too little history of its own to judge it by)" if judged == {"population"}
          else f"unusual among all {others}, and for its own history")
    at = _clock(verdict["window_start"])
    text = (f"in its worst {duration(window_seconds)} (from {at}), {'; '.join(parts)}: {by}; a normal window goes "
            f"this far with a chance of {chance(verdict['p_value'])}")
    if feature_row is not None and feature_row["detector"] != "population" and "own history" in judged:
        text += f"; its own {feature_row['detector']} detector: {reason(feature_row, window_seconds)}"
    return text


def _level(table: str, key_kind: str, feature: str, value: float) -> str:
    """A level in the feature's units, without repeating the unit of a count."""
    if feature in _RATIOS:
        return f"{value * 100:.3g}%"
    if feature in _BYTES:
        return byte_size(value)
    return number(value)


def _clock(value: Any) -> str:
    if isinstance(value, int):
        value = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=value)
    return f"{value:%H:%M} UTC"


def _shown_features(incident: Mapping[str, Any]) -> list[str]:
    """The features that fired, record and name counts for context, and ratios that moved by half or more."""
    fired = list(incident["features_fired"])
    moved = [measure["feature"] for measure in incident["measures"] if measure["feature"] in _RATIOS
             and measure["peak"] is not None and measure["usual"] is not None
             and abs(measure["peak"] - measure["usual"]) >= 0.5]
    counts = ("records",) if incident["key_kind"] == "name" else ("records", "distinct_names")
    context = [name for name in (*counts, *moved) if name not in fired]
    present = {measure["feature"] for measure in incident["measures"]}
    return [name for name in (*fired, *context) if name in present]
