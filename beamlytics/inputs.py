"""Which files a run reads: paths, globs and folders, narrowed to a range of days.

Operators keep logs in the trees their tools write: Zeek's `YYYY-MM-DD/` folders, rotated
`access.log-YYYYMMDD`, dnscap's `base.YYYYMMDD.HHmmSS.uSec`, Tstat's
`YYYY_MM_DD_HH_MM.out/`. A file whose path names a day outside `--start-day/--end-day` is
not opened at all; records are filtered again by their own timestamps later, because a
file named for one day can hold the first minutes of the next.

Paths go through Beam's FileSystems so that the same run reads `gs://` or `s3://` inputs.
Folders are searched without entering beamlytics output folders (a run must not read its
own earlier Parquet back as logs); FIFOs, devices and dangling links found there stay in
the list, to be dead-lettered when opened rather than block the run or vanish.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import stat
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from beamlytics.pipelines.outputs import is_bookkeeping, is_output_folder

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


@dataclass
class Selection:
    paths: list[str]  # sorted; special files and dangling links stay in, to be dead-lettered when opened
    skipped_outputs: list[str]  # beamlytics output folders inside input folders, not read back as input


def expand_inputs(patterns: list[str], days: DayRange = DayRange()) -> list[str]:
    """Every file named by `patterns` (files, globs, folders searched recursively), sorted."""
    return select_inputs(patterns, days).paths


def select_inputs(patterns: list[str], days: DayRange = DayRange()) -> Selection:
    """The files named by `patterns`, and the output folders their folders hold.

    A pattern that matches nothing is an error the user must hear about: a typo in a path
    must not turn into an empty, successful run.
    """
    if not patterns:
        raise InputError("no input given")
    files: set[str] = set()
    skipped: list[str] = []
    for pattern in patterns:
        files.update(_match(pattern, skipped))
    selected = []
    for path in sorted(files):
        day = day_of_path(path)
        if day is None or not days.bounded or days.contains(day):
            selected.append(path)
    return Selection(selected, sorted(skipped))


def unreadable_reason(path: str) -> str | None:
    """Why a local input cannot be opened as a file, if so: a FIFO would block the run forever."""
    if "://" in path:
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"dangling symbolic link to {os.readlink(path)}" if os.path.islink(path) else None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
    return "not a regular file: " + next((kind for test, kind in kinds if test(mode)), "a special file")


def _match(pattern: str, skipped: list[str]) -> list[str]:
    if _is_local_dir(pattern):
        found_outputs: list[str] = []
        files = _walk(pattern.rstrip("/") or "/", found_outputs)
        skipped.extend(found_outputs)
        if not files:
            also = f" (only beamlytics outputs, not read as input: {', '.join(found_outputs)})" if found_outputs else ""
            raise InputError(f"folder {pattern} has no files{also}")
        return files
    results = FileSystems.match([pattern])[0].metadata_list
    if not results and "://" not in pattern and os.path.islink(pattern):
        return [pattern]  # a dangling link: dead-lettered with its target when opened
    if not results:
        raise InputError(f"no such file or folder: {pattern}")
    paths = [meta.path for meta in results if not _is_local_dir(meta.path)]
    return paths if "://" in pattern else _outside_outputs(paths, pattern, skipped)


def _outside_outputs(paths: list[str], pattern: str, skipped: list[str]) -> list[str]:
    """The paths a local glob matched that are not inside an output folder below the glob's fixed part."""
    fixed = []
    for part in pattern.split(os.sep)[:-1]:
        if re.search(r"[*?[]", part):
            break
        fixed.append(part)
    base = os.sep.join(fixed) if fixed else "."
    verdicts: dict[str, bool] = {}
    kept = []
    for path in paths:
        relative = os.path.relpath(os.path.dirname(path), base)
        folders = [] if relative == "." or relative.startswith("..") else relative.split(os.sep)
        inside = False
        for depth in range(1, len(folders) + 1):
            folder = os.path.join(base, *folders[:depth])
            if folder not in verdicts:
                verdicts[folder] = is_output_folder(folder)
                if verdicts[folder]:
                    skipped.append(folder)
            if verdicts[folder]:
                inside = True
                break
        if not inside:
            kept.append(path)
    if paths and not kept:
        raise InputError(f"{pattern} matches only files in beamlytics output folders, which are not read as input")
    return kept


def _walk(top: str, skipped: list[str]) -> list[str]:
    """Files under a local folder, following links to folders once; output folders go to `skipped`."""
    def unreadable(error: OSError) -> None:
        raise InputError(f"cannot read folder {error.filename}: {error.strerror}")

    files = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(top, onerror=unreadable, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        kept = []
        for name in sorted(dirs):
            if is_bookkeeping(name):
                continue
            if is_output_folder(os.path.join(root, name)):
                skipped.append(os.path.join(root, name))
            else:
                kept.append(name)
        dirs[:] = kept
        # A folder named as input may itself be an earlier result (the demo's logs): its data is
        # read, its manifest and lock are not.
        files.extend(os.path.join(root, name) for name in names if not is_bookkeeping(name))
    return files


def _is_local_dir(path: str) -> bool:
    # Object stores have no folders: their listings hold only files.
    return "://" not in path and os.path.isdir(path)



def file_size(path: str) -> int:
    """Bytes of a file on any Beam filesystem; 0 when it cannot be sized (it is dead-lettered when read)."""
    try:
        matched = FileSystems.match([path])[0].metadata_list
    except (OSError, ValueError):  # Beam's BeamIOError is an OSError
        return 0
    return matched[0].size_in_bytes if matched else 0


def total_bytes(paths: list[str]) -> int:
    """Bytes on storage of the files in `paths`: how big a run is."""
    return sum(file_size(path) for path in paths)
