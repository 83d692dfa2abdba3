"""A UMAP of the ensemble's denoised expression, stored for ``pl.novelty_umap``.

The embedding is computed from ``log1p`` of the member-averaged normalised expression,
never from averaged latent codes (the members' latent spaces are not aligned). The
neighbour graph is exact (scikit-learn's brute-force ``KNeighborsTransformer`` through
``sc.pp.neighbors(transformer="sklearn")``): scanpy's default above 4,096 cells is
pynndescent, and pynndescent 0.7.0 with scipy >= 1.17 fails (``'csr_array' object has no
attribute 'getnnz'``). Exact search costs O(cells^2 x PCs): seconds at 20,000 cells,
minutes beyond a few hundred thousand.
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData

UMAP_KEY = "X_umap_ensemblevi"


def umap(
    adata: AnnData,
    values: np.ndarray,
    key_added: str = UMAP_KEY,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    n_epochs: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """PCA, exact neighbour graph and UMAP of per-cell ``values``, stored in ``obsm``.

    Parameters
    ----------
    adata
        Where the embedding goes (``adata.obsm[key_added]``); its cells are the rows of
        ``values``.
    values
        ``n_obs x n_features`` matrix to embed (e.g. log denoised expression).
    key_added
        ``obsm`` key of the embedding.
    n_pcs
        Principal components the neighbours are found in (at most features - 1).
    n_neighbors
        Neighbours per cell of the graph.
    n_epochs
        UMAP optimisation epochs (``None``: umap-learn's default, 500 below 10,000 cells
        and 200 above).
    seed
        Seed of the PCA and the UMAP layout.

    Returns
    -------
    The ``n_obs x 2`` embedding.
    """
    import scanpy as sc

    values = np.asarray(values, dtype=np.float32)
    if values.shape[0] != adata.n_obs:
        raise ValueError(f"values has {values.shape[0]} rows for {adata.n_obs} cells.")
    tmp = AnnData(values)
    n_comps = max(1, min(n_pcs, values.shape[1] - 1, values.shape[0] - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    sc.pp.neighbors(
        tmp, n_neighbors=n_neighbors, use_rep="X_pca", transformer="sklearn", random_state=seed
    )
    sc.tl.umap(tmp, random_state=seed, maxiter=n_epochs)
    adata.obsm[key_added] = tmp.obsm["X_umap"]
    return adata.obsm[key_added]


def expression_umap(
    model,
    adata: AnnData | None = None,
    n_samples: int = 1,
    library_size: float = 1e4,
    key_added: str = UMAP_KEY,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    n_epochs: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """UMAP of ``log1p`` of the model's member-averaged denoised expression (see :func:`umap`).

    :func:`~ensemblevi.tl.uncertainty_analysis` computes the same embedding from its pass
    (``embedding=True``) without decoding the cells again.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        AnnData registered with the model (default: the model's).
    n_samples
        Latent samples per member averaged into the expression.
    library_size
        Counts per cell the expression is expressed in.
    key_added, n_pcs, n_neighbors, n_epochs, seed
        As in :func:`umap`; ``seed`` also seeds the latent samples.

    Returns
    -------
    The ``n_obs x 2`` embedding, also in ``adata.obsm[key_added]``.
    """
    adata = model._validate_anndata(adata)
    rho = model.get_normalized_expression(
        adata, library_size=library_size, n_samples=n_samples, return_numpy=True, seed=seed
    )
    return umap(adata, np.log1p(rho), key_added, n_pcs, n_neighbors, n_epochs, seed)
