"""Shared test helpers.

Real captures and logs live outside the repository, in `../shared/data` beside the checkout
(override with BEAMLYTICS_DATA). Tests that need them skip, saying which file was missing;
the core suite generates its own small fixtures.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DATA_DIR = Path(
    os.environ.get("BEAMLYTICS_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def shared_data(relative: str) -> Path:
    """Path of a file or folder under the shared data directory; skip the test if absent."""
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set BEAMLYTICS_DATA to the data folder)")
    return path


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip for want of a tool or engine that `.ci/run` provisions; under CI=true that want is a failure,
    so that CI can never pass by skipping what it was meant to run."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def provisioned_tool(name: str) -> bool:
    """Whether the command `name` is on PATH; under CI=true, where `.ci/run` installs it, its absence fails the
    test, so that a comparison with the tool cannot quietly fall back on recorded output."""
    if shutil.which(name):
        return True
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not on PATH, though .ci/run installs it")
    return False


def scaled(seconds: float) -> float:
    """A limit that only guards against a hang, stretched by how many times over the cores are busy:
    two cores shared by many test runs make a subprocess several times slower than on an idle machine."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def collect(build) -> list:
    """Elements of the PCollection that `build(pipeline)` returns, after a DirectRunner run.

    Beam pickles every function it runs, so results cannot be appended to a list in the
    test; they travel through a file this test wrote itself.
    """
    import pickle
    import tempfile

    import apache_beam as beam

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "elements.pickle")
        with beam.Pipeline() as pipeline:
            build(pipeline) | beam.combiners.ToList() | beam.Map(_dump, path)
        with open(path, "rb") as handle:
            return pickle.load(handle)


def _dump(elements: list, path: str) -> None:
    import pickle

    with open(path, "wb") as handle:
        pickle.dump(elements, handle)
