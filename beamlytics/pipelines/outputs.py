"""The output folder contract: a run never deletes or mixes anything it did not write.

Each run writes a manifest, `OUT/.beamlytics-manifest.json`: the tool version, the command and
every file the run wrote with its size and sha256. A folder holds the result of one run. Only the
entries a manifest lists may ever be replaced, and only with `--overwrite`; a folder holding
anything else (a user's files, or a listed file changed since) is refused.

A run writes into `OUT/.beamlytics-staging-<id>/` and moves its entries into place only once the
pipeline succeeded, so a run killed halfway leaves no folder that looks complete. The staging
folder's own manifest is written last, when the pipeline is done; while it is there the move may
be partly done, and the next run rolls the move back (earlier entries wait in `.replaced/` inside
the staging folder). A staging folder without it is an unfinished run's, and is removed.

`OUT/.beamlytics-lock` is held with `flock` for the whole run: the kernel releases it when the
process dies, however it dies, so a stale lock never blocks; it records pid and host so that a
refusal says who holds it.

Object stores (`gs://`, `s3://`) have no rename or lock: there a run writes only into a prefix that
holds no objects, through Beam's FileSystems, and never deletes anything.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import uuid
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO, Iterator, Sequence

from beamlytics.manifest import MANIFEST, MOVE_IT, Manifest, OutputError, read_manifest

LOCK = ".beamlytics-lock"
STAGING_PREFIX = ".beamlytics-staging-"
RUN_MARKER = ".beamlytics-run"  # in a staging folder: whose it is
REPLACED = ".replaced"  # in a staging folder: earlier entries moved aside while the new ones move in
_INTERNAL = {MANIFEST, LOCK}
_HASH_CHUNK = 1 << 20


def is_bookkeeping(name: str) -> bool:
    """A file or folder name that beamlytics keeps for itself in an output folder: never an input."""
    return name in _INTERNAL or name.startswith(STAGING_PREFIX)


def is_remote(path: str) -> bool:
    return "://" in path


def _digest(handle: BinaryIO) -> tuple[int, str]:
    """Size and sha256 of what `handle` reads, a chunk at a time: outputs can be larger than memory."""
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def size_and_sha256(path: str) -> tuple[int, str]:
    with open(path, "rb") as handle:
        return _digest(handle)


def _files_under(folder: str, names: Sequence[str]) -> list[str]:
    """Relative paths of the files under the entries `names` of `folder`, and of empty folders (`a/b/`), sorted."""
    found = []
    for name in names:
        top = os.path.join(folder, name)
        if not os.path.isdir(top) or os.path.islink(top):
            found.append(name)
            continue
        for root, dirs, files in os.walk(top):
            relative = os.path.relpath(root, folder).replace(os.sep, "/")
            found.extend(f"{relative}/{file}" for file in files)
            if not dirs and not files:
                found.append(f"{relative}/")
    return sorted(found)


def manifest_of(folder: str, command: str) -> Manifest:
    """The manifest of what a run wrote into its staging folder (empty folders hold nothing to list)."""
    names = [name for name in os.listdir(folder) if name not in (RUN_MARKER, REPLACED, MANIFEST)]
    files = [(relative, *size_and_sha256(os.path.join(folder, relative)))
             for relative in _files_under(folder, names) if not relative.endswith("/")]
    return Manifest(command, tuple(files))


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_against_inputs(output: str, patterns: Sequence[str], files: Sequence[str]) -> None:
    """Refuse an output folder that is, is inside, or contains an input."""
    if is_remote(output):
        return
    if os.path.lexists(output) and not os.path.isdir(output):
        raise OutputError(f"--output {output} is a file, not a folder")
    real = os.path.realpath(output)
    for pattern in patterns:
        if is_remote(pattern) or not os.path.isdir(pattern):
            continue
        if _within(real, os.path.realpath(pattern)):
            raise OutputError(f"output folder {output} is inside the input folder {pattern}; "
                              "choose an --output folder outside the inputs")
        if _within(os.path.realpath(pattern), real):
            raise OutputError(f"output folder {output} contains the input folder {pattern}; "
                              "choose an --output folder that holds no inputs")
    for path in files:
        if not is_remote(path) and _within(os.path.realpath(path), real):
            raise OutputError(f"output folder {output} contains the input {path}; "
                              "choose an --output folder that holds no inputs")


def check_contents(folder: str, overwrite: bool) -> Manifest | None:
    """The earlier run's manifest if its entries may be replaced; refuse a folder with anything else in it."""
    earlier = read_manifest(folder)
    owned = set(earlier.entries) if earlier else set()
    foreign = sorted(name for name in os.listdir(folder) if name not in _INTERNAL and name not in owned)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputError(f"output folder {folder} holds files beamlytics did not write ({foreign[0]}{more}); "
                          "choose an empty or new --output folder")
    if earlier is None:
        return None
    listed = {path: (size, digest) for path, size, digest in earlier.files}
    present = [name for name in earlier.entries if os.path.lexists(os.path.join(folder, name))]
    for relative in _files_under(folder, present):
        path = os.path.join(folder, relative)
        if relative not in listed:
            raise OutputError(f"{path} was not written by beamlytics; {MOVE_IT}")
        size, _ = listed[relative]
        if os.path.islink(path) or os.path.getsize(path) != size or size_and_sha256(path) != listed[relative]:
            raise OutputError(f"{path} changed since beamlytics wrote it; {MOVE_IT}")
    if not overwrite:
        raise OutputError(f"output folder {folder} holds the result of an earlier beamlytics {earlier.command} "
                          f"({', '.join(earlier.entries)}); add --overwrite to replace it, "
                          "or choose another --output folder")
    return earlier


def _holder(fd: int) -> str:
    try:
        document = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {document['pid']} on {document['host']} since {document['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "a run that is just starting"


def acquire_lock(folder: str) -> int:
    """The file descriptor holding `folder`'s lock; refuse if another live run holds it."""
    path = os.path.join(folder, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"output folder {folder} is being written by another beamlytics run ({holder}); "
                              "wait for it to end or choose another --output folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the run that held it just ended and removed the file: lock the next one
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    return fd


def release_lock(folder: str, fd: int) -> None:
    # Removed while still held, so that no other run can be holding this file when it goes.
    with suppress(FileNotFoundError):  # the folder was moved or removed during the run
        os.unlink(os.path.join(folder, LOCK))
    os.close(fd)


def recover(folder: str) -> None:
    """Undo what dead runs left in `folder` (call with the lock held: no live run owns a staging folder)."""
    for name in sorted(os.listdir(folder)):
        staging = os.path.join(folder, name)
        if name.startswith(STAGING_PREFIX) and os.path.isdir(staging) and not os.path.islink(staging):
            contents = os.listdir(staging)
            if not contents or RUN_MARKER in contents:
                roll_back(folder, staging)


def roll_back(folder: str, staging: str) -> None:
    """Put `folder` back as it was before the run that owns `staging`, and remove `staging`."""
    try:
        finished = read_manifest(staging)
    except OutputError:
        finished = None  # killed while writing it: nothing had moved yet
    if finished:  # the move into place may have begun
        for name in finished.entries:
            if not os.path.lexists(os.path.join(staging, name)) and os.path.lexists(os.path.join(folder, name)):
                os.rename(os.path.join(folder, name), os.path.join(staging, name))
        replaced = os.path.join(staging, REPLACED)
        if os.path.isdir(replaced):
            for name in sorted(os.listdir(replaced)):
                os.rename(os.path.join(replaced, name), os.path.join(folder, name))
    shutil.rmtree(staging)


def install(folder: str, staging: str, command: str, earlier: Manifest | None) -> Manifest:
    """Move the finished run's entries from `staging` into `folder`, replacing the earlier run's."""
    manifest = manifest_of(staging, command)
    with open(os.path.join(staging, MANIFEST), "wb") as handle:
        handle.write(manifest.to_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    replaced = os.path.join(staging, REPLACED)
    os.mkdir(replaced)
    for name in earlier.entries if earlier else ():
        if os.path.lexists(os.path.join(folder, name)):
            os.rename(os.path.join(folder, name), os.path.join(replaced, name))
    for name in manifest.entries:
        os.rename(os.path.join(staging, name), os.path.join(folder, name))
    os.replace(os.path.join(staging, MANIFEST), os.path.join(folder, MANIFEST))  # from here on the run is done
    shutil.rmtree(staging)
    return manifest


class Terminated(KeyboardInterrupt):
    """SIGTERM during a batch run, unwound as Ctrl-C is: the staging folder goes, the earlier result stays."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def _signals_handled(handlers: dict[int, Any]) -> Iterator[None]:
    """`handlers` in place of the current signal handlers for the block (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def local_output(folder: str, command: str, overwrite: bool = False) -> Iterator[str]:
    """The staging folder to write into; its entries replace the folder's only if the block succeeds."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = acquire_lock(folder)
    except OSError as error:  # read-only, not ours, or a filesystem without locks: never write unlocked
        raise OutputError(f"cannot lock output folder {folder}: {error.strerror or error}") from None
    try:
        recover(folder)
        earlier = check_contents(folder, overwrite)
        staging = os.path.join(folder, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        try:  # from before the folder exists: a Ctrl-C just after it is made must remove it too
            os.mkdir(staging)
            with open(os.path.join(staging, RUN_MARKER), "w", encoding="utf-8") as handle:
                handle.write(f"{command} pid {os.getpid()} on {socket.gethostname()}\n")
            yield staging
            # Ctrl-C and SIGTERM during the few renames that finish a run are ignored: the run is done by then.
            # A SIGKILL there cannot be ignored; the next run rolls the half-done move back.
            with _signals_handled({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):
                install(folder, staging, command, earlier)
        except BaseException:
            if os.path.isdir(staging):
                roll_back(folder, staging)
            raise
    finally:
        release_lock(folder, fd)


@contextmanager
def remote_output(prefix: str, command: str) -> Iterator[str]:
    """Object stores: stage under the prefix, then rename through Beam's FileSystems; never delete."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    prefix = prefix.rstrip("/")
    existing = FileSystems.match([f"{prefix}/**"])[0].metadata_list
    if existing:
        raise OutputError(f"output {prefix} already holds objects ({existing[0].path}); beamlytics never "
                          "replaces or deletes remote objects: choose a new --output prefix")
    staging = f"{prefix}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        yield staging
    except BaseException:
        ours = [meta.path for meta in FileSystems.match([f"{staging}/**"])[0].metadata_list]
        if ours:
            FileSystems.delete(ours)  # only the objects this run wrote
        raise
    written = sorted(meta.path for meta in FileSystems.match([f"{staging}/**"])[0].metadata_list)
    relative = [path[len(staging) + 1:] for path in written]
    files = []
    for source, name in zip(written, relative):
        with FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            files.append((name, *_digest(handle)))
    targets = [f"{prefix}/{name}" for name in relative]
    for target in targets:
        parent = target.rsplit("/", 1)[0]
        if not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)  # local paths only: object stores have no folders
    FileSystems.rename(written, targets)
    manifest = Manifest(command, tuple(files))
    with FileSystems.create(f"{prefix}/{MANIFEST}") as handle:
        handle.write(manifest.to_bytes())


@contextmanager
def open_output(output: str, command: str, overwrite: bool, patterns: Sequence[str],
                input_files: Sequence[str]) -> Iterator[str]:
    """Check `output` against the inputs and its contents, and give the staging folder to write into."""
    check_against_inputs(output, patterns, input_files)
    folder = output.rstrip("/") or "/"
    # Without this, SIGTERM (`kill`, a scheduler's timeout) ends the process where it stands and the
    # staging folder stays until the next run into this folder removes it.
    with _signals_handled({signal.SIGTERM: _terminate}):
        if is_remote(folder):
            with remote_output(folder, command) as staging:
                yield staging
        else:
            with local_output(folder, command, overwrite) as staging:
                yield staging


def is_output_folder(folder: str) -> bool:
    """A folder a beamlytics run wrote or is writing: input expansion does not read it back."""
    name = os.path.basename(folder.rstrip("/"))
    return name.startswith(STAGING_PREFIX) or any(os.path.lexists(os.path.join(folder, internal))
                                                  for internal in _INTERNAL)
