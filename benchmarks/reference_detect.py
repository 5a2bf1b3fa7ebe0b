"""The reference `detect bench_detect` holds beamlytics to: a short polars + numpy script.

Reads Zeek dns.log files, computes per-client 60 s window features (records, distinct
names, NXDOMAIN ratio) and judges each client's windows, oldest first, with the online
gaussian rule: after `n_init` calibrating values, a value outside mean ± k·σ (σ with
ddof=1, Welford's running update) of the values accepted so far is an anomaly and is not
learnt. Writes features.parquet, verdicts.parquet and timings.json (seconds per stage).
Written apart from beamlytics, on purpose: it shares no code with it.

    python -m benchmarks.reference_detect --output OUT FOLDER_OR_FILES...
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

WINDOW_US = 60_000_000
FEATURES = ("records", "distinct_names", "nxdomain_ratio")


def read_dns_log(path: Path) -> pl.DataFrame:
    with path.open(encoding="utf-8") as handle:
        fields = next(line for line in handle if line.startswith("#fields")).rstrip("\n").split("\t")[1:]
    frame = pl.read_csv(path, separator="\t", comment_prefix="#", has_header=False, new_columns=fields,
                        columns=[fields.index(name) for name in ("ts", "id.orig_h", "query", "rcode_name")],
                        null_values="-", quote_char=None, infer_schema=False)
    # ts has exactly six decimals: read it as integer µs, exactly (a float would round).
    return frame.select(pl.col("ts").str.replace(".", "", literal=True).cast(pl.Int64).alias("ts_us"),
                        pl.col("id.orig_h").alias("key"), "query", "rcode_name")


def window_features(records: pl.DataFrame) -> pl.DataFrame:
    return (
        records.drop_nulls(["ts_us", "key"])
        .with_columns((pl.col("ts_us") - pl.col("ts_us") % WINDOW_US).alias("window_start"))
        .group_by("key", "window_start")
        .agg(pl.len().cast(pl.Int64).alias("records"),
             pl.col("query").drop_nulls().n_unique().cast(pl.Float64).alias("distinct_names"),
             (pl.col("rcode_name") == "NXDOMAIN").sum().alias("nxdomain"))
        .with_columns((pl.col("nxdomain") / pl.col("records")).alias("nxdomain_ratio"))
        .drop("nxdomain")
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


def verdicts(windows: pl.DataFrame, k: float, n_init: int) -> pl.DataFrame:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--k", type=float, default=3.0)
    parser.add_argument("--n-init", type=int, default=10)
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
    judged = verdicts(windows, args.k, args.n_init)
    timings["score"] = time.perf_counter() - start
    start = time.perf_counter()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    timestamp = pl.Datetime("us", "UTC")
    windows.with_columns(pl.col("window_start").cast(timestamp)).write_parquet(output / "features.parquet")
    judged.with_columns(pl.col("window_start").cast(timestamp)).write_parquet(output / "verdicts.parquet")
    timings["write"] = time.perf_counter() - start
    (output / "timings.json").write_text(json.dumps(timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
