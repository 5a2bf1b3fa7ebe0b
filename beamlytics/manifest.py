"""The manifest of an output folder: which files a beamlytics run wrote there, with their sizes and sha256.

Its own module because readers of finished outputs (analytics, report) need it without the
machinery that writes output folders (`pipelines/outputs.py`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from beamlytics import __version__

MANIFEST = ".beamlytics-manifest.json"
MOVE_IT = "move it away or choose another --output folder"


class OutputError(Exception):
    """An output folder this run must not write into, told to the user in one line."""


@dataclass(frozen=True)
class Manifest:
    command: str
    files: tuple[tuple[str, int, str], ...]  # (path relative to the folder, size, sha256), sorted
    version: str = __version__

    @property
    def entries(self) -> list[str]:
        """The top-level names the run owns: folders such as `dns` and files such as `summary.json`."""
        return sorted({path.split("/", 1)[0] for path, _, _ in self.files})

    def to_bytes(self) -> bytes:
        # No times, pids or paths: the same run gives the same bytes, like every other output.
        document = {"tool": "beamlytics", "version": self.version, "command": self.command,
                    "files": [{"path": path, "size": size, "sha256": digest} for path, size, digest in self.files]}
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "Manifest":
        try:
            document = json.loads(data)
            if document.get("tool") != "beamlytics":
                raise ValueError("not a beamlytics manifest")
            files = tuple((item["path"], int(item["size"]), item["sha256"]) for item in document["files"])
            return cls(document["command"], files, document["version"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise OutputError(f"{where} is not a readable beamlytics manifest ({error}); {MOVE_IT}") from None


def read_manifest(folder: str) -> Manifest | None:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return Manifest.from_bytes(handle.read(), path)
