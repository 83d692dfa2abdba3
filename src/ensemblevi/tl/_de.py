"""Differential expression with an ensemble posterior, scanpy style (``tl``).

The computation lives below the model, in :mod:`ensemblevi.model.base._de_core`; this is
the analysis-tool entry point, a wrapper of ``model.differential_expression``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pandas as pd

from ensemblevi._constants import DE_KEY
from ensemblevi.model.base._de_core import (  # noqa: F401  (re-exported: ev.tl API)
    ESTIMANDS,
    LIBRARY_SIZE,
    expected_fdr,
    fdr_calls,
    summarise_lfc,
)
from ensemblevi.model.base._de_lfc import (  # noqa: F401  (re-exported: ev.tl API)
    cell_pair_lfc,
    lfc_posterior,
    population_lfc,
)


def differential_expression(
    model: Any,
    adata: Any = None,
    groupby: str | None = None,
    group1: str | Sequence[str] | None = None,
    group2: str | None = None,
    idx1: Sequence[int] | Sequence[bool] | str | None = None,
    idx2: Sequence[int] | Sequence[bool] | str | None = None,
    mode: Literal["change", "vanilla"] | None = None,
    delta: float | None = 0.5,
    batch_size: int | None = None,
    all_stats: bool = True,
    batch_correction: bool = False,
    batchid1: Sequence[str] | None = None,
    batchid2: Sequence[str] | None = None,
    fdr_target: float = 0.05,
    silent: bool = False,
    weights: Literal["uniform", "importance"] | None = "uniform",
    filter_outlier_cells: bool = False,
    importance_weighting_kwargs: dict | None = None,
    estimand: Literal["counts", "population", "cell_pairs"] = "counts",
    n_samples: int | None = None,
    max_cells: int | None = None,
    pseudocounts: float | None = None,
    seed: int = 0,
    key_added: str | None = DE_KEY,
    progress: bool = True,
    null_check: bool = False,
    n_null: int = 3,
    sample_key: str | None = None,
    method: Literal["counts", "ensemble", "pseudobulk"] | None = None,
    design: Literal["auto", "between", "paired"] = "auto",
    lfc_threshold: float = 0.0,
    **kwargs: Any,
) -> pd.DataFrame:
    """Ensemble differential expression, in scvi-tools' call forms.

    ``model.differential_expression(adata, ...)``; see
    :func:`ensemblevi.model.base.ensemble_de` for the method and the table.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata, groupby, group1, group2, idx1, idx2, mode, delta, batch_size, all_stats
        As in :func:`ensemblevi.model.base.ensemble_de` (scvi-tools' arguments).
    batch_correction, batchid1, batchid2, fdr_target, silent, weights
        As in :func:`ensemblevi.model.base.ensemble_de` (scvi-tools' arguments).
    filter_outlier_cells, importance_weighting_kwargs
        As in :func:`ensemblevi.model.base.ensemble_de` (scvi-tools' arguments).
    estimand, n_samples, max_cells, pseudocounts, seed, key_added, progress
        As in :func:`ensemblevi.model.base.ensemble_de`.
    null_check, n_null
        Check the test on random halves of ``group1`` (no true change) and warn on calls
        there; as in :func:`ensemblevi.model.base.ensemble_de`.
    sample_key, method, design, lfc_threshold
        Biological replicates: compare samples, not cells; as in
        :func:`ensemblevi.model.base.ensemble_de`.
    **kwargs
        scvi-tools' ``get_bayes_factors`` keywords, where they apply (see
        :func:`ensemblevi.model.base.ensemble_de`).

    Returns
    -------
    The DE table, one row per gene and comparison.
    """
    return model.differential_expression(
        adata,
        groupby=groupby,
        group1=group1,
        group2=group2,
        idx1=idx1,
        idx2=idx2,
        mode=mode,
        delta=delta,
        batch_size=batch_size,
        all_stats=all_stats,
        batch_correction=batch_correction,
        batchid1=batchid1,
        batchid2=batchid2,
        fdr_target=fdr_target,
        silent=silent,
        weights=weights,
        filter_outlier_cells=filter_outlier_cells,
        importance_weighting_kwargs=importance_weighting_kwargs,
        estimand=estimand,
        n_samples=n_samples,
        max_cells=max_cells,
        pseudocounts=pseudocounts,
        seed=seed,
        key_added=key_added,
        progress=progress,
        null_check=null_check,
        n_null=n_null,
        sample_key=sample_key,
        method=method,
        design=design,
        lfc_threshold=lfc_threshold,
        **kwargs,
    )
