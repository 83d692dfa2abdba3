"""A second novelty score from the counts themselves, and its combination with the latent one.

The latent kNN distance (``novelty_knn``) can fold a cell type the model never saw onto
known ones: the encoder was trained to place every cell near the training manifold. On new
samples (``benchmarks/bench_new_sample.py``, issue 35) a kNN distance in 20 principal
components of log-normalised counts (``novelty_expr``) ranked the unseen type better on
average, and the mean of the two median-scaled distances (``novelty_combined``) ranked
and flagged it better than either (numbers in ``docs/new_samples.md``). The combination is
one score, so one conformal threshold on the calibration cells keeps the rule's
false-positive rate, as for ``novelty_knn``.

Hand-written for a stated reason: scanpy's PCA would be fitted on every cell of the AnnData
it is given (query cells included), while the reference space must be fitted on the
training cells only and reused for every other cell; scikit-learn's ``PCA`` does the fit.
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from scipy import sparse

from ._novelty_rule import NoveltyReference, knn_distance

#: principal components of the expression space
N_PCS = 20
#: counts per cell of the normalisation before ``log1p``
TARGET_SUM = 1e4
#: cells projected at once
CHUNK = 8192


def _counts(model, adata: AnnData):
    from scvi import REGISTRY_KEYS

    manager = model.get_anndata_manager(adata)
    if manager is None:  # a query model reading its reference's cells: register them first
        manager = model.get_anndata_manager(model._validate_anndata(adata), required=True)
    x = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    return sparse.csr_matrix(x) if sparse.issparse(x) else np.asarray(x)


def log_normalise(x) -> np.ndarray:
    """``log1p`` of counts scaled to :data:`TARGET_SUM` per cell, dense float64.

    Parameters
    ----------
    x
        ``(n, genes)`` counts, dense or sparse.
    """
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    x = np.asarray(x, dtype=np.float64)
    return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * TARGET_SUM)


def expression_space(model, ref: NoveltyReference, n_pcs: int = N_PCS, seed: int = 0):
    """The reference's expression space: a function from an AnnData to its cells' PCs.

    Principal components of the log-normalised counts of the reference's *training* cells
    (never the calibration or scored cells, so they stay new to the space as to the model).

    Parameters
    ----------
    model
        The model the AnnData are registered with.
    ref
        The reference cells (:func:`ensemblevi.tl._novelty_rule.novelty_reference`).
    n_pcs
        Components (at most the genes and training cells less one).
    seed
        Seed of the PCA's randomised solver.

    Returns
    -------
    ``(project, train_pcs)``: ``project(adata, rows=None)`` gives ``(n, n_pcs)`` for the
    rows of an AnnData registered with ``model``; ``train_pcs`` the training cells'.
    """
    from sklearn.decomposition import PCA

    x_train = log_normalise(_counts(model, ref.adata)[ref.train])
    n = min(n_pcs, x_train.shape[1], x_train.shape[0] - 1)
    pca = PCA(n_components=n, random_state=seed).fit(x_train)

    def project(adata: AnnData, rows: np.ndarray | None = None) -> np.ndarray:
        x = _counts(model, adata)
        x = x if rows is None else x[rows]
        # in chunks: a dense float64 copy of every cell would not fit at atlas size
        parts = [
            pca.transform(log_normalise(x[i : i + CHUNK])) for i in range(0, x.shape[0], CHUNK)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, n))

    return project, pca.transform(x_train)


def expression_knn(
    model,
    adata: AnnData,
    ref: NoveltyReference,
    n_neighbors: int,
    self_rows: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``novelty_expr`` of ``adata``'s cells and of the calibration cells.

    Each cell's mean distance to its ``n_neighbors`` nearest training cells in
    :func:`expression_space`, over the median of that distance on the calibration cells.

    Parameters
    ----------
    model
        The model ``adata`` (and the reference's AnnData) are registered with.
    adata
        The scored cells.
    ref
        The reference cells.
    n_neighbors
        Training cells averaged over.
    self_rows
        Per scored cell, its position among ``ref.train`` when it is a training cell (it is
        not its own neighbour), else -1; ``None``: none is.
    seed
        Seed of the PCA.

    Returns
    -------
    ``(scores of adata's cells, scores of the calibration cells)``.
    """
    project, train_pcs = expression_space(model, ref, seed=seed)
    d_cal = knn_distance(train_pcs, project(ref.adata, ref.calibration), n_neighbors)
    d = knn_distance(train_pcs, project(adata), n_neighbors, self_rows)
    scale = np.median(d_cal)
    return d / scale, d_cal / scale


def combine(latent: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """``novelty_combined``: the mean of the median-scaled latent and expression distances.

    Both inputs are already divided by their median on the calibration cells, so neither
    scale dominates; the expression space counts as much as all members' latents together.

    Parameters
    ----------
    latent, expression
        ``novelty_knn`` and ``novelty_expr`` of the same cells.
    """
    return (np.asarray(latent, dtype=np.float64) + np.asarray(expression, dtype=np.float64)) / 2
