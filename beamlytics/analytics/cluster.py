"""Clustering of a table's rows (NetLytics' KMeans, BisectingKMeans, GaussianMixture, DBSCAN) with scikit-learn.

The feature vector of a row: its numerical columns (nulls as 0), then one 0/1 column per value of each
categorical column (values in sorted order, so that the same table gives the same vector), optionally
standardised (mean 0, standard deviation 1 per column, constant columns left at 0).
DBSCAN has no model to assign new rows with: it clusters exactly the rows it is given, all in memory
(its neighbourhood search is O(n²) in the worst case), so it is bounded by `MAX_DBSCAN_ROWS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamlytics.options_catalog import CLUSTER_ALGORITHMS as ALGORITHMS

MAX_DBSCAN_ROWS = 200_000


@dataclass(frozen=True)
class Features:
    """How rows become vectors: fitted on one table, applied to any table of the same columns."""
    numerical: tuple[str, ...]
    categories: tuple[tuple[str, tuple[str, ...]], ...]  # (column, its values in sorted order)
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        return [*self.numerical, *(f"{column}={value}" for column, values in self.categories for value in values)]

    def matrix(self, table: pa.Table) -> np.ndarray:
        columns = [pc.fill_null(pc.cast(table[name], pa.float64()), 0.0).to_numpy() for name in self.numerical]
        for column, values in self.categories:
            text = pc.cast(table[column], pa.string())
            columns.extend(pc.fill_null(pc.equal(text, value), False).to_numpy(zero_copy_only=False).astype(float)
                           for value in values)
        vectors = np.column_stack(columns) if columns else np.zeros((table.num_rows, 0))
        if self.mean is not None:
            vectors = (vectors - self.mean) / self.scale
        return vectors


def fit_features(table: pa.Table, numerical: list[str], categorical: list[str], normalise: bool) -> Features:
    """The feature layout of `table`; a column it lacks is a ValueError naming it."""
    missing = [name for name in (*numerical, *categorical) if name not in table.column_names]
    if missing:
        raise ValueError(f"no such column(s): {', '.join(missing)}; the table has {', '.join(table.column_names)}")
    if not numerical and not categorical:
        raise ValueError("give at least one numerical or categorical feature column")
    categories = tuple((column, tuple(sorted(v for v in pc.unique(pc.cast(table[column], pa.string())).to_pylist()
                                             if v is not None))) for column in categorical)
    features = Features(tuple(numerical), categories)
    if not normalise:
        return features
    vectors = features.matrix(table)
    scale = vectors.std(axis=0)
    return Features(tuple(numerical), categories, vectors.mean(axis=0), np.where(scale > 0, scale, 1.0))


def make_model(algorithm: str, k: int = 2, seed: int = 0, eps: float = 0.5, min_points: int = 5):
    """The unfitted scikit-learn estimator for `algorithm`."""
    from sklearn.cluster import DBSCAN, BisectingKMeans, KMeans
    from sklearn.mixture import GaussianMixture

    if algorithm == "kmeans":
        return KMeans(n_clusters=k, random_state=seed, n_init=10)
    if algorithm == "bisecting_kmeans":
        return BisectingKMeans(n_clusters=k, random_state=seed)
    if algorithm == "gaussian_mixture":
        return GaussianMixture(n_components=k, random_state=seed)
    if algorithm == "dbscan":
        return DBSCAN(eps=eps, min_samples=min_points)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")


def with_clusters(table: pa.Table, features: Features, vectors: np.ndarray, labels: np.ndarray,
                  probability: np.ndarray | None = None) -> pa.Table:
    """The input rows, their feature vector, cluster id (-1: DBSCAN noise) and, for the mixture, its probability."""
    result = table.append_column("features", pa.array(list(vectors), pa.list_(pa.float64())))
    result = result.append_column("cluster", pa.array(labels, pa.int64()))
    if probability is not None:
        result = result.append_column("probability", pa.array(probability, pa.float64()))
    return result


def fit_clusters(table: pa.Table, algorithm: str, numerical: list[str], categorical: list[str] = (),
                 normalise: bool = False, fit_rows: int | None = None, **params):
    """(features, fitted model) of `algorithm` on the first `fit_rows` rows of `table` (all when None).

    The first rows, not a random draw: the same input always fits the same model. DBSCAN has no
    model that labels other rows: it is a ValueError here (see `cluster_table`).
    """
    if algorithm == "dbscan":
        raise ValueError("DBSCAN labels only the rows it is fitted on: use cluster_table")
    fitted_on = table if fit_rows is None else table.slice(0, fit_rows)
    features = fit_features(fitted_on, list(numerical), list(categorical), normalise)
    return features, make_model(algorithm, **params).fit(features.matrix(fitted_on))


def predict(model, vectors: np.ndarray) -> np.ndarray:
    """Rows of (cluster id, probability of that cluster; NaN for the algorithms without one)."""
    labels = model.predict(vectors).astype(float)
    if hasattr(model, "predict_proba"):
        return np.column_stack([labels, model.predict_proba(vectors).max(axis=1)])
    return np.column_stack([labels, np.full(len(labels), np.nan)])


def cluster_table(table: pa.Table, algorithm: str, numerical: list[str], categorical: list[str] = (),
                  normalise: bool = False, fit_rows: int | None = None, **params) -> pa.Table:
    """Fit `algorithm` on the first `fit_rows` rows of `table` (all when None) and label every row in this process."""
    if algorithm == "dbscan":
        features = fit_features(table, list(numerical), list(categorical), normalise)
        if table.num_rows > MAX_DBSCAN_ROWS:
            raise ValueError(f"DBSCAN clusters every row in memory: {table.num_rows} rows is over "
                             f"{MAX_DBSCAN_ROWS}; sample or aggregate first (e.g. --windows, or --query)")
        vectors = features.matrix(table)
        return with_clusters(table, features, vectors, make_model(algorithm, **params).fit_predict(vectors))
    features, model = fit_clusters(table, algorithm, numerical, categorical, normalise, fit_rows, **params)
    vectors = features.matrix(table)
    assigned = predict(model, vectors)
    return with_clusters(table, features, vectors, assigned[:, 0].astype(np.int64),
                         assigned[:, 1] if algorithm == "gaussian_mixture" else None)
