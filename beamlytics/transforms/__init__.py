"""Composite PTransforms: read and normalize, window features, score, write."""
