"""Detectors by the name users give on the command line.

A fixed table, not an import of a user-supplied class path: only code that ships with
beamlytics runs as a detector.
"""
from __future__ import annotations

from beamlytics.detectors.base import Detector
from beamlytics.detectors.poisson import PoissonDetector
from beamlytics.detectors.spot import DSpotDetector, SpotDetector
from beamlytics.detectors.univariate import BoxPlot, Gaussian

DETECTORS: dict[str, type[Detector]] = {
    detector.name: detector for detector in (Gaussian, BoxPlot, SpotDetector, DSpotDetector, PoissonDetector)
}
