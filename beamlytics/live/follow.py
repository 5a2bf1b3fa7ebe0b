"""Follow a folder of rotating Zeek logs: new files as they appear, growing files as they grow.

Files are known by their identity (device, inode), not their name: when Zeek rotates
`dns.log` into `2024-05-01/dns.00:00:00-01:00:00.log` the renamed file keeps its cursor, so
its last lines are read once, and the new `dns.log` is a new file read from its start.
A cursor stops at the last complete line; the rest is read when its newline has been written.
The cursors are plain data (`state()`), which the splittable DoFn carries in its restriction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from beamlytics.live.chunks import Chunk
from beamlytics.parsers import formats, zeek
from beamlytics.parsers.base import Rejected, read_head
from beamlytics.pipelines.outputs import is_bookkeeping, is_output_folder

# A poll reads at most this much of one file: bounded memory, however far behind a file is.
CHUNK_BYTES = 4 << 20
_HEADER_BYTES = 64 << 10


@dataclass
class Cursor:
    path: str
    offset: int = 0  # bytes read: always just after a newline
    lines: int = 0  # complete lines read
    kind: str = ""  # Zeek log kind, once known

    def as_json(self) -> dict:
        return {"path": self.path, "offset": self.offset, "lines": self.lines, "kind": self.kind}


def _identity(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


class FolderFollower:
    """Polls `roots` (folders, searched recursively, or files) for complete new lines of logs feeding `table`."""

    def __init__(self, roots: Sequence[str], table: str, state: dict | None = None, chunk_bytes: int = CHUNK_BYTES):
        self.roots = list(roots)
        self.table = table
        self.chunk_bytes = chunk_bytes
        self.cursors = {identity: Cursor(**cursor) for identity, cursor in (state or {}).get("files", {}).items()}
        # identity -> [path, why]: files seen that do not feed the table, so that they are sniffed once.
        self.skipped: dict[str, list[str]] = dict((state or {}).get("skipped", {}))

    def state(self) -> dict:
        return {"files": {identity: self.cursors[identity].as_json() for identity in sorted(self.cursors)},
                "skipped": dict(sorted(self.skipped.items()))}

    def _files(self) -> Iterator[tuple[str, os.stat_result]]:
        for root in self.roots:
            if os.path.isfile(root):
                yield root, os.stat(root)
                continue
            for folder, dirs, files in os.walk(root):
                # Never read an output folder back (a live run may write beside its logs).
                dirs[:] = sorted(d for d in dirs if not is_bookkeeping(d)
                                 and not is_output_folder(os.path.join(folder, d)))
                if is_output_folder(folder):
                    continue
                for name in sorted(files):
                    path = os.path.join(folder, name)
                    try:
                        stat = os.stat(path)
                    except OSError:
                        continue  # removed between the listing and now
                    if os.path.isfile(path):
                        yield path, stat

    def poll(self) -> tuple[list[Chunk], list[Rejected]]:
        """The complete lines written since the last poll, a chunk per file with new lines."""
        chunks, rejected, seen = [], [], set()
        for path, stat in self._files():
            identity = _identity(stat)
            seen.add(identity)
            cursor = self.cursors.get(identity)
            if identity in self.skipped:
                continue
            if cursor is None:
                cursor = Cursor(path)
            cursor.path = path  # renamed by rotation: same file, same cursor
            if stat.st_size < cursor.offset:
                # Truncated in place (copytruncate rotation) or a new file on a reused inode: read it anew.
                cursor = Cursor(path)
            self.cursors[identity] = cursor
            if stat.st_size == cursor.offset:
                continue
            try:
                chunk = self._read(cursor)
            except OSError as error:
                rejected.append(Rejected(path, cursor.lines + 1, f"cannot read: {error}", source_tool=zeek.FORMAT,
                                         units=0))
                continue
            if isinstance(chunk, str):  # the kind it is does not feed the table
                self.skipped[identity] = [path, _not_feeding(chunk, self.table)]
                del self.cursors[identity]
            elif chunk is not None:
                chunks.append(chunk)
        # Forget files that are gone: the cursors stay as many as the files present.
        for known in (self.cursors, self.skipped):
            for identity in [identity for identity in known if identity not in seen]:
                del known[identity]
        return chunks, rejected

    def caught_up(self) -> bool:
        """Always, after a poll that found nothing: every file was read to its last complete line."""
        return True

    def _read(self, cursor: Cursor) -> Chunk | str | None:
        """The file's new complete lines; for a file not yet known, the kind it has if that does not feed the table."""
        with open(cursor.path, "rb") as handle:
            header = b""
            if not cursor.kind:
                head = read_head(handle)
                if b"\n" not in head:
                    return None  # too little written yet to tell what it is
                identified = formats.identify(os.path.basename(cursor.path), head, zeek.FORMAT)
                kind = identified[1] if identified else ""
                if self.table not in zeek.TABLES.get(kind, ()):
                    return kind
                cursor.kind = kind
            if cursor.offset:
                handle.seek(0)
                header = _header_block(handle.read(_HEADER_BYTES))
            handle.seek(cursor.offset)
            data = handle.read(self.chunk_bytes)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return None  # no complete line yet
        data = data[:end]
        count = data.count(b"\n")
        chunk = Chunk(cursor.path, cursor.kind, data, tuple(range(cursor.lines + 1, cursor.lines + count + 1)), header)
        cursor.offset += end
        cursor.lines += count
        return chunk


def _not_feeding(kind: str, table: str) -> str:
    if not kind:
        return "not a Zeek log"
    return f"zeek {kind} feeds {', '.join(sorted(zeek.TABLES.get(kind, ()))) or 'no table'}, not {table}"


def _header_block(head: bytes) -> bytes:
    """The `#` lines a TSV log starts with (none for a JSON log): what later lines' columns are."""
    end = 0
    while head.startswith(b"#", end):
        newline = head.find(b"\n", end)
        if newline < 0:
            break
        end = newline + 1
    return head[:end]
