"""A UMAP of the ensemble's denoised expression, stored for ``pl.novelty_umap``.

The embedding is computed from ``log1p`` of the member-averaged normalised expression,
never from averaged latent codes (the members' latent spaces are not aligned): its
principal components (``torch.pca_lowrank``: randomised, a second at demo size where
scanpy's ARPACK PCA takes several), the exact neighbours in them (scikit-learn's brute
force: scanpy's default above 4,096 cells is pynndescent, and pynndescent 0.7.0 with
scipy >= 1.17 fails with ``'csr_array' object has no attribute 'getnnz'``), UMAP's fuzzy
neighbour graph (:func:`fuzzy_graph`, umap-learn's formulas in numpy: umap-learn's own
numba version compiles for seconds in every new process) and ``sc.tl.umap``'s layout.
Exact search costs O(cells^2 x PCs): seconds at 20,000 cells, minutes beyond a few
hundred thousand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ensemblevi._seeding import forked_rng

from ._checks import validated
from ._novelty_rule import member_latents

UMAP_KEY = "X_umap_ensemblevi"


def fuzzy_graph(indices: np.ndarray, distances: np.ndarray) -> sparse.csr_matrix:
    """UMAP's fuzzy simplicial set of a kNN graph (``local_connectivity=1``, union).

    Per cell ``i``: ``rho_i``, the distance to its nearest other cell, and ``sigma_i``
    from umap-learn's bisection (64 steps, tolerance 1e-5) so that
    ``sum_j exp(-max(d_ij - rho_i, 0) / sigma_i) = log2(k)`` over its ``k - 1`` neighbours
    (at least 1e-3 times its mean neighbour distance); membership
    ``w_ij = exp(-max(d_ij - rho_i, 0) / sigma_i)`` (0 for itself), symmetrised as
    ``W + W^T - W * W^T``. What ``sc.pp.neighbors`` stores as ``connectivities``.

    Parameters
    ----------
    indices
        ``(n, k)`` neighbour indices, each row starting with the cell itself.
    distances
        ``(n, k)`` their distances, ascending along each row.
    """
    d = np.asarray(distances, dtype=np.float32)
    n, k = d.shape
    target = np.log2(k)
    masked = np.where(d > 0, d, np.inf)
    rho = masked.min(1)
    rho[~np.isfinite(rho)] = 0.0
    shifted = d[:, 1:] - rho[:, None]
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    active = np.ones(n, dtype=bool)
    for _ in range(64):
        psum = np.where(shifted > 0, np.exp(-shifted / mid[:, None]), 1.0).sum(1)
        active &= np.abs(psum - target) >= 1e-5
        if not active.any():
            break
        high = active & (psum > target)
        low = active & ~(psum > target)
        hi[high] = mid[high]
        lo[low] = mid[low]
        mid = np.where(high | (low & np.isfinite(hi)), (lo + hi) / 2, np.where(low, mid * 2, mid))
    floor = 1e-3 * np.where(rho > 0, d.mean(1), d.mean())
    sigma = np.maximum(mid, floor).astype(np.float32)
    gap = d - rho[:, None]
    weights = np.exp(-np.maximum(gap, 0) / sigma[:, None])  # 1 within the nearest distance
    weights[indices == np.arange(n)[:, None]] = 0.0
    w = sparse.csr_matrix(
        (weights.ravel(), (np.repeat(np.arange(n), k), np.asarray(indices).ravel())),
        shape=(n, n),
    )
    w.eliminate_zeros()
    wt = w.T.tocsr()
    graph = (w + wt - w.multiply(wt)).tocsr()
    graph.eliminate_zeros()
    return graph


def umap(
    adata: AnnData,
    values: np.ndarray,
    key_added: str = UMAP_KEY,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    n_epochs: int | None = 200,
    seed: int = 0,
    graph_key: str | None = None,
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
        Neighbours per cell of the graph, the cell itself included (scanpy's convention).
    n_epochs
        UMAP optimisation epochs: 200 (umap-learn's choice above 10,000 cells; it takes
        500 below, ``None``, for a layout that is a little more settled, at 2.5 x the
        time).
    seed
        Seed of the PCA and the UMAP layout.
    graph_key
        Also store the fuzzy neighbour graph in ``adata.obsp[graph_key]`` (for
        ``sc.tl.leiden(adata, adjacency=...)``); ``None``: not kept.

    Returns
    -------
    The ``n_obs x 2`` embedding.
    """
    import scanpy as sc
    import sklearn
    import torch
    from sklearn.neighbors import NearestNeighbors

    values = np.asarray(values, dtype=np.float32)
    n = values.shape[0]
    if n != adata.n_obs:
        raise ValueError(f"values has {n} rows for {adata.n_obs} cells.")
    n_comps = max(1, min(n_pcs, values.shape[1] - 1, n - 1))
    with forked_rng(seed):
        u, s, _ = torch.pca_lowrank(
            torch.from_numpy(values),
            q=min(n_comps + 10, n - 1, values.shape[1]),
            center=True,
            niter=4,
        )
    pcs = (u[:, :n_comps] * s[:n_comps]).numpy()
    k = min(n_neighbors, n)
    with sklearn.config_context(working_memory=64):  # distance chunks of <= 64 MB, not 1 GB
        dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(pcs).kneighbors(pcs)
    tmp = AnnData(obs=pd.DataFrame(index=adata.obs_names.astype(str)))
    tmp.obsm["X_pca"] = pcs
    tmp.obsp["connectivities"] = fuzzy_graph(idx, dist)
    tmp.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {
            "n_neighbors": k,
            "method": "umap",
            "metric": "euclidean",
            "random_state": seed,
            "use_rep": "X_pca",
        },
    }
    sc.tl.umap(tmp, random_state=seed, maxiter=n_epochs)
    adata.obsm[key_added] = tmp.obsm["X_umap"]
    if graph_key is not None:
        adata.obsp[graph_key] = tmp.obsp["connectivities"]
    return adata.obsm[key_added]


def expression_umap(
    model,
    adata: AnnData | None = None,
    *,
    n_samples: int = 1,
    library_size: float = 1e4,
    key_added: str = UMAP_KEY,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    n_epochs: int | None = 200,
    seed: int = 0,
    graph_key: str | None = None,
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
    key_added, n_pcs, n_neighbors, n_epochs, seed, graph_key
        As in :func:`umap`; ``seed`` also seeds the latent samples.

    Returns
    -------
    The ``n_obs x 2`` embedding, also in ``adata.obsm[key_added]``.
    """
    adata = validated(model, adata, "expression_umap")
    rho = model.get_normalized_expression(
        adata, library_size=library_size, n_samples=n_samples, return_numpy=True, seed=seed
    )
    return umap(adata, np.log1p(rho), key_added, n_pcs, n_neighbors, n_epochs, seed, graph_key)


def member_umaps(
    model,
    adata: AnnData | None = None,
    *,
    members: int | list[int] = 4,
    n_neighbors: int = 15,
    n_epochs: int | None = 200,
    seed: int = 0,
) -> list[str]:
    """A UMAP of each of some members' own latent space, for ``pl.member_embeddings``.

    Each member's codes get their own neighbour graph and layout (:func:`umap` of the
    codes, all their principal components but the last); the layouts are never averaged
    (the spaces are not aligned), and ``pl.member_embeddings`` aligns them for display
    only.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        AnnData registered with the model (default: the model's).
    members
        How many members (the first ones) or which.
    n_neighbors, n_epochs, seed
        As in :func:`umap`.

    Returns
    -------
    The ``obsm`` keys written, ``X_umap_member_<k>``.
    """
    adata = validated(model, adata, "member_umaps")
    chosen = (
        list(range(min(members, model.n_members)))
        if isinstance(members, int)
        else [model._check_member(k) for k in members]
    )
    keys = []
    latents = member_latents(model, adata)  # one encoder pass for all members, reused
    for k in chosen:
        z = latents[k]
        key = f"X_umap_member_{k}"
        umap(adata, z, key, n_pcs=z.shape[1], n_neighbors=n_neighbors, n_epochs=n_epochs, seed=seed)
        keys.append(key)
    return keys
