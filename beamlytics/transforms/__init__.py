"""Composite PTransforms: read and normalize, window features, score, write.

Each is usable in a pipeline of your own; see the README for a ten-line example.
"""
from beamlytics.transforms import coders  # first: registers the coder of Arrow elements for every transform
from beamlytics.transforms.read import ReadRecords
from beamlytics.transforms.score import JudgeShards, ScoreEndpoints
from beamlytics.transforms.windows import WindowFeatures
from beamlytics.transforms.write import WriteBatches, WriteSortedParquet, WriteSummary

__all__ = ["ReadRecords", "ScoreEndpoints", "WindowFeatures", "WriteBatches", "WriteSortedParquet", "WriteSummary",
           "JudgeShards"]
