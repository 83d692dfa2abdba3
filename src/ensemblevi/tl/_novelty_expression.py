"""Two novelty scores from the counts themselves, and the combination the rule decides on.

The latent kNN distance (``novelty_knn``) can fold a cell type the model never saw onto
known ones: the encoder was trained to place every cell near the training manifold. Two
scores read the counts instead (issue 35, ``benchmarks/bench_new_sample.py``; numbers in
``docs/new_samples.md``):

* ``novelty_expr``: a kNN distance in 20 principal components of log-normalised counts.
  It ranked an unseen type better than ``novelty_knn`` on new samples on average (it found
  PBMC's B cells), but the PCA of the training cells has no axis for a type whose genes
  vary along none of theirs, and it folds such a type too (the simulator's);
* ``novelty_fit``: how badly the model's decoders fit the cell's counts. A decoder can
  only produce expression like the training cells'; where the encoder folds an unseen type
  onto a known one, the decoded means miss the counts in every gene that sets the type
  apart. The score is the members' mean negative ELBO of the cell less the best
  log-likelihood any mean could reach (each count's Poisson log-probability at its own
  value, so that what is left is misfit, not the count noise a cell with more counts has
  anyway), over the square root of the cell's total count (misfit grows with the counts,
  its noise with their square root).

``novelty_combined`` is the larger of the distance (the mean of the two median-scaled
distances) and the misfit, each over its 95th percentile on the calibration cells
(:func:`combine`). It is one score, so one
conformal threshold on the calibration cells keeps the rule's false-positive rate, as for
each score alone.

Hand-written for a stated reason: scanpy's PCA would be fitted on every cell of the AnnData
it is given (query cells included), while the reference space must be fitted on the
training cells only and reused for every other cell; scikit-learn's ``PCA`` does the fit.
scvi-tools' ``get_elbo`` returns one mean over all cells, not each cell's ELBO; the ELBOs
come from the pass that decodes the cells anyway (:class:`ensemblevi.tl._stream.ElboReducer`).
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from scipy import sparse
from scipy.special import gammaln, xlogy

from ._novelty_rule import NoveltyReference, knn_distance

#: principal components of the expression space
N_PCS = 20
#: counts per cell of the normalisation before ``log1p``
TARGET_SUM = 1e4
#: each part of ``novelty_combined`` is divided by this quantile on the calibration cells
SCALE_QUANTILE = 0.95
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
    return median_scaled(d, d_cal)


def count_terms(x) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the best log-likelihood its counts can have and their total.

    The first is ``sum_g log Poisson(x_g | mean = x_g)``: no mean can give a count a higher
    Poisson probability than the count itself, so a model's log-likelihood less this is
    its misfit (``<= 0`` for a Poisson model).

    Parameters
    ----------
    x
        ``(n, genes)`` counts, dense or sparse (zeros add nothing to either term).

    Returns
    -------
    ``(saturated log-likelihood, total count)``, each ``(n,)`` float64.
    """
    saturated, total = np.empty(x.shape[0]), np.empty(x.shape[0])
    # in chunks: a float64 copy of every cell (and xlogy's temporaries) would not fit at
    # atlas size for dense counts
    for i in range(0, x.shape[0], CHUNK):
        block = x[i : i + CHUNK]
        if sparse.issparse(block):
            block = sparse.csr_matrix(block, dtype=np.float64)
            v = block.data
            per = sparse.csr_matrix(
                (xlogy(v, v) - v - gammaln(v + 1.0), block.indices, block.indptr), block.shape
            )
            saturated[i : i + CHUNK] = np.asarray(per.sum(1)).ravel()
            total[i : i + CHUNK] = np.asarray(block.sum(1)).ravel()
        else:
            block = np.asarray(block, dtype=np.float64)
            saturated[i : i + CHUNK] = (xlogy(block, block) - block - gammaln(block + 1.0)).sum(1)
            total[i : i + CHUNK] = block.sum(1)
    return saturated, total


def fit_score(elbo: np.ndarray, saturated: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``novelty_fit`` before scaling: ``(-mean_k ELBO_k + saturated) / sqrt(total)``.

    Parameters
    ----------
    elbo
        The members' ELBOs of the cells ``(K, n)``.
    saturated, total
        :func:`count_terms` of the same cells.

    Returns
    -------
    ``(n,)``; NaN where the ELBO is (cells not decoded). An empty cell divides by 1.
    """
    misfit = -np.asarray(elbo, dtype=np.float64).mean(0) + saturated
    return misfit / np.sqrt(np.maximum(total, 1.0))


def median_scaled(values: np.ndarray, calibration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` and ``calibration`` over the median of ``calibration``'s absolute values.

    Parameters
    ----------
    values, calibration
        One score of the scored cells and of the calibration cells.
    """
    scale = float(np.nanmedian(np.abs(calibration)))
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    return np.asarray(values, dtype=np.float64) / scale, np.asarray(calibration) / scale


def combine(
    latent: np.ndarray,
    expression: np.ndarray,
    fit: np.ndarray,
    calibration: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """``novelty_combined``: the larger of the distance and the misfit, each over its 95th
    percentile on the calibration cells.

    The distance is the mean of the two median-scaled distances (the rule's score before
    ``novelty_fit``). Two ways a cell can be new: far from the training cells, or fitted
    badly by the decoders; the larger of the two, each in units of its own 95th
    percentile, keeps each one's power where the other has none (an average diluted the
    distance for PBMC's B cells, which the decoders fit almost as well as known cells). A
    value above 1 is a cell that one of the two alone places beyond 95% of the calibration
    cells; the rule's threshold is a conformal quantile of this score on them, as for any
    score. Chosen on development seeds (``benchmarks/bench_novelty_candidates.py``:
    simulator seeds 10-15, PBMC seeds 10-12) for the best true-positive rate on the worse
    of the two data sets, then measured on seeds it was not chosen on
    (``docs/new_samples.md``).

    Parameters
    ----------
    latent, expression, fit
        ``novelty_knn``, ``novelty_expr`` and ``novelty_fit`` of the scored cells.
    calibration
        The same three of the calibration cells.

    Returns
    -------
    ``(scores of the scored cells, scores of the calibration cells)``.
    """

    def distance(knn, expr):
        return (np.asarray(knn, dtype=np.float64) + np.asarray(expr, dtype=np.float64)) / 2

    cal_distance = distance(calibration[0], calibration[1])
    cal_fit = np.asarray(calibration[2], dtype=np.float64)
    q_distance = float(np.nanquantile(cal_distance, SCALE_QUANTILE))
    q_fit = float(np.nanquantile(cal_fit, SCALE_QUANTILE))

    def larger(d, f):
        return np.fmax(d / q_distance, np.asarray(f, dtype=np.float64) / q_fit)

    return larger(distance(latent, expression), fit), larger(cal_distance, cal_fit)
