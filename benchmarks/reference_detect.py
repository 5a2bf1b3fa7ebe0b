"""The reference `detect bench_detect` holds beamlytics to: a short polars + numpy script.

Reads Zeek dns.log files, computes per-client 60 s window features (detect's dns defaults:
records, NXDOMAIN ratio, the most distinct subdomains under one registered domain, the
highest subdomain entropy, the TXT/NULL/ANY share) and judges each client's windows, oldest
first, with the online gaussian rule: after `n_init` calibrating values, a value outside
mean ± k·σ (σ with ddof=1, Welford's running update) of the values accepted so far is an
anomaly and is not learnt. Each window then gets the part of its verdict that needs no
population model: `unjudged` (too_few_records) under `min_records` records, else `judged`.

What it leaves out, on purpose: whether a judged window alarms. That needs the population
prior (a bottom-k hashed sample of every endpoint-window, SPOT's P² quantile and Grimshaw
GPD fit on it, the features' p combined and referred to the population): re-implementing SPOT here would copy
beamlytics rather than check it. Registered domains are the last two labels of a name, which
is the Public Suffix List's answer for the benchmark's `*.example.com` names only.

Writes features.parquet, scores.parquet (one status per window and feature),
verdicts.parquet and timings.json (seconds per stage). Written apart from beamlytics, on
purpose: it shares no code with it.

    python -m benchmarks.reference_detect --output OUT FOLDER_OR_FILES...
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

WINDOW_US = 60_000_000
FEATURES = ("records", "nxdomain_ratio", "max_subdomains", "max_subdomain_entropy", "txt_null_any_ratio")
PAYLOAD_TYPES = ("TXT", "NULL", "ANY")


def read_dns_log(path: Path) -> pl.DataFrame:
    with path.open(encoding="utf-8") as handle:
        fields = next(line for line in handle if line.startswith("#fields")).rstrip("\n").split("\t")[1:]
    frame = pl.read_csv(path, separator="\t", comment_prefix="#", has_header=False, new_columns=fields,
                        columns=[fields.index(name) for name in ("ts", "id.orig_h", "query", "qtype_name", "rcode_name")],
                        null_values="-", quote_char=None, infer_schema=False)
    # ts has exactly six decimals: read it as integer µs, exactly (a float would round).
    return frame.select(pl.col("ts").str.replace(".", "", literal=True).cast(pl.Int64).alias("ts_us"),
                        pl.col("id.orig_h").alias("key"), "query", "qtype_name", "rcode_name")


def entropy_millibits(subdomain: str) -> int:
    """Shannon entropy (bits per character, dots left out) in thousandths of a bit."""
    text = subdomain.replace(".", "")
    if not text:
        return 0
    shares = [count / len(text) for count in Counter(text).values()]
    return round(-sum(share * math.log2(share) for share in shares) * 1000)


def window_features(records: pl.DataFrame) -> pl.DataFrame:
    names = pl.col("query").str.strip_chars_end(".").str.to_lowercase()
    labels = names.str.split(".")
    windowed = (
        records.drop_nulls(["ts_us", "key"])
        .with_columns((pl.col("ts_us") - pl.col("ts_us") % WINDOW_US).alias("window_start"),
                      pl.when(labels.list.len() >= 2).then(labels.list.slice(-2).list.join(".")).alias("domain"),
                      pl.when(labels.list.len() > 2).then(labels.list.slice(0, labels.list.len() - 2).list.join("."))
                      .alias("subdomain"))
    )
    subdomains = windowed.get_column("subdomain").drop_nulls().unique()
    entropy = pl.DataFrame({"subdomain": subdomains,
                            "entropy": pl.Series([entropy_millibits(name) for name in subdomains], dtype=pl.Int64)})
    windowed = windowed.join(entropy, on="subdomain", how="left")
    per_domain = (windowed.drop_nulls("subdomain").group_by("key", "window_start", "domain")
                  .agg(pl.col("subdomain").n_unique().alias("subdomains"))
                  .group_by("key", "window_start").agg(pl.col("subdomains").max().cast(pl.Float64)
                                                      .alias("max_subdomains")))
    return (
        windowed.group_by("key", "window_start")
        .agg(pl.len().cast(pl.Int64).alias("records"),
             (pl.col("rcode_name") == "NXDOMAIN").sum().alias("nxdomain"),
             pl.col("entropy").max().fill_null(0).alias("max_entropy"),
             pl.col("qtype_name").is_in(PAYLOAD_TYPES).sum().alias("payload"))
        .join(per_domain, on=["key", "window_start"], how="left")
        .with_columns((pl.col("nxdomain") / pl.col("records")).alias("nxdomain_ratio"),
                      pl.col("max_subdomains").fill_null(0.0),
                      (pl.col("max_entropy").cast(pl.Float64) / 1000).alias("max_subdomain_entropy"),
                      (pl.col("payload") / pl.col("records")).alias("txt_null_any_ratio"))
        .select("key", "window_start", *FEATURES)
        .sort("key", "window_start")
    )


def gaussian_verdicts(series: np.ndarray, k: float, n_init: int) -> np.ndarray:
    """series: (endpoints, longest) values, NaN-padded after each endpoint's last window.

    Returns the verdict codes: 0 calibrating, 1 normal, 2 anomaly, -1 padding."""
    endpoints, longest = series.shape
    n = np.zeros(endpoints)
    mean = np.zeros(endpoints)
    m2 = np.zeros(endpoints)
    codes = np.full(series.shape, -1, dtype=np.int8)
    for t in range(longest):
        x = series[:, t]
        present = ~np.isnan(x)
        calibrating = present & (n < n_init)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(m2 / (n - 1))
        judged = present & ~calibrating
        outside = judged & ((x > mean + k * std) | (x < mean - k * std))
        codes[calibrating, t] = 0
        codes[judged & ~outside, t] = 1
        codes[outside, t] = 2
        learn = calibrating | (judged & ~outside)
        n[learn] += 1
        delta = x[learn] - mean[learn]
        mean[learn] += delta / n[learn]
        m2[learn] += delta * (x[learn] - mean[learn])
    return codes


def statuses(windows: pl.DataFrame, k: float, n_init: int) -> pl.DataFrame:
    ranked = windows.with_columns(pl.col("window_start").rank("ordinal").over("key").cast(pl.Int64).alias("t") - 1,
                                  pl.col("key").rank("dense").cast(pl.Int64).alias("e") - 1)
    e, t = ranked["e"].to_numpy(), ranked["t"].to_numpy()
    names = np.array(["calibrating", "normal", "anomaly"])
    parts = []
    for feature in FEATURES:
        series = np.full((int(e.max()) + 1, int(t.max()) + 1), np.nan)
        series[e, t] = ranked[feature].cast(pl.Float64).to_numpy()
        codes = gaussian_verdicts(series, k, n_init)[e, t]
        parts.append(ranked.select("key", "window_start").with_columns(pl.lit(feature).alias("feature"),
                                                                     pl.Series("status", names[codes])))
    return pl.concat(parts)


def verdicts(windows: pl.DataFrame, min_records: int) -> pl.DataFrame:
    """The population-free part of each window's verdict (see the module's docstring)."""
    few = pl.col("records") < min_records
    return windows.select("key", "window_start",
                          pl.when(few).then(pl.lit("unjudged")).otherwise(pl.lit("judged")).alias("status"),
                          pl.when(few).then(pl.lit("too_few_records")).alias("reason"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--k", type=float, default=3.0)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--min-records", type=int, default=3)
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    paths = sorted(path for name in args.inputs for path in
                   (Path(name).rglob("*.log") if Path(name).is_dir() else [Path(name)]))
    timings = {}
    start = time.perf_counter()
    records = pl.concat([read_dns_log(path) for path in paths])
    timings["read"] = time.perf_counter() - start
    start = time.perf_counter()
    windows = window_features(records)
    timings["window"] = time.perf_counter() - start
    start = time.perf_counter()
    scored = statuses(windows, args.k, args.n_init)
    judged = verdicts(windows, args.min_records)
    timings["score"] = time.perf_counter() - start
    start = time.perf_counter()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    timestamp = pl.Datetime("us", "UTC")
    windows.with_columns(pl.col("window_start").cast(timestamp)).write_parquet(output / "features.parquet")
    for name, frame in (("scores", scored), ("verdicts", judged)):
        frame.with_columns(pl.col("window_start").cast(timestamp)).write_parquet(output / f"{name}.parquet")
    timings["write"] = time.perf_counter() - start
    (output / "timings.json").write_text(json.dumps(timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
