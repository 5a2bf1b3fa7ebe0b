"""Which files a run reads: paths, globs and folders, narrowed to a range of days.

Operators keep logs in the trees their tools write: Zeek's `YYYY-MM-DD/` folders, rotated
`access.log-YYYYMMDD`, dnscap's `base.YYYYMMDD.HHmmSS.uSec`, Tstat's
`YYYY_MM_DD_HH_MM.out/`. A file whose path names a day outside `--start-day/--end-day` is
not opened at all; records are filtered again by their own timestamps later, because a
file named for one day can hold the first minutes of the next.

Paths go through Beam's FileSystems so that the same run reads `gs://` or `s3://` inputs.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

# Most specific first: a full date with separators, then compact YYYYMMDD in rotated names.
_DAY_PATTERNS = (
    re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)"),  # Zeek folders, ISO names
    re.compile(r"(?<!\d)(\d{4})_(\d{2})_(\d{2})_\d{2}_\d{2}\.out"),  # Tstat
    re.compile(r"[.-](\d{4})(\d{2})(\d{2})(?:[.-]|$)"),  # access.log-20250101, base.20250101.120000
)


class InputError(ValueError):
    """A problem with the inputs that the user can fix (missing path, empty glob)."""


@dataclass(frozen=True)
class DayRange:
    start: dt.date | None = None
    end: dt.date | None = None  # inclusive

    def contains(self, day: dt.date) -> bool:
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)

    @property
    def bounded(self) -> bool:
        return self.start is not None or self.end is not None

    def micros(self) -> tuple[int | None, int | None]:
        """The range as [start, end) microseconds since the epoch, for filtering records."""
        def to_micros(day: dt.date) -> int:
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            return int(moment.timestamp()) * 1_000_000

        start = to_micros(self.start) if self.start else None
        end = to_micros(self.end + dt.timedelta(days=1)) if self.end else None
        return start, end


def parse_day(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"not a day: {text!r} (expected YYYY-MM-DD)") from None


def day_of_path(path: str) -> dt.date | None:
    """The day a rotated log or dated folder is named for, if its path names one."""
    for pattern in _DAY_PATTERNS:
        for match in reversed(list(pattern.finditer(path))):
            try:
                return dt.date(int(match[1]), int(match[2]), int(match[3]))
            except ValueError:
                continue
    return None


def expand_inputs(patterns: list[str], days: DayRange = DayRange()) -> list[str]:
    """Every file named by `patterns` (files, globs, folders searched recursively), sorted.

    A pattern that matches nothing is an error the user must hear about: a typo in a path
    must not turn into an empty, successful run.
    """
    if not patterns:
        raise InputError("no input given")
    files: set[str] = set()
    for pattern in patterns:
        matched = _match(pattern)
        if not matched:
            raise InputError(f"no such file or folder: {pattern}")
        files.update(matched)
    selected = []
    for path in sorted(files):
        day = day_of_path(path)
        if day is None or not days.bounded or days.contains(day):
            selected.append(path)
    return selected


def _match(pattern: str) -> list[str]:
    if _is_local_dir(pattern):
        pattern = pattern.rstrip("/") + "/**"
    results = FileSystems.match([pattern])[0].metadata_list
    return [meta.path for meta in results if not _is_local_dir(meta.path)]


def _is_local_dir(path: str) -> bool:
    # Object stores have no folders: their listings hold only files.
    return "://" not in path and os.path.isdir(path)
