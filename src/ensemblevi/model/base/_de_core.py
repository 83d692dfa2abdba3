"""Differential expression with an ensemble posterior: the one DE path.

The core below the model (as scvi-tools' ``scvi.model.base._de_core``).
``EnsembleSCVI.differential_expression`` and ``ensemblevi.tl.differential_expression``
both build a :class:`._de_settings.DESettings` (checked once) and call
:func:`ensemble_de`, which picks the path: samples as the unit when a sample column is
given or registered (:mod:`._de_replicated`), else cells (below). Every path's table is
made by :func:`._de_calls.de_table`, which applies the FDR rule.

Written by hand: scvi-tools' ``differential_expression`` in ``change`` mode compares
random single cells, which mixes cell-to-cell variation into the probability of a change
and made no discoveries at 5-10% FDR targets on easy synthetic data. The ``population``
estimand here follows Lopez et al. (2020): for each posterior draw, each group is
summarised by the median over its cells of log2 normalised expression, and the log-fold
change (LFC) of the two medians is the draw's answer. The members' draws are pooled (the
equal-weight mixture of their posteriors is the ensemble posterior),
``p_g = P(|LFC_g| >= delta)``, and genes are called by the posterior expected FDR rule:
sort ``p`` descending and call the largest top set whose mean ``1 - p`` is at most the
target. The default ``counts`` estimand calibrates that answer on the counts
(:mod:`._de_counts`).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.utils import track

from ensemblevi._seeding import forked_rng  # every generator, restored
from ensemblevi.model.base._de_lfc import LIBRARY_SIZE, lfc_posterior

from . import _de_counts, _de_null, _de_samples
from ._de_calls import de_table, summarise_lfc
from ._de_groups import Comparison, annotate_table, comparisons
from ._de_replicated import cells_statement, sample_aware_de, storable_attrs
from ._de_scvi import MemberFilter, scvi_mode_de
from ._de_settings import ESTIMANDS, SAMPLE_REGISTRY_KEY, DESettings
from ._de_store import store_de

__all__ = ["ESTIMANDS", "DESettings", "ensemble_de", "registered_sample_key", "summarise_lfc"]


def registered_sample_key(manager: Any) -> str | None:
    """The ``obs`` column registered by ``setup_anndata(sample_key=...)``, or ``None``.

    Parameters
    ----------
    manager
        The AnnData's manager.
    """
    if SAMPLE_REGISTRY_KEY not in manager.data_registry:
        return None
    return manager.get_state_registry(SAMPLE_REGISTRY_KEY).original_key


def ensemble_de(
    model: Any,
    adata: Any = None,
    *,
    groupby: str | None = None,
    group1: Any = None,
    group2: Any = None,
    idx1: Any = None,
    idx2: Any = None,
    settings: DESettings | None = None,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Ensemble differential expression: the one implementation behind both entry points.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata, groupby, group1, group2, idx1, idx2, key_added
        As in ``differential_expression`` (``%(de_params)s`` of
        :mod:`._de_settings`).
    settings
        Every other option, checked (``None``: the defaults).

    Returns
    -------
    The DE table (see ``EnsembleSCVI.differential_expression``).
    """
    s = DESettings() if settings is None else settings
    model._check_if_trained(warn=True)
    adata = model._validate_anndata(adata)
    manager = model.get_anndata_manager(adata, required=True)
    comps = comparisons(adata, groupby, group1, group2, idx1, idx2)
    source = "argument"
    if s.sample_key is None and (registered := registered_sample_key(manager)) is not None:
        if s.mode is None and s.estimand == "counts" and not s.null_check:
            s, source = replace(s, sample_key=registered), "registered"
        else:
            warnings.warn(
                f"The sample column {registered!r} is registered, but this call asks for a "
                "cell-level test (mode=, estimand= or null_check=), so cells are the "
                "replicates; leave those at their defaults to compare samples.",
                UserWarning,
                stacklevel=3,
            )
    null = None
    if s.null_check and s.sample_key is None:  # refused before the real tables on bad halves
        null = _de_null.run_null_check(_cell_tables, model, adata, manager, comps, s)
    if s.sample_key is not None:
        tables, attrs = sample_aware_de(model, adata, manager, comps, s, cell_path=_cell_tables)
        attrs["sample_key_source"] = source
    else:
        tables, attrs = _cell_tables(model, adata, manager, comps, s), {}
        unused = sorted(
            {
                c
                for comp, _ in tables
                for c in _de_samples.warn_unused_samples(
                    adata.obs, comp.cells1, comp.cells2, exclude=(groupby or "cell_type",)
                )
            }
        )
        cells_statement(attrs, unused)
    result = pd.concat([t for _, t in tables], axis=0)
    result.attrs.update(attrs)
    if null:
        result.attrs["null_check"] = null
    if key_added is not None:
        params = {
            **s.params(),
            "ensemble": model.ensemble,
            "n_members": int(model.n_members),
            **storable_attrs(result.attrs),
        }
        store_de(adata, tables, key_added, groupby, params)
        if null:
            adata.uns[key_added]["null_check"] = null
    return result


def _cell_tables(
    model: Any, adata: Any, manager: Any, comps: list[Comparison], s: DESettings
) -> list[tuple[Comparison, pd.DataFrame]]:
    """Each comparison's table with cells as the replicates (the ensemble's estimands or
    scvi-tools' modes), annotated with the raw-count statistics and group columns."""
    member_filter = MemberFilter(model, adata, s.filter_outlier_cells)
    tables, normalised = [], None
    for comp in track(comps, description="DE...", disable=not s.show or len(comps) == 1):
        if s.mode is not None:
            table = _scvi_table(model, adata, comp, s, member_filter)
        else:
            if s.estimand == "counts" and not s.batch_correction:
                _de_counts.warn_batch_imbalance(manager, comp.cells1, comp.cells2)
            draws, info = lfc_posterior(
                model,
                adata,
                None,
                None,
                n_samples=s.draws,
                estimand="population",
                max_cells=s.cells_cap,
                batch_correction=s.batch_correction,
                pseudocount=s.pseudocount,
                seed=s.seed,
                progress=s.show,
                cells=(comp.cells1, comp.cells2),
                batchid1=s.batchid1,
                batchid2=s.batchid2,
                weights=s.weighting,
                member_filter=member_filter,
                batch_size=s.batch_size,
                importance_weighting_kwargs=s.importance_weighting_kwargs or {},
            )
            extra = {
                "scale1": info["scale"][0] / LIBRARY_SIZE,
                "scale2": info["scale"][1] / LIBRARY_SIZE,
                "pseudocounts": s.pseudocount / LIBRARY_SIZE,
                "delta": float(s.delta),
            }
            if s.estimand == "counts":
                if normalised is None:  # once for every comparison of the call
                    normalised = _de_counts.normalised_counts(
                        manager.get_from_registry(REGISTRY_KEYS.X_KEY)
                    )
                table = _de_counts.counts_table(
                    draws,
                    manager,
                    comp.cells1,
                    comp.cells2,
                    s.delta,
                    s.fdr_target,
                    adata.var_names,
                    s.seed,
                    s.pseudocount,
                    batch_correction=s.batch_correction,
                    normalised=normalised,
                    extra=extra,
                    sort=True,
                    **s.bayes_kwargs,
                )
            else:
                table = summarise_lfc(
                    draws,
                    s.delta,
                    s.fdr_target,
                    adata.var_names,
                    extra=extra,
                    sort=True,
                    **s.bayes_kwargs,
                )
        annotate_table(table, comp, manager, adata.var_names, s.all_stats)
        tables.append((comp, table))
    return tables


def _scvi_table(
    model: Any, adata: Any, comp: Comparison, s: DESettings, member_filter: MemberFilter
) -> pd.DataFrame:
    """One comparison in scvi-tools' ``change``/``vanilla`` mode (see :mod:`._de_scvi`)."""
    rng = np.random.default_rng(s.seed)
    cap = s.cells_cap
    cells1, cells2 = (
        np.sort(rng.choice(c, cap, replace=False)) if cap is not None and len(c) > cap else c
        for c in (comp.cells1, comp.cells2)
    )
    with forked_rng(s.seed):
        res = scvi_mode_de(
            model,
            adata,
            cells1,
            cells2,
            s.mode,
            s.delta,
            s.pseudocount,
            s.batch_correction,
            s.batchid1,
            s.batchid2,
            s.weighting,
            s.batch_size,
            s.importance_weighting_kwargs or {},
            member_filter,
            s.bayes_kwargs,
        )
    if s.mode == "vanilla":  # no proba_de, no FDR rule (as scvi-tools)
        return de_table(res, adata.var_names, s.fdr_target, sort="bayes_factor")
    columns = {k: v for k, v in res.items() if k != "proba_de"}
    return de_table(columns, adata.var_names, s.fdr_target, proba_de=res["proba_de"], sort="scvi")
