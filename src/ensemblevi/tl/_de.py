"""Differential expression with an ensemble posterior, scanpy style (``tl``).

The computation lives below the model, in :mod:`ensemblevi.model.base._de_core`; this
entry point is ``model.differential_expression`` with the same parameters and docs, but
writing into ``adata.uns`` by default (scanpy's ``tl`` convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pandas as pd

from ensemblevi._constants import DE_KEY

# kept importable from here until the public API shrinks (issue 33): new code imports
# them from their private modules
from ensemblevi.model.base._de_calls import expected_fdr, fdr_calls, summarise_lfc  # noqa: F401
from ensemblevi.model.base._de_core import ensemble_de
from ensemblevi.model.base._de_lfc import lfc_posterior  # noqa: F401
from ensemblevi.model.base._de_settings import DESettings, de_docs


@de_docs.dedent
def differential_expression(
    model: Any,
    adata: Any = None,
    *,
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
    estimand: Literal["counts", "population"] = "counts",
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
    """Ensemble differential expression, in scvi-tools' call forms, stored scanpy style.

    ``model.differential_expression(adata, ...)`` with ``key_added="ensemblevi_de"`` by
    default: the result is also written to ``adata.uns[key_added]``.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    %(de_params)s

    Returns
    -------
    %(de_returns)s
    """
    settings = DESettings.from_call(locals())
    return ensemble_de(
        model,
        adata,
        groupby=groupby,
        group1=group1,
        group2=group2,
        idx1=idx1,
        idx2=idx2,
        settings=settings,
        key_added=key_added,
    )
