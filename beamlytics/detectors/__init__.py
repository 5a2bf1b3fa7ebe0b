"""Detector math: plain Python and numpy, no Beam; state is plain data."""
