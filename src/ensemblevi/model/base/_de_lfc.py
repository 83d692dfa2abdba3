"""The model's LFC posterior for a comparison: draws of each cell's expression from every member,
turned into log fold changes of the two groups' population medians.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scvi import REGISTRY_KEYS
from scvi.utils import track

from ensemblevi._constants import chunk_size
from ensemblevi._seeding import forked_rng as global_seed  # every generator, restored

from ._de_groups import comparisons
from ._de_scvi import MemberFilter, member_draws

#: the estimand the model alone answers (lfc_posterior draws it); scvi-tools' randomly
#: paired single cells are its mode="change"
MODEL_ESTIMANDS = ("population",)
LIBRARY_SIZE = 1e4  # normalised expression per 10,000 counts before the log
#: the ensemble estimands' pseudocount, per LIBRARY_SIZE counts (1e-5 per unit library)
PSEUDOCOUNT = 0.1


def population_lfc(expr1: np.ndarray, expr2: np.ndarray, pseudocount: float = 0.1) -> np.ndarray:
    """LFC draws of the population estimand from normalised expression draws.

    ``expr1``, ``expr2``: ``(..., n_cells, G)`` draws (per ``LIBRARY_SIZE`` counts) of the
    two groups' cells, sharing the leading (member, draw) axes. Returns ``(..., G)``:
    ``median_cells log2(expr1 + c) - median_cells log2(expr2 + c)``.

    Parameters
    ----------
    expr1, expr2
        The two groups' normalised expression draws.
    pseudocount
        ``c``, added before the log2.
    """
    m1 = np.median(np.log2(expr1 + pseudocount), axis=-2)
    m2 = np.median(np.log2(expr2 + pseudocount), axis=-2)
    return m1 - m2


def _transforms(model: Any, batch_correction: bool, batchid1: Any, batchid2: Any) -> tuple:
    """The batches each side is decoded in (``None``: every cell's observed batch)."""
    if not batch_correction:
        for name, ids in (("batchid1", batchid1), ("batchid2", batchid2)):
            if ids is not None:
                raise ValueError(
                    f"{name} names the batches to decode a side in, which needs "
                    "batch_correction=True (without it every cell keeps its observed batch)."
                )
        return None, None
    mapping = model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
    every = list(mapping.categorical_mapping)
    return tuple(
        every if ids is None else [ids] if isinstance(ids, str | int) else list(ids)
        for ids in (batchid1, batchid2)
    )


def lfc_posterior(
    model: Any,
    adata: Any,
    groupby: str | None,
    group1: Any,
    group2: Any = None,
    estimand: Literal["population"] = "population",
    n_samples: int = 50,
    max_cells: int = 500,
    batch_correction: bool = False,
    pseudocount: float = PSEUDOCOUNT,
    seed: int = 0,
    progress: bool = True,
    *,
    cells: tuple[np.ndarray, np.ndarray] | None = None,
    batchid1: Any = None,
    batchid2: Any = None,
    weights: Literal["uniform", "importance"] = "uniform",
    member_filter: MemberFilter | None = None,
    batch_size: int | None = None,
    importance_weighting_kwargs: dict | None = None,
) -> tuple[np.ndarray, dict]:
    """Posterior LFC draws of every member: the sampling half of :func:`ensemble_de`.

    Returns ``(draws, info)``: ``draws`` is ``(K, N, G)`` (members x draws x genes),
    ``info`` holds the cells used
    (``cells1``, ``cells2``, positions in ``adata``) and ``scale``, the two groups' mean
    normalised expression per 1e4. Members' draws are kept apart so that an ensemble of the
    first ``k`` members of a deep ensemble is ``draws[:k]`` (the benchmark suite's use).

    Uniform weights without outlier filtering draw all members at once (seeded by
    ``seed``); importance weights or outlier filtering draw member by member through
    scvi-tools' own sampling on ``model.members[k]`` (see :func:`._de_scvi.member_draws`),
    under torch's and numpy's global generators seeded by ``seed``.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata, groupby, group1, group2, estimand, n_samples, max_cells, batch_correction
        As in :func:`ensemble_de` (``group1`` one group).
    pseudocount
        Added to the expression per 1e4 counts before the log2.
    seed, progress
        As in :func:`ensemble_de`.
    cells
        ``(cells1, cells2)`` positions instead of ``groupby``/``group1``/``group2``.
    batchid1, batchid2, weights, batch_size, importance_weighting_kwargs
        As in :func:`ensemble_de`.
    member_filter
        Per-member outlier filtering (:class:`._de_scvi.MemberFilter`); ``None``: none.
    """
    if estimand not in MODEL_ESTIMANDS:
        raise ValueError(
            f"estimand must be one of {MODEL_ESTIMANDS} (the model's own draws; 'counts' is "
            f"built on them by ensemble_de), got {estimand!r}."
        )
    if n_samples < 2 or max_cells < 1:
        raise ValueError(f"Need n_samples >= 2 and max_cells >= 1, got {n_samples}, {max_cells}.")
    adata = model._validate_anndata(adata)
    if cells is None:
        if group1 is None or not isinstance(group1, str | int | np.integer):
            raise ValueError("Pass group1= the group to test (and group2=, or None for the rest).")
        comp = comparisons(adata, groupby, group1, group2, None, None)[0]
        cells = comp.cells1, comp.cells2
    rng = np.random.default_rng(seed)
    cells1, cells2 = (
        np.sort(rng.choice(c, max_cells, replace=False)) if len(c) > max_cells else c for c in cells
    )
    t1, t2 = _transforms(model, batch_correction, batchid1, batchid2)
    member_wise = weights == "importance" or (member_filter is not None and member_filter.enabled)
    if weights == "importance" and batch_correction and max(len(t1), len(t2)) > 1:
        raise ValueError(
            "weights='importance' cannot average a cell over several batches (the weights "
            "belong to one decoding); pass batchid1=/batchid2= a single batch each, or "
            "batch_correction=False, or use mode='change' (scvi-tools' sampling per batch)."
        )
    # draws in blocks so that (K, block, cells, genes) stays within the float budget
    block = chunk_size(model.n_members * (len(cells1) + len(cells2)) * adata.n_vars, 2, n_samples)
    draws, sums = [], np.zeros((2, adata.n_vars))
    starts = list(range(0, n_samples, block))
    for b, start in enumerate(
        track(starts, description="DE posterior draws", disable=not progress, style="tqdm")
    ):
        s = min(block, n_samples - start)
        if member_wise:
            expr = [[], []]
            with global_seed(seed + b):
                for k in range(model.n_members):
                    for i, (c, t) in enumerate(((cells1, t1), (cells2, t2))):
                        c = member_filter(k, c) if member_filter is not None else c
                        x = member_draws(
                            model,
                            adata,
                            k,
                            c,
                            s,
                            LIBRARY_SIZE,
                            t,
                            weights,
                            batch_size,
                            importance_weighting_kwargs or {},
                        )
                        sums[i] += x.mean(1).sum(0)
                        expr[i].append(x)
            lfc = [population_lfc(x1, x2, pseudocount) for x1, x2 in zip(*expr, strict=True)]
            draws.append(np.stack(lfc))
            continue
        expr = []
        for i, (c, t) in enumerate(((cells1, t1), (cells2, t2))):
            x = model.get_normalized_expression(
                adata,
                indices=c,
                n_samples=s,
                return_mean=False,
                batch_size=batch_size,
                return_members=True,
                library_size=LIBRARY_SIZE,
                seed=seed + 1 + 2 * b + i,
                transform_batch=t,
            )
            if s == 1:  # one draw comes back without its sample axis
                x = x[:, None]
            sums[i] += x.mean(2).sum((0, 1))
            expr.append(x)
        draws.append(population_lfc(expr[0], expr[1], pseudocount))
    return np.concatenate(draws, axis=1), {
        "cells1": cells1,
        "cells2": cells2,
        "scale": sums / (model.n_members * n_samples),
    }
