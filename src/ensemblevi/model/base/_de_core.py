"""Differential expression with an ensemble posterior and a posterior expected FDR.

The core below the model (as scvi-tools' ``scvi.model.base._de_core``): the estimand, the
pooling of members, the expected-FDR rule and the storage in the AnnData.
``EnsembleSCVI.differential_expression`` calls :func:`ensemble_de`, and
``ensemblevi.tl.differential_expression`` is a wrapper of that method.

Written by hand: scvi-tools' ``differential_expression`` in ``change`` mode compares
random single cells, which mixes cell-to-cell variation into the probability of a change
and made no discoveries at 5-10% FDR targets on easy synthetic data. The ``population``
estimand here follows Lopez et al. (2020): for each posterior draw, each group is
summarised by the median over its cells of log2 normalised expression, and the log-fold
change (LFC) of the two medians is the draw's answer. The members' draws are pooled (the
equal-weight mixture of their posteriors is the ensemble posterior),
``p_g = P(|LFC_g| >= delta)``, and genes are called by the posterior expected FDR rule:
sort ``p`` descending and call the largest top set whose mean ``1 - p`` is at most the
target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.utils import track

from ensemblevi._constants import DE_KEY
from ensemblevi._seeding import forked_rng as global_seed  # every generator, restored
from ensemblevi.model.base._de_lfc import LIBRARY_SIZE, PSEUDOCOUNT, lfc_posterior

from . import _de_counts, _de_null, _de_samples
from ._de_calls import expected_fdr, fdr_calls, summarise_lfc
from ._de_groups import annotate_table, comparisons
from ._de_replicated import cells_statement, sample_aware_de, storable_attrs
from ._de_scvi import MemberFilter, check_kwargs, scvi_mode_de
from ._de_store import store_de

ESTIMANDS = ("counts", "population", "cell_pairs")
MODES = (None, "change", "vanilla")


def _settings(mode, estimand, delta, pseudocounts, n_samples, max_cells, weights, kwargs):
    """Check the arguments that depend on the mode; returns the resolved ones."""
    if mode not in MODES:
        raise ValueError(
            f"mode must be None (the ensemble's estimand=), 'change' or 'vanilla' "
            f"(scvi-tools' modes), got {mode!r}."
        )
    if estimand not in ESTIMANDS:
        raise ValueError(f"estimand must be one of {ESTIMANDS}, got {estimand!r}.")
    if weights not in ("uniform", "importance"):
        raise ValueError(f"weights must be 'uniform' or 'importance', got {weights!r}.")
    if mode is not None and estimand != "counts":
        raise ValueError(
            f"estimand={estimand!r} is one of the ensemble's estimands (mode=None) and "
            f"mode={mode!r} is scvi-tools'; pass one of them."
        )
    check_kwargs(kwargs, estimand if mode is None else mode)
    if delta is not None and delta <= 0:
        raise ValueError(f"delta must be > 0 (a log2 fold change), got {delta}.")
    if pseudocounts is not None and pseudocounts < 0:
        raise ValueError(f"pseudocounts must be >= 0, got {pseudocounts}.")
    if mode is None:
        if delta is None:
            raise ValueError(
                "delta=None (estimated from the LFCs) is scvi-tools' change mode; pass a "
                "number for the ensemble's estimand, or mode='change'."
            )
        pc = PSEUDOCOUNT if pseudocounts is None else pseudocounts * LIBRARY_SIZE
        return 50 if n_samples is None else n_samples, 500 if max_cells is None else max_cells, pc
    if n_samples is not None:
        raise ValueError(
            "n_samples= is the ensemble estimand's draws per member; scvi-tools' modes take "
            "n_samples_overall= (all members' samples together, default 5000)."
        )
    if mode == "vanilla" and pseudocounts is not None:
        raise ValueError(
            "pseudocounts= applies to mode='change' and the ensemble's estimands, "
            "not to 'vanilla' (which compares scales, no log)."
        )
    return None, max_cells, pseudocounts


def ensemble_de(
    model: Any,
    adata: Any = None,
    groupby: str | None = None,
    group1: Any = None,
    group2: Any = None,
    idx1: Any = None,
    idx2: Any = None,
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
    """Ensemble differential expression, with scvi-tools' call forms and columns.

    The default (``mode=None``, ``estimand="counts"``) takes each gene's LFC from the
    groups' mean normalised counts and calibrates it by empirical Bayes within strata of
    the ensemble's posterior probability of a change (:mod:`._de_counts`: the model's own
    LFC carries an error its members share, so its posterior alone over-calls);
    ``estimand="population"`` is the model's answer alone (module docstring): per
    posterior draw, the LFC of the groups' median log2 expression.
    ``mode="change"`` and ``mode="vanilla"`` are scvi-tools' own (``change``: LFCs of
    random pairs of single-cell posterior samples, scvi-tools' ``delta``/``pseudocounts``
    handling and ``test_mode="three"``; ``vanilla``: ``P(scale1 > scale2)`` of such pairs),
    computed by scvi-tools' ``DifferentialComputation`` on samples of the ensemble
    posterior, an equal share from each member (:mod:`._de_scvi`); with one member they are
    ``scvi.model.SCVI.differential_expression``.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        Cells to use (default: the model's AnnData).
    groupby
        ``obs`` column of the groups (``None``: ``"cell_type"``, unless ``idx1`` is given).
    group1
        One group, a list of groups (each a comparison), or ``None``: every group in turn.
    group2
        The reference group; ``None``: all other cells (``group2`` column ``"Rest"``).
    idx1, idx2
        The two sides' cells instead of groups: boolean masks, integer positions or
        ``adata.obs.query`` strings (``idx2=None``: all other cells).
    mode
        ``None`` (the ensemble's ``estimand``), or scvi-tools' ``"change"``/``"vanilla"``.
    delta
        Smallest |LFC| (log2) that counts as a change; ``None`` (``change`` only):
        scvi-tools' estimate from the LFC means. Unused by ``vanilla``.
    batch_size
        Minibatch size of the model passes.
    all_stats
        Add scvi-tools' raw-count columns (``raw_mean1/2``, ``non_zeros_proportion1/2``,
        ``raw_normalized_mean1/2``) of the full groups.
    batch_correction
        Compare the groups decoded in every batch (``batchid1``/``batchid2``: in those
        batches) instead of each cell's own. Ensemble estimands: each cell's expression
        averaged over the batches; scvi-tools' modes: samples paired within a batch.
    batchid1, batchid2
        Batch categories each side is decoded in (need ``batch_correction=True``).
    fdr_target
        Target of the posterior expected FDR rule for ``is_de_fdr_<target>`` (not in
        ``vanilla``, which has no ``proba_de``, as in scvi-tools).
    silent
        Hide the progress bars (as ``progress=False``).
    weights
        ``"uniform"`` or ``"importance"`` (``None``: uniform): scvi-tools' importance
        weights, computed per member on that member's posterior. Ensemble estimands: each
        draw is a weighted bootstrap of the group's cells (``population`` only);
        scvi-tools' modes: each member's samples are resampled with its weights.
    filter_outlier_cells
        Drop a group's outlier cells (scvi-tools' elliptic envelope in latent space) before
        sampling; per member, in that member's latent space (``population`` or scvi modes).
    importance_weighting_kwargs
        Passed to each member's ``get_importance_weights`` (with ``weights="importance"``).
    estimand
        With ``mode=None``: ``counts`` (default: the log2 ratio of the groups' mean
        normalised counts, empirical Bayes within strata of the ensemble's
        ``P(|LFC| >= delta)``; ``batch_correction`` standardises the means to one batch
        mix, ``weights``/``filter_outlier_cells``/``batchid1``/``batchid2`` shape the strata
        only), ``population`` (the model alone: the LFC of the groups' median log2
        expression per posterior draw) or ``cell_pairs`` (the model's randomly paired
        single cells, ``P(|LFC| >= delta)``).
    n_samples
        Ensemble estimands: posterior draws per member (``None``: 50). scvi-tools' modes
        take ``n_samples_overall=`` instead (all members together, default 5000).
    max_cells
        Cells per group, subsampled without replacement (seeded) above this cap
        (``None``: 500 for the ensemble's estimands, every cell for scvi-tools' modes).
    pseudocounts
        Added to the expression per unit library (scvi-tools' units) before the log2;
        ``None``: ``1e-5`` (0.1 per 1e4 counts) for the ensemble's estimands, scvi-tools'
        estimate from non-expressed genes in ``change`` mode.
    seed
        Seed of the cell subsample and the draws (scvi-tools' modes and member-wise draws
        run under torch's and numpy's global generators seeded with it, restored after).
    key_added
        Write the result to ``adata.uns[key_added]`` in ``rank_genes_groups``' layout (one
        field per comparison; ``names``, ``scores`` = ``proba_de``, ``logfoldchanges`` =
        ``lfc_median``, ``pvals`` = ``proba_not_de``, ``pvals_adj`` = ``expected_fdr``;
        ``vanilla``: ``scores`` = ``bayes_factor``, ``logfoldchanges`` = log2 scale ratio,
        ``pvals`` = ``pvals_adj`` = ``proba_m2``, one-sided as its Bayes factor),
        so ``scanpy.get.rank_genes_groups_df(adata, group, key=key_added)`` reads it, plus
        the full table under ``"table"``. ``None``: write nothing.
    progress
        Show progress bars.
    null_check, n_null
        Repeat the test on ``n_null`` seeded random halves of each comparison's ``group1``
        (no true change) and warn when they get calls (:mod:`._de_null`); the summary goes to
        ``result.attrs["null_check"]`` and ``adata.uns[key_added]["null_check"]``.
    sample_key
        ``obs`` column of the biological samples (donors, patients): the test then compares
        samples, not cells (:mod:`._de_samples`): pseudobulks per sample and side, a
        moderated t-test whose variance is the between-sample variance, Benjamini-Hochberg
        at ``fdr_target``. ``None``: cells are the replicates, and the result says that its
        calls describe these cells, not the population (a warning names any ``obs`` column
        that looks like samples). With fewer than 2 samples (pairs) per side the test falls
        back to cells, with the same statement; below 3 per side it warns that calibration
        was not shown.
    method
        With ``sample_key``: ``"counts"`` (default: the moderated test on raw pseudobulk
        counts), ``"ensemble"`` (the same test on each member's denoised pseudobulks, the
        members' disagreement added as variance) or ``"pseudobulk"`` (PyDESeq2, optional
        dependency). See ``docs/de_replicates.md`` for the measurements behind the default.
    design
        With ``sample_key``: ``"between"`` (each sample on one side), ``"paired"`` (both
        sides in every sample: paired by sample) or ``"auto"`` (paired when samples have
        cells on both sides).
    lfc_threshold
        With ``sample_key``: test ``|LFC| > lfc_threshold`` (log2; TREAT) instead of any
        change (0, as PyDESeq2 and limma). ``delta`` belongs to the cell-level estimands.
    **kwargs
        scvi-tools' ``get_bayes_factors`` keywords where they apply (``n_samples_overall``,
        ``use_permutation``, ``m_permutation``, ``change_fn``, ``m1_domain_fn``,
        ``threshold_counts``, ``cred_interval_lvls``: scvi modes; ``test_mode``: also the
        ensemble's estimands, default ``"two"`` there); others raise.

    Returns
    -------
    One row per gene and comparison (comparisons concatenated, as scvi-tools). Ensemble
    estimands, sorted by ``proba_de`` then ``|lfc_median|``: ``proba_de``,
    ``proba_not_de``, ``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``,
    ``lfc_min``, ``lfc_max``, ``lfc_q2.5``, ``lfc_q97.5`` (of the estimand's LFC),
    ``lfc_member_std``, ``member_calls``, ``call_flips``, ``expected_fdr``,
    ``is_de_fdr_<target>``, ``scale1``, ``scale2`` (mean normalised expression per unit
    library), ``pseudocounts``, ``delta``; ``counts`` adds ``model_proba_de``,
    ``model_lfc_median`` (the population estimand), ``lfc_counts``, ``lfc_counts_se``
    (the counts' LFC before shrinkage) and ``stratum``. scvi-tools' modes: its columns
    (``change`` adds ``expected_fdr`` and ``is_de_fdr_<target>``). Then the
    ``all_stats`` columns, and ``comparison``, ``group1``, ``group2`` for ``groupby``
    calls.
    """
    if sample_key is not None:
        return sample_aware_de(
            model,
            adata,
            groupby,
            group1,
            group2,
            idx1,
            idx2,
            sample_key,
            method,
            design,
            lfc_threshold,
            fdr_target,
            all_stats,
            key_added,
            batch_size,
            seed,
            mode,
            estimand,
            locals(),
        )
    if method is not None or design != "auto" or lfc_threshold != 0:
        raise ValueError(
            "method=, design= and lfc_threshold= belong to the sample-aware test; "
            "pass sample_key= (the obs column of the biological samples)."
        )
    shared = _de_null.shared_args(locals())
    weights = "uniform" if weights is None else weights
    n_samples, max_cells, pc = _settings(
        mode, estimand, delta, pseudocounts, n_samples, max_cells, weights, kwargs
    )
    if not 0 < fdr_target < 1:
        raise ValueError(f"fdr_target must be in (0, 1), got {fdr_target}.")
    if importance_weighting_kwargs and weights != "importance":
        raise ValueError("importance_weighting_kwargs need weights='importance'.")
    if max_cells is not None and max_cells < 1:
        raise ValueError(f"max_cells must be >= 1, got {max_cells}.")
    model._check_if_trained(warn=True)
    adata = model._validate_anndata(adata)
    comps = comparisons(adata, groupby, group1, group2, idx1, idx2)
    null = null_check and _de_null.run_null_check(
        ensemble_de, model, adata, comps, shared, n_null, progress and not silent
    )
    member_filter = MemberFilter(model, adata, filter_outlier_cells)
    iw = importance_weighting_kwargs or {}
    show = progress and not silent
    tables, normalised = [], None
    for comp in track(comps, description="DE...", disable=not show or len(comps) == 1):
        if mode is None and estimand == "counts" and not batch_correction:
            _de_counts.warn_batch_imbalance(
                model.get_anndata_manager(adata, required=True), comp.cells1, comp.cells2
            )
        if mode is None:
            draws, info = lfc_posterior(
                model,
                adata,
                None,
                None,
                n_samples=n_samples,
                estimand="population" if estimand == "counts" else estimand,
                max_cells=max_cells,
                batch_correction=batch_correction,
                pseudocount=pc,
                seed=seed,
                progress=show,
                cells=(comp.cells1, comp.cells2),
                batchid1=batchid1,
                batchid2=batchid2,
                weights=weights,
                member_filter=member_filter,
                batch_size=batch_size,
                importance_weighting_kwargs=iw,
            )
            if estimand == "counts":
                manager = model.get_anndata_manager(adata, required=True)
                if normalised is None:  # once for every comparison of the call
                    normalised = _de_counts.normalised_counts(
                        manager.get_from_registry(REGISTRY_KEYS.X_KEY)
                    )
                table = _de_counts.counts_table(
                    draws,
                    manager,
                    comp.cells1,
                    comp.cells2,
                    delta,
                    fdr_target,
                    adata.var_names,
                    seed,
                    pc,
                    batch_correction=batch_correction,
                    normalised=normalised,
                    **kwargs,
                )
            else:
                table = summarise_lfc(draws, delta, fdr_target, adata.var_names, **kwargs)
            table["scale1"], table["scale2"] = info["scale"] / LIBRARY_SIZE
            table["pseudocounts"], table["delta"] = pc / LIBRARY_SIZE, float(delta)
            # ties in proba_de (common: every draw clears delta) are broken by the effect size
            order = np.lexsort(
                (-np.abs(table["lfc_median"].to_numpy()), -table["proba_de"].to_numpy())
            )
            table = table.iloc[order]
        else:
            table = _scvi_table(
                model,
                adata,
                comp,
                mode,
                delta,
                pc,
                batch_correction,
                batchid1,
                batchid2,
                weights,
                batch_size,
                iw,
                member_filter,
                max_cells,
                seed,
                fdr_target,
                kwargs,
            )
        annotate_table(
            table, comp, model.get_anndata_manager(adata, required=True), adata.var_names, all_stats
        )
        tables.append((comp, table))
    result = pd.concat([t for _, t in tables], axis=0)
    unused = sorted(
        {
            c
            for comp, _ in tables
            for c in _de_samples.warn_unused_samples(
                adata.obs, comp.cells1, comp.cells2, exclude=(groupby or "cell_type",)
            )
        }
    )
    cells_statement(result.attrs, unused)
    if key_added is not None:
        store_de(
            adata,
            tables,
            key_added,
            groupby,
            {
                "delta": "auto" if delta is None else float(delta),
                "fdr_target": float(fdr_target),
                "estimand": estimand if mode is None else f"scvi_{mode}",
                "n_samples": int(
                    n_samples if n_samples is not None else kwargs.get("n_samples_overall", 5000)
                ),
                "max_cells": -1 if max_cells is None else int(max_cells),
                "batch_correction": bool(batch_correction),
                "seed": int(seed),
                "weights": weights,
                "filter_outlier_cells": bool(filter_outlier_cells),
                "ensemble": model.ensemble,
                "n_members": int(model.n_members),
            },
        )
        if null:
            adata.uns[key_added]["null_check"] = null
        adata.uns[key_added]["params"].update(storable_attrs(result.attrs))
    if null:
        result.attrs["null_check"] = null
    return result


def _scvi_table(
    model,
    adata,
    comp,
    mode,
    delta,
    pseudocounts,
    batch_correction,
    batchid1,
    batchid2,
    weights,
    batch_size,
    iw,
    member_filter,
    max_cells,
    seed,
    fdr_target,
    kwargs,
) -> pd.DataFrame:
    """One comparison in scvi-tools' ``change``/``vanilla`` mode (see :mod:`._de_scvi`)."""
    rng = np.random.default_rng(seed)
    cells1, cells2 = (
        np.sort(rng.choice(c, max_cells, replace=False))
        if max_cells is not None and len(c) > max_cells
        else c
        for c in (comp.cells1, comp.cells2)
    )
    with global_seed(seed):
        res = scvi_mode_de(
            model,
            adata,
            cells1,
            cells2,
            mode,
            delta,
            pseudocounts,
            batch_correction,
            batchid1,
            batchid2,
            weights,
            batch_size,
            iw,
            member_filter,
            kwargs,
        )
    table = pd.DataFrame(res, index=pd.Index(adata.var_names, name="gene"))
    # scvi-tools' own sort (ties in its default, unstable order), so one member gives its rows
    if mode == "vanilla":
        return table.sort_values(by="bayes_factor", ascending=False)
    table = table.sort_values(by="proba_de", ascending=False)
    table["expected_fdr"], _ = expected_fdr(table["proba_de"].to_numpy())
    table[f"is_de_fdr_{fdr_target:g}"] = fdr_calls(table["proba_de"].to_numpy(), fdr_target)
    return table
