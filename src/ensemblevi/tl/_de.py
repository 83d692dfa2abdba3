"""Differential expression with an ensemble posterior, scanpy style (``tl``).

The computation lives below the model, in :mod:`ensemblevi.model.base._de_core`; this is
the analysis-tool entry point, a wrapper of ``model.differential_expression``.
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd

from ensemblevi._constants import DE_KEY
from ensemblevi.model.base._de_core import (  # noqa: F401  (re-exported: ev.tl API)
    ESTIMANDS,
    LIBRARY_SIZE,
    cell_pair_lfc,
    expected_fdr,
    fdr_calls,
    lfc_posterior,
    population_lfc,
    summarise_lfc,
)


def differential_expression(
    model: Any,
    adata: Any = None,
    groupby: str = "cell_type",
    group1: str | None = None,
    group2: str | None = None,
    delta: float = 0.5,
    fdr_target: float = 0.05,
    estimand: Literal["population", "cell_pairs"] = "population",
    n_samples: int = 50,
    max_cells: int = 500,
    batch_correction: bool = False,
    pseudocount: float = 0.1,
    seed: int = 0,
    key_added: str | None = DE_KEY,
    progress: bool = True,
) -> pd.DataFrame:
    """Ensemble differential expression of ``group1`` against ``group2`` (or the rest).

    ``model.differential_expression(adata, ...)``; see
    :func:`ensemblevi.model.base.ensemble_de` for the method and the table.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata, groupby, group1, group2, delta, fdr_target, estimand, n_samples, max_cells
        As in :func:`ensemblevi.model.base.ensemble_de`.
    batch_correction, pseudocount, seed, key_added, progress
        As in :func:`ensemblevi.model.base.ensemble_de`.

    Returns
    -------
    The DE table, one row per gene, sorted by ``proba_de`` then ``|lfc_median|``.
    """
    return model.differential_expression(
        adata, groupby=groupby, group1=group1, group2=group2, delta=delta,
        fdr_target=fdr_target, estimand=estimand, n_samples=n_samples, max_cells=max_cells,
        batch_correction=batch_correction, pseudocount=pseudocount, seed=seed,
        key_added=key_added, progress=progress,
    )  # fmt: skip
