"""Cluster assignment at scale: a model fitted on a sample labels every row through Beam's RunInference."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy

from beamlytics.analytics.cluster import Features


class FittedSklearnHandler(SklearnModelHandlerNumpy):
    """Beam's scikit-learn handler serving an estimator fitted in this run, not one loaded from a file."""

    def __init__(self, model):
        super().__init__(model_uri="<fitted in this run>")
        self._fitted = model

    def load_model(self):
        return self._fitted


class AssignClusters(beam.PTransform):
    """(position, Arrow row batch) -> (position, cluster id) for every row, with the fitted `model`."""

    def __init__(self, features: Features, model):
        super().__init__()
        self._features = features
        self._model = model

    def expand(self, batches):
        features = self._features
        return (
            batches
            | "Vectors" >> beam.FlatMap(lambda item: zip(range(item[0], item[0] + item[1].num_rows),
                                                         features.matrix(item[1])))
            | "Assign" >> RunInference(KeyedModelHandler(FittedSklearnHandler(self._model)))
            | "Labels" >> beam.MapTuple(lambda position, result: (position, int(np.asarray(result.inference))))
        )
