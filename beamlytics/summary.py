"""Why a run's result is empty: the lines summary.json's `notes` and stderr give the user.

A run that ends with nothing to show must say why, in terms of what the user can change
(an option, the inputs): an empty Parquet folder with exit status 0 reads as "all is well".
"""
from __future__ import annotations

from typing import Any, Mapping


def all_rejected(summary: Mapping[str, Any]) -> bool:
    """Nothing of the input could be read: the run failed, whatever it wrote."""
    # A whole-file rejection stands for no read unit (`rejected` 0) but is still a dead letter.
    dead = summary.get("rejected", 0) + summary.get("dead_letters", 0)
    return dead > 0 and summary.get("parsed", 0) == 0


def explain(summary: Mapping[str, Any]) -> list[str]:
    """The reason the result is empty, the most fundamental one, as a list of lines: empty when it is not."""
    table = summary.get("table", "the")
    skipped = summary.get("skipped") or {}
    if all_rejected(summary):
        files = summary.get("rejected_files", 0)
        return [f"every input was rejected: {summary.get('rejected', 0):,} unreadable lines or packets and "
                f"{files:,} unreadable files, nothing parsed (reasons in rejected/)"]
    if summary.get("files", 0) == 0 and skipped:
        reasons = sorted(set(skipped.values()))
        return [f"no input file feeds the {table} table: {len(skipped):,} skipped ({'; '.join(reasons)}); "
                "choose another --table or give other inputs"]
    if summary.get("records", 0) == 0:
        if summary.get("out_of_day_range", 0):
            return [f"no {table} record falls in --start-day/--end-day: all {summary['out_of_day_range']:,} "
                    "records are outside it"]
        return [f"the inputs hold no {table} records"]
    scores, calibrating = summary.get("scores", 0), summary.get("calibrating", 0)
    if scores and calibrating == scores:
        need = summary.get("calibration_windows")
        needs = f" needs {need} windows per endpoint before it judges one" if need else " is still calibrating"
        return [f"all {scores:,} scores are still calibrating: the {summary.get('detector')} detector{needs}; "
                "lower --n-init, give a longer input or a shorter --window, or calibrate on --baseline"]
    return []
