"""Detector math: plain Python and numpy, no Beam; state is plain data."""
from beamlytics.detectors.shesd import s_h_esd

__all__ = ["s_h_esd"]
