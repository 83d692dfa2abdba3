"""Stability across members, on arrays: neighbour sets, partitions, their agreement.

Every member is a training run, so what changes between runs (a cell's neighbours, the
clusters, the markers) is measured across members. Latent spaces of different members are
never compared coordinate-wise: only what each member's space implies (neighbour sets,
partitions) is compared. Written by hand where no library has the measure: the Jaccard of
neighbour sets per cell, the best-match Jaccard of clusters (Hennig 2007), and the
consensus from co-assignment restricted to the members' neighbour graphs (a dense
co-assignment matrix is n^2: 1.4 GB at 18,641 cells). Leiden is scanpy's (igraph), ARI and
NMI are scikit-learn's.

References
----------
Hennig, C. (2007). Cluster-wise assessment of cluster stability. *Computational
Statistics & Data Analysis* 52(1), 258-271 (a cluster with mean best-match Jaccard below
0.6 "should not be trusted"; 0.5 or less "dissolved").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

#: Hennig (2007): below this mean best-match Jaccard a cluster is not reproducible
STABLE_JACCARD = 0.6


def member_knn(latents: np.ndarray, n_neighbors: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Every member's exact k nearest neighbours in its own latent space.

    Parameters
    ----------
    latents
        ``(K, n, d)`` latent codes, one space per member.
    n_neighbors
        Neighbours per cell, the cell itself included (scanpy's convention).

    Returns
    -------
    ``(indices, distances)``, each ``(K, n, n_neighbors)``; column 0 is the cell itself.

    Shape
    -----
    ``latents``: ``(K, n, d)``; outputs ``(K, n, n_neighbors)``.
    """
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    latents = np.asarray(latents, dtype=np.float32)
    n_members, n, _ = latents.shape
    k = min(n_neighbors, n)
    idx = np.empty((n_members, n, k), dtype=np.int64)
    dist = np.empty((n_members, n, k), dtype=np.float32)
    rows = np.arange(n)
    for m in range(n_members):
        # scikit-learn's exact search (a KD tree in a 10-dimensional latent space)
        with sklearn.config_context(working_memory=64):
            d, i = NearestNeighbors(n_neighbors=k).fit(latents[m]).kneighbors(latents[m])
        # a duplicate of a cell may come before it (or crowd it out): the cell goes first
        eq = i == rows[:, None]
        pos = np.where(eq.any(1), eq.argmax(1), k - 1)
        first_i, first_d = i[:, 0].copy(), d[:, 0].copy()
        i[rows, pos], d[rows, pos] = first_i, first_d
        i[:, 0], d[:, 0] = rows, 0.0
        idx[m], dist[m] = i, d
    return idx, dist


def neighbourhood_jaccard(indices: np.ndarray) -> np.ndarray:
    """Per cell, the mean over member pairs of the Jaccard index of its neighbour sets.

    Parameters
    ----------
    indices
        ``(K, n, k)`` neighbour indices from :func:`member_knn` (column 0, the cell
        itself, is left out: ``k - 1`` neighbours per set).

    Returns
    -------
    ``(n,)`` values in [0, 1]; 1 where every member finds the same neighbours.
    """
    nbrs = np.asarray(indices)[:, :, 1:]
    n_members, n, k = nbrs.shape
    if n_members < 2:
        raise ValueError("Neighbourhood stability compares members: it needs at least 2.")
    total = np.zeros(n)
    for a in range(n_members):
        for b in range(a + 1, n_members):
            both = np.sort(np.concatenate([nbrs[a], nbrs[b]], axis=1), axis=1)
            inter = (both[:, 1:] == both[:, :-1]).sum(1)  # each set holds a cell once
            total += inter / (2 * k - inter)
    return total / (n_members * (n_members - 1) / 2)


def leiden(graph: sparse.spmatrix, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden clusters of a weighted undirected graph (scanpy's, igraph flavour).

    Parameters
    ----------
    graph
        ``(n, n)`` symmetric weights.
    resolution
        Leiden's resolution (higher: more clusters).
    seed
        Leiden's random state.

    Returns
    -------
    ``(n,)`` integer labels, 0 the largest cluster.
    """
    import scanpy as sc
    from anndata import AnnData

    tmp = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(graph.shape[0])]))
    sc.tl.leiden(
        tmp,
        adjacency=sparse.csr_matrix(graph),
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return tmp.obs["leiden"].astype(int).to_numpy()


def member_partitions(
    indices: np.ndarray, distances: np.ndarray, resolution: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Leiden on each member's UMAP-weighted neighbour graph (what ``sc.pp.neighbors`` +
    ``sc.tl.leiden`` give on that member's latent space).

    Parameters
    ----------
    indices, distances
        ``(K, n, k)`` from :func:`member_knn`.
    resolution
        Leiden's resolution.
    seed
        Leiden's random state.

    Returns
    -------
    ``(K, n)`` integer labels.
    """
    from ._embedding import fuzzy_graph

    return np.stack(
        [
            leiden(fuzzy_graph(i, d), resolution, seed)
            for i, d in zip(indices, distances, strict=True)
        ]
    )


def partition_agreement(parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ARI and NMI between every pair of members' partitions.

    Parameters
    ----------
    parts
        ``(K, n)`` labels.

    Returns
    -------
    ``(ari, nmi)``, each ``(K, K)`` with 1 on the diagonal.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    n_members = len(parts)
    ari, nmi = np.eye(n_members), np.eye(n_members)
    for a in range(n_members):
        for b in range(a + 1, n_members):
            ari[a, b] = ari[b, a] = adjusted_rand_score(parts[a], parts[b])
            nmi[a, b] = nmi[b, a] = normalized_mutual_info_score(parts[a], parts[b])
    return ari, nmi


def coassignment_graph(parts: np.ndarray, indices: np.ndarray) -> sparse.csr_matrix:
    """Co-assignment weights on the union of the members' neighbour graphs.

    For each pair of cells that are neighbours in at least one member, the fraction of
    members that put them in one cluster; pairs that are nobody's neighbours are left out
    (a dense co-assignment matrix does not fit at atlas size).

    Parameters
    ----------
    parts
        ``(K, n)`` member partitions.
    indices
        ``(K, n, k)`` member neighbour indices (column 0: the cell itself, left out).

    Returns
    -------
    ``(n, n)`` symmetric weights in (0, 1]; an edge of weight 0 is dropped.
    """
    parts = np.asarray(parts)
    n = parts.shape[1]
    rows = np.repeat(np.arange(n), indices.shape[2] - 1)
    pairs = np.concatenate([np.stack([rows, idx[:, 1:].ravel()], 1) for idx in indices])
    pairs = np.sort(pairs, axis=1)  # (i, j) and (j, i) are one edge
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    code = np.unique(pairs[:, 0] * n + pairs[:, 1])  # 1-d: far faster than unique(axis=0)
    i, j = code // n, code % n
    weight = (parts[:, i] == parts[:, j]).mean(0)
    keep = weight > 0
    w = sparse.coo_matrix((weight[keep], (i[keep], j[keep])), shape=(n, n)).tocsr()
    return (w + w.T).tocsr()


def best_match(consensus: np.ndarray, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per consensus cluster, the Jaccard of its best-matching cluster of ``part``.

    Parameters
    ----------
    consensus
        ``(n,)`` consensus labels ``0..C-1``.
    part
        ``(n,)`` one member's labels.

    Returns
    -------
    ``(jaccard, match)``, each ``(C,)``: the best Jaccard index and the label in ``part``
    that attains it.
    """
    c_codes, c_inv = np.unique(consensus, return_inverse=True)
    p_codes, p_inv = np.unique(part, return_inverse=True)
    table = np.zeros((len(c_codes), len(p_codes)))
    np.add.at(table, (c_inv, p_inv), 1)
    union = table.sum(1)[:, None] + table.sum(0)[None, :] - table
    jac = table / union
    arg = jac.argmax(1)
    return jac[np.arange(len(c_codes)), arg], p_codes[arg]


def cluster_table(
    consensus: np.ndarray, parts: np.ndarray, threshold: float = STABLE_JACCARD
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per consensus cluster its stability; per cell how many members agree with it.

    Parameters
    ----------
    consensus
        ``(n,)`` consensus labels.
    parts
        ``(K, n)`` member partitions.
    threshold
        Mean best-match Jaccard below which a cluster is marked not reproducible.

    Returns
    -------
    ``(table, membership)``: the table indexed by consensus cluster (``n_cells``,
    ``stability``: mean over members of the best-match Jaccard, ``min_jaccard``,
    ``reproducible``), and per cell the fraction of members whose best match of the cell's
    consensus cluster contains it.
    """
    codes = np.unique(consensus)
    pos = np.searchsorted(codes, consensus)
    jac = np.empty((len(parts), len(codes)))
    agree = np.zeros(len(consensus))
    for m, part in enumerate(parts):
        jac[m], match = best_match(consensus, part)
        agree += part == match[pos]
    table = pd.DataFrame(
        {
            "n_cells": np.bincount(pos, minlength=len(codes)),
            "stability": jac.mean(0),
            "min_jaccard": jac.min(0),
        },
        index=pd.Index([str(c) for c in codes], name="cluster"),
    )
    table["reproducible"] = table["stability"] >= threshold
    return table, agree / len(parts)


def top_sets_jaccard(tops: list[list[set]]) -> np.ndarray:
    """Per cluster, the mean over member pairs of the Jaccard of their top-gene sets.

    Parameters
    ----------
    tops
        ``tops[m][c]``: member ``m``'s top genes of cluster ``c``.

    Returns
    -------
    ``(C,)`` values in [0, 1].
    """
    n_members, n_clusters = len(tops), len(tops[0])
    out = np.zeros(n_clusters)
    for c in range(n_clusters):
        vals = [
            len(tops[a][c] & tops[b][c]) / max(len(tops[a][c] | tops[b][c]), 1)
            for a in range(n_members)
            for b in range(a + 1, n_members)
        ]
        out[c] = np.mean(vals)
    return out
