"""Do my clusters hold up? Neighbourhood, cluster and marker stability across members.

Each member of an ensemble is a training run, so the question users ask of scVI seeds
(do the neighbours, the Leiden clusters, the markers move between runs?) is answered from
one model. The numerics are in :mod:`ensemblevi.tl._stability_core`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ensemblevi._constants import DEFAULT_KEY
from ensemblevi._seeding import seeded_globally

from ._checks import validated
from ._kind_note import kind_note
from ._novelty_rule import member_latents
from ._stability_core import (
    STABLE_JACCARD,
    cluster_table,
    coassignment_graph,
    leiden,
    member_knn,
    member_partitions,
    neighbourhood_jaccard,
    partition_agreement,
    top_sets_jaccard,
)

KEY = DEFAULT_KEY


def _graphs(model, adata: AnnData, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    if model.n_members < 2:
        raise ValueError("Stability compares members: the model needs at least 2 (it has 1).")
    return member_knn(member_latents(model, adata), n_neighbors)


def _by_group(values: np.ndarray, adata: AnnData, groupby: str | None) -> pd.DataFrame | None:
    if groupby is None:
        return None
    if groupby not in adata.obs:
        raise ValueError(
            f"obs[{groupby!r}] is not in the AnnData; pass groupby= a column of obs, or None."
        )
    s = pd.Series(values, index=adata.obs_names)
    g = s.groupby(adata.obs[groupby].astype(str).to_numpy())
    return pd.DataFrame(
        {"n_cells": g.size(), "mean": g.mean(), "median": g.median(), "q10": g.quantile(0.1)}
    ).rename_axis(groupby)


def neighbourhood_stability(
    model,
    adata: AnnData | None = None,
    *,
    n_neighbors: int = 15,
    groupby: str | None = None,
    key_added: str = KEY,
) -> pd.Series:
    """Per cell, how far the members agree on its nearest neighbours.

    For each member, the cell's ``n_neighbors - 1`` nearest other cells in that member's
    latent space (exact search); the value is the mean over member pairs of the Jaccard
    index of the two sets: 1 where every member finds the same neighbours.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI` with at least 2 members.
    adata
        AnnData registered with the model (default: the model's).
    n_neighbors
        Neighbours per cell, the cell itself included (scanpy's convention).
    groupby
        ``obs`` column to summarise by (per group: ``n_cells``, ``mean``, ``median``,
        ``q10``), stored in ``uns``.
    key_added
        ``obs[f"{key_added}_neighbourhood_stability"]`` and
        ``uns[key_added]["neighbourhood_stability"]``.

    Returns
    -------
    The per-cell values.

    Examples
    --------
    >>> ev.tl.neighbourhood_stability(model, adata, groupby="cell_type")  # doctest: +SKIP
    """
    adata = validated(model, adata, "neighbourhood_stability")
    idx, _ = _graphs(model, adata, n_neighbors)
    values = neighbourhood_jaccard(idx)
    _store_neighbourhood(adata, values, n_neighbors, groupby, key_added)
    return pd.Series(values, index=adata.obs_names, name="neighbourhood_stability")


def _store_neighbourhood(
    adata: AnnData, values: np.ndarray, n_neighbors: int, groupby: str | None, key_added: str
) -> None:
    by_group = _by_group(values, adata, groupby)
    adata.obs[f"{key_added}_neighbourhood_stability"] = values
    adata.uns.setdefault(key_added, {})["neighbourhood_stability"] = {
        "n_neighbors": int(n_neighbors),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "groupby": groupby,
        **({} if by_group is None else {"by_group": by_group.reset_index()}),
    }


def cluster_stability(
    model,
    adata: AnnData | None = None,
    *,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    threshold: float = STABLE_JACCARD,
    n_top_markers: int = 10,
    markers: bool = True,
    marker_share: float = 0.75,
    seed: int = 0,
    key_added: str = KEY,
) -> pd.DataFrame:
    """Leiden on every member, a consensus, and which consensus clusters hold up.

    Each member's latent space gets its exact neighbour graph (UMAP weights, as
    ``sc.pp.neighbors``) and Leiden clusters (scanpy's, igraph). The consensus partition is
    Leiden on the co-assignment graph: for cells that are neighbours in some member, the
    fraction of members that cluster them together. Per consensus cluster, its stability
    is the mean over members of the Jaccard index of its best-matching member cluster
    (Hennig 2007); below ``threshold`` it is marked not reproducible. Also writes the
    neighbourhood stability (:func:`neighbourhood_stability`) from the same graphs.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI` with at least 2 members.
    adata
        AnnData registered with the model (default: the model's).
    resolution
        Leiden's resolution, for the members and the consensus.
    n_neighbors
        Neighbours per cell of each member's graph, the cell itself included.
    threshold
        Mean best-match Jaccard below which a cluster is not reproducible (0.6: Hennig's
        "should not be trusted").
    n_top_markers
        Marker genes per cluster and member (ranked by the log fold change of the member's
        denoised expression, cluster against the other cells).
    markers
        Compute marker stability (one decoding pass per member).
    marker_share
        Share of members a marker must be among the top genes of to count as stable.
    seed
        Seed of Leiden and of the expression draws.
    key_added
        ``obs[f"{key_added}_consensus_leiden"]`` (the consensus clusters),
        ``obs[f"{key_added}_cluster_agreement"]`` (per cell: the fraction of members whose
        best match of its consensus cluster contains it),
        ``obsm[f"{key_added}_member_leiden"]`` (``(n, K)``: each member's clusters) and
        ``uns[key_added]["cluster_stability"]`` (the table, ARI and NMI between members,
        settings).

    Returns
    -------
    One row per consensus cluster: ``n_cells``, ``stability``, ``min_jaccard``,
    ``reproducible``, and with ``markers`` ``marker_jaccard`` (mean over member pairs of
    the Jaccard of their top-``n_top_markers`` sets), ``n_stable_markers`` and
    ``stable_markers`` (comma-separated, most often chosen first).

    Examples
    --------
    >>> table = ev.tl.cluster_stability(model, adata, resolution=1.0)  # doctest: +SKIP
    >>> table[~table["reproducible"]]  # doctest: +SKIP
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a Jaccard index in (0, 1], got {threshold}.")
    adata = validated(model, adata, "cluster_stability")
    idx, dist = _graphs(model, adata, n_neighbors)
    _store_neighbourhood(adata, neighbourhood_jaccard(idx), n_neighbors, None, key_added)
    parts = member_partitions(idx, dist, resolution, seed)
    consensus = leiden(coassignment_graph(parts, idx), resolution, seed)
    table, agreement = cluster_table(consensus, parts, threshold)
    if markers:
        table = table.join(
            marker_stability(
                model, adata, consensus, n_top=n_top_markers, share=marker_share, seed=seed
            )
        )
    ari, nmi = partition_agreement(parts)
    labels = consensus.astype(str)
    adata.obs[f"{key_added}_consensus_leiden"] = pd.Categorical(
        labels, categories=[str(c) for c in np.unique(consensus)]
    )
    adata.obs[f"{key_added}_cluster_agreement"] = agreement
    adata.obsm[f"{key_added}_member_leiden"] = parts.T.astype(np.int32)
    upper = np.triu_indices(len(parts), 1)
    adata.uns.setdefault(key_added, {})["cluster_stability"] = {
        "table": table.reset_index(),
        "ari": ari,
        "nmi": nmi,
        "mean_ari": float(ari[upper].mean()),
        "mean_nmi": float(nmi[upper].mean()),
        "n_member_clusters": [len(np.unique(p)) for p in parts],
        "params": {
            "resolution": float(resolution),
            "n_neighbors": int(n_neighbors),
            "threshold": float(threshold),
            "n_top_markers": int(n_top_markers),
            "marker_share": float(marker_share),
            "seed": int(seed),
        },
    }
    return table


def marker_stability(
    model,
    adata: AnnData,
    clusters: np.ndarray,
    *,
    n_top: int = 10,
    share: float = 0.75,
    seed: int = 0,
    n_samples: int = 5,
) -> pd.DataFrame:
    """Per cluster, how far the members agree on its top marker genes.

    Parameters
    ----------
    model
        A trained ensemble model registered with ``adata``.
    adata
        The cells.
    clusters
        ``(n,)`` cluster labels (e.g. the consensus).
    n_top
        Top genes per cluster and member, by log fold change of the member's mean
        ``log1p`` denoised expression (per 1e4 counts) in the cluster against the rest.
    share
        Share of members a gene must be a top gene of to count as a stable marker.
    seed
        Seed of the expression draws (the same for every member).
    n_samples
        Latent samples per cell averaged into a member's expression.

    Returns
    -------
    Indexed by cluster (as strings): ``marker_jaccard``, ``n_stable_markers``,
    ``stable_markers``.
    """
    adata = validated(model, adata, "marker_stability", register=False)
    if len(clusters) != adata.n_obs:
        raise ValueError(
            f"clusters has {len(clusters)} labels for {adata.n_obs} cells: pass one label per "
            "cell of adata (e.g. adata.obs['ensemblevi_consensus_leiden'])."
        )
    kind_note(model, adata, "marker_stability")
    codes, pos = np.unique(clusters, return_inverse=True)
    onehot = sparse.csr_matrix(
        (np.ones(len(pos)), (pos, np.arange(len(pos)))), shape=(len(codes), len(pos))
    )
    size = np.asarray(onehot.sum(1)).ravel()
    genes = np.asarray(adata.var_names.astype(str))
    tops, lfcs = [], []
    for m in range(model.n_members):
        with seeded_globally(seed):  # members with the same weights get the same draws
            x = np.log1p(
                model.get_normalized_expression(
                    adata, member=m, library_size=1e4, n_samples=n_samples, return_numpy=True
                )
            )
        total = x.sum(0)
        inside = onehot @ x / size[:, None]
        rest = (total[None, :] - onehot @ x) / np.maximum(len(pos) - size, 1)[:, None]
        lfc = inside - rest
        order = np.argsort(-lfc, axis=1)[:, :n_top]
        tops.append([set(genes[o]) for o in order])
        lfcs.append(lfc)
    mean_lfc = np.mean(lfcs, axis=0)
    stable = []
    for c in range(len(codes)):
        counts = pd.Series([g for t in tops for g in t[c]]).value_counts()
        chosen = counts[counts >= share * model.n_members].index
        lfc_c = pd.Series(mean_lfc[c], index=genes)
        stable.append(sorted(chosen, key=lambda g: (-counts[g], -lfc_c[g])))
    return pd.DataFrame(
        {
            "marker_jaccard": top_sets_jaccard(tops),
            "n_stable_markers": [len(s) for s in stable],
            "stable_markers": [",".join(s) for s in stable],
        },
        index=pd.Index([str(c) for c in codes], name="cluster"),
    )
